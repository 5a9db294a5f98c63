//! `cargo xtask demo`: a self-contained demonstration in throw-away network
//! namespaces. First, blocks: an attacker, a trusted peer inside the
//! attacker's prefix and a customer send SIP to an edge host running
//! tollgate; the attacker's packets are dropped in XDP, the others pass.
//! Then decisions: a hijacked PBX is intl-suspended (its emergency calls
//! still pass), and a surge from many PBXs to one country restricts that
//! country until the surge stops, every step audited. Everything is removed
//! at the end.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tollgate_common::{corpus::fixture, verdict};
use tollgate_tests::{
    topology::*,
    traffic::{OPTIONS, UdpSink, udp_burst_of},
    unique, wait_for,
};

const N: usize = 50;

/// Sends `n` copies of `payload` from `src` to the edge's SIP port; returns
/// how many were delivered and the verdict most of them got in XDP.
fn judge(
    topo: &Topology,
    agent: &Agent,
    src: std::net::IpAddr,
    payload: &'static [u8],
    n: usize,
) -> (usize, String) {
    let dst = SocketAddr::new(edge_for(src), 5060);
    let sink = UdpSink::bind(&topo.edge, dst);
    let before = agent.verdicts();
    udp_burst_of(&topo.peer, src, dst, payload, n);
    let counted = wait_for(Duration::from_secs(5), || {
        let now = agent.verdicts();
        let moved: u64 = now.iter().zip(&before).map(|(a, b)| a.packets - b.packets).sum();
        (moved >= n as u64).then_some(now)
    })
    .expect("XDP saw the packets");
    let delivered = sink.drain();
    let name = verdict::ALL
        .iter()
        .max_by_key(|(code, _, _)| counted[*code as usize].packets - before[*code as usize].packets)
        .map(|(_, action, reason)| format!("{action}/{reason}"))
        .unwrap_or_default();
    (delivered, name)
}

/// Waits for, and prints, the first audit line containing all of `needles`.
fn show_audit(audit: &PathBuf, needles: &[&str], within: Duration) {
    let line = wait_for(within, || {
        let text = std::fs::read_to_string(audit).unwrap_or_default();
        text.lines().find(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned)
    });
    match line {
        Some(l) => println!("  audit: {l}"),
        None => println!("  (no audit line with {needles:?} within {within:?})"),
    }
}

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
    let pbxs = topo.more_sources(6);
    let audit = std::env::temp_dir().join(format!("{}.audit.jsonl", unique("demo")));
    let audit_arg = audit.to_str().expect("UTF-8 temp dir").to_owned();
    // Short windows and low thresholds so the demo takes seconds.
    let args = [
        "--block",
        "203.0.113.0/24=5m",
        "--block",
        "2001:db8:1::/48=5m",
        "--allow",
        "203.0.113.20",
        "--allow",
        "2001:db8:1::20",
        "--window",
        "3s",
        "--intl-invite-threshold",
        "20",
        "--allow-country-restrict",
        "--country-invite-threshold",
        "30",
        "--country-min-sources",
        "5",
        "--audit-log",
        &audit_arg,
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
        let (delivered, name) = judge(&topo, &agent, src, OPTIONS, N);
        println!("{who:<44} {N:>6} {delivered:>10} {name:>16}");
    }

    println!("\n== a hijacked PBX: 198.51.100.10 dials +232 (Sierra Leone) 20 times in a window ==");
    judge(&topo, &agent, CUSTOMER_V4, fixture("invite-intl-plus-232.sip"), 20);
    show_audit(&audit, &[r#""event":"impose""#, "intl-suspend"], Duration::from_secs(5));
    println!("\n{:<44} {:>6} {:>10} {:>16}", "then 198.51.100.10 sends", "sent", "delivered", "verdict");
    for (what, name) in [
        ("INVITE to +232", "invite-intl-plus-232.sip"),
        ("INVITE to 110 (emergency)", "invite-emergency-110.sip"),
        ("INVITE to 03-... (domestic)", "invite-domestic-trunk.sip"),
    ] {
        let (delivered, verdict) = judge(&topo, &agent, CUSTOMER_V4, fixture(name), 3);
        println!("{what:<44} {:>6} {delivered:>10} {verdict:>16}", 3);
    }

    println!(
        "\n== six more PBXs ({} ... {}) dial +232 six times each: none alone is abusive ==",
        pbxs[0],
        pbxs[pbxs.len() - 1]
    );
    for pbx in &pbxs {
        judge(&topo, &agent, *pbx, fixture("invite-intl-plus-232.sip"), 6);
    }
    show_audit(&audit, &[r#""event":"impose""#, "country-restrict"], Duration::from_secs(5));
    println!(
        "\n{:<44} {:>6} {:>10} {:>16}",
        "then 2001:db8:2::10, a customer, sends", "sent", "delivered", "verdict"
    );
    for (what, name) in
        [("INVITE to +232", "invite-intl-00-232.sip"), ("INVITE to +44", "invite-intl-tel-44.sip")]
    {
        let (delivered, verdict) = judge(&topo, &agent, CUSTOMER_V6, fixture(name), 3);
        println!("{what:<44} {:>6} {delivered:>10} {verdict:>16}", 3);
    }
    println!("\nthe surge has stopped; waiting for a calm window ...");
    show_audit(&audit, &[r#""event":"lift""#, "surge-ended"], Duration::from_secs(12));

    println!("\n== tollgate status ==");
    print!("{}", agent.cli("status"));

    println!("\n== /metrics (tollgate_xdp_packets_total) ==");
    let page = agent.metrics().unwrap_or_default();
    for line in page.lines().filter(|l| l.starts_with("tollgate_xdp_packets_total")) {
        println!("{line}");
    }
    drop(agent);
    drop(topo);
    let _ = std::fs::remove_file(&audit);
    println!("\nremoved the namespaces and pinned state; the demo left nothing behind.");
}
