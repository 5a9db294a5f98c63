//! sipp (apt package sip-tester) in the test namespaces: a digest registrar
//! and phones registering with a right or a wrong password.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{netns::NetNs, wait_for};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/sipp").join(name)
}

fn transport_flag(tcp: bool) -> &'static str {
    if tcp { "t1" } else { "u1" }
}

fn host(addr: IpAddr) -> String {
    if addr.is_ipv6() { format!("[{addr}]") } else { addr.to_string() }
}

/// A sipp registrar running in a namespace; killed on drop.
pub struct Registrar(Child);

impl Registrar {
    pub fn start(ns: &NetNs, addr: IpAddr, tcp: bool) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sipp", "-sf"])
            .arg(fixture("registrar.xml"))
            .args(["-i", &addr.to_string(), "-p", "5060", "-t", transport_flag(tcp), "-nostdin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp (apt package sip-tester) must be installed: cargo xtask setup installs it");
        // `ip netns exec` execs sipp, so the child is sipp itself.
        let proto = if tcp { "tcp" } else { "udp" };
        let listening = wait_for(Duration::from_secs(10), || {
            let out = ns.exec(&["ss", "-lnH", if tcp { "-t" } else { "-u" }, "sport", "= :5060"]);
            (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
        });
        assert!(listening.is_some(), "sipp registrar did not listen on {proto}/5060");
        Self(child)
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `calls` registrations from `src` to the registrar at `dst`, with
/// the right password or a wrong one; panics if sipp fails.
pub fn register(ns: &NetNs, src: IpAddr, dst: IpAddr, tcp: bool, right_password: bool, calls: u32) {
    if let Err(e) = try_register(ns, src, dst, tcp, right_password, calls) {
        panic!("{e}");
    }
}

/// Like [`register`], returning sipp's failure instead of panicking (an
/// attacker's registrations may time out once it is suspended).
pub fn try_register(
    ns: &NetNs,
    src: IpAddr,
    dst: IpAddr,
    tcp: bool,
    right_password: bool,
    calls: u32,
) -> Result<(), String> {
    let csv = if right_password { "good.csv" } else { "bad.csv" };
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "timeout", "60", "sipp", "-sf"])
        .arg(fixture("register-client.xml"))
        .arg("-inf")
        .arg(fixture(csv))
        .args(["-i", &src.to_string(), "-t", transport_flag(tcp), "-m", &calls.to_string(), "-r", "20"])
        .args(["-nostdin", "-timeout", "30s", "-timeout_error", &format!("{}:5060", host(dst))])
        .output()
        .expect("running sipp");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "sipp phone {src} -> {dst} ({}) failed: {}{}",
        if tcp { "tcp" } else { "udp" },
        String::from_utf8_lossy(&out.stdout).lines().rev().take(15).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    ))
}
