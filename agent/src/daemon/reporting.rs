//! The reports of counter-measures 3 and 4 in the daemon (computed by
//! [`crate::reports`]): per-country hourly counts, read from the kernel's
//! counters and stored once a window, and the answers to `tollgate report`
//! and `GET /countries.json`.

use std::time::Duration;

use log::warn;

use super::{learning::wall_ms, persist};
use crate::{
    countries::Countries,
    detect::Detector,
    maps::Maps,
    policy::{Decision, Engine},
    reports::{self, CountriesReport, CountryTally, DormantReport, InForce},
    store::{HOUR_MS, Store, now_ms},
};

/// The kernel's cumulative per-country counters: (call attempts, calls
/// dropped), non-zero countries only.
pub(super) type Counters = (Vec<(u16, u64)>, Vec<(u16, u64)>);

/// Reads the kernel's per-country counters.
pub(super) fn counters(maps: &Maps) -> crate::error::Result<Counters> {
    Ok((maps.country_invites()?, maps.country_blocked()?))
}

pub(super) struct Reporting {
    tally: CountryTally,
    labels: Countries,
}

impl Reporting {
    /// Goes on from the readings the database holds, reading the kernel's
    /// counters now: what they grew by while no agent ran is counted in
    /// this hour, once.
    pub(super) fn start(store: &Store, maps: &Maps) -> anyhow::Result<Self> {
        let (attempts, blocked) = counters(maps)?;
        let tally = CountryTally::resume(store.country_readings()?, now_ms(), &attempts, &blocked);
        let mut reporting = Self { tally, labels: Countries::shipped() };
        reporting.save(store);
        Ok(reporting)
    }

    /// A surge to `cc` was detected.
    pub(super) fn surge(&mut self, cc: u16) {
        self.tally.surge(cc, now_ms());
    }

    /// A decision about to be applied (restrictions imposed count).
    pub(super) fn decision(&mut self, d: &Decision) {
        self.tally.decision(d, now_ms());
    }

    /// A window passed: the counters' growth (if they could be read) is
    /// counted and, with the surges and restrictions since the last
    /// window, stored.
    pub(super) fn window(&mut self, store: &Store, counters: Option<Counters>) {
        if let Some((attempts, blocked)) = counters {
            self.tally.reading(now_ms(), &attempts, &blocked);
        }
        self.save(store);
    }

    /// Stores what was counted since the last save; kept for the next try
    /// if the database refuses it.
    fn save(&mut self, store: &Store) {
        let (hours, readings) = self.tally.unsaved();
        if hours.is_empty() && readings.is_none() {
            return;
        }
        match store.add_country_hours(&hours, readings) {
            Ok(()) => self.tally.saved(),
            Err(e) => warn!("{e}"),
        }
    }

    /// Counter-measure 3 over the last `since`.
    pub(super) fn dormant(
        &self,
        store: &Store,
        detector: &Detector,
        engine: &Engine,
        since: Duration,
    ) -> crate::error::Result<DormantReport> {
        let stored = store.lines()?.iter().filter_map(persist::line_record).collect::<Vec<_>>();
        let lines = reports::merged_lines(stored, detector.lines());
        Ok(reports::dormant(&lines, &in_force(engine), store.history()?, now_ms(), since))
    }

    /// Counter-measure 4 over the whole hours since `since` ago, the
    /// current hour's counts not stored yet included.
    pub(super) fn countries(
        &self,
        store: &Store,
        maps: &Maps,
        engine: &Engine,
        since: Duration,
    ) -> crate::error::Result<CountriesReport> {
        let now = now_ms();
        let since_ms = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
        // The report's own bound is exact; this only narrows the read.
        let from = reports::hour_of(now.saturating_sub(since_ms).max(0)).saturating_sub(HOUR_MS);
        let mut hours = store.country_hours(from)?;
        let (attempts, blocked) = counters(maps)?;
        hours.extend(self.tally.current(now, &attempts, &blocked));
        Ok(reports::countries(&hours, &in_force(engine), &self.labels, store.history()?, now, since))
    }
}

/// The restrictions in force, with their wall-clock expiry.
fn in_force(engine: &Engine) -> Vec<InForce> {
    engine
        .active()
        .iter()
        .map(|a| InForce {
            id: a.id,
            kind: a.kind,
            target: a.target,
            until_ms: wall_ms(a.expires_at_ns),
            enforced: a.enforced,
        })
        .collect()
}
