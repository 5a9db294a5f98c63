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
    crate::target_dir().join("venv")
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
    /// The next hop towards `dst`, when it is not on the link.
    pub via: Option<IpAddr>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub user: &'a str,
    pub domain: &'a str,
    pub words: &'a Path,
    pub max_time: u32,
}

/// A route to `dst` through `iface` (and `via`, when it is not on the
/// link) with `src` as its preferred source, removed on drop. SIPVicious
/// 0.3.8 ignores its `--bindingip`: this is how a test chooses the address
/// svcrack, svmap or svwar sends from.
pub struct SourceRoute {
    ns: String,
    prefix: String,
}

impl SourceRoute {
    pub fn new(ns: &str, iface: &str, via: Option<IpAddr>, src: IpAddr, dst: IpAddr) -> Self {
        let prefix = if dst.is_ipv6() { format!("{dst}/128") } else { format!("{dst}/32") };
        let src = src.to_string();
        let mut route = vec!["-n", ns, "route", "replace", &prefix, "dev", iface, "src", &src];
        let via = via.map(|v| v.to_string());
        if let Some(v) = &via {
            route.extend(["via", v]);
        }
        ip(&route);
        Self { ns: ns.to_owned(), prefix }
    }
}

impl Drop for SourceRoute {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["-n", &self.ns, "route", "del", &self.prefix]).output();
    }
}

/// Runs `sipvicious_TOOL ARGS` in the namespace `ns` (at most a minute) and
/// returns its standard output and error.
pub fn run_tool(tool: &str, ns: &str, args: &[&str]) -> String {
    let bin = venv().join("bin").join(format!("sipvicious_{tool}"));
    assert!(bin.exists(), "{} not installed: run `cargo xtask setup`", bin.display());
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "60"])
        .arg(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running sipvicious_{tool}: {e}"));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

impl Svcrack<'_> {
    /// Runs it and returns its standard output and error, from `src` (see
    /// [`SourceRoute`]).
    pub fn run(&self) -> String {
        let _route = SourceRoute::new(self.ns, self.iface, self.via, self.src, self.dst);
        let words = self.words.to_str().expect("utf-8 word list path");
        let max_time = self.max_time.to_string();
        let dst = self.dst.to_string();
        let mut args =
            vec!["-u", self.user, "--domain", self.domain, "-d", words, "--maximumtime", &max_time];
        if self.dst.is_ipv6() {
            args.push("-6");
        }
        args.push(&dst);
        run_tool("svcrack", self.ns, &args)
    }
}
