//! Real SIP between namespaces (issue: SIP at the NIC). A sipp digest
//! registrar runs on the edge host; tollgate counts the phones' REGISTERs
//! with XDP on ingress and the registrar's responses with the TC egress
//! counter on the same interface. INVITEs are classified by number.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tollgate_common::{SourceStats, corpus::fixture, number::class, sip_stat};
use tollgate_tests::{
    privileged,
    sipp::{Registrar, register},
    topology::*,
    traffic::tcp_listen,
    wait_for,
};

const CALLS: u32 = 5;

fn source(agent: &Agent, addr: IpAddr) -> SourceStats {
    tollgate::maps::Maps::open_pinned(&agent.pin_dir).expect("pinned maps").source(addr).unwrap_or_default()
}

/// Counting only: in dry-run the threshold events are still reported and
/// audited, but no restriction interferes with the counts under test.
fn start(topo: &Topology) -> Agent {
    let egress = topo.edge_if.clone();
    Agent::start(topo, &["--egress-iface", &egress, "--auth-failure-threshold", "3", "--dry-run"])
}

#[test]
fn register_failures_are_counted_per_source_and_a_good_phone_has_none() {
    if !privileged("register_failures_are_counted_per_source_and_a_good_phone_has_none") {
        return;
    }
    let topo = Topology::new();
    let agent = start(&topo);
    for tcp in [false, true] {
        for (phone, attacker, edge) in
            [(CUSTOMER_V4, ATTACKER_V4, EDGE_V4), (CUSTOMER_V6, ATTACKER_V6, EDGE_V6)]
        {
            let what = format!(
                "{} over {}",
                if edge.is_ipv4() { "IPv4" } else { "IPv6" },
                if tcp { "TCP" } else { "UDP" }
            );
            let (good_before, bad_before) = (source(&agent, phone), source(&agent, attacker));
            let registrar = Registrar::start(&topo.edge, edge, tcp);
            register(&topo.peer, phone, edge, tcp, true, CALLS);
            register(&topo.peer, attacker, edge, tcp, false, CALLS);
            drop(registrar);

            let n = CALLS as u64;
            let good = source(&agent, phone);
            assert_eq!(
                good.register_noauth - good_before.register_noauth,
                n,
                "{what}: phone's first REGISTERs"
            );
            assert_eq!(
                good.register_auth - good_before.register_auth,
                n,
                "{what}: phone's credentialed REGISTERs"
            );
            assert_eq!(
                good.register_challenged - good_before.register_challenged,
                n,
                "{what}: 401s to the phone"
            );
            assert_eq!(good.register_ok - good_before.register_ok, n, "{what}: 200s to the phone");
            assert_eq!(good.auth_failures(), 0, "{what}: a phone that registers correctly has no failures");

            let bad = source(&agent, attacker);
            assert_eq!(
                bad.register_forbidden - bad_before.register_forbidden,
                n,
                "{what}: 403s to the attacker"
            );
            assert_eq!(
                bad.auth_failures() - bad_before.auth_failures(),
                n,
                "{what}: one failure per wrong password"
            );
        }
    }
    // The kernel reported the attacker (threshold 3) and never the phones.
    let log = wait_for(Duration::from_secs(5), || {
        let log = agent.log_text();
        log.contains("REGISTER authentication failures in the current window").then_some(log)
    })
    .expect("a threshold event for the attacker");
    assert!(log.contains("source 203.0.113.10:") || log.contains("source 2001:db8:1::10:"), "{log}");
    assert!(!log.contains("source 198.51.100.10:") && !log.contains("source 2001:db8:2::10:"), "{log}");
    let page = agent.metrics().expect("metrics");
    assert!(
        metric_value(&page, r#"tollgate_threshold_events_total{kind="auth_failures"}"#).unwrap_or(0.0) >= 1.0,
        "{page}"
    );
    assert!(
        metric_value(&page, r#"tollgate_sip_register_responses_total{result="forbidden"}"#).unwrap_or(0.0)
            >= 4.0 * CALLS as f64
    );
}

fn invite(name: &str) -> &'static [u8] {
    fixture(name)
}

#[test]
fn invites_are_classified_by_dialled_number_over_udp_and_tcp() {
    if !privileged("invites_are_classified_by_dialled_number_over_udp_and_tcp") {
        return;
    }
    let topo = Topology::new();
    let agent = start(&topo);
    let _listeners = [
        tcp_listen(&topo.edge, SocketAddr::new(EDGE_V4, 5060)),
        tcp_listen(&topo.edge, SocketAddr::new(EDGE_V6, 5060)),
    ];
    let sierra_leone = ["invite-intl-plus-232.sip", "invite-intl-010-232.sip", "invite-intl-00-232.sip"];
    let others = [
        "invite-domestic-trunk.sip",
        "invite-domestic-plus81.sip",
        "invite-emergency-110.sip",
        "invite-emergency-119.sip",
    ];
    let mut sent = 0;
    for src in [CUSTOMER_V4, CUSTOMER_V6] {
        let dst = SocketAddr::new(edge_for(src), 5060);
        for name in sierra_leone.iter().chain(others.iter()) {
            let bytes = invite(name);
            // Another call (Call-ID) over TCP: the same one twice would be
            // one call attempt and its copy.
            let again = tollgate_tests::nth_call(bytes, 1);
            topo.peer.run(move || {
                // Over UDP...
                let udp = std::net::UdpSocket::bind(SocketAddr::new(src, 0)).expect("udp");
                udp.send_to(bytes, dst).expect("send");
                // ...and over TCP, each message at the start of a segment.
                let tcp = tollgate_tests::traffic::tcp_stream_from(src, dst).expect("tcp connect");
                (&tcp).write_all(&again).expect("write");
            });
            sent += 2;
        }
    }
    let maps = || tollgate::maps::Maps::open_pinned(&agent.pin_dir).expect("pinned maps");
    let total_invites = || maps().sip_totals().expect("stats")[(sip_stat::REQUEST_BASE + 2) as usize];
    assert!(
        wait_for(Duration::from_secs(5), || (total_invites() >= sent).then_some(())).is_some(),
        "{sent} INVITEs counted"
    );
    let stats = maps().sip_totals().expect("stats");
    let class_count = |c: u8| stats[(sip_stat::INVITE_CLASS_BASE + c as u32) as usize];
    assert_eq!(
        class_count(class::INTERNATIONAL),
        2 * 2 * 3,
        "+232, 010232, 00232 over UDP and TCP, v4 and v6"
    );
    assert_eq!(class_count(class::DOMESTIC), 2 * 2 * 2);
    assert_eq!(class_count(class::EMERGENCY), 2 * 2 * 2);
    assert_eq!(maps().country_invites().expect("countries"), vec![(232, 12)]);
    for src in [CUSTOMER_V4, CUSTOMER_V6] {
        let s = source(&agent, src);
        assert_eq!((s.invites, s.intl_invites, s.emergency_invites), (14, 6, 4), "{src}");
    }
    let page = agent.metrics().expect("metrics");
    assert_eq!(
        metric_value(&page, r#"tollgate_sip_international_invites_total{country="SL",cc="232"}"#),
        Some(12.0),
        "{page}"
    );
    assert_eq!(metric_value(&page, r#"tollgate_sip_invites_total{class="emergency"}"#), Some(8.0));
    // No metric label carries a number or an address.
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        for forbidden in ["23276123456", "198.51.100", "2001:db8", "0312345678"] {
            assert!(!line.contains(forbidden), "{line}");
        }
    }
}
