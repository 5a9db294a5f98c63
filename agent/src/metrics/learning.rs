//! The tracking and learning families: sources tracked, and the levels
//! learned for sources and countries.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Family, counter, family, sample};
use crate::{countries::Countries, maps::Maps};

pub(super) const SOURCES: Family = Family {
    name: "tollgate_sources_tracked",
    help: "Source addresses with SIP counters in the kernel (least recently seen are evicted at capacity).",
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

/// Sources tracked now, and the most that can be.
pub(super) fn sources(tracked: usize, max_sources: u32) -> Vec<MetricFamily> {
    vec![counter(&SOURCES, &[], tracked as u64), counter(&SOURCES_CAP, &[], max_sources as u64)]
}
