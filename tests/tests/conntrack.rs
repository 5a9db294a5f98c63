//! "Bans that do nothing": with netfilter, a UDP ban placed after the usual
//! `ct state established accept` rule is bypassed by the flow's existing
//! conntrack entry. XDP runs before conntrack, so tollgate's block drops the
//! same flow. This test shows both on one flow.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use tollgate_common::verdict;
use tollgate_tests::{privileged, topology::*, wait_for};

const N: usize = 20;

fn nft_established_packets(topo: &Topology) -> u64 {
    let out = topo.edge.exec(&["nft", "list", "chain", "inet", "tgtest", "input"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("ct state established")).expect("established rule");
    line.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {line:?}"))
}

/// Sends N datagrams on the flow and counts how many the edge receives.
fn send_on_flow(attacker: &UdpSocket, edge: &UdpSocket, dst: SocketAddr) -> usize {
    for _ in 0..N {
        attacker.send_to(b"OPTIONS sip:edge SIP/2.0\r\n\r\n", dst).expect("send");
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut buf = [0u8; 512];
    let mut got = 0;
    while edge.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

#[test]
fn xdp_block_is_not_bypassed_by_an_established_conntrack_entry() {
    if !privileged("xdp_block_is_not_bypassed_by_an_established_conntrack_entry") {
        return;
    }
    let topo = Topology::new();
    let dst = SocketAddr::new(EDGE_V4, 5060);
    let src = SocketAddr::new(ATTACKER_V4, 40001);
    let edge = topo.edge.run(move || UdpSocket::bind(dst).expect("bind edge"));
    edge.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let attacker = topo.peer.run(move || UdpSocket::bind(src).expect("bind attacker"));

    // A stateful firewall in the edge namespace, as fail2ban setups have it.
    topo.edge.exec(&["nft", "add", "table", "inet", "tgtest"]);
    topo.edge.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "tgtest",
        "input",
        "{ type filter hook input priority 0; policy accept; }",
    ]);
    topo.edge.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "tgtest",
        "input",
        "ct",
        "state",
        "established",
        "counter",
        "accept",
    ]);

    // The flow becomes established: a request and a reply.
    assert_eq!(send_on_flow(&attacker, &edge, dst), N);
    edge.send_to(b"SIP/2.0 200 OK\r\n\r\n", src).expect("reply");
    let mut buf = [0u8; 512];
    attacker.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    attacker.recv_from(&mut buf).expect("reply arrives, flow established");

    // The netfilter ban, appended after the established rule, does nothing.
    topo.edge.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "tgtest",
        "input",
        "ip",
        "saddr",
        "203.0.113.10",
        "udp",
        "dport",
        "5060",
        "counter",
        "drop",
    ]);
    let before = nft_established_packets(&topo);
    assert_eq!(send_on_flow(&attacker, &edge, dst), N, "netfilter ban bypassed via conntrack");
    assert_eq!(nft_established_packets(&topo), before + N as u64);

    // tollgate's XDP block stops the same flow before conntrack sees it.
    let agent = Agent::start(&topo, &["--block", "203.0.113.10=10m"]);
    let before = nft_established_packets(&topo);
    let drops = agent.packets(verdict::DROP_BLOCKLIST);
    assert_eq!(send_on_flow(&attacker, &edge, dst), 0, "XDP block drops the established flow");
    let counted = wait_for(Duration::from_secs(5), || {
        (agent.packets(verdict::DROP_BLOCKLIST) == drops + N as u64).then_some(())
    });
    assert!(counted.is_some(), "all {N} dropped in XDP");
    assert_eq!(nft_established_packets(&topo), before, "no packet reached conntrack");
}
