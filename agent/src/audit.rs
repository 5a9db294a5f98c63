//! The audit trail: one JSON line per decision (impose, extend, expire, lift,
//! alert), to `--audit-log` and to the log stream. Each line carries only
//! the minimal evidence: kind, target (source address or country code),
//! which policy, the count that crossed which threshold in which window,
//! start and expiry, and whether it was enforced. Never a number, URI or
//! user name.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use log::{info, warn};
use serde::Serialize;
use tollgate_common::hash::IdentityTag;

use crate::{
    clock::monotonic_now_ns,
    policy::{Active, Decision, Evidence, Target},
};

#[derive(Serialize)]
struct EvidenceJson {
    count: u32,
    threshold: u32,
    window_seconds: u64,
    /// The learned normal level per window the threshold was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    peacetime_per_window: Option<f64>,
    /// Distinct sources in the window, at least (country surges).
    #[serde(skip_serializing_if = "Option::is_none")]
    sources_at_least: Option<u32>,
    /// (authentication failures) `count` are failures bound to the source;
    /// these were not (possibly forged) and did not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    unbound: Option<u32>,
    /// Distinct failing identities in the window, at least.
    #[serde(skip_serializing_if = "Option::is_none")]
    identities_at_least: Option<u16>,
    /// The identity tag of the failure that crossed the threshold (never
    /// the name: `tollgate identity-tag NAME` answers "is this NAME?").
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    /// Another identity authenticated successfully at the address recently.
    #[serde(skip_serializing_if = "Option::is_none")]
    other_identities_ok: Option<bool>,
    /// The timescale judged: short, medium or long (its window is
    /// `window_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<&'static str>,
    /// The destination country code of the calls (never a number).
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<u16>,
    /// (new-destination) It is on the high-risk list.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    high_risk: bool,
    /// Distinct addresses of the identity in the window, at least.
    #[serde(skip_serializing_if = "Option::is_none")]
    addresses_at_least: Option<u32>,
    /// (new-prefix) The prefix new to the identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    new_prefix: Option<String>,
    /// (new-prefix) No other identity is known at that prefix: the address
    /// as a whole was restricted.
    #[serde(skip_serializing_if = "Option::is_none")]
    no_other_identity_known: Option<bool>,
    /// (clustering) Of `count`, what other nodes counted, and how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    counted_elsewhere: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    other_nodes: Option<u32>,
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    kind: &'a str,
    target: String,
    /// The identity tag of a line restricted as such (the target names it
    /// too), so a notification can find the holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    reason: &'a str,
    evidence: EvidenceJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    enforced: bool,
    mode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offence: Option<u32>,
    /// Who or what lifted it early: "operator" or "surge-ended".
    #[serde(skip_serializing_if = "Option::is_none")]
    lifted_by: Option<&'a str>,
    /// The operator's note on a manual restriction.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// From the kernel's threshold crossing to this decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_latency_us: Option<u64>,
    /// The node that decided it, for one decided elsewhere in the cluster
    /// (its event is then "adopt", not "impose").
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
    /// Why one decided elsewhere is not enforced here.
    #[serde(skip_serializing_if = "Option::is_none")]
    not_enforced_here: Option<&'a str>,
}

pub struct Auditor {
    file: Option<Mutex<File>>,
    dry_run: bool,
    hook: Option<String>,
}

/// A reload, as [`Auditor::record_reload`] writes it.
pub struct Reload<'a> {
    pub config: Option<&'a Path>,
    /// (key, values before, values after).
    pub changed: &'a [(&'a str, Vec<String>, Vec<String>)],
    pub needs_restart: &'a [&'a str],
    pub rejected: Option<&'a str>,
}

/// A blocklist feed's refresh, as [`Auditor::record_feed`] writes it.
pub struct Feed<'a> {
    pub name: &'a str,
    pub source: &'a str,
    /// ok, failed, refused, lapsed or removed.
    pub result: &'a str,
    pub added: usize,
    pub removed: usize,
    /// Entries the feed has in force after it.
    pub entries: usize,
    /// When they lapse (wall clock, UNIX ms), if any.
    pub expires_ms: Option<i64>,
    pub error: Option<&'a str>,
}

#[derive(Serialize)]
struct ReloadRecord<'a> {
    time: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<String>,
    changed: std::collections::BTreeMap<String, Change>,
    needs_restart: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<&'a str>,
}

#[derive(Serialize)]
struct Change {
    from: Vec<String>,
    to: Vec<String>,
}

/// How long a decision hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Wall-clock time of a CLOCK_MONOTONIC instant.
fn wall(mono_ns: u64) -> String {
    let now_mono = monotonic_now_ns();
    let now = SystemTime::now();
    let t = if mono_ns >= now_mono {
        now + Duration::from_nanos(mono_ns - now_mono)
    } else {
        now - Duration::from_nanos(now_mono - mono_ns)
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// A wall-clock instant in UNIX ms, as audit records write times.
fn wall_of_ms(ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The identity tag of a target that is an identity.
fn identity_of(t: &Target) -> Option<String> {
    match t {
        Target::Identity(_, tag) => Some(IdentityTag(*tag).to_string()),
        _ => None,
    }
}

fn evidence(e: &Evidence) -> EvidenceJson {
    EvidenceJson {
        count: e.count,
        threshold: e.threshold,
        window_seconds: e.window.as_secs(),
        peacetime_per_window: e.peacetime_milli.map(|m| m as f64 / 1000.0),
        sources_at_least: e.sources,
        unbound: e.auth.map(|a| a.unbound),
        identities_at_least: e.auth.map(|a| a.identities),
        identity: e.auth.filter(|a| a.identity != 0).map(|a| IdentityTag(a.identity).to_string()),
        other_identities_ok: e.auth.map(|a| a.other_ok),
        scale: e.scale.and_then(|k| crate::detect::SCALE_NAMES.get(usize::from(k)).copied()),
        destination: e.cc,
        high_risk: e.high_risk,
        addresses_at_least: e.addresses,
        new_prefix: e.prefix.map(|p| p.to_string()),
        no_other_identity_known: e.strong,
        counted_elsewhere: e.elsewhere,
        other_nodes: e.nodes,
    }
}

impl Auditor {
    pub fn open(path: Option<&Path>, dry_run: bool, hook: Option<String>) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => Some(Mutex::new(OpenOptions::new().create(true).append(true).open(p)?)),
            None => None,
        };
        Ok(Self { file, dry_run, hook })
    }

    /// Runs the operator's hook in the background; never blocks decisions.
    /// Besides the record on stdin it gets, for notifying a line's holder
    /// (counter-measure 5) without parsing JSON: the restriction's id
    /// (`TOLLGATE_ID`) and, for a line named by its identity, its tag
    /// (`TOLLGATE_IDENTITY`; empty otherwise).
    fn run_hook(&self, line: &str, r: &Record) {
        let Some(cmd) = self.hook.clone() else { return };
        let mut command = tokio::process::Command::new("sh");
        command
            .args(["-c", &cmd])
            .env("TOLLGATE_EVENT", r.event)
            .env("TOLLGATE_KIND", r.kind)
            .env("TOLLGATE_TARGET", &r.target)
            .env("TOLLGATE_MODE", r.mode)
            .env("TOLLGATE_ID", r.id.map(|id| id.to_string()).unwrap_or_default())
            .env("TOLLGATE_IDENTITY", r.identity.as_deref().unwrap_or_default())
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true);
        let input = format!("{line}\n");
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut child = match command.spawn() {
                Ok(c) => c,
                Err(e) => return warn!("--on-decision: cannot run {cmd:?}: {e}"),
            };
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(input.as_bytes()).await;
            }
            match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => warn!("--on-decision {cmd:?} exited with {status}"),
                Ok(Err(e)) => warn!("--on-decision {cmd:?}: {e}"),
                Err(_) => warn!("--on-decision {cmd:?} ran longer than {HOOK_TIMEOUT:?}; killed"),
            }
        });
    }

    /// Records an operator's threshold for a subject (None: cleared).
    pub fn record_baseline(
        &self,
        scope: &str,
        key: &str,
        scale: &str,
        threshold: Option<u32>,
        note: Option<&str>,
    ) {
        #[derive(Serialize)]
        struct BaselineRecord<'a> {
            time: String,
            event: &'a str,
            scope: &'a str,
            target: &'a str,
            scale: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            threshold: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            note: Option<&'a str>,
        }
        let event = if threshold.is_some() { "baseline-set" } else { "baseline-clear" };
        let record = BaselineRecord {
            time: wall(monotonic_now_ns()),
            event,
            scope,
            target: key,
            scale,
            threshold,
            note,
        };
        self.write(&serde_json::to_string(&record).expect("audit records serialize"));
    }

    fn write(&self, line: &str) {
        info!("audit {line}");
        if let Some(file) = &self.file {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = writeln!(f, "{line}").and_then(|()| f.flush()) {
                warn!("writing the audit log failed: {e}");
            }
        }
    }

    /// Records a blocklist feed's refresh that changed something, or one
    /// that failed or was refused, or its entries lapsing or going away.
    pub fn record_feed(&self, feed: &Feed<'_>) {
        #[derive(Serialize)]
        struct FeedRecord<'a> {
            time: String,
            event: &'static str,
            feed: &'a str,
            source: &'a str,
            result: &'a str,
            added: usize,
            removed: usize,
            entries: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            expires: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a str>,
        }
        let line = serde_json::to_string(&FeedRecord {
            time: wall(monotonic_now_ns()),
            event: "feed",
            feed: feed.name,
            source: feed.source,
            result: feed.result,
            added: feed.added,
            removed: feed.removed,
            entries: feed.entries,
            expires: feed.expires_ms.map(wall_of_ms),
            error: feed.error,
        })
        .expect("audit records serialize");
        self.write(&line);
    }

    /// Whether decisions are recorded as dry-run (a reload may change it).
    pub fn set_dry_run(&mut self, dry_run: bool) {
        self.dry_run = dry_run;
    }

    /// Records a reload of the configuration: each changed key with its
    /// values before and after (what was applied), the keys that changed
    /// but need a restart (left as they were), or why the file was
    /// rejected (nothing was applied).
    pub fn record_reload(&self, reload: &Reload<'_>) {
        let line = serde_json::to_string(&ReloadRecord {
            time: wall(monotonic_now_ns()),
            event: "reload",
            config: reload.config.map(|p| p.display().to_string()),
            changed: reload
                .changed
                .iter()
                .map(|(k, from, to)| ((*k).to_owned(), Change { from: from.clone(), to: to.clone() }))
                .collect(),
            needs_restart: reload.needs_restart.to_vec(),
            rejected: reload.rejected,
        })
        .expect("audit records serialize");
        self.write(&line);
    }

    /// Records `decision`; `latency_us` is the time since the kernel event.
    pub fn record(&self, decision: &Decision, latency_us: Option<u64>) {
        self.record_with(decision, latency_us, None, None);
    }

    /// Records a decision taken over from node `origin` (an imposition is
    /// audited as "adopt"); `not_enforced` says why it is not enforced here.
    pub fn record_adopted(&self, decision: &Decision, origin: &str, not_enforced: Option<&str>) {
        self.record_with(decision, None, Some(origin), not_enforced);
    }

    fn record_with(
        &self,
        decision: &Decision,
        latency_us: Option<u64>,
        origin: Option<&str>,
        not_enforced_here: Option<&str>,
    ) {
        let now = wall(monotonic_now_ns());
        let mode = if self.dry_run { "dry-run" } else { "enforce" };
        let of_active = |event: &'static str, a: &Active| Record {
            time: now.clone(),
            event,
            id: Some(a.id),
            kind: a.kind.name(),
            target: a.target.to_string(),
            identity: identity_of(&a.target),
            reason: a.reason.name(),
            evidence: evidence(&a.evidence),
            start: Some(a.imposed_wall_ms.map_or_else(|| wall(a.imposed_at_ns), wall_of_ms)),
            expires: Some(wall(a.expires_at_ns)),
            enforced: a.enforced,
            mode,
            offence: Some(a.offence),
            lifted_by: None,
            note: a.note.clone(),
            decision_latency_us: if event == "expire" { None } else { latency_us },
            origin,
            not_enforced_here,
        };
        let record = match decision {
            Decision::Impose(a) => of_active(if origin.is_some() { "adopt" } else { "impose" }, a),
            Decision::Extend(a) => of_active("extend", a),
            Decision::Expire(a) => of_active("expire", a),
            Decision::Lift(a, by) => Record { lifted_by: Some(by), ..of_active("lift", a) },
            Decision::Alert { kind, target, why, evidence: e } => Record {
                time: now.clone(),
                event: "alert",
                id: None,
                kind: kind.name(),
                target: target.to_string(),
                identity: identity_of(target),
                reason: why,
                evidence: evidence(e),
                start: None,
                expires: None,
                enforced: false,
                mode,
                offence: None,
                lifted_by: None,
                note: None,
                decision_latency_us: latency_us,
                origin,
                not_enforced_here,
            },
        };
        let line = serde_json::to_string(&record).expect("audit records serialize");
        // Not for what another node decided: the deciding node notifies, once.
        if origin.is_none() && matches!(record.event, "impose" | "expire" | "lift") {
            self.run_hook(&line, &record);
        }
        self.write(&line);
    }
}
