//! The corpus of real-looking SIP messages (tests/fixtures/sip) through the
//! loaded XDP program with BPF_PROG_TEST_RUN, over UDP and TCP, IPv4 and
//! IPv6: the kernel's counters must move exactly as the expectations in
//! `tollgate_common::corpus` say (which the host parser also meets), and
//! nothing else may move.

use std::net::IpAddr;

use tollgate_common::{
    SourceStats,
    corpus::{CORPUS, Expect},
    frames::FrameBuilder,
    number::class,
    sip::{kind, method},
    sip_stat,
};
use tollgate_tests::{
    privileged,
    testrun::{Loaded, XDP_PASS},
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

#[test]
fn the_kernel_counts_the_corpus_exactly_as_expected() {
    if !privileged("the_kernel_counts_the_corpus_exactly_as_expected") {
        return;
    }
    let l = Loaded::new();
    let mut runs = 0;
    for case in CORPUS {
        for (client, server, tcp) in
            [(CUSTOMER_V4, EDGE_V4, false), (CUSTOMER_V4, EDGE_V4, true), (CUSTOMER_V6, EDGE_V6, false)]
        {
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
            let frame = b.payload(case.bytes).build();
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
    assert!(runs >= 120, "{runs} packets");
}
