//! A real etcd (Debian's etcd-server) for the cluster tests, in a "core"
//! namespace that every edge node reaches over a veth of its own:
//!
//! ```text
//!  edge netns of node i                       core netns (etcd)
//!  2001:db8:e7c0:i::1/64  <--- veth --->  2001:db8:e7c0:i::2/64
//!  route 2001:db8:e7c0::/120 via ::2          lo: 2001:db8:e7c0::10 (member 0)
//!                                                 2001:db8:e7c0::11 (member 1) ...
//! ```
//!
//! IPv6 documentation addresses, so they never meet the IPv4 ones the
//! edge topology routes to its peer; only the peer veth has XDP on it.
//! Each member has its own `--data-dir` under a temp dir; everything is
//! killed and removed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    netns::{NetNs, ip},
    topology::Topology,
    unique, wait_for,
};

/// The address of member `i` in the core namespace.
fn member_addr(i: usize) -> String {
    format!("2001:db8:e7c0::{:x}", 0x10 + i)
}

pub struct Member {
    child: Option<Child>,
    name: String,
    addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    core: String,
    /// Serves clients over TLS with these certificates, and asks for theirs.
    tls: Option<PathBuf>,
}

/// An edge node's way to the members.
pub struct Link {
    via: String,
}

impl Link {
    /// Cuts the node off from etcd (its route goes: what it sends fails at
    /// once, as behind a partition that answers unreachable).
    pub fn cut(&self, topo: &Topology) {
        topo.edge.exec(&["ip", "route", "del", MEMBERS]);
    }

    pub fn heal(&self, topo: &Topology) {
        topo.edge.exec(&["ip", "route", "replace", MEMBERS, "via", &self.via]);
    }
}

/// Where the members' addresses are.
const MEMBERS: &str = "2001:db8:e7c0::/120";

/// Certificates for a TLS etcd, made with openssl in a directory of their
/// own (removed on drop): a CA (`ca.pem`), the members' server certificate
/// (`server.pem`, for every member address) and a client's (`client.pem`),
/// each with its key (`*-key.pem`).
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("certs"));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let certs = Self { dir };
        let sans: Vec<String> = (0..3).map(|i| format!("IP:{}", member_addr(i))).collect();
        std::fs::write(
            certs.dir.join("server.ext"),
            format!("subjectAltName={}\nextendedKeyUsage=serverAuth\n", sans.join(",")),
        )
        .expect("server.ext");
        std::fs::write(certs.dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        certs.openssl(
            &[&["req", "-x509"], &ec[..], &["-keyout", "ca-key.pem", "-out", "ca.pem"]].concat(),
            "CA",
        );
        for who in ["server", "client"] {
            let (key, csr, pem, ext) =
                (format!("{who}-key.pem"), format!("{who}.csr"), format!("{who}.pem"), format!("{who}.ext"));
            certs.openssl(&[&["req"], &ec[..], &["-keyout", &key, "-out", &csr]].concat(), who);
            certs.openssl(
                &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial"]
                    .into_iter()
                    .chain(["-out", &pem, "-extfile", &ext])
                    .collect::<Vec<_>>(),
                who,
            );
        }
        certs
    }

    fn openssl(&self, args: &[&str], cn: &str) {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(&self.dir);
        if args[0] == "req" {
            cmd.args(["-days", "1", "-subj", &format!("/CN=tollgate-test-{cn}")]);
        } else {
            cmd.args(["-days", "1"]);
        }
        let out = cmd.output().expect("running openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One etcd member or a cluster of them, in its own namespace.
pub struct Etcd {
    // Field order is drop order: processes, then the namespace.
    pub members: Vec<Member>,
    /// Edge links made so far (each node's number).
    links: u16,
    pub core: NetNs,
}

impl Member {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("etcd log");
        let client = self.endpoint();
        let peer = format!("http://[{}]:2380", self.addr);
        let mut cmd = Command::new("etcd");
        if let Some(dir) = &self.tls {
            cmd.arg("--cert-file")
                .arg(dir.join("server.pem"))
                .arg("--key-file")
                .arg(dir.join("server-key.pem"))
                .arg("--trusted-ca-file")
                .arg(dir.join("ca.pem"))
                .arg("--client-cert-auth");
        }
        cmd.args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "tollgate-test"])
            // Fast elections for the leader-loss test.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        crate::topology::in_namespace(&mut cmd, &self.core);
        self.child = Some(cmd.spawn().expect("spawning etcd (Debian etcd-server)"));
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://[{}]:2379", self.addr)
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Freezes it (a store that accepts connections and never answers).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on its data (after [`Self::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd still running");
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- etcd {} log (tail) ---", self.name);
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Etcd {
    /// `n` members (1 or 3), started and answering.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, None)
    }

    /// One member serving clients over TLS with `certs`, and requiring
    /// client certificates from its CA.
    pub fn start_tls(certs: &Certs) -> Self {
        Self::start_with(1, Some(certs.dir.clone()))
    }

    fn start_with(n: usize, tls: Option<PathBuf>) -> Self {
        let core = NetNs::new(unique("c"));
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial_cluster: Vec<String> =
            (0..n).map(|i| format!("{}=http://[{}]:2380", names[i], member_addr(i))).collect();
        let mut members = Vec::new();
        for (i, name) in names.iter().enumerate() {
            core.exec(&["ip", "addr", "add", &format!("{}/128", member_addr(i)), "dev", "lo", "nodad"]);
            let mut m = Member {
                child: None,
                name: name.clone(),
                addr: member_addr(i),
                data_dir: std::env::temp_dir().join(unique("etcd")),
                log: std::env::temp_dir().join(format!("{}.log", unique("etcdlog"))),
                initial_cluster: initial_cluster.join(","),
                core: core.path(),
                tls: tls.clone(),
            };
            m.spawn();
            members.push(m);
        }
        let etcd = Self { members, links: 0, core };
        assert!(
            wait_for(Duration::from_secs(20), || etcd.healthy().then_some(())).is_some(),
            "etcd did not become healthy:\n{}",
            etcd.members[0].log_text()
        );
        etcd
    }

    /// Every member's endpoint, comma-separated (the agent's flag value).
    pub fn endpoints(&self) -> String {
        self.members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",")
    }

    /// Runs etcdctl in the core namespace: (success, stdout).
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        self.ctl_at(&self.endpoints(), args)
    }

    /// Runs etcdctl against `endpoints` only.
    pub fn ctl_at(&self, endpoints: &str, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--command-timeout=2s", "--dial-timeout=1s"]);
        if let Some(dir) = self.members.first().and_then(|m| m.tls.as_ref()) {
            for (flag, file) in
                [("--cacert", "ca.pem"), ("--cert", "client.pem"), ("--key", "client-key.pem")]
            {
                cmd.arg(format!("{flag}={}", dir.join(file).display()));
            }
        }
        cmd.args(args);
        crate::topology::in_namespace(&mut cmd, &self.core.path());
        match cmd.output() {
            Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
            Err(e) => panic!("running etcdctl (Debian etcd-client): {e}"),
        }
    }

    fn healthy(&self) -> bool {
        self.ctl(&["endpoint", "health"]).0
    }

    /// The index in [`Self::members`] of the current leader, as the
    /// running members say.
    pub fn leader(&self) -> Option<usize> {
        let mut leader = None;
        let mut ids = Vec::new();
        for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
            let (ok, out) = self.ctl_at(&m.endpoint(), &["endpoint", "status", "-w", "json"]);
            let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
            let st = &v.as_array()?.first()?["Status"];
            ids.push((i, st["header"]["member_id"].as_u64()?));
            leader = leader.or(st["leader"].as_u64().filter(|l| *l != 0));
        }
        let leader = leader?;
        ids.into_iter().find(|(_, id)| *id == leader).map(|(i, _)| i)
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (_, out) = self.ctl(&["get", "--prefix", "--keys-only", prefix]);
        out.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let (_, out) = self.ctl(&["get", "--print-value-only", key]);
        let v = out.trim();
        (!v.is_empty()).then(|| v.to_owned())
    }

    /// Joins an edge node's namespace to the core: a veth and a route to
    /// the members. Returns the link, to cut and heal.
    pub fn link(&mut self, topo: &Topology) -> Link {
        self.links += 1;
        let n = self.links;
        let edge_if = unique("k");
        let core_if = format!("{edge_if}c");
        ip(&[
            "link",
            "add",
            &edge_if,
            "netns",
            topo.edge.name(),
            "type",
            "veth",
            "peer",
            "name",
            &core_if,
            "netns",
            self.core.name(),
        ]);
        let (edge_addr, core_addr) = (format!("2001:db8:e7c0:{n:x}::1"), format!("2001:db8:e7c0:{n:x}::2"));
        topo.edge.exec(&["ip", "addr", "add", &format!("{edge_addr}/64"), "dev", &edge_if, "nodad"]);
        topo.edge.exec(&["ip", "link", "set", &edge_if, "up"]);
        self.core.exec(&["ip", "addr", "add", &format!("{core_addr}/64"), "dev", &core_if, "nodad"]);
        self.core.exec(&["ip", "link", "set", &core_if, "up"]);
        let link = Link { via: core_addr };
        link.heal(topo);
        link
    }

    /// Compacts the store's history up to its current revision (what a
    /// node cut off for long finds when it comes back).
    pub fn compact(&self) -> i64 {
        let (ok, out) = self.ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok).expect("endpoint status");
        let rev = v[0]["Status"]["header"]["revision"].as_i64().expect("a revision");
        let (ok, out) = self.ctl(&["compact", &rev.to_string()]);
        assert!(ok, "etcdctl compact {rev}: {out}");
        rev
    }
}
