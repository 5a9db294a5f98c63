//! The cluster's metrics, read from the session's state at scrape time.
//! Exported without a cluster too (enabled 0, connected 0), so the alert
//! rules' series exist on every agent.

use prometheus::{
    core::{Collector, Desc},
    proto::{self, MetricFamily, MetricType},
};

use super::Shared;
use crate::store::now_ms;

/// (name, help, type)
const FAMILIES: [(&str, &str, MetricType); 11] = [
    (
        "tollgate_cluster_enabled",
        "1 when this agent shares restrictions through etcd (--cluster-endpoints).",
        MetricType::GAUGE,
    ),
    (
        "tollgate_cluster_connected",
        "1 while the etcd session is up (0 without a cluster).",
        MetricType::GAUGE,
    ),
    (
        "tollgate_cluster_last_sync_age_seconds",
        "Seconds since the last successful exchange with etcd (since the start before any; 0 without a cluster).",
        MetricType::GAUGE,
    ),
    (
        "tollgate_cluster_members",
        "Nodes whose key is alive in etcd, as last read (this one included).",
        MetricType::GAUGE,
    ),
    ("tollgate_cluster_queued", "Local decisions waiting for etcd to be back.", MetricType::GAUGE),
    (
        "tollgate_cluster_published_total",
        "Restrictions this node wrote to etcd (impositions and extensions).",
        MetricType::COUNTER,
    ),
    (
        "tollgate_cluster_adopted_total",
        "Restrictions decided on other nodes and taken over here.",
        MetricType::COUNTER,
    ),
    (
        "tollgate_cluster_summed_countries",
        "Destination countries whose international call counts on other nodes are summed with this node's.",
        MetricType::GAUGE,
    ),
    (
        "tollgate_cluster_summed_sources",
        "Sources whose international call counts on other nodes are summed with this node's.",
        MetricType::GAUGE,
    ),
    (
        "tollgate_cluster_counting_nodes",
        "Other nodes whose published counts are summed with this node's.",
        MetricType::GAUGE,
    ),
    (
        "tollgate_cluster_counts_published_total",
        "Times this node wrote its counts to etcd.",
        MetricType::COUNTER,
    ),
];

pub struct ClusterCollector {
    shared: Shared,
    descs: Vec<Desc>,
}

impl ClusterCollector {
    pub fn new(shared: Shared) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| {
                Desc::new((*name).into(), (*help).into(), vec![], Default::default())
                    .expect("valid metric names")
            })
            .collect();
        Self { shared, descs }
    }
}

fn family(name: &str, help: &str, kind: MetricType, value: f64) -> MetricFamily {
    let mut m = proto::Metric::default();
    if kind == MetricType::COUNTER {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    let mut mf = MetricFamily::default();
    mf.set_name(name.to_owned());
    mf.set_help(help.to_owned());
    mf.set_field_type(kind);
    mf.set_metric(vec![m]);
    mf
}

impl Collector for ClusterCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let st = self.shared.lock();
        let age = if st.enabled {
            let since = st.last_sync_ms.unwrap_or(st.started_ms);
            (now_ms() - since).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        let values = [
            f64::from(u8::from(st.enabled)),
            f64::from(u8::from(st.connected)),
            age,
            st.members.len() as f64,
            st.queued as f64,
            st.published as f64,
            st.adopted as f64,
            st.summed_countries as f64,
            st.summed_sources as f64,
            st.counting_nodes as f64,
            st.counts_published as f64,
        ];
        FAMILIES.iter().zip(values).map(|((name, help, kind), v)| family(name, help, *kind, v)).collect()
    }
}
