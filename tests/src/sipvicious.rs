//! SIPVicious 0.3.8 (PyPI, installed by `cargo xtask setup` into the venv
//! target/venv) attacking from the test namespaces.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use crate::netns::ip;

/// The venv `cargo xtask setup` installs SIPVicious into.
pub fn venv() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("venv")
}

/// The `sipvicious_svcrack` script, if installed.
pub fn svcrack_bin() -> Option<PathBuf> {
    let bin = venv().join("bin/sipvicious_svcrack");
    bin.exists().then_some(bin)
}

/// One svcrack run: from the address `src` of the namespace named `ns`
/// (on its interface `iface`) against `user`@`domain` at `dst` (UDP 5060),
/// with the word list `words`, giving up `max_time` seconds after the last
/// response. A namespace name, not a [`crate::netns::NetNs`], so that it
/// can run on a thread of its own.
pub struct Svcrack<'a> {
    pub ns: &'a str,
    pub iface: &'a str,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub user: &'a str,
    pub domain: &'a str,
    pub words: &'a Path,
    pub max_time: u32,
}

impl Svcrack<'_> {
    /// Runs it and returns its standard output and error.
    ///
    /// svcrack 0.3.8 ignores its `--bindingip`, so the source address is
    /// chosen with a route to `dst` through `iface` with `src` as preferred
    /// source, removed afterwards.
    pub fn run(&self) -> String {
        let bin = svcrack_bin().expect("sipvicious_svcrack not installed: run `cargo xtask setup`");
        let dst = self.dst;
        let prefix = if dst.is_ipv6() { format!("{dst}/128") } else { format!("{dst}/32") };
        ip(&["-n", self.ns, "route", "replace", &prefix, "dev", self.iface, "src", &self.src.to_string()]);
        struct Route<'a>(&'a str, String);
        impl Drop for Route<'_> {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["-n", self.0, "route", "del", &self.1]).output();
            }
        }
        let _route = Route(self.ns, prefix);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns, "timeout", "60"])
            .arg(bin)
            .args(["-u", self.user, "--domain", self.domain, "-d"])
            .arg(self.words)
            .args(["--maximumtime", &self.max_time.to_string()]);
        if dst.is_ipv6() {
            cmd.arg("-6");
        }
        let out = cmd.arg(dst.to_string()).output().expect("running sipvicious_svcrack");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}
