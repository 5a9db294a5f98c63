//! systemd's service notification protocol (`sd_notify(3)`), for
//! `Type=notify`: READY=1 once the program is attached and the maps are
//! written, RELOADING=1 … READY=1 around a reload, STOPPING=1 on the way
//! out, and WATCHDOG=1 from the main loop when the unit sets `WatchdogSec=`.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the unix socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Without that variable (not started by systemd) every call
//! does nothing. A lost notification never stops the agent: systemd then
//! times the start out, which is its own, visible, failure.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    path::PathBuf,
    time::Duration,
};

use log::warn;

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Where the service manager listens, taken from the environment once.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` and removes them from the
    /// environment, so the programs the agent starts (`--on-decision`)
    /// cannot speak for it to systemd.
    ///
    /// # Safety
    ///
    /// Changes the process environment: call it before any other thread
    /// exists (first thing in `main`).
    pub unsafe fn take_from_env() -> Self {
        let socket = std::env::var_os(NOTIFY_SOCKET).and_then(|s| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(s.as_os_str()).to_vec();
            match bytes.first() {
                Some(b'@') => Some(Target::Abstract(bytes[1..].to_vec())),
                Some(b'/') => Some(Target::Path(PathBuf::from(s))),
                _ => None,
            }
        });
        // The watchdog is ours only if no other process was named for it.
        let for_us = std::env::var(WATCHDOG_PID)
            .map_or(true, |pid| pid.trim().parse::<u32>().is_ok_and(|p| p == std::process::id()));
        let watchdog = std::env::var(WATCHDOG_USEC)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && for_us)
            .map(Duration::from_micros);
        // SAFETY: the caller guarantees no other thread reads the
        // environment concurrently.
        unsafe {
            for var in [NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID] {
                std::env::remove_var(var);
            }
        }
        Self { socket, watchdog }
    }

    /// How often to send WATCHDOG=1: half the unit's `WatchdogSec=`, as
    /// `sd_watchdog_enabled(3)` advises; `None` without a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref().and(self.watchdog).map(|w| w / 2)
    }

    /// The service is up: attached, maps written, listening.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
    }

    /// A reload begins; [`Self::ready`] ends it.
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.socket else { return };
        let sent = UnixDatagram::unbound().and_then(|sock| {
            let addr = match target {
                Target::Path(p) => SocketAddr::from_pathname(p)?,
                Target::Abstract(name) => {
                    <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?
                }
            };
            sock.send_to_addr(message.as_bytes(), &addr)
        });
        if let Err(e) = sent {
            warn!("telling systemd {:?}: {e}", message.lines().next().unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = crate::test_dir::TempDir::new("notify");
        let path = dir.0.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some(Target::Path(path)), watchdog: Some(Duration::from_secs(30)) };
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        n.ready("enforcing on eth0");
        n.stopping("SIGTERM");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        let first = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(first.starts_with("READY=1\nSTATUS=enforcing on eth0\nMAINPID="), "{first}");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=SIGTERM");
    }

    #[test]
    fn without_systemd_nothing_is_sent_and_no_watchdog_runs() {
        let n = Notifier::default();
        assert_eq!(n.watchdog_interval(), None);
        n.ready("x");
    }
}
