//! The corpus of real-looking SIP messages (tests/fixtures/sip) through the
//! loaded XDP program with BPF_PROG_TEST_RUN, over UDP and TCP, IPv4 and
//! IPv6: the kernel's counters must move exactly as the expectations in
//! `tollgate_common::corpus` say (which the host parser also meets), and
//! nothing else may move.

use std::net::IpAddr;

use tollgate_common::{
    Config, SourceStats,
    corpus::{CORPUS, Expect, fixture},
    frames::FrameBuilder,
    number::class,
    sip::{SipSummary, kind, method, sweep},
    sip_stat,
};
use tollgate_tests::{
    nth_call, privileged,
    testrun::{Loaded, Parsed, XDP_PASS, pin_to_cpu},
    topology::*,
};

/// What SIP_STATS must gain for one message.
fn expected_stats(e: &Expect, tcp: bool) -> Vec<u64> {
    let mut d = vec![0u64; sip_stat::COUNT as usize];
    let mut bump = |i: u32| d[i as usize] += 1;
    match e.kind {
        kind::REQUEST => {
            bump(sip_stat::REQUEST_BASE + e.method as u32);
            if e.method == method::REGISTER && e.has_auth {
                bump(sip_stat::REGISTER_WITH_AUTH);
            }
            // A credentialed request is an attempt: bound over TCP (the
            // handshake proves the address), unbound over UDP here (no
            // challenge issued its nonce to this address).
            if e.has_auth {
                bump(if tcp { sip_stat::ATTEMPT_BOUND } else { sip_stat::ATTEMPT_UNBOUND });
            }
            if e.method == method::INVITE {
                bump(sip_stat::INVITE_CLASS_BASE + e.class as u32);
                // Each run is a call of its own (its own Call-ID).
                if e.class == class::INTERNATIONAL {
                    bump(sip_stat::INTL_CALLS);
                }
            }
        }
        kind::RESPONSE => match (e.cseq_method, e.status) {
            (method::REGISTER, 401 | 407) => bump(sip_stat::RESPONSE_REGISTER_CHALLENGE),
            (method::REGISTER, 403) => bump(sip_stat::RESPONSE_REGISTER_FORBIDDEN),
            (method::REGISTER, 200..=299) => bump(sip_stat::RESPONSE_REGISTER_OK),
            (method::REGISTER, _) => bump(sip_stat::RESPONSE_REGISTER_OTHER),
            _ => bump(sip_stat::RESPONSE_OTHER),
        },
        kind::KEEPALIVE => bump(sip_stat::KEEPALIVE),
        kind::UNPARSED => bump(if tcp { sip_stat::UNPARSED_TCP } else { sip_stat::UNPARSED_UDP }),
        _ => {}
    }
    d
}

/// The per-source fields a message must change, as (field, delta) applied
/// to a zeroed SourceStats (timestamps ignored).
fn expected_source(e: &Expect) -> Option<SourceStats> {
    let mut s = SourceStats::default();
    // A credentialed request is an attempt, whatever its method (each
    // fixture with credentials has a Call-ID and a CSeq).
    if e.kind == kind::REQUEST && e.has_auth {
        s.attempts = 1;
    }
    match (e.kind, e.method, e.cseq_method, e.status) {
        (kind::REQUEST, method::REGISTER, _, _) if e.has_auth => s.register_auth = 1,
        (kind::REQUEST, method::REGISTER, _, _) => s.register_noauth = 1,
        (kind::REQUEST, method::INVITE, _, _) => {
            s.invites = 1;
            if e.class == class::INTERNATIONAL {
                s.intl_invites = 1;
                s.win_intl_invites = 1;
            }
            if e.class == class::EMERGENCY {
                s.emergency_invites = 1;
            }
        }
        // Answers to no remembered request: counted, never a failure.
        (kind::RESPONSE, _, method::REGISTER, 401 | 407) => s.register_challenged = 1,
        (kind::RESPONSE, _, method::REGISTER, 403) => s.register_forbidden = 1,
        (kind::RESPONSE, _, method::REGISTER, 200..=299) => s.register_ok = 1,
        _ => return None,
    }
    Some(s)
}

fn counters_only(s: SourceStats) -> SourceStats {
    SourceStats { first_seen_ns: 0, last_seen_ns: 0, window_start_ns: 0, ..s }
}

fn diff(after: SourceStats, before: SourceStats) -> SourceStats {
    let (a, b) = (counters_only(after), counters_only(before));
    SourceStats {
        register_noauth: a.register_noauth - b.register_noauth,
        register_auth: a.register_auth - b.register_auth,
        register_challenged: a.register_challenged - b.register_challenged,
        register_forbidden: a.register_forbidden - b.register_forbidden,
        register_ok: a.register_ok - b.register_ok,
        invites: a.invites - b.invites,
        intl_invites: a.intl_invites - b.intl_invites,
        emergency_invites: a.emergency_invites - b.emergency_invites,
        attempts: a.attempts - b.attempts,
        failures: a.failures - b.failures,
        unbound_failures: a.unbound_failures - b.unbound_failures,
        win_failures: a.win_failures - b.win_failures,
        win_intl_invites: a.win_intl_invites - b.win_intl_invites,
        ..SourceStats::default()
    }
}

/// A challenge (`fixture`, a 401 or 407) from the registrar to `client`.
fn challenge(client: IpAddr, fixture_name: &str) -> Vec<u8> {
    FrameBuilder::udp(edge_for(client), client, 5060, 40000).payload(fixture(fixture_name)).build()
}

#[test]
fn the_kernel_counts_the_corpus_exactly_as_expected() {
    if !privileged("the_kernel_counts_the_corpus_exactly_as_expected") {
        return;
    }
    let mut l = Loaded::new();
    l.maps.set_config(Config { nonce_horizon_s: 300, ..Config::default() }).expect("config");
    let mut runs = 0;
    for (i, case) in CORPUS.iter().enumerate() {
        // A client of its own per case: a nonce one case's challenge issued
        // never binds another case's credentials.
        let (v4, v6) = (
            IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 100 + i as u8)),
            IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 1, i as u16)),
        );
        for (client, server, tcp) in [(v4, EDGE_V4, false), (v4, EDGE_V4, true), (v6, EDGE_V6, false)] {
            let e = case.expect;
            // Requests go client -> server; responses server -> client.
            let (src, dst): (IpAddr, IpAddr) =
                if e.kind == kind::RESPONSE { (server, client) } else { (client, server) };
            let (sport, dport) = if e.kind == kind::RESPONSE { (5060, 40000) } else { (40000, 5060) };
            let b = if tcp {
                FrameBuilder::tcp(src, dst, sport, dport)
            } else {
                FrameBuilder::udp(src, dst, sport, dport)
            };
            // Each run its own message: the same INVITE twice from one
            // client would be one call attempt and its copy.
            let bytes = if case.bytes.windows(9).any(|w| w == b"Call-ID: ") {
                nth_call(case.bytes, usize::from(tcp))
            } else {
                case.bytes.to_vec()
            };
            let frame = b.payload(&bytes).build();
            // A client the registrar has just challenged, as a phone is:
            // the headers of all its requests are read (see
            // credentials_are_read_where_they_can_count). Its nonce is none
            // of the corpus's credentials', which stay unbound over UDP.
            let (action, _) = l.run(&challenge(client, "407-register.sip"));
            assert_eq!(action, XDP_PASS);
            let what = format!(
                "{} over {}/{}",
                case.name,
                if tcp { "tcp" } else { "udp" },
                if src.is_ipv4() { 4 } else { 6 }
            );

            let stats_before = l.maps.sip_totals().expect("SIP_STATS");
            let client_before = l.maps.source(client).unwrap_or_default();
            let server_before = l.maps.source(server).map(counters_only);
            let countries_before = l.maps.country_invites().expect("COUNTRY_INVITES");
            let (action, _) = l.run(&frame);
            assert_eq!(action, XDP_PASS, "{what}");
            // Nothing may be counted under the server's own address.
            assert_eq!(l.maps.source(server).map(counters_only), server_before, "server untouched by {what}");

            let stats_after = l.maps.sip_totals().expect("SIP_STATS");
            let moved: Vec<u64> = stats_after.iter().zip(&stats_before).map(|(a, b)| a - b).collect();
            assert_eq!(moved, expected_stats(&e, tcp), "SIP_STATS for {what}");

            let client_after = l.maps.source(client).unwrap_or_default();
            let expected = expected_source(&e).unwrap_or_default();
            assert_eq!(diff(client_after, client_before), expected, "source counters for {what}");

            let countries_after = l.maps.country_invites().expect("COUNTRY_INVITES");
            let gained: Vec<(u16, u64)> = countries_after
                .iter()
                .map(|(cc, n)| {
                    (*cc, n - countries_before.iter().find(|(c, _)| c == cc).map_or(0, |(_, m)| *m))
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            let want = if e.kind == kind::REQUEST && e.class == class::INTERNATIONAL {
                vec![(e.cc, 1)]
            } else {
                vec![]
            };
            assert_eq!(gained, want, "country counters for {what}");
            runs += 1;
        }
    }
    assert!(runs >= 120 && CORPUS.len() < 150, "{runs} packets");
}

/// Over UDP, credentials bind only with a nonce the registrar issued to
/// their source within the horizon, so a request other than REGISTER or
/// INVITE from a source it has not challenged is read only to its start
/// line (the cheap path of OPTIONS pingers). This must never hide
/// credentials that could count: once the source is challenged, over TCP,
/// and in every REGISTER, they are read.
#[test]
fn credentials_are_read_where_they_can_count() {
    if !privileged("credentials_are_read_where_they_can_count") {
        return;
    }
    pin_to_cpu(0);
    let mut l = Loaded::new();
    l.maps.set_config(Config { nonce_horizon_s: 300, ..Config::default() }).expect("config");
    let peer = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 30));
    let parse = |l: &mut Loaded, frame: Vec<u8>| -> SipSummary {
        match l.parse_run(0, &frame).parsed {
            Parsed::Summary(s) => s,
            other => panic!("not parsed: {other:?}"),
        }
    };
    let udp = |name| FrameBuilder::udp(peer, edge_for(peer), 40000, 5060).payload(fixture(name)).build();
    let tcp = |name| FrameBuilder::tcp(peer, edge_for(peer), 40000, 5060).payload(fixture(name)).build();

    // Never challenged: an OPTIONS is read to its start line only; an
    // INVITE always whole, for the Call-ID and CSeq that count it as one
    // call attempt.
    let s = parse(&mut l, udp("options-keepalive.sip"));
    assert_eq!((s.kind, s.sweep), (kind::REQUEST, sweep::START_ONLY));
    let s = parse(&mut l, udp("invite-with-auth.sip"));
    assert!(s.method == method::INVITE && s.sweep == 0 && s.call_id != 0 && s.cseq != 0, "{s:?}");
    assert_ne!(s.number.len, 0);
    // A REGISTER and anything over TCP are read whatever the source.
    let s = parse(&mut l, udp("register-auth.sip"));
    assert!(s.has_auth && s.sweep == 0 && s.call_id != 0, "{s:?}");
    let s = parse(&mut l, tcp("invite-with-auth.sip"));
    assert!(s.has_auth && s.sweep == 0 && s.call_id != 0, "{s:?}");

    // Challenged: read, and the credentials counted as an attempt.
    assert_eq!(parse(&mut l, challenge(peer, "401-register.sip")).kind, kind::RESPONSE);
    let before = l.maps.source(peer).unwrap_or_default().attempts;
    let s = parse(&mut l, udp("invite-with-auth.sip"));
    assert!(s.has_auth && s.sweep == 0 && s.call_id != 0, "{s:?}");
    assert_eq!(l.maps.source(peer).unwrap_or_default().attempts, before + 1);
}
