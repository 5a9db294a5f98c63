//! Decisions into the kernel: the restriction maps, the blocklist, and the
//! audit and decision counters that go with every change.

use std::time::Duration;

use ipnet::IpNet;
use log::{info, warn};
use tollgate_common::{BlockEntry, CountryRestriction, NO_EXPIRY, reason};

use crate::{
    audit::Auditor,
    cli::{BlockDuration, BlockSpec},
    clock::{expiry_after, monotonic_now_ns},
    maps::Maps,
    metrics,
    policy::{Active, Decision, Engine, Kind, Reason, Target},
    store::Store,
};

/// Restrictions still in force in the kernel (the agent restarted): the
/// engine takes them over so their expiry is audited, and repeat offences
/// escalate from them.
pub(super) fn adopt_restrictions(maps: &Maps, engine: &mut Engine) {
    let now = monotonic_now_ns();
    // (kind, target, reason, imposed at, until)
    let mut found: Vec<(Kind, Target, Reason, u64, u64)> = Vec::new();
    for (net, r) in maps.restrictions.entries() {
        found.push((Kind::AuthSuspend, Target::Source(net), Reason::Adopted, now, r.auth_until_ns));
        found.push((Kind::IntlSuspend, Target::Source(net), Reason::Adopted, now, r.intl_until_ns));
    }
    for (net, b) in maps.blocklist.entries() {
        if b.reason == reason::OPERATOR && b.expires_at_ns != NO_EXPIRY {
            found.push((Kind::Block, Target::Source(net), Reason::Adopted, now, b.expires_at_ns));
        }
    }
    for (addr, tag, r) in maps.identities.entries() {
        let target = Target::Identity(addr, tag);
        found.push((Kind::IdentitySuspend, target, Reason::BruteForce, r.imposed_at_ns, r.until_ns));
        found.push((Kind::IntlSuspend, target, Reason::Adopted, r.intl_imposed_at_ns, r.intl_until_ns));
    }
    for (cc, r) in maps.country_restrictions().unwrap_or_default() {
        let why = Reason::adopted(r.reason);
        let since = if why == Reason::CountrySurge { r.imposed_at_ns } else { now };
        found.push((Kind::CountryRestrict, Target::Country(cc), why, since, r.until_ns));
    }
    for (kind, target, why, since, until) in found.into_iter().filter(|f| f.4 > now) {
        if !engine.adopt(kind, target, why, since, until) {
            continue;
        }
        info!(
            "{} on {target} still in force, {} left",
            kind.name(),
            humantime::format_duration(Duration::from_secs((until - now) / 1_000_000_000))
        );
    }
}

/// Writes a restriction into (or, with `until` 0, removes it from) the
/// kernel map that enforces its kind.
pub(super) fn write_restriction(maps: &mut Maps, a: &Active, until: u64) -> crate::error::Result<()> {
    match (a.kind, a.target) {
        (Kind::AuthSuspend | Kind::IntlSuspend, Target::Source(net)) => {
            let existing = maps.restrictions.get(&net);
            let mut r = existing.unwrap_or_default();
            if a.kind == Kind::AuthSuspend {
                r.auth_until_ns = until;
            } else {
                r.intl_until_ns = until;
            }
            match (r.auth_until_ns == 0 && r.intl_until_ns == 0, existing.is_some()) {
                (true, true) => maps.restrictions.remove(&net),
                (true, false) => Ok(()),
                (false, _) => maps.restrictions.set(&net, r),
            }
        }
        (Kind::Block, Target::Source(net)) => {
            if until != 0 {
                maps.blocklist.insert(
                    &net,
                    BlockEntry { expires_at_ns: until, reason: reason::OPERATOR, prefix_len: 0 },
                )
            } else if maps.blocklist.contains(&net) {
                maps.blocklist.remove(&net)
            } else {
                Ok(())
            }
        }
        (Kind::IdentitySuspend | Kind::IntlSuspend, Target::Identity(addr, tag)) => {
            let existing = maps.identities.get(addr, tag);
            let mut r = existing.unwrap_or_default();
            let (since, at) = (if until == 0 { 0 } else { a.imposed_at_ns }, until);
            if a.kind == Kind::IdentitySuspend {
                (r.until_ns, r.imposed_at_ns) = (at, since);
            } else {
                (r.intl_until_ns, r.intl_imposed_at_ns) = (at, since);
            }
            match (r.until_ns == 0 && r.intl_until_ns == 0, existing.is_some()) {
                (true, true) => maps.identities.remove(addr, tag),
                (true, false) => Ok(()),
                (false, _) => maps.identities.set(addr, tag, r),
            }
        }
        (Kind::CountryRestrict, Target::Country(cc)) => {
            let r = if until == 0 {
                CountryRestriction::default()
            } else {
                CountryRestriction {
                    until_ns: until,
                    imposed_at_ns: a.imposed_at_ns,
                    reason: a.reason.kernel_code(),
                    _reserved: 0,
                }
            };
            maps.set_country_restriction(cc, r)
        }
        _ => Ok(()),
    }
}

/// Applies the engine's decisions: writes the enforced ones into the kernel,
/// audits and counts every one.
pub(super) struct Actuator {
    auditor: Auditor,
    counts: metrics::DecisionCounts,
    /// Where restrictions and learned levels are kept across restarts.
    store: Store,
    /// When history was last pruned.
    pruned: std::sync::Mutex<Option<std::time::Instant>>,
    /// Where local decisions are shared (`--cluster-endpoints`).
    cluster: Option<super::cluster::Link>,
}

impl Actuator {
    pub(super) fn new(auditor: Auditor, store: Store, dry_run: bool) -> Self {
        let counts = metrics::DecisionCounts::with_automatic_impositions(dry_run);
        Self { auditor, counts, store, pruned: Default::default(), cluster: None }
    }

    /// Shares the decisions from now on with the cluster.
    pub(super) fn set_cluster(&mut self, link: super::cluster::Link) {
        self.cluster = Some(link);
    }

    pub(super) fn cluster(&self) -> Option<&super::cluster::Link> {
        self.cluster.as_ref()
    }

    /// A reload changed --dry-run: decisions from now on are audited and
    /// counted in the new mode.
    pub(super) fn set_dry_run(&mut self, dry_run: bool) {
        self.auditor.set_dry_run(dry_run);
        self.counts.add_automatic_impositions(dry_run);
    }

    pub(super) fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// Keeps what the detector learned (once per window); forgets what is
    /// older than its history once per long window.
    pub(super) fn persist_learned(&self, d: &mut crate::detect::Detector) {
        if let Err(e) = super::persist::save_learned(&self.store, d) {
            warn!("{e}");
        }
        let long = d.config().windows[crate::detect::SCALES - 1];
        let mut last = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t: std::time::Instant| t.elapsed() >= long) {
            super::persist::prune(&self.store, d);
            *last = Some(std::time::Instant::now());
        }
    }

    /// The decisions counted so far, for the metrics.
    pub(super) fn counts(&self) -> &metrics::DecisionCounts {
        &self.counts
    }

    /// Writes an enforced decision into the kernel and audits every decision.
    /// `event_at_ns`: when the kernel crossed the threshold this decision
    /// answers (the decision latency runs from it to the kernel write).
    pub(super) fn apply(&self, maps: &mut Maps, d: &Decision, event_at_ns: Option<u64>) {
        enforce(maps, d);
        let latency_us = event_at_ns.map(|t| monotonic_now_ns().saturating_sub(t) / 1000);
        self.keep(d);
        if let Some(link) = &self.cluster {
            link.decided(d);
        }
        self.counts.record(d, latency_us);
        self.auditor.record(d, latency_us);
    }

    /// A decision taken over from node `origin`: enforced and kept like a
    /// local one, audited with its origin, neither counted as this node's
    /// decision nor shared again.
    pub(super) fn apply_adopted(
        &self,
        maps: &mut Maps,
        d: &Decision,
        origin: &str,
        not_enforced: Option<&str>,
    ) {
        enforce(maps, d);
        self.keep(d);
        self.auditor.record_adopted(d, origin, not_enforced);
    }

    /// Keeps a decision in the state database.
    fn keep(&self, d: &Decision) {
        // Kept before it is audited: what the audit says is in force
        // survives a reboot.
        let kept = match d {
            Decision::Impose(a) => self
                .store
                .put_restriction(&super::persist::stored(a))
                .and_then(|()| self.store.put_offence(a.kind.name(), &a.target.to_string(), a.offence)),
            Decision::Extend(a) => self.store.put_restriction(&super::persist::stored(a)),
            Decision::Expire(a) | Decision::Lift(a, _) => self.store.remove_restriction(a.id),
            Decision::Alert { .. } => Ok(()),
        };
        if let Err(e) = kept {
            warn!("{e}");
        }
    }
}

/// Writes an enforced decision into (or out of) the kernel.
fn enforce(maps: &mut Maps, d: &Decision) {
    let written = match d {
        Decision::Impose(a) | Decision::Extend(a) if a.enforced => {
            write_restriction(maps, a, a.expires_at_ns)
        }
        Decision::Expire(a) | Decision::Lift(a, _) if a.enforced => write_restriction(maps, a, 0),
        _ => Ok(()),
    };
    if let Err(e) = written {
        warn!("applying a decision to the kernel failed: {e}");
    }
}

/// Makes the CLI-given blocks exactly `specs`: new entries are written before
/// stale ones are removed, so a prefix blocked before and after a restart is
/// never momentarily unblocked. Blocks imposed by other means are kept.
pub(super) fn apply_cli_blocks(
    maps: &mut Maps,
    specs: &[BlockSpec],
    default: Duration,
    allows: &[IpNet],
) -> anyhow::Result<()> {
    let now = monotonic_now_ns();
    for spec in specs {
        let (expires_at_ns, lasts) = match spec.duration {
            BlockDuration::Permanent => (NO_EXPIRY, "until removed".to_owned()),
            BlockDuration::Default => {
                (expiry_after(now, default), humantime::format_duration(default).to_string())
            }
            BlockDuration::For(d) => (expiry_after(now, d), humantime::format_duration(d).to_string()),
        };
        maps.blocklist.insert(&spec.net, BlockEntry { expires_at_ns, reason: reason::CLI, prefix_len: 0 })?;
        info!("block {} (reason cli), lasts {lasts}", spec.net);
        if spec.duration == BlockDuration::Permanent {
            warn!("block {} is permanent: it never lapses by itself", spec.net);
        }
        for allow in allows {
            if allow.contains(&spec.net) || spec.net.contains(allow) {
                warn!("block {} overlaps allow {allow}: the allowlist wins for {allow}", spec.net);
            }
        }
    }
    for (net, entry) in maps.blocklist.entries() {
        if entry.reason == reason::CLI && !specs.iter().any(|s| s.net == net) {
            maps.blocklist.remove(&net)?;
            info!("unblock {net}: no longer given with --block");
        }
    }
    Ok(())
}

/// Removes expired command-line and feed blocks (operator blocks are
/// lifted by the engine, which audits them); returns how many that were
/// not a feed's went (a feed may list the same prefix: it is written
/// again). Feed entries are not logged one by one: a feed's lapse is one
/// line ([`super::feeds::Feeds::lapse`]).
pub(super) fn remove_expired(maps: &mut Maps) -> usize {
    let now = monotonic_now_ns();
    let mut others = 0;
    for (net, entry) in maps.blocklist.expired(now) {
        if entry.reason != reason::OPERATOR {
            match maps.blocklist.remove(&net) {
                Ok(()) if entry.reason == reason::FEED => {}
                Ok(()) => {
                    others += 1;
                    info!("block {net} (reason {}) expired and was lifted", reason::name(entry.reason));
                }
                Err(e) => warn!("removing expired block {net}: {e}"),
            }
        }
    }
    others
}
