//! SIP restrictions in the kernel (issue: decision engine), through the
//! loaded program with BPF_PROG_TEST_RUN: what each restriction drops, what
//! it never drops (allowlisted sources, emergency calls, other traffic), and
//! that a dropped request is still counted as evidence.

use std::net::IpAddr;

use ipnet::IpNet;
use tollgate::clock::monotonic_now_ns;
use tollgate_common::{CountryRestriction, Restriction, corpus::CORPUS, frames::FrameBuilder, verdict::*};
use tollgate_tests::{
    privileged,
    testrun::{Loaded, XDP_DROP, XDP_PASS},
    topology::*,
};

const HOUR: u64 = 3_600_000_000_000;

fn msg(src: IpAddr, name: &str) -> Vec<u8> {
    let bytes = CORPUS.iter().find(|c| c.name == name).expect("fixture").bytes;
    FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(bytes).build()
}

fn response_to(dst: IpAddr, name: &str) -> Vec<u8> {
    let bytes = CORPUS.iter().find(|c| c.name == name).expect("fixture").bytes;
    FrameBuilder::udp(edge_for(dst), dst, 5060, 40000).payload(bytes).build()
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
