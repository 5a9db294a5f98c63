//! Acceptance tests against real SIP software (issue 10): Kamailio as the
//! registrar, SIPVicious as the attacker, sipp as customers' phones.
//!
//! Kamailio runs on the edge host itself, so the agent counts its responses
//! with TC on `--egress-iface` (README: "Where to attach"). Judged by the
//! registrar's own log wherever possible, not only by tollgate's counters.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use tollgate_tests::{
    kamailio::{Kamailio, VICTIM},
    privileged, sipp,
    sipvicious::{Svcrack, svcrack_bin},
    tool_present,
    topology::*,
    unique, wait_for,
};

/// A file under the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(kind: &str) -> Self {
        Self(std::env::temp_dir().join(unique(kind)))
    }
    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.0.display(), self.text());
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tools_present(test: &str) -> bool {
    let kamailio =
        Command::new("sh").args(["-c", "command -v kamailio"]).output().is_ok_and(|o| o.status.success());
    tool_present(test, "kamailio (Debian package kamailio)", kamailio)
        && tool_present(test, "sipvicious_svcrack (target/venv)", svcrack_bin().is_some())
}

/// Where the right password sits in svcrack's word list: far enough down
/// that only an attacker left alone would reach it.
const PASSWORD_AT: usize = 500;

/// Wrong passwords from one source that get it auth-suspended (the default).
const THRESHOLD: usize = 10;

#[test]
fn svcrack_is_auth_suspended_before_it_finds_the_password_while_a_customer_registers() {
    let test = "svcrack_is_auth_suspended_before_it_finds_the_password_while_a_customer_registers";
    if !privileged(test) || !tools_present(test) {
        return;
    }
    let started = Instant::now();
    let topo = Topology::new();
    let audit = TempFile::new("audit");
    let egress = topo.edge_if.clone();
    let agent = Agent::start(
        &topo,
        &[
            "--egress-iface",
            &egress,
            "--auth-failure-threshold",
            &THRESHOLD.to_string(),
            "--audit-log",
            audit.path(),
        ],
    );
    let kamailio = Kamailio::start(&topo.edge, EDGE_V4);
    let attacker: IpAddr = ATTACKER_V4;

    // A customer registers before the attack...
    sipp::register(&topo.peer, CUSTOMER_V4, EDGE_V4, false, true, 1);
    assert_eq!(kamailio.accepted_from(CUSTOMER_V4), 1, "{}", kamailio.log_text());

    // ...then svcrack works through a word list with the right password far down.
    let words = TempFile::new("words");
    let list: Vec<String> = (1..=PASSWORD_AT + 20)
        .map(|i| if i == PASSWORD_AT { VICTIM.2.to_owned() } else { format!("guess{i:04}") })
        .collect();
    std::fs::write(&words.0, list.join("\n") + "\n").expect("word list");
    let peer = topo.peer.name().to_owned();
    let peer_if = format!("{}p", topo.edge_if);
    let words_path = words.0.clone();
    let attack = std::thread::spawn(move || {
        Svcrack {
            ns: &peer,
            iface: &peer_if,
            src: attacker,
            dst: EDGE_V4,
            user: VICTIM.0,
            domain: VICTIM.1,
            words: &words_path,
            max_time: 3,
        }
        .run()
    });

    // tollgate suspends the attacker's registrations...
    let line = wait_for(Duration::from_secs(15), || {
        audit
            .text()
            .lines()
            .find(|l| {
                l.contains(r#""event":"impose""#)
                    && l.contains(r#""kind":"auth-suspend""#)
                    && l.contains(r#""target":"203.0.113.10/32""#)
            })
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no auth-suspend of the attacker; kamailio:\n{}", kamailio.log_text()));
    assert!(line.contains(r#""enforced":true"#), "{line}");
    // ...and from shortly after, Kamailio receives none of them any more
    // (svcrack keeps resending until --maximumtime).
    std::thread::sleep(Duration::from_millis(500));
    let seen = kamailio.registers_from(attacker);
    let out = attack.join().expect("svcrack thread");
    assert_eq!(
        kamailio.registers_from(attacker),
        seen,
        "REGISTERs from the attacker reached Kamailio after the suspension"
    );
    let tried = kamailio.forbidden_from(attacker);
    eprintln!("svcrack: {seen} REGISTERs reached Kamailio, {tried} passwords tried before the suspension");
    assert!((THRESHOLD..PASSWORD_AT / 2).contains(&tried), "{tried} wrong passwords reached Kamailio");
    assert!(!out.contains(VICTIM.2), "svcrack found the password:\n{out}");
    assert_eq!(kamailio.accepted_from(attacker), 0);

    let (ok, list, err) = agent.control(&["restrictions", "list"]);
    assert!(ok, "{err}");
    assert!(list.lines().any(|l| l.contains("auth-suspend") && l.contains("203.0.113.10/32")), "{list}");

    // The customer still registers, and Kamailio says 200 OK.
    sipp::register(&topo.peer, CUSTOMER_V4, EDGE_V4, false, true, 2);
    assert_eq!(kamailio.accepted_from(CUSTOMER_V4), 3, "{}", kamailio.log_text());
    eprintln!("acceptance test took {:?}", started.elapsed());
}
