//! Carrier-wide enforcement: the edge nodes share their restrictions
//! through etcd (issue 16). No replication protocol of our own: as in
//! Cilium's clustermesh, every restriction in force is a key bound to a
//! lease that ends shortly after its expiry, every node watches the
//! restrictions' prefix (resuming from the last revision it saw) and applies
//! what it sees through its own engine, and each node keeps a key of its
//! own alive while it runs. Losing etcd never stops enforcement: the kernel
//! maps go on with their expiries, and what was decided meanwhile is
//! published when the store is back ([`session`]).
//!
//! Without `--cluster-endpoints` nothing here runs.

pub mod counts;
pub mod metrics;
pub mod record;
mod session;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use clap::Args;
use tokio::sync::mpsc;

pub use self::record::{NodeRecord, Record};

/// What the session keeps in --state-dir across restarts: the records it
/// last knew in the store, and the decisions waiting for it.
pub const STATE_FILE: &str = "cluster.json";

/// How a restriction lifted on another node is audited here (`lifted_by`).
pub const LIFTED_ELSEWHERE: &str = "cluster";

/// The cluster flags of `tollgate run`. All need a restart.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// Share restrictions with the other edge nodes through etcd at these
    /// endpoints (comma-separated or repeated), e.g.
    /// `http://192.0.2.10:2379,http://192.0.2.11:2379`; `https://` with
    /// --cluster-ca. Without it the agent works alone.
    #[arg(long, value_name = "URL,...", value_delimiter = ',', value_parser = parse_endpoint)]
    pub cluster_endpoints: Vec<String>,

    /// This node's name in the cluster: its key, and the origin shown on
    /// the restrictions it decides. Default: the hostname.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub node_name: Option<String>,

    /// The cluster's name, for the default --cluster-prefix.
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = parse_name)]
    pub cluster_name: String,

    /// Where in etcd the cluster's keys are. Default:
    /// `tollgate/v1/<--cluster-name>`.
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
    pub cluster_prefix: Option<String>,

    /// The CA certificate (PEM) etcd's server certificates are checked with.
    #[arg(long, value_name = "PATH")]
    pub cluster_ca: Option<PathBuf>,

    /// This node's client certificate (PEM) for etcd; needs --cluster-key.
    #[arg(long, value_name = "PATH")]
    pub cluster_cert: Option<PathBuf>,

    /// The private key (PEM) of --cluster-cert.
    #[arg(long, value_name = "PATH")]
    pub cluster_key: Option<PathBuf>,

    /// Counts summed across the cluster: a source's international call
    /// counts are published once they reach this fraction of its
    /// threshold on some scale (every country's always are), so a source
    /// spread over up to 1/FRACTION nodes is still caught.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1, value_parser = parse_fraction)]
    pub cluster_source_fraction: f64,

    /// Most sources whose counts this node publishes (the nearest their
    /// thresholds first); 0 shares country counts only.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub cluster_max_sources: u32,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{s:?} is not a fraction in (0, 1]")),
    }
}

fn parse_endpoint(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{s:?} is not an http:// or https:// URL"))?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        return Err(format!("{s:?} is not a URL of the form http://HOST:PORT"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(s.to_owned()) } else { Err(format!("{s:?} is not a name (1-63 of A-Z a-z 0-9 - _ .)")) }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let p = s.trim_end_matches('/');
    if p.is_empty() || p.split('/').any(str::is_empty) {
        return Err(format!("{s:?} is not a key prefix (e.g. tollgate/v1/east)"));
    }
    Ok(p.to_owned())
}

/// What the cluster runs with, checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub endpoints: Vec<String>,
    pub node: String,
    pub prefix: String,
    pub tls: Option<Tls>,
    /// See [`ClusterArgs::cluster_source_fraction`].
    pub source_fraction: f64,
    pub max_sources: usize,
    /// Where the session keeps what it knows of the store and what waits
    /// for it, across restarts (`cluster.json` in --state-dir).
    pub state_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: Option<Vec<u8>>,
    /// (certificate, key), PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClusterArgs {
    /// The configuration, or None without endpoints (no cluster). Errors
    /// are one line naming the flag.
    pub fn config(&self) -> anyhow::Result<Option<Config>> {
        // Checked here, not with clap's `requires`: the configuration file's
        // checks parse each flag alone.
        if self.cluster_cert.is_some() != self.cluster_key.is_some() {
            anyhow::bail!("--cluster-cert and --cluster-key go together");
        }
        let tls_given = self.cluster_ca.is_some() || self.cluster_cert.is_some();
        if self.cluster_endpoints.is_empty() {
            if tls_given || self.cluster_prefix.is_some() || self.node_name.is_some() {
                anyhow::bail!(
                    "--node-name, --cluster-prefix, --cluster-ca and --cluster-cert need --cluster-endpoints"
                );
            }
            return Ok(None);
        }
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
        };
        let tls = if tls_given {
            let ca = self.cluster_ca.as_ref().map(|p| read("--cluster-ca", p)).transpose()?;
            let identity = match (&self.cluster_cert, &self.cluster_key) {
                (Some(c), Some(k)) => Some((read("--cluster-cert", c)?, read("--cluster-key", k)?)),
                _ => None,
            };
            Some(Tls { ca, identity })
        } else {
            None
        };
        if tls.is_none() && self.cluster_endpoints.iter().any(|e| e.starts_with("https://")) {
            anyhow::bail!("--cluster-endpoints: an https:// endpoint needs --cluster-ca");
        }
        let node = match &self.node_name {
            Some(n) => n.clone(),
            None => parse_name(&hostname())
                .map_err(|e| anyhow::anyhow!("the hostname cannot name this node ({e}): give --node-name"))?,
        };
        let prefix =
            self.cluster_prefix.clone().unwrap_or_else(|| format!("tollgate/v1/{}", self.cluster_name));
        Ok(Some(Config {
            endpoints: self.cluster_endpoints.clone(),
            node,
            prefix,
            tls,
            source_fraction: self.cluster_source_fraction,
            max_sources: self.cluster_max_sources as usize,
            state_file: None,
        }))
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer of that length; gethostname NUL-terminates
    // within it when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A local decision for the store. The latest for each key wins: while the
/// store is away they wait in a queue keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// `create`: a new restriction, written only if the key is absent (the
    /// first decider wins; a loser adopts the winner's record).
    Put { record: Box<Record>, create: bool },
    /// A lift.
    Delete { key: String },
}

/// What the store says for the main loop to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// Another node's restriction, new or changed.
    Put(Record),
    /// Ours lost the race for its key: this is the record in force.
    Superseded(Record),
    /// The key of this record was deleted: lifted, or its lease ended.
    Delete(Record),
    /// The other nodes' counts now, by node (empty while the store is
    /// away: stale counts judge nothing).
    Counts(std::collections::BTreeMap<String, counts::NodeCounts>),
}

/// What the status, the metrics and the main loop read of the cluster.
#[derive(Debug, Default)]
pub struct State {
    pub enabled: bool,
    pub node: String,
    pub prefix: String,
    pub endpoints: Vec<String>,
    pub connected: bool,
    /// The last successful exchange with the store (UNIX ms).
    pub last_sync_ms: Option<i64>,
    /// When the agent started (UNIX ms): the sync age before any sync.
    pub started_ms: i64,
    pub members: Vec<NodeRecord>,
    /// The restrictions in the store as last seen, by key.
    pub known: HashMap<String, Record>,
    pub published: u64,
    pub adopted: u64,
    /// Local decisions waiting for the store.
    pub queued: usize,
    /// Countries and sources other nodes' counts are summed for, and from
    /// how many nodes.
    pub summed_countries: usize,
    pub summed_sources: usize,
    pub counting_nodes: usize,
    /// This node's counts written to the store.
    pub counts_published: u64,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Shared(Arc<Mutex<State>>);

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running cluster link: where local decisions go, and what the main
/// loop reads from.
pub struct Cluster {
    pub config: Config,
    pub shared: Shared,
    pub ops: mpsc::UnboundedSender<Op>,
    /// This node's latest counts, for the session to publish.
    pub counts: tokio::sync::watch::Sender<Option<counts::NodeCounts>>,
}

/// Starts the session with the store in the background (it connects, and
/// reconnects, by itself).
pub fn start(config: Config, shared: Shared) -> (Cluster, mpsc::UnboundedReceiver<Remote>) {
    {
        let mut s = shared.lock();
        s.enabled = true;
        s.node = config.node.clone();
        s.prefix = config.prefix.clone();
        s.endpoints = config.endpoints.clone();
        s.started_ms = crate::store::now_ms();
    }
    let (ops, ops_rx) = mpsc::unbounded_channel();
    let (remote_tx, remote_rx) = mpsc::unbounded_channel();
    let (counts, counts_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(session::run(config.clone(), shared.clone(), ops_rx, counts_rx, remote_tx));
    (Cluster { config, shared, ops, counts }, remote_rx)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        c: ClusterArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<Config>, String> {
        let t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_owned())?;
        t.c.config().map_err(|e| e.to_string())
    }

    #[test]
    fn no_endpoints_no_cluster() {
        assert!(parse(&[]).unwrap().is_none());
        let e = parse(&["--node-name", "a"]).unwrap_err();
        assert!(e.contains("need --cluster-endpoints"), "{e}");
    }

    #[test]
    fn endpoints_name_and_prefix() {
        let c = parse(&[
            "--cluster-endpoints",
            "http://192.0.2.1:2379,http://192.0.2.2:2379/",
            "--node-name",
            "edge-a",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoints, ["http://192.0.2.1:2379", "http://192.0.2.2:2379"]);
        assert_eq!((c.node.as_str(), c.prefix.as_str()), ("edge-a", "tollgate/v1/default"));
        let c =
            parse(&["--cluster-endpoints=http://192.0.2.1:2379", "--cluster-name", "east"]).unwrap().unwrap();
        assert_eq!(c.prefix, "tollgate/v1/east");
        let c = parse(&["--cluster-endpoints=http://192.0.2.1:2379", "--cluster-prefix", "x/y/"])
            .unwrap()
            .unwrap();
        assert_eq!(c.prefix, "x/y");
    }

    #[test]
    fn bad_values_are_one_line() {
        for (args, want) in [
            (&["--cluster-endpoints", "192.0.2.1:2379"][..], "not an http:// or https:// URL"),
            (&["--cluster-endpoints", "http://192.0.2.1:2379", "--node-name", "a b"], "is not a name"),
            (&["--cluster-endpoints", "https://192.0.2.1:2379"], "needs --cluster-ca"),
            (
                &["--cluster-endpoints", "http://192.0.2.1:2379", "--cluster-prefix", "a//b"],
                "not a key prefix",
            ),
            (
                &["--cluster-endpoints", "http://192.0.2.1:2379", "--cluster-cert", "/nonexistent"],
                "go together",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
