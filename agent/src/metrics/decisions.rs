//! The decision families: threshold events from the kernel, restrictions
//! in force, and the policy engine's decisions.

use std::sync::{Arc, Mutex, atomic::Ordering::Relaxed};

use prometheus::proto::{MetricFamily, MetricType};

use super::{Family, family, sample};
use crate::{
    events::EventCounts,
    maps::{BlockCounts, Maps},
};

pub(super) const EVENTS: Family = Family {
    name: "tollgate_threshold_events_total",
    help: "Sources reported by the kernel for crossing a per-window threshold, by kind.",
    kind: MetricType::COUNTER,
};
pub(super) const RESTRICTIONS_ACTIVE: Family = Family {
    name: "tollgate_restrictions_active",
    help: "Restrictions in force in the kernel now, by kind (intl-suspend: of sources and of lines).",
    kind: MetricType::GAUGE,
};
pub(super) const DECISIONS: Family = Family {
    name: "tollgate_decisions_total",
    help: "Decisions of the policy engine, by event (impose, extend, expire, lift, alert), kind and mode.",
    kind: MetricType::COUNTER,
};

pub(super) const RESTRICTION_DECISIONS: Family = Family {
    name: "tollgate_restriction_decisions_total",
    help: "Restrictions imposed, extended, lifted and expired, by event, kind, reason and mode (dry-run: what would have been restricted).",
    kind: MetricType::COUNTER,
};
pub(super) const LATENCY_NAME: &str = "tollgate_decision_latency_seconds";
const LATENCY_HELP: &str =
    "From the kernel's threshold crossing to the decision written into the kernel (and audited), in seconds.";
/// Decision latency buckets, 100 us to 1 s.
const LATENCY_BUCKETS: [f64; 10] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];

/// (event, kind, mode) of a decision.
type DecisionKey = (&'static str, &'static str, &'static str);
/// (event, kind, reason, mode) of a restriction's decision.
type RestrictionKey = (&'static str, &'static str, &'static str, &'static str);

#[derive(Default)]
struct Counts {
    decisions: std::collections::BTreeMap<DecisionKey, u64>,
    restrictions: std::collections::BTreeMap<RestrictionKey, u64>,
}

/// Decisions taken, by (event, kind, mode) and, for restrictions, by
/// reason too; and their latency.
#[derive(Clone)]
pub struct DecisionCounts {
    counts: Arc<Mutex<Counts>>,
    latency: prometheus::Histogram,
}

impl Default for DecisionCounts {
    fn default() -> Self {
        let opts =
            prometheus::HistogramOpts::new(LATENCY_NAME, LATENCY_HELP).buckets(LATENCY_BUCKETS.to_vec());
        Self {
            counts: Default::default(),
            latency: prometheus::Histogram::with_opts(opts).expect("a valid histogram"),
        }
    }
}

impl DecisionCounts {
    /// Counts that start at 0 for every automatic imposition this agent
    /// can decide (in its mode), so that Prometheus's `increase()` sees
    /// the first one: a series first scraped at 1 shows no increase.
    pub fn with_automatic_impositions(dry_run: bool) -> Self {
        let c = Self::default();
        c.add_automatic_impositions(dry_run);
        c
    }

    /// The same for a mode taken on later (a reload that changes
    /// --dry-run); counts already there are kept.
    pub fn add_automatic_impositions(&self, dry_run: bool) {
        let mode = if dry_run { "dry-run" } else { "enforce" };
        let automatic = [
            ("auth-suspend", "brute-force"),
            ("identity-suspend", "brute-force"),
            ("identity-suspend", "new-prefix"),
            ("intl-suspend", "intl-surge"),
            ("intl-suspend", "new-destination"),
            ("intl-suspend", "new-prefix"),
            ("intl-suspend", "identity-surge"),
            ("country-restrict", "country-surge"),
        ];
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, reason) in automatic {
            counts.restrictions.entry(("impose", kind, reason, mode)).or_insert(0);
            counts.decisions.entry(("impose", kind, mode)).or_insert(0);
        }
    }

    /// Counts `d`; `latency_us` is the time from the kernel event it
    /// answers, if any.
    pub fn record(&self, d: &crate::policy::Decision, latency_us: Option<u64>) {
        use crate::policy::Decision::*;
        let (event, kind, enforced) = match d {
            Impose(a) => ("impose", a.kind, a.enforced),
            Extend(a) => ("extend", a.kind, a.enforced),
            Expire(a) => ("expire", a.kind, a.enforced),
            Lift(a, _) => ("lift", a.kind, a.enforced),
            Alert { kind, .. } => ("alert", *kind, false),
        };
        let mode = if enforced || event == "alert" { "enforce" } else { "dry-run" };
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *c.decisions.entry((event, kind.name(), mode)).or_insert(0) += 1;
        if let Impose(a) | Extend(a) | Expire(a) | Lift(a, _) = d {
            *c.restrictions.entry((event, kind.name(), a.reason.name(), mode)).or_insert(0) += 1;
            if let (Some(us), "impose" | "extend") = (latency_us, event) {
                self.latency.observe(us as f64 / 1e6);
            }
        }
    }

    /// The decisions taken so far: by event, kind and mode; restrictions
    /// by reason too; the latency histogram.
    pub(super) fn families(&self) -> Vec<MetricFamily> {
        use prometheus::core::Collector as _;
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let decisions = family(
            &DECISIONS,
            c.decisions
                .iter()
                .map(|((event, kind, mode), n)| {
                    sample(
                        &[("event", event), ("kind", kind), ("mode", mode)],
                        *n as f64,
                        MetricType::COUNTER,
                    )
                })
                .collect(),
        );
        let restrictions = family(
            &RESTRICTION_DECISIONS,
            c.restrictions
                .iter()
                .map(|((event, kind, reason, mode), n)| {
                    let labels = [("event", *event), ("kind", *kind), ("reason", *reason), ("mode", *mode)];
                    sample(&labels, *n as f64, MetricType::COUNTER)
                })
                .collect(),
        );
        let mut out = vec![decisions, restrictions];
        out.extend(self.latency.collect());
        out
    }
}

pub(super) const DETECTIONS: Family = Family {
    name: "tollgate_detections_total",
    help: "The agent's own detections from call events, by rule (surge, new_destination, new_prefix), scope (source, identity, country) and scale (short, medium, long).",
    kind: MetricType::COUNTER,
};

/// The agent's detections so far.
pub(super) fn detections(events: &EventCounts) -> MetricFamily {
    let d = events.detections.lock().unwrap_or_else(|p| p.into_inner());
    family(
        &DETECTIONS,
        d.iter()
            .map(|((rule, scope, scale), n)| {
                sample(&[("rule", rule), ("scope", scope), ("scale", scale)], *n as f64, MetricType::COUNTER)
            })
            .collect(),
    )
}

/// Threshold events received, by kind.
pub(super) fn events(events: &EventCounts) -> MetricFamily {
    family(
        &EVENTS,
        vec![
            sample(
                &[("kind", "auth_failures")],
                events.auth_failures.load(Relaxed) as f64,
                MetricType::COUNTER,
            ),
            sample(
                &[("kind", "intl_invites")],
                events.intl_invites.load(Relaxed) as f64,
                MetricType::COUNTER,
            ),
            sample(
                &[("kind", "country_invites")],
                events.country_invites.load(Relaxed) as f64,
                MetricType::COUNTER,
            ),
        ],
    )
}

/// Restrictions in force in the kernel now, by kind.
pub(super) fn restrictions_active(maps: &Maps, blocks: BlockCounts, now: u64) -> MetricFamily {
    let restrictions = maps.restrictions.entries();
    // Identities: identity-suspend, and a line's intl-suspend (counted
    // with the sources').
    let lines = maps.identities.entries();
    let active = |f: fn(&tollgate_common::Restriction) -> u64| {
        restrictions.iter().filter(|(_, r)| f(r) > now).count() as f64
    };
    let countries_restricted =
        maps.country_restrictions().map(|v| v.iter().filter(|(_, r)| r.until_ns > now).count()).unwrap_or(0);
    family(
        &RESTRICTIONS_ACTIVE,
        vec![
            sample(&[("kind", "auth-suspend")], active(|r| r.auth_until_ns), MetricType::GAUGE),
            sample(
                &[("kind", "intl-suspend")],
                active(|r| r.intl_until_ns)
                    + lines.iter().filter(|(_, _, r)| r.intl_until_ns > now).count() as f64,
                MetricType::GAUGE,
            ),
            sample(&[("kind", "block")], blocks.operator_active as f64, MetricType::GAUGE),
            sample(&[("kind", "country-restrict")], countries_restricted as f64, MetricType::GAUGE),
            sample(
                &[("kind", "identity-suspend")],
                lines.iter().filter(|(_, _, r)| r.until_ns > now).count() as f64,
                MetricType::GAUGE,
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Kind, Reason};

    /// Every automatic imposition starts at 0, under the names the policy
    /// gives its kinds and reasons.
    #[test]
    fn automatic_impositions_start_at_zero() {
        let c = DecisionCounts::with_automatic_impositions(false);
        let counts = c.counts.lock().unwrap();
        for (kind, reason) in [
            (Kind::AuthSuspend, Reason::BruteForce),
            (Kind::IdentitySuspend, Reason::BruteForce),
            (Kind::IntlSuspend, Reason::IntlSurge),
            (Kind::IntlSuspend, Reason::IdentitySurge),
            (Kind::IntlSuspend, Reason::NewDestination),
            (Kind::CountryRestrict, Reason::CountrySurge),
        ] {
            assert_eq!(counts.restrictions.get(&("impose", kind.name(), reason.name(), "enforce")), Some(&0));
        }
    }
}
