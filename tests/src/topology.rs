//! The standard test topology and the agent running in it.
//!
//! ```text
//!  peer netns                                edge netns (tollgate, XDP on veth)
//!  192.0.2.2/24  2001:db8:ffff::2/64  <-->   192.0.2.1/24  2001:db8:ffff::1/64
//!  attacker  203.0.113.10   2001:db8:1::10   (blocked in most tests)
//!  trusted   203.0.113.20   2001:db8:1::20   (inside the blocked prefix, allowlisted)
//!  customer  198.51.100.10  2001:db8:2::10
//! ```

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tollgate_common::Counter;

use crate::{
    netns::{NetNs, PIN_ROOT, ip},
    unique, wait_for,
};

pub const EDGE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
pub const EDGE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1));
pub const ATTACKER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
pub const ATTACKER_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10));
pub const TRUSTED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20));
pub const TRUSTED_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x20));
pub const CUSTOMER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
pub const CUSTOMER_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10));

/// The edge address of the same family as `src`.
pub fn edge_for(src: IpAddr) -> IpAddr {
    if src.is_ipv4() { EDGE_V4 } else { EDGE_V6 }
}

pub struct Topology {
    // Field order is drop order: namespaces go last.
    pub edge_if: String,
    pub edge: NetNs,
    pub peer: NetNs,
}

impl Topology {
    pub fn new() -> Self {
        let edge = NetNs::new(unique("e"));
        let peer = NetNs::new(unique("p"));
        let edge_if = unique("v");
        let peer_if = format!("{edge_if}p");
        ip(&[
            "link",
            "add",
            &edge_if,
            "netns",
            edge.name(),
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
            "netns",
            peer.name(),
        ]);
        for (ns, ifname, v4, v6) in [
            (&edge, &edge_if, "192.0.2.1/24", "2001:db8:ffff::1/64"),
            (&peer, &peer_if, "192.0.2.2/24", "2001:db8:ffff::2/64"),
        ] {
            ns.exec(&["ip", "addr", "add", v4, "dev", ifname]);
            ns.exec(&["ip", "addr", "add", v6, "dev", ifname, "nodad"]);
            ns.exec(&["ip", "link", "set", ifname, "up"]);
        }
        for a in ["203.0.113.10/32", "203.0.113.20/32", "198.51.100.10/32"] {
            peer.exec(&["ip", "addr", "add", a, "dev", &peer_if]);
        }
        for a in ["2001:db8:1::10/128", "2001:db8:1::20/128", "2001:db8:2::10/128"] {
            peer.exec(&["ip", "addr", "add", a, "dev", &peer_if, "nodad"]);
        }
        for r in ["203.0.113.0/24", "198.51.100.0/24", "2001:db8:1::/48", "2001:db8:2::/48"] {
            edge.exec(&["ip", "route", "add", r, "dev", &edge_if]);
        }
        Self { edge_if, edge, peer }
    }

    /// Adds `n` more source addresses to the peer, 198.51.100.101 onwards
    /// (hijacked PBXs of many customers), and returns them.
    pub fn more_sources(&self, n: u8) -> Vec<IpAddr> {
        let peer_if = format!("{}p", self.edge_if);
        (1..=n)
            .map(|i| {
                let addr = Ipv4Addr::new(198, 51, 100, 100 + i);
                self.peer.exec(&["ip", "addr", "add", &format!("{addr}/32"), "dev", &peer_if]);
                IpAddr::V4(addr)
            })
            .collect()
    }

    /// Gives the peer a permanent neighbour entry for the edge's IPv6
    /// address. With --block-all-ports a blocked IPv6 source's own neighbour
    /// solicitations are dropped (as intended), so without this the peer
    /// would never send the packets a test wants to see dropped.
    pub fn static_neighbours(&self) {
        let out = self.edge.exec(&["cat", &format!("/sys/class/net/{}/address", self.edge_if)]);
        let mac = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let peer_if = format!("{}p", self.edge_if);
        self.peer.exec(&[
            "ip",
            "neigh",
            "replace",
            "2001:db8:ffff::1",
            "lladdr",
            &mac,
            "dev",
            &peer_if,
            "nud",
            "permanent",
        ]);
    }

    /// Whether an XDP program is attached to the edge interface.
    pub fn xdp_attached(&self) -> bool {
        let out = self.edge.exec(&["ip", "link", "show", "dev", &self.edge_if]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// `tollgate run` inside the edge namespace, with its own pin directory.
pub struct Agent {
    child: Option<Child>,
    /// The `tollgate` it runs: [`crate::tollgate_bin`], or an installed one.
    bin: PathBuf,
    pub pin_dir: PathBuf,
    /// This agent's control socket (each test agent has its own).
    pub control_socket: PathBuf,
    /// Its `--state-dir` (the identity key), kept across restarts.
    pub state_dir: PathBuf,
    log: PathBuf,
    edge_ns: String,
    /// Every interface it attaches to (`--iface` each).
    ifaces: Vec<String>,
    /// Whether it is told them with `--iface` (else its configuration
    /// file names them).
    iface_flags: bool,
    args: Vec<String>,
    /// Extra environment for the agent process (kept across restarts).
    env: Vec<(String, String)>,
    /// `--metrics-addr`: [`METRICS_ADDR`] unless `args` give one.
    metrics_addr: SocketAddr,
}

pub const METRICS_ADDR: &str = "127.0.0.1:9465";

impl Agent {
    /// Starts the agent on the edge interface with extra `args` and waits
    /// until its metrics endpoint reports the interface attached.
    pub fn start(topo: &Topology, args: &[&str]) -> Self {
        Self::start_with_pin(topo, &PathBuf::from(PIN_ROOT).join(unique("pin")), args)
    }

    /// Like [`Agent::start`], with the pin directory of an earlier agent.
    pub fn start_with_pin(topo: &Topology, pin_dir: &std::path::Path, args: &[&str]) -> Self {
        Self::start_with(topo, pin_dir, &[], args)
    }

    /// Like [`Agent::start`], with extra environment variables for the agent
    /// (e.g. `TOLLGATE_EGRESS_ATTACH`), kept when it is restarted.
    pub fn start_with_env(topo: &Topology, env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_with(topo, &PathBuf::from(PIN_ROOT).join(unique("pin")), env, args)
    }

    /// The general form: an earlier agent's pin directory, extra environment.
    pub fn start_with(
        topo: &Topology,
        pin_dir: &std::path::Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        Self::start_on(&topo.edge, &[&topo.edge_if], pin_dir, env, args)
    }

    /// Like [`Agent::start`], with the edge interface named only by the
    /// configuration file `args` give (`--config FILE`), not by `--iface`.
    pub fn start_configured(topo: &Topology, args: &[&str]) -> Self {
        let pin_dir = PathBuf::from(PIN_ROOT).join(unique("pin"));
        let mut agent = Self::new(crate::tollgate_bin(), &topo.edge, &[&topo.edge_if], &pin_dir, &[], args);
        agent.iface_flags = false;
        agent.spawn();
        agent
    }

    /// The most general form: in namespace `ns`, attached to every one of
    /// `ifaces` (a router with XDP on each interface SIP enters by).
    pub fn start_on(
        ns: &NetNs,
        ifaces: &[&str],
        pin_dir: &std::path::Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let mut agent = Self::new(crate::tollgate_bin(), ns, ifaces, pin_dir, env, args);
        agent.spawn();
        agent
    }

    /// Like [`Agent::start_with_pin`], running `bin` (a package's installed
    /// binary) with `state_dir` as its --state-dir (which it removes on drop
    /// like the others).
    pub fn start_installed(
        topo: &Topology,
        bin: &std::path::Path,
        pin_dir: &std::path::Path,
        state_dir: &std::path::Path,
        args: &[&str],
    ) -> Self {
        let mut agent = Self::new(bin.to_owned(), &topo.edge, &[&topo.edge_if], pin_dir, &[], args);
        agent.state_dir = state_dir.to_owned();
        agent.spawn();
        agent
    }

    /// An agent of `bin`, not started yet.
    fn new(
        bin: PathBuf,
        ns: &NetNs,
        ifaces: &[&str],
        pin_dir: &std::path::Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let pin_dir = pin_dir.to_owned();
        let log = std::env::temp_dir().join(format!("{}.log", unique("agent")));
        let metrics_addr = args
            .iter()
            .position(|a| *a == "--metrics-addr")
            .and_then(|i| args.get(i + 1))
            .unwrap_or(&METRICS_ADDR)
            .parse()
            .expect("--metrics-addr is an address:port");
        Self {
            child: None,
            bin,
            control_socket: std::env::temp_dir().join(format!("{}.sock", unique("ctl"))),
            state_dir: std::env::temp_dir().join(unique("state")),
            pin_dir,
            log,
            edge_ns: ns.path(),
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            iface_flags: true,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            metrics_addr,
        }
    }

    /// Starts the agent again with the same arguments and pin directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("agent log");
        // Exactly the packaged unit's capabilities, so every test that runs
        // an agent proves the unit's set is enough.
        let mut cmd = crate::unit::confined(&self.bin, &crate::unit::capabilities());
        cmd.arg("run");
        if self.iface_flags {
            for iface in &self.ifaces {
                cmd.args(["--iface", iface]);
            }
        }
        // Never the host's /etc/tollgate/tollgate.toml (a package test may
        // have installed one): an empty configuration unless the test gives
        // its own.
        if !self.args.iter().any(|a| a == "--config" || a.starts_with("--config=")) {
            cmd.args(["--config", "/dev/null"]);
        }
        if !self.args.iter().any(|a| a == "--metrics-addr") {
            cmd.args(["--metrics-addr", METRICS_ADDR]);
        }
        cmd.arg("--pin-path")
            .arg(&self.pin_dir)
            .arg("--control-socket")
            .arg(&self.control_socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        in_namespace(&mut cmd, &self.edge_ns);
        self.child = Some(cmd.spawn().expect("spawning tollgate"));
        let want: Vec<String> =
            self.ifaces.iter().map(|i| format!("tollgate_xdp_attached{{interface=\"{i}\"")).collect();
        // Generous: under the kernel matrix's software emulation, verifying
        // the program twice (the start-up self-test, then the real load)
        // takes about 25 s on 6.1; on hardware, well under a second.
        let ready = wait_for(Duration::from_secs(90), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tollgate exited during start-up ({status}):\n{}", self.log_text());
            }
            self.metrics().filter(|m| want.iter().all(|w| m.contains(w)))
        });
        assert!(ready.is_some(), "tollgate did not become ready:\n{}", self.log_text());
    }

    /// The running agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the running agent (SIGHUP: reload).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("the agent is running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// Sends a signal and waits for the agent to exit; returns its exit code.
    pub fn stop(&mut self, signal: i32) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
        match status {
            Some(s) => s.code(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tollgate did not exit after signal {signal}:\n{}", self.log_text());
            }
        }
    }

    /// Kills the agent without giving it a chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The metrics page, fetched from inside the edge namespace.
    pub fn metrics(&self) -> Option<String> {
        self.metrics_reader()()
    }

    /// A function that fetches the metrics page, usable from any thread.
    pub fn metrics_reader(&self) -> impl Fn() -> Option<String> + Send + 'static {
        let (ns, addr) = (self.edge_ns.clone(), self.metrics_addr);
        move || match crate::http::get(&ns, addr, "/metrics", Duration::from_secs(5)) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Where its metrics endpoint listens (in its namespace).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Packet/byte totals per verdict, read from the pinned kernel map.
    pub fn verdicts(&self) -> Vec<Counter> {
        tollgate::maps::Maps::open_pinned(&self.pin_dir)
            .expect("open pinned maps")
            .verdict_totals()
            .expect("read STATS")
            .to_vec()
    }

    /// Runs `tollgate SUBCOMMAND --pin-path <this agent's pins>` (status,
    /// top, detach) in the agent's network namespace, as an operator would
    /// on its host, and returns its standard output, panicking on failure.
    pub fn cli(&self, subcommand: &str) -> String {
        let mut cmd = Command::new(&self.bin);
        cmd.args([subcommand, "--pin-path"]).arg(&self.pin_dir);
        in_namespace(&mut cmd, &self.edge_ns);
        let out = cmd.output().expect("running tollgate");
        assert!(out.status.success(), "tollgate {subcommand}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `tollgate ARGS --control-socket <this agent's socket>` (restrict,
    /// lift, restrictions list): (success, stdout, stderr).
    pub fn control(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--control-socket")
            .arg(&self.control_socket)
            .output()
            .expect("running tollgate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What the kernel counts for one source address, read from the pinned
    /// per-source map.
    pub fn source(&self, addr: IpAddr) -> Option<tollgate_common::SourceStats> {
        tollgate::maps::Maps::open_pinned(&self.pin_dir)
            .expect("open pinned maps")
            .sources()
            .into_iter()
            .find_map(|(a, s)| (a == addr).then_some(s))
    }

    /// Packets counted under one verdict code.
    pub fn packets(&self, verdict: u32) -> u64 {
        self.verdicts()[verdict as usize].packets
    }
}

/// Sends `n` UDP datagrams from `src` (an address of the peer) to the edge's
/// `port` and returns how many arrived, once the kernel has counted all of
/// them under some verdict (so "0 arrived" is not a race). Reads the
/// agent's pinned maps, so it works after the agent exited leaving them.
pub fn udp_delivered(topo: &Topology, agent: &Agent, src: IpAddr, port: u16, n: usize) -> usize {
    let dst = SocketAddr::new(edge_for(src), port);
    let sink = crate::traffic::UdpSink::bind(&topo.edge, dst);
    let before: u64 = agent.verdicts().iter().map(|c| c.packets).sum();
    crate::traffic::udp_burst(&topo.peer, src, dst, n);
    let seen = wait_for(Duration::from_secs(5), || {
        let now: u64 = agent.verdicts().iter().map(|c| c.packets).sum();
        (now >= before + n as u64).then_some(())
    });
    assert!(seen.is_some(), "the XDP program did not see the {n} packets from {src}");
    sink.drain()
}

/// Sends the SIP message fixture `name` `n` times over UDP from `src` (an
/// address of the peer) to the edge, each time as a call of its own (its
/// own Call-ID: the kernel counts calls, not packets).
pub fn send_calls(topo: &Topology, src: IpAddr, name: &'static str, n: u32) {
    let dst = SocketAddr::new(edge_for(src), 5060);
    topo.peer.run(move || {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind");
        for _ in 0..n {
            sock.send_to(&crate::fresh_call(tollgate_common::corpus::fixture(name)), dst).expect("send");
            // Stay well inside socket buffers: losses must come from XDP only.
            std::thread::sleep(Duration::from_micros(200));
        }
    });
}

/// Makes `cmd` run in the network namespace at `ns` (only the network
/// namespace: the BPF filesystem stays visible, unlike `ip netns exec`).
pub fn in_namespace(cmd: &mut Command, ns: &str) {
    let ns = ns.to_owned();
    // SAFETY: only async-signal-safe work (open + setns) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let f = std::fs::File::open(&ns)?;
            if libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The value of one sample in a Prometheus text page, e.g.
/// `tollgate_xdp_packets_total{action="drop",reason="blocklist"}`.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
        // Whatever the test did, leave no pinned program or map behind.
        if self.pin_dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.pin_dir)
        {
            eprintln!("warning: removing {}: {e}", self.pin_dir.display());
        }
        let _ = fs::remove_file(&self.control_socket);
        let _ = fs::remove_dir_all(&self.state_dir);
        if std::thread::panicking() {
            eprintln!("--- tollgate log ---\n{}", self.log_text());
        }
        let _ = fs::remove_file(&self.log);
    }
}
