//! The operator reports of the regulator's counter-measures 3 and 4, as
//! pure functions of what the agent and its state database hold and the
//! time (no I/O, no clock), and their wire form: the control socket
//! carries it, `tollgate report ... --json` prints it and the metrics
//! endpoint serves the countries report as `/countries.json`.
//!
//! - **dormant lines** (counter-measure 3): customers' lines (identities
//!   that authenticated; sources where one did, or that sent INVITEs) known
//!   for the whole period and with no international call attempt in it, so
//!   that a carrier can ask their holders whether to suspend international
//!   calling.
//! - **countries** (counter-measure 4): destination countries with surges,
//!   restrictions or blocked calls in the period, with counts, for a
//!   carrier's customer page. Country codes, labels, counts and times
//!   only: never a number, an identity or an address.
//!
//! The kernel counts call attempts and dropped calls per country
//! cumulatively (pinned maps: they survive agent restarts and start again
//! from 0 when the maps are made anew); [`CountryTally`] turns readings of
//! them into hourly counts.

use std::{
    collections::BTreeMap,
    time::{Duration, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    countries::Countries,
    detect::{Line, Subject},
    policy::{Decision, Kind, Target},
    store::{CountryHour, CountryReadings, HOUR_MS, HistoryBounds},
};

/// The last second RFC 3339 can show (9999-12-31T23:59:59Z), in ms.
const LAST_SHOWN_MS: i64 = 253_402_300_799_000;

/// The start of the hour holding `ms`.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// A wall-clock time (UNIX ms) as reports show it: RFC 3339, UTC, whole
/// seconds; times outside 1970 to 9999 show as those bounds.
pub fn rfc3339(ms: i64) -> String {
    let ms = u64::try_from(ms.clamp(0, LAST_SHOWN_MS)).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A report as JSON: pretty, one field a line, ending in a newline (what
/// `--json` prints and `/countries.json` serves, byte for byte).
pub fn json<T: Serialize>(report: &T) -> String {
    let mut text = serde_json::to_string_pretty(report).expect("reports serialize");
    text.push('\n');
    text
}

/// The time a report covers.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Period {
    /// RFC 3339, UTC, whole seconds.
    pub start: String,
    pub end: String,
    /// From start to end.
    pub seconds: u64,
}

impl Period {
    fn new(start_ms: i64, end_ms: i64) -> Self {
        let seconds = u64::try_from((end_ms - start_ms) / 1000).unwrap_or(0);
        Self { start: rfc3339(start_ms), end: rfc3339(end_ms), seconds }
    }
}

/// A restriction in force, as the reports need it (wall-clock expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InForce {
    pub id: u64,
    pub kind: Kind,
    pub target: Target,
    pub until_ms: i64,
    /// Written to the kernel (false: dry-run).
    pub enforced: bool,
}

/// The end of a report's period: `now_ms` to the second (so that its
/// times and seconds agree), and its start `since` earlier (not before
/// 1970).
fn bounds(now_ms: i64, since: Duration) -> (i64, i64) {
    let end = now_ms - now_ms.rem_euclid(1000);
    let since = i64::try_from(since.as_secs().max(1)).unwrap_or(i64::MAX).saturating_mul(1000);
    (end.saturating_sub(since).max(0), end)
}

/// Counter-measure 3: lines with no international call attempt in the
/// period. Field names are stable (README, "Reports for holders and
/// customers").
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct DormantReport {
    pub period: Period,
    /// When tollgate's history of lines' international calls began (its
    /// state database was made, or migrated from a version without it).
    pub history_since: Option<String>,
    /// Whether that history covers the whole period. If not, the lines
    /// listed were quiet since it began: nothing can be known dormant for
    /// longer than tollgate has watched.
    pub history_covers_period: bool,
    /// By kind, then line.
    pub lines: Vec<DormantLine>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct DormantLine {
    /// `identity` or `source`.
    pub kind: String,
    /// An identity tag (16 hex digits, never the name) or a source address.
    pub line: String,
    pub first_seen: String,
    pub last_seen: String,
    /// The last international call attempt (before the period); null:
    /// none ever seen.
    pub last_international: Option<String>,
    /// An intl-suspend in force on the line now (an enforced one first),
    /// null if none.
    pub intl_suspension: Option<Suspension>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Suspension {
    /// The restriction's id (`tollgate lift ID`).
    pub id: u64,
    /// Decided in dry-run: nothing is dropped.
    pub dry_run: bool,
}

/// Lines the agent holds and lines the database holds, merged: each
/// with what either knows of it.
pub fn merged_lines(
    stored: impl IntoIterator<Item = (Subject, Line)>,
    live: impl IntoIterator<Item = (Subject, Line)>,
) -> Vec<(Subject, Line)> {
    let mut all: BTreeMap<Subject, Line> = BTreeMap::new();
    for (s, l) in stored.into_iter().chain(live) {
        all.entry(s).and_modify(|known| known.merge(l)).or_insert(l);
    }
    all.into_iter().collect()
}

/// The dormant report at `now_ms` over the last `since`: every
/// customer's line first seen before the period began whose last
/// international call attempt (if any) was before it too.
pub fn dormant(
    lines: &[(Subject, Line)],
    in_force: &[InForce],
    history: HistoryBounds,
    now_ms: i64,
    since: Duration,
) -> DormantReport {
    let (start, end) = bounds(now_ms, since);
    let mut quiet: Vec<(&'static str, Subject, &Line)> = lines
        .iter()
        .filter(|(_, l)| l.customer && l.first_seen_ms < start && l.last_intl_ms.is_none_or(|t| t < start))
        .filter_map(|(s, l)| match s {
            Subject::Identity(_) => Some(("identity", *s, l)),
            Subject::Source(_) => Some(("source", *s, l)),
            Subject::Country(_) => None,
        })
        .collect();
    // By kind's name, then the line itself (addresses in address order).
    quiet.sort_by_key(|(kind, s, _)| (*kind, *s));
    let lines = quiet
        .into_iter()
        .map(|(kind, s, l)| DormantLine {
            kind: kind.to_owned(),
            line: match s {
                Subject::Identity(tag) => tollgate_common::hash::IdentityTag(tag).to_string(),
                Subject::Source(addr) => addr.to_string(),
                Subject::Country(cc) => cc.to_string(),
            },
            first_seen: rfc3339(l.first_seen_ms),
            last_seen: rfc3339(l.last_seen_ms),
            last_international: l.last_intl_ms.map(rfc3339),
            intl_suspension: suspension(s, in_force),
        })
        .collect();
    DormantReport {
        period: Period::new(start, end),
        history_since: history.since_ms.map(rfc3339),
        history_covers_period: history.since_ms.is_none_or(|t| t <= start),
        lines,
    }
}

/// The intl-suspend in force on a line: on a prefix holding the source,
/// or on the identity (at one address or everywhere). Enforced ones
/// first, then by id.
fn suspension(line: Subject, in_force: &[InForce]) -> Option<Suspension> {
    in_force
        .iter()
        .filter(|r| r.kind == Kind::IntlSuspend)
        .filter(|r| match (line, r.target) {
            (Subject::Source(addr), Target::Source(net)) => net.contains(&addr),
            (Subject::Identity(tag), Target::Identity(_, t)) => t == tag,
            _ => false,
        })
        .min_by_key(|r| (!r.enforced, r.id))
        .map(|r| Suspension { id: r.id, dry_run: !r.enforced })
}

/// Counter-measure 4: destination countries with surges, restrictions or
/// blocked calls in the period. Country codes, labels, counts and times
/// only. Field names are stable (README, "Reports for holders and
/// customers").
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CountriesReport {
    /// Whole hours: the start is on the hour; the end is the report's time.
    pub period: Period,
    /// Since when the counts are kept (the state database was made or
    /// migrated, or older hours were forgotten with the rest of the
    /// history).
    pub history_since: Option<String>,
    /// Whether the counts kept cover the whole period.
    pub history_covers_period: bool,
    /// By blocked calls (most first), then call attempts (most first),
    /// then country code.
    pub countries: Vec<CountryRow>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CountryRow {
    /// The E.164 country code.
    pub cc: u16,
    /// Its label as the metrics use it (ISO 3166 code or tag;
    /// `unassigned` for a code of no country).
    pub country: String,
    /// International call attempts to it (the blocked ones included).
    pub attempts: u64,
    /// Call attempts dropped (by any restriction).
    pub blocked: u64,
    /// Surges to it detected (the kernel's reports and the agent's).
    pub surges: u64,
    /// Restrictions imposed and enforced: on the country itself, or on a
    /// line whose calls to it were the evidence.
    pub restrictions: u64,
    /// The same, decided in dry-run (nothing dropped).
    pub dry_run_restrictions: u64,
    /// The country itself is restricted now: until when; null if not.
    pub restricted_now: Option<CountryRestriction>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CountryRestriction {
    pub until: String,
    /// Decided in dry-run: nothing is dropped.
    pub dry_run: bool,
}

/// The countries report at `now_ms` over the whole hours since `since`
/// ago, from the hours' counts (those stored and those not yet: several
/// rows of one hour and country add up).
pub fn countries(
    hours: &[CountryHour],
    in_force: &[InForce],
    labels: &Countries,
    history: HistoryBounds,
    now_ms: i64,
    since: Duration,
) -> CountriesReport {
    let (start, end) = bounds(now_ms, since);
    let start = hour_of(start);
    let mut sums: BTreeMap<u16, CountryHour> = BTreeMap::new();
    for h in hours.iter().filter(|h| h.hour_ms >= start && h.hour_ms <= end) {
        let sum = sums.entry(h.cc).or_default();
        sum.attempts += h.attempts;
        sum.blocked += h.blocked;
        sum.surges += h.surges;
        sum.restrictions += h.restrictions;
        sum.dry_run_restrictions += h.dry_run_restrictions;
    }
    let mut rows: Vec<CountryRow> = sums
        .into_iter()
        .filter(|(_, h)| h.blocked + h.surges + h.restrictions + h.dry_run_restrictions > 0)
        .map(|(cc, h)| CountryRow {
            cc,
            country: labels.label(cc).unwrap_or("unassigned").to_owned(),
            attempts: h.attempts,
            blocked: h.blocked,
            surges: h.surges,
            restrictions: h.restrictions,
            dry_run_restrictions: h.dry_run_restrictions,
            restricted_now: in_force
                .iter()
                .filter(|r| r.kind == Kind::CountryRestrict && r.target == Target::Country(cc))
                .min_by_key(|r| (!r.enforced, r.id))
                .map(|r| CountryRestriction { until: rfc3339(r.until_ms), dry_run: !r.enforced }),
        })
        .collect();
    rows.sort_by_key(|r| (std::cmp::Reverse(r.blocked), std::cmp::Reverse(r.attempts), r.cc));
    // Hours that ended before the cut were forgotten; the one holding it is kept.
    let kept = history.since_ms.max(history.pruned_before_ms.map(hour_of));
    CountriesReport {
        period: Period::new(start, end),
        history_since: kept.map(rfc3339),
        history_covers_period: kept.is_none_or(|t| t <= start),
        countries: rows,
    }
}

/// What the kernel's cumulative per-country counters grew by since the
/// last reading: a counter lower than it was (the maps were made anew,
/// e.g. after `tollgate detach`) counts from 0.
fn grown(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

/// Per-country counts by hour, kept by the agent between saves to the
/// state database: the kernel's counters' growth at each reading (in the
/// hour of the reading), surges and restrictions as they happen.
#[derive(Debug, Default)]
pub struct CountryTally {
    /// The counters at the last reading; None before the first.
    last: Option<CountryReadings>,
    /// Counted since the last save, by hour and country.
    pending: BTreeMap<(i64, u16), CountryHour>,
    /// The readings changed since the last save.
    read: bool,
}

impl CountryTally {
    /// Goes on from the readings an earlier agent stored (None: a new
    /// database), reading the counters as they are now: what they grew by
    /// since the stored readings (the agent was down, the kernel counted
    /// on) is counted in this hour. Without stored readings the counters
    /// as they are now are the baseline: of what they held before, nothing
    /// says when it was counted.
    pub fn resume(
        stored: Option<CountryReadings>,
        now_ms: i64,
        attempts: &[(u16, u64)],
        blocked: &[(u16, u64)],
    ) -> Self {
        let mut tally = Self { last: stored, ..Self::default() };
        tally.reading(now_ms, attempts, blocked);
        tally
    }

    fn entry(&mut self, hour_ms: i64, cc: u16) -> &mut CountryHour {
        self.pending.entry((hour_ms, cc)).or_insert(CountryHour { hour_ms, cc, ..CountryHour::default() })
    }

    /// A surge to `cc` was detected (by the kernel or the agent).
    pub fn surge(&mut self, cc: u16, now_ms: i64) {
        self.entry(hour_of(now_ms), cc).surges += 1;
    }

    /// A decision was made: a restriction imposed on a country, or on a
    /// line whose calls to a country were the evidence, counts for it.
    pub fn decision(&mut self, d: &Decision, now_ms: i64) {
        let Decision::Impose(a) = d else { return };
        let cc = match a.target {
            Target::Country(cc) => Some(cc),
            _ => a.evidence.cc,
        };
        if let Some(cc) = cc.filter(|cc| *cc != 0) {
            let h = self.entry(hour_of(now_ms), cc);
            if a.enforced {
                h.restrictions += 1;
            } else {
                h.dry_run_restrictions += 1;
            }
        }
    }

    /// The counters' growth since the last reading, by country (nothing
    /// before the first reading).
    fn growth(&self, attempts: &[(u16, u64)], blocked: &[(u16, u64)]) -> BTreeMap<u16, (u64, u64)> {
        let Some(last) = &self.last else { return BTreeMap::new() };
        let now = readings(0, attempts, blocked).counters;
        let mut out = BTreeMap::new();
        for cc in now.keys().chain(last.counters.keys()) {
            let (a0, b0) = last.counters.get(cc).copied().unwrap_or_default();
            let (a1, b1) = now.get(cc).copied().unwrap_or_default();
            let g = (grown(a0, a1), grown(b0, b1));
            if g != (0, 0) {
                out.insert(*cc, g);
            }
        }
        out
    }

    /// A reading of the kernel's counters at `now_ms`: their growth is
    /// counted in this hour.
    pub fn reading(&mut self, now_ms: i64, attempts: &[(u16, u64)], blocked: &[(u16, u64)]) {
        let hour = hour_of(now_ms);
        for (cc, (a, b)) in self.growth(attempts, blocked) {
            let h = self.entry(hour, cc);
            h.attempts += a;
            h.blocked += b;
        }
        let now = readings(now_ms, attempts, blocked);
        if self.last.as_ref().is_none_or(|l| l.counters != now.counters) {
            self.read = true;
        }
        self.last = Some(now);
    }

    /// What is to be stored: the hours counted since the last save, and
    /// the readings if they changed (to be written in one transaction,
    /// then [`Self::saved`]).
    pub fn unsaved(&self) -> (Vec<CountryHour>, Option<&CountryReadings>) {
        (self.pending.values().copied().collect(), self.last.as_ref().filter(|_| self.read))
    }

    /// What [`Self::unsaved`] returned is stored.
    pub fn saved(&mut self) {
        self.pending.clear();
        self.read = false;
    }

    /// The hours not stored yet, the counters' growth since the last
    /// reading included (in the hour of `now_ms`), for a report now.
    pub fn current(&self, now_ms: i64, attempts: &[(u16, u64)], blocked: &[(u16, u64)]) -> Vec<CountryHour> {
        let mut out = self.pending.clone();
        let hour = hour_of(now_ms);
        for (cc, (a, b)) in self.growth(attempts, blocked) {
            let h =
                out.entry((hour, cc)).or_insert(CountryHour { hour_ms: hour, cc, ..CountryHour::default() });
            h.attempts += a;
            h.blocked += b;
        }
        out.into_values().collect()
    }
}

/// Counter readings as the store keeps them: non-zero ones only.
fn readings(read_ms: i64, attempts: &[(u16, u64)], blocked: &[(u16, u64)]) -> CountryReadings {
    let mut counters: BTreeMap<u16, (u64, u64)> = BTreeMap::new();
    for (cc, n) in attempts.iter().filter(|(_, n)| *n != 0) {
        counters.entry(*cc).or_default().0 = *n;
    }
    for (cc, n) in blocked.iter().filter(|(_, n)| *n != 0) {
        counters.entry(*cc).or_default().1 = *n;
    }
    CountryReadings { read_ms, counters }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::policy::{Active, Evidence, Reason};

    /// 2026-12-03T10:23:45.678Z.
    pub(crate) const NOW: i64 = 1_796_293_425_678;
    const DAY: i64 = 86_400_000;

    pub(crate) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub(crate) fn line(first: i64, last: i64, intl: Option<i64>, customer: bool) -> Line {
        Line { first_seen_ms: first, last_seen_ms: last, last_intl_ms: intl, customer }
    }

    pub(crate) fn in_force(id: u64, kind: Kind, target: Target, enforced: bool) -> InForce {
        InForce { id, kind, target, until_ms: NOW + 3_600_000, enforced }
    }

    fn impose(kind: Kind, target: Target, cc: Option<u16>, enforced: bool) -> Decision {
        Decision::Impose(Active {
            id: 1,
            kind,
            target,
            reason: Reason::Operator,
            note: Some("holder 198.51.100.77 asked, dialled +23276123456".into()),
            evidence: Evidence { cc, ..Evidence::default() },
            imposed_at_ns: 0,
            expires_at_ns: 1,
            enforced,
            offence: 1,
            imposed_wall_ms: None,
        })
    }

    #[test]
    fn times_are_rfc3339_utc_to_the_second_and_hours_round_down() {
        assert_eq!(rfc3339(NOW), "2026-12-03T10:23:45Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(hour_of(NOW), NOW - (23 * 60 + 45) * 1000 - 678);
        assert_eq!(
            (hour_of(0), hour_of(HOUR_MS - 1), hour_of(HOUR_MS), hour_of(-1)),
            (0, 0, HOUR_MS, -HOUR_MS)
        );
        // A countries report starts at the since-time rounded down to the
        // hour, and ends at the report's second.
        let labels = Countries::shipped();
        let r = |since| countries(&[], &[], &labels, HistoryBounds::default(), NOW, since).period;
        assert_eq!(
            r(Duration::from_secs(30 * 60)),
            Period {
                start: "2026-12-03T09:00:00Z".into(),
                end: "2026-12-03T10:23:45Z".into(),
                seconds: 5025
            }
        );
        assert_eq!(
            r(Duration::from_secs(24 * 3600)),
            Period {
                start: "2026-12-02T10:00:00Z".into(),
                end: "2026-12-03T10:23:45Z".into(),
                seconds: 87_825
            }
        );
        // A dormant report's period is exactly `since`, to the second.
        let d = dormant(&[], &[], HistoryBounds::default(), NOW, Duration::from_secs(90 * 86_400)).period;
        assert_eq!(
            d,
            Period {
                start: "2026-09-04T10:23:45Z".into(),
                end: "2026-12-03T10:23:45Z".into(),
                seconds: 7_776_000
            }
        );
        // A period longer than the clock's history starts in 1970.
        let all = dormant(&[], &[], HistoryBounds::default(), NOW, Duration::from_secs(u64::MAX)).period;
        assert_eq!((all.start.as_str(), all.seconds), ("1970-01-01T00:00:00Z", 1_796_293_425));
    }

    #[test]
    fn dormant_lines_are_customers_known_all_period_that_never_called_abroad_in_it() {
        let start = NOW - NOW % 1000 - 90 * DAY;
        let tag = 0x00ab_00ab_00ab_00ab;
        let lines = merged_lines(
            [
                // Authenticated 100 days ago, never called abroad.
                (Subject::Identity(tag), line(start - 10 * DAY, start - 10 * DAY, None, true)),
                // Last abroad before the period.
                (Subject::Source(ip("198.51.100.7")), line(start - DAY, NOW - DAY, Some(start - 1), true)),
            ],
            [
                // The agent knows more of it than the database: abroad in the period.
                (Subject::Source(ip("198.51.100.8")), line(start - DAY, start - DAY, None, true)),
                (Subject::Source(ip("198.51.100.8")), line(NOW, NOW, Some(start + DAY), false)),
                (Subject::Source(ip("198.51.100.10")), line(start - DAY, NOW, None, true)),
                // At the period's start exactly: in it.
                (Subject::Source(ip("198.51.100.11")), line(start - DAY, NOW, Some(start), true)),
                (Subject::Source(ip("198.51.100.12")), line(start, NOW, None, true)),
                // A scanner; an identity only seen in calls; a new line.
                (Subject::Source(ip("203.0.113.9")), line(start - DAY, NOW, None, false)),
                (Subject::Identity(7), line(start - DAY, start - DAY, None, false)),
                (Subject::Source(ip("2001:db8::5")), line(NOW - DAY, NOW, None, true)),
            ],
        );
        let active = [
            in_force(3, Kind::IntlSuspend, Target::Source("198.51.100.0/24".parse().unwrap()), false),
            in_force(9, Kind::IntlSuspend, Target::Source("198.51.100.7/32".parse().unwrap()), true),
            in_force(4, Kind::AuthSuspend, Target::Source("198.51.100.10/32".parse().unwrap()), true),
            in_force(5, Kind::IntlSuspend, Target::Identity(ip("::"), tag), true),
            // An identity's suspension at an address is not the address's.
            in_force(6, Kind::IntlSuspend, Target::Identity(ip("198.51.100.10"), 99), true),
        ];
        let history = HistoryBounds { since_ms: Some(start - 200 * DAY), pruned_before_ms: Some(NOW) };
        let r = dormant(&lines, &active, history, NOW, Duration::from_secs(90 * 86_400));
        let row =
            |kind: &str, line: &str, first: i64, last: i64, intl: Option<i64>, s: Option<(u64, bool)>| {
                DormantLine {
                    kind: kind.into(),
                    line: line.into(),
                    first_seen: rfc3339(first),
                    last_seen: rfc3339(last),
                    last_international: intl.map(rfc3339),
                    intl_suspension: s.map(|(id, dry_run)| Suspension { id, dry_run }),
                }
            };
        assert_eq!(
            r.lines,
            [
                row(
                    "identity",
                    "00ab00ab00ab00ab",
                    start - 10 * DAY,
                    start - 10 * DAY,
                    None,
                    Some((5, false))
                ),
                // In address order, not text order; the enforced suspension first.
                row("source", "198.51.100.7", start - DAY, NOW - DAY, Some(start - 1), Some((9, false))),
                row("source", "198.51.100.10", start - DAY, NOW, None, Some((3, true))),
            ]
        );
        assert!(r.history_covers_period, "lines are never pruned: only since_ms counts");
        // A history that began within the period is said so.
        let short = HistoryBounds { since_ms: Some(start + 1), pruned_before_ms: None };
        let r = dormant(&lines, &active, short, NOW, Duration::from_secs(90 * 86_400));
        assert_eq!((r.history_since, r.history_covers_period), (Some(rfc3339(start + 1)), false));
    }

    fn hour(hour_ms: i64, cc: u16, counts: [u64; 5]) -> CountryHour {
        let [attempts, blocked, surges, restrictions, dry_run_restrictions] = counts;
        CountryHour { hour_ms, cc, attempts, blocked, surges, restrictions, dry_run_restrictions }
    }

    #[test]
    fn countries_with_surges_restrictions_or_blocked_calls_in_whole_hours_most_blocked_first() {
        let h = hour_of(NOW);
        let start = h - 24 * HOUR_MS;
        let hours = [
            // Before the period's first hour: not counted.
            hour(start - HOUR_MS, 232, [1000, 1000, 9, 9, 9]),
            hour(start, 232, [40, 10, 2, 0, 0]),
            hour(h, 232, [5, 2, 0, 1, 0]),
            // Two rows of one hour (stored, and not yet) add up.
            hour(h, 44, [7, 0, 0, 0, 1]),
            hour(h, 44, [3, 0, 0, 0, 0]),
            // Calls only: a destination like any other, not listed.
            hour(h, 49, [500, 0, 0, 0, 0]),
            hour(h, 882, [1, 12, 0, 0, 0]),
            hour(h, 1, [30, 0, 1, 0, 0]),
            hour(h, 999, [2, 0, 1, 0, 0]),
        ];
        let active = [
            in_force(1, Kind::CountryRestrict, Target::Country(232), true),
            in_force(2, Kind::CountryRestrict, Target::Country(44), false),
            in_force(3, Kind::IntlSuspend, Target::Source("198.51.100.7/32".parse().unwrap()), true),
        ];
        let labels = Countries::shipped();
        let r =
            countries(&hours, &active, &labels, HistoryBounds::default(), NOW, Duration::from_secs(86_400));
        let row = |cc: u16, country: &str, counts: [u64; 5], now: Option<bool>| {
            let [attempts, blocked, surges, restrictions, dry_run_restrictions] = counts;
            CountryRow {
                cc,
                country: country.into(),
                attempts,
                blocked,
                surges,
                restrictions,
                dry_run_restrictions,
                restricted_now: now
                    .map(|dry_run| CountryRestriction { until: "2026-12-03T11:23:45Z".into(), dry_run }),
            }
        };
        assert_eq!(
            r.countries,
            [
                // As many blocked: the more attempts first.
                row(232, "SL", [45, 12, 2, 1, 0], Some(false)),
                row(882, "INTLNET", [1, 12, 0, 0, 0], None),
                row(1, "NANP", [30, 0, 1, 0, 0], None),
                row(44, "GB", [10, 0, 0, 0, 1], Some(true)),
                row(999, "unassigned", [2, 0, 1, 0, 0], None),
            ]
        );
        assert_eq!(r.period.start, rfc3339(start));
        assert_eq!((r.history_since, r.history_covers_period), (None, true));
        // The hours before a prune's cut are gone: the counts begin at its hour.
        let pruned = HistoryBounds { since_ms: Some(0), pruned_before_ms: Some(start + 90_000) };
        let r = countries(&hours, &active, &labels, pruned, NOW, Duration::from_secs(86_400));
        assert_eq!(
            (r.history_since.as_deref(), r.history_covers_period),
            (Some(rfc3339(start).as_str()), true)
        );
        let r = countries(&hours, &active, &labels, pruned, NOW, Duration::from_secs(2 * 86_400));
        assert_eq!((r.history_since, r.history_covers_period), (Some(rfc3339(start)), false));
    }

    /// The kernel's counters are cumulative: each reading counts what they
    /// grew by, in the hour of the reading.
    #[test]
    fn counter_growth_is_counted_once_across_a_restart_and_from_zero_after_a_reset() {
        let h = hour_of(NOW);
        // A new database: the counters as they are are the baseline.
        let mut t = CountryTally::resume(None, NOW, &[(232, 100)], &[(232, 40)]);
        let (hours, readings) = t.unsaved();
        assert!(hours.is_empty(), "{hours:?}");
        assert_eq!(readings.map(|r| r.counters.clone()), Some([(232, (100, 40))].into()));
        t.saved();
        assert_eq!(t.unsaved(), (vec![], None));
        // A window: 232 grew, 44 appeared.
        t.reading(NOW + 1000, &[(232, 110), (44, 3)], &[(232, 45)]);
        assert_eq!(t.unsaved().0, [hour(h, 44, [3, 0, 0, 0, 0]), hour(h, 232, [10, 5, 0, 0, 0])]);
        let stored = t.unsaved().1.cloned();
        t.saved();
        // Nothing changed: nothing to store.
        t.reading(NOW + 2000, &[(232, 110), (44, 3)], &[(232, 45)]);
        assert_eq!(t.unsaved(), (vec![], None));

        // The agent restarts; the kernel counted on meanwhile: counted
        // once, in the hour of the new agent's first reading.
        let later = NOW + HOUR_MS;
        let t = CountryTally::resume(stored.clone(), later, &[(232, 130), (44, 3)], &[(232, 50)]);
        assert_eq!(t.unsaved().0, [hour(h + HOUR_MS, 232, [20, 5, 0, 0, 0])]);
        // It dies before storing that: the next one counts it (and no more).
        drop(t);
        let mut t = CountryTally::resume(stored, later, &[(232, 131), (44, 3)], &[(232, 50)]);
        assert_eq!(t.unsaved().0, [hour(h + HOUR_MS, 232, [21, 5, 0, 0, 0])]);
        t.saved();

        // The maps were made anew (`tollgate detach`): lower counters
        // count from 0, a country gone counts nothing, and one that comes
        // back counts from 0 again.
        t.reading(later + 1000, &[(232, 4)], &[(232, 1)]);
        assert_eq!(t.unsaved().0, [hour(h + HOUR_MS, 232, [4, 1, 0, 0, 0])]);
        t.saved();
        t.reading(later + 2000, &[(232, 4), (44, 2)], &[(232, 1)]);
        assert_eq!(t.unsaved().0, [hour(h + HOUR_MS, 44, [2, 0, 0, 0, 0])]);
        assert_eq!(t.unsaved().1.map(|r| r.counters.clone()), Some([(44, (2, 0)), (232, (4, 1))].into()));
    }

    #[test]
    fn surges_and_imposed_restrictions_count_for_their_country_in_their_hour() {
        let mut t = CountryTally::resume(None, NOW, &[], &[]);
        t.saved();
        let h = hour_of(NOW);
        t.surge(232, NOW);
        t.surge(232, NOW + HOUR_MS);
        let source = Target::Source("198.51.100.7/32".parse().unwrap());
        for d in [
            impose(Kind::CountryRestrict, Target::Country(232), None, true),
            // A line restricted on the evidence of its calls to +44.
            impose(Kind::IntlSuspend, source, Some(44), false),
            impose(Kind::IdentitySuspend, Target::Identity(ip("198.51.100.7"), 7), Some(44), true),
            // No country in the evidence (brute force): none counts.
            impose(Kind::AuthSuspend, source, None, true),
        ] {
            t.decision(&d, NOW);
        }
        // Extended, lifted or alerted: nothing imposed.
        let Decision::Impose(a) = impose(Kind::CountryRestrict, Target::Country(1), None, true) else {
            unreachable!()
        };
        t.decision(&Decision::Extend(a.clone()), NOW);
        t.decision(&Decision::Lift(a, "operator"), NOW);
        assert_eq!(
            t.unsaved().0,
            [
                hour(h, 44, [0, 0, 0, 1, 1]),
                hour(h, 232, [0, 0, 1, 1, 0]),
                hour(h + HOUR_MS, 232, [0, 0, 1, 0, 0])
            ]
        );
        // A report now sees what is not stored and the counters' growth
        // since the last reading, without taking the reading.
        let cur = t.current(NOW, &[(232, 6)], &[(232, 6)]);
        assert_eq!(
            cur,
            [
                hour(h, 44, [0, 0, 0, 1, 1]),
                hour(h, 232, [6, 6, 1, 1, 0]),
                hour(h + HOUR_MS, 232, [0, 0, 1, 0, 0])
            ]
        );
        assert_eq!(t.unsaved().1, None, "not read");
    }

    /// Counter-measure 4's report is published: whatever the decisions
    /// behind it named (addresses, identities, operators' notes with
    /// numbers in them), it holds country codes, labels, counts and times.
    #[test]
    fn the_countries_report_holds_no_address_identity_or_number() {
        let mut t = CountryTally::resume(None, NOW - 10_000, &[], &[]);
        let addr = ip("198.51.100.77");
        let tag = 0x1234_5678_9abc_def0;
        for d in [
            impose(Kind::IntlSuspend, Target::Source(addr.into()), Some(232), true),
            impose(Kind::IdentitySuspend, Target::Identity(addr, tag), Some(232), false),
            impose(Kind::CountryRestrict, Target::Country(232), None, true),
        ] {
            t.decision(&d, NOW - 5000);
        }
        t.surge(232, NOW - 5000);
        t.reading(NOW - 1000, &[(232, 23_276_123), (81, 5)], &[(232, 3)]);
        let active = [
            in_force(1, Kind::IntlSuspend, Target::Source(addr.into()), true),
            in_force(2, Kind::IntlSuspend, Target::Identity(addr, tag), true),
            in_force(3, Kind::CountryRestrict, Target::Country(232), true),
        ];
        let labels = Countries::shipped();
        let r = countries(
            &t.current(NOW, &[], &[]),
            &active,
            &labels,
            HistoryBounds::default(),
            NOW,
            Duration::from_secs(3600),
        );
        assert_eq!(r.countries.len(), 1);
        let json = json(&r);
        let table = crate::commands::report::countries_table(&r);
        for text in [&json, &table] {
            for secret in ["198.51.100.77", "123456789abcdef0", "12345678", "holder", "+23276123456", "1001"]
            {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        // Structurally: every string in the JSON is a time or a label.
        fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
                serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        strings(&serde_json::from_str(&json).expect("json"), &mut all);
        for s in all {
            let time = humantime::parse_rfc3339(&s).is_ok() && s.ends_with('Z') && s.len() == 20;
            assert!(time || labels.codes().iter().any(|cc| labels.label(*cc) == Some(s.as_str())), "{s}");
        }
    }
}
