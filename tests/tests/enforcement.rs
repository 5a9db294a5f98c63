//! Blocklist/allowlist enforcement with real traffic through an
//! XDP-attached veth (issue: foundation, acceptance items a, b and d).

use std::net::SocketAddr;

use tollgate_common::verdict;
use tollgate_tests::{
    privileged,
    topology::*,
    traffic::{tcp_connects, tcp_listen},
};

const N: usize = 40;
const BLOCKS: [&str; 4] = ["--block", "203.0.113.0/24=10m", "--block", "2001:db8:1::/48=10m"];
const ALLOWS: [&str; 4] = ["--allow", "203.0.113.20", "--allow", "2001:db8:1::20"];

fn sa(ip: std::net::IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn udp_delivered(topo: &Topology, agent: &Agent, src: std::net::IpAddr, port: u16) -> usize {
    tollgate_tests::topology::udp_delivered(topo, agent, src, port, N)
}

#[test]
fn blocklisted_sources_are_dropped_on_sip_ports_and_pass_elsewhere() {
    if !privileged("blocklisted_sources_are_dropped_on_sip_ports_and_pass_elsewhere") {
        return;
    }
    let topo = Topology::new();
    let agent = Agent::start(&topo, &[&BLOCKS[..], &ALLOWS[..]].concat());
    for attacker in [ATTACKER_V4, ATTACKER_V6] {
        let drops = agent.packets(verdict::DROP_BLOCKLIST);
        assert_eq!(udp_delivered(&topo, &agent, attacker, 5060), 0, "{attacker} -> udp/5060 must be dropped");
        assert_eq!(agent.packets(verdict::DROP_BLOCKLIST), drops + N as u64);
        assert_eq!(udp_delivered(&topo, &agent, attacker, 5080), 0, "{attacker} -> udp/5080 must be dropped");
        assert_eq!(
            udp_delivered(&topo, &agent, attacker, 5999),
            N,
            "{attacker} -> udp/5999 is not SIP: must pass"
        );
    }
    for customer in [CUSTOMER_V4, CUSTOMER_V6] {
        assert_eq!(udp_delivered(&topo, &agent, customer, 5060), N, "{customer} is not blocked");
    }
    for trusted in [TRUSTED_V4, TRUSTED_V6] {
        let allowed = agent.packets(verdict::PASS_ALLOWLISTED);
        assert_eq!(
            udp_delivered(&topo, &agent, trusted, 5060),
            N,
            "{trusted} is allowlisted inside a blocked prefix"
        );
        assert_eq!(agent.packets(verdict::PASS_ALLOWLISTED), allowed + N as u64);
    }

    // TCP: the blocked source's SYN never reaches the stack.
    let _listeners: Vec<_> = [EDGE_V4, EDGE_V6]
        .into_iter()
        .flat_map(|ip| [tcp_listen(&topo.edge, sa(ip, 5060)), tcp_listen(&topo.edge, sa(ip, 5999))])
        .collect();
    for attacker in [ATTACKER_V4, ATTACKER_V6] {
        assert!(
            !tcp_connects(&topo.peer, attacker, sa(edge_for(attacker), 5060)),
            "{attacker} -> tcp/5060 must be dropped"
        );
        assert!(
            tcp_connects(&topo.peer, attacker, sa(edge_for(attacker), 5999)),
            "{attacker} -> tcp/5999 must pass"
        );
    }
    for ok in [TRUSTED_V4, TRUSTED_V6, CUSTOMER_V4, CUSTOMER_V6] {
        assert!(tcp_connects(&topo.peer, ok, sa(edge_for(ok), 5060)), "{ok} -> tcp/5060 must pass");
    }
}

#[test]
fn block_all_ports_drops_every_port_but_still_honours_the_allowlist() {
    if !privileged("block_all_ports_drops_every_port_but_still_honours_the_allowlist") {
        return;
    }
    let topo = Topology::new();
    topo.static_neighbours();
    let agent = Agent::start(&topo, &[&BLOCKS[..], &ALLOWS[..], &["--block-all-ports"]].concat());
    for attacker in [ATTACKER_V4, ATTACKER_V6] {
        assert_eq!(
            udp_delivered(&topo, &agent, attacker, 5999),
            0,
            "{attacker} -> udp/5999 with --block-all-ports"
        );
    }
    for ok in [TRUSTED_V4, CUSTOMER_V6] {
        assert_eq!(udp_delivered(&topo, &agent, ok, 5999), N);
    }
}

#[test]
fn custom_sip_ports_replace_the_defaults() {
    if !privileged("custom_sip_ports_replace_the_defaults") {
        return;
    }
    let topo = Topology::new();
    let agent = Agent::start(&topo, &[&BLOCKS[..], &["--sip-port", "udp/5062"]].concat());
    assert_eq!(udp_delivered(&topo, &agent, ATTACKER_V4, 5062), 0);
    assert_eq!(udp_delivered(&topo, &agent, ATTACKER_V4, 5060), N, "5060 is no longer a SIP port");
}

#[test]
fn metrics_match_the_packets_sent() {
    if !privileged("metrics_match_the_packets_sent") {
        return;
    }
    let topo = Topology::new();
    let agent = Agent::start(&topo, &[&BLOCKS[..], &ALLOWS[..]].concat());
    // UDP only, so no handshake packets blur the counts.
    udp_delivered(&topo, &agent, ATTACKER_V4, 5060);
    udp_delivered(&topo, &agent, ATTACKER_V6, 5060);
    udp_delivered(&topo, &agent, CUSTOMER_V4, 5060);
    udp_delivered(&topo, &agent, TRUSTED_V6, 5080);
    udp_delivered(&topo, &agent, CUSTOMER_V6, 6000);
    let page = agent.metrics().expect("metrics endpoint answers");
    let value = |s: &str| metric_value(&page, s).unwrap_or_else(|| panic!("{s} missing from:\n{page}"));
    let n = N as f64;
    assert_eq!(value(r#"tollgate_xdp_packets_total{action="drop",reason="blocklist"}"#), 2.0 * n);
    assert_eq!(value(r#"tollgate_xdp_packets_total{action="pass",reason="sip"}"#), n);
    assert_eq!(value(r#"tollgate_xdp_packets_total{action="pass",reason="allowlisted"}"#), n);
    // Neighbour discovery and the like also count here: at least ours.
    assert!(value(r#"tollgate_xdp_packets_total{action="pass",reason="not_sip"}"#) >= n);
    assert_eq!(value(r#"tollgate_xdp_packets_total{action="pass",reason="malformed"}"#), 0.0);
    // The endpoint and the kernel map agree exactly.
    assert_eq!(
        agent.packets(verdict::DROP_BLOCKLIST) as f64,
        value(r#"tollgate_xdp_packets_total{action="drop",reason="blocklist"}"#)
    );
    // IPv4 UDP OPTIONS frame: 14 + 20 + 8 + payload bytes each.
    let frame_v4 = (14 + 20 + 8 + tollgate_tests::traffic::OPTIONS.len()) as f64;
    let frame_v6 = frame_v4 + 20.0;
    assert_eq!(
        value(r#"tollgate_xdp_bytes_total{action="drop",reason="blocklist"}"#),
        n * (frame_v4 + frame_v6)
    );
    assert_eq!(value(r#"tollgate_blocklist_entries{state="active"}"#), 2.0);
    assert_eq!(value("tollgate_allowlist_entries"), 2.0);
    assert_eq!(
        value(&format!(r#"tollgate_xdp_attached{{interface="{}",mode="driver"}}"#, topo.edge_if)),
        1.0
    );
}
