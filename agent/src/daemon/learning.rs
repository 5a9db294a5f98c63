//! The learning of normal levels: once per window the per-source and
//! per-country international INVITE counts are read, the learned levels
//! written to the kernel's thresholds, and calm countries released.

use std::{net::IpAddr, time::Duration};

use crate::events::EventKind;
use log::{info, warn};
use tollgate_common::Baseline;

use crate::{
    baseline::{BaselineConfig, Baselines, Change},
    cli::DetectArgs,
    clock::monotonic_now_ns,
    maps::{Maps, key_addr},
    policy::{AuthEvidence, Decision, Engine, Evidence, Kind, Target},
};

/// The cumulative international INVITE counts of every tracked source and
/// country at the end of a learning window.
pub(super) struct Snapshot {
    at_ns: u64,
    sources: Vec<(IpAddr, u64)>,
    /// None when the map could not be read (then countries learn nothing).
    countries: Option<Vec<(u16, u64)>>,
}

impl Snapshot {
    pub(super) fn read(maps: &Maps) -> Self {
        let at_ns = monotonic_now_ns();
        let sources = maps.sources().into_iter().map(|(a, s)| (a, s.intl_invites)).collect();
        let countries = maps.country_invites().map_err(|e| warn!("{e}")).ok();
        Self { at_ns, sources, countries }
    }
}

/// The learned normal levels of sources and countries, kept in step with
/// the kernel's thresholds once per window.
pub(super) struct Learned {
    sources: Baselines<IpAddr>,
    countries: Baselines<u16>,
    /// When the current learning window began (CLOCK_MONOTONIC ns).
    window_start_ns: u64,
}

impl Learned {
    pub(super) fn new(d: &DetectArgs) -> Self {
        let cfg = |ceiling| BaselineConfig {
            ceiling,
            ratio: d.surge_ratio,
            weight: d.baseline_weight,
            min_windows: d.baseline_min_windows,
        };
        Self {
            sources: Baselines::new(cfg(d.intl_invite_threshold)),
            countries: Baselines::new(cfg(d.country_invite_threshold)),
            window_start_ns: monotonic_now_ns(),
        }
    }

    /// Takes over what the previous agent learned (pinned maps).
    pub(super) fn adopt(&mut self, maps: &Maps) {
        let sources = maps.intl_baselines();
        for (addr, b) in &sources {
            let total = maps.source(*addr).map_or(0, |s| s.intl_invites);
            self.sources.adopt(*addr, *b, total);
        }
        let countries = maps.country_baselines().unwrap_or_default();
        let totals = maps.country_invites().unwrap_or_default();
        for (cc, b) in &countries {
            let total = totals.iter().find(|(c, _)| c == cc).map_or(0, |(_, n)| *n);
            self.countries.adopt(*cc, *b, total);
        }
        if !sources.is_empty() || !countries.is_empty() {
            info!(
                "adopted the learned peacetime levels of {} sources and {} countries",
                sources.len(),
                countries.len()
            );
        }
    }

    /// The engine's decisions on a kernel event, with its evidence.
    pub(super) fn decide(
        &self,
        engine: &mut Engine,
        now: u64,
        e: &tollgate_common::ThresholdEvent,
        window: Duration,
    ) -> Vec<Decision> {
        let addr = key_addr(&e.addr);
        // The level is evidence only when the threshold came from it.
        let peacetime = |p: Option<f64>, ceiling: u32| {
            p.filter(|_| e.threshold > ceiling).map(|p| (p * 1000.0).round() as u64)
        };
        let mut evidence = Evidence { count: e.count, threshold: e.threshold, window, ..Evidence::default() };
        match EventKind::from_code(e.kind) {
            Some(EventKind::CountryInvites) => {
                evidence.peacetime_milli =
                    peacetime(self.countries.peacetime(e.cc), self.countries.ceiling());
                evidence.sources = Some(u32::from(e.sources));
                engine.on_country_surge(now, e.cc, evidence)
            }
            Some(EventKind::IntlInvites) => {
                evidence.peacetime_milli = peacetime(self.sources.peacetime(addr), self.sources.ceiling());
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

    /// A window passed: learn from it, write the thresholds to the kernel,
    /// and lift the automatic restrictions of countries that calmed down.
    pub(super) fn window_passed(
        &mut self,
        snapshot: Snapshot,
        m: &mut Maps,
        engine: &mut Engine,
    ) -> Vec<Decision> {
        let restricted =
            |kind: Kind, target: Target| engine.active().iter().any(|r| r.kind == kind && r.target == target);
        let changes = self
            .sources
            .window_passed(&snapshot.sources, |a| restricted(Kind::IntlSuspend, Target::Source(a.into())));
        for change in changes {
            let (addr, b) = match change {
                Change::Set(a, b) => (a, Some(b)),
                Change::Remove(a) => (a, None),
            };
            if let Err(e) = m.set_intl_baseline(addr, b) {
                warn!("{e}");
            }
        }
        let Some(totals) = snapshot.countries else { return Vec::new() };
        let changes = self
            .countries
            .window_passed(&totals, |cc| restricted(Kind::CountryRestrict, Target::Country(cc)));
        for change in changes {
            let (cc, b) = match change {
                Change::Set(cc, b) => (cc, b),
                Change::Remove(cc) => (cc, Baseline::default()),
            };
            if let Err(e) = m.set_country_baseline(cc, b) {
                warn!("{e}");
            }
        }
        let window_start = std::mem::replace(&mut self.window_start_ns, snapshot.at_ns);
        let calm = |cc: u16| {
            self.countries.last_window(cc).is_some_and(|n| n < u64::from(self.countries.threshold(cc)))
        };
        totals
            .iter()
            .filter(|(cc, _)| calm(*cc))
            .flat_map(|(cc, _)| engine.country_calm(*cc, window_start))
            .collect()
    }
}
