//! Carrier-wide enforcement through a real etcd (Debian's etcd-server),
//! with agents in separate edge namespaces that reach it over their own
//! veths (tests/src/etcd.rs): a restriction made on one node drops traffic
//! on the others, survives the store's loss, and a dead node's key goes.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tollgate_tests::{
    TempFile, command_exists,
    etcd::{Certs, Etcd},
    privileged, tool_present,
    topology::{ATTACKER_V4, Agent, CUSTOMER_V4, Topology, metric_value, send_calls, udp_delivered},
    wait_for,
};

const PREFIX: &str = "tollgate/v1/default";

fn ready(test: &str) -> bool {
    privileged(test)
        && tool_present(test, "etcd (Debian etcd-server)", command_exists("etcd"))
        && tool_present(test, "etcdctl (Debian etcd-client)", command_exists("etcdctl"))
}

struct Node {
    // Drop order: the agent before its namespaces.
    agent: Agent,
    audit: TempFile,
    topo: Topology,
    /// Its way to etcd.
    to_etcd: tollgate_tests::etcd::Link,
}

fn node(etcd: &mut Etcd, name: &str) -> Node {
    node_with(etcd, name, &[])
}

fn node_with(etcd: &mut Etcd, name: &str, more: &[&str]) -> Node {
    let topo = Topology::new();
    let to_etcd = etcd.link(&topo);
    let audit = TempFile::new("audit");
    let endpoints = etcd.endpoints();
    let mut args = vec!["--cluster-endpoints", &endpoints, "--node-name", name, "--audit-log", audit.path()];
    args.extend_from_slice(more);
    let agent = Agent::start(&topo, &args);
    Node { agent, audit, topo, to_etcd }
}

fn metric(n: &Node, series: &str) -> Option<f64> {
    n.agent.metrics().and_then(|m| metric_value(&m, series))
}

/// Waits until every node is connected and sees all of them as members.
fn connected(nodes: &[&Node]) {
    let want = nodes.len() as f64;
    for n in nodes {
        let ok = wait_for(Duration::from_secs(20), || {
            (metric(n, "tollgate_cluster_connected") == Some(1.0)
                && metric(n, "tollgate_cluster_members") == Some(want))
            .then_some(())
        });
        assert!(ok.is_some(), "node not connected with {want} members:\n{}", n.agent.log_text());
    }
}

fn blocked(n: &Node, addr: IpAddr) -> bool {
    let net = IpNet::from(addr);
    tollgate::maps::Maps::open_pinned(&n.agent.pin_dir)
        .map(|m| {
            m.blocklist
                .entries()
                .iter()
                .any(|(b, e)| *b == net && e.is_active(tollgate::clock::monotonic_now_ns()))
        })
        .unwrap_or(false)
}

/// How long until `addr` is (or, with `want` false, is no longer) in the
/// kernel blocklist of `n`, polled every 5 ms.
fn until_blocked(n: &Node, addr: IpAddr, want: bool, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    wait_for(within, || (blocked(n, addr) == want).then(|| start.elapsed()))
}

fn restrict(n: &Node, addr: IpAddr, lasting: &str) -> u64 {
    let (ok, out, err) = n.agent.control(&[
        "restrict",
        "block",
        &addr.to_string(),
        "--for",
        lasting,
        "--reason",
        "cluster test",
    ]);
    assert!(ok, "restrict: {err}");
    id_of(&out, addr).unwrap_or_else(|| panic!("no id in:\n{out}"))
}

fn id_of(listing: &str, addr: IpAddr) -> Option<u64> {
    let target = IpNet::from(addr).to_string();
    listing
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(target.as_str()))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

/// `tollgate status` of a node, cluster section included.
fn status(n: &Node) -> String {
    let out = std::process::Command::new(tollgate_tests::tollgate_bin())
        .args(["status", "--pin-path"])
        .arg(&n.agent.pin_dir)
        .arg("--control-socket")
        .arg(&n.agent.control_socket)
        .output()
        .expect("running tollgate status");
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn list(n: &Node) -> String {
    let (ok, out, err) = n.agent.control(&["restrictions", "list"]);
    assert!(ok, "restrictions list: {err}");
    out
}

fn lift(n: &Node, addr: IpAddr) {
    let id = id_of(&list(n), addr).expect("in force");
    let (ok, _, err) = n.agent.control(&["lift", &id.to_string()]);
    assert!(ok, "lift: {err}");
}

#[test]
fn a_restriction_made_on_one_node_drops_traffic_on_the_other_within_a_second() {
    if !ready("a_restriction_made_on_one_node_drops_traffic_on_the_other_within_a_second") {
        return;
    }
    let mut etcd = Etcd::start(1);
    let a = node(&mut etcd, "edge-a");
    let b = node(&mut etcd, "edge-b");
    connected(&[&a, &b]);
    assert_eq!(udp_delivered(&b.topo, &b.agent, ATTACKER_V4, 5060, 20), 20, "not blocked before");

    restrict(&a, ATTACKER_V4, "10m");
    let took = until_blocked(&b, ATTACKER_V4, true, Duration::from_secs(5));
    let took = took.unwrap_or_else(|| panic!("never reached edge-b:\n{}", b.agent.log_text()));
    println!("propagation edge-a -> edge-b (restrict to kernel map): {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "propagation took {took:?}");
    assert_eq!(udp_delivered(&b.topo, &b.agent, ATTACKER_V4, 5060, 20), 0, "edge-b drops it");

    // The record: one key, deciding node and wall-clock expiry in it.
    let key = format!("{PREFIX}/restrictions/block/203.0.113.10/32");
    let value = etcd.get(&key).expect("the restriction's key");
    assert!(value.contains("\"origin\":\"edge-a\""), "{value}");
    // Listed on B with its origin; audited there as adopted, imposed on A.
    assert!(list(&b).contains("from edge-a"), "{}", list(&b));
    let shown = status(&b);
    for want in [
        "node edge-b under tollgate/v1/default",
        "connected",
        "members:    2",
        "edge-a ",
        "restrictions by origin: edge-a 1",
        "counts:     summed with 0 other nodes' for 0 countries and 0 sources",
    ] {
        assert!(shown.contains(want), "status of edge-b has no {want:?}:\n{shown}");
    }
    let audited = wait_for(Duration::from_secs(2), || {
        b.audit
            .lines()
            .into_iter()
            .find(|l| l.contains("\"event\":\"adopt\"") && l.contains("\"origin\":\"edge-a\""))
    });
    assert!(audited.is_some(), "edge-b audit:\n{}", b.audit.text());
    let imposed_a = a.audit.lines().iter().filter(|l| l.contains("\"event\":\"impose\"")).count();
    let imposed_b = b.audit.lines().iter().filter(|l| l.contains("\"event\":\"impose\"")).count();
    assert_eq!((imposed_a, imposed_b), (1, 0), "exactly one imposition, on the deciding node");

    // A lift on either node reaches the other.
    lift(&b, ATTACKER_V4);
    let took = until_blocked(&a, ATTACKER_V4, false, Duration::from_secs(5)).expect("lift reached edge-a");
    println!("lift edge-b -> edge-a: {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "lift took {took:?}");
    assert!(etcd.get(&key).is_none(), "the key is deleted");
    assert_eq!(udp_delivered(&a.topo, &a.agent, ATTACKER_V4, 5060, 20), 20);
}

#[test]
fn losing_etcd_never_stops_enforcement_and_what_was_decided_meanwhile_reaches_the_others() {
    if !ready("losing_etcd_never_stops_enforcement_and_what_was_decided_meanwhile_reaches_the_others") {
        return;
    }
    let mut etcd = Etcd::start(1);
    let a = node(&mut etcd, "edge-a");
    let b = node(&mut etcd, "edge-b");
    connected(&[&a, &b]);
    let (lifted, expiring, new) = (CUSTOMER_V4, "198.51.100.101".parse().unwrap(), ATTACKER_V4);
    // Two restrictions in force everywhere before the store goes.
    restrict(&a, lifted, "10m");
    restrict(&a, expiring, "4s");
    for addr in [lifted, expiring] {
        assert!(until_blocked(&b, addr, true, Duration::from_secs(5)).is_some(), "{addr} reached edge-b");
    }

    etcd.members[0].pause();
    let paused = Instant::now();
    // Decided during the partition: enforced at once where decided.
    restrict(&a, new, "10m");
    assert!(blocked(&a, new), "edge-a enforces its own decision without the store");
    lift(&a, lifted);
    assert!(!blocked(&a, lifted));
    // Both nodes go on expiring what they had.
    for n in [&a, &b] {
        let gone = until_blocked(n, expiring, false, Duration::from_secs(10));
        assert!(gone.is_some(), "{expiring} expired without the store");
    }
    assert!(blocked(&b, lifted), "edge-b keeps enforcing while cut off");
    let down = wait_for(Duration::from_secs(15), || {
        (metric(&a, "tollgate_cluster_connected") == Some(0.0)).then_some(())
    });
    assert!(down.is_some(), "edge-a noticed the store is gone");
    println!("edge-a saw the store gone after {} ms", paused.elapsed().as_millis());
    assert!(metric(&a, "tollgate_cluster_queued").is_some_and(|q| q >= 1.0), "decisions queued");
    assert!(!blocked(&b, new), "edge-b cannot know yet");

    etcd.members[0].resume();
    let resumed = Instant::now();
    let arrived = until_blocked(&b, new, true, Duration::from_secs(30));
    let arrived = arrived
        .unwrap_or_else(|| panic!("the queued decision never reached edge-b:\n{}", b.agent.log_text()));
    let lift_arrived =
        until_blocked(&b, lifted, false, Duration::from_secs(30)).expect("the queued lift reached edge-b");
    println!(
        "after etcd resumed: queued restriction on edge-b in {} ms, queued lift {} ms later ({} ms in all)",
        arrived.as_millis(),
        lift_arrived.as_millis(),
        resumed.elapsed().as_millis()
    );
    // The expired one is never brought back.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!blocked(&a, expiring) && !blocked(&b, expiring), "an expired restriction came back");
    assert_eq!(
        udp_delivered(&b.topo, &b.agent, new, 5060, 20),
        0,
        "edge-b drops the queued decision's source"
    );
}

#[test]
fn a_killed_nodes_key_goes_when_its_lease_ends() {
    if !ready("a_killed_nodes_key_goes_when_its_lease_ends") {
        return;
    }
    let mut etcd = Etcd::start(1);
    let a = node(&mut etcd, "edge-a");
    let mut b = node(&mut etcd, "edge-b");
    connected(&[&a, &b]);
    let key = format!("{PREFIX}/nodes/edge-b");
    let value = etcd.get(&key).expect("edge-b's key");
    assert!(value.contains("heartbeat_ms") && value.contains("version"), "{value}");
    // Calls on edge-b: it publishes their counts, which edge-a sums.
    send_calls(&b.topo, CUSTOMER_V4, "invite-intl-plus-232.sip", 5);
    let counts = format!("{PREFIX}/counts/edge-b");
    let published = wait_for(Duration::from_secs(10), || etcd.get(&counts));
    let published =
        published.unwrap_or_else(|| panic!("edge-b published no counts:\n{}", b.agent.log_text()));
    assert!(published.contains("\"cc\":232"), "{published}");
    let summed = wait_for(Duration::from_secs(5), || {
        (metric(&a, "tollgate_cluster_summed_countries") == Some(1.0)).then_some(())
    });
    assert!(summed.is_some(), "edge-a does not sum edge-b's counts");
    b.agent.kill();
    let killed = Instant::now();
    let gone = wait_for(Duration::from_secs(25), || {
        (etcd.get(&key).is_none() && etcd.get(&counts).is_none()).then(|| killed.elapsed())
    });
    let gone = gone.expect("edge-b's keys outlived its lease");
    println!("edge-b's node key and counts gone {} ms after the kill", gone.as_millis());
    assert!(gone <= Duration::from_secs(13), "node lease is 10 s; took {gone:?}");
    let unsummed = wait_for(Duration::from_secs(5), || {
        (metric(&a, "tollgate_cluster_summed_countries") == Some(0.0)).then_some(())
    });
    assert!(unsummed.is_some(), "edge-a still sums the dead node's counts");
    let seen = wait_for(Duration::from_secs(5), || {
        (metric(&a, "tollgate_cluster_members") == Some(1.0)).then_some(())
    });
    assert!(seen.is_some(), "edge-a still counts edge-b");
    assert_eq!(etcd.keys(&format!("{PREFIX}/nodes/")), vec![format!("{PREFIX}/nodes/edge-a")]);
}

#[test]
fn propagation_goes_on_when_the_etcd_leader_is_killed() {
    if !ready("propagation_goes_on_when_the_etcd_leader_is_killed") {
        return;
    }
    let mut etcd = Etcd::start(3);
    let a = node(&mut etcd, "edge-a");
    let b = node(&mut etcd, "edge-b");
    connected(&[&a, &b]);
    let leader = etcd.leader().expect("a leader");
    etcd.members[leader].kill();
    let killed = Instant::now();
    // A decision right after the leader went: it reaches the other node
    // once the remaining two have elected another.
    restrict(&a, ATTACKER_V4, "10m");
    let took = until_blocked(&b, ATTACKER_V4, true, Duration::from_secs(30));
    let took = took.unwrap_or_else(|| panic!("never reached edge-b:\n{}", b.agent.log_text()));
    println!("leader m{leader} killed: propagation edge-a -> edge-b took {} ms", took.as_millis());
    let new = wait_for(Duration::from_secs(10), || etcd.leader().filter(|l| *l != leader));
    println!(
        "new leader m{} ({} ms after the kill)",
        new.expect("a new leader"),
        killed.elapsed().as_millis()
    );
    // And with the new leader, as fast as before.
    restrict(&b, CUSTOMER_V4, "10m");
    let took = until_blocked(&a, CUSTOMER_V4, true, Duration::from_secs(10)).expect("reached edge-a");
    println!("after the election: propagation edge-b -> edge-a took {} ms", took.as_millis());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn two_nodes_deciding_the_same_restriction_at_once_end_up_with_one_record() {
    if !ready("two_nodes_deciding_the_same_restriction_at_once_end_up_with_one_record") {
        return;
    }
    let mut etcd = Etcd::start(1);
    let a = node(&mut etcd, "edge-a");
    let b = node(&mut etcd, "edge-b");
    connected(&[&a, &b]);
    // Both decide while neither can see the other's (propagation is
    // faster than two operators): with etcd stopped, then back, both
    // create-if-absent writes meet in the store.
    etcd.members[0].pause();
    restrict(&a, ATTACKER_V4, "10m");
    restrict(&b, ATTACKER_V4, "20m");
    etcd.members[0].resume();
    let key = format!("{PREFIX}/restrictions/block/203.0.113.10/32");
    let value = wait_for(Duration::from_secs(5), || etcd.get(&key)).expect("one record");
    let winner = if value.contains("\"origin\":\"edge-a\"") { "edge-a" } else { "edge-b" };
    let (w, l) = if winner == "edge-a" { (&a, &b) } else { (&b, &a) };
    assert_eq!(etcd.keys(&format!("{PREFIX}/restrictions/")).len(), 1);
    // The loser takes over the winner's record, and says so.
    let adopted = wait_for(Duration::from_secs(5), || {
        l.audit.lines().into_iter().find(|line| line.contains(&format!("\"origin\":\"{winner}\"")))
    });
    assert!(adopted.is_some(), "the loser's audit:\n{}", l.audit.text());
    let shown =
        wait_for(Duration::from_secs(5), || list(l).contains(&format!("from {winner}")).then_some(()));
    assert!(shown.is_some(), "{}", list(l));
    assert!(!w.audit.text().contains("\"origin\""), "the winner adopted nothing:\n{}", w.audit.text());
    println!("race: {winner} won; the other adopted its record");
    assert!(blocked(&a, ATTACKER_V4) && blocked(&b, ATTACKER_V4));
}

#[test]
fn a_country_surge_split_over_three_nodes_is_restricted_everywhere_once() {
    if !ready("a_country_surge_split_over_three_nodes_is_restricted_everywhere_once") {
        return;
    }
    let mut etcd = Etcd::start(1);
    // 40 calls to a country in 10 s restrict it; each node sees 15, so
    // it takes all three nodes' counts.
    let flags = [
        "--allow-country-restrict",
        "--country-invite-threshold",
        "40",
        "--country-min-sources",
        "6",
        "--window",
        "10s",
    ];
    let nodes: Vec<Node> =
        ["edge-a", "edge-b", "edge-c"].iter().map(|name| node_with(&mut etcd, name, &flags)).collect();
    connected(&nodes.iter().collect::<Vec<_>>());
    let started = Instant::now();
    for n in &nodes {
        // Five hijacked PBXs behind each node, 3 calls each: no source,
        // and no node, near a threshold.
        for pbx in n.topo.more_sources(5) {
            send_calls(&n.topo, pbx, "invite-intl-plus-232.sip", 3);
        }
    }
    let key = format!("{PREFIX}/restrictions/country-restrict/232");
    let record = wait_for(Duration::from_secs(10), || etcd.get(&key));
    let record = record.unwrap_or_else(|| {
        let logs: Vec<String> = nodes.iter().map(|n| n.agent.log_text()).collect();
        panic!("the split surge was not restricted:\n{}", logs.join("\n---\n"))
    });
    println!("split surge restricted {} ms after the calls began", started.elapsed().as_millis());
    assert_eq!(etcd.keys(&format!("{PREFIX}/restrictions/")).len(), 1, "one record");
    let origin = ["edge-a", "edge-b", "edge-c"]
        .into_iter()
        .find(|o| record.contains(&format!("\"origin\":\"{o}\"")))
        .unwrap_or_else(|| panic!("no origin in {record}"));
    for field in ["\"reason\":\"country-surge\"", "\"elsewhere\":", "\"nodes\":2"] {
        assert!(record.contains(field), "{field} missing in the record {record}");
    }
    // Enforced everywhere: adopted by the other two, from the decider.
    for n in &nodes {
        let drops = n.agent.packets(tollgate_common::verdict::DROP_COUNTRY_RESTRICTED);
        let dropped = wait_for(Duration::from_secs(5), || {
            send_calls(&n.topo, CUSTOMER_V4, "invite-intl-plus-232.sip", 1);
            (n.agent.packets(tollgate_common::verdict::DROP_COUNTRY_RESTRICTED) > drops).then_some(())
        });
        assert!(dropped.is_some(), "a node does not drop calls to +232:\n{}", n.agent.log_text());
    }
    // One deciding line, on the decider; the others say whose it is.
    let impose = |n: &Node| {
        n.audit
            .lines()
            .into_iter()
            .filter(|l| l.contains("\"event\":\"impose\"") && l.contains("\"target\":\"+232\""))
            .collect::<Vec<_>>()
    };
    let imposed: Vec<String> = nodes.iter().flat_map(impose).collect();
    assert_eq!(imposed.len(), 1, "one imposition in all: {imposed:#?}");
    for field in ["\"counted_elsewhere\":", "\"other_nodes\":2", "\"threshold\":40"] {
        assert!(imposed[0].contains(field), "{field} missing in {}", imposed[0]);
    }
    println!("deciding node {origin}: {}", imposed[0]);
    for n in &nodes {
        if impose(n).is_empty() {
            let adopted = n.audit.lines().into_iter().any(|l| {
                l.contains("\"event\":\"adopt\"") && l.contains(&format!("\"origin\":\"{origin}\""))
            });
            assert!(adopted, "a follower did not audit the adoption:\n{}", n.audit.text());
        }
    }
    // The sums are taken at most once a second: the last publication may
    // still be on its way.
    let want = "counts:     summed with 2 other nodes' for 1 countries";
    let shown = wait_for(Duration::from_secs(5), || Some(status(&nodes[2])).filter(|s| s.contains(want)));
    assert!(shown.is_some(), "{}", status(&nodes[2]));
    // No source alone was abusive, anywhere.
    for n in &nodes {
        assert!(!n.audit.text().contains("intl-suspend"), "{}", n.audit.text());
    }
}

#[test]
fn a_restarted_node_publishes_what_waited_and_lifts_what_was_lifted_while_it_was_down() {
    if !ready("a_restarted_node_publishes_what_waited_and_lifts_what_was_lifted_while_it_was_down") {
        return;
    }
    let mut etcd = Etcd::start(1);
    let mut a = node(&mut etcd, "edge-a");
    let mut b = node(&mut etcd, "edge-b");
    connected(&[&a, &b]);
    // Lifted while edge-b is down: edge-b must not keep it.
    restrict(&a, CUSTOMER_V4, "10m");
    assert!(until_blocked(&b, CUSTOMER_V4, true, Duration::from_secs(5)).is_some(), "reached edge-b");
    // What edge-b knows of the store is saved within a second.
    std::thread::sleep(Duration::from_millis(1500));
    b.agent.kill();
    lift(&a, CUSTOMER_V4);
    assert!(blocked(&b, CUSTOMER_V4), "edge-b's pinned maps still hold it while it is down");
    b.agent.restart();
    let gone = until_blocked(&b, CUSTOMER_V4, false, Duration::from_secs(20));
    let gone = gone.unwrap_or_else(|| panic!("edge-b kept a lifted restriction:\n{}", b.agent.log_text()));
    println!(
        "restarted edge-b lifted what was lifted while it was down, {} ms after it started",
        gone.as_millis()
    );
    assert!(list(&b).lines().all(|l| !l.contains("198.51.100.")), "{}", list(&b));

    // Decided while the store was away, then the agent restarted before
    // it came back: still published.
    etcd.members[0].pause();
    restrict(&a, ATTACKER_V4, "10m");
    let waiting = wait_for(Duration::from_secs(15), || {
        (metric(&a, "tollgate_cluster_queued") == Some(1.0)).then_some(())
    });
    assert!(waiting.is_some(), "edge-a queued its decision");
    a.agent.kill();
    a.agent.restart();
    let loaded = wait_for(Duration::from_secs(5), || {
        a.agent.log_text().contains("1 decisions waiting for it").then_some(())
    });
    assert!(loaded.is_some(), "{}", a.agent.log_text());
    etcd.members[0].resume();
    let arrived = until_blocked(&b, ATTACKER_V4, true, Duration::from_secs(30));
    assert!(arrived.is_some(), "what waited on edge-a never reached edge-b:\n{}", a.agent.log_text());
    let key = format!("{PREFIX}/restrictions/block/203.0.113.10/32");
    assert!(etcd.get(&key).is_some_and(|v| v.contains("\"origin\":\"edge-a\"")));
}

#[test]
fn nodes_share_restrictions_over_tls_with_client_certificates() {
    if !ready("nodes_share_restrictions_over_tls_with_client_certificates")
        || !tool_present(
            "nodes_share_restrictions_over_tls_with_client_certificates",
            "openssl",
            command_exists("openssl"),
        )
    {
        return;
    }
    let (certs, strangers) = (Certs::new(), Certs::new());
    let mut etcd = Etcd::start_tls(&certs);
    let tls = |c: &Certs| {
        ["--cluster-ca", "ca.pem", "--cluster-cert", "client.pem", "--cluster-key", "client-key.pem"]
            .map(|a| if a.starts_with("--") { a.to_owned() } else { c.path(a) })
    };
    let (ours, theirs) = (tls(&certs), tls(&strangers));
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    let a = node_with(&mut etcd, "edge-a", &ours);
    let b = node_with(&mut etcd, "edge-b", &ours);
    connected(&[&a, &b]);
    assert!(etcd.endpoints().starts_with("https://"), "{}", etcd.endpoints());
    restrict(&a, ATTACKER_V4, "10m");
    let took = until_blocked(&b, ATTACKER_V4, true, Duration::from_secs(5));
    let took = took.unwrap_or_else(|| panic!("never reached edge-b over TLS:\n{}", b.agent.log_text()));
    println!("propagation over TLS: {} ms", took.as_millis());
    // A node with another CA's certificates: it does not trust the
    // members, and they would not take its certificate.
    let theirs: Vec<&str> = theirs.iter().map(String::as_str).collect();
    let c = node_with(&mut etcd, "edge-c", &theirs);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(metric(&c, "tollgate_cluster_connected"), Some(0.0), "{}", c.agent.log_text());
    assert!(status(&c).contains("DISCONNECTED"), "{}", status(&c));
    assert!(!blocked(&c, ATTACKER_V4), "edge-c cannot have read the store");
    assert_eq!(etcd.keys(&format!("{PREFIX}/nodes/")).len(), 2, "edge-c never joined");
}

#[test]
fn a_node_cut_off_while_the_history_is_compacted_catches_up_from_a_new_listing() {
    if !ready("a_node_cut_off_while_the_history_is_compacted_catches_up_from_a_new_listing") {
        return;
    }
    let mut etcd = Etcd::start(1);
    let a = node(&mut etcd, "edge-a");
    let b = node(&mut etcd, "edge-b");
    connected(&[&a, &b]);
    restrict(&a, CUSTOMER_V4, "10m");
    assert!(until_blocked(&b, CUSTOMER_V4, true, Duration::from_secs(5)).is_some(), "reached edge-b");
    // edge-b alone is cut off (the others and etcd go on).
    b.to_etcd.cut(&b.topo);
    let down = wait_for(Duration::from_secs(20), || {
        (metric(&b, "tollgate_cluster_connected") == Some(0.0)).then_some(())
    });
    assert!(down.is_some(), "edge-b did not notice it is cut off:\n{}", b.agent.log_text());
    lift(&a, CUSTOMER_V4);
    restrict(&a, ATTACKER_V4, "10m");
    // Its last revision is compacted away meanwhile: the watch cannot
    // resume from it, and the delete is not in the history any more.
    let rev = etcd.compact();
    println!("compacted to revision {rev} while edge-b was cut off");
    b.to_etcd.heal(&b.topo);
    let back = Instant::now();
    let adopted = until_blocked(&b, ATTACKER_V4, true, Duration::from_secs(30));
    let adopted = adopted.unwrap_or_else(|| panic!("edge-b never caught up:\n{}", b.agent.log_text()));
    let lifted = until_blocked(&b, CUSTOMER_V4, false, Duration::from_secs(10));
    assert!(lifted.is_some(), "edge-b kept what was lifted while it was cut off:\n{}", b.agent.log_text());
    println!(
        "edge-b back: adopted the new restriction in {} ms, lifted the old one ({} ms in all)",
        adopted.as_millis(),
        back.elapsed().as_millis()
    );
    assert!(b.agent.log_text().contains("compacted"), "{}", b.agent.log_text());
}
