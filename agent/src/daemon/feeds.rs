//! Blocklist feeds in the daemon: a task per feed fetches and parses it on
//! a blocking thread and sends the result to the main loop, which alone
//! writes the blocklist ([`Feeds::fetched`]); the last good entries of each
//! feed are kept in `feeds.json` in --state-dir with their wall-clock
//! expiry, so a restart while a feed is unreachable still enforces them
//! until their ttl.
//!
//! Ownership: a prefix any feed lists is a FEED entry (reason
//! [`reason::FEED`]) unless another kind of block (--block, an operator's,
//! an automatic one) holds it, which is never replaced; two feeds listing
//! one prefix both own it, and it goes when neither does. The allowlist
//! wins: entries inside an --allow prefix are not written (and the kernel
//! checks the allowlist first anyway).
//!
//! Capacity: all feeds together, with every other entry in the blocklist,
//! must leave [`RESERVE`] entries free for operator and automatic blocks;
//! a refresh that would not is refused whole and the feed keeps what it had.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use log::{info, warn};
use prometheus::{GaugeVec, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};
use tollgate_common::{BlockEntry, reason};

use crate::{
    audit::{self, Auditor},
    clock::{expiry_after, monotonic_now_ns},
    feeds::{self, FeedSpec, Parsed},
    maps::Maps,
    store::now_ms,
};

/// Blocklist entries feeds may never take: room for operator blocks and
/// automatic restrictions during an attack.
pub const RESERVE: usize = 4096;
/// The file of the feeds' last good entries, in --state-dir.
pub const STATE_FILE: &str = "feeds.json";
/// After a failed fetch the next try comes after this (or the refresh
/// interval, if shorter).
const RETRY: Duration = Duration::from_secs(60);
const RESULTS: [&str; 3] = ["ok", "failed", "refused"];

/// A fetch's result, from a feed's task.
pub(super) struct Fetched {
    name: String,
    generation: u64,
    outcome: Result<Parsed, String>,
}

/// One feed's state, as the main loop keeps it and feeds.json stores it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FeedState {
    pub name: String,
    pub source: String,
    pub format: String,
    /// The last good entries still in force (not lapsed).
    pub entries: BTreeSet<IpNet>,
    /// When they lapse (UNIX ms).
    pub expires_ms: i64,
    pub last_success_ms: Option<i64>,
    pub last_attempt_ms: Option<i64>,
    /// Why the last refresh failed or was refused (None after a good one).
    pub last_error: Option<String>,
}

/// feeds.json.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub feeds: Vec<FeedState>,
}

impl StateFile {
    /// Reads `dir`/feeds.json (empty if there is none).
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is not tollgate's feed state: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }
}

struct Feed {
    spec: FeedSpec,
    state: FeedState,
    /// When `state.entries` lapse, on the kernel's clock.
    expires_ns: u64,
    generation: u64,
    task: JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The feed metrics (the feed's name is a label: bounded by the
/// configuration).
#[derive(Clone)]
pub(super) struct FeedMetrics {
    entries: GaugeVec,
    refreshes: IntCounterVec,
    up: GaugeVec,
    last_success: GaugeVec,
    refresh: GaugeVec,
}

impl FeedMetrics {
    pub(super) fn register(registry: &prometheus::Registry) -> Self {
        let gauge =
            |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["feed"]).expect("valid metric");
        let m = Self {
            entries: gauge("tollgate_feed_entries", "Blocklist entries a feed has in force (its last good refresh, until their ttl)."),
            refreshes: IntCounterVec::new(
                Opts::new("tollgate_feed_refreshes_total", "Refreshes of a blocklist feed, by result: ok, failed (fetch or parse; its last good entries stay until their ttl) or refused (too many entries for the blocklist)."),
                &["feed", "result"],
            )
            .expect("valid metric"),
            up: gauge("tollgate_feed_up", "1 if the feed's last refresh succeeded, 0 if it failed or was refused."),
            last_success: gauge("tollgate_feed_last_success_timestamp_seconds", "When the feed last refreshed successfully (UNIX time, seconds; 0: never)."),
            refresh: gauge("tollgate_feed_refresh_interval_seconds", "How often the feed is fetched (its refresh), in seconds."),
        };
        registry.register(Box::new(m.entries.clone())).expect("registers once");
        registry.register(Box::new(m.refreshes.clone())).expect("registers once");
        registry.register(Box::new(m.up.clone())).expect("registers once");
        registry.register(Box::new(m.last_success.clone())).expect("registers once");
        registry.register(Box::new(m.refresh.clone())).expect("registers once");
        m
    }

    fn add(&self, spec: &FeedSpec) {
        let name = spec.name.as_str();
        for result in RESULTS {
            self.refreshes.with_label_values(&[name, result]);
        }
        self.refresh.with_label_values(&[name]).set(spec.refresh.as_secs_f64());
        self.entries.with_label_values(&[name]);
        self.last_success.with_label_values(&[name]);
    }

    fn remove(&self, name: &str) {
        for result in RESULTS {
            let _ = self.refreshes.remove_label_values(&[name, result]);
        }
        let _ = self.entries.remove_label_values(&[name]);
        let _ = self.up.remove_label_values(&[name]);
        let _ = self.last_success.remove_label_values(&[name]);
        let _ = self.refresh.remove_label_values(&[name]);
    }

    fn show(&self, s: &FeedState) {
        self.entries.with_label_values(&[&s.name]).set(s.entries.len() as f64);
        let last = s.last_success_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
        self.last_success.with_label_values(&[&s.name]).set(last);
    }
}

/// Every configured feed.
pub(super) struct Feeds {
    feeds: BTreeMap<String, Feed>,
    tx: mpsc::UnboundedSender<Fetched>,
    state_file: PathBuf,
    metrics: FeedMetrics,
    generation: u64,
    /// The blocklist's size (--blocklist-capacity; fixed until a restart).
    capacity: u32,
}

/// The task of one feed: fetch at once, then every refresh interval (sooner
/// after a failure).
fn spawn(spec: &FeedSpec, generation: u64, tx: mpsc::UnboundedSender<Fetched>) -> JoinHandle<()> {
    let spec = spec.clone();
    tokio::spawn(async move {
        loop {
            let (source, format) = (spec.source.clone(), spec.format);
            let outcome = tokio::task::spawn_blocking(move || {
                feeds::fetch(&source).and_then(|body| feeds::parse(format, &body).map_err(|e| e.to_string()))
            })
            .await
            .unwrap_or_else(|e| Err(format!("the fetch failed: {e}")));
            let wait = if outcome.is_ok() { spec.refresh } else { spec.refresh.min(RETRY) };
            if tx.send(Fetched { name: spec.name.clone(), generation, outcome }).is_err() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    })
}

fn format_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Feeds {
    /// The feeds of `specs`, with the last good entries feeds.json in
    /// `state_dir` still has in force written back into the blocklist;
    /// each feed's first fetch starts at once.
    pub(super) fn start(
        specs: &[FeedSpec],
        state_dir: &Path,
        maps: &mut Maps,
        allows: &[IpNet],
        metrics: FeedMetrics,
        capacity: u32,
    ) -> (Self, mpsc::UnboundedReceiver<Fetched>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut this = Self {
            feeds: BTreeMap::new(),
            tx,
            state_file: state_dir.join(STATE_FILE),
            metrics,
            generation: 0,
            capacity,
        };
        let saved = StateFile::read(state_dir).unwrap_or_else(|e| {
            warn!("feeds: {e:#}; starting without their last good entries");
            StateFile::default()
        });
        let (now_wall, now_ns) = (now_ms(), monotonic_now_ns());
        for spec in specs {
            let mut feed = this.new_feed(spec);
            if let Some(s) = saved.feeds.iter().find(|s| s.name == spec.name && s.source == feed.state.source)
            {
                feed.state.last_success_ms = s.last_success_ms;
                feed.state.last_attempt_ms = s.last_attempt_ms;
                feed.state.last_error.clone_from(&s.last_error);
                if s.expires_ms > now_wall && !s.entries.is_empty() {
                    feed.state.entries.clone_from(&s.entries);
                    feed.state.expires_ms = s.expires_ms;
                    let left = Duration::from_millis(u64::try_from(s.expires_ms - now_wall).unwrap_or(0));
                    feed.expires_ns = expiry_after(now_ns, left);
                    info!(
                        "feed {}: {} entries from its last good refresh, in force until {}",
                        spec.name,
                        s.entries.len(),
                        format_ms(s.expires_ms)
                    );
                }
            }
            this.metrics.show(&feed.state);
            this.feeds.insert(spec.name.clone(), feed);
        }
        this.write_all(maps, allows);
        // FEED entries nobody owns now (pins of an agent with other feeds).
        let owned = this.owned();
        for (net, e) in maps.blocklist.entries() {
            if e.reason == reason::FEED
                && !owned.contains_key(&net)
                && let Err(e) = maps.blocklist.remove(&net)
            {
                warn!("feeds: {e}");
            }
        }
        this.save();
        (this, rx)
    }

    fn new_feed(&mut self, spec: &FeedSpec) -> Feed {
        self.generation += 1;
        self.metrics.add(spec);
        Feed {
            spec: spec.clone(),
            state: FeedState {
                name: spec.name.clone(),
                source: spec.source.to_string(),
                format: spec.format.name().to_owned(),
                ..Default::default()
            },
            expires_ns: 0,
            generation: self.generation,
            task: spawn(spec, self.generation, self.tx.clone()),
        }
    }

    /// Every prefix some feed lists, with the latest expiry of those that do.
    fn owned(&self) -> HashMap<IpNet, u64> {
        let mut owned: HashMap<IpNet, u64> = HashMap::new();
        for f in self.feeds.values() {
            for net in &f.state.entries {
                let e = owned.entry(*net).or_default();
                *e = (*e).max(f.expires_ns);
            }
        }
        owned
    }

    /// Writes every feed's entries where no other kind of block holds the
    /// prefix (at start, after a reload).
    pub(super) fn write_all(&self, maps: &mut Maps, allows: &[IpNet]) {
        let current: HashMap<IpNet, BlockEntry> = maps.blocklist.entries().into_iter().collect();
        let mut writes = Vec::new();
        for (net, expires_at_ns) in self.owned() {
            if allowed(&net, allows) || current.get(&net).is_some_and(|e| e.reason != reason::FEED) {
                continue;
            }
            if current.get(&net).is_some_and(|e| e.expires_at_ns == expires_at_ns) {
                continue;
            }
            writes.push((net, BlockEntry { expires_at_ns, reason: reason::FEED, prefix_len: 0 }));
        }
        if let Err(e) = maps.blocklist.insert_many(&writes) {
            warn!("feeds: writing their entries into the blocklist failed: {e}");
        }
    }

    /// A reload: removed feeds' entries go (unless another feed lists
    /// them), changed ones fetch again at once keeping their entries until
    /// then, new ones start.
    pub(super) fn reconfigure(
        &mut self,
        specs: &[FeedSpec],
        maps: &mut Maps,
        allows: &[IpNet],
        auditor: &Auditor,
    ) {
        let gone: Vec<String> =
            self.feeds.keys().filter(|n| !specs.iter().any(|s| &s.name == *n)).cloned().collect();
        for name in gone {
            let feed = self.feeds.remove(&name).expect("listed");
            self.metrics.remove(&name);
            let removed = self.release(maps, &feed.state.entries);
            info!("feed {name}: no longer configured; its {removed} entries were removed");
            auditor.record_feed(&audit::Feed {
                name: &name,
                source: &feed.state.source,
                result: "removed",
                added: 0,
                removed,
                entries: 0,
                expires_ms: None,
                error: None,
            });
        }
        for spec in specs {
            match self.feeds.get(&spec.name) {
                Some(f) if f.spec == *spec => {}
                Some(_) => {
                    let mut old = self.feeds.remove(&spec.name).expect("listed");
                    let mut feed = self.new_feed(spec);
                    feed.state.entries = std::mem::take(&mut old.state.entries);
                    (feed.state.expires_ms, feed.expires_ns) = (old.state.expires_ms, old.expires_ns);
                    feed.state.last_success_ms = old.state.last_success_ms;
                    info!("feed {}: changed; fetching it again now", spec.name);
                    self.metrics.show(&feed.state);
                    self.feeds.insert(spec.name.clone(), feed);
                }
                None => {
                    let feed = self.new_feed(spec);
                    info!("feed {}: added; fetching it now", spec.name);
                    self.metrics.show(&feed.state);
                    self.feeds.insert(spec.name.clone(), feed);
                }
            }
        }
        self.write_all(maps, allows);
        self.save();
    }

    /// Removes the FEED entries of `nets` no remaining feed lists; how many.
    fn release(&self, maps: &mut Maps, nets: &BTreeSet<IpNet>) -> usize {
        let owned = self.owned();
        let current: HashMap<IpNet, BlockEntry> = maps.blocklist.entries().into_iter().collect();
        let mut removed = 0;
        for net in nets {
            if owned.contains_key(net) || current.get(net).is_none_or(|e| e.reason != reason::FEED) {
                continue;
            }
            match maps.blocklist.remove(net) {
                Ok(()) => removed += 1,
                Err(e) => warn!("feeds: {e}"),
            }
        }
        removed
    }

    /// A feed's task sent a result.
    pub(super) fn fetched(&mut self, fetched: Fetched, maps: &mut Maps, allows: &[IpNet], auditor: &Auditor) {
        let Some(feed) = self.feeds.get(&fetched.name) else { return };
        if feed.generation != fetched.generation {
            // From before a reload changed the feed.
            return;
        }
        let now_wall = now_ms();
        let outcome = fetched.outcome.map_err(|e| ("failed", e)).and_then(|parsed| {
            let mut nets = parsed.nets;
            let before = nets.len();
            nets.retain(|n| !allowed(n, allows));
            if nets.len() < before {
                info!(
                    "feed {}: {} entries inside --allow prefixes not written",
                    fetched.name,
                    before - nets.len()
                );
            }
            if parsed.skipped > 0 {
                warn!(
                    "feed {}: {} lines are not IP prefixes and were skipped (the first: {:?})",
                    fetched.name,
                    parsed.skipped,
                    parsed.first_skipped.unwrap_or_default()
                );
            }
            self.fits(&fetched.name, &nets, maps).map(|()| nets).map_err(|e| ("refused", e))
        });
        let feed = self.feeds.get_mut(&fetched.name).expect("checked");
        feed.state.last_attempt_ms = Some(now_wall);
        let name = fetched.name;
        match outcome {
            Err((result, why)) => {
                self.metrics.refreshes.with_label_values(&[&name, result]).inc();
                self.metrics.up.with_label_values(&[&name]).set(0.0);
                let state = &mut self.feeds.get_mut(&name).expect("checked").state;
                state.last_error = Some(why.clone());
                let kept = state.entries.len();
                let until = if kept > 0 { format_ms(state.expires_ms) } else { "-".to_owned() };
                let verb = if result == "refused" { "refused" } else { "refresh failed" };
                warn!("feed {name}: {verb}: {why}; keeping {kept} entries until {until}");
                let state = state.clone();
                auditor.record_feed(&audit::Feed {
                    name: &name,
                    source: &state.source,
                    result,
                    added: 0,
                    removed: 0,
                    entries: kept,
                    expires_ms: (kept > 0).then_some(state.expires_ms),
                    error: Some(&why),
                });
            }
            Ok(nets) => {
                let feed = self.feeds.get_mut(&name).expect("checked");
                let ttl = feed.spec.ttl;
                let old = std::mem::replace(&mut feed.state.entries, nets);
                feed.expires_ns = expiry_after(monotonic_now_ns(), ttl);
                feed.state.expires_ms =
                    now_wall.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
                feed.state.last_success_ms = Some(now_wall);
                feed.state.last_error = None;
                let added = feed.state.entries.difference(&old).count();
                let stale: BTreeSet<IpNet> = old.difference(&feed.state.entries).copied().collect();
                // New and renewed entries first, then the stale ones go.
                self.write_feed(&name, maps, allows);
                self.release(maps, &stale);
                let state = self.feeds[&name].state.clone();
                self.metrics.refreshes.with_label_values(&[&name, "ok"]).inc();
                self.metrics.up.with_label_values(&[&name]).set(1.0);
                if added > 0 || !stale.is_empty() {
                    info!(
                        "feed {name}: {} entries (+{added} -{}), in force until {}",
                        state.entries.len(),
                        stale.len(),
                        format_ms(state.expires_ms)
                    );
                    auditor.record_feed(&audit::Feed {
                        name: &name,
                        source: &state.source,
                        result: "ok",
                        added,
                        removed: stale.len(),
                        entries: state.entries.len(),
                        expires_ms: Some(state.expires_ms),
                        error: None,
                    });
                }
            }
        }
        self.metrics.show(&self.feeds[&name].state);
        self.save();
    }

    /// Whether `nets` as feed `name`'s entries leave the reserve free.
    fn fits(&self, name: &str, nets: &BTreeSet<IpNet>, maps: &Maps) -> Result<(), String> {
        let current = maps.blocklist.entries();
        let others: BTreeSet<IpNet> =
            current.iter().filter(|(_, e)| e.reason != reason::FEED).map(|(n, _)| *n).collect();
        let mut feeds: BTreeSet<IpNet> = nets.clone();
        for (n, f) in &self.feeds {
            if n != name {
                feeds.extend(f.state.entries.iter().copied());
            }
        }
        let need = others.len() + feeds.difference(&others).count();
        // --blocklist-capacity is at least twice RESERVE.
        let limit = (self.capacity as usize).saturating_sub(RESERVE);
        if need > limit {
            return Err(format!(
                "{} entries would make the blocklist {need} entries, over its capacity of {} \
                 (--blocklist-capacity) less {RESERVE} kept for operator and automatic blocks ({limit})",
                nets.len(),
                self.capacity
            ));
        }
        Ok(())
    }

    /// Writes feed `name`'s entries (each at the latest expiry of the feeds
    /// listing it), never over another kind of block.
    fn write_feed(&self, name: &str, maps: &mut Maps, allows: &[IpNet]) {
        let owned = self.owned();
        let current: HashMap<IpNet, BlockEntry> = maps.blocklist.entries().into_iter().collect();
        let writes: Vec<(IpNet, BlockEntry)> = self.feeds[name]
            .state
            .entries
            .iter()
            .filter(|net| !allowed(net, allows) && current.get(*net).is_none_or(|e| e.reason == reason::FEED))
            .map(|net| (*net, BlockEntry { expires_at_ns: owned[net], reason: reason::FEED, prefix_len: 0 }))
            .collect();
        if let Err(e) = maps.blocklist.insert_many(&writes) {
            warn!("feed {name}: writing its entries into the blocklist failed: {e}");
        }
    }

    /// The sweep: feeds whose entries passed their ttl without a good
    /// refresh forget them (the kernel stopped dropping at the ttl, and the
    /// sweep removes the kernel entries).
    pub(super) fn lapse(&mut self, auditor: &Auditor) {
        let now = monotonic_now_ns();
        let mut changed = false;
        for feed in self.feeds.values_mut() {
            if feed.state.entries.is_empty() || feed.expires_ns > now {
                continue;
            }
            let n = feed.state.entries.len();
            feed.state.entries.clear();
            changed = true;
            warn!(
                "feed {}: its {n} entries lapsed (ttl {} passed without a good refresh)",
                feed.spec.name,
                humantime::format_duration(feed.spec.ttl)
            );
            self.metrics.show(&feed.state);
            auditor.record_feed(&audit::Feed {
                name: &feed.spec.name,
                source: &feed.state.source,
                result: "lapsed",
                added: 0,
                removed: n,
                entries: 0,
                expires_ms: None,
                error: feed.state.last_error.as_deref(),
            });
        }
        if changed {
            self.save();
        }
    }

    /// Writes feeds.json atomically (a temporary file renamed over it).
    fn save(&self) {
        let file = StateFile { feeds: self.feeds.values().map(|f| f.state.clone()).collect() };
        let bytes = serde_json::to_vec(&file).expect("feed state serializes");
        if let Err(e) = crate::state::write_atomic(&self.state_file, &bytes) {
            warn!("feeds: cannot write {}: {e}", self.state_file.display());
        }
    }
}

/// Inside an --allow prefix: never written.
fn allowed(net: &IpNet, allows: &[IpNet]) -> bool {
    allows.iter().any(|a| a.contains(net))
}
