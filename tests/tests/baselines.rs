//! Learned thresholds and country windows in the kernel (issue: decision
//! engine), through the loaded program with BPF_PROG_TEST_RUN: a source or
//! country with a learned peacetime level is reported at its own threshold,
//! not the ceiling; a country is reported only with enough distinct
//! sources, once per window, with the evidence in the event.

use std::net::{IpAddr, Ipv4Addr};

use tollgate_common::{
    Baseline, CALL_COPIES, Config, EVENT_CALL, EVENT_COUNTRY_INVITES, EVENT_FLAG_IDENTIFIED,
    EVENT_INTL_INVITES, EVENT_SEEN, ThresholdEvent, corpus::fixture, frames::FrameBuilder,
};
use tollgate_tests::{
    nth_call, privileged,
    testrun::{Loaded, XDP_PASS},
    topology::*,
};

const MINUTE_NS: u64 = 60_000_000_000;

/// The `n`th distinct call of `src` (its own Call-ID).
fn invite(src: IpAddr, name: &str, n: usize) -> Vec<u8> {
    FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(&nth_call(fixture(name), n)).build()
}

fn send(l: &Loaded, src: IpAddr, n: usize) {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    for _ in 0..n {
        let i = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(l.run(&invite(src, "invite-intl-plus-232.sip", i)).0, XDP_PASS);
    }
}

fn loaded(intl: u32, country: u32, min_sources: u32) -> Loaded {
    let mut l = Loaded::new();
    l.maps
        .set_config(Config {
            window_ns: MINUTE_NS,
            intl_invite_threshold: intl,
            country_invite_threshold: country,
            country_min_sources: min_sources,
            ..Config::default()
        })
        .expect("config");
    l
}

fn of_kind(events: &[ThresholdEvent], kind: u32) -> Vec<ThresholdEvent> {
    events.iter().filter(|e| e.kind == kind).copied().collect()
}

#[test]
fn a_source_with_a_learned_level_is_reported_at_its_own_threshold() {
    if !privileged("a_source_with_a_learned_level_is_reported_at_its_own_threshold") {
        return;
    }
    let mut l = loaded(10, 0, 1);
    // A PBX that normally makes 6 international calls a window: x4 -> 24.
    let learned = Baseline { threshold: 24, windows: 5, peacetime_milli: 6_000 };
    l.maps.set_intl_baseline(CUSTOMER_V4, Some(learned)).expect("baseline");
    send(&l, CUSTOMER_V4, 23);
    assert!(l.events().is_empty(), "23 is above the ceiling but below the PBX's own threshold");
    send(&l, CUSTOMER_V4, 1);
    let events = l.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!((e.kind, e.count, e.threshold), (EVENT_INTL_INVITES, 24, 24));
    assert_eq!(tollgate::maps::key_addr(&e.addr), CUSTOMER_V4);
    // Once per window.
    send(&l, CUSTOMER_V4, 30);
    assert!(l.events().is_empty());
    // A source with no history: the ceiling.
    send(&l, CUSTOMER_V6, 10);
    let events = l.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].count, events[0].threshold), (10, 10));
    // A learned threshold below the ceiling never lowers it.
    let low = Baseline { threshold: 3, windows: 5, peacetime_milli: 500 };
    l.maps.set_intl_baseline(ATTACKER_V4, Some(low)).expect("baseline");
    send(&l, ATTACKER_V4, 9);
    assert!(l.events().is_empty());
    send(&l, ATTACKER_V4, 1);
    assert_eq!(of_kind(&l.events(), EVENT_INTL_INVITES).len(), 1);
}

#[test]
fn a_country_is_reported_only_when_many_sources_surge_to_it() {
    if !privileged("a_country_is_reported_only_when_many_sources_surge_to_it") {
        return;
    }
    let mut l = loaded(0, 12, 4);
    let sources: Vec<IpAddr> = (1..=4).map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, 100 + i))).collect();
    // One source alone, far over the country threshold: for the per-source
    // measures, not a country restriction.
    send(&l, sources[0], 20);
    assert!(l.events().is_empty());
    // Three sources: still not enough.
    send(&l, sources[1], 3);
    send(&l, sources[2], 3);
    assert!(l.events().is_empty());
    // A fourth: reported once, with the count, threshold and sources.
    send(&l, sources[3], 1);
    let events = l.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!((e.kind, e.cc, e.count, e.threshold, e.sources), (EVENT_COUNTRY_INVITES, 232, 27, 12, 4));
    assert_eq!(e.addr, [0; 16], "a country event names no source");
    send(&l, sources[3], 10);
    assert!(l.events().is_empty(), "once per window");
    // Domestic and emergency calls are not international.
    for name in ["invite-domestic-trunk.sip", "invite-emergency-110.sip"] {
        for src in &sources {
            for i in 0..5 {
                l.run(&invite(*src, name, i));
            }
        }
    }
    assert!(l.events().is_empty());
    // Other countries have windows of their own: +44 starts from zero.
    let to_44 = |l: &Loaded, round: usize| {
        for src in &sources {
            l.run(&invite(*src, "invite-intl-tel-44.sip", round));
        }
    };
    for round in 0..2 {
        to_44(&l, round);
    }
    assert!(l.events().is_empty(), "8 < 12");
    to_44(&l, 2);
    let events = l.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].cc, events[0].count, events[0].sources), (44, 12, 4));
}

#[test]
fn a_country_with_a_learned_level_is_reported_at_its_own_threshold() {
    if !privileged("a_country_with_a_learned_level_is_reported_at_its_own_threshold") {
        return;
    }
    let mut l = loaded(0, 12, 2);
    // Normal trade with +232: 10 calls a window -> reported at 40.
    let learned = Baseline { threshold: 40, windows: 9, peacetime_milli: 10_000 };
    l.maps.set_country_baseline(232, learned).expect("baseline");
    let (a, b) = (CUSTOMER_V4, CUSTOMER_V6);
    send(&l, a, 20);
    send(&l, b, 19);
    assert!(l.events().is_empty(), "39 < 40");
    send(&l, b, 1);
    let events = l.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].count, events[0].threshold, events[0].sources), (40, 40, 2));
}

/// Calls, not packets: the copies (retransmissions) of an international
/// INVITE and its authentication retry are one call attempt, counted once
/// and reported once on the call events with the identity the retry
/// reveals; a new Call-ID, or another number under the same Call-ID, is a
/// new attempt; a client reusing one Call-ID and CSeq gets at most
/// CALL_COPIES counted as one.
#[test]
fn a_call_attempt_is_counted_once_whatever_its_copies_and_retry() {
    if !privileged("a_call_attempt_is_counted_once_whatever_its_copies_and_retry") {
        return;
    }
    let mut l = loaded(0, 0, 1);
    let src = CUSTOMER_V4;
    let intl = |l: &Loaded| l.maps.source(src).unwrap_or_default().intl_invites;
    let first = invite(src, "invite-intl-plus-232.sip", 1_000_000);
    for _ in 0..3 {
        assert_eq!(l.run(&first).0, XDP_PASS);
    }
    assert_eq!(intl(&l), 1, "three copies are one attempt");
    let events = of_kind(&l.call_events(), EVENT_CALL);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].cc, events[0].tag, events[0].flags), (EVENT_CALL, 232, 0, 0));
    // The retry after a 407: CSeq + 1 with credentials, the same Call-ID.
    let retry = String::from_utf8(nth_call(fixture("invite-intl-plus-232.sip"), 1_000_000)).unwrap();
    let cseq = retry.lines().find(|l| l.starts_with("CSeq:")).expect("CSeq").to_owned();
    let n: u32 = cseq.split_whitespace().nth(1).unwrap().parse().unwrap();
    let retry = retry.replace(&cseq, &format!("CSeq: {} INVITE", n + 1)).replace(
        "Content-Length:",
        "Proxy-Authorization: Digest username=\"1001\", realm=\"edge.example\", nonce=\"abc\", uri=\"sip:x\", response=\"0\"\r\nContent-Length:",
    );
    let retry = FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(retry.as_bytes()).build();
    for _ in 0..2 {
        l.run(&retry);
    }
    assert_eq!(intl(&l), 1, "the authentication retry and its copy are the same attempt");
    let events = of_kind(&l.call_events(), EVENT_CALL);
    assert_eq!(events.len(), 1, "the retry reveals the identity: {events:?}");
    assert!(events[0].tag != 0 && events[0].flags == EVENT_FLAG_IDENTIFIED, "{events:?}");
    // A second retry is another attempt (not a way to place calls free).
    let again = String::from_utf8(nth_call(fixture("invite-intl-plus-232.sip"), 1_000_000)).unwrap();
    let again = again.replace(&cseq, &format!("CSeq: {} INVITE", n + 5));
    l.run(&FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(again.as_bytes()).build());
    assert_eq!(intl(&l), 2);
    // One Call-ID and CSeq reused for many calls: at most CALL_COPIES each.
    let reused = invite(src, "invite-intl-plus-232.sip", 2_000_000);
    for _ in 0..(3 * CALL_COPIES) {
        l.run(&reused);
    }
    assert_eq!(intl(&l), 2 + 3, "{} copies of one are three attempts", 3 * CALL_COPIES);
    assert_eq!(l.call_events().len(), 1 + 3);
}

/// Issue 17: a customer's source (it sent an INVITE) is reported on the
/// call events once per window, with its first sighting in the kernel, so
/// the agent learns histories without reading every source; a source that
/// only probes (OPTIONS, REGISTER without credentials) is never reported.
#[test]
fn a_customers_source_is_reported_once_a_window_and_a_probing_one_never() {
    if !privileged("a_customers_source_is_reported_once_a_window_and_a_probing_one_never") {
        return;
    }
    let window_ns = 200_000_000;
    let mut l = Loaded::new();
    l.maps.set_config(Config { window_ns, ..Config::default() }).expect("config");
    let msg = |src: IpAddr, name: &str| {
        FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(fixture(name)).build()
    };
    let (customer, scanner) = (CUSTOMER_V4, ATTACKER_V6);
    for _ in 0..3 {
        assert_eq!(l.run(&msg(scanner, "svmap-options.sip")).0, XDP_PASS);
        assert_eq!(l.run(&msg(scanner, "register-noauth.sip")).0, XDP_PASS);
    }
    assert_eq!(l.run(&msg(customer, "options-keepalive.sip")).0, XDP_PASS);
    assert!(of_kind(&l.call_events(), EVENT_SEEN).is_empty(), "not a customer's yet");
    let first_seen = l.maps.source(customer).expect("tracked").first_seen_ns;
    // The first INVITE (domestic: no call event of its own) makes it a
    // customer's source: reported at once, with its first sighting.
    assert_eq!(l.run(&msg(customer, "invite-domestic-trunk.sip")).0, XDP_PASS);
    for _ in 0..3 {
        l.run(&msg(customer, "options-keepalive.sip"));
        l.run(&msg(customer, "invite-domestic-trunk.sip"));
    }
    let seen = of_kind(&l.call_events(), EVENT_SEEN);
    assert_eq!(seen.len(), 1, "once in the window: {seen:?}");
    assert_eq!(tollgate::maps::key_addr(&seen[0].addr), customer);
    assert_eq!(seen[0].window_start_ns, first_seen, "its first sighting, before the INVITE");
    assert!(seen[0].at_ns > first_seen, "{seen:?}");
    // The next window: reported again by whatever it sends first.
    std::thread::sleep(std::time::Duration::from_nanos(window_ns + 50_000_000));
    l.run(&msg(customer, "options-keepalive.sip"));
    l.run(&msg(scanner, "svmap-options.sip"));
    let seen = of_kind(&l.call_events(), EVENT_SEEN);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((tollgate::maps::key_addr(&seen[0].addr), seen[0].window_start_ns), (customer, first_seen));
    assert!(l.maps.source(scanner).is_some(), "the scanner is tracked, never reported");
}
