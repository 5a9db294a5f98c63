//! SIP restrictions in the kernel (issue: decision engine), through the
//! loaded program with BPF_PROG_TEST_RUN: what each restriction drops, what
//! it never drops (allowlisted sources, emergency calls, other traffic), and
//! that a dropped request is still counted as evidence.

use std::net::IpAddr;

use ipnet::IpNet;
use tollgate::clock::monotonic_now_ns;
use tollgate_common::{
    Config, CountryRestriction, IdentityKey, IdentityRestriction, Restriction, corpus::fixture,
    frames::FrameBuilder, hash::identity_tag, verdict::*,
};
use tollgate_tests::{
    privileged,
    testrun::{Loaded, XDP_DROP, XDP_PASS},
    topology::*,
};

const HOUR: u64 = 3_600_000_000_000;

fn msg(src: IpAddr, name: &str) -> Vec<u8> {
    FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(fixture(name)).build()
}

fn response_to(dst: IpAddr, name: &str) -> Vec<u8> {
    FrameBuilder::udp(edge_for(dst), dst, 5060, 40000).payload(fixture(name)).build()
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

#[test]
fn auth_suspend_drops_registration_and_credentials_only() {
    if !privileged("auth_suspend_drops_registration_and_credentials_only") {
        return;
    }
    let mut l = Loaded::new();
    let until = monotonic_now_ns() + HOUR;
    for n in ["203.0.113.0/24", "2001:db8:1::10/128"] {
        l.maps.restrictions.set(&net(n), Restriction { auth_until_ns: until, ..Default::default() }).unwrap();
    }
    l.allow(&["203.0.113.20/32"]);
    for src in [ATTACKER_V4, ATTACKER_V6] {
        assert_eq!(l.run(&msg(src, "register-noauth.sip")), (XDP_DROP, DROP_AUTH_SUSPENDED), "{src}");
        assert_eq!(l.run(&msg(src, "svcrack-register.sip")), (XDP_DROP, DROP_AUTH_SUSPENDED), "{src}");
        assert_eq!(l.run(&msg(src, "invite-with-auth.sip")), (XDP_DROP, DROP_AUTH_SUSPENDED), "{src}");
        assert_eq!(l.run(&msg(src, "invite-intl-plus-232.sip")), (XDP_PASS, PASS_SIP), "no credentials");
        assert_eq!(l.run(&msg(src, "options-keepalive.sip")), (XDP_PASS, PASS_SIP));
        assert_eq!(l.run(&response_to(src, "200-options.sip")), (XDP_PASS, PASS_SIP), "responses to it flow");
    }
    assert_eq!(l.run(&msg(TRUSTED_V4, "register-auth.sip")), (XDP_PASS, PASS_ALLOWLISTED), "allowlist wins");
    assert_eq!(l.run(&msg(CUSTOMER_V4, "register-auth.sip")), (XDP_PASS, PASS_SIP));
    // Dropped REGISTERs still count: the agent sees the abuse go on.
    let s = l.maps.source(ATTACKER_V4).unwrap();
    assert_eq!((s.register_noauth, s.register_auth), (1, 1));
    // An expired suspension drops nothing.
    let now = monotonic_now_ns();
    l.maps
        .restrictions
        .set(&net("203.0.113.0/24"), Restriction { auth_until_ns: now - 1, ..Default::default() })
        .unwrap();
    assert_eq!(l.run(&msg(ATTACKER_V4, "register-noauth.sip")), (XDP_PASS, PASS_SIP));
}

#[test]
fn intl_suspend_spares_domestic_and_emergency_calls() {
    if !privileged("intl_suspend_spares_domestic_and_emergency_calls") {
        return;
    }
    let mut l = Loaded::new();
    let until = monotonic_now_ns() + HOUR;
    l.maps
        .restrictions
        .set(&net("198.51.100.10/32"), Restriction { intl_until_ns: until, ..Default::default() })
        .unwrap();
    for name in ["invite-intl-plus-232.sip", "invite-intl-010-232.sip", "invite-intl-tel-44.sip"] {
        assert_eq!(l.run(&msg(CUSTOMER_V4, name)), (XDP_DROP, DROP_INTL_SUSPENDED), "{name}");
    }
    for name in [
        "invite-domestic-trunk.sip",
        "invite-emergency-110.sip",
        "invite-emergency-119.sip",
        "register-auth.sip",
    ] {
        assert_eq!(l.run(&msg(CUSTOMER_V4, name)), (XDP_PASS, PASS_SIP), "{name}");
    }
    assert_eq!(l.run(&msg(CUSTOMER_V6, "invite-intl-plus-232.sip")), (XDP_PASS, PASS_SIP), "other sources");
    let s = l.maps.source(CUSTOMER_V4).unwrap();
    assert_eq!(s.intl_invites, 3, "dropped INVITEs still count");
}

#[test]
fn country_restrict_applies_to_every_source_but_never_to_emergency_or_allowlisted() {
    if !privileged("country_restrict_applies_to_every_source_but_never_to_emergency_or_allowlisted") {
        return;
    }
    let mut l = Loaded::new();
    l.allow(&["203.0.113.20/32"]);
    let hour = CountryRestriction { until_ns: monotonic_now_ns() + HOUR, ..Default::default() };
    l.maps.set_country_restriction(232, hour).unwrap();
    for src in [CUSTOMER_V4, CUSTOMER_V6, ATTACKER_V4] {
        assert_eq!(l.run(&msg(src, "invite-intl-00-232.sip")), (XDP_DROP, DROP_COUNTRY_RESTRICTED), "{src}");
        assert_eq!(
            l.run(&msg(src, "invite-intl-tel-44.sip")),
            (XDP_PASS, PASS_SIP),
            "{src}: other countries"
        );
        assert_eq!(l.run(&msg(src, "invite-emergency-112.sip")), (XDP_PASS, PASS_SIP));
        assert_eq!(l.run(&msg(src, "invite-domestic-plus81.sip")), (XDP_PASS, PASS_SIP));
    }
    assert_eq!(l.run(&msg(TRUSTED_V4, "invite-intl-00-232.sip")), (XDP_PASS, PASS_ALLOWLISTED));
    l.maps.set_country_restriction(232, CountryRestriction::default()).unwrap();
    assert_eq!(l.run(&msg(CUSTOMER_V4, "invite-intl-00-232.sip")), (XDP_PASS, PASS_SIP), "lifted");
}

#[test]
fn a_blocklisted_source_stays_a_blocklist_drop() {
    if !privileged("a_blocklisted_source_stays_a_blocklist_drop") {
        return;
    }
    let mut l = Loaded::new();
    l.block("203.0.113.10/32", 0);
    l.maps
        .restrictions
        .set(
            &net("203.0.113.10/32"),
            Restriction { auth_until_ns: monotonic_now_ns() + HOUR, ..Default::default() },
        )
        .unwrap();
    assert_eq!(l.run(&msg(ATTACKER_V4, "register-auth.sip")), (XDP_DROP, DROP_BLOCKLIST));
}

/// Fixtures one after the other, as one TCP segment or UDP datagram.
fn joined(names: &[&str]) -> Vec<u8> {
    names.iter().flat_map(|n| fixture(n).iter().copied()).collect()
}

fn tcp_from(src: IpAddr, payload: &[u8]) -> Vec<u8> {
    FrameBuilder::tcp(src, edge_for(src), 40000, 5060).payload(payload).build()
}

fn udp_from(src: IpAddr, payload: &[u8]) -> Vec<u8> {
    FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(payload).build()
}

/// `bytes` padded with an extra header line to `len` bytes (past the
/// 2,048-byte window when `len` is larger), before its blank line.
fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("headers end") + 2;
    let mut out = bytes[..end].to_vec();
    let pad = len.saturating_sub(bytes.len() + 12);
    out.extend_from_slice(b"X-Pad: ");
    out.extend(std::iter::repeat_n(b'a', pad));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&bytes[end..]);
    out
}

/// A fixture cut before its Call-ID header: headers that go on beyond what
/// the kernel sees.
fn cut_at_call_id(name: &str) -> Vec<u8> {
    let b = fixture(name);
    b[..b.windows(7).position(|w| w == b"Call-ID").expect("a Call-ID")].to_vec()
}

/// Fail closed for the restricted: what the kernel cannot prove harmless
/// for a source's restriction is dropped; the same bytes from anyone else
/// pass as before.
#[test]
fn restricted_sources_fail_closed_on_what_cannot_be_read() {
    if !privileged("restricted_sources_fail_closed_on_what_cannot_be_read") {
        return;
    }
    let mut l = Loaded::new();
    let until = monotonic_now_ns() + HOUR;
    for n in ["203.0.113.10/32", "2001:db8:1::10/128"] {
        l.maps.restrictions.set(&net(n), Restriction { auth_until_ns: until, ..Default::default() }).unwrap();
    }
    l.maps
        .restrictions
        .set(&net("198.51.100.10/32"), Restriction { intl_until_ns: until, ..Default::default() })
        .unwrap();
    let pipelined = joined(&["options-keepalive.sip", "register-auth.sip"]);
    let harmless = joined(&["options-keepalive.sip", "options-keepalive.sip"]);
    let long_options = padded(fixture("options-keepalive.sip"), 2200);
    let mut long_body = fixture("invite-intl-plus-232.sip").to_vec();
    long_body.extend(std::iter::repeat_n(b'a', 2200 - long_body.len()));
    let mut open_invite = fixture("invite-with-auth.sip").to_vec();
    let headers_end = open_invite.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    // A first IP fragment, or a segment, ending before the headers do.
    let cut = open_invite.windows(14).position(|w| w == b"Authorization:").unwrap();
    open_invite.truncate(cut);
    assert!(cut < headers_end);
    let open_emergency = cut_at_call_id("invite-emergency-110.sip");
    let mut blank_first = b"\r\n\r\n".to_vec();
    blank_first.extend_from_slice(fixture("register-auth.sip"));
    for src in [ATTACKER_V4, ATTACKER_V6] {
        let cases: Vec<(&str, Vec<u8>, (u32, u32))> = vec![
            (
                "a REGISTER pipelined after an OPTIONS",
                tcp_from(src, &pipelined),
                (XDP_DROP, DROP_AUTH_SUSPENDED),
            ),
            ("two OPTIONS in one segment", tcp_from(src, &harmless), (XDP_PASS, PASS_SIP)),
            (
                "a continuation segment",
                tcp_from(src, fixture("tcp-continuation.sip")),
                (XDP_DROP, DROP_RESTRICTED_UNREADABLE),
            ),
            (
                "a segment longer than the window",
                tcp_from(src, &long_options),
                (XDP_DROP, DROP_RESTRICTED_UNREADABLE),
            ),
            (
                "a datagram longer than the window, headers read",
                udp_from(src, &long_body),
                (XDP_PASS, PASS_SIP),
            ),
            (
                "headers longer than the window",
                udp_from(src, &long_options),
                (XDP_DROP, DROP_RESTRICTED_UNREADABLE),
            ),
            (
                "headers cut before the credentials",
                udp_from(src, &open_invite),
                (XDP_DROP, DROP_RESTRICTED_UNREADABLE),
            ),
            ("an emergency call cut short", udp_from(src, &open_emergency), (XDP_PASS, PASS_SIP)),
            ("a blank line before a REGISTER", tcp_from(src, &blank_first), (XDP_DROP, DROP_AUTH_SUSPENDED)),
            ("garbage", udp_from(src, fixture("garbage.sip")), (XDP_DROP, DROP_RESTRICTED_UNREADABLE)),
            ("a keep-alive", udp_from(src, fixture("keepalive-crlf.sip")), (XDP_PASS, PASS_SIP)),
        ];
        for (name, frame, want) in cases {
            assert_eq!(l.run(&frame), want, "auth-suspended {src}: {name}");
        }
    }
    // Everyone else fails open, as before.
    for (name, frame) in [
        ("pipelined", tcp_from(CUSTOMER_V6, &pipelined)),
        ("continuation", tcp_from(CUSTOMER_V6, fixture("tcp-continuation.sip"))),
        ("longer than the window", tcp_from(CUSTOMER_V6, &long_options)),
        ("headers cut", udp_from(CUSTOMER_V6, &open_invite)),
        ("garbage", udp_from(CUSTOMER_V6, fixture("garbage.sip"))),
    ] {
        assert_eq!(l.run(&frame), (XDP_PASS, PASS_SIP), "unrestricted: {name}");
    }
    // A blank line before the start line no longer hides credentials: the
    // REGISTER counts as credentialed (it used to offset failures).
    l.run(&tcp_from(CUSTOMER_V6, &blank_first));
    let s = l.maps.source(CUSTOMER_V6).unwrap();
    // (The REGISTER pipelined after an OPTIONS above is counted too: every
    // message of a TCP segment is.)
    assert_eq!((s.register_auth, s.register_noauth), (2, 0), "{s:?}");

    // intl-suspended: a later INVITE in a TCP segment cannot be classified.
    let intl = CUSTOMER_V4;
    let later_intl = joined(&["invite-emergency-110.sip", "invite-intl-plus-232.sip"]);
    let domestic_then_options = joined(&["invite-domestic-trunk.sip", "options-keepalive.sip"]);
    let cases: Vec<(&str, Vec<u8>, (u32, u32))> = vec![
        ("a later INVITE in a segment", tcp_from(intl, &later_intl), (XDP_DROP, DROP_RESTRICTED_UNREADABLE)),
        ("a domestic call and an OPTIONS", tcp_from(intl, &domestic_then_options), (XDP_PASS, PASS_SIP)),
        // Over UDP a receiver discards what follows the first message.
        ("a later INVITE in a datagram", udp_from(intl, &later_intl), (XDP_PASS, PASS_SIP)),
        ("an emergency call", tcp_from(intl, fixture("invite-emergency-110.sip")), (XDP_PASS, PASS_SIP)),
        (
            "a continuation",
            tcp_from(intl, fixture("tcp-continuation.sip")),
            (XDP_DROP, DROP_RESTRICTED_UNREADABLE),
        ),
        ("an international call cut short", udp_from(intl, &open_invite), (XDP_DROP, DROP_INTL_SUSPENDED)),
        (
            "a domestic call cut short (credentials are not its restriction)",
            udp_from(intl, &cut_at_call_id("invite-domestic-trunk.sip")),
            (XDP_PASS, PASS_SIP),
        ),
    ];
    for (name, frame, want) in cases {
        assert_eq!(l.run(&frame), want, "intl-suspended: {name}");
    }
}

/// `invite-with-auth.sip` (user 1001, calling +232) dialling `number`
/// instead, with `extra` inserted before its credentials.
fn credentialed_invite(src: IpAddr, number: &str, extra: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture("invite-with-auth.sip").to_vec()).expect("utf-8");
    let text =
        text.replace("+23276123456", number).replacen("Authorization:", &format!("{extra}Authorization:"), 1);
    FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(text.as_bytes()).build()
}

#[test]
fn a_line_intl_suspended_by_identity_is_dropped_everywhere_and_hidden_credentials_fail_closed_where_seen() {
    if !privileged(
        "a_line_intl_suspended_by_identity_is_dropped_everywhere_and_hidden_credentials_fail_closed_where_seen",
    ) {
        return;
    }
    let mut l = Loaded::new();
    l.allow(&["203.0.113.20/32"]);
    // Hidden credentials fail closed within the nonce horizon of a drop.
    l.maps.set_config(Config { nonce_horizon_s: 300, ..Config::default() }).expect("config");
    let now = monotonic_now_ns();
    let line = identity_tag(&IdentityKey::default(), b"1001");
    let everywhere = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    let r = IdentityRestriction { intl_until_ns: now + HOUR, intl_imposed_at_ns: now, ..Default::default() };
    l.maps.identities.set(everywhere, line, r).unwrap();
    for src in [CUSTOMER_V4, CUSTOMER_V6, ATTACKER_V4] {
        for _copy in 0..3 {
            assert_eq!(
                l.run(&credentialed_invite(src, "+23276123456", "")),
                (XDP_DROP, DROP_INTL_SUSPENDED),
                "{src}"
            );
        }
        for number in ["0312345678", "110", "+81312345678"] {
            assert_eq!(l.run(&credentialed_invite(src, number, "")), (XDP_PASS, PASS_SIP), "{src} {number}");
        }
    }
    assert_eq!(
        l.run(&credentialed_invite(TRUSTED_V4, "+23276123456", "")),
        (XDP_PASS, PASS_ALLOWLISTED),
        "the allowlist wins"
    );
    // Each dropped call counts once per country, however many copies.
    assert_eq!(l.maps.country_blocked().unwrap(), vec![(232, 3)]);

    // Where the line was dropped, what could hide its credentials fails
    // closed: padding past what is read (the credentials in a later
    // fragment), a decoy credentials header first, an unreadable datagram.
    let pad = format!("X-Padding: {}\r\n", "p".repeat(1900));
    let decoy = "Proxy-Authorization: Digest username=\"decoy\", nonce=\"x\"\r\n";
    let garbage = FrameBuilder::udp(ATTACKER_V4, edge_for(ATTACKER_V4), 40000, 5060).payload(b"INV").build();
    for frame in [
        credentialed_invite(ATTACKER_V4, "+442071234567", &pad),
        credentialed_invite(ATTACKER_V4, "+442071234567", decoy),
        // A second username in the same header.
        {
            let text = String::from_utf8(fixture("invite-with-auth.sip").to_vec()).unwrap();
            let text = text
                .replace("+23276123456", "+442071234567")
                .replace("username=\"1001\"", "username=\"decoy\", username=\"1001\"");
            FrameBuilder::udp(ATTACKER_V4, edge_for(ATTACKER_V4), 40000, 5060)
                .payload(text.as_bytes())
                .build()
        },
        garbage.clone(),
    ] {
        assert_eq!(l.run(&frame), (XDP_DROP, DROP_RESTRICTED_UNREADABLE));
    }
    // Readable calls of other lines there pass, and so do the hidden
    // framings where the line was never seen (judged like any source).
    let other =
        String::from_utf8(fixture("invite-with-auth.sip").to_vec()).unwrap().replace("\"1001\"", "\"1002\"");
    let other =
        FrameBuilder::udp(ATTACKER_V4, edge_for(ATTACKER_V4), 40000, 5060).payload(other.as_bytes()).build();
    assert_eq!(l.run(&other), (XDP_PASS, PASS_SIP));
    let fresh: IpAddr = "192.0.2.77".parse().unwrap();
    assert_eq!(l.run(&credentialed_invite(fresh, "+442071234567", decoy)), (XDP_PASS, PASS_SIP));
    let garbage = FrameBuilder::udp(fresh, edge_for(fresh), 40000, 5060).payload(b"INV").build();
    assert_eq!(l.run(&garbage), (XDP_PASS, PASS_SIP));

    // Lifted (the entry gone): the line calls abroad again.
    l.maps.identities.remove(everywhere, line).unwrap();
    assert_eq!(l.run(&credentialed_invite(CUSTOMER_V4, "+23276123456", "")), (XDP_PASS, PASS_SIP));
}
