//! The daemon's side of the cluster: local decisions go out to the store
//! ([`Link::decided`], from the actuator), and other nodes' restrictions
//! come in through the engine ([`apply_remote`]), so they are listed,
//! expire and are audited like local ones, with their origin.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use log::info;

use super::{
    actuator::Actuator,
    persist::{mono_of, wall_of},
};
use crate::{
    clock::monotonic_now_ns,
    cluster::{
        Cluster, LIFTED_ELSEWHERE, Op, Remote, Shared,
        counts::{self, NodeCounts},
        record::{self, Merge, RECORD_VERSION, Record},
    },
    detect::{Detector, Elsewhere, Subject},
    maps::Maps,
    policy::{Active, Adopted, Decision, Engine, Reason},
    store::now_ms,
};

/// Where the actuator sends local decisions.
pub(super) struct Link {
    ops: tokio::sync::mpsc::UnboundedSender<Op>,
    shared: Shared,
    node: String,
    prefix: String,
}

impl Link {
    pub(super) fn new(c: &Cluster) -> Self {
        Self {
            ops: c.ops.clone(),
            shared: c.shared.clone(),
            node: c.config.node.clone(),
            prefix: c.config.prefix.clone(),
        }
    }

    /// A decision made here: impositions and extensions are written (an
    /// imposition only if no node wrote it first), lifts deleted. Expiries
    /// are not: each node expires its own copy, and the key's lease ends.
    pub(super) fn decided(&self, d: &Decision) {
        let op = match d {
            Decision::Impose(a) => Op::Put { record: Box::new(self.record_of(a)), create: true },
            Decision::Extend(a) => Op::Put { record: Box::new(self.record_of(a)), create: false },
            Decision::Lift(a, _) => {
                Op::Delete { key: record::restriction_key(&self.prefix, a.kind, &a.target) }
            }
            Decision::Expire(_) | Decision::Alert { .. } => return,
        };
        let _ = self.ops.send(op);
    }

    /// The record of a local restriction; one first decided elsewhere
    /// keeps its origin and start.
    fn record_of(&self, a: &Active) -> Record {
        let key = record::restriction_key(&self.prefix, a.kind, &a.target);
        let (now, now_ns) = (now_ms(), monotonic_now_ns());
        let known = self.shared.lock().known.get(&key).cloned();
        let start_ms = known
            .as_ref()
            .map(|r| r.start_ms)
            .or(a.imposed_wall_ms)
            .unwrap_or_else(|| wall_of(a.imposed_at_ns, now, now_ns));
        Record {
            v: RECORD_VERSION,
            kind: a.kind.name().to_owned(),
            target: a.target.to_string(),
            reason: a.reason.name().to_owned(),
            evidence: a.evidence,
            note: a.note.clone(),
            origin: known.map_or_else(|| self.node.clone(), |r| r.origin),
            writer: self.node.clone(),
            start_ms,
            expires_ms: wall_of(a.expires_at_ns, now, now_ns),
            dry_run: !a.enforced,
        }
    }

    /// The node that decided `a`, as the store says.
    pub(super) fn origin_of(&self, a: &Active) -> Option<String> {
        let key = record::restriction_key(&self.prefix, a.kind, &a.target);
        self.shared.lock().known.get(&key).map(|r| r.origin.clone())
    }

    /// What `tollgate status` shows of the cluster.
    pub(super) fn view(&self, engine: &Engine) -> crate::control::ClusterView {
        let now = now_ms();
        let mut by_origin = std::collections::BTreeMap::new();
        for a in engine.active() {
            let origin = self.origin_of(a).unwrap_or_else(|| self.node.clone());
            *by_origin.entry(origin).or_insert(0) += 1;
        }
        let st = self.shared.lock();
        let age = |ms: i64| (now - ms).max(0) as f64 / 1000.0;
        crate::control::ClusterView {
            node: st.node.clone(),
            prefix: st.prefix.clone(),
            endpoints: st.endpoints.clone(),
            connected: st.connected,
            last_sync_age_secs: st.last_sync_ms.map(age),
            last_error: st.last_error.clone(),
            members: st
                .members
                .iter()
                .map(|m| crate::control::MemberView {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    heartbeat_age_secs: age(m.heartbeat_ms),
                })
                .collect(),
            by_origin,
            queued: st.queued,
            summed_countries: st.summed_countries,
            summed_sources: st.summed_sources,
            counting_nodes: st.counting_nodes,
        }
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// Applies what the store says through the engine: another node's
/// restriction is adopted (or extended), a lifted one lifted. Never an
/// expired one; the local allowlist and dry-run still win.
pub(super) fn apply_remote(
    link: &Link,
    engine: &mut Engine,
    maps: &mut Maps,
    actuator: &Actuator,
    msg: Remote,
) {
    let (now, now_ns) = (now_ms(), monotonic_now_ns());
    let (r, superseded) = match msg {
        Remote::Put(r) => (r, false),
        Remote::Superseded(r) => (r, true),
        // Handled by the main loop ([`Sharing`]).
        Remote::Counts(_) => return,
        Remote::Delete(r) => {
            // A key deleted after its expiry is its lease ending: each node
            // expires its own copy.
            if r.expired(now) {
                return;
            }
            let (Some(kind), Some(target)) = (r.kind(), r.target()) else { return };
            if let Some(d) = engine.lift_target(kind, target, LIFTED_ELSEWHERE) {
                info!("cluster: {} on {target} was lifted elsewhere", kind.name());
                actuator.apply_adopted(maps, &d, &r.origin, None);
            }
            return;
        }
    };
    let (Some(kind), Some(target)) = (r.kind(), r.target()) else { return };
    let local = engine
        .active()
        .iter()
        .find(|a| a.kind == kind && a.target == target)
        .map(|a| wall_of(a.expires_at_ns, now, now_ns));
    let merge = if superseded {
        if r.expired(now) { Merge::Ignore } else { Merge::Extend }
    } else {
        record::merge(&r, link.node(), local, now)
    };
    if merge == Merge::Ignore {
        return;
    }
    let adopted = Adopted {
        kind,
        target,
        reason: Reason::from_name(&r.reason).unwrap_or(Reason::Adopted),
        evidence: r.evidence,
        note: r.note.clone(),
        imposed_at_ns: mono_of(r.start_ms, now, now_ns),
        expires_at_ns: mono_of(r.expires_ms, now, now_ns),
        imposed_wall_ms: r.start_ms,
        enforce: !r.dry_run,
    };
    let Some(d) = engine.adopt_remote(adopted, superseded) else { return };
    let not_enforced = match &d {
        Decision::Impose(a) if !a.enforced => Some(if engine.allowlisted(&target) {
            "allowlisted here"
        } else if r.dry_run {
            "decided in dry-run"
        } else {
            "dry-run here"
        }),
        _ => None,
    };
    if matches!(d, Decision::Impose(_)) {
        link.shared().lock().adopted += 1;
    }
    actuator.apply_adopted(maps, &d, &r.origin, not_enforced);
}

/// This node's side of the counts summed across the cluster
/// ([`crate::cluster::counts`]): what it publishes, and what the others do.
pub(super) struct Sharing {
    tx: tokio::sync::watch::Sender<Option<NodeCounts>>,
    node: String,
    shared: Shared,
    max_sources: usize,
    /// What was last handed to the session to publish, and when.
    mine: Option<NodeCounts>,
    sent_at: Option<std::time::Instant>,
    others: BTreeMap<String, NodeCounts>,
    /// The others' counts changed since they were last judged.
    changed: bool,
}

impl Sharing {
    pub(super) fn new(c: &Cluster, detector: &mut Detector) -> Self {
        detector.share_counts(c.config.source_fraction);
        Self {
            tx: c.counts.clone(),
            node: c.config.node.clone(),
            shared: c.shared.clone(),
            max_sources: c.config.max_sources,
            mine: None,
            sent_at: None,
            others: BTreeMap::new(),
            changed: false,
        }
    }

    /// How often counts that changed are published: a tenth of the short
    /// window, within 1 to 10 s (what a split surge may wait, and what
    /// etcd writes: one key per node).
    pub(super) fn interval(window: Duration) -> Duration {
        (window / 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    /// Publishes this node's counts if they changed and the interval
    /// passed; true if it did (the sums' deciders may have changed).
    pub(super) fn publish(&mut self, detector: &mut Detector, window: Duration) -> bool {
        if self.sent_at.is_some_and(|t| t.elapsed() < Self::interval(window)) {
            return false;
        }
        let windows = detector.config().windows.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        let counts =
            NodeCounts::new(&self.node, now_ms(), windows, detector.to_share(now_ms(), self.max_sources));
        if self.mine.as_ref().is_some_and(|m| m.same_counts(&counts)) {
            return false;
        }
        self.mine = Some(counts.clone());
        self.sent_at = Some(std::time::Instant::now());
        let _ = self.tx.send(Some(counts));
        true
    }

    pub(super) fn set_others(&mut self, others: BTreeMap<String, NodeCounts>) {
        self.others = others;
        self.changed = true;
    }

    /// Whether the others' counts changed since this was last asked.
    pub(super) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The sums for the detector, as this node now sees the cluster.
    pub(super) fn sums(&self) -> HashMap<Subject, Elsewhere> {
        let sums = counts::sum(&self.node, self.mine.as_ref(), &self.others);
        let mut st = self.shared.lock();
        st.summed_countries = sums.keys().filter(|s| matches!(s, Subject::Country(_))).count();
        st.summed_sources = sums.keys().filter(|s| matches!(s, Subject::Source(_))).count();
        st.counting_nodes = self.others.values().filter(|c| !c.is_empty()).count();
        sums
    }
}
