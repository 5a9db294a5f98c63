//! Debian's Prometheus (package `prometheus`, 2.42 on Debian 12) in a test
//! namespace, on loopback: it scrapes agents every second as the job
//! `tollgate` (the name dashboards/alerts.yml assumes), evaluates rule
//! files every second, and is queried through its HTTP API from inside the
//! namespace, as Grafana would query it. Stopped and its data removed on
//! drop.

use std::{
    fs,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{http, netns::NetNs, unique, wait_for};

/// Scrape and rule evaluation interval, in seconds.
pub const INTERVAL_SECS: u64 = 1;

/// Where it listens, in its namespace (each test namespace is new, so a
/// fixed port cannot collide).
const LISTEN: &str = "127.0.0.1:9090";

pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    ns: String,
    addr: SocketAddr,
}

/// Whether Debian's prometheus is installed.
pub fn installed() -> bool {
    Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success())
}

impl Prometheus {
    /// Prometheus in `ns` scraping `targets` (host:port, reachable from
    /// `ns`) as job `tollgate`, with `rule_files`; returns once it answers
    /// its readiness check.
    pub fn start(ns: &NetNs, targets: &[SocketAddr], rule_files: &[&Path]) -> Self {
        let dir = std::env::temp_dir().join(unique("prom"));
        fs::create_dir_all(dir.join("data")).expect("prometheus directory");
        let quoted =
            |items: Vec<String>| items.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
        let rules = quoted(
            rule_files
                .iter()
                .map(|p| p.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", p.display())))
                .map(|p| p.display().to_string())
                .collect(),
        );
        let config = format!(
            "global:\n  scrape_interval: {INTERVAL_SECS}s\n  scrape_timeout: {INTERVAL_SECS}s\n  \
             evaluation_interval: {INTERVAL_SECS}s\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: [{}]\n",
            quoted(targets.iter().map(|t| t.to_string()).collect())
        );
        fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "prometheus"])
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect(
                "prometheus (Debian package prometheus) must be installed: cargo xtask setup installs it",
            );
        let mut prometheus =
            Self { child: Some(child), dir, ns: ns.path(), addr: LISTEN.parse().expect("valid") };
        let ready = wait_for(Duration::from_secs(30), || {
            if let Some(status) = prometheus.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("prometheus exited during start-up ({status}):\n{}", prometheus.log_text());
            }
            http::get(&prometheus.ns, prometheus.addr, "/-/ready", Duration::from_secs(2))
                .filter(|(status, _)| *status == 200)
        });
        assert!(ready.is_some(), "prometheus did not become ready:\n{}", prometheus.log_text());
        prometheus
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/PATH`: its `data`, or why not.
    pub fn api(&self, path: &str) -> Result<Value> {
        let (status, body) =
            http::get(&self.ns, self.addr, &format!("/api/v1/{path}"), Duration::from_secs(10))
                .with_context(|| format!("no answer from prometheus to /api/v1/{path}"))?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("/api/v1/{path} answered {status}: {body}"))?;
        if answer["status"] != "success" {
            bail!("/api/v1/{path}: {} {}", answer["errorType"], answer["error"]);
        }
        Ok(answer["data"].clone())
    }

    /// An instant query at `time` (Unix seconds): the vector's samples.
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<Value>> {
        let data = self.api(&format!("query?query={}&time={time:.3}", http::encode(expr)))?;
        Self::result(data, "vector").with_context(|| format!("query {expr}"))
    }

    /// A range query over [start, end] every `step` seconds: the matrix's
    /// series, as Grafana's time series panels ask for them.
    pub fn query_range(&self, expr: &str, start: f64, end: f64, step: u64) -> Result<Vec<Value>> {
        let data = self.api(&format!(
            "query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            http::encode(expr)
        ))?;
        Self::result(data, "matrix").with_context(|| format!("query_range {expr}"))
    }

    fn result(data: Value, want: &str) -> Result<Vec<Value>> {
        if data["resultType"] != want {
            bail!("a {} instead of a {want}", data["resultType"]);
        }
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The alerts pending or firing now (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        Ok(self.api("alerts")?["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// Names of the alerts firing now.
    pub fn firing(&self) -> Result<Vec<String>> {
        Ok(self
            .alerts()?
            .iter()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .collect())
    }

    /// The scrape targets' health ("up", "down", "unknown") by address.
    pub fn target_health(&self) -> Result<Vec<(String, String)>> {
        let data = self.api("targets?state=active")?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (s(&t["labels"]["instance"]), s(&t["health"]))
            })
            .collect())
    }

    /// The rule groups' evaluation health: (rule name, health, last error)
    /// of every rule that is not "ok" (or has not been evaluated yet).
    pub fn unhealthy_rules(&self) -> Result<Vec<(String, String, String)>> {
        let data = self.api("rules")?;
        let mut out = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                if rule["health"] != "ok" {
                    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    out.push((s(&rule["name"]), s(&rule["health"]), s(&rule["lastError"])));
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Its whole process group: `ip netns exec` execs prometheus.
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
            if wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
