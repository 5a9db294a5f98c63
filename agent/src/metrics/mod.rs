//! Prometheus metrics, read from the kernel's maps at scrape time (no second
//! copy of the counters in the agent), served over plain HTTP.
//!
//! Labels are bounded: verdict codes, interface names from the command line.
//! No address, number or user name ever becomes a label.

mod decisions;
mod enforcement;
mod http;
mod learning;
mod sip;

use std::sync::{Arc, Mutex};

use log::warn;
use prometheus::{
    core::{Collector, Desc},
    proto::{self, LabelPair, MetricFamily, MetricType},
};

pub use self::{
    decisions::DecisionCounts,
    http::{bind, render, serve},
    learning::SourcesCount,
};
use crate::{
    clock::monotonic_now_ns,
    countries::Countries,
    events::EventCounts,
    kernel::loader::MapSizes,
    maps::{BlockCounts, Maps},
};

/// One (name, help, type) family with its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
}

const SCRAPE_ERRORS: Family = Family {
    name: "tollgate_map_read_errors_total",
    help: "Scrapes during which a kernel map could not be read.",
    kind: MetricType::COUNTER,
};

const BUILD_INFO: Family = Family {
    name: "tollgate_build_info",
    help: "1, labelled with this agent's version and the kernel it runs on.",
    kind: MetricType::GAUGE,
};
const SCRAPE_DURATION: Family = Family {
    name: "tollgate_scrape_duration_seconds",
    help: "How long this answer took to read from the kernel maps, in seconds (its other families).",
    kind: MetricType::GAUGE,
};
const LATENCY: Family = Family {
    name: decisions::LATENCY_NAME,
    help: "See the histogram's own help.",
    kind: MetricType::HISTOGRAM,
};

const FAMILIES: [&Family; 37] = [
    &enforcement::INTERFACE_PACKETS,
    &BUILD_INFO,
    &SCRAPE_DURATION,
    &LATENCY,
    &decisions::RESTRICTION_DECISIONS,
    &sip::INTL_BLOCKED_BY_COUNTRY,
    &sip::RING_EVENTS,
    &enforcement::MAP_ENTRIES,
    &enforcement::MAP_CAPACITY,
    &learning::LEARNED,
    &learning::COUNTRY_THRESHOLD,
    &decisions::RESTRICTIONS_ACTIVE,
    &decisions::DECISIONS,
    &enforcement::PACKETS,
    &enforcement::BYTES,
    &enforcement::BLOCKLIST,
    &enforcement::BLOCKLIST_CAP,
    &enforcement::ALLOWLIST,
    &enforcement::ATTACHED,
    &SCRAPE_ERRORS,
    &sip::SIP_REQUESTS,
    &sip::REGISTERS,
    &sip::REGISTER_RESPONSES,
    &sip::OTHER_RESPONSES,
    &sip::INVITES,
    &sip::INTL_BY_COUNTRY,
    &sip::KEEPALIVES,
    &sip::UNPARSED,
    &decisions::EVENTS,
    &sip::EVENTS_LOST,
    &sip::INTL_CALLS,
    &sip::INTL_REPEATS,
    &sip::CALL_EVENTS_LOST,
    &decisions::DETECTIONS,
    &learning::SOURCES,
    &learning::SOURCES_CAP,
    &learning::SOURCES_AGE,
];

fn counter(f: &Family, labels: &[(&str, &str)], v: u64) -> MetricFamily {
    family(f, vec![sample(labels, v as f64, f.kind)])
}

fn sample(labels: &[(&str, &str)], value: f64, kind: MetricType) -> proto::Metric {
    let mut m = proto::Metric::default();
    let pairs: Vec<LabelPair> = labels
        .iter()
        .map(|(k, v)| {
            let mut p = LabelPair::default();
            p.set_name((*k).to_owned());
            p.set_value((*v).to_owned());
            p
        })
        .collect();
    m.set_label(pairs);
    match kind {
        MetricType::COUNTER => {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    m
}

fn family(f: &Family, samples: Vec<proto::Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(f.name.to_owned());
    mf.set_help(f.help.to_owned());
    mf.set_field_type(f.kind);
    mf.set_metric(samples);
    mf
}

/// Collects kernel state on every scrape.
pub struct KernelCollector {
    maps: Arc<Mutex<Maps>>,
    attached: Vec<(String, String)>,
    countries: Countries,
    events: EventCounts,
    decisions: DecisionCounts,
    sizes: MapSizes,
    /// The per-source map's size, counted off the scrape path.
    sources: SourcesCount,
    descs: Vec<Desc>,
    read_errors: std::sync::atomic::AtomicU64,
    /// The maps' writer, for its copy of the blocklist ([`Self::with_writer`]).
    writer: Option<Arc<Mutex<Maps>>>,
    /// The running kernel's release (`uname -r`).
    kernel: String,
}

impl KernelCollector {
    /// The blocklist's figures come from the writer's copy of it
    /// ([`crate::maps::Blocklist::counts`]) rather than a read of the map.
    pub fn with_writer(mut self, writer: Arc<Mutex<Maps>>) -> Self {
        self.writer = Some(writer);
        self
    }

    pub fn new(
        maps: Arc<Mutex<Maps>>,
        attached: Vec<(String, String)>,
        countries: Countries,
        events: EventCounts,
        decisions: DecisionCounts,
        sizes: MapSizes,
        sources: SourcesCount,
    ) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|f| Desc::new(f.name.to_owned(), f.help.to_owned(), vec![], Default::default()))
            .collect::<Result<_, _>>()
            .expect("metric names are valid");
        Self {
            maps,
            attached,
            countries,
            events,
            decisions,
            sizes,
            sources,
            descs,
            writer: None,
            read_errors: Default::default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
        }
    }
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = monotonic_now_ns();
        let now = monotonic_now_ns();
        // The writer's copy of the blocklist, if it lent it: no map read.
        let blocks = self
            .writer
            .as_ref()
            .and_then(|w| w.lock().unwrap_or_else(|p| p.into_inner()).blocklist.counts(now));
        let maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let blocks = blocks.unwrap_or_else(|| BlockCounts::of(&maps.blocklist.entries(), now));
        let mut out = Vec::new();
        self.read(&mut out, enforcement::verdicts(&maps));
        out.extend(enforcement::lists(&maps, blocks, &self.attached, self.sizes.blocklist_capacity));
        out.push(enforcement::interfaces(&maps, &self.attached));
        self.read(&mut out, sip::families(&maps, &self.countries, &self.events));
        out.push(decisions::events(&self.events));
        out.push(decisions::detections(&self.events));
        out.push(decisions::restrictions_active(&maps, blocks, now));
        out.extend(self.decisions.families());
        self.read(&mut out, learning::levels(&maps, &self.countries));
        let tracked = self.sources.read();
        out.extend(learning::sources(tracked, self.sizes.max_sources));
        out.extend(enforcement::map_pressure(&maps, blocks.entries, tracked.map(|t| t.0), self.sizes));
        out.push(family(
            &SCRAPE_ERRORS,
            vec![sample(&[], self.read_errors.load(Relaxed) as f64, MetricType::COUNTER)],
        ));
        out.push(family(
            &BUILD_INFO,
            vec![sample(
                &[("version", env!("CARGO_PKG_VERSION")), ("kernel", &self.kernel)],
                1.0,
                MetricType::GAUGE,
            )],
        ));
        let took = monotonic_now_ns().saturating_sub(started) as f64 / 1e9;
        out.push(family(&SCRAPE_DURATION, vec![sample(&[], took, MetricType::GAUGE)]));
        out
    }
}

impl KernelCollector {
    /// Adds the families read, or counts a scrape whose map read failed.
    fn read(&self, out: &mut Vec<MetricFamily>, families: crate::error::Result<Vec<MetricFamily>>) {
        match families {
            Ok(mut families) => out.append(&mut families),
            Err(e) => {
                warn!("metrics: {e}");
                self.read_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}
