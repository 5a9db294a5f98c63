//! The dashboard and the alert rules against a live Prometheus: Debian's
//! Prometheus, on loopback in the edge namespace of the acceptance site,
//! scrapes two agents (the edge's, enforcing, and a dry-run one on the SIP
//! core's own interface, as a carrier trying tollgate out would run it)
//! while real SIP software makes real traffic: phones registering and
//! calling abroad as usual, a brute force against Kamailio, a hijacked
//! PBX calling one country and a surge to another from many PBXs.
//!
//! Then every query of dashboards/tollgate.json, with its template
//! variables substituted as Grafana sends them with "All" selected, must
//! return data; the brute-force, intl-surge, country and dry-run alerts of
//! dashboards/alerts.yml must have fired; and every metric any panel or
//! alert reads must exist. A metric renamed in the agent, or misspelt in
//! the dashboard or the rules, fails here.
//!
//! The results of every query are written to
//! target/dashboard-data/queries.json, which `cargo xtask dashboards-png`
//! plots for dashboards/README.md.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tollgate_tests::{
    TempFile,
    dashboard::{self, Query},
    kamailio::{self, Kamailio, VICTIM},
    netns::PIN_ROOT,
    privileged,
    prometheus::{self, INTERVAL_SECS, Prometheus},
    promql,
    sipp::{self, Client, Outcome, Repeater, Server, call, guesses_csv, pbx_csv},
    site::*,
    target_dir, tool_present,
    topology::Agent,
    traffic::udp_burst_of,
    unique, wait_for,
};

/// Both agents' detection: a short window of 4 s (a "minute"), medium 8 s,
/// long 16 s (a "day", over which a learned level may rise tenfold), and
/// levels trusted at once, so that a country's normal traffic teaches it a
/// threshold above the ceiling within the test; rules that would judge the
/// test's fresh lines as new (new destination, new prefix) are off.
const DETECT: &[&str] = &[
    "--window",
    "4s",
    "--medium-window",
    "8s",
    "--long-window",
    "16s",
    "--baseline-min-history",
    "0",
    "--baseline-min-windows",
    "1",
    "--baseline-max-rise",
    "10",
    "--surge-ratio",
    "8",
    "--new-destination-divisor",
    "0",
    "--new-prefix-calls",
    "0",
    "--auth-failure-threshold",
    "10",
    "--auth-suspend",
    "60s",
    "--intl-invite-threshold",
    "20",
    "--intl-suspend",
    "60s",
];

/// The dry-run agent's metrics address: Kamailio's, in the core, which the
/// edge's Prometheus reaches over the inside link.
const CORE_METRICS: &str = "192.0.2.66:9465";

/// Grafana's `$__rate_interval` at a 1 s scrape interval: 4 scrapes, plus
/// one for good measure.
const RATE_INTERVAL: &str = "5s";

/// The alerts that the traffic must make fire.
const MUST_FIRE: [&str; 4] = [
    "TollgateBruteForce",
    "TollgateIntlSurgeRestricted",
    "TollgateCountryRestricted",
    "TollgateDryRunWouldRestrict",
];
/// And those it must not: both agents run and are attached throughout.
// The cluster alerts too: this agent runs without one, and exports
// tollgate_cluster_enabled 0 so that they have their series but stay quiet.
const MUST_NOT_FIRE: [&str; 5] = [
    "TollgateAgentDown",
    "TollgateNotAttached",
    "TollgateEventsLost",
    "TollgateClusterDisconnected",
    "TollgateClusterSyncStale",
];

fn dashboards() -> PathBuf {
    dashboard::dashboards_dir()
}

fn tools_present(test: &str) -> bool {
    privileged(test)
        && tool_present(test, "kamailio (Debian package kamailio)", kamailio::installed())
        && tool_present(test, "sipp (Debian package sip-tester)", sipp::installed())
        && tool_present(test, "prometheus (Debian package prometheus)", prometheus::installed())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

fn spawn(ns: &str, client: Client) -> JoinHandle<Outcome> {
    let ns = ns.to_owned();
    std::thread::spawn(move || client.run(&ns))
}

/// The first line of `audit` with all of `needles`, waiting up to `timeout`.
fn audited(audit: &TempFile, needles: &[&str], timeout: Duration) -> String {
    wait_for(timeout, || audit.lines().into_iter().find(|l| needles.iter().all(|n| l.contains(n))))
        .unwrap_or_else(|| panic!("no audit line with {needles:?}:\n{}", audit.text()))
}

/// Whether a query's result has data: a series with a finite sample (a
/// range query's `values`, an instant query's `value`).
fn has_finite_sample(result: &[Value]) -> bool {
    let finite = |v: &Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok()).is_some_and(f64::is_finite);
    result.iter().any(|series| {
        series["values"].as_array().is_some_and(|vs| vs.iter().any(finite)) || finite(&series["value"])
    })
}

/// Every metric name the rules of alerts.yml read.
fn alert_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(dashboards().join("alerts.yml")).expect("alerts.yml");
    // Each `expr: |` block: its indented lines.
    let mut names = BTreeSet::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("expr:") {
            let indent = line.len() - line.trim_start().len();
            let mut expr =
                line.trim_start().trim_start_matches("expr:").trim_start_matches([' ', '|']).to_owned();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.len() - next.trim_start().len() > indent {
                    expr.push(' ');
                    expr.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            names.extend(promql::metric_names(&expr));
        }
    }
    names
}

#[test]
fn every_dashboard_query_has_data_and_the_attack_alerts_fire_in_a_live_prometheus() {
    let test = "every_dashboard_query_has_data_and_the_attack_alerts_fire_in_a_live_prometheus";
    if !tools_present(test) {
        return;
    }
    let site = Site::new();
    let uas = format!("sip:{CORE_V4}:{UAS_PORT}");
    let kamailio = Kamailio::core(&site.core, CORE_V4, CORE_V6, &uas);
    let _uas = Server::uas(&site.core, CORE_V4, UAS_PORT);
    let audit = TempFile::new("audit");
    // A blocklist feed (of a prefix no host of the site has), so the feed
    // metrics TollgateFeedFailing reads exist.
    let feed = TempFile::new("feed");
    std::fs::write(&feed.0, "2001:db8:dead::/48\n").expect("write the feed");
    let feed_spec = format!("name=local,path={},refresh=1h", feed.path());
    let mut args = vec!["--audit-log", audit.path(), "--feed", &feed_spec];
    args.extend_from_slice(DETECT);
    args.extend_from_slice(COUNTRY_SURGE_FLAGS);
    let edge = Agent::start_on(
        &site.edge,
        &site.edge_ifaces(),
        &PathBuf::from(PIN_ROOT).join(unique("pin")),
        &[],
        &args,
    );
    let dry_audit = TempFile::new("audit");
    let mut dry_args = vec!["--audit-log", dry_audit.path(), "--dry-run", "--metrics-addr", CORE_METRICS];
    dry_args.extend_from_slice(DETECT);
    dry_args.extend_from_slice(COUNTRY_SURGE_FLAGS);
    let core = Agent::start_on(
        &site.core,
        &[&site.core_if],
        &PathBuf::from(PIN_ROOT).join(unique("pin")),
        &[],
        &dry_args,
    );
    let targets: Vec<SocketAddr> = vec![edge.metrics_addr(), core.metrics_addr()];
    let prom = Prometheus::start(&site.edge, &targets, &[&dashboards().join("alerts.yml")]);
    let start = unix_now();
    let started = Instant::now();

    // Both scraped, and scraped a few times more, so that every counter's
    // series exists (at 0) before the traffic: an increase() sees only
    // what happens after a series' first sample.
    let up = wait_for(Duration::from_secs(30), || {
        let health = prom.target_health().ok()?;
        (health.len() == 2 && health.iter().all(|(_, h)| h == "up")).then_some(())
    });
    assert!(up.is_some(), "targets not up: {:?}\n{}", prom.target_health(), prom.log_text());
    std::thread::sleep(Duration::from_secs(3 * INTERVAL_SECS));

    let inet = site.inet.name().to_owned();
    // The usual: a phone registering every two seconds; a line calling the
    // UK about twice a second (the +44 level the agents learn); another's
    // domestic and emergency calls; keep-alives; datagrams to the SIP port
    // that are no SIP.
    let phone = Repeater::start(
        inet.clone(),
        Client::new("register-client.xml", "good.csv", customer_v4(0), CORE_V4),
        Duration::from_secs(2),
    );
    let uk = Repeater::start(
        inet.clone(),
        call("good.csv", customer_v4(6), "+442071234567", 3, 3),
        Duration::from_millis(300),
    );
    let domestic = Repeater::start(
        inet.clone(),
        call("good.csv", customer_v4(7), "0312345678", 1, 1),
        Duration::from_secs(1),
    );
    let emergency =
        Repeater::start(inet.clone(), call("good.csv", customer_v4(7), "110", 1, 1), Duration::from_secs(3));
    let sip_port = SocketAddr::new(CORE_V4, 5060);
    udp_burst_of(&site.inet, customer_v4(1), sip_port, b"\r\n\r\n", 5);
    udp_burst_of(&site.inet, customer_v4(1), sip_port, b"\x16\x03\x01 not SIP at all\r\n", 5);

    // The UK level is learned: its threshold is published above the ceiling.
    let learned = wait_for(Duration::from_secs(30), || {
        let r = prom.query(r#"tollgate_country_invite_threshold{cc="44"}"#, unix_now()).ok()?;
        (r.len() == 2).then_some(r)
    });
    assert!(
        learned.is_some(),
        "no learned +44 threshold on both agents: {:?}",
        prom.query("tollgate_country_invite_threshold", unix_now())
    );

    // A brute force on the victim's password over UDP, and a hijacked
    // PBX (the victim's line, well known to be weak) calling Lithuania.
    let guesses = guesses_csv(VICTIM.0, VICTIM.2, 0, 30);
    let mut brute = Client::new("register-client.xml", guesses.0.clone(), attacker_v4(0), CORE_V4);
    brute.calls = 30;
    brute.rate = 10;
    brute.recv_timeout_ms = 1000;
    let brute = spawn(&inet, brute);
    let hijacked = spawn(&inet, call("pbx.csv", customer_v4(5), "+37052000001", 30, 10));
    audited(&audit, &[r#""event":"impose""#, r#""kind":"auth-suspend""#], Duration::from_secs(30));
    audited(
        &audit,
        &[r#""event":"impose""#, r#""kind":"intl-suspend""#, r#""reason":"intl-surge""#],
        Duration::from_secs(30),
    );

    // Eight PBXs, each far below its own threshold, all calling Sierra
    // Leone: the country is restricted (and, after the surge, lifted).
    let pbxs: Vec<TempFile> = (0..8u8).map(pbx_csv).collect();
    let surge: Vec<JoinHandle<Outcome>> = pbxs
        .iter()
        .enumerate()
        .map(|(i, csv)| spawn(&inet, call(csv.0.clone(), pbx_v4(i as u8), &format!("+2327600001{i}"), 20, 2)))
        .collect();
    audited(&audit, &[r#""event":"impose""#, r#""kind":"country-restrict""#], Duration::from_secs(30));
    audited(&dry_audit, &[r#""event":"impose""#, r#""mode":"dry-run""#], Duration::from_secs(30));

    // The alerts fire while the restrictions are in force.
    let mut fired = BTreeSet::new();
    let all_fired = wait_for(Duration::from_secs(30), || {
        fired.extend(prom.firing().ok()?);
        MUST_FIRE.iter().all(|a| fired.contains(*a)).then_some(())
    });
    assert!(
        all_fired.is_some(),
        "fired: {fired:?}; alerts: {:?}; rules not ok: {:?}",
        prom.alerts(),
        prom.unhealthy_rules()
    );

    for t in surge.into_iter().chain([brute, hijacked]) {
        t.join().expect("sipp thread");
    }
    let (ok, lost) = uk.finish();
    assert!(ok > 0 && lost == 0, "the UK calls: {ok} answered, {lost} lost");
    let (ok, lost) = phone.finish();
    assert!(ok > 0 && lost == 0, "the phone's registrations: {ok} accepted, {lost} lost");
    let (ok, lost) = domestic.finish();
    let (em_ok, em_lost) = emergency.finish();
    assert!(ok > 0 && em_ok > 0 && lost + em_lost == 0, "domestic {ok}/{lost}, emergency {em_ok}/{em_lost}");
    // The restrictions' effects as Kamailio saw them: the attacker no more
    // than a few guesses past the threshold, Lithuania and Sierra Leone
    // cut short.
    let guessed = kamailio.forbidden_from(attacker_v4(0));
    assert!((10..=12).contains(&guessed), "{guessed} wrong passwords reached Kamailio");
    let to_lithuania = kamailio.calls_relayed_from(customer_v4(5)).len();
    assert!((10..30).contains(&to_lithuania), "{to_lithuania} of the hijacked PBX's 30 calls relayed");
    let to_sierra_leone: usize = (0..8).map(|i| kamailio.calls_relayed_from(pbx_v4(i)).len()).sum();
    assert!((8..160).contains(&to_sierra_leone), "{to_sierra_leone} of the surge's 160 calls relayed");
    eprintln!(
        "Kamailio: {guessed} wrong passwords, {to_lithuania} of 30 calls to +370, \
         {to_sierra_leone} of 160 to +232"
    );
    // Two more scrapes and evaluations, so the end of the traffic is in.
    std::thread::sleep(Duration::from_secs(3 * INTERVAL_SECS));

    let end = unix_now();
    let range = format!("{}s", (end - start).ceil() as u64);
    let d = dashboard::load();
    let mut empty = Vec::new();
    let mut recorded = Vec::new();
    for q in dashboard::panel_queries(&d) {
        let expr = dashboard::substitute(&q.expr, RATE_INTERVAL, &range);
        let series = prom.query_range(&expr, start, end, INTERVAL_SECS).unwrap_or_else(|e| panic!("{e:#}"));
        let value = q.instant.then(|| prom.query(&expr, end).unwrap_or_else(|e| panic!("{e:#}")));
        let data = value.as_deref().unwrap_or(&series);
        if !has_finite_sample(data) {
            empty.push(format!("{:?} ({}) {}: {expr}", q.panel, q.panel_id, q.ref_id));
        }
        recorded.push(record(&q, &expr, series, value));
    }
    for (name, v) in dashboard::variable_queries(&d).expect("variable queries") {
        let values =
            prom.query(&dashboard::substitute(&v, RATE_INTERVAL, &range), end).expect("variable query");
        let want = if name == "instance" { 2 } else { 4 };
        if values.len() != want {
            empty.push(format!("variable {name}: {} values instead of {want} ({v})", values.len()));
        }
    }
    write_data(start, end, &recorded);
    assert!(empty.is_empty(), "dashboard queries without data:\n  {}", empty.join("\n  "));

    // Every metric the rules read exists (so a rule that cannot fire here,
    // such as the map and latency ones, still cannot go blind unnoticed).
    let missing: Vec<String> = alert_metrics()
        .into_iter()
        .filter(|m| {
            prom.query(&format!(r#"count({{__name__=~"{m}(_bucket|_sum|_count)?"}})"#), end)
                .map_or(true, |r| r.is_empty())
        })
        .collect();
    assert!(missing.is_empty(), "metrics alerts.yml reads that Prometheus has no series of: {missing:?}");
    assert!(prom.unhealthy_rules().expect("rules").is_empty(), "{:?}", prom.unhealthy_rules());
    let wrongly: Vec<&str> = MUST_NOT_FIRE.iter().copied().filter(|a| fired.contains(*a)).collect();
    let now: Vec<String> = prom
        .alerts()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
        .collect();
    assert!(
        wrongly.is_empty() && !MUST_NOT_FIRE.iter().any(|a| now.iter().any(|n| n == a)),
        "fired: {fired:?}, pending or firing now: {now:?}"
    );
    eprintln!(
        "live Prometheus: {} panel queries with data over {range}; fired: {fired:?}; {:.0} s in all",
        recorded.len(),
        started.elapsed().as_secs_f64()
    );
}

/// One query and what Prometheus answered, for the plots.
fn record(q: &Query, expr: &str, range: Vec<Value>, value: Option<Vec<Value>>) -> Value {
    json!({
        "row": q.row, "panel_id": q.panel_id, "panel": q.panel, "type": q.kind, "unit": q.unit,
        "ref_id": q.ref_id, "legend": q.legend, "expr": expr, "instant": q.instant,
        "range": range, "value": value,
    })
}

/// target/dashboard-data/queries.json: every query's results over the run.
fn write_data(start: f64, end: f64, queries: &[Value]) {
    let dir = target_dir().join("dashboard-data");
    std::fs::create_dir_all(&dir).expect("target/dashboard-data");
    let by_row: BTreeMap<&str, usize> = queries.iter().fold(BTreeMap::new(), |mut m, q| {
        *m.entry(q["row"].as_str().unwrap_or_default()).or_default() += 1;
        m
    });
    let data = json!({ "start": start, "end": end, "step": INTERVAL_SECS, "queries": queries });
    let path = dir.join("queries.json");
    std::fs::write(&path, serde_json::to_string(&data).expect("JSON")).expect("queries.json");
    eprintln!("wrote {} ({} rows)", path.display(), by_row.len());
}
