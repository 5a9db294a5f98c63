//! Detection in the daemon: the kernel's threshold events (short scale)
//! and call events (every new international call attempt, every new
//! authentication, a customer's source seen in a new window) go through
//! the [`Detector`]; once per short window its
//! levels learn, the short-scale thresholds it learned are written to the
//! kernel, calm countries are released and the lines the kernel saw are
//! noted in their history.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use log::warn;
use tollgate_common::{
    Baseline, EVENT_AUTH_OK, EVENT_CALL, EVENT_FLAG_IDENTIFIED, EVENT_SEEN, ThresholdEvent,
};

use crate::{
    cli::DetectArgs,
    clock::monotonic_now_ns,
    detect::{DetectConfig, Detector, Learning, NewDestination, NewPrefix, Report, Subject},
    events::EventKind,
    maps::{Maps, key_addr},
    policy::{AuthEvidence, Decision, Engine, Evidence, Kind, Target},
    store::now_ms,
};

/// Wall-clock ms of a CLOCK_MONOTONIC instant.
pub(super) fn wall_ms(mono_ns: u64) -> i64 {
    super::persist::wall_of(mono_ns, now_ms(), monotonic_now_ns())
}

/// What is read from the kernel at the end of a window: its per-country
/// counters (a fixed-size read) and, once at start-up only, the customers'
/// sources a previous agent's pinned map holds. After that, sources'
/// histories come from the kernel's `EVENT_SEEN` call events (at most one
/// per customer's source and window), so a window costs the same however
/// many sources the kernel tracks.
pub(super) struct Snapshot {
    /// (address, first seen, last seen) of each customer's source: sent
    /// INVITEs, or an identity authenticated there.
    sources: Vec<(IpAddr, i64, i64)>,
    /// The kernel's per-country counters (None: they could not be read).
    pub(super) countries: Option<super::reporting::Counters>,
}

/// The kernel's test of a customer's source (the kernel's `seen` makes the
/// same one before it reports a source).
fn customer(s: &tollgate_common::SourceStats) -> bool {
    s.invites > 0 || s.ok_tag[0] != 0
}

impl Snapshot {
    /// The window's read; `adopt` (once, at start-up) adds the customers'
    /// sources already in the per-source map (one pass over it).
    pub(super) fn read(maps: &Maps, adopt: bool) -> Self {
        let sources = if adopt {
            maps.sources_where(customer)
                .into_iter()
                .map(|(a, s)| (a, wall_ms(s.first_seen_ns), wall_ms(s.last_seen_ns)))
                .collect()
        } else {
            Vec::new()
        };
        let countries = super::reporting::counters(maps).map_err(|e| warn!("{e}")).ok();
        Self { sources, countries }
    }
}

/// The detector's configuration from the command line.
pub(super) fn config(d: &DetectArgs, high_risk: HashSet<u16>) -> DetectConfig {
    let (cm, cl) = d.country_longer_thresholds;
    DetectConfig {
        windows: [d.window, d.medium_window, d.long_window],
        source: [d.intl_invite_threshold, d.intl_medium_threshold, d.intl_long_threshold],
        identity: d.identity_thresholds,
        country: [d.country_invite_threshold, cm, cl],
        country_min_sources: d.country_min_sources,
        learning: Learning {
            ratio: d.surge_ratio,
            weight: d.baseline_weight,
            learn_below: d.baseline_learn_below,
            max_rise: d.baseline_max_rise,
            min_history: d.baseline_min_history,
            min_windows: d.baseline_min_windows,
            learned_max: d.learned_max_ratio,
        },
        new_destination: NewDestination {
            history: d.new_destination_history,
            divisor: d.new_destination_divisor,
            high_risk,
            high_risk_divisor: d.high_risk_divisor,
        },
        new_prefix: NewPrefix {
            v4_len: d.identity_prefix.0,
            v6_len: d.identity_prefix.1,
            horizon: d.new_prefix_horizon,
            calls: d.new_prefix_calls,
        },
        max_subjects: 4 * d.max_sources as usize,
    }
}

/// The detector, and what of it the kernel has.
pub(super) struct Learned {
    pub(super) detector: Detector,
    /// Where detections are counted for the metrics.
    counts: crate::events::EventCounts,
    /// The short-scale thresholds last written to the kernel.
    written: HashMap<Subject, u32>,
}

impl Learned {
    pub(super) fn new(cfg: DetectConfig, counts: crate::events::EventCounts) -> Self {
        Self { detector: Detector::new(cfg), counts, written: HashMap::new() }
    }

    /// The engine's decisions on a kernel threshold event, with its evidence.
    pub(super) fn decide(
        &self,
        engine: &mut Engine,
        now: u64,
        e: &ThresholdEvent,
        window: Duration,
    ) -> Vec<Decision> {
        let addr = key_addr(&e.addr);
        let ms = now_ms();
        // The level is evidence only when the threshold came from it.
        let level = |s: Subject| self.detector.level(s, 0, ms).map(|p| (p * 1000.0).round() as u64);
        let mut evidence = Evidence {
            count: e.count,
            threshold: e.threshold,
            window,
            scale: Some(0),
            ..Evidence::default()
        };
        match EventKind::from_code(e.kind) {
            Some(EventKind::CountryInvites) => {
                if e.threshold > self.detector.config().country[0] {
                    evidence.peacetime_milli = level(Subject::Country(e.cc));
                }
                evidence.sources = Some(u32::from(e.sources));
                engine.on_country_surge(now, e.cc, evidence)
            }
            Some(EventKind::IntlInvites) => {
                if e.threshold > self.detector.config().source[0] {
                    evidence.peacetime_milli = level(Subject::Source(addr));
                }
                engine.on_event(now, addr, EventKind::IntlInvites, evidence)
            }
            Some(EventKind::AuthFailures) => {
                evidence.auth = Some(AuthEvidence {
                    identity: e.tag,
                    unbound: e.unbound,
                    identities: e.identities,
                    other_ok: e.flags & tollgate_common::EVENT_FLAG_OTHER_OK != 0,
                });
                engine.on_event(now, addr, EventKind::AuthFailures, evidence)
            }
            // Already reported as unknown when it was read.
            None => Vec::new(),
        }
    }

    /// A call event: a new international call attempt, the identity of
    /// one, or a new authentication. Country surges the detector reports
    /// are counted in `reporting`.
    pub(super) fn call_event(
        &mut self,
        engine: &mut Engine,
        reporting: &mut super::reporting::Reporting,
        now: u64,
        e: &ThresholdEvent,
    ) -> Vec<Decision> {
        let (addr, ms) = (key_addr(&e.addr), now_ms());
        let reports: Vec<Report> = match e.kind {
            EVENT_CALL if e.flags & EVENT_FLAG_IDENTIFIED != 0 => {
                self.detector.call_identified(addr, e.tag, e.cc, ms)
            }
            EVENT_CALL => self.detector.call(addr, e.tag, e.cc, ms),
            EVENT_AUTH_OK => {
                self.detector.auth_ok(e.tag, addr, ms);
                Vec::new()
            }
            EVENT_SEEN => {
                self.detector.source_seen(addr, wall_ms(e.window_start_ns), wall_ms(e.at_ns), true);
                Vec::new()
            }
            other => {
                warn!("unknown call event kind {other} from the kernel");
                Vec::new()
            }
        };
        self.reported(engine, reporting, now, &reports)
    }

    /// The engine's decisions on the detector's reports, counted.
    fn reported(
        &self,
        engine: &mut Engine,
        reporting: &mut super::reporting::Reporting,
        now: u64,
        reports: &[Report],
    ) -> Vec<Decision> {
        for r in reports {
            self.counts.detected(r);
            if let Subject::Country(cc) = r.subject {
                reporting.surge(cc);
            }
        }
        reports.iter().flat_map(|r| engine.on_report(now, r)).collect()
    }

    /// (clustering) What the other nodes count changed: the sums this node
    /// is the one to judge are judged.
    pub(super) fn elsewhere(
        &mut self,
        engine: &mut Engine,
        reporting: &mut super::reporting::Reporting,
        now: u64,
        sums: HashMap<Subject, crate::detect::Elsewhere>,
    ) -> Vec<Decision> {
        self.detector.set_elsewhere(sums);
        let reports = self.detector.judge_elsewhere(now_ms());
        self.reported(engine, reporting, now, &reports)
    }

    /// A short window passed: levels learn from it (restricted subjects'
    /// windows excepted), the learned short-scale thresholds go to the
    /// kernel, and automatic country restrictions whose country calmed
    /// down (in the cluster's sum too) are lifted, except those another
    /// node decided (`foreign`): that node lifts them.
    pub(super) fn window_passed(
        &mut self,
        snapshot: Snapshot,
        m: &mut Maps,
        engine: &mut Engine,
        foreign: &HashSet<u16>,
    ) -> Vec<Decision> {
        let ms = now_ms();
        for (addr, first, last) in snapshot.sources {
            self.detector.source_seen(addr, first, last, true);
        }
        let active = engine.active();
        for a in active {
            if let Target::Country(cc) = a.target {
                self.detector.track(Subject::Country(cc), ms);
            }
        }
        let restricted = |s: Subject| {
            active.iter().any(|r| match (s, r.target) {
                (Subject::Source(a), Target::Source(n)) => r.kind == Kind::IntlSuspend && n.contains(&a),
                (Subject::Country(cc), Target::Country(c)) => cc == c,
                (Subject::Identity(t), Target::Identity(_, tag)) => t == tag,
                _ => false,
            })
        };
        let forgotten = self.detector.forgotten();
        self.detector.tick(ms, restricted);
        if self.detector.forgotten() > forgotten {
            warn!(
                "detection at capacity (4 x --max-sources): forgot the {} least recently seen sources, identities, lines or destinations",
                self.detector.forgotten() - forgotten
            );
        }
        self.write_thresholds(m, ms);
        let now = monotonic_now_ns();
        let calm: Vec<(u16, u64)> = engine
            .active()
            .iter()
            .filter_map(|a| match a.target {
                Target::Country(cc) if !foreign.contains(&cc) => Some(cc),
                _ => None,
            })
            .filter_map(|cc| {
                let subject = Subject::Country(cc);
                let (count, start_ms) = self.detector.last_window(subject, 0)?;
                let elsewhere = self.detector.elsewhere(subject).map_or(0, |e| e.others[0]);
                let below = count.saturating_add(elsewhere) < self.detector.threshold(subject, 0, ms);
                let ago = u64::try_from(ms - start_ms).unwrap_or(0) * 1_000_000;
                below.then_some((cc, now.saturating_sub(ago)))
            })
            .collect();
        calm.into_iter().flat_map(|(cc, start)| engine.country_calm(cc, start)).collect()
    }

    /// Writes the short-scale thresholds to the kernel now (an operator
    /// changed one).
    pub(super) fn apply_thresholds(&mut self, m: &mut Maps) {
        self.write_thresholds(m, now_ms());
    }

    /// Brings the kernel's learned short-scale thresholds in line with the
    /// detector's.
    fn write_thresholds(&mut self, m: &mut Maps, ms: i64) {
        let want: HashMap<Subject, u32> = self.detector.kernel_thresholds(ms).into_iter().collect();
        let baseline = |d: &Detector, s: Subject, threshold: u32| {
            let l = d.learned(s, 0);
            Baseline {
                threshold,
                windows: l.map_or(0, |l| l.windows),
                peacetime_milli: l.map_or(0, |l| (l.level * 1000.0).round() as u64),
            }
        };
        for (s, t) in &want {
            if self.written.get(s) == Some(t) {
                continue;
            }
            let written = match s {
                Subject::Source(a) => m.set_intl_baseline(*a, Some(baseline(&self.detector, *s, *t))),
                Subject::Country(cc) => m.set_country_baseline(*cc, baseline(&self.detector, *s, *t)),
                Subject::Identity(_) => Ok(()),
            };
            if let Err(e) = written {
                warn!("{e}");
            }
        }
        for s in self.written.keys().filter(|s| !want.contains_key(s)) {
            let removed = match s {
                Subject::Source(a) => m.set_intl_baseline(*a, None),
                Subject::Country(cc) => m.set_country_baseline(*cc, Baseline::default()),
                Subject::Identity(_) => Ok(()),
            };
            if let Err(e) = removed {
                warn!("{e}");
            }
        }
        self.written = want;
    }
}

/// The high-risk destinations in `path`: one E.164 country code per line
/// (an optional `+`), `#` comments, blank lines ignored.
pub(super) fn read_high_risk(path: &std::path::Path) -> anyhow::Result<HashSet<u16>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --high-risk-destinations {}", path.display()))?;
    let mut codes = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split('#').next().unwrap_or("").trim();
        if code.is_empty() {
            continue;
        }
        let cc: u16 =
            code.trim_start_matches('+').parse().ok().filter(|cc| (1..1000).contains(cc)).with_context(
                || format!("{}:{}: {code:?} is not an E.164 country code", path.display(), n + 1),
            )?;
        codes.insert(cc);
    }
    Ok(codes)
}
