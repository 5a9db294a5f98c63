//! Live reload: SIGHUP makes the agent read its configuration file again
//! and apply it in place: blocks, thresholds (in the kernel's CONFIG), and
//! the command line still over the file; what needs a restart (the
//! interfaces) is logged and left; an invalid file is rejected whole and
//! the running configuration stays. Every reload is audited.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tollgate_common::verdict;
use tollgate_tests::{
    TempFile, privileged,
    topology::*,
    traffic::{UdpSink, udp_burst},
    wait_for,
};

const N: usize = 10;

/// How many of `N` datagrams from `src` to the edge's SIP port arrive.
fn delivered(topo: &Topology, agent: &Agent, src: std::net::IpAddr) -> usize {
    let dst = SocketAddr::new(EDGE_V4, 5060);
    let sink = UdpSink::bind(&topo.edge, dst);
    let seen: u64 = agent.verdicts().iter().map(|c| c.packets).sum();
    udp_burst(&topo.peer, src, dst, N);
    let counted = wait_for(Duration::from_secs(5), || {
        (agent.verdicts().iter().map(|c| c.packets).sum::<u64>() >= seen + N as u64).then_some(())
    });
    assert!(counted.is_some(), "XDP saw the {N} datagrams from {src}");
    sink.drain()
}

fn kernel_config(agent: &Agent) -> tollgate_common::Config {
    tollgate::maps::Maps::open_pinned(&agent.pin_dir).expect("pinned maps").config().expect("CONFIG")
}

/// The `n`th reload record of the audit log (from 1), waiting for it.
fn reload_record(audit: &TempFile, n: usize) -> Value {
    let line = wait_for(Duration::from_secs(10), || {
        audit.lines().into_iter().filter(|l| l.contains(r#""event":"reload""#)).nth(n - 1)
    })
    .unwrap_or_else(|| panic!("no reload #{n} audited:\n{}", audit.text()));
    serde_json::from_str(&line).expect("an audit record is JSON")
}

fn file_text(iface: &str, block: &str, auth: u32) -> String {
    format!(
        "iface = [\"{iface}\"]\nblock = [\"{block}=10m\"]\nauth-failure-threshold = {auth}\n\
         intl-invite-threshold = 5\n"
    )
}

#[test]
fn sighup_applies_the_edited_file_in_place_and_rejects_an_invalid_one_whole() {
    if !privileged("sighup_applies_the_edited_file_in_place_and_rejects_an_invalid_one_whole") {
        return;
    }
    let topo = Topology::new();
    let file = TempFile::new("toml");
    std::fs::write(&file.0, file_text(&topo.edge_if, "203.0.113.0/24", 7)).unwrap();
    let audit = TempFile::new("audit");
    let mut agent = Agent::start_configured(
        &topo,
        &["--config", file.path(), "--audit-log", audit.path(), "--intl-invite-threshold", "9"],
    );
    assert_eq!(kernel_config(&agent).auth_failure_threshold, 7);
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), 0, "blocked by the file");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), N);

    // The operator blocks the customer's prefix instead, lowers a
    // threshold and names another interface (which needs a restart).
    std::fs::write(&file.0, file_text("tgt-nonexistent0", "198.51.100.0/24", 4)).unwrap();
    agent.signal(libc::SIGHUP);
    let r = reload_record(&audit, 1);
    assert_eq!(r["rejected"], Value::Null, "{r}");
    assert_eq!(r["changed"]["block"]["from"][0], "203.0.113.0/24=10m", "{r}");
    assert_eq!(r["changed"]["block"]["to"][0], "198.51.100.0/24=10m", "{r}");
    assert_eq!(r["changed"]["auth-failure-threshold"]["to"][0], "4", "{r}");
    assert_eq!(r["needs_restart"], serde_json::json!(["iface"]), "{r}");
    assert!(r["changed"].get("intl-invite-threshold").is_none(), "the command line's value stays: {r}");
    let config = kernel_config(&agent);
    assert_eq!((config.auth_failure_threshold, config.intl_invite_threshold), (4, 9));
    assert!(topo.xdp_attached(), "still attached where it was");
    assert!(agent.log_text().contains("iface changed, which needs a restart"), "{}", agent.log_text());
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), N, "its block is gone");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), 0, "the new block");
    let drops = agent.packets(verdict::DROP_BLOCKLIST);
    assert!(drops >= 2 * N as u64, "{drops}");

    // A mistake in the file: rejected whole, nothing changes.
    std::fs::write(&file.0, format!("{}window = \"soon\"\n", file_text(&topo.edge_if, "203.0.113.0/24", 3)))
        .unwrap();
    agent.signal(libc::SIGHUP);
    let r = reload_record(&audit, 2);
    let why = r["rejected"].as_str().unwrap_or_else(|| panic!("not rejected: {r}"));
    assert!(why.contains("window") && why.contains("not a duration"), "{why}");
    assert_eq!(r["changed"], serde_json::json!({}), "{r}");
    assert_eq!(kernel_config(&agent).auth_failure_threshold, 4, "the running configuration stays");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), 0, "still blocked");
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), N);
    assert!(agent.log_text().contains("reload rejected, the running configuration stays"));

    // `tollgate reload` says so too, and exits 1.
    let (ok, _, err) = agent.control(&["reload"]);
    assert!(!ok && err.contains("rejected") && err.contains("window") && err.lines().count() == 1, "{err}");
    reload_record(&audit, 3);

    // Still running and reloadable: the file fixed, the next reload applies.
    std::fs::write(&file.0, file_text(&topo.edge_if, "198.51.100.0/24", 5)).unwrap();
    let (ok, out, err) = agent.control(&["reload"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "reloaded: applied auth-failure-threshold", "{out}");
    let r = reload_record(&audit, 4);
    assert_eq!(r["changed"]["auth-failure-threshold"]["to"][0], "5", "{r}");
    assert_eq!(r["needs_restart"], serde_json::json!([]), "the interface is back as it runs: {r}");
    assert_eq!(kernel_config(&agent).auth_failure_threshold, 5);
    assert_eq!(agent.stop(libc::SIGTERM), Some(0));
}
