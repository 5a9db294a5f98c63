//! `cargo xtask demo`: a self-contained demonstration in throw-away network
//! namespaces. An attacker, a trusted peer inside the attacker's prefix and a
//! customer send SIP to an edge host running tollgate; the attacker's packets
//! are dropped in XDP, the others pass. Everything is removed at the end.

use std::{net::SocketAddr, time::Duration};

use tollgate_common::verdict;
use tollgate_tests::{
    topology::*,
    traffic::{UdpSink, udp_burst},
    wait_for,
};

const N: usize = 50;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo creates network namespaces and loads XDP: run it as root");
        std::process::exit(1);
    }
    tollgate_tests::netns::sweep_stale();
    println!("== tollgate demo: SIP toll-fraud enforcement in XDP ==\n");
    let topo = Topology::new();
    topo.static_neighbours();
    println!(
        "topology: peer namespace {} <-> edge namespace {} (XDP on {})",
        topo.peer.name(),
        topo.edge.name(),
        topo.edge_if
    );
    let args = [
        "--block",
        "203.0.113.0/24=5m",
        "--block",
        "2001:db8:1::/48=5m",
        "--allow",
        "203.0.113.20",
        "--allow",
        "2001:db8:1::20",
    ];
    println!("starting: tollgate run --iface {} {}\n", topo.edge_if, args.join(" "));
    let agent = Agent::start(&topo, &args);

    println!(
        "{:<44} {:>6} {:>10} {:>16}",
        "who sends SIP OPTIONS to the edge", "sent", "delivered", "verdict"
    );
    for (who, src) in [
        ("attacker 203.0.113.10 (blocked /24)", ATTACKER_V4),
        ("attacker 2001:db8:1::10 (blocked /48)", ATTACKER_V6),
        ("trusted 203.0.113.20 (allowlisted)", TRUSTED_V4),
        ("trusted 2001:db8:1::20 (allowlisted)", TRUSTED_V6),
        ("customer 198.51.100.10", CUSTOMER_V4),
        ("customer 2001:db8:2::10", CUSTOMER_V6),
    ] {
        let dst = SocketAddr::new(edge_for(src), 5060);
        let sink = UdpSink::bind(&topo.edge, dst);
        let before = agent.verdicts();
        udp_burst(&topo.peer, src, dst, N);
        let counted = wait_for(Duration::from_secs(5), || {
            let now = agent.verdicts();
            let moved: u64 = now.iter().zip(&before).map(|(a, b)| a.packets - b.packets).sum();
            (moved >= N as u64).then_some(now)
        })
        .expect("XDP saw the packets");
        let delivered = sink.drain();
        let name = verdict::ALL
            .iter()
            .max_by_key(|(code, _, _)| counted[*code as usize].packets - before[*code as usize].packets)
            .map(|(_, action, reason)| format!("{action}/{reason}"))
            .unwrap_or_default();
        println!("{who:<44} {N:>6} {delivered:>10} {name:>16}");
    }

    println!("\n== tollgate status ==");
    print!("{}", agent.cli("status"));

    println!("\n== /metrics (tollgate_xdp_packets_total) ==");
    let page = agent.metrics().unwrap_or_default();
    for line in page.lines().filter(|l| l.starts_with("tollgate_xdp_packets_total")) {
        println!("{line}");
    }
    drop(agent);
    drop(topo);
    println!("\nremoved the namespaces and pinned state; the demo left nothing behind.");
}
