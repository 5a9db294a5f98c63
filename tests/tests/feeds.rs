//! Blocklist feeds (`--feed`, `[[feeds]]`), end to end with real XDP in
//! namespaces: a local file and feeds served over HTTP on the edge
//! namespace's loopback (CIDR and APIBAN JSON) block what they list and
//! follow their edits; the allowlist wins; a failing feed keeps its last
//! good entries until their ttl, also across a restart; a poisoned feed
//! (0.0.0.0/0) and one larger than the blocklist are refused whole; a
//! reload adds and removes feeds; `config check` names a bad table's key.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tollgate_common::reason;
use tollgate_tests::{
    TempFile, netns::NetNs, privileged, tollgate_bin, topology::*, traffic::UdpSink, wait_for,
};

const N: usize = 10;

/// How many of `N` datagrams from `src` to the edge's SIP port arrive.
fn delivered(topo: &Topology, agent: &Agent, src: IpAddr) -> usize {
    let dst = SocketAddr::new(edge_for(src), 5060);
    let sink = UdpSink::bind(&topo.edge, dst);
    let seen: u64 = agent.verdicts().iter().map(|c| c.packets).sum();
    tollgate_tests::traffic::udp_burst(&topo.peer, src, dst, N);
    let counted = wait_for(Duration::from_secs(5), || {
        (agent.verdicts().iter().map(|c| c.packets).sum::<u64>() >= seen + N as u64).then_some(())
    });
    assert!(counted.is_some(), "XDP saw the {N} datagrams from {src}");
    sink.drain()
}

/// A metric's value, waiting until `ok` holds for it.
fn wait_metric(agent: &Agent, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    wait_for(Duration::from_secs(20), || {
        agent.metrics().and_then(|m| metric_value(&m, series)).filter(|v| ok(*v))
    })
    .unwrap_or_else(|| {
        panic!(
            "{series}: never as expected; metrics:\n{}\nlog:\n{}",
            agent
                .metrics()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("feed"))
                .collect::<Vec<_>>()
                .join("\n"),
            agent.log_text()
        )
    })
}

/// The blocklist as the pinned map has it: prefix → reason.
fn blocklist(agent: &Agent) -> HashMap<String, u32> {
    tollgate::maps::Maps::open_pinned(&agent.pin_dir)
        .expect("pinned maps")
        .blocklist
        .entries()
        .into_iter()
        .map(|(n, e)| (n.to_string(), e.reason))
        .collect()
}

/// `tollgate status` of the agent's pins and state directory.
fn status(agent: &Agent) -> String {
    let out = Command::new(tollgate_bin())
        .args(["status", "--pin-path"])
        .arg(&agent.pin_dir)
        .arg("--state-dir")
        .arg(&agent.state_dir)
        .output()
        .expect("run tollgate status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The feed audit records of `audit`, parsed.
fn feed_records(audit: &TempFile) -> Vec<Value> {
    audit
        .lines()
        .iter()
        .filter(|l| l.contains(r#""event":"feed""#))
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

/// A tiny HTTP/1.0 server on the edge namespace's loopback: each path
/// answers with the (status, body) it is set to (404 otherwise).
struct FeedServer {
    routes: Arc<Mutex<HashMap<String, (u16, String)>>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl FeedServer {
    fn start(ns: &NetNs) -> Self {
        let routes: Arc<Mutex<HashMap<String, (u16, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (path, r, s) = (ns.path(), Arc::clone(&routes), Arc::clone(&stop));
        std::thread::spawn(move || {
            tollgate_tests::netns::enter(&path);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind in the edge namespace");
            listener.set_nonblocking(true).unwrap();
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            while !s.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let want = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).map_or(true, |n| n <= 2) {
                        break;
                    }
                }
                let (code, body) = r.lock().unwrap().get(&want).cloned().unwrap_or((404, String::new()));
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.0 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let port = port_rx.recv_timeout(Duration::from_secs(5)).expect("the server started");
        Self { routes, stop, port }
    }

    fn set(&self, path: &str, code: u16, body: &str) {
        self.routes.lock().unwrap().insert(path.to_owned(), (code, body.to_owned()));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_local_file_feed_blocks_what_it_lists_but_the_allowlist_and_follows_its_edits() {
    if !privileged("a_local_file_feed_blocks_what_it_lists_but_the_allowlist_and_follows_its_edits") {
        return;
    }
    let topo = Topology::new();
    let feed = TempFile::new("feed");
    std::fs::write(
        &feed.0,
        "; a DROP-style list\n203.0.113.0/24 ; SBL1\n# and one IPv6 host\n2001:db8:1::10\n",
    )
    .unwrap();
    let audit = TempFile::new("audit");
    let spec = format!("name=local,path={},refresh=1s,ttl=1h", feed.path());
    // The trusted PBX is inside the listed /24 but allowlisted.
    // The IPv6 host the feed lists is also a --block: that entry stays the
    // command line's.
    let agent = Agent::start(
        &topo,
        &[
            "--feed",
            &spec,
            "--allow",
            "203.0.113.20/32",
            "--block",
            "2001:db8:1::10=1h",
            "--audit-log",
            audit.path(),
        ],
    );
    wait_metric(&agent, r#"tollgate_feed_entries{feed="local"}"#, |v| v == 2.0);
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), 0, "inside the listed /24: dropped");
    assert_eq!(delivered(&topo, &agent, ATTACKER_V6), 0, "the listed IPv6 host: dropped");
    assert_eq!(delivered(&topo, &agent, TRUSTED_V4), N, "allowlisted inside the listed /24: passes");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), N, "not listed: passes");
    let map = blocklist(&agent);
    assert_eq!(map.get("203.0.113.0/24"), Some(&reason::FEED), "{map:?}");
    assert_eq!(map.get("2001:db8:1::10/128"), Some(&reason::CLI), "a feed never replaces a --block: {map:?}");
    let shown = status(&agent);
    assert!(shown.contains("reason=feed:local"), "{shown}");
    assert!(shown.contains("local (cidr, "), "{shown}");
    assert!(shown.contains("2 entries"), "{shown}");
    let first = &feed_records(&audit)[0];
    assert_eq!(
        (first["feed"].as_str(), first["added"].as_u64(), first["entries"].as_u64()),
        (Some("local"), Some(2), Some(2))
    );

    // The list changes: the /24 goes, the customer comes.
    std::fs::write(&feed.0, "198.51.100.10\n").unwrap();
    wait_for(Duration::from_secs(10), || blocklist(&agent).contains_key("198.51.100.10/32").then_some(()))
        .expect("the new entry is written");
    let map = blocklist(&agent);
    assert!(!map.contains_key("203.0.113.0/24"), "{map:?}");
    assert_eq!(map.get("2001:db8:1::10/128"), Some(&reason::CLI), "the --block stays: {map:?}");
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), N, "no longer listed: passes");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), 0, "newly listed: dropped");
    let changed =
        wait_for(Duration::from_secs(5), || feed_records(&audit).into_iter().find(|r| r["removed"] == 2))
            .unwrap_or_else(|| panic!("{}", audit.text()));
    assert_eq!((changed["added"].as_u64(), changed["entries"].as_u64()), (Some(1), Some(1)), "{changed}");

    // Poisoned: a feed that lists the whole Internet is refused whole and
    // the last good entries stay.
    std::fs::write(&feed.0, "198.51.100.0/24\n0.0.0.0/0\n").unwrap();
    wait_metric(&agent, r#"tollgate_feed_refreshes_total{feed="local",result="failed"}"#, |v| v >= 1.0);
    assert_eq!(wait_metric(&agent, r#"tollgate_feed_up{feed="local"}"#, |v| v == 0.0), 0.0);
    assert!(agent.log_text().contains("feed local: refresh failed: lists 0.0.0.0/0, broader than /8"));
    assert!(!blocklist(&agent).contains_key("0.0.0.0/0"));
    let failed = wait_for(Duration::from_secs(5), || {
        feed_records(&audit).into_iter().find(|r| r["result"] == "failed")
    })
    .unwrap_or_else(|| panic!("{}", audit.text()));
    assert_eq!(failed["entries"], 1, "{failed}");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("0.0.0.0/0")), "{failed}");
    assert!(!blocklist(&agent).contains_key("198.51.100.0/24"), "nothing of a refused feed is written");
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), N, "the world is not blocked");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), 0, "the last good entry stays");
}

#[test]
fn http_feeds_in_cidr_and_apiban_form_and_a_failing_one_keeps_its_entries_until_their_ttl() {
    let test = "http_feeds_in_cidr_and_apiban_form_and_a_failing_one_keeps_its_entries_until_their_ttl";
    if !privileged(test) {
        return;
    }
    let topo = Topology::new();
    let server = FeedServer::start(&topo.edge);
    server.set("/drop.txt", 200, "203.0.113.10 ; SBL2\n");
    server.set("/banned", 200, r#"{"ipaddress":["198.51.100.10","2001:db8:1::10"],"ID":"1234"}"#);
    let drop = format!("name=drop,url={},refresh=2s,ttl=12s", server.url("/drop.txt"));
    let apiban = format!("name=apiban,url={},format=apiban,refresh=1h", server.url("/banned"));
    let agent = Agent::start(&topo, &["--feed", &drop, "--feed", &apiban]);
    wait_metric(&agent, r#"tollgate_feed_entries{feed="drop"}"#, |v| v == 1.0);
    wait_metric(&agent, r#"tollgate_feed_entries{feed="apiban"}"#, |v| v == 2.0);
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), 0, "listed by the CIDR feed");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), 0, "listed by the APIBAN feed");
    assert_eq!(delivered(&topo, &agent, ATTACKER_V6), 0, "listed by the APIBAN feed");
    assert_eq!(delivered(&topo, &agent, TRUSTED_V4), N, "listed by neither");
    assert_eq!(wait_metric(&agent, r#"tollgate_feed_up{feed="drop"}"#, |_| true), 1.0);
    let success =
        wait_metric(&agent, r#"tollgate_feed_last_success_timestamp_seconds{feed="drop"}"#, |v| v > 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - success).abs() < 30.0, "{success} vs {now}");

    // The server breaks: the entry stays until its ttl, counted and logged.
    server.set("/drop.txt", 500, "oops");
    wait_metric(&agent, r#"tollgate_feed_refreshes_total{feed="drop",result="failed"}"#, |v| v >= 1.0);
    assert_eq!(wait_metric(&agent, r#"tollgate_feed_up{feed="drop"}"#, |_| true), 0.0);
    let log = agent.log_text();
    assert!(
        log.contains(&format!(
            "feed drop: refresh failed: GET {}: HTTP 500; keeping 1 entries until ",
            server.url("/drop.txt")
        )),
        "{log}"
    );
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), 0, "kept after the failure");
    // After the ttl (12 s from the last good refresh) it lapses.
    wait_metric(&agent, r#"tollgate_feed_entries{feed="drop"}"#, |v| v == 0.0);
    wait_for(Duration::from_secs(5), || (!blocklist(&agent).contains_key("203.0.113.10/32")).then_some(()))
        .expect("the lapsed entry is removed");
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), N, "lapsed at its ttl");
    assert!(agent.log_text().contains("feed drop: its 1 entries lapsed"));
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), 0, "the other feed is untouched");
    let shown = status(&agent);
    assert!(shown.contains("last error"), "{shown}");
    assert!(shown.contains("HTTP 500"), "{shown}");
}

#[test]
fn a_feed_larger_than_the_blocklist_is_refused_whole_and_keeps_its_last_good_entries() {
    let test = "a_feed_larger_than_the_blocklist_is_refused_whole_and_keeps_its_last_good_entries";
    if !privileged(test) {
        return;
    }
    let topo = Topology::new();
    let feed = TempFile::new("feed");
    std::fs::write(&feed.0, "203.0.113.10\n").unwrap();
    let spec = format!("name=big,path={},refresh=1s,ttl=1h", feed.path());
    let agent = Agent::start(&topo, &["--feed", &spec]);
    wait_metric(&agent, r#"tollgate_feed_entries{feed="big"}"#, |v| v == 1.0);
    // More than the whole map (65,536): 70,000 IPv6 hosts.
    let mut big = String::from("198.51.100.10\n");
    for i in 0..70_000u32 {
        big.push_str(&format!("2001:db8:100::{:x}:{:x}\n", i >> 16, i & 0xffff));
    }
    std::fs::write(&feed.0, big).unwrap();
    wait_metric(&agent, r#"tollgate_feed_refreshes_total{feed="big",result="refused"}"#, |v| v >= 1.0);
    let log = agent.log_text();
    assert!(
        log.contains("feed big: refused: 70001 entries would make the blocklist 70001 entries, over its capacity of 65536"),
        "{log}"
    );
    let map = blocklist(&agent);
    assert_eq!(map.len(), 1, "nothing of the refused list is written");
    assert_eq!(map.get("203.0.113.10/32"), Some(&reason::FEED));
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), 0, "the last good entry stays");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), N, "the refused list's entry is not enforced");
    assert_eq!(wait_metric(&agent, r#"tollgate_feed_entries{feed="big"}"#, |_| true), 1.0);
}

#[test]
fn after_a_restart_with_the_feed_unreachable_its_last_good_entries_still_enforce() {
    let test = "after_a_restart_with_the_feed_unreachable_its_last_good_entries_still_enforce";
    if !privileged(test) {
        return;
    }
    let topo = Topology::new();
    let server = FeedServer::start(&topo.edge);
    server.set("/drop.txt", 200, "203.0.113.0/24\n");
    let spec = format!("name=drop,url={},refresh=1h,ttl=1h", server.url("/drop.txt"));
    let mut agent = Agent::start(&topo, &["--feed", &spec]);
    wait_metric(&agent, r#"tollgate_feed_entries{feed="drop"}"#, |v| v == 1.0);
    // Stopped (detaching: the pinned blocklist goes too), then the feed's
    // server goes away.
    agent.stop(libc::SIGTERM);
    drop(server);
    agent.restart();
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), 0, "enforced from the state directory");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), N);
    wait_metric(&agent, r#"tollgate_feed_refreshes_total{feed="drop",result="failed"}"#, |v| v >= 1.0);
    let log = agent.log_text();
    assert!(log.contains("feed drop: 1 entries from its last good refresh, in force until "), "{log}");
    assert!(log.contains("feed drop: refresh failed: GET "), "{log}");
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), 0, "still enforced after the failed refresh");
}

#[test]
fn a_reload_adds_and_removes_feeds() {
    if !privileged("a_reload_adds_and_removes_feeds") {
        return;
    }
    let topo = Topology::new();
    let feed = TempFile::new("feed");
    std::fs::write(&feed.0, "203.0.113.10\n").unwrap();
    let file = TempFile::new("toml");
    let plain = format!("iface = [\"{}\"]\n", topo.edge_if);
    std::fs::write(&file.0, &plain).unwrap();
    let agent = Agent::start_configured(&topo, &["--config", file.path()]);
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), N);
    let with_feed =
        format!("{plain}\n[[feeds]]\nname = \"local\"\npath = \"{}\"\nrefresh = \"1h\"\n", feed.path());
    std::fs::write(&file.0, &with_feed).unwrap();
    let (ok, out, err) = agent.control(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("feed"), "{out}");
    wait_metric(&agent, r#"tollgate_feed_entries{feed="local"}"#, |v| v == 1.0);
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), 0, "the added feed enforces");
    // Changed (another file): fetched again at once.
    let other = TempFile::new("feed");
    std::fs::write(&other.0, "198.51.100.10\n").unwrap();
    let with_feed = with_feed.replace(feed.path(), other.path());
    std::fs::write(&file.0, &with_feed).unwrap();
    let (ok, out, err) = agent.control(&["reload"]);
    assert!(ok, "{out}{err}");
    wait_for(Duration::from_secs(10), || blocklist(&agent).contains_key("198.51.100.10/32").then_some(()))
        .expect("the changed feed is fetched at once");
    wait_for(Duration::from_secs(5), || (!blocklist(&agent).contains_key("203.0.113.10/32")).then_some(()))
        .expect("what it no longer lists goes");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), 0, "the changed feed enforces");
    assert_eq!(delivered(&topo, &agent, ATTACKER_V4), N);
    // A bad table is rejected whole; the feed stays.
    std::fs::write(&file.0, format!("{with_feed}colour = \"red\"\n")).unwrap();
    let (ok, out, err) = agent.control(&["reload"]);
    assert!(!ok, "{out}{err}");
    assert!(format!("{out}{err}").contains("unknown key \"colour\""), "{out}{err}");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), 0);
    // Removed: its entries go.
    std::fs::write(&file.0, &plain).unwrap();
    let (ok, out, err) = agent.control(&["reload"]);
    assert!(ok, "{out}{err}");
    wait_for(Duration::from_secs(5), || blocklist(&agent).is_empty().then_some(()))
        .expect("its entries removed");
    assert_eq!(delivered(&topo, &agent, CUSTOMER_V4), N, "the removed feed no longer enforces");
    assert!(!agent.metrics().unwrap_or_default().contains(r#"feed="local""#), "its series go with it");
}

#[test]
fn config_check_names_the_bad_key_of_a_feeds_table() {
    let file = TempFile::new("toml");
    for (table, says) in [
        ("name = \"x\"\npath = \"/etc/x\"\ncolour = \"red\"\n", "unknown key \\\"colour\\\""),
        ("name = \"x\"\n", "feed x: no source"),
        (
            "name = \"x\"\npath = \"/x\"\nurl = \"https://feeds.example.net/x\"\n",
            "give path or url, not both",
        ),
        ("name = \"x\"\npath = \"/x\"\nrefresh = \"soon\"\n", "refresh: \\\"soon\\\" is not a duration"),
        ("name = \"Bad Name\"\npath = \"/x\"\n", "must be 1 to 32 of a-z"),
    ] {
        std::fs::write(&file.0, format!("[[feeds]]\n{table}")).unwrap();
        let out = Command::new(tollgate_bin()).args(["config", "check", file.path()]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{table}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("{}: feeds: ", file.path())), "names the key: {err}");
        assert!(err.contains(says.replace("\\\"", "\"").as_str()), "{table}: {err}");
    }
    // Two feeds of one name.
    std::fs::write(
        &file.0,
        "[[feeds]]\nname = \"x\"\npath = \"/a\"\n[[feeds]]\nname = \"x\"\npath = \"/b\"\n",
    )
    .unwrap();
    let out = Command::new(tollgate_bin()).args(["config", "check", file.path()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("two feeds are named \"x\""));
}
