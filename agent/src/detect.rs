//! Detection over several timescales, of calls rather than packets, per
//! source, per identity and per destination country, with normal levels
//! that cannot be ramped, new-destination and new-prefix rules.
//!
//! The kernel counts each international call attempt once (its copies and
//! authentication retry are recognised by Call-ID) and reports it on its
//! call event ring; it reports the short scale of sources and countries by
//! itself, at once, over tumbling windows, against the thresholds this
//! module learns ([`Detector::kernel_thresholds`]). Everything is judged
//! here too, as each call event arrives (no scans of kernel maps), so a
//! burst split across the kernel's window boundary is still seen:
//!
//! - **scales**: every source, identity and country is counted over a
//!   short, a medium and a long window (e.g. 1 min, 1 h, 24 h), each with
//!   its own ceiling and its own learned level. The count judged is a
//!   sliding estimate (the previous window weighted by how much of it is
//!   still within one window length, plus the current one), so a burst
//!   split across a window boundary is not halved.
//! - **levels that cannot be ramped**: a level learns only from completed
//!   windows at most `learn_below` x the threshold in force, in which the
//!   key was not restricted; it moves by at most `max_rise` per long
//!   window (up or down, so a holiday lull does not collapse it either); it
//!   is trusted only after `min_history` of history and `min_windows`
//!   windows; and a learned threshold never exceeds `learned_max` x the
//!   ceiling unless an operator set that key's threshold
//!   ([`Detector::set_override`]).
//! - **new destination**: a line (source or identity) with a mature
//!   history that calls a country it has not called within
//!   `new_destination.history` is judged, for that country and for one
//!   long window, at its ceilings divided by `divisor` (and by
//!   `high_risk_divisor` too for a listed high-risk country).
//! - **new prefix**: an identity with a mature history that authenticates
//!   from a prefix (/24, /48) outside it and then places `calls`
//!   international calls from there within `horizon` is reported at that
//!   address. The evidence is *strong* (the address as a whole may be
//!   restricted) when no other identity is known at that prefix: no
//!   customer of the carrier is known to share it.
//! - **identity sums**: calls of one identity are summed over all its
//!   addresses, so one credential from many addresses is judged as one.
//!
//! Pure: no I/O, time is passed in (wall-clock ms, since histories outlive
//! boots); the daemon persists [`Detector::export`] and restores it with
//! [`Detector::import`].

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;

/// Short, medium, long.
pub const SCALES: usize = 3;
/// The names of the scales, as flags, metrics and the audit trail use them.
pub const SCALE_NAMES: [&str; SCALES] = ["short", "medium", "long"];

/// Who a count is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Source(IpAddr),
    /// An identity tag.
    Identity(u64),
    /// An E.164 country code.
    Country(u16),
}

impl Subject {
    pub const fn scope(self) -> &'static str {
        match self {
            Subject::Source(_) => "source",
            Subject::Identity(_) => "identity",
            Subject::Country(_) => "country",
        }
    }
}

/// How levels are learned (see the module documentation).
#[derive(Clone, Debug)]
pub struct Learning {
    /// A trusted level's threshold is `ratio` x the level (never below the
    /// ceiling).
    pub ratio: f64,
    /// EWMA weight of the newest window.
    pub weight: f64,
    /// Only windows at most this fraction of the threshold in force teach.
    pub learn_below: f64,
    /// Most a level may rise (or fall) per long window, as a factor.
    pub max_rise: f64,
    pub min_history: Duration,
    pub min_windows: u32,
    /// A learned threshold is at most this many times the ceiling.
    pub learned_max: f64,
}

#[derive(Clone, Debug)]
pub struct NewDestination {
    /// A country not called within this is new for a line.
    pub history: Duration,
    /// Ceilings are divided by this for a new destination (0: rule off).
    pub divisor: u32,
    pub high_risk: HashSet<u16>,
    /// And further by this for a high-risk one.
    pub high_risk_divisor: u32,
}

#[derive(Clone, Debug)]
pub struct NewPrefix {
    pub v4_len: u8,
    pub v6_len: u8,
    pub horizon: Duration,
    /// International calls from the new prefix that report it (0: off).
    pub calls: u32,
}

#[derive(Clone, Debug)]
pub struct DetectConfig {
    pub windows: [Duration; SCALES],
    /// Ceilings per scale (0: the scale is off for that scope).
    pub source: [u32; SCALES],
    pub identity: [u32; SCALES],
    pub country: [u32; SCALES],
    /// Distinct sources (at least) a country surge needs.
    pub country_min_sources: u32,
    pub learning: Learning,
    pub new_destination: NewDestination,
    pub new_prefix: NewPrefix,
    /// Most subjects, lines, destinations and identities kept at once:
    /// beyond it the least recently seen are forgotten, so a flood of forged
    /// sources or identities cannot exhaust the agent's memory.
    pub max_subjects: usize,
}

impl DetectConfig {
    fn ceilings(&self, s: Subject) -> &[u32; SCALES] {
        match s {
            Subject::Source(_) => &self.source,
            Subject::Identity(_) => &self.identity,
            Subject::Country(_) => &self.country,
        }
    }

    fn ms(&self, scale: usize) -> i64 {
        ms(self.windows[scale]).max(1)
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Which rule a report comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A source's, identity's or country's calls over a threshold.
    Surge,
    /// A line's calls to a country new to it over the lowered threshold.
    NewDestination,
    /// An identity's calls from a prefix new to it.
    NewPrefix,
}

/// Something over a threshold: what the policy engine decides on.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub rule: Rule,
    pub subject: Subject,
    /// Where the calls came from (the source of the call that crossed).
    pub addr: IpAddr,
    pub scale: usize,
    pub window: Duration,
    pub count: u32,
    pub threshold: u32,
    /// The learned level the threshold was made from, if it was.
    pub level: Option<f64>,
    /// The destination (new-destination) or the country of the crossing call.
    pub cc: u16,
    pub high_risk: bool,
    /// Distinct addresses (identities) or sources (countries) in the window.
    pub spread: Option<u32>,
    /// (new-prefix) The prefix, and whether no other identity is known there.
    pub prefix: Option<IpNet>,
    pub strong: bool,
    /// (clustering) The part of `count` other nodes counted, and how many
    /// nodes: the sum was judged.
    pub elsewhere: Option<(u32, u32)>,
}

/// What the other nodes of a cluster count of one subject, and whether
/// this node is the one to judge the sum, per scale
/// ([`crate::cluster::counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Elsewhere {
    /// Their counts, summed.
    pub others: [u32; SCALES],
    /// Their distinct sources (countries), summed: a source calling through
    /// two nodes counts twice.
    pub sources: [u32; SCALES],
    /// How many other nodes count it.
    pub nodes: [u32; SCALES],
    /// Their trusted learned levels (thousandths), summed: the cluster's
    /// normal is the sum of its nodes'.
    pub level_milli: [u64; SCALES],
    /// This node decides on the sum.
    pub lead: [bool; SCALES],
}

/// One subject's count on one node, per scale, as a cluster shares it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Count {
    /// The sliding estimate of its calls.
    pub n: [u32; SCALES],
    /// Distinct sources, at least (countries).
    #[serde(default)]
    pub sources: [u32; SCALES],
    /// The trusted learned level (thousandths; 0: none).
    #[serde(default)]
    pub level_milli: [u64; SCALES],
}

/// What a node of a cluster publishes of its counts
/// ([`Detector::to_share`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    pub countries: Vec<(u16, Count)>,
    pub sources: Vec<(IpAddr, Count)>,
}

/// A learned level of one subject on one scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    pub level: f64,
    pub windows: u32,
    /// When its history began.
    pub first_ms: i64,
}

/// One subject's counts on one scale.
#[derive(Clone, Debug, Default)]
struct Window {
    started: bool,
    /// A whole window has passed (`prev` is one).
    rolled: bool,
    start_ms: i64,
    cur: u32,
    prev: u32,
    /// Reported in this window already.
    reported: bool,
    /// Distinct spread (addresses or source buckets) in the window.
    spread: HashSet<u64>,
}

impl Window {
    /// Rolls to the window holding `now`; returns the completed windows'
    /// counts (at most `cap`, the rest being empty ones).
    fn roll(&mut self, now: i64, len: i64, cap: usize) -> Vec<u32> {
        let mut done = Vec::new();
        if !self.started {
            (self.started, self.start_ms) = (true, now);
            return done;
        }
        while now - self.start_ms >= len && done.len() < cap {
            self.rolled = true;
            done.push(self.cur);
            self.prev = self.cur;
            self.cur = 0;
            self.reported = false;
            self.spread.clear();
            self.start_ms += len;
        }
        if now - self.start_ms >= len {
            // Long idle: nothing to remember of it.
            self.prev = 0;
            self.start_ms = now - (now - self.start_ms) % len;
        }
        done
    }

    /// The sliding estimate at `now` of a window not rolled to it (no
    /// learning happens here): as [`Self::estimate`] after a roll.
    fn peek(&self, now: i64, len: i64) -> u32 {
        if !self.started {
            return 0;
        }
        match now - self.start_ms {
            d if d < len => self.estimate(now, len),
            d if d < 2 * len => {
                let into = (d - len) as f64 / len as f64;
                (f64::from(self.cur) * (1.0 - into)).floor() as u32
            }
            _ => 0,
        }
    }

    /// The distinct spread of the window holding `now` (0 if not rolled to).
    fn spread_at(&self, now: i64, len: i64) -> u32 {
        if self.started && now - self.start_ms < len { self.spread.len() as u32 } else { 0 }
    }

    /// The sliding estimate of the last window length's count.
    fn estimate(&self, now: i64, len: i64) -> u32 {
        let into = (now - self.start_ms).clamp(0, len) as f64 / len as f64;
        (self.prev as f64 * (1.0 - into)).floor() as u32 + self.cur
    }
}

#[derive(Clone, Debug, Default)]
struct Counts {
    scales: [Window; SCALES],
    levels: [Option<Level>; SCALES],
    last_ms: i64,
}

/// A line's history of one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub first_call_ms: i64,
    pub last_call_ms: i64,
}

/// A line's (source's or identity's) history. Lines are never pruned (a
/// forgotten line would look new, and a line's last international call is
/// what counter-measure 3's dormant report asks for), only capped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    /// Its history begins here.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Its last international call attempt (None: none seen).
    pub last_intl_ms: Option<i64>,
    /// It looks like a customer's line, not a scanner's: an identity that
    /// authenticated successfully; a source where one did, or that sent
    /// INVITEs (of any class).
    pub customer: bool,
}

impl Line {
    /// A line seen at `at_ms` and nothing more known of it.
    pub const fn seen(at_ms: i64) -> Self {
        Self { first_seen_ms: at_ms, last_seen_ms: at_ms, last_intl_ms: None, customer: false }
    }

    /// What both records say: the earliest first, the latest last sighting
    /// and international call; a customer's if either says so.
    pub fn merge(&mut self, other: Line) {
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        // None (never) orders before any time.
        self.last_intl_ms = self.last_intl_ms.max(other.last_intl_ms);
        self.customer |= other.customer;
    }
}

/// What the detector keeps across restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exported {
    pub levels: Vec<(Subject, usize, Level)>,
    /// Lines (sources, identities) and their histories.
    pub lines: Vec<(Subject, Line)>,
    pub destinations: Vec<(Subject, u16, Destination)>,
    /// Identity, prefix, first and last seen.
    pub prefixes: Vec<(u64, IpNet, i64, i64)>,
}

pub struct Detector {
    cfg: DetectConfig,
    counts: HashMap<Subject, Counts>,
    overrides: HashMap<(Subject, usize), u32>,
    lines: HashMap<Subject, Line>,
    destinations: HashMap<(Subject, u16), Destination>,
    /// Counts of calls to new destinations, per line and country.
    new_dest: HashMap<(Subject, u16), Counts>,
    /// identity -> prefix -> (first, last seen).
    prefixes: HashMap<u64, HashMap<IpNet, (i64, i64)>>,
    /// (identity, address) -> (since, calls): a new prefix being watched.
    watch: HashMap<(u64, IpAddr), (i64, u32)>,
    /// Dirty since the last export: persisted in batches.
    dirty: bool,
    /// Entries forgotten at capacity.
    forgotten: u64,
    /// (clustering) What the other nodes count.
    elsewhere: HashMap<Subject, Elsewhere>,
    /// (clustering) Until when a sum judged of a subject on a scale was
    /// reported (once per window).
    summed_reported: HashMap<(Subject, usize), i64>,
    /// (clustering) The fraction of a source's threshold from which its
    /// counts are shared; None: not in a cluster.
    share: Option<f64>,
    /// (clustering) The subjects whose counts may be shared: every country
    /// counted, the sources that reached the fraction.
    shareable: HashSet<Subject>,
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Self {
        Self {
            cfg,
            counts: HashMap::new(),
            overrides: HashMap::new(),
            lines: HashMap::new(),
            destinations: HashMap::new(),
            new_dest: HashMap::new(),
            prefixes: HashMap::new(),
            watch: HashMap::new(),
            dirty: false,
            forgotten: 0,
            elsewhere: HashMap::new(),
            summed_reported: HashMap::new(),
            share: None,
            shareable: HashSet::new(),
        }
    }

    /// A reload: windows, ceilings and learning rules from now on (counts
    /// and learned levels are kept).
    pub fn set_config(&mut self, cfg: DetectConfig) {
        self.cfg = cfg;
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    fn prefix_of(&self, addr: IpAddr) -> IpNet {
        let len = if addr.is_ipv4() { self.cfg.new_prefix.v4_len } else { self.cfg.new_prefix.v6_len };
        IpNet::new(addr, len).map(|n| n.trunc()).unwrap_or_else(|_| IpNet::from(addr))
    }

    /// An operator's threshold for `subject` on `scale` (None clears it).
    pub fn set_override(&mut self, subject: Subject, scale: usize, threshold: Option<u32>) {
        match threshold {
            Some(t) => self.overrides.insert((subject, scale), t),
            None => self.overrides.remove(&(subject, scale)),
        };
    }

    pub fn overrides(&self) -> impl Iterator<Item = (Subject, usize, u32)> + '_ {
        self.overrides.iter().map(|((s, k), t)| (*s, *k, *t))
    }

    /// The trusted learned level of `subject` on `scale`, if any.
    pub fn level(&self, subject: Subject, scale: usize, now: i64) -> Option<f64> {
        let l = self.counts.get(&subject)?.levels[scale]?;
        self.trusted(&l, now).then_some(l.level)
    }

    fn trusted(&self, l: &Level, now: i64) -> bool {
        l.windows >= self.cfg.learning.min_windows && now - l.first_ms >= ms(self.cfg.learning.min_history)
    }

    /// The threshold in force for `subject` on `scale` (0: not judged).
    pub fn threshold(&self, subject: Subject, scale: usize, now: i64) -> u32 {
        if let Some(t) = self.overrides.get(&(subject, scale)) {
            return *t;
        }
        let ceiling = self.cfg.ceilings(subject)[scale];
        if ceiling == 0 {
            return 0;
        }
        let Some(level) = self.level(subject, scale, now) else { return ceiling };
        let l = &self.cfg.learning;
        let learned = (l.ratio * level).ceil().min(f64::from(ceiling) * l.learned_max);
        (learned.min(f64::from(u32::MAX)) as u32).max(ceiling)
    }

    /// The short-scale thresholds above the ceiling, for the kernel (which
    /// judges the short scale of sources and countries itself).
    pub fn kernel_thresholds(&self, now: i64) -> Vec<(Subject, u32)> {
        self.counts
            .keys()
            .chain(self.overrides.keys().filter(|(_, k)| *k == 0).map(|(s, _)| s))
            .filter(|s| !matches!(s, Subject::Identity(_)))
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|s| (*s, self.threshold(*s, 0, now)))
            .filter(|(s, t)| *t > self.cfg.ceilings(*s)[0] || self.overrides.contains_key(&(*s, 0)))
            .collect()
    }

    /// A line seen at `at_ms`: its history begins (if it had not).
    pub fn line_seen(&mut self, line: Subject, at_ms: i64) {
        self.note_line(line, Line::seen(at_ms));
    }

    /// A source the kernel tracks, first and last seen there, and whether
    /// it sent INVITEs or an identity authenticated there.
    pub fn source_seen(&mut self, addr: IpAddr, first_ms: i64, last_ms: i64, customer: bool) {
        let line = Line {
            first_seen_ms: first_ms,
            last_seen_ms: last_ms.max(first_ms),
            last_intl_ms: None,
            customer,
        };
        self.note_line(Subject::Source(addr), line);
    }

    fn note_line(&mut self, subject: Subject, line: Line) {
        self.lines.entry(subject).and_modify(|l| l.merge(line)).or_insert(line);
        self.dirty = true;
    }

    /// Every line and its history, in no set order.
    pub fn lines(&self) -> impl Iterator<Item = (Subject, Line)> + '_ {
        self.lines.iter().map(|(s, l)| (*s, *l))
    }

    fn mature(&self, line: Subject, now: i64) -> bool {
        self.lines.get(&line).is_some_and(|l| now - l.first_seen_ms >= ms(self.cfg.learning.min_history))
    }

    /// An identity authenticated successfully at `addr`: both are a
    /// customer's lines.
    pub fn auth_ok(&mut self, tag: u64, addr: IpAddr, now: i64) {
        self.seen_at(tag, addr, now);
        let customer = Line { customer: true, ..Line::seen(now) };
        self.note_line(Subject::Identity(tag), customer);
        self.note_line(Subject::Source(addr), customer);
    }

    /// Notes `tag` at `addr`; a prefix new to a mature identity is watched.
    fn seen_at(&mut self, tag: u64, addr: IpAddr, now: i64) {
        let prefix = self.prefix_of(addr);
        let mature = self.mature(Subject::Identity(tag), now);
        self.line_seen(Subject::Identity(tag), now);
        let known = self.prefixes.entry(tag).or_default();
        match known.get_mut(&prefix) {
            Some((_, last)) => *last = (*last).max(now),
            None => {
                known.insert(prefix, (now, now));
                if mature && self.cfg.new_prefix.calls > 0 {
                    self.watch.insert((tag, addr), (now, 0));
                }
            }
        }
    }

    /// Whether another identity than `tag` is known at `prefix`.
    fn shared(&self, tag: u64, prefix: IpNet) -> bool {
        self.prefixes.iter().any(|(t, p)| *t != tag && p.contains_key(&prefix))
    }

    /// A new international call attempt from `addr` to `cc`, of identity
    /// `tag` (0: not known yet). `restricted` says whether a subject is
    /// under a restriction now (its windows do not teach).
    pub fn call(&mut self, addr: IpAddr, tag: u64, cc: u16, now: i64) -> Vec<Report> {
        let mut out = Vec::new();
        let source = Subject::Source(addr);
        // An international INVITE is an INVITE: a customer's line.
        self.note_line(source, Line { last_intl_ms: Some(now), customer: true, ..Line::seen(now) });
        // The kernel judges the short scale of sources and countries at
        // once, over tumbling windows; judged here too, over the sliding
        // estimate, so a burst split across the kernel's window boundary
        // is still seen (a millisecond later).
        self.count(source, addr, cc, addr_bucket(addr), now, &mut out);
        self.count(Subject::Country(cc), addr, cc, addr_bucket(addr), now, &mut out);
        self.new_destination(source, addr, cc, now, &mut out);
        if tag != 0 {
            self.identified(addr, tag, cc, now, &mut out);
        }
        out
    }

    /// The identity of a call counted before became known (its retry).
    pub fn call_identified(&mut self, addr: IpAddr, tag: u64, cc: u16, now: i64) -> Vec<Report> {
        let mut out = Vec::new();
        self.identified(addr, tag, cc, now, &mut out);
        out
    }

    fn identified(&mut self, addr: IpAddr, tag: u64, cc: u16, now: i64, out: &mut Vec<Report>) {
        let id = Subject::Identity(tag);
        self.seen_at(tag, addr, now);
        self.note_line(id, Line { last_intl_ms: Some(now), ..Line::seen(now) });
        self.count(id, addr, cc, addr_key(addr), now, out);
        self.new_destination(id, addr, cc, now, out);
        let np = self.cfg.new_prefix.clone();
        if np.calls == 0 {
            return;
        }
        let Some((since, calls)) = self.watch.get_mut(&(tag, addr)) else { return };
        if now - *since > ms(np.horizon) {
            self.watch.remove(&(tag, addr));
            return;
        }
        *calls += 1;
        let count = *calls;
        if count == np.calls {
            let prefix = self.prefix_of(addr);
            out.push(Report {
                rule: Rule::NewPrefix,
                subject: id,
                addr,
                scale: 0,
                window: np.horizon,
                count,
                threshold: np.calls,
                level: None,
                cc,
                high_risk: self.cfg.new_destination.high_risk.contains(&cc),
                spread: None,
                prefix: Some(prefix),
                strong: !self.shared(tag, prefix),
                elsewhere: None,
            });
        }
    }

    /// Counts one call of `subject` and judges it on every scale.
    fn count(
        &mut self,
        subject: Subject,
        addr: IpAddr,
        cc: u16,
        spread: u64,
        now: i64,
        out: &mut Vec<Report>,
    ) {
        self.roll(subject, now);
        let c = self.counts.get_mut(&subject).expect("rolled in");
        c.last_ms = now;
        for w in &mut c.scales {
            w.cur = w.cur.saturating_add(1);
            w.spread.insert(spread);
        }
        self.judge(subject, addr, cc, now, out);
    }

    /// Judges `subject`'s count on every scale (with what other nodes count
    /// of it, where this node is the one to judge the sum). Its windows are
    /// not rolled here: a subject other nodes report is judged without
    /// learning from windows of its own.
    fn judge(&mut self, subject: Subject, addr: IpAddr, cc: u16, now: i64, out: &mut Vec<Report>) {
        let thresholds: [u32; SCALES] = std::array::from_fn(|k| self.threshold(subject, k, now));
        let levels: [Option<f64>; SCALES] = std::array::from_fn(|k| self.level(subject, k, now));
        let lens: [i64; SCALES] = std::array::from_fn(|k| self.cfg.ms(k));
        let min_sources = self.cfg.country_min_sources;
        let ceilings = *self.cfg.ceilings(subject);
        let e = self.elsewhere.get(&subject).copied().unwrap_or_default();
        // Only where this node judges the sum (most calls: nowhere).
        let summed_t: [u32; SCALES] = std::array::from_fn(|k| {
            if e.lead[k] {
                self.summed_threshold(subject, k, thresholds[k], levels[k], &e)
            } else {
                thresholds[k]
            }
        });
        let mut c = self.counts.get_mut(&subject);
        for k in 0..SCALES {
            let t = thresholds[k];
            let w = c.as_deref_mut().map(|c| &mut c.scales[k]);
            let (local, local_spread) =
                w.as_ref().map_or((0, 0), |w| (w.peek(now, lens[k]), w.spread_at(now, lens[k])));
            if let Some(f) = self.share
                && local > 0
                && (matches!(subject, Subject::Country(_))
                    || (matches!(subject, Subject::Source(_))
                        && t > 0
                        && f64::from(local) >= f * f64::from(t)))
            {
                self.shareable.insert(subject);
            }
            let summed = e.lead[k] && e.others[k] > 0;
            let reported = w.as_ref().is_some_and(|w| w.reported && now - w.start_ms < lens[k])
                || self.summed_reported.get(&(subject, k)).is_some_and(|until| *until > now);
            if t == 0 || reported {
                continue;
            }
            let (count, spread, t) = if summed {
                (local.saturating_add(e.others[k]), local_spread.saturating_add(e.sources[k]), summed_t[k])
            } else {
                (local, local_spread, t)
            };
            if count < t || (matches!(subject, Subject::Country(_)) && spread < min_sources) {
                continue;
            }
            if let Some(w) = w {
                w.reported = true;
            }
            if summed {
                self.summed_reported.insert((subject, k), now + lens[k]);
            }
            out.push(Report {
                rule: Rule::Surge,
                subject,
                addr,
                scale: k,
                window: self.cfg.windows[k],
                count,
                threshold: t,
                level: levels[k].filter(|_| t > ceilings[k]),
                cc,
                high_risk: false,
                spread: (!matches!(subject, Subject::Source(_))).then_some(spread),
                prefix: None,
                strong: false,
                elsewhere: summed.then_some((e.others[k], e.nodes[k])),
            });
        }
    }

    /// (clustering) The threshold a cluster's sum is judged at: the one in
    /// force here (`t`), or the cluster's normal (the nodes' trusted
    /// levels summed) times the ratio if higher, at most `learned_max` x
    /// the ceiling per node counting; an operator's threshold as set.
    fn summed_threshold(&self, subject: Subject, k: usize, t: u32, own: Option<f64>, e: &Elsewhere) -> u32 {
        if self.overrides.contains_key(&(subject, k)) {
            return t;
        }
        let l = &self.cfg.learning;
        let normal = own.unwrap_or(0.0) + e.level_milli[k] as f64 / 1000.0;
        let nodes = f64::from(e.nodes[k].saturating_add(1));
        let cap = f64::from(self.cfg.ceilings(subject)[k]) * l.learned_max * nodes;
        let learned = (l.ratio * normal).ceil().min(cap).min(f64::from(u32::MAX)) as u32;
        t.max(learned)
    }

    /// (clustering) Shares counts from now on: every country's, and those
    /// of the sources at or above `fraction` of a threshold.
    pub fn share_counts(&mut self, fraction: f64) {
        self.share = Some(fraction);
    }

    /// (clustering) What the other nodes count now.
    pub fn set_elsewhere(&mut self, elsewhere: HashMap<Subject, Elsewhere>) {
        self.elsewhere = elsewhere;
        let now_keys: HashSet<Subject> = self.elsewhere.keys().copied().collect();
        self.summed_reported.retain(|(s, _), _| now_keys.contains(s));
    }

    /// (clustering) What other nodes count of `subject`.
    pub fn elsewhere(&self, subject: Subject) -> Option<Elsewhere> {
        self.elsewhere.get(&subject).copied()
    }

    /// (clustering) Judges the sums this node is the one to judge (after
    /// the other nodes' counts changed).
    pub fn judge_elsewhere(&mut self, now: i64) -> Vec<Report> {
        let mut subjects: Vec<Subject> = self
            .elsewhere
            .iter()
            .filter(|(_, e)| e.lead.iter().zip(e.others).any(|(l, n)| *l && n > 0))
            .map(|(s, _)| *s)
            .collect();
        subjects.sort();
        let mut out = Vec::new();
        for s in subjects {
            let (addr, cc) = match s {
                Subject::Source(a) => (a, 0),
                Subject::Country(cc) => (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), cc),
                Subject::Identity(_) => continue,
            };
            self.judge(s, addr, cc, now, &mut out);
        }
        out
    }

    /// (clustering) The counts to publish: every country counted, and the
    /// sources at or above the fraction of a threshold, at most
    /// `max_sources` of them (the nearest their thresholds first).
    pub fn to_share(&mut self, now: i64, max_sources: usize) -> Shared {
        let Some(fraction) = self.share else { return Shared::default() };
        let lens: [i64; SCALES] = std::array::from_fn(|k| self.cfg.ms(k));
        let mut out = Shared::default();
        let mut sources: Vec<(f64, IpAddr, Count)> = Vec::new();
        let subjects: Vec<Subject> = self.shareable.iter().copied().collect();
        for s in subjects {
            let Some(c) = self.counts.get(&s) else {
                self.shareable.remove(&s);
                continue;
            };
            let n: [u32; SCALES] = std::array::from_fn(|k| c.scales[k].peek(now, lens[k]));
            let level_milli =
                std::array::from_fn(|k| self.level(s, k, now).map_or(0, |l| (l * 1000.0).round() as u64));
            match s {
                Subject::Country(cc) if n.iter().any(|n| *n > 0) => {
                    let sources = std::array::from_fn(|k| c.scales[k].spread_at(now, lens[k]));
                    out.countries.push((cc, Count { n, sources, level_milli }));
                }
                Subject::Source(addr) => {
                    let ratio = (0..SCALES)
                        .map(|k| (n[k], self.threshold(s, k, now)))
                        .filter(|(_, t)| *t > 0)
                        .map(|(n, t)| f64::from(n) / f64::from(t))
                        .fold(0.0, f64::max);
                    if ratio >= fraction && ratio > 0.0 {
                        sources.push((ratio, addr, Count { n, sources: [0; SCALES], level_milli }));
                    } else {
                        self.shareable.remove(&s);
                    }
                }
                _ => {
                    self.shareable.remove(&s);
                }
            }
        }
        sources.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        out.sources = sources.into_iter().take(max_sources).map(|(_, a, n)| (a, n)).collect();
        out.countries.sort_by_key(|(cc, _)| *cc);
        out.sources.sort_by_key(|(a, _)| *a);
        out
    }

    /// Judges a call of `line` to `cc` by the new-destination rule.
    fn new_destination(&mut self, line: Subject, addr: IpAddr, cc: u16, now: i64, out: &mut Vec<Report>) {
        let nd = &self.cfg.new_destination;
        let mature = self.mature(line, now);
        // A destination first called before the line's history counted (it
        // was new itself) is part of that history, not new to it.
        let matured_at = self
            .lines
            .get(&line)
            .map_or(i64::MAX, |l| l.first_seen_ms.saturating_add(ms(self.cfg.learning.min_history)));
        let history = ms(nd.history);
        let d = self
            .destinations
            .entry((line, cc))
            .or_insert(Destination { first_call_ms: now, last_call_ms: now });
        if now - d.last_call_ms > history {
            // Not called within the history: new again.
            d.first_call_ms = now;
        }
        d.last_call_ms = now;
        let is_new = d.first_call_ms >= matured_at && now - d.first_call_ms < self.cfg.ms(SCALES - 1);
        self.dirty = true;
        if nd.divisor == 0 || !mature || !is_new {
            return;
        }
        let high_risk = nd.high_risk.contains(&cc);
        let divisor = nd.divisor.saturating_mul(if high_risk { nd.high_risk_divisor.max(1) } else { 1 });
        let ceilings = *self.cfg.ceilings(if matches!(line, Subject::Identity(_)) {
            Subject::Identity(0)
        } else {
            Subject::Source(addr)
        });
        let lens: [i64; SCALES] = std::array::from_fn(|k| self.cfg.ms(k));
        let c = self.new_dest.entry((line, cc)).or_default();
        c.last_ms = now;
        for k in 0..SCALES {
            let w = &mut c.scales[k];
            w.roll(now, lens[k], 1);
            w.cur = w.cur.saturating_add(1);
            if ceilings[k] == 0 || w.reported {
                continue;
            }
            let t = ceilings[k].div_ceil(divisor).max(1);
            let count = w.estimate(now, lens[k]);
            if count >= t {
                w.reported = true;
                out.push(Report {
                    rule: Rule::NewDestination,
                    subject: line,
                    addr,
                    scale: k,
                    window: self.cfg.windows[k],
                    count,
                    threshold: t,
                    level: None,
                    cc,
                    high_risk,
                    spread: None,
                    prefix: None,
                    strong: false,
                    elsewhere: None,
                });
            }
        }
    }

    /// Rolls `subject`'s windows to `now`, learning from those completed
    /// (`restricted` windows excepted).
    fn roll(&mut self, subject: Subject, now: i64) {
        self.roll_with(subject, now, false);
    }

    fn roll_with(&mut self, subject: Subject, now: i64, restricted: bool) {
        let cap = 64;
        let thresholds: [u32; SCALES] = std::array::from_fn(|k| self.threshold(subject, k, now));
        let ceilings = *self.cfg.ceilings(subject);
        let lens: [i64; SCALES] = std::array::from_fn(|k| self.cfg.ms(k));
        let long = self.cfg.ms(SCALES - 1);
        let l = self.cfg.learning.clone();
        let c = self.counts.entry(subject).or_default();
        for k in 0..SCALES {
            let done = c.scales[k].roll(now, lens[k], cap);
            if done.is_empty() || ceilings[k] == 0 {
                continue;
            }
            let start = now - lens[k] * done.len() as i64;
            let level = c.levels[k].get_or_insert(Level { level: 0.0, windows: 0, first_ms: start });
            // The most a level moves per window: max_rise per long window.
            let step = l.max_rise.max(1.0).powf(lens[k] as f64 / long as f64);
            let floor = f64::from(ceilings[k]) / l.ratio.max(f64::MIN_POSITIVE);
            for n in done {
                if restricted || f64::from(n) > l.learn_below * f64::from(thresholds[k]) {
                    continue;
                }
                let target = if level.windows == 0 {
                    f64::from(n)
                } else {
                    l.weight * f64::from(n) + (1.0 - l.weight) * level.level
                };
                let upper = level.level.max(floor) * step;
                let lower = level.level / step;
                level.level = target.clamp(lower.min(upper), upper);
                level.windows = level.windows.saturating_add(1);
            }
        }
    }

    /// Once per short window: every subject's windows roll to `now` and
    /// learn; `restricted` says which subjects were restricted (they do not
    /// teach). Subjects idle for over a long window with nothing learned
    /// are forgotten.
    pub fn tick(&mut self, now: i64, restricted: impl Fn(Subject) -> bool) {
        let subjects: Vec<Subject> = self.counts.keys().copied().collect();
        for s in subjects {
            self.roll_with(s, now, restricted(s));
        }
        let long = self.cfg.ms(SCALES - 1);
        self.counts.retain(|_, c| {
            now - c.last_ms <= long || c.levels.iter().any(|l| l.is_some_and(|l| l.windows > 0))
        });
        self.new_dest.retain(|_, c| now - c.scales[SCALES - 1].start_ms <= 2 * long);
        let horizon = ms(self.cfg.new_prefix.horizon);
        self.watch.retain(|_, (since, _)| now - *since <= horizon);
        let max = self.cfg.max_subjects.max(16);
        let forgotten = cap(&mut self.counts, max, |c| c.last_ms)
            + cap(&mut self.new_dest, max, |c| c.last_ms)
            + cap(&mut self.destinations, max, |d| d.last_call_ms)
            + cap(&mut self.watch, max, |(since, _)| *since)
            // The newest lines have the least history to lose.
            + cap(&mut self.lines, max, |l| -l.first_seen_ms)
            + cap(&mut self.prefixes, max, |p| p.values().map(|(_, last)| *last).max().unwrap_or(0));
        for p in self.prefixes.values_mut() {
            cap(p, MAX_PREFIXES, |(_, last)| *last);
        }
        self.forgotten += forgotten as u64;
        self.dirty = true;
    }

    /// How many subjects, lines, destinations and identities were
    /// forgotten at capacity.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Forgets history older than `before` (destinations, prefixes).
    pub fn prune(&mut self, before: i64) {
        self.destinations.retain(|_, d| d.last_call_ms >= before);
        for p in self.prefixes.values_mut() {
            p.retain(|_, (_, last)| *last >= before);
        }
        self.prefixes.retain(|_, p| !p.is_empty());
    }

    /// Whether something changed since the last [`Self::export`].
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// What must survive a restart.
    pub fn export(&mut self) -> Exported {
        self.dirty = false;
        let mut e = Exported::default();
        for (s, c) in &self.counts {
            for (k, l) in c.levels.iter().enumerate() {
                if let Some(l) = l.filter(|l| l.windows > 0) {
                    e.levels.push((*s, k, l));
                }
            }
        }
        e.lines = self.lines().collect();
        e.destinations = self.destinations.iter().map(|((s, cc), d)| (*s, *cc, *d)).collect();
        for (tag, p) in &self.prefixes {
            e.prefixes.extend(p.iter().map(|(net, (f, l))| (*tag, *net, *f, *l)));
        }
        e.levels.sort_by_key(|a| (a.0, a.1));
        e.lines.sort_by_key(|(s, _)| *s);
        e.destinations.sort_by_key(|(s, cc, _)| (*s, *cc));
        e.prefixes.sort();
        e
    }

    /// Takes over what an earlier agent kept.
    pub fn import(&mut self, e: Exported) {
        for (s, k, l) in e.levels {
            if k < SCALES {
                self.counts.entry(s).or_default().levels[k] = Some(l);
            }
        }
        for (s, l) in e.lines {
            self.note_line(s, l);
        }
        for (s, cc, d) in e.destinations {
            self.destinations.insert((s, cc), d);
        }
        for (tag, net, f, l) in e.prefixes {
            self.prefixes.entry(tag).or_default().insert(net, (f, l));
        }
    }

    /// Starts counting `subject` (a country under restriction that no call
    /// reaches still has its windows, and so its calm ones).
    pub fn track(&mut self, subject: Subject, now: i64) {
        self.roll(subject, now);
        if let Some(c) = self.counts.get_mut(&subject) {
            c.last_ms = now;
        }
    }

    /// The learned level of `subject` on `scale`, trusted or not.
    pub fn learned(&self, subject: Subject, scale: usize) -> Option<Level> {
        self.counts.get(&subject)?.levels[scale]
    }

    /// The count of `subject`'s last completed window on `scale`, and when
    /// that window began (as of the last roll).
    pub fn last_window(&self, subject: Subject, scale: usize) -> Option<(u32, i64)> {
        let w = &self.counts.get(&subject)?.scales[scale];
        w.rolled.then(|| (w.prev, w.start_ms - self.cfg.ms(scale)))
    }

    /// How many subjects have a trusted level on some scale.
    pub fn trusted_subjects(&self, now: i64) -> usize {
        self.counts
            .values()
            .filter(|c| c.levels.iter().any(|l| l.is_some_and(|l| self.trusted(&l, now))))
            .count()
    }
}

/// Most prefixes kept per identity (the least recently seen go first).
const MAX_PREFIXES: usize = 64;

/// Forgets the least recently seen entries of `map` (by `seen`) once it
/// holds more than `max`, down to 90% of it; returns how many.
fn cap<K: Eq + Hash, V>(map: &mut HashMap<K, V>, max: usize, seen: impl Fn(&V) -> i64) -> usize {
    if map.len() <= max {
        return 0;
    }
    let excess = map.len() - max * 9 / 10;
    let mut ages: Vec<i64> = map.values().map(&seen).collect();
    let (_, cut, _) = ages.select_nth_unstable(excess - 1);
    let cut = *cut;
    let before = map.len();
    map.retain(|_, v| seen(v) > cut);
    before - map.len()
}

/// A spread key for a country: the source's bucket (as the kernel's).
fn addr_bucket(addr: IpAddr) -> u64 {
    u64::from(tollgate_common::source_bucket(&crate::maps::addr_key(addr)))
}

/// A spread key for an identity: the address itself.
fn addr_key(addr: IpAddr) -> u64 {
    let k = crate::maps::addr_key(addr);
    u64::from_le_bytes(k[8..16].try_into().expect("8 bytes"))
        ^ u64::from_le_bytes(k[..8].try_into().expect("8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;

    fn cfg() -> DetectConfig {
        DetectConfig {
            windows: [Duration::from_secs(60), Duration::from_secs(3600), Duration::from_secs(86_400)],
            source: [30, 60, 300],
            identity: [30, 60, 300],
            country: [100, 1000, 10_000],
            country_min_sources: 5,
            learning: Learning {
                ratio: 4.0,
                weight: 0.2,
                learn_below: 0.5,
                max_rise: 1.5,
                min_history: Duration::from_secs(7 * 86_400),
                min_windows: 3,
                learned_max: 8.0,
            },
            new_destination: NewDestination {
                history: Duration::from_secs(30 * 86_400),
                divisor: 4,
                high_risk: [232].into_iter().collect(),
                high_risk_divisor: 2,
            },
            new_prefix: NewPrefix { v4_len: 24, v6_len: 48, horizon: Duration::from_secs(3600), calls: 3 },
            max_subjects: 100_000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Places `per_hour` calls an hour from `addr`, evenly, cycling over
    /// `ccs`, from `from` for `hours`; a tick each minute. Returns the
    /// reports and the calls placed before the first.
    fn place(
        d: &mut Detector,
        addr: IpAddr,
        ccs: &[u16],
        per_hour: u32,
        from: i64,
        hours: i64,
    ) -> (Vec<Report>, u32) {
        let (mut reports, mut before) = (Vec::new(), 0);
        let step = HOUR / i64::from(per_hour.max(1));
        let mut next_tick = (from / MIN + 1) * MIN;
        let (mut t, mut n) = (from, 0usize);
        while t < from + hours * HOUR {
            while next_tick <= t {
                d.tick(next_tick, |_| false);
                next_tick += MIN;
            }
            if per_hour > 0 {
                let r = d.call(addr, 0, ccs[n % ccs.len()], t);
                n += 1;
                if reports.is_empty() && r.is_empty() {
                    before += 1;
                }
                reports.extend(r);
            }
            t += step;
        }
        (reports, before)
    }

    /// `n` calls to `cc`, each from its own source of 198.51.100.0/24
    /// (none over its own threshold), at `at`.
    fn spread_calls(d: &mut Detector, cc: u16, n: u8, at: i64) -> Vec<Report> {
        (0..n).flat_map(|i| d.call(ip(&format!("198.51.100.{}", 100 + i)), 0, cc, at)).collect()
    }

    fn elsewhere(others: u32, sources: u32, nodes: u32, lead: bool) -> Elsewhere {
        Elsewhere {
            others: [others; SCALES],
            sources: [sources; SCALES],
            nodes: [nodes; SCALES],
            level_milli: [0; SCALES],
            lead: [lead; SCALES],
        }
    }

    #[test]
    fn a_country_surge_split_over_nodes_is_judged_by_the_one_that_leads() {
        let mut d = Detector::new(no_history_rule());
        d.share_counts(0.1);
        // 40 calls to +232 here: under the country's threshold (100).
        assert!(spread_calls(&mut d, 232, 40, HOUR).is_empty());
        let shared = d.to_share(HOUR, 10);
        let local_sources = shared.countries[0].1.sources[0];
        assert!(local_sources > 20, "distinct sources (buckets) at least: {local_sources}");
        let want = Count { n: [40; SCALES], sources: [local_sources; SCALES], level_milli: [0; SCALES] };
        assert_eq!(shared.countries, vec![(232, want)]);
        // Two other nodes count 70 more: a follower judges its own count only...
        d.set_elsewhere([(Subject::Country(232), elsewhere(70, 12, 2, false))].into());
        assert!(d.judge_elsewhere(HOUR + 1).is_empty());
        // ...the leader judges the sum, once per window.
        d.set_elsewhere([(Subject::Country(232), elsewhere(70, 12, 2, true))].into());
        let r = d.judge_elsewhere(HOUR + 1);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            (r[0].subject, r[0].scale, r[0].count, r[0].threshold),
            (Subject::Country(232), 0, 110, 100)
        );
        assert_eq!((r[0].spread, r[0].elsewhere), (Some(local_sources + 12), Some((70, 2))));
        assert!(d.judge_elsewhere(HOUR + 2).is_empty(), "reported once per window");
        assert!(spread_calls(&mut d, 232, 1, HOUR + 3).is_empty(), "nor again by a local call");
        // The next window, still surging: reported again (an extension).
        let r = d.judge_elsewhere(HOUR + MIN + 1);
        assert_eq!(r.first().map(|r| r.count), Some(110), "{r:?}");
    }

    #[test]
    fn a_country_busy_on_every_node_is_judged_against_the_sum_of_their_normals() {
        let busy = |others_level_milli: u64| {
            let mut d = Detector::new(no_history_rule());
            d.share_counts(0.1);
            // This node's normal for +44 is 30 calls a minute: threshold 120.
            let normal = Level { level: 30.0, windows: 10, first_ms: 0 };
            d.import(Exported { levels: vec![(Subject::Country(44), 0, normal)], ..Exported::default() });
            assert_eq!(d.threshold(Subject::Country(44), 0, HOUR), 120);
            assert!(spread_calls(&mut d, 44, 35, HOUR).is_empty());
            // Nine other nodes carry as much: 350 calls a minute in all.
            let mut e = elsewhere(9 * 35, 9 * 20, 9, true);
            e.level_milli = [others_level_milli; SCALES];
            d.set_elsewhere([(Subject::Country(44), e)].into());
            d.judge_elsewhere(HOUR + 1)
        };
        // Their normals published: 10 x 30 a minute is normal, the sum's
        // threshold is 4 x 300.
        assert!(busy(9 * 30_000).is_empty());
        // Without (levels not trusted yet elsewhere), the sum is judged at
        // this node's threshold: the ceilings apply to the cluster.
        let r = busy(0);
        assert_eq!(r.first().map(|r| (r.count, r.threshold)), Some((350, 120)), "{r:?}");
    }

    #[test]
    fn a_sum_is_judged_on_a_local_call_too_and_needs_its_sources() {
        let mut d = Detector::new(no_history_rule());
        d.share_counts(0.1);
        d.set_elsewhere([(Subject::Country(44), elsewhere(98, 0, 1, true))].into());
        // Two calls from one source: 100 calls, but 1 + 0 sources (< 5).
        assert!(spread_calls(&mut d, 44, 1, HOUR).is_empty());
        let r: Vec<Report> = (0..4).flat_map(|_| d.call(ip("198.51.100.100"), 0, 44, HOUR)).collect();
        assert!(r.iter().all(|r| r.subject != Subject::Country(44)), "{r:?}");
        d.set_elsewhere([(Subject::Country(44), elsewhere(98, 6, 1, true))].into());
        let r = spread_calls(&mut d, 44, 1, HOUR + 1);
        assert!(r.iter().any(|r| r.subject == Subject::Country(44) && r.elsewhere == Some((98, 1))), "{r:?}");
    }

    #[test]
    fn sources_are_shared_from_a_fraction_of_their_threshold_the_nearest_first() {
        let mut d = Detector::new(no_history_rule());
        d.share_counts(0.1);
        // Thresholds 30 / 60 / 300: 3 calls are a tenth of the short one.
        for (i, n) in [2u32, 3, 9, 12].into_iter().enumerate() {
            let addr = ip(&format!("203.0.113.{}", 10 + i));
            for _ in 0..n {
                d.call(addr, 0, 44, HOUR);
            }
        }
        let shared = d.to_share(HOUR, 2);
        let addrs: Vec<IpAddr> = shared.sources.iter().map(|(a, _)| *a).collect();
        assert_eq!(addrs, [ip("203.0.113.12"), ip("203.0.113.13")], "the two nearest, of three at 0.1");
        assert_eq!(d.to_share(HOUR, 10).sources.len(), 3);
        // Two short windows later only the hour's counts are left: the
        // source whose 3 calls were a tenth of the short threshold is not
        // a tenth of the medium one (60).
        let later = d.to_share(HOUR + 2 * MIN, 10);
        let n = |s: &Shared| s.sources.iter().map(|(a, c)| (*a, c.n)).collect::<Vec<_>>();
        assert_eq!(n(&later), [(ip("203.0.113.12"), [0, 9, 9]), (ip("203.0.113.13"), [0, 12, 12])]);
        assert_eq!(later.countries.iter().map(|(cc, c)| (*cc, c.n)).collect::<Vec<_>>(), [(44, [0, 26, 26])]);
        // A node not in a cluster shares nothing.
        let mut alone = Detector::new(no_history_rule());
        alone.call(ip("203.0.113.10"), 0, 44, HOUR);
        assert_eq!(alone.to_share(HOUR, 10), Shared::default());
    }

    #[test]
    fn a_source_split_over_nodes_is_suspended_by_the_sum() {
        let mut d = Detector::new(no_history_rule());
        d.share_counts(0.1);
        let addr = ip("203.0.113.50");
        for _ in 0..12 {
            assert!(d.call(addr, 0, 44, HOUR).is_empty());
        }
        d.set_elsewhere([(Subject::Source(addr), elsewhere(20, 0, 2, true))].into());
        let r = d.judge_elsewhere(HOUR + 1);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].subject, r[0].addr, r[0].count, r[0].cc), (Subject::Source(addr), addr, 32, 0));
    }

    #[test]
    fn judging_a_sum_never_learns_from_windows() {
        let mut d = Detector::new(no_history_rule());
        d.share_counts(0.1);
        spread_calls(&mut d, 232, 40, HOUR);
        d.set_elsewhere([(Subject::Country(232), elsewhere(10, 12, 2, true))].into());
        // Windows pass with no local call and no tick: judged, not learned.
        for m in 1..5 {
            d.judge_elsewhere(HOUR + m * MIN);
            d.to_share(HOUR + m * MIN, 10);
        }
        assert_eq!(d.learned(Subject::Country(232), 0), None);
    }

    /// Levels trusted at once; without the new-destination rule (every
    /// destination of a line with no history to wait for would be new).
    fn no_history_rule() -> DetectConfig {
        let mut c = cfg();
        c.learning.min_history = Duration::ZERO;
        c.new_destination.divisor = 0;
        c
    }

    #[test]
    fn the_reference_case_is_caught_on_the_hour_scale_well_before_150_attempts() {
        let mut d = Detector::new(cfg());
        let office = ip("198.51.100.40");
        // Weeks of domestic use only: a mature line, no international history.
        d.line_seen(Subject::Source(office), 0);
        // Then ~2.4 attempts a minute to Sierra Leone: never 30 a minute.
        let (reports, before) = place(&mut d, office, &[232], 144, 21 * DAY, 4);
        let first = reports.first().expect("reported");
        assert!(before < 150, "{before} attempts before a report");
        // New destination, high-risk: the ceilings divided by 4 x 2.
        assert_eq!((first.rule, first.high_risk, first.cc), (Rule::NewDestination, true, 232), "{first:?}");
        // Even without the new-destination rule, the hour scale catches it.
        let mut plain = cfg();
        plain.new_destination.divisor = 0;
        let mut d = Detector::new(plain);
        d.line_seen(Subject::Source(office), 0);
        let (reports, before) = place(&mut d, office, &[232], 144, 21 * DAY, 4);
        assert_eq!((reports[0].rule, reports[0].scale, reports[0].threshold), (Rule::Surge, 1, 60));
        assert!(before < 150, "{before}");
    }

    #[test]
    fn a_busy_pbx_with_steady_international_business_is_never_reported() {
        let mut c = cfg();
        c.source = [30, 600, 6000];
        let mut d = Detector::new(c);
        let pbx = ip("198.51.100.10");
        d.line_seen(Subject::Source(pbx), 0);
        // Three weeks, 120 calls an hour to its usual countries.
        let (all, _) = place(&mut d, pbx, &[44, 49, 33], 120, 0, 24 * 21);
        assert!(all.is_empty(), "{:?}", all.first());
        let level = d.level(Subject::Source(pbx), 1, 21 * DAY).expect("learned");
        assert!((100.0..=130.0).contains(&level), "{level}");
    }

    #[test]
    fn destinations_called_while_a_line_was_new_are_part_of_its_history() {
        let mut c = cfg();
        c.source = [30, 600, 6000];
        let mut d = Detector::new(c);
        let pbx = ip("198.51.100.15");
        // From its first day, 200 an hour to +44: under its ceilings, over
        // the new-destination threshold (600 / 4), never judged by it.
        let (r, _) = place(&mut d, pbx, &[44], 200, 0, 24 * 9);
        assert!(r.is_empty(), "{:?}", r.first());
        // A country it starts calling once mature is new to it.
        let (r, _) = place(&mut d, pbx, &[44, 49], 400, 9 * DAY, 2);
        assert!(r.iter().any(|r| r.rule == Rule::NewDestination && r.cc == 49), "{r:?}");
        assert!(r.iter().all(|r| r.cc != 44), "{r:?}");
    }

    /// A source staying just under its threshold each window never teaches
    /// the learner a higher one: the window that leaves it is reported (by
    /// the kernel, at the short-scale threshold this keeps at 20).
    #[test]
    fn a_ramp_never_raises_the_threshold_it_stays_under() {
        let mut c = no_history_rule();
        c.source = [20, 0, 0];
        let mut d = Detector::new(c);
        let addr = ip("203.0.113.50");
        let src = Subject::Source(addr);
        let mut t = 0;
        let mut rate = 18.0f64;
        for window in 0..(24 * 60 + 10) {
            if window >= 24 * 60 {
                rate *= 1.1; // the attacker: 10% more each window
            }
            for i in 0..(rate as i64) {
                d.call(addr, 0, 44, t + i * 100);
            }
            t += MIN;
            d.tick(t, |_| false);
            assert_eq!(d.threshold(src, 0, t), 20, "window {window} at {rate:.0}");
        }
        assert!(d.kernel_thresholds(t).iter().all(|(s, _)| *s != src), "{:?}", d.kernel_thresholds(t));
    }

    #[test]
    fn a_ramp_under_a_learned_level_rises_only_by_the_bounded_factor_per_day() {
        let mut c = no_history_rule();
        c.source = [30, 60, 0];
        let mut d = Detector::new(c);
        let pbx = ip("198.51.100.11");
        let src = Subject::Source(pbx);
        // 20 an hour for a week: level 20 on the hour scale.
        let (r, _) = place(&mut d, pbx, &[44], 20, 0, 24 * 7);
        assert!(r.is_empty(), "{r:?}");
        let l0 = d.level(src, 1, 7 * DAY).unwrap();
        assert!((18.0..=21.0).contains(&l0), "{l0}");
        // Doubling each day: the level rises at most 1.5x a day, so the
        // ramp (40, 80, 160 an hour) crosses its threshold (80, 120, 120:
        // the 80-an-hour day was over half the threshold, so it did not
        // teach) on its third day.
        let (mut t, mut rate, mut reported) = (7 * DAY, 20u32, None);
        for day in 0..5 {
            rate *= 2;
            let (r, _) = place(&mut d, pbx, &[44], rate, t, 24);
            t += DAY;
            let l = d.level(src, 1, t).unwrap();
            assert!(l <= l0 * 1.5f64.powi(day + 1) * 1.01, "day {day}: {l0} -> {l}");
            if reported.is_none() && r.iter().any(|r| r.scale == 1) {
                reported = Some(day);
            }
        }
        assert_eq!(reported, Some(2));
    }

    #[test]
    fn a_holiday_lull_does_not_make_normal_business_look_like_fraud() {
        let mut c = no_history_rule();
        c.source = [30, 60, 0];
        let mut d = Detector::new(c);
        let pbx = ip("198.51.100.12");
        let mut all = Vec::new();
        let mut t = 0;
        // Two weeks at 25 an hour, a week growing to 45, three quiet days,
        // then back to work.
        for (rate, days) in [(25, 14), (35, 2), (45, 5), (2, 3), (45, 3)] {
            all.extend(place(&mut d, pbx, &[44], rate, t, 24 * days).0);
            t += days * DAY;
        }
        assert!(all.is_empty(), "{:?}", all.first());
    }

    #[test]
    fn a_growing_customer_is_raised_by_an_operator_and_the_hard_maximum_holds_otherwise() {
        let mut c = no_history_rule();
        c.source = [0, 60, 0];
        let mut d = Detector::new(c);
        let addr = ip("198.51.100.13");
        let pbx = Subject::Source(addr);
        let mut t = 0;
        assert!(place(&mut d, addr, &[44], 25, t, 24 * 7).0.is_empty());
        t += 7 * DAY;
        // Growing 1.4x a day: the learner follows...
        let mut rate = 25.0f64;
        for day in 0..6 {
            rate *= 1.4;
            let (r, _) = place(&mut d, addr, &[44], rate as u32, t, 24);
            assert!(r.is_empty(), "day {day} at {rate:.0}: {:?}", r.first());
            t += DAY;
        }
        // ...up to the hard maximum, 8 x 60.
        assert_eq!(d.threshold(pbx, 1, t), 480);
        let (r, _) = place(&mut d, addr, &[44], 600, t, 2);
        assert!(!r.is_empty(), "above the hard maximum");
        t += 2 * HOUR;
        // The customer's contract is for 1,000 an hour: the operator raises
        // it (the learner alone never would).
        d.set_override(pbx, 1, Some(2000));
        let (r, _) = place(&mut d, addr, &[44], 1000, t, 3);
        assert!(r.is_empty(), "{:?}", r.first());
        assert_eq!(d.overrides().collect::<Vec<_>>(), vec![(pbx, 1, 2000)]);
    }

    #[test]
    fn a_stolen_credential_from_a_new_prefix_is_reported_there_strongly() {
        let mut d = Detector::new(cfg());
        let (tag, home, other) = (7u64, ip("198.51.100.20"), ip("198.51.100.21"));
        d.auth_ok(tag, home, 0);
        d.auth_ok(9, other, 0);
        // Weeks later it authenticates from elsewhere and calls abroad.
        let thief = ip("203.0.113.66");
        let t = 20 * DAY;
        d.auth_ok(tag, thief, t);
        let mut reports = Vec::new();
        for i in 0..3 {
            reports.extend(d.call(thief, tag, 44, t + i * 1000));
        }
        let r = reports.iter().find(|r| r.rule == Rule::NewPrefix).expect("new prefix");
        assert_eq!((r.addr, r.count, r.strong), (thief, 3, true));
        assert_eq!(r.prefix, Some("203.0.113.0/24".parse().unwrap()));
        // From a prefix where another identity is known: not strong.
        d.auth_ok(tag, ip("198.51.100.99"), t);
        let mut reports = Vec::new();
        // Same /24 as home: not new. Another one shared with identity 9:
        d.auth_ok(11, ip("192.0.2.5"), 0);
        d.auth_ok(tag, ip("192.0.2.6"), t);
        for i in 0..3 {
            reports.extend(d.call(ip("192.0.2.6"), tag, 44, t + i * 1000));
        }
        let r = reports.iter().find(|r| r.rule == Rule::NewPrefix).expect("new prefix");
        assert!(!r.strong);
        // An identity with no history is judged by the other rules only.
        let mut fresh = Vec::new();
        d.auth_ok(99, thief, t);
        for i in 0..5 {
            fresh.extend(d.call(thief, 99, 44, t + i));
        }
        assert!(fresh.iter().all(|r| r.rule != Rule::NewPrefix), "{fresh:?}");
    }

    #[test]
    fn one_credential_from_fifty_addresses_is_summed() {
        let mut d = Detector::new(cfg());
        let tag = 42;
        let mut reports = Vec::new();
        for a in 0..50u32 {
            let addr = IpAddr::from([203, 0, 113, a as u8 + 1]);
            for i in 0..5 {
                reports.extend(d.call(addr, tag, 44, i64::from(a * 5 + i) * 100));
            }
        }
        let r =
            reports.iter().find(|r| r.subject == Subject::Identity(tag)).expect("the identity is reported");
        assert_eq!((r.scale, r.threshold), (0, 30));
        assert!(r.spread.unwrap() >= 6, "{r:?}");
        assert!(reports.iter().all(|r| !matches!(r.subject, Subject::Source(_))), "5 each: {reports:?}");
    }

    #[test]
    fn a_country_surge_needs_its_sources() {
        let mut c = cfg();
        c.country = [0, 20, 0];
        c.country_min_sources = 3;
        let mut d = Detector::new(c);
        let mut r = Vec::new();
        for i in 0..25 {
            r.extend(d.call(ip("198.51.100.30"), 0, 232, i * 1000));
        }
        assert!(r.iter().all(|r| !matches!(r.subject, Subject::Country(_))));
        for a in 31..34u8 {
            r.extend(d.call(IpAddr::from([198, 51, 100, a]), 0, 232, 30_000));
        }
        assert!(r.iter().any(|r| r.subject == Subject::Country(232) && r.scale == 1), "{r:?}");
    }

    #[test]
    fn a_tracked_country_no_call_reaches_has_calm_windows() {
        let mut d = Detector::new(cfg());
        let t0 = 10 * DAY;
        for m in 0..3 {
            d.track(Subject::Country(232), t0 + m * MIN);
            d.tick(t0 + m * MIN, |_| false);
        }
        assert_eq!(d.last_window(Subject::Country(232), 0), Some((0, t0 + MIN)));
    }

    /// Forged sources and identities (a spoofed flood) cannot grow the
    /// detector without bound; the lines with the longest history stay.
    #[test]
    fn a_flood_of_forged_subjects_is_bounded() {
        let mut c = cfg();
        c.max_subjects = 1000;
        let mut d = Detector::new(c);
        let old = ip("198.51.100.16");
        d.line_seen(Subject::Source(old), 0);
        let t = 30 * DAY;
        for i in 0..20_000u32 {
            let forged = IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(i)));
            d.call(forged, u64::from(i) + 1, 44, t + i64::from(i));
        }
        d.tick(t + MIN, |_| false);
        assert!(d.counts.len() <= 1000 && d.lines.len() <= 1000, "{} {}", d.counts.len(), d.lines.len());
        assert!(d.destinations.len() <= 1000 && d.prefixes.len() <= 1000);
        assert!(d.mature(Subject::Source(old), t), "the oldest line keeps its history");
        assert!(d.forgotten() > 0);
    }

    /// Counter-measure 3 asks which lines have not called abroad for a long
    /// time: each line keeps its first and last sighting, its last
    /// international call, and whether it is a customer's at all.
    #[test]
    fn a_line_keeps_its_sightings_its_last_international_call_and_whose_it_is() {
        let mut d = Detector::new(cfg());
        let (pbx, phone, scanner) = (ip("198.51.100.50"), ip("198.51.100.51"), ip("203.0.113.9"));
        // The kernel saw a scanner (OPTIONS only) and a phone that sent
        // INVITEs (domestic ones: never a call event); an older snapshot
        // of the phone adds nothing.
        d.source_seen(scanner, 10, 20, false);
        d.source_seen(phone, 5, 30, true);
        d.source_seen(phone, 8, 25, false);
        // A PBX calls abroad, an identity authenticates at it and calls.
        d.call(pbx, 0, 44, 100);
        d.auth_ok(7, pbx, 150);
        d.call(pbx, 7, 44, 200);
        // Another identity's credentials in a call, never authenticated.
        d.call_identified(pbx, 9, 44, 210);
        let lines: HashMap<Subject, Line> = d.lines().collect();
        let line = |first, last, intl, customer| Line {
            first_seen_ms: first,
            last_seen_ms: last,
            last_intl_ms: intl,
            customer,
        };
        assert_eq!(lines[&Subject::Source(scanner)], line(10, 20, None, false));
        assert_eq!(lines[&Subject::Source(phone)], line(5, 30, None, true));
        assert_eq!(lines[&Subject::Source(pbx)], line(100, 200, Some(200), true));
        assert_eq!(lines[&Subject::Identity(7)], line(150, 200, Some(200), true));
        assert_eq!(lines[&Subject::Identity(9)], line(210, 210, Some(210), false));
        assert_eq!(lines.len(), 5);
        // History pruning never forgets a line; an export brings them back.
        d.prune(i64::MAX);
        let e = d.export();
        assert_eq!(e.lines.len(), 5);
        let mut again = Detector::new(cfg());
        again.import(e.clone());
        assert_eq!(again.export(), e);
    }

    #[test]
    fn what_is_exported_comes_back() {
        let c = no_history_rule();
        let mut d = Detector::new(c.clone());
        let pbx = ip("198.51.100.14");
        place(&mut d, pbx, &[44], 20, 0, 48);
        d.auth_ok(7, pbx, 0);
        let e = d.export();
        assert!(!e.levels.is_empty() && !e.destinations.is_empty() && !e.prefixes.is_empty());
        let mut again = Detector::new(c);
        again.import(e.clone());
        assert_eq!(again.export(), e);
        assert_eq!(
            again.threshold(Subject::Source(pbx), 1, 2 * DAY),
            d.threshold(Subject::Source(pbx), 1, 2 * DAY)
        );
    }
}
