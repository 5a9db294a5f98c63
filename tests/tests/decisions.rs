//! The decision engine end to end (issue: decision engine): kernel events,
//! policy, restriction written to the kernel, packets dropped, audit trail.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use tollgate_common::{corpus::fixture, verdict};
use tollgate_tests::{
    privileged,
    sipp::{Registrar, register},
    topology::*,
    traffic::Pacer,
    unique, wait_for,
};

/// Sends one SIP message over UDP from `src` to the edge's port 5060.
fn send(topo: &Topology, src: IpAddr, name: &'static str) {
    send_n(topo, src, name, 1);
}

fn send_n(topo: &Topology, src: IpAddr, name: &'static str, n: u32) {
    send_calls(topo, src, name, n);
}

/// Whether the verdict counter `code` rises above `before` within 5 s.
fn rises(agent: &Agent, code: u32, before: u64) -> bool {
    wait_for(Duration::from_secs(5), || (agent.packets(code) > before).then_some(())).is_some()
}

struct AuditFile(PathBuf);

impl AuditFile {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("{}.audit.jsonl", unique("audit"))))
    }
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.0).unwrap_or_default().lines().map(str::to_owned).collect()
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
}

impl Drop for AuditFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits for the first audit line containing all of `needles`.
fn audited(audit: &AuditFile, needles: &[&str]) -> String {
    wait_for(Duration::from_secs(5), || {
        audit.lines().into_iter().find(|l| needles.iter().all(|n| l.contains(n)))
    })
    .unwrap_or_else(|| panic!("no audit line with {needles:?} in {:?}", audit.lines()))
}

fn start(topo: &Topology, audit: &AuditFile, extra: &[&str]) -> Agent {
    let egress = topo.edge_if.clone();
    let mut args =
        vec!["--egress-iface", &egress, "--auth-failure-threshold", "3", "--audit-log", audit.path()];
    args.extend_from_slice(extra);
    Agent::start(topo, &args)
}

#[test]
fn a_brute_force_is_auth_suspended_while_a_customer_keeps_registering() {
    if !privileged("a_brute_force_is_auth_suspended_while_a_customer_keeps_registering") {
        return;
    }
    let topo = Topology::new();
    let audit = AuditFile::new();
    let agent = start(&topo, &audit, &[]);
    let _registrar = Registrar::start(&topo.edge, EDGE_V4, false);
    // Exactly the threshold: the failure count reaches 3 only with the last
    // 403, when no request of these attempts is in flight any more.
    register(&topo.peer, ATTACKER_V4, EDGE_V4, false, false, 3);

    let line = audited(
        &audit,
        &[r#""event":"impose""#, r#""kind":"auth-suspend""#, r#""target":"203.0.113.10/32""#],
    );
    for field in [
        r#""reason":"brute-force""#,
        r#""enforced":true"#,
        r#""threshold":3"#,
        r#""window_seconds":60"#,
        "decision_latency_us",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    eprintln!("audit: {line}");
    // The attacker's REGISTERs are now dropped in XDP...
    let drops = agent.packets(verdict::DROP_AUTH_SUSPENDED);
    send(&topo, ATTACKER_V4, "register-auth.sip");
    assert!(
        rises(&agent, verdict::DROP_AUTH_SUSPENDED, drops),
        "the suspended source's REGISTER was not dropped"
    );
    // ...but its other SIP still flows, and a customer keeps registering.
    let passed = agent.packets(verdict::PASS_SIP);
    send(&topo, ATTACKER_V4, "options-keepalive.sip");
    assert!(rises(&agent, verdict::PASS_SIP, passed));
    register(&topo.peer, CUSTOMER_V4, EDGE_V4, false, true, 3);
    let page = agent.metrics().expect("metrics");
    assert_eq!(
        metric_value(&page, r#"tollgate_restrictions_active{kind="auth-suspend"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric_value(&page, r#"tollgate_decisions_total{event="impose",kind="auth-suspend",mode="enforce"}"#),
        Some(1.0)
    );
    // Minimal data: no numbers, URIs or user names in the audit trail.
    for l in audit.lines() {
        assert!(!l.contains("sip:") && !l.contains("1001"), "{l}");
    }

    // The agent dies: the kernel keeps enforcing the suspension...
    let mut agent = agent;
    agent.kill();
    let drops = agent.packets(verdict::DROP_AUTH_SUSPENDED);
    send(&topo, ATTACKER_V4, "register-noauth.sip");
    assert!(rises(&agent, verdict::DROP_AUTH_SUSPENDED, drops), "suspension enforced with the agent dead");
    // ...and the restarted agent takes it over with its original expiry.
    agent.restart();
    assert!(
        agent.log_text().contains("auth-suspend on 203.0.113.10/32 still in force"),
        "{}",
        agent.log_text()
    );
    let page = agent.metrics().expect("metrics");
    assert_eq!(
        metric_value(&page, r#"tollgate_restrictions_active{kind="auth-suspend"}"#),
        Some(1.0),
        "{page}"
    );
}

#[test]
fn dry_run_audits_the_same_decision_and_enforces_nothing() {
    if !privileged("dry_run_audits_the_same_decision_and_enforces_nothing") {
        return;
    }
    let topo = Topology::new();
    let audit = AuditFile::new();
    let hook_out = AuditFile::new();
    let hook = format!(
        "echo \"$TOLLGATE_EVENT $TOLLGATE_KIND $TOLLGATE_TARGET $TOLLGATE_MODE id=$TOLLGATE_ID identity=$TOLLGATE_IDENTITY\" >> {0}; cat >> {0}",
        hook_out.path()
    );
    let agent = start(&topo, &audit, &["--dry-run", "--on-decision", &hook]);
    let _registrar = Registrar::start(&topo.edge, EDGE_V4, false);
    register(&topo.peer, ATTACKER_V4, EDGE_V4, false, false, 5);
    let line = audited(&audit, &[r#""event":"impose""#, r#""target":"203.0.113.10/32""#]);
    assert!(line.contains(r#""enforced":false"#) && line.contains(r#""mode":"dry-run""#), "{line}");
    // The operator's hook was told, with the same record on stdin.
    let told = audited(&hook_out, &["impose auth-suspend 203.0.113.10/32 dry-run id=1 identity="]);
    assert!(!told.is_empty());
    audited(&hook_out, &[r#""event":"impose""#, r#""mode":"dry-run""#]);
    // A line suspended by hand: the hook gets its tag and the restriction's
    // id, to notify the holder (counter-measure 5).
    let (ok, _, err) = agent.control(&["restrict", "intl", "--identity", "1001", "--for", "1h"]);
    assert!(ok, "{err}");
    let tag = Command::new(tollgate_tests::tollgate_bin())
        .args(["identity-tag", "1001", "--state-dir"])
        .arg(&agent.state_dir)
        .output()
        .expect("identity-tag");
    let tag = String::from_utf8_lossy(&tag.stdout).trim().to_owned();
    audited(
        &hook_out,
        &[&format!("impose intl-suspend identity {tag} everywhere dry-run id=2 identity={tag}")],
    );
    // Still registering (and failing) normally: nothing dropped.
    register(&topo.peer, ATTACKER_V4, EDGE_V4, false, false, 2);
    assert_eq!(agent.packets(verdict::DROP_AUTH_SUSPENDED), 0);
    let maps = tollgate::maps::Maps::open_pinned(&agent.pin_dir).expect("maps");
    assert!(maps.restrictions.entries().is_empty(), "dry-run wrote no restriction");
    let page = agent.metrics().expect("metrics");
    assert_eq!(
        metric_value(&page, r#"tollgate_decisions_total{event="impose",kind="auth-suspend",mode="dry-run"}"#),
        Some(1.0),
        "{page}"
    );
}

#[test]
fn an_international_surge_is_intl_suspended_but_domestic_and_emergency_calls_pass() {
    if !privileged("an_international_surge_is_intl_suspended_but_domestic_and_emergency_calls_pass") {
        return;
    }
    let topo = Topology::new();
    let audit = AuditFile::new();
    // A blocklist of twice the default size: the metrics follow the flag.
    let agent = start(&topo, &audit, &["--intl-invite-threshold", "20", "--blocklist-capacity", "131072"]);
    let began = std::time::Instant::now();
    for _ in 0..20 {
        send(&topo, CUSTOMER_V6, "invite-intl-plus-232.sip");
    }
    let line = audited(
        &audit,
        &[r#""event":"impose""#, r#""kind":"intl-suspend""#, r#""target":"2001:db8:2::10/128""#],
    );
    let bound = began.elapsed();
    assert!(line.contains(r#""reason":"intl-surge""#) && line.contains(r#""count":20"#), "{line}");
    // The latency runs from the kernel's crossing, during the sends, to
    // the write: never longer than the test has taken so far.
    let record: serde_json::Value = serde_json::from_str(&line).expect("an audit record is JSON");
    let latency_us = record["decision_latency_us"].as_u64().unwrap_or_else(|| panic!("no latency: {line}"));
    assert!(latency_us <= bound.as_micros() as u64, "{latency_us} us, in a test {bound:?} old: {line}");
    let drops = agent.packets(verdict::DROP_INTL_SUSPENDED);
    send(&topo, CUSTOMER_V6, "invite-intl-00-232.sip");
    assert!(rises(&agent, verdict::DROP_INTL_SUSPENDED, drops), "international INVITE not dropped");
    let passed = agent.packets(verdict::PASS_SIP);
    for name in ["invite-domestic-trunk.sip", "invite-emergency-110.sip", "invite-emergency-119.sip"] {
        send(&topo, CUSTOMER_V6, name);
    }
    assert!(
        wait_for(Duration::from_secs(5), || (agent.packets(verdict::PASS_SIP) >= passed + 3).then_some(()))
            .is_some(),
        "domestic and emergency INVITEs must pass"
    );
    // Another source is not affected.
    let passed = agent.packets(verdict::PASS_SIP);
    send(&topo, CUSTOMER_V4, "invite-intl-plus-232.sip");
    assert!(rises(&agent, verdict::PASS_SIP, passed));
    // The operators' view: the decision by reason, its latency, the map
    // it filled, the dropped call by country, the events read.
    let page = agent.metrics().expect("metrics");
    let value = |name: &str, labels: &[&str]| {
        page.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
            .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let checks: [(&str, &[&str], f64); 10] = [
        ("tollgate_interface_packets_total{", &[r#"action="drop""#], 1.0),
        (
            "tollgate_restriction_decisions_total{",
            &[r#"event="impose""#, r#"kind="intl-suspend""#, r#"reason="intl-surge""#, r#"mode="enforce""#],
            1.0,
        ),
        ("tollgate_decision_latency_seconds_count", &[], 1.0),
        ("tollgate_map_entries{", &[r#"map="restrictions""#], 1.0),
        ("tollgate_map_capacity_entries{", &[r#"map="sources""#], 65536.0),
        ("tollgate_map_capacity_entries{", &[r#"map="blocklist""#], 131072.0),
        ("tollgate_blocklist_capacity_entries", &[], 131072.0),
        ("tollgate_sip_international_blocked_calls_total{", &[r#"cc="232""#], 1.0),
        ("tollgate_ring_buffer_events_total{", &[r#"ring="call_events""#, r#"outcome="read""#], 20.0),
        ("tollgate_build_info{", &[r#"version=""#, r#"kernel=""#], 1.0),
    ];
    // The histogram observed the audited latency, in seconds, and nothing
    // longer than the test.
    let sum = value("tollgate_decision_latency_seconds_sum", &[]).expect("a latency sum");
    let count = value("tollgate_decision_latency_seconds_count", &[]).expect("a latency count");
    assert!(
        sum + 1e-6 >= latency_us as f64 / 1e6 && sum <= count * began.elapsed().as_secs_f64(),
        "{count} latencies summing to {sum} s, one audited at {latency_us} us, in a test {:?} old",
        began.elapsed()
    );
    for (name, labels, at_least) in checks {
        let v = value(name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{page}"));
        assert!(v >= at_least, "{name} {labels:?} = {v}, want at least {at_least}");
    }
}

/// The id in the first data row of `tollgate restrict`'s table.
fn first_id(table: &str) -> String {
    table.lines().nth(1).and_then(|l| l.split_whitespace().next()).unwrap_or_default().to_owned()
}

#[test]
fn operators_restrict_and_lift_by_hand_and_every_step_is_audited() {
    if !privileged("operators_restrict_and_lift_by_hand_and_every_step_is_audited") {
        return;
    }
    let topo = Topology::new();
    let audit = AuditFile::new();
    let agent = start(&topo, &audit, &["--allow", "203.0.113.20"]);

    // Measure 2: the holder asked to stop international calls.
    let (ok, out, err) =
        agent.control(&["restrict", "intl", "198.51.100.10", "--for", "1h", "--reason", "holder asked"]);
    assert!(ok, "{err}");
    let intl_id = first_id(&out);
    let drops = agent.packets(verdict::DROP_INTL_SUSPENDED);
    send(&topo, CUSTOMER_V4, "invite-intl-plus-232.sip");
    assert!(rises(&agent, verdict::DROP_INTL_SUSPENDED, drops));

    // Measure 7: a country, for every source, but never emergency calls.
    let (ok, out, err) = agent.control(&["restrict", "country", "+232", "--for", "30m"]);
    assert!(ok, "{err}");
    let country_id = first_id(&out);
    let drops = agent.packets(verdict::DROP_COUNTRY_RESTRICTED);
    send(&topo, CUSTOMER_V6, "invite-intl-00-232.sip");
    assert!(rises(&agent, verdict::DROP_COUNTRY_RESTRICTED, drops));
    let passed = agent.packets(verdict::PASS_SIP);
    send(&topo, CUSTOMER_V6, "invite-emergency-112.sip");
    assert!(rises(&agent, verdict::PASS_SIP, passed));

    let (ok, list, _) = agent.control(&["restrictions", "list"]);
    assert!(
        ok && list.contains("intl-suspend") && list.contains("+232") && list.contains("holder asked"),
        "{list}"
    );

    // Refused with a reason: the allowlist wins; a bad code; a bad duration.
    for (args, why) in [
        (&["restrict", "block", "203.0.113.0/24", "--for", "1h"][..], "allowlist"),
        (&["restrict", "country", "abc", "--for", "1h"], "country code"),
        (&["restrict", "auth", "198.51.100.9", "--for", "0s"], "greater than zero"),
        (&["lift", "999"], "no restriction 999"),
    ] {
        let (ok, _, err) = agent.control(args);
        assert!(!ok && err.contains(why), "{args:?}: {err}");
    }

    // Lifted by hand: traffic flows again, and the lift is audited.
    for id in [&intl_id, &country_id] {
        let (ok, _, err) = agent.control(&["lift", id]);
        assert!(ok, "{err}");
    }
    let passed = agent.packets(verdict::PASS_SIP);
    send(&topo, CUSTOMER_V4, "invite-intl-plus-232.sip");
    assert!(rises(&agent, verdict::PASS_SIP, passed));
    audited(&audit, &[r#""event":"impose""#, r#""reason":"operator""#, r#""note":"holder asked""#]);
    audited(&audit, &[r#""event":"lift""#, r#""target":"+232""#, r#""kind":"country-restrict""#]);
}

#[test]
fn a_many_source_surge_to_one_country_is_restricted_and_lifted_when_it_stops() {
    if !privileged("a_many_source_surge_to_one_country_is_restricted_and_lifted_when_it_stops") {
        return;
    }
    let topo = Topology::new();
    let pbxs = topo.more_sources(8);
    let audit = AuditFile::new();
    let agent = start(
        &topo,
        &audit,
        &[
            "--allow-country-restrict",
            "--country-invite-threshold",
            "24",
            "--country-min-sources",
            "6",
            "--window",
            "2s",
        ],
    );
    // Eight hijacked PBXs, each far below the per-source threshold (30).
    for pbx in &pbxs {
        send_n(&topo, *pbx, "invite-intl-plus-232.sip", 4);
    }
    let line =
        audited(&audit, &[r#""event":"impose""#, r#""kind":"country-restrict""#, r#""target":"+232""#]);
    for field in
        [r#""reason":"country-surge""#, r#""threshold":24"#, r#""enforced":true"#, "sources_at_least"]
    {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    eprintln!("audit: {line}");
    assert!(audit.lines().iter().all(|l| !l.contains("intl-suspend")), "no source alone was abusive");
    // Every source's INVITEs to +232 are dropped now, even a customer's...
    let drops = agent.packets(verdict::DROP_COUNTRY_RESTRICTED);
    send(&topo, CUSTOMER_V6, "invite-intl-00-232.sip");
    assert!(rises(&agent, verdict::DROP_COUNTRY_RESTRICTED, drops), "INVITE to +232 not dropped");
    // ...but emergency, domestic and other international calls pass.
    let passed = agent.packets(verdict::PASS_SIP);
    for name in ["invite-emergency-110.sip", "invite-domestic-trunk.sip", "invite-intl-tel-44.sip"] {
        send(&topo, pbxs[0], name);
    }
    assert!(
        wait_for(Duration::from_secs(5), || (agent.packets(verdict::PASS_SIP) >= passed + 3).then_some(()))
            .is_some(),
        "emergency, domestic and +44 INVITEs must pass"
    );
    // A restarted agent takes it over as the automatic restriction it is...
    let mut agent = agent;
    agent.kill();
    agent.restart();
    assert!(agent.log_text().contains("country-restrict on +232 still in force"), "{}", agent.log_text());
    let (ok, list, err) = agent.control(&["restrictions", "list"]);
    assert!(ok && list.contains("country-surge"), "{list}{err}");
    // ...so when the surge has stopped, a calm window lifts it.
    let lifted = wait_for(Duration::from_secs(10), || {
        audit.lines().into_iter().find(|l| {
            l.contains(r#""event":"lift""#) && l.contains(r#""target":"+232""#) && l.contains("surge-ended")
        })
    });
    assert!(lifted.is_some(), "not lifted after the surge: {:?}", audit.lines());
    let passed = agent.packets(verdict::PASS_SIP);
    send(&topo, CUSTOMER_V4, "invite-intl-plus-232.sip");
    assert!(rises(&agent, verdict::PASS_SIP, passed), "calls to +232 flow again");
    let page = agent.metrics().expect("metrics");
    assert_eq!(
        metric_value(
            &page,
            r#"tollgate_decisions_total{event="lift",kind="country-restrict",mode="enforce"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(metric_value(&page, r#"tollgate_restrictions_active{kind="country-restrict"}"#), Some(0.0));
}

/// A 1 s window with a ceiling of 10, and a level learned at once (a PBX
/// placing ~5 calls a window gets a threshold above the ceiling within a
/// few windows: a "day" of 4 s in which a level may rise tenfold); the
/// short scale only (a minute of it would be an hour's), and no
/// new-destination rule (with a history of seconds every destination would
/// be new).
const LEARNS_A_PBX_AT_ONCE: &[&str] = &[
    "--window",
    "1s",
    "--intl-invite-threshold",
    "10",
    "--baseline-min-windows",
    "2",
    "--surge-ratio",
    "10",
    "--baseline-min-history",
    "0",
    "--long-window",
    "4s",
    "--baseline-max-rise",
    "10",
    "--baseline-learn-below",
    "0.9",
    "--new-destination-divisor",
    "0",
    "--intl-medium-threshold",
    "0",
    "--intl-long-threshold",
    "0",
];

#[test]
fn a_busy_pbx_is_judged_by_its_own_peacetime_level_which_survives_a_restart() {
    if !privileged("a_busy_pbx_is_judged_by_its_own_peacetime_level_which_survives_a_restart") {
        return;
    }
    let topo = Topology::new();
    let audit = AuditFile::new();
    let mut agent = start(&topo, &audit, LEARNS_A_PBX_AT_ONCE);
    // The PBX's normal: an international call every 200 ms, ~5 a window.
    let pbx = CUSTOMER_V4;
    let steady = Pacer::start(
        &topo.peer,
        pbx,
        SocketAddr::new(EDGE_V4, 5060),
        fixture("invite-intl-plus-232.sip"),
        Duration::from_millis(200),
    );
    let learned = |agent: &Agent| {
        let maps = tollgate::maps::Maps::open_pinned(&agent.pin_dir).ok()?;
        maps.intl_baselines().into_iter().find(|(a, _)| *a == pbx).map(|(_, b)| b)
    };
    let b = wait_for(Duration::from_secs(10), || learned(&agent)).expect("a learned level in the kernel");
    eprintln!("learned: {b:?}");
    assert!(b.threshold >= 24 && b.windows >= 2, "{b:?}");
    // A busy hour: over the ceiling in one window, within its normal.
    let busy = b.threshold / 2;
    let before = agent_source(&agent, pbx);
    send_n(&topo, pbx, "invite-intl-plus-232.sip", busy);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent_source(&agent, pbx) >= before + u64::from(busy), "the kernel counted the busy hour");
    assert!(audit.lines().iter().all(|l| !l.contains("intl-suspend")), "{:?}", audit.lines());
    // A hijack: far above its own normal.
    let b = learned(&agent).expect("still learned");
    // The operator sees the threshold the PBX is judged by and its normal
    // level (columns: source intl all emergency threshold normal ...).
    let top = agent.cli("top");
    eprintln!("{top}");
    let cols: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("International INVITEs"))
        .find(|l| l.trim_start().starts_with("198.51.100.10 "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(cols.len() >= 6, "{top}");
    assert!(cols[4].parse::<u32>().is_ok_and(|t| t > 10), "learned threshold shown: {top}");
    assert!(cols[5].parse::<f64>().is_ok_and(|n| n > 1.0), "normal level shown: {top}");
    let page = agent.metrics().expect("metrics");
    assert_eq!(metric_value(&page, r#"tollgate_learned_levels{scope="source"}"#), Some(1.0), "{page}");
    send_n(&topo, pbx, "invite-intl-plus-232.sip", 3 * b.threshold);
    let line = audited(
        &audit,
        &[r#""event":"impose""#, r#""kind":"intl-suspend""#, r#""target":"198.51.100.10/32""#],
    );
    assert!(line.contains("peacetime_per_window") && !line.contains(r#""threshold":10,"#), "{line}");
    eprintln!("audit: {line}");

    // Restarted, the agent goes on from the learned level.
    drop(steady);
    agent.kill();
    agent.restart();
    assert!(agent.log_text().contains("learned levels"), "{}", agent.log_text());
    assert!(learned(&agent).is_some_and(|b| b.threshold > 10));
}

/// The PBX's cumulative international INVITEs, from the pinned map.
fn agent_source(agent: &Agent, addr: IpAddr) -> u64 {
    let maps = tollgate::maps::Maps::open_pinned(&agent.pin_dir).expect("maps");
    maps.source(addr).map_or(0, |s| s.intl_invites)
}

/// A reboot, simulated: the agent is killed and every pin removed (`tollgate
/// detach`), so the kernel keeps nothing. Started again, the agent restores
/// from its state database the restrictions in force, with their original
/// start, expiry, reason and evidence, and the learned and operators'
/// levels; one that lapsed meanwhile is audited as expired and does not
/// come back.
#[test]
fn restrictions_and_learned_levels_survive_a_reboot() {
    if !privileged("restrictions_and_learned_levels_survive_a_reboot") {
        return;
    }
    let topo = Topology::new();
    let audit = AuditFile::new();
    let mut agent = start(&topo, &audit, &[LEARNS_A_PBX_AT_ONCE, &["--intl-suspend", "1h"]].concat());
    // A PBX that learns a level above the ceiling...
    let pbx = CUSTOMER_V4;
    let steady = Pacer::start(
        &topo.peer,
        pbx,
        SocketAddr::new(EDGE_V4, 5060),
        fixture("invite-intl-plus-232.sip"),
        Duration::from_millis(200),
    );
    let learned = |agent: &Agent, addr: IpAddr| {
        let maps = tollgate::maps::Maps::open_pinned(&agent.pin_dir).ok()?;
        maps.intl_baselines().into_iter().find(|(a, _)| *a == addr).map(|(_, b)| b.threshold)
    };
    let before = wait_for(Duration::from_secs(15), || learned(&agent, pbx)).expect("a learned level");
    drop(steady);
    // ...an operator's threshold for another...
    let (ok, _, err) = agent.control(&[
        "baseline",
        "set",
        "source",
        "198.51.100.99",
        "--scale",
        "short",
        "--threshold",
        "50",
    ]);
    assert!(ok, "{err}");
    // ...a surge, intl-suspended for an hour...
    let hijacked = CUSTOMER_V6;
    send_n(&topo, hijacked, "invite-intl-00-232.sip", 12);
    let imposed = audited(&audit, &[r#""event":"impose""#, r#""kind":"intl-suspend""#, "2001:db8:2::10"]);
    // ...and an operator's auth-suspend of 3 s, which lapses while down...
    let (ok, _, err) =
        agent.control(&["restrict", "auth", "203.0.113.50", "--for", "3s", "--reason", "short one"]);
    assert!(ok, "{err}");
    // ...and a line's international calling, for its holder's 30 days.
    let (ok, _, err) = agent.control(&[
        "restrict",
        "intl",
        "--identity",
        "1001",
        "--for",
        "30d",
        "--reason",
        "holder asked",
    ]);
    assert!(ok, "{err}");

    agent.kill();
    let detached = agent.cli("detach");
    eprintln!("{detached}");
    assert!(!agent.pin_dir.exists(), "pins remain after detach");
    std::thread::sleep(Duration::from_secs(4));
    agent.restart();
    let log = agent.log_text();
    assert!(log.contains("2 restrictions in force restored, 1 lapsed while stopped"), "{log}");

    // The lapsed one is audited as expired, with its own reason and note.
    let expired = audited(&audit, &[r#""event":"expire""#, "203.0.113.50/32"]);
    assert!(expired.contains(r#""reason":"operator""#) && expired.contains("short one"), "{expired}");
    let (ok, list, err) = agent.control(&["restrictions", "list"]);
    assert!(ok, "{err}");
    assert!(!list.contains("203.0.113.50"), "a lapsed restriction came back: {list}");
    assert!(list.contains("2001:db8:2::10/128") && list.contains("intl-surge"), "{list}");
    // In the kernel again, and enforced.
    let drops = agent.packets(verdict::DROP_INTL_SUSPENDED);
    send(&topo, hijacked, "invite-intl-00-232.sip");
    assert!(rises(&agent, verdict::DROP_INTL_SUSPENDED, drops), "the restored intl-suspend is not enforced");
    // The line too: its credentials from any address, abroad.
    assert!(list.contains("everywhere") && list.contains("holder asked"), "{list}");
    let drops = agent.packets(verdict::DROP_INTL_SUSPENDED);
    send(&topo, ATTACKER_V6, "invite-with-auth.sip");
    assert!(
        rises(&agent, verdict::DROP_INTL_SUSPENDED, drops),
        "the restored line suspension is not enforced"
    );
    // Lifted now, its record keeps its original start, reason and evidence.
    let id: String = list
        .lines()
        .find(|l| l.contains("2001:db8:2::10"))
        .and_then(|l| l.split_whitespace().next())
        .expect("listed")
        .to_owned();
    let (ok, _, err) = agent.control(&["lift", &id]);
    assert!(ok, "{err}");
    let lifted = audited(&audit, &[r#""event":"lift""#, "2001:db8:2::10"]);
    let field = |line: &str, name: &str| {
        let at = line.find(&format!(r#""{name}":"#)).map(|i| i + name.len() + 3)?;
        Some(line[at..].split(['"', ',']).find(|s| !s.is_empty())?.to_owned())
    };
    for name in ["start", "reason", "count", "threshold"] {
        assert_eq!(field(&lifted, name), field(&imposed, name), "{name}: {imposed} then {lifted}");
    }
    // The expiry through two clocks (monotonic, wall): to a few ms.
    let ms = |line: &str| {
        let t = humantime::parse_rfc3339(&field(line, "expires").expect("expires")).expect("a time");
        t.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
    };
    // Against its last expiry before the agent stopped: the detector's
    // report of the same crossing may have extended it a moment later.
    let last = audit
        .lines()
        .into_iter()
        .rev()
        .find(|l| {
            l.contains("2001:db8:2::10")
                && (l.contains(r#""event":"impose""#) || l.contains(r#""event":"extend""#))
        })
        .expect("imposed");
    assert!((ms(&lifted) - ms(&last)).abs() <= 5, "expires: {last} then {lifted}");
    // The learned and the operator's levels are back in the kernel.
    let after =
        wait_for(Duration::from_secs(5), || learned(&agent, pbx)).expect("the learned level came back");
    assert!(after > 10 && after >= before / 2, "{before} then {after}");
    assert_eq!(
        wait_for(Duration::from_secs(5), || learned(&agent, "198.51.100.99".parse().unwrap())),
        Some(50)
    );
    let (ok, baselines, err) = agent.control(&["baseline", "list"]);
    assert!(ok && baselines.contains("198.51.100.99") && baselines.contains("50"), "{baselines}{err}");
    assert!(
        audit.lines().iter().any(|l| l.contains(r#""event":"baseline-set""#)),
        "the operator's threshold audited"
    );
}

/// The lines (histories) the agent's state database holds.
fn stored_lines(agent: &Agent) -> Vec<tollgate::store::StoredLine> {
    tollgate::store::Store::open(&agent.state_dir).and_then(|s| s.lines()).unwrap_or_default()
}

/// Issue 17: the agent learns sources' histories from the kernel's
/// once-a-window report of each customer's source, not by reading every
/// tracked source. A customer's source reaches the detector with the
/// history the kernel has of it (first seen at its first OPTIONS, not at
/// the INVITE that made it a customer's; a domestic INVITE raises no call
/// event of its own), and sources that only probed (OPTIONS, REGISTER
/// without credentials: a scanner, a spoofed flood) leave no line however
/// many windows pass.
#[test]
fn a_customers_history_reaches_the_detector_and_a_spoofed_flood_leaves_no_line() {
    if !privileged("a_customers_history_reaches_the_detector_and_a_spoofed_flood_leaves_no_line") {
        return;
    }
    let topo = Topology::new();
    let scanners = topo.more_sources(20);
    let audit = AuditFile::new();
    let agent = start(&topo, &audit, &["--window", "1s"]);
    let first = tollgate::store::now_ms();
    send(&topo, CUSTOMER_V4, "options-keepalive.sip");
    for s in scanners.iter().chain([&ATTACKER_V4]) {
        send(&topo, *s, "svmap-options.sip");
        send(&topo, *s, "register-noauth.sip");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let invited = tollgate::store::now_ms();
    send(&topo, CUSTOMER_V4, "invite-domestic-trunk.sip");
    for s in &scanners {
        send(&topo, *s, "svmap-options.sip");
    }
    let key = format!("{CUSTOMER_V4}");
    let line = wait_for(Duration::from_secs(10), || {
        stored_lines(&agent).into_iter().find(|l| l.line.ends_with(&key))
    })
    .unwrap_or_else(|| panic!("the customer's line was not learned: {:?}", stored_lines(&agent)));
    assert!(line.customer, "{line:?}");
    assert!(line.last_intl_ms.is_none(), "{line:?}");
    assert!(
        line.first_seen_ms >= first - 100 && line.first_seen_ms < invited - 1000,
        "first seen at the OPTIONS ({first}), not at the INVITE ({invited}): {line:?}"
    );
    // Two more windows: the scanners' entries are in the kernel, not in
    // the detector.
    std::thread::sleep(Duration::from_millis(2500));
    for s in scanners.iter().chain([&ATTACKER_V4]) {
        assert!(agent.source(*s).is_some(), "{s} tracked by the kernel");
    }
    let lines = stored_lines(&agent);
    assert_eq!(lines.len(), 1, "only the customer's line: {lines:?}");
}
