//! The reports of counter-measures 3 and 4 end to end: real SIP traffic
//! (raw UDP INVITEs and OPTIONS, a sipp phone registering with digest
//! authentication) through the kernel, a country surge and its restriction
//! by hand, and `tollgate report dormant|countries` and `/countries.json`
//! read back from the running agent, before and after a restart.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, SystemTime},
};

use tollgate::{
    commands::report::{countries_table, dormant_table},
    reports::{
        self, CountriesReport, CountryRestriction, CountryRow, DormantLine, DormantReport, Suspension,
    },
};
use tollgate_common::{corpus::fixture, verdict};
use tollgate_tests::{
    TempFile, privileged,
    sipp::{Registrar, register},
    topology::*,
    unique, wait_for,
};

/// Sends `name` `n` times over UDP from `src` to the edge, each a call of
/// its own (a fresh Call-ID).
fn send_n(topo: &Topology, src: IpAddr, name: &'static str, n: u32) {
    let dst = SocketAddr::new(edge_for(src), 5060);
    topo.peer.run(move || {
        let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind");
        for _ in 0..n {
            sock.send_to(&tollgate_tests::fresh_call(fixture(name)), dst).expect("send");
            std::thread::sleep(Duration::from_micros(200));
        }
    });
}

/// `tollgate ARGS` against the agent, which must succeed: its stdout.
fn tollgate(agent: &Agent, args: &[&str]) -> String {
    let (ok, out, err) = agent.control(args);
    assert!(ok, "tollgate {args:?}: {err}");
    out
}

/// The id in the first data row of `tollgate restrict`'s table.
fn restricted(agent: &Agent, args: &[&str]) -> u64 {
    let out = tollgate(agent, args);
    out.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id in {out}"))
}

/// `GET path` on the agent's metrics address, from inside the edge
/// namespace: (status code, body).
fn http_get(topo: &Topology, path: &str) -> (u16, String) {
    let addr = METRICS_ADDR.parse().expect("valid");
    tollgate_tests::http::get(&topo.edge.path(), addr, path, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no answer to GET {path}"))
}

/// Runs `f` (reading a report in several ways) until the reports it read
/// (first and last) agree: none of them straddled a second, so their
/// periods are the same.
fn consistent<T: PartialEq + std::fmt::Debug, R>(mut f: impl FnMut() -> (T, R, T)) -> (T, R) {
    for _ in 0..10 {
        let (before, read, after) = f();
        if before == after {
            return (before, read);
        }
    }
    panic!("the report never held still for a second");
}

fn parse_time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// `t` (RFC 3339, whole seconds) is within `[from, to]`, to the second.
fn within(t: &str, from: SystemTime, to: SystemTime) -> bool {
    let t = parse_time(t);
    t + Duration::from_secs(1) >= from && t <= to
}

#[test]
fn dormant_lines_and_targeted_countries_are_reported_as_table_json_and_http() {
    if !privileged("dormant_lines_and_targeted_countries_are_reported_as_table_json_and_http") {
        return;
    }
    let topo = Topology::new();
    // 101: a domestic caller; 102: a phone that registers; 103-106: PBXs
    // surging to +232.
    let more = topo.more_sources(6);
    let (domestic, phone, pbxs) = (more[0], more[1], &more[2..]);
    let (abroad, scanner) = (CUSTOMER_V4, ATTACKER_V4);
    let audit = TempFile(std::env::temp_dir().join(format!("{}.audit.jsonl", unique("audit"))));
    let egress = topo.edge_if.clone();
    let audit_path = audit.0.to_str().expect("utf-8").to_owned();
    let mut agent = Agent::start(
        &topo,
        &[
            "--egress-iface",
            &egress,
            "--window",
            "2s",
            "--country-invite-threshold",
            "6",
            "--country-min-sources",
            "3",
            "--audit-log",
            &audit_path,
        ],
    );
    let started = SystemTime::now();
    let _registrar = Registrar::start(&topo.edge, EDGE_V4, false);

    // Before the period: a line that calls abroad, one that only calls
    // domestically, an identity that authenticates (and never calls
    // abroad), a scanner.
    send_n(&topo, abroad, "invite-intl-tel-44.sip", 1);
    send_n(&topo, domestic, "invite-domestic-trunk.sip", 1);
    send_n(&topo, scanner, "options-keepalive.sip", 1);
    register(&topo.peer, phone, EDGE_V4, false, true, 1);
    // Two windows: the kernel's sources reach the agent's history.
    std::thread::sleep(Duration::from_secs(5));
    let period_start = SystemTime::now();
    std::thread::sleep(Duration::from_secs(1));

    // In the period: the line abroad calls abroad again, the domestic one
    // domestically; its holder asked for its international calls to stop.
    send_n(&topo, abroad, "invite-intl-tel-44.sip", 1);
    send_n(&topo, domestic, "invite-domestic-trunk.sip", 1);
    let suspended = restricted(&agent, &["restrict", "intl", &domestic.to_string(), "--for", "1h"]);
    // Four PBXs surge to Sierra Leone: the kernel and the agent report it
    // (audited as alerts: country restriction is not opted in)...
    for pbx in pbxs {
        send_n(&topo, *pbx, "invite-intl-plus-232.sip", 2);
    }
    let alerts = || {
        audit.lines().into_iter().filter(|l| l.contains(r#""event":"alert""#) && l.contains("+232")).count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || (alerts() >= 2).then_some(())).is_some(),
        "two surge reports: {:?}",
        audit.lines()
    );
    // ...and, once their windows passed, an operator restricts +232 by hand.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(alerts(), 2, "{:?}", audit.lines());
    let country = restricted(&agent, &["restrict", "country", "232", "--for", "1h"]);
    let drops = agent.packets(verdict::DROP_COUNTRY_RESTRICTED);
    send_n(&topo, pbxs[0], "invite-intl-plus-232.sip", 3);
    assert!(
        wait_for(Duration::from_secs(5), || (agent.packets(verdict::DROP_COUNTRY_RESTRICTED) >= drops + 3)
            .then_some(()))
        .is_some(),
        "INVITEs to +232 are dropped"
    );
    let tag = {
        let out = Command::new(tollgate_tests::tollgate_bin())
            .args(["identity-tag", "1001", "--state-dir"])
            .arg(&agent.state_dir)
            .output()
            .expect("tollgate identity-tag");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    // Counter-measure 3, over the seconds since the period began.
    let since = format!("{}s", period_start.elapsed().expect("clock").as_secs() + 1);
    let (dormant, table) = consistent(|| {
        let json = tollgate(&agent, &["report", "dormant", "--since", &since, "--json"]);
        let table = tollgate(&agent, &["report", "dormant", "--since", &since]);
        (json.clone(), table, tollgate(&agent, &["report", "dormant", "--since", &since, "--json"]))
    });
    eprintln!("{table}{dormant}");
    let report: DormantReport = serde_json::from_str(&dormant).expect("the dormant report's JSON");
    let now = SystemTime::now();
    // Each line's times are the kernel's and the agent's; they fall in
    // the phase that made them.
    let times = |kind: &str, line: &str| {
        let l = report.lines.iter().find(|l| l.kind == kind && l.line == line).unwrap_or_else(|| {
            panic!("{kind} {line} not listed: {dormant}");
        });
        assert!(within(&l.first_seen, started, period_start), "{l:?}");
        assert!(within(&l.last_seen, started, now), "{l:?}");
        (l.first_seen.clone(), l.last_seen.clone())
    };
    let row = |kind: &str, line: &str, suspension: Option<u64>| {
        let (first_seen, last_seen) = times(kind, line);
        DormantLine {
            kind: kind.into(),
            line: line.into(),
            first_seen,
            last_seen,
            last_international: None,
            intl_suspension: suspension.map(|id| Suspension { id, dry_run: false }),
        }
    };
    // Only customers' lines known before the period and quiet abroad in
    // it: not the line that called abroad, the scanner, or the PBXs.
    let expected = DormantReport {
        period: report.period.clone(),
        history_since: report.history_since.clone(),
        history_covers_period: true,
        lines: vec![
            row("identity", &tag, None),
            row("source", &domestic.to_string(), Some(suspended)),
            row("source", &phone.to_string(), None),
        ],
    };
    assert_eq!(report, expected, "{dormant}");
    assert_eq!(report.period.seconds, since.trim_end_matches('s').parse::<u64>().unwrap());
    assert!(within(
        &report.period.start,
        period_start - Duration::from_secs(2),
        period_start + Duration::from_secs(1)
    ));
    assert!(within(
        report.history_since.as_deref().expect("history"),
        started - Duration::from_secs(30),
        started
    ));
    assert_eq!(dormant, reports::json(&expected));
    assert_eq!(table, dormant_table(&expected));
    // Over an hour: tollgate has not watched that long, and says so.
    let hour = tollgate(&agent, &["report", "dormant", "--since", "1h", "--json"]);
    let hour: DormantReport = serde_json::from_str(&hour).expect("json");
    assert!(!hour.history_covers_period && hour.lines.is_empty(), "{hour:?}");
    let table = tollgate(&agent, &["report", "dormant", "--since", "1h"]);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with("Note: tollgate's history of lines begins "))
            && table.ends_with("no dormant lines\n"),
        "{table}"
    );

    // Counter-measure 4, as a table, as JSON and over HTTP.
    let secrets: Vec<String> = [abroad, domestic, phone, scanner]
        .iter()
        .chain(pbxs)
        .map(|a| a.to_string())
        .chain(["1001", "secret", &tag, "23276123456", "7946", "0312345678"].map(str::to_owned))
        .collect();
    let check_countries = |agent: &Agent| {
        let (json, (table, http)) = consistent(|| {
            let json = tollgate(agent, &["report", "countries", "--since", "1h", "--json"]);
            let table = tollgate(agent, &["report", "countries", "--since", "1h"]);
            let http = http_get(&topo, "/countries.json?since=1h");
            (json, (table, http), tollgate(agent, &["report", "countries", "--since", "1h", "--json"]))
        });
        eprintln!("{table}{json}");
        let report: CountriesReport = serde_json::from_str(&json).expect("the countries report's JSON");
        let until = report.countries.first().and_then(|c| c.restricted_now.as_ref()).map(|r| r.until.clone());
        let until = until.unwrap_or_else(|| panic!("+232 restricted now: {json}"));
        let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
        assert!(within(&until, in_an_hour - Duration::from_secs(60), in_an_hour), "{until}");
        // +232: 8 calls of the surge and 3 dropped; 2 surge reports; 1
        // restriction (the country's; the line's intl-suspend was not on a
        // country's evidence). +44 had calls only: not listed.
        let expected = CountriesReport {
            period: report.period.clone(),
            history_since: report.history_since.clone(),
            history_covers_period: false,
            countries: vec![CountryRow {
                cc: 232,
                country: "SL".into(),
                attempts: 11,
                blocked: 3,
                surges: 2,
                restrictions: 1,
                dry_run_restrictions: 0,
                restricted_now: Some(CountryRestriction { until, dry_run: false }),
            }],
        };
        assert_eq!(report, expected, "{json}");
        assert_eq!(
            report.period.start,
            reports::rfc3339(reports::hour_of(report_ms(&report.period.end) - 3_600_000))
        );
        assert_eq!(json, reports::json(&expected));
        assert_eq!(table, countries_table(&expected));
        assert_eq!(http, (200, json.clone()));
        for text in [&json, &table, &http.1] {
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{secret} in the countries report: {text}");
            }
        }
    };
    check_countries(&agent);
    let (status, body) = http_get(&topo, "/countries.json?since=soon");
    assert_eq!(status, 400);
    assert!(body.starts_with("since: \"soon\" is not a duration") && body.lines().count() == 1, "{body}");
    let list = tollgate(&agent, &["restrictions", "list"]);
    assert!(list.contains(&format!("{country:>4}  country-restrict")), "{list}");

    // A window later everything is stored; killed and restarted on the
    // same pins, the agent neither loses nor counts again what the kernel
    // counted.
    std::thread::sleep(Duration::from_secs(3));
    agent.kill();
    agent.restart();
    check_countries(&agent);
}

/// The UNIX ms of an RFC 3339 time.
fn report_ms(t: &str) -> i64 {
    parse_time(t).duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
}
