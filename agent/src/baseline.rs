//! Learns the normal ("peacetime") number of international INVITEs per
//! window of each source, and of each destination country, and turns it
//! into a personal reporting threshold for the kernel:
//! `max(ceiling, ratio x peacetime)`. Something with no history is judged
//! by the ceiling alone (`--intl-invite-threshold`,
//! `--country-invite-threshold`); a PBX, or a country, that normally sees
//! many international calls is reported only at `ratio` times its usual
//! number. Decisions stay event-driven: the kernel compares each window's
//! count with the threshold as it counts.
//!
//! Pure: fed once per window with cumulative counts. Windows that look
//! like abuse (at or above the threshold in force) or during which the
//! source or country was restricted are not learned from, so a fraud burst
//! does not become the new normal; a slow ramp-up is damped by the EWMA
//! weight. What is learned above the ceiling is written to pinned maps
//! ([`Change::Set`]), from which a restarted agent [`Baselines::adopt`]s it.

use std::{collections::HashMap, hash::Hash};

use tollgate_common::Baseline;

#[derive(Clone, Debug)]
pub struct BaselineConfig {
    /// The global threshold; 0 disables learning.
    pub ceiling: u32,
    /// How many times its peacetime level must be reached (`--surge-ratio`).
    pub ratio: f64,
    /// EWMA weight of the newest window (`--baseline-weight`).
    pub weight: f64,
    /// Windows observed before the learned level is trusted.
    pub min_windows: u32,
}

#[derive(Clone, Debug, Default)]
struct Learned {
    peacetime: f64,
    last_total: u64,
    /// The count of the last window.
    last_window: Option<u64>,
    windows: u32,
    /// Whether the kernel has this entry.
    written: bool,
}

/// A change to write to the kernel's learned thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<K> {
    Set(K, Baseline),
    Remove(K),
}

pub struct Baselines<K> {
    cfg: BaselineConfig,
    learned: HashMap<K, Learned>,
}

impl<K: Copy + Eq + Hash> Baselines<K> {
    pub fn new(cfg: BaselineConfig) -> Self {
        Self { cfg, learned: HashMap::new() }
    }

    /// Takes over what a previous agent learned (from the pinned map);
    /// `total` is the key's cumulative count now.
    pub fn adopt(&mut self, key: K, b: Baseline, total: u64) {
        let peacetime = b.peacetime_milli as f64 / 1000.0;
        let l =
            Learned { peacetime, last_total: total, last_window: None, windows: b.windows, written: true };
        self.learned.insert(key, l);
    }

    /// The global threshold, below which no learned one goes.
    pub fn ceiling(&self) -> u32 {
        self.cfg.ceiling
    }

    /// How many keys have a trusted level.
    pub fn trusted(&self) -> usize {
        self.learned.values().filter(|l| l.windows >= self.cfg.min_windows).count()
    }

    /// The learned peacetime level of `key`, once trusted.
    pub fn peacetime(&self, key: K) -> Option<f64> {
        self.learned.get(&key).filter(|l| l.windows >= self.cfg.min_windows).map(|l| l.peacetime)
    }

    /// How many events `key` had in the last window (None before a whole
    /// window has been seen).
    pub fn last_window(&self, key: K) -> Option<u64> {
        self.learned.get(&key).and_then(|l| l.last_window)
    }

    /// The threshold in force for `key`.
    pub fn threshold(&self, key: K) -> u32 {
        self.learned.get(&key).map_or(self.cfg.ceiling, |l| self.threshold_of(l))
    }

    fn threshold_of(&self, l: &Learned) -> u32 {
        if l.windows < self.cfg.min_windows {
            return self.cfg.ceiling;
        }
        let learned = (self.cfg.ratio * l.peacetime).ceil();
        (learned.min(u32::MAX as f64) as u32).max(self.cfg.ceiling)
    }

    /// One window has passed. `totals` are the cumulative counts of every
    /// key still tracked (a key missing from them was evicted and is
    /// forgotten); `restricted` tells which keys must not be learned from
    /// this window. Returns what to write to the kernel.
    pub fn window_passed(&mut self, totals: &[(K, u64)], restricted: impl Fn(K) -> bool) -> Vec<Change<K>> {
        if self.cfg.ceiling == 0 {
            return Vec::new();
        }
        let mut changes = Vec::new();
        let seen: std::collections::HashSet<K> = totals.iter().map(|(k, _)| *k).collect();
        self.learned.retain(|k, l| {
            let keep = seen.contains(k);
            if !keep && l.written {
                changes.push(Change::Remove(*k));
            }
            keep
        });
        for &(key, total) in totals {
            let Some(l) = self.learned.get(&key) else {
                // First sight: no whole window is behind this total yet.
                self.learned.insert(key, Learned { last_total: total, ..Learned::default() });
                continue;
            };
            let in_force = self.threshold_of(l);
            let (weight, ceiling) = (self.cfg.weight, self.cfg.ceiling);
            let l = self.learned.get_mut(&key).expect("present");
            // A total that went down: the kernel re-created the entry.
            let delta = total.checked_sub(l.last_total).unwrap_or(total);
            l.last_total = total;
            l.last_window = Some(delta);
            if delta >= u64::from(in_force) || restricted(key) {
                continue;
            }
            l.peacetime = if l.windows == 0 {
                delta as f64
            } else {
                weight * delta as f64 + (1.0 - weight) * l.peacetime
            };
            l.windows = l.windows.saturating_add(1);
            let l = self.learned[&key].clone();
            let threshold = self.threshold_of(&l);
            if threshold > ceiling {
                let peacetime_milli = (l.peacetime * 1000.0).round() as u64;
                changes.push(Change::Set(key, Baseline { threshold, windows: l.windows, peacetime_milli }));
            } else if l.written {
                changes.push(Change::Remove(key));
            }
            self.learned.get_mut(&key).expect("present").written = threshold > ceiling;
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn cfg() -> BaselineConfig {
        BaselineConfig { ceiling: 30, ratio: 4.0, weight: 0.2, min_windows: 3 }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn thresholds(changes: &[Change<IpAddr>]) -> Vec<u32> {
        changes
            .iter()
            .map(|c| match c {
                Change::Set(_, b) => b.threshold,
                Change::Remove(_) => 0,
            })
            .collect()
    }

    /// Feeds `per_window` events per window for `windows`.
    fn feed<K: Copy + Eq + Hash>(
        b: &mut Baselines<K>,
        key: K,
        total: &mut u64,
        per_window: u64,
        windows: usize,
    ) -> Vec<Change<K>> {
        let mut all = Vec::new();
        for _ in 0..windows {
            *total += per_window;
            all.extend(b.window_passed(&[(key, *total)], |_| false));
        }
        all
    }

    #[test]
    fn a_busy_pbx_gets_a_threshold_above_its_normal_volume() {
        let mut b = Baselines::new(cfg());
        let pbx = ip("198.51.100.10");
        let mut total = 0;
        b.window_passed(&[(pbx, 0)], |_| false);
        let changes = feed(&mut b, pbx, &mut total, 20, 5);
        // 20 a window is normal: reported only at 4 x 20 = 80.
        assert_eq!(thresholds(&changes), vec![80, 80, 80]);
        assert_eq!(
            changes.last(),
            Some(&Change::Set(pbx, Baseline { threshold: 80, windows: 5, peacetime_milli: 20_000 }))
        );
        assert!((b.peacetime(pbx).unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(b.threshold(pbx), 80);
        assert_eq!(b.trusted(), 1);
    }

    #[test]
    fn a_quiet_line_keeps_the_ceiling_and_nothing_is_written() {
        let mut b = Baselines::new(cfg());
        let line = ip("198.51.100.11");
        let mut total = 0;
        b.window_passed(&[(line, 0)], |_| false);
        assert!(feed(&mut b, line, &mut total, 1, 10).is_empty(), "4 x 1 < 30: the ceiling applies");
        assert_eq!(b.threshold(line), 30);
        assert_eq!(b.threshold(ip("192.0.2.99")), 30, "never seen: the ceiling");
    }

    #[test]
    fn history_is_needed_before_the_level_is_trusted() {
        let mut b = Baselines::new(cfg());
        let pbx = ip("198.51.100.12");
        let mut total = 0;
        b.window_passed(&[(pbx, 0)], |_| false);
        assert!(feed(&mut b, pbx, &mut total, 20, 2).is_empty());
        assert!(b.peacetime(pbx).is_none());
        assert_eq!(thresholds(&feed(&mut b, pbx, &mut total, 20, 1)), vec![80]);
    }

    #[test]
    fn a_fraud_burst_is_not_learned_as_normal() {
        let mut b = Baselines::new(cfg());
        let pbx = ip("198.51.100.13");
        let mut total = 0;
        b.window_passed(&[(pbx, 0)], |_| false);
        feed(&mut b, pbx, &mut total, 10, 5); // peacetime 10 -> threshold 40
        let before = b.peacetime(pbx).unwrap();
        feed(&mut b, pbx, &mut total, 500, 3); // the burst: at or above the threshold
        assert_eq!(b.peacetime(pbx).unwrap(), before);
        // Neither are windows spent restricted.
        total += 5;
        b.window_passed(&[(pbx, total)], |_| true);
        assert_eq!(b.peacetime(pbx).unwrap(), before);
    }

    #[test]
    fn a_line_that_quietens_returns_to_the_ceiling() {
        let mut b = Baselines::new(cfg());
        let pbx = ip("198.51.100.14");
        let mut total = 0;
        b.window_passed(&[(pbx, 0)], |_| false);
        feed(&mut b, pbx, &mut total, 20, 4);
        let changes = feed(&mut b, pbx, &mut total, 0, 20);
        assert_eq!(changes.last(), Some(&Change::Remove(pbx)));
        assert_eq!(changes.iter().filter(|c| matches!(c, Change::Remove(_))).count(), 1, "{changes:?}");
        assert_eq!(b.threshold(pbx), 30);
    }

    #[test]
    fn evicted_sources_are_forgotten_and_their_threshold_removed() {
        let mut b = Baselines::new(cfg());
        let pbx = ip("2001:db8:2::10");
        let mut total = 0;
        b.window_passed(&[(pbx, 0)], |_| false);
        feed(&mut b, pbx, &mut total, 20, 4);
        assert_eq!(b.window_passed(&[], |_| false), vec![Change::Remove(pbx)]);
        assert!(b.peacetime(pbx).is_none());
    }

    #[test]
    fn a_restarted_agent_goes_on_from_the_adopted_level() {
        let mut b = Baselines::new(cfg());
        let pbx = ip("198.51.100.15");
        b.adopt(pbx, Baseline { threshold: 80, windows: 9, peacetime_milli: 20_000 }, 1000);
        assert_eq!(b.threshold(pbx), 80);
        // The next window counts from the adopted total, not from zero.
        let changes = b.window_passed(&[(pbx, 1020)], |_| false);
        assert_eq!(
            changes,
            vec![Change::Set(pbx, Baseline { threshold: 80, windows: 10, peacetime_milli: 20_000 })]
        );
    }

    #[test]
    fn countries_are_learned_the_same_way() {
        let mut b = Baselines::new(BaselineConfig { ceiling: 100, ..cfg() });
        let mut total = 0;
        b.window_passed(&[(1u16, 0)], |_| false);
        // Normal trade with +1: 50 calls a window -> reported at 200.
        assert_eq!(feed(&mut b, 1u16, &mut total, 50, 3).len(), 1);
        assert_eq!(b.threshold(1), 200);
        assert_eq!(b.threshold(232), 100);
    }

    #[test]
    fn disabled_when_the_ceiling_is_zero() {
        let mut b = Baselines::new(BaselineConfig { ceiling: 0, ..cfg() });
        assert!(b.window_passed(&[(ip("192.0.2.1"), 100)], |_| false).is_empty());
    }
}
