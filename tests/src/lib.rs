//! Test harness: throw-away network namespaces joined by a veth, the agent
//! running inside one of them, real UDP/TCP traffic between them, and
//! readers for the agent's pinned maps and metrics.
//!
//! Everything is named after this process's PID and a counter, uses only
//! documentation address ranges, and is removed on drop, including when a
//! test panics. Debris left by a killed earlier run is swept on first use.

pub mod bench_agent;
pub mod bench_maps;
pub mod dashboard;
pub mod etcd;
pub mod flood;
pub mod http;
pub mod kamailio;
pub mod netns;
pub mod prometheus;
pub mod promql;
pub mod report;
pub mod sipp;
pub mod sipvicious;
pub mod site;
pub mod testrun;
pub mod topology;
pub mod traffic;
pub mod ttb;
pub mod unit;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Name prefix of everything the harness creates.
pub const PREFIX: &str = "tgt";

/// A name unique to this process and call, short enough for an interface.
pub fn unique(kind: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{PREFIX}{}{kind}{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Whether privileged tests can run. When they cannot, says so loudly; with
/// TOLLGATE_REQUIRE_PRIVILEGED=1 (set by `cargo xtask test`) it fails instead,
/// so CI can never pass by skipping.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        netns::sweep_stale();
        return true;
    }
    skip_or_fail(&format!(
        "{test}: needs root (network namespaces, XDP); run it through `cargo xtask test` as root"
    ))
}

/// Whether a tool a test needs is installed (`found`). When it is not,
/// says so loudly; with TOLLGATE_REQUIRE_PRIVILEGED=1 it fails instead.
pub fn tool_present(test: &str, tool: &str, found: bool) -> bool {
    found || skip_or_fail(&format!("{test}: {tool} is not installed; run `cargo xtask setup`"))
}

/// Like [`tool_present`], for something a build makes (`what`, made by
/// `how`), such as the Debian package.
pub fn built_present(test: &str, what: &str, how: &str, found: bool) -> bool {
    found || skip_or_fail(&format!("{test}: {what} does not exist; run `{how}`"))
}

/// Says loudly that a test is skipped, and returns false; with
/// TOLLGATE_REQUIRE_PRIVILEGED=1 fails instead, so CI cannot pass by skipping.
fn skip_or_fail(msg: &str) -> bool {
    if std::env::var_os("TOLLGATE_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!! SKIPPED {msg} !!!!!\n");
    false
}

/// Whether `name` is a command on $PATH.
pub fn command_exists(name: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The workspace's target directory ($CARGO_TARGET_DIR, or target/).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Path of the `tollgate` binary under test: $TOLLGATE_BIN, or the debug
/// build in this workspace's target directory.
pub fn tollgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(p);
    }
    let bin = target_dir().join("debug/tollgate");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p tollgate` (cargo xtask test/demo do) or set TOLLGATE_BIN",
        bin.display()
    );
    bin
}

/// A file under the temporary directory, removed on drop (and shown on
/// standard error first when a test is failing: an audit log, a CSV).
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A new name (nothing is created).
    pub fn new(kind: &str) -> Self {
        Self(std::env::temp_dir().join(unique(kind)))
    }
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.0.display(), self.text());
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `message` as the `n`th of a series of distinct calls: its Call-ID
/// prefixed with `n-` (the kernel counts a call attempt once per Call-ID,
/// so repeating one message is one call and its copies).
pub fn nth_call(message: &[u8], n: usize) -> Vec<u8> {
    let needle = b"Call-ID: ";
    let at =
        message.windows(needle.len()).position(|w| w == needle).expect("the message has a Call-ID header")
            + needle.len();
    let mut out = message[..at].to_vec();
    out.extend_from_slice(format!("{n}-").as_bytes());
    out.extend_from_slice(&message[at..]);
    out
}

/// `message` as a call no other in this process has (see [`nth_call`]).
pub fn fresh_call(message: &[u8]) -> Vec<u8> {
    static N: AtomicU32 = AtomicU32::new(0);
    nth_call(message, 1_000_000 + N.fetch_add(1, Ordering::Relaxed) as usize)
}
