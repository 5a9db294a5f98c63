//! The tracking and learning families: sources tracked, and the levels
//! learned for sources and countries.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::proto::{MetricFamily, MetricType};

use super::{Family, counter, family, sample};
use crate::{countries::Countries, maps::Maps};

pub(super) const SOURCES: Family = Family {
    name: "tollgate_sources_tracked",
    help: "Source addresses with SIP counters in the kernel (least recently seen are evicted at capacity), as last counted: see tollgate_sources_tracked_age_seconds.",
    kind: MetricType::GAUGE,
};
pub(super) const SOURCES_AGE: Family = Family {
    name: "tollgate_sources_tracked_age_seconds",
    help: "How long ago tollgate_sources_tracked was counted (at least every 10 s, at most 1% of a CPU: a million sources are counted about every 100 s).",
    kind: MetricType::GAUGE,
};
pub(super) const SOURCES_CAP: Family = Family {
    name: "tollgate_sources_capacity",
    help: "Most source addresses tracked at once (--max-sources).",
    kind: MetricType::GAUGE,
};

pub(super) const LEARNED: Family = Family {
    name: "tollgate_learned_levels",
    help: "Sources and countries judged by a threshold learned from their normal level (above the ceiling).",
    kind: MetricType::GAUGE,
};
pub(super) const COUNTRY_THRESHOLD: Family = Family {
    name: "tollgate_country_invite_threshold",
    help: "Learned per-window threshold of international INVITEs to a country (countries above the ceiling only).",
    kind: MetricType::GAUGE,
};

/// How many sources and countries are judged by a learned level, and the
/// learned country thresholds.
pub(super) fn levels(maps: &Maps, countries: &Countries) -> crate::error::Result<Vec<MetricFamily>> {
    let learned = maps.country_baselines()?;
    Ok(vec![
        family(
            &LEARNED,
            vec![
                sample(&[("scope", "source")], maps.intl_baselines().len() as f64, MetricType::GAUGE),
                sample(&[("scope", "country")], learned.len() as f64, MetricType::GAUGE),
            ],
        ),
        family(
            &COUNTRY_THRESHOLD,
            learned
                .iter()
                .map(|(cc, b)| {
                    let label = countries.label(*cc).unwrap_or("unassigned");
                    let code = cc.to_string();
                    sample(&[("country", label), ("cc", &code)], b.threshold as f64, MetricType::GAUGE)
                })
                .collect(),
        ),
    ])
}

/// Sources tracked as last counted and how long ago (none before the
/// first count), and the most that can be.
pub(super) fn sources(tracked: Option<(usize, Duration)>, max_sources: u32) -> Vec<MetricFamily> {
    let mut out = vec![counter(&SOURCES_CAP, &[], max_sources as u64)];
    if let Some((n, age)) = tracked {
        out.push(counter(&SOURCES, &[], n as u64));
        out.push(family(&SOURCES_AGE, vec![sample(&[], age.as_secs_f64(), MetricType::GAUGE)]));
    }
    out
}

/// Least time between two counts of the per-source map.
const COUNT_EVERY: Duration = Duration::from_secs(10);

/// The pause after a count that took `took`: at least [`COUNT_EVERY`], and
/// 99 times the count's own time, so counting takes at most 1% of a CPU
/// however many sources there are.
fn count_pause(took: Duration) -> Duration {
    (took * 99).max(COUNT_EVERY)
}

/// The number of sources in the per-source map, counted by its own thread
/// at a slow pace (see [`count_pause`]) rather than on every scrape: a key
/// walk is one system call per source (about 0.5 s for a million), and the
/// kernel keeps no count of an LRU map's entries (its evictions are not
/// counted anywhere a program or the agent can read).
#[derive(Clone, Default)]
pub struct SourcesCount(Arc<Mutex<Option<(usize, Instant)>>>);

impl SourcesCount {
    /// Starts counting through `maps` (a handle of its own, so a count never
    /// holds up a scrape or a decision).
    pub fn start(maps: Maps) -> std::io::Result<Self> {
        let count = Self::default();
        let shared = count.clone();
        std::thread::Builder::new().name("sources-count".to_owned()).spawn(move || {
            // The lowest priority for this thread alone (a thread id names
            // one thread to setpriority on Linux): the event path first.
            // SAFETY: plain system calls on this thread's own id.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
            loop {
                let started = Instant::now();
                let n = maps.sources_tracked();
                *shared.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((n, Instant::now()));
                std::thread::sleep(count_pause(started.elapsed()));
            }
        })?;
        Ok(count)
    }

    /// The last count and its age (None: not counted yet).
    pub fn read(&self) -> Option<(usize, Duration)> {
        let last = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        last.map(|(n, at)| (n, at.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_sources_takes_at_most_a_hundredth_of_a_cpu() {
        for took in [Duration::from_millis(3), Duration::from_millis(60), Duration::from_millis(900)] {
            let pause = count_pause(took);
            assert!(took.as_secs_f64() / (took + pause).as_secs_f64() <= 0.01 + 1e-9);
            assert!(pause >= COUNT_EVERY);
        }
        // A default-sized map (65,536 sources, ~40 ms to count) is counted
        // every 10 s; a million (~0.9 s on a loaded machine) every ~90 s.
        assert_eq!(count_pause(Duration::from_millis(40)), COUNT_EVERY);
        assert_eq!(count_pause(Duration::from_millis(900)), Duration::from_millis(89_100));
    }

    #[test]
    fn no_count_yet_is_no_sample() {
        let families = sources(None, 1024);
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].name(), "tollgate_sources_capacity");
        let names: Vec<String> =
            sources(Some((5, Duration::from_secs(2))), 1024).iter().map(|f| f.name().to_owned()).collect();
        assert_eq!(
            names,
            ["tollgate_sources_capacity", "tollgate_sources_tracked", "tollgate_sources_tracked_age_seconds"]
        );
    }
}
