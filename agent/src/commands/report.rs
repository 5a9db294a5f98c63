//! `tollgate report dormant|countries`: the reports of counter-measures 3
//! and 4, asked of the running agent over its control socket and printed
//! as a table or (`--json`) as the agent's JSON, byte for byte what
//! `/countries.json` serves.

use std::fmt::Write as _;

use crate::{
    cli::{ReportCommand, ReportOutput},
    control,
    reports::{self, CountriesReport, DormantReport, Period},
};

pub fn report(command: ReportCommand) -> anyhow::Result<()> {
    let (output, request) = match command {
        ReportCommand::Dormant(a) => {
            (a.output, control::Request::ReportDormant { since_seconds: a.since.as_secs().max(1) })
        }
        ReportCommand::Countries(a) => {
            (a.output, control::Request::ReportCountries { since_seconds: a.since.as_secs().max(1) })
        }
    };
    let response = control::call(&output.control.control_socket, &request)?;
    if !response.ok {
        anyhow::bail!("{}", response.error.unwrap_or_else(|| "refused".to_owned()));
    }
    let text = match (response.dormant, response.countries) {
        (Some(r), _) => render(&output, &r, dormant_table),
        (_, Some(r)) => render(&output, &r, countries_table),
        _ => anyhow::bail!("the agent's answer has no report (is it an older tollgate?)"),
    };
    print!("{text}");
    Ok(())
}

fn render<T: serde::Serialize>(output: &ReportOutput, r: &T, table: fn(&T) -> String) -> String {
    if output.json { reports::json(r) } else { table(r) }
}

/// A length of time in days, hours, minutes and seconds (`90d`,
/// `1d 2h 30m`, `45s`): what `--since` was given as, not months.
fn span(seconds: u64) -> String {
    let parts: Vec<String> = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")]
        .iter()
        .scan(seconds, |left, (unit, name)| {
            let n = *left / unit;
            *left %= unit;
            Some((n, name))
        })
        .filter(|(n, _)| *n > 0)
        .map(|(n, name)| format!("{n}{name}"))
        .collect();
    if parts.is_empty() { "0s".to_owned() } else { parts.join(" ") }
}

fn period(p: &Period) -> String {
    format!("from {} to {} ({})", p.start, p.end, span(p.seconds))
}

/// The dormant report as a table: its period, a note if tollgate has not
/// watched all of it, then one line per line.
pub fn dormant_table(r: &DormantReport) -> String {
    let mut out = format!("Lines with no international call attempt {}\n", period(&r.period));
    if let (false, Some(since)) = (r.history_covers_period, &r.history_since) {
        let _ = writeln!(
            out,
            "Note: tollgate's history of lines begins {since}, after the period's start: nothing can be dormant for longer than tollgate has watched."
        );
    }
    if r.lines.is_empty() {
        out.push_str("no dormant lines\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<8}  {:<39}  {:<20}  {:<20}  {:<20}  intl suspended",
        "kind", "line", "first seen", "last seen", "last intl call"
    );
    for l in &r.lines {
        let suspended = match l.intl_suspension {
            None => "-".to_owned(),
            Some(s) if s.dry_run => format!("{} (dry-run)", s.id),
            Some(s) => s.id.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<8}  {:<39}  {:<20}  {:<20}  {:<20}  {suspended}",
            l.kind,
            l.line,
            l.first_seen,
            l.last_seen,
            l.last_international.as_deref().unwrap_or("never")
        );
    }
    out
}

/// The countries report as a table: its period, a note if the counts kept
/// do not cover all of it, then one line per country.
pub fn countries_table(r: &CountriesReport) -> String {
    let mut out = format!(
        "Destination countries with surges, restrictions or blocked calls, in whole hours {}\n",
        period(&r.period)
    );
    if let (false, Some(since)) = (r.history_covers_period, &r.history_since) {
        let _ = writeln!(
            out,
            "Note: the counts kept begin {since}, after the period's start: nothing before it is counted."
        );
    }
    if r.countries.is_empty() {
        out.push_str("no country had a surge, a restriction or a blocked call\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<5} {:<10} {:>9} {:>9} {:>7} {:>12} {:>8}  restricted now",
        "cc", "country", "attempts", "blocked", "surges", "restrictions", "dry-run"
    );
    for c in &r.countries {
        let now = match &c.restricted_now {
            None => "no".to_owned(),
            Some(x) if x.dry_run => format!("until {} (dry-run)", x.until),
            Some(x) => format!("until {}", x.until),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<10} {:>9} {:>9} {:>7} {:>12} {:>8}  {now}",
            format!("+{}", c.cc),
            c.country,
            c.attempts,
            c.blocked,
            c.surges,
            c.restrictions,
            c.dry_run_restrictions
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        countries::Countries,
        detect::{Line, Subject},
        policy::{Kind, Target},
        reports::{InForce, countries, dormant},
        store::{CountryHour, HistoryBounds},
    };

    /// 2026-12-03T10:23:45.678Z.
    const NOW: i64 = 1_796_293_425_678;

    fn at(rfc3339: &str) -> i64 {
        let t = humantime::parse_rfc3339(rfc3339).expect("a time");
        t.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
    }

    fn line(first: &str, last: &str, intl: Option<&str>) -> Line {
        Line { first_seen_ms: at(first), last_seen_ms: at(last), last_intl_ms: intl.map(at), customer: true }
    }

    fn in_force(id: u64, kind: Kind, target: Target, until: &str, enforced: bool) -> InForce {
        InForce { id, kind, target, until_ms: at(until), enforced }
    }

    #[test]
    fn spans_are_days_hours_minutes_seconds() {
        assert_eq!(span(90 * 86_400), "90d");
        assert_eq!(span(86_400 + 23 * 60 + 45), "1d 23m 45s");
        assert_eq!(span(5400), "1h 30m");
        assert_eq!((span(2), span(0)), ("2s".to_owned(), "0s".to_owned()));
    }

    #[test]
    fn the_dormant_report_from_stored_rows_as_table_and_json() {
        let lines = [
            (Subject::Identity(0xab), line("2026-08-01T09:00:00Z", "2026-08-20T18:30:00Z", None)),
            (
                Subject::Source("198.51.100.7".parse().unwrap()),
                line("2026-07-15T00:00:00Z", "2026-12-02T23:59:59Z", Some("2026-09-01T12:00:00Z")),
            ),
            (
                Subject::Source("2001:db8::7".parse().unwrap()),
                line("2026-06-30T08:15:00Z", "2026-11-30T08:15:00Z", None),
            ),
        ];
        let active = [
            in_force(
                5,
                Kind::IntlSuspend,
                Target::Identity("::".parse().unwrap(), 0xab),
                "2026-12-04T00:00:00Z",
                true,
            ),
            in_force(
                9,
                Kind::IntlSuspend,
                Target::Source("198.51.100.0/24".parse().unwrap()),
                "2026-12-04T00:00:00Z",
                true,
            ),
            in_force(
                12,
                Kind::IntlSuspend,
                Target::Source("2001:db8::/48".parse().unwrap()),
                "2026-12-04T00:00:00Z",
                false,
            ),
        ];
        let history = HistoryBounds { since_ms: Some(at("2026-10-01T00:00:00Z")), pruned_before_ms: None };
        let r = dormant(&lines, &active, history, NOW, Duration::from_secs(90 * 86_400));
        assert_eq!(
            dormant_table(&r),
            "\
Lines with no international call attempt from 2026-09-04T10:23:45Z to 2026-12-03T10:23:45Z (90d)
Note: tollgate's history of lines begins 2026-10-01T00:00:00Z, after the period's start: nothing can be dormant for longer than tollgate has watched.
kind      line                                     first seen            last seen             last intl call        intl suspended
identity  00000000000000ab                         2026-08-01T09:00:00Z  2026-08-20T18:30:00Z  never                 5
source    198.51.100.7                             2026-07-15T00:00:00Z  2026-12-02T23:59:59Z  2026-09-01T12:00:00Z  9
source    2001:db8::7                              2026-06-30T08:15:00Z  2026-11-30T08:15:00Z  never                 12 (dry-run)
"
        );
        assert_eq!(
            reports::json(&r),
            r#"{
  "period": {
    "start": "2026-09-04T10:23:45Z",
    "end": "2026-12-03T10:23:45Z",
    "seconds": 7776000
  },
  "history_since": "2026-10-01T00:00:00Z",
  "history_covers_period": false,
  "lines": [
    {
      "kind": "identity",
      "line": "00000000000000ab",
      "first_seen": "2026-08-01T09:00:00Z",
      "last_seen": "2026-08-20T18:30:00Z",
      "last_international": null,
      "intl_suspension": {
        "id": 5,
        "dry_run": false
      }
    },
    {
      "kind": "source",
      "line": "198.51.100.7",
      "first_seen": "2026-07-15T00:00:00Z",
      "last_seen": "2026-12-02T23:59:59Z",
      "last_international": "2026-09-01T12:00:00Z",
      "intl_suspension": {
        "id": 9,
        "dry_run": false
      }
    },
    {
      "kind": "source",
      "line": "2001:db8::7",
      "first_seen": "2026-06-30T08:15:00Z",
      "last_seen": "2026-11-30T08:15:00Z",
      "last_international": null,
      "intl_suspension": {
        "id": 12,
        "dry_run": true
      }
    }
  ]
}
"#
        );
        // What the CLI reads back is what the agent sent.
        assert_eq!(serde_json::from_str::<DormantReport>(&reports::json(&r)).expect("parse"), r);
        // Nothing quiet that long.
        let r = dormant(&[], &[], HistoryBounds::default(), NOW, Duration::from_secs(3600));
        assert_eq!(
            dormant_table(&r),
            "Lines with no international call attempt from 2026-12-03T09:23:45Z to 2026-12-03T10:23:45Z (1h)\nno dormant lines\n"
        );
    }

    #[test]
    fn the_countries_report_from_stored_hours_as_table_and_json() {
        let hour = |h: &str, cc, attempts, blocked, surges, restrictions, dry_run_restrictions| CountryHour {
            hour_ms: at(h),
            cc,
            attempts,
            blocked,
            surges,
            restrictions,
            dry_run_restrictions,
        };
        let hours = [
            hour("2026-12-02T09:00:00Z", 232, 900, 900, 9, 9, 9),
            hour("2026-12-02T10:00:00Z", 232, 40, 10, 2, 0, 0),
            hour("2026-12-03T10:00:00Z", 232, 5, 2, 0, 1, 0),
            hour("2026-12-03T10:00:00Z", 44, 10, 0, 0, 0, 1),
            hour("2026-12-03T10:00:00Z", 49, 500, 0, 0, 0, 0),
        ];
        let active = [
            in_force(1, Kind::CountryRestrict, Target::Country(232), "2026-12-03T11:30:00Z", true),
            in_force(2, Kind::CountryRestrict, Target::Country(44), "2026-12-03T12:00:00Z", false),
        ];
        let history = HistoryBounds { since_ms: Some(at("2026-11-01T00:00:00Z")), pruned_before_ms: None };
        let r = countries(&hours, &active, &Countries::shipped(), history, NOW, Duration::from_secs(86_400));
        assert_eq!(
            countries_table(&r),
            "\
Destination countries with surges, restrictions or blocked calls, in whole hours from 2026-12-02T10:00:00Z to 2026-12-03T10:23:45Z (1d 23m 45s)
cc    country     attempts   blocked  surges restrictions  dry-run  restricted now
+232  SL                45        12       2            1        0  until 2026-12-03T11:30:00Z
+44   GB                10         0       0            0        1  until 2026-12-03T12:00:00Z (dry-run)
"
        );
        assert_eq!(
            reports::json(&r),
            r#"{
  "period": {
    "start": "2026-12-02T10:00:00Z",
    "end": "2026-12-03T10:23:45Z",
    "seconds": 87825
  },
  "history_since": "2026-11-01T00:00:00Z",
  "history_covers_period": true,
  "countries": [
    {
      "cc": 232,
      "country": "SL",
      "attempts": 45,
      "blocked": 12,
      "surges": 2,
      "restrictions": 1,
      "dry_run_restrictions": 0,
      "restricted_now": {
        "until": "2026-12-03T11:30:00Z",
        "dry_run": false
      }
    },
    {
      "cc": 44,
      "country": "GB",
      "attempts": 10,
      "blocked": 0,
      "surges": 0,
      "restrictions": 0,
      "dry_run_restrictions": 1,
      "restricted_now": {
        "until": "2026-12-03T12:00:00Z",
        "dry_run": true
      }
    }
  ]
}
"#
        );
        assert_eq!(serde_json::from_str::<CountriesReport>(&reports::json(&r)).expect("parse"), r);
        // The counts kept begin within the period; and nothing to list.
        let late = HistoryBounds { since_ms: Some(at("2026-12-03T10:05:00Z")), pruned_before_ms: None };
        let r = countries(&[], &[], &Countries::shipped(), late, NOW, Duration::from_secs(60));
        assert_eq!(
            countries_table(&r),
            "\
Destination countries with surges, restrictions or blocked calls, in whole hours from 2026-12-03T10:00:00Z to 2026-12-03T10:23:45Z (23m 45s)
Note: the counts kept begin 2026-12-03T10:05:00Z, after the period's start: nothing before it is counted.
no country had a surge, a restriction or a blocked call
"
        );
    }
}
