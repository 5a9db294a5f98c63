//! Network namespaces made with iproute2 and entered per thread with setns.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Output},
};

use crate::PREFIX;

const NETNS_DIR: &str = "/var/run/netns";
/// Where test agents pin their state; swept like the namespaces.
pub const PIN_ROOT: &str = "/sys/fs/bpf";

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("running ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    out
}

/// A named network namespace, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(name: String) -> Self {
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("{NETNS_DIR}/{}", self.name)
    }

    /// Runs a command inside the namespace (with `ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("running ip netns exec");
        assert!(
            out.status.success(),
            "in {}: {}: {}",
            self.name,
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created
    /// there stay in the namespace wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Never panic here: we may already be unwinding from a failed test.
        match Command::new("ip").args(["netns", "del", &self.name]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

fn pid_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Removes namespaces and pinned state left by test processes that no longer
/// exist (e.g. killed by a timeout), once per process.
pub fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead = |name: &str| pid_of(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        for entry in std::fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                eprintln!("removing stale test namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        for entry in std::fs::read_dir(PIN_ROOT).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                eprintln!("removing stale test pins {name}");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}
