//! `cargo xtask bench flood`: how fast each filter drops a UDP/5060 flood
//! from blocklisted sources, and what each dropped packet costs the
//! receiving core, all filters measured in one run, interleaved. README,
//! Performance, "Dropping a flood", has the method and the figures.
//!
//! Receivers, each on its own veth pair and pair of namespaces made at the
//! start (so the agent is started once, not once per round):
//! 1. no filter: a UDP socket on port 5060 that reads and discards;
//! 2. a bare `XDP_DROP` program in driver mode (the ceiling of the setup),
//!    and one that reads the frame's source first (the ceiling of any
//!    filter that looks at a packet);
//! 3. tollgate: the real agent (`tollgate run --xdp-mode driver`), its
//!    blocklist loaded from a `--feed` file;
//! 4. the same with the SIP stages cut (what an early drop would cost);
//! 5. nftables, netdev family, ingress hook of the veth, dropping UDP/5060
//!    from sources in two interval sets (IPv4 and IPv6);
//! 6. nftables, inet family, prerouting at filter priority with conntrack
//!    in use (a `ct state established,related accept` rule first), dropping
//!    the same.
//!
//! Every blocking receiver gets the same prefixes. IPv4's documentation
//! ranges hold only 768 addresses, so the list is 508 IPv4 /32s
//! (198.51.100.1-254, 203.0.113.1-254) and IPv6 /64s in 2001:db8:100::/40
//! for the rest. The flood is half IPv4, half IPv6, every packet from a
//! listed prefix and the IPv6 ones spread over the list (see
//! [`generator`]), so the lookups find different entries of a full list:
//! the same packets for every receiver, and a hit for each, as in a flood
//! from known attackers.
//!
//! What is charged to the receiver. A veth's transmit (in the generator's
//! system call) puts the packet on the peer's receive ring and schedules
//! the peer's NAPI; without threaded NAPI the receive path then runs as a
//! softirq on the *sender's* core, mixed with the sender's own work. So
//! each receiving veth gets GRO on (veth then uses NAPI with or without
//! XDP, as a real NIC driver does) and threaded NAPI, its poll thread
//! pinned to CPU 1 and the generator to CPU 0. Everything the receiver
//! does per packet (the XDP program, building the skb, GRO, the nftables
//! hooks, conntrack, the IP and UDP layers) runs in that thread; its run
//! time (/proc/TID/schedstat) divided by the packets it took off the ring
//! (ethtool's `rx_queue_0_xdp_packets`, counted with or without a program)
//! is the CPU per packet. For the socket case the reading thread's run
//! time (also on CPU 1) is added.

pub mod bpf;
pub mod generator;

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tollgate_common::{BLOCKLIST_CAPACITY, corpus::fixture, frames::FrameBuilder, verdict};

use crate::{
    TempFile,
    topology::{Agent, EDGE_V4, EDGE_V6, Topology, metric_value},
    wait_for,
};

/// The most prefixes one feed may give the agent: the blocklist map's
/// capacity less what the agent keeps free for operator and automatic
/// blocks.
/// The blocklist the issue asks for: 100,000 prefixes, for every filter.
pub const PREFIXES: usize = 100_000;

/// The agent's --blocklist-capacity for `n` prefixes from a feed (which
/// leaves RESERVE entries free).
fn capacity_for(n: usize) -> usize {
    (n + tollgate::daemon::feeds::RESERVE).next_power_of_two().max(BLOCKLIST_CAPACITY as usize)
}

/// The core the generator runs on, and the one the receivers' NAPI
/// threads (and the socket reader) run on.
const GEN_CPU: usize = 0;
const RX_CPU: usize = 1;

/// Distinct frames in the flood (a multiple of the generator's batch).
const FRAMES: usize = 4096;

/// `cargo xtask bench flood` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Short: 1 s per measurement, 2 rounds.
    #[arg(long)]
    pub quick: bool,
    /// Seconds of flood per measurement (default 3; 1 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Interleaved rounds; medians are reported (default 5; 2 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// The generator: `live` (BPF_PROG_TEST_RUN live frames, XDP_TX) or
    /// `packet` (AF_PACKET, PACKET_QDISC_BYPASS, sendmmsg).
    #[arg(long, value_enum, default_value_t = GeneratorKind::Live)]
    pub generator: GeneratorKind,
    /// Blocklisted prefixes, the same for every filter (the agent's
    /// --blocklist-capacity is sized for them).
    #[arg(long, default_value_t = PREFIXES)]
    pub prefixes: usize,
    /// Flood from this many of the listed IPv6 prefixes only (default: as
    /// many as the generator varies: the live one 65,536, the packet one
    /// 2,048 spread over the list): few keeps the lookups in cache.
    #[arg(long)]
    pub v6_sources: Option<usize>,
}

impl Args {
    /// The defaults, or `--quick`'s (for a caller running every benchmark).
    pub fn defaults(quick: bool) -> Self {
        Self {
            quick,
            seconds: None,
            rounds: None,
            generator: GeneratorKind::Live,
            prefixes: PREFIXES,
            v6_sources: None,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum GeneratorKind {
    Live,
    Packet,
}

/// How a receiver's flood is made.
enum Generator {
    Packet {
        /// The AF_PACKET socket on the peer end.
        fd: OwnedFd,
        frames: Vec<Vec<u8>>,
    },
    Live {
        prog: bpf::Program,
        frames: Vec<Vec<u8>>,
        ifindex: u32,
        /// An XDP_PASS on the generator's veth: live frames need its XDP
        /// receive queue registered (nothing arrives there).
        _pass: (bpf::Program, OwnedFd),
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Filter {
    None,
    BareDrop,
    /// XDP_DROP after reading the source: the first touch of the frame.
    ReadDrop,
    Tollgate,
    /// The agent's program with its SIP stages cut off (its jump table's
    /// parse slot emptied). A listed source is dropped before the SIP
    /// stages (README, "What is dropped"), so this should cost what
    /// tollgate does: the row shows that no SIP is read for it. Not how
    /// the agent runs.
    TollgateCut,
    NftIngress,
    NftPrerouting,
}

impl Filter {
    const ALL: [Filter; 7] = [
        Filter::None,
        Filter::BareDrop,
        Filter::ReadDrop,
        Filter::Tollgate,
        Filter::TollgateCut,
        Filter::NftIngress,
        Filter::NftPrerouting,
    ];

    fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter (socket reads, discards)",
            Filter::BareDrop => "bare XDP_DROP (driver mode)",
            Filter::ReadDrop => "  XDP_DROP after reading the source",
            Filter::Tollgate => "tollgate XDP (agent, driver mode)",
            Filter::TollgateCut => "  the same, SIP stages cut",
            Filter::NftIngress => "nftables netdev ingress",
            Filter::NftPrerouting => "nftables prerouting + conntrack",
        }
    }
}

/// The blocklist every filter gets.
struct Blocklist {
    v4: Vec<Ipv4Addr>,
    /// The /64s, as their first address.
    v6: Vec<Ipv6Addr>,
}

impl Blocklist {
    fn new(prefixes: usize) -> Self {
        let v4: Vec<Ipv4Addr> = [[198, 51, 100], [203, 0, 113]]
            .iter()
            .flat_map(|[a, b, c]| (1..=254).map(move |d| Ipv4Addr::new(*a, *b, *c, d)))
            .collect();
        assert!(prefixes > v4.len() + FRAMES / 2, "--prefixes: at least {}", v4.len() + FRAMES / 2 + 1);
        let v6 = (0..(prefixes - v4.len()) as u32)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0x100 + (i >> 16) as u16, i as u16, 0, 0, 0, 0))
            .collect();
        Self { v4, v6 }
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// One prefix a line (the agent's feed format).
    fn feed(&self) -> String {
        let mut s = String::new();
        for a in &self.v4 {
            writeln!(s, "{a}/32").unwrap();
        }
        for a in &self.v6 {
            writeln!(s, "{a}/64").unwrap();
        }
        s
    }

    /// The nftables sets and rules, in `family` with the chain `hook`.
    fn nft(&self, family: &str, hook: &str, before_drop: &str) -> String {
        let join = |v: Vec<String>| v.join(", ");
        let v4 = join(self.v4.iter().map(|a| format!("{a}/32")).collect());
        let v6 = join(self.v6.iter().map(|a| format!("{a}/64")).collect());
        format!(
            "table {family} tgflood {{\n\
             set v4 {{ type ipv4_addr; flags interval; elements = {{ {v4} }} }}\n\
             set v6 {{ type ipv6_addr; flags interval; elements = {{ {v6} }} }}\n\
             chain filter {{\n{hook}\n{before_drop}\n\
             ip saddr @v4 udp dport 5060 counter drop\n\
             ip6 saddr @v6 udp dport 5060 counter drop\n}}\n}}\n"
        )
    }

    /// The packet generator's sources, in sending order: IPv4 and IPv6
    /// alternately; each listed IPv4 address with four source ports, and
    /// IPv6 addresses in `v6_sources` prefixes (at most [`FRAMES`] / 2)
    /// spread over the whole list.
    fn sources(&self, v6_sources: usize) -> Vec<(IpAddr, u16)> {
        let half = FRAMES / 2;
        let m = v6_sources.min(half);
        (0..half)
            .flat_map(|k| {
                let v4 = self.v4[k % self.v4.len()];
                let p = self.v6[(k % m) * self.v6.len() / m].segments();
                let v6 = Ipv6Addr::new(p[0], p[1], p[2], p[3], 0, 0, 0, 1 + k as u16);
                [(IpAddr::V4(v4), 40000 + (k / self.v4.len()) as u16), (IpAddr::V6(v6), 40000)]
            })
            .collect()
    }
}

/// A UDP socket on the edge's port 5060 (both families) that a thread on
/// the receiving core reads and discards.
struct Sink {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    tid: libc::pid_t,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(topo: &Topology) -> Self {
        let sock = topo.edge.run(|| UdpSocket::bind("[::]:5060").expect("bind [::]:5060 in the edge"));
        sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let (stop, received) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
            std::thread::spawn(move || {
                generator::pin(0, RX_CPU).expect("pin the socket reader");
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() }).expect("tid");
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if sock.recv(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let tid = rx.recv().expect("the reader's tid");
        Self { stop, received, tid, thread: Some(thread) }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One filter's receiver. Field order is drop order: the agent, program
/// and socket go before the topology.
struct Receiver {
    filter: Filter,
    agent: Option<Agent>,
    _bare: Option<bpf::BareDrop>,
    sink: Option<Sink>,
    _feed: Option<TempFile>,
    generator: Generator,
    /// The receiving veth's NAPI thread.
    napi_tid: libc::pid_t,
    topo: Topology,
}

/// Counters of one receiver at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    /// Packets the receiving veth's NAPI took off its ring.
    taken: u64,
    /// Packets the filter dropped (for no filter: the socket received).
    handled: u64,
    /// Run time of the NAPI thread (and the socket reader), ns.
    rx_ns: u64,
    /// XDP frames the generator's veth handed to the receiver, and those
    /// it could not (ring full): the live generator's sent and refused.
    xdp_xmit: u64,
    xdp_xmit_errors: u64,
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    sent: generator::Sent,
    taken: u64,
    handled: u64,
    rx_ns: u64,
}

impl Sample {
    fn secs(&self) -> f64 {
        self.sent.elapsed.as_secs_f64()
    }
    fn handled_pps(&self) -> f64 {
        self.handled as f64 / self.secs()
    }
    fn sent_pps(&self) -> f64 {
        self.sent.sent as f64 / self.secs()
    }
    fn ns_per_packet(&self) -> f64 {
        self.rx_ns as f64 / self.taken.max(1) as f64
    }
    fn busy(&self) -> f64 {
        self.rx_ns as f64 / 1e9 / self.secs()
    }
}

/// Run time of thread `tid` (any process's) in ns, from its schedstat.
fn run_time_ns(tid: libc::pid_t) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{tid}/schedstat"))
        .unwrap_or_else(|e| panic!("/proc/{tid}/schedstat: {e}"));
    s.split_whitespace().next().and_then(|v| v.parse().ok()).expect("schedstat's first field")
}

/// Threads named `napi/...` (the kernel's NAPI poll threads).
fn napi_threads() -> HashSet<(libc::pid_t, String)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| {
            let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.starts_with("napi/").then(|| (pid, comm.trim().to_owned()))
        })
        .collect()
}

/// `ethtool -S` of the edge veth, as (name, value).
fn ethtool_stats(topo: &Topology) -> Vec<(String, u64)> {
    ethtool_stats_of(&topo.edge, &topo.edge_if)
}

fn ethtool_stats_of(ns: &crate::netns::NetNs, ifname: &str) -> Vec<(String, u64)> {
    let out = ns.exec(&["ethtool", "-S", ifname]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(k, _)| k == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("ethtool -S: no {name}"))
}

/// The sum of the packet counters of the `tgflood` table.
fn nft_counted(topo: &Topology, family: &str) -> u64 {
    let out = topo.edge.exec(&["nft", "list", "table", family, "tgflood"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).filter(|w| w[0] == "packets").filter_map(|w| w[1].parse::<u64>().ok()).sum()
}

pub(crate) fn mac(ns: &crate::netns::NetNs, ifname: &str) -> [u8; 6] {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("MAC")).collect();
    bytes.try_into().expect("a 6-byte MAC")
}

impl Receiver {
    fn new(filter: Filter, list: &Blocklist, kind: GeneratorKind, v6_sources: usize) -> Self {
        let topo = Topology::new();
        let edge_if = topo.edge_if.clone();
        let peer_if = format!("{edge_if}p");
        // GRO makes veth receive through NAPI with or without XDP (as a NIC
        // driver does), so every filter's receive path runs in the NAPI
        // thread made below.
        topo.edge.exec(&["ethtool", "-K", &edge_if, "gro", "on"]);
        // ... and takes packets through NAPI only when the sending veth
        // offers no TSO (veth_skb_is_eligible_for_gro): without this the
        // nftables and socket cases would run on the sender's core.
        topo.peer.exec(&["ethtool", "-K", &peer_if, "tso", "off"]);
        let (mut agent, mut bare, mut sink, mut feed) = (None, None, None, None);
        match filter {
            Filter::None => sink = Some(Sink::start(&topo)),
            Filter::BareDrop => {
                let i = edge_if.clone();
                bare = Some(topo.edge.run(move || bpf::BareDrop::attach(&i)).expect("XDP_DROP"));
            }
            Filter::ReadDrop => {
                let i = edge_if.clone();
                bare = Some(topo.edge.run(move || bpf::BareDrop::attach_reading(&i)).expect("XDP_DROP"));
            }
            Filter::Tollgate | Filter::TollgateCut => {
                let file = TempFile::new("feed");
                std::fs::write(&file.0, list.feed()).expect("write the feed file");
                let spec = format!("name=flood,path={}", file.path());
                let capacity = capacity_for(list.len()).to_string();
                let a = Agent::start(
                    &topo,
                    &["--xdp-mode", "driver", "--feed", &spec, "--blocklist-capacity", &capacity],
                );
                let series = "tollgate_blocklist_entries{state=\"active\"}";
                let loaded = wait_for(Duration::from_secs(120), || {
                    a.metrics().and_then(|m| metric_value(&m, series)).filter(|n| *n as usize >= list.len())
                });
                assert!(loaded.is_some(), "the agent did not load the feed's {} prefixes", list.len());
                if filter == Filter::TollgateCut {
                    cut_sip_stages(&a);
                }
                agent = Some(a);
                feed = Some(file);
            }
            Filter::NftIngress | Filter::NftPrerouting => {
                let rules = if filter == Filter::NftIngress {
                    let hook = format!("type filter hook ingress device \"{edge_if}\" priority -500;");
                    list.nft("netdev", &hook, "")
                } else {
                    list.nft(
                        "inet",
                        "type filter hook prerouting priority filter;",
                        "ct state established,related accept",
                    )
                };
                let file = TempFile::new("nft");
                std::fs::write(&file.0, rules).expect("write the ruleset");
                topo.edge.exec(&["nft", "-f", file.path()]);
            }
        }
        let before = napi_threads();
        topo.edge.exec(&["sh", "-c", &format!("echo 1 > /sys/class/net/{edge_if}/threaded")]);
        // The thread's name is `napi/IFNAME-ID`, cut to 15 characters.
        let name: String = format!("napi/{edge_if}-").chars().take(15).collect();
        let napi_tid = wait_for(Duration::from_secs(5), || {
            let new: Vec<_> =
                napi_threads().difference(&before).filter(|(_, c)| c.starts_with(&name)).cloned().collect();
            (new.len() == 1).then(|| new[0].0)
        })
        .unwrap_or_else(|| panic!("no NAPI thread for {edge_if} after enabling threaded NAPI"));
        generator::pin(napi_tid, RX_CPU).expect("pin the NAPI thread");
        let (dst_mac, src_mac) = (mac(&topo.edge, &edge_if), mac(&topo.peer, &peer_if));
        let payload = fixture("svmap-options.sip");
        let generator = match kind {
            GeneratorKind::Packet => {
                let frames = list
                    .sources(v6_sources)
                    .into_iter()
                    .map(|(src, sport)| {
                        let dst = if src.is_ipv4() { EDGE_V4 } else { EDGE_V6 };
                        let mut f = FrameBuilder::udp(src, dst, sport, 5060).payload(payload).build();
                        generator::finish_frame(&mut f, dst_mac, src_mac);
                        f
                    })
                    .collect();
                let fd = topo.peer.run(move || generator::open(&peer_if)).expect("the generator's socket");
                Generator::Packet { fd, frames }
            }
            GeneratorKind::Live => {
                // IPv6 from the list's /64s, IPv4 from each listed /24, in turn.
                let frames = ["2001:db8:100::", "203.0.113.1", "2001:db8:100::", "198.51.100.1"]
                    .iter()
                    .map(|a| {
                        let src: IpAddr = a.parse().expect("an address");
                        let dst = if src.is_ipv4() { EDGE_V4 } else { EDGE_V6 };
                        generator::live_frame(src, dst, payload, dst_mac, src_mac)
                    })
                    .collect();
                let n6 = list.v6.len().min(v6_sources) as u32;
                let (pass, ifindex) = topo.peer.run(move || {
                    let pass = bpf::Program::action(bpf::XDP_PASS).expect("XDP_PASS");
                    let link = pass.attach(&peer_if).expect("XDP_PASS on the generator's veth");
                    ((pass, link), bpf::ifindex(&peer_if).expect("ifindex"))
                });
                let prog = bpf::Program::live_generator(n6).expect("the live-frames generator");
                Generator::Live { prog, frames, ifindex, _pass: pass }
            }
        };
        Self { filter, agent, _bare: bare, sink, _feed: feed, generator, napi_tid, topo }
    }

    fn snapshot(&self) -> Snapshot {
        let stats = ethtool_stats(&self.topo);
        let handled = match self.filter {
            Filter::None => self.sink.as_ref().expect("sink").received.load(Ordering::Relaxed),
            Filter::BareDrop | Filter::ReadDrop => stat(&stats, "rx_queue_0_xdp_drops"),
            Filter::Tollgate | Filter::TollgateCut => {
                self.agent.as_ref().expect("agent").packets(verdict::DROP_BLOCKLIST)
            }
            Filter::NftIngress => nft_counted(&self.topo, "netdev"),
            Filter::NftPrerouting => nft_counted(&self.topo, "inet"),
        };
        let reader = self.sink.as_ref().map_or(0, |s| run_time_ns(s.tid));
        let peer = ethtool_stats_of(&self.topo.peer, &format!("{}p", self.topo.edge_if));
        Snapshot {
            taken: stat(&stats, "rx_queue_0_xdp_packets"),
            handled,
            rx_ns: run_time_ns(self.napi_tid) + reader,
            xdp_xmit: stat(&peer, "tx_queue_0_xdp_xmit"),
            xdp_xmit_errors: stat(&peer, "tx_queue_0_xdp_xmit_errors"),
        }
    }

    fn measure(&self, duration: Duration) -> Sample {
        let before = self.snapshot();
        let peer_ns = self.topo.peer.path();
        let sent = std::thread::scope(|s| {
            s.spawn(|| {
                generator::pin(0, GEN_CPU).expect("pin the generator");
                match &self.generator {
                    Generator::Packet { fd, frames } => generator::flood(fd, frames, duration),
                    Generator::Live { prog, frames, ifindex, .. } => {
                        crate::netns::enter(&peer_ns);
                        let (elapsed, cpu) = generator::flood_live(prog, frames, *ifindex, duration);
                        generator::Sent { sent: 0, full: 0, elapsed, cpu }
                    }
                }
            })
            .join()
            .expect("generator")
        });
        // What is still on the ring is taken within microseconds; the
        // socket reader may be a little behind.
        std::thread::sleep(Duration::from_millis(200));
        let after = self.snapshot();
        let mut sent = sent;
        if let Generator::Live { .. } = self.generator {
            sent.sent = after.xdp_xmit - before.xdp_xmit;
            sent.full = after.xdp_xmit_errors - before.xdp_xmit_errors;
        }
        Sample {
            sent,
            taken: after.taken - before.taken,
            handled: after.handled - before.handled,
            rx_ns: after.rx_ns - before.rx_ns,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark and prints its table.
pub fn run(args: Args) {
    crate::netns::sweep_stale();
    let seconds = args.seconds.unwrap_or(if args.quick { 1.0 } else { 3.0 });
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 5 });
    let duration = Duration::from_secs_f64(seconds);
    let list = Blocklist::new(args.prefixes);
    // The agent runs with its unit's capabilities, which cannot mount the
    // BPF filesystem its pins go on; on a host where nothing mounted it,
    // mount it as the unconfined agent (and systemd) would.
    tollgate::kernel::loader::ensure_bpffs(std::path::Path::new(crate::netns::PIN_ROOT))
        .expect("a BPF filesystem on /sys/fs/bpf");
    let filters: Vec<Filter> = Filter::ALL.into_iter().collect();
    // The live generator varies one 16-bit word of the IPv6 source.
    let most = match args.generator {
        GeneratorKind::Live => 65_536,
        GeneratorKind::Packet => FRAMES / 2,
    };
    let v6_sources = args.v6_sources.unwrap_or(most).clamp(1, most).min(list.v6.len());
    let wire =
        FrameBuilder::udp(EDGE_V4, EDGE_V4, 1, 5060).payload(fixture("svmap-options.sip")).build().len();
    match args.generator {
        GeneratorKind::Packet => println!(
            "flood: UDP/5060 SVMAP-like OPTIONS ({wire} bytes IPv4), {FRAMES} frames round and round, half \
             IPv4 (every listed /32), half IPv6 (from {v6_sources} listed /64s spread over the list); generator \
             AF_PACKET + PACKET_QDISC_BYPASS + sendmmsg x{} on CPU {GEN_CPU}",
            generator::BATCH,
        ),
        GeneratorKind::Live => println!(
            "flood: UDP/5060 SVMAP-like OPTIONS ({wire} bytes IPv4), each frame from a random one of the \
             first {v6_sources} listed IPv6 /64s or of a listed IPv4 /24's 254 /32s (calls of 65,536 frames \
             of each family in turn); generator BPF_PROG_TEST_RUN live frames + XDP_TX on CPU {GEN_CPU}"
        ),
    }
    println!(
        "blocklist: {} prefixes for every filter ({} IPv4 /32, {} IPv6 /64); every flood packet is \
         from a listed prefix",
        list.len(),
        list.v4.len(),
        list.v6.len()
    );
    println!(
        "receiver: veth, GRO on, threaded NAPI pinned to CPU {RX_CPU}; {seconds} s per measurement, \
         {rounds} rounds interleaved, medians"
    );
    let receivers: Vec<Receiver> =
        filters.iter().map(|f| Receiver::new(*f, &list, args.generator, v6_sources)).collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); receivers.len()];
    for round in 1..=rounds {
        for (r, out) in receivers.iter().zip(samples.iter_mut()) {
            let s = r.measure(duration);
            eprintln!(
                "round {round} {:<36} sent {:>9.0}/s (ring full {:>9}) handled {:>9.0}/s taken {:>9} {:>6.0} ns/pkt busy {:>4.0}%",
                r.filter.name(),
                s.sent_pps(),
                s.sent.full,
                s.handled_pps(),
                s.taken,
                s.ns_per_packet(),
                s.busy() * 100.0
            );
            out.push(s);
        }
    }
    let programs = program_times(&receivers, duration);
    report(&filters, &samples, programs.as_ref());
}

/// One more measurement of each XDP receiver with the kernel's BPF
/// run-time statistics on (they cost two clock reads per run, so not
/// during the rounds): each XDP program's own ns per packet, and the live
/// generator program's.
struct ProgramTimes {
    receivers: Vec<(Filter, f64)>,
    generator: Option<f64>,
}

fn program_times(receivers: &[Receiver], duration: Duration) -> Option<ProgramTimes> {
    let _stats = bpf::enable_run_time_stats()
        .map_err(|e| println!("XDP program run times: not measured (BPF_ENABLE_STATS: {e})"))
        .ok()?;
    let per_run = |prog: &bpf::Program, r: &Receiver| {
        let before = prog.run_stats().expect("program info");
        r.measure(duration);
        let after = prog.run_stats().expect("program info");
        (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
    };
    let xdp =
        |f: Filter| matches!(f, Filter::BareDrop | Filter::ReadDrop | Filter::Tollgate | Filter::TollgateCut);
    let times = receivers
        .iter()
        .filter(|r| xdp(r.filter))
        .map(|r| {
            let prog = bpf::Program::by_id(attached_prog_id(&r.topo)).expect("the attached program");
            (r.filter, per_run(&prog, r))
        })
        .collect();
    let generator =
        receivers.iter().find(|r| r.filter == Filter::BareDrop).and_then(|r| match &r.generator {
            Generator::Live { prog, .. } => Some(per_run(prog, r)),
            Generator::Packet { .. } => None,
        });
    Some(ProgramTimes { receivers: times, generator })
}

/// Empties the parse slot of a running agent's pinned XDP jump table: its
/// first program then stages the payload, fails the tail call, and counts
/// and returns the verdict it decided (for a listed source, drop).
fn cut_sip_stages(agent: &Agent) {
    use aya::maps::{Map, MapData, ProgramArray};
    let data = MapData::from_pin(agent.pin_dir.join(tollgate_common::MAP_JUMP_XDP)).expect("pinned JUMP_XDP");
    let mut table = ProgramArray::try_from(Map::ProgramArray(data)).expect("JUMP_XDP is a program array");
    table.clear_index(&tollgate_common::JUMP_PARSE).expect("clearing the parse slot");
}

/// The id of the XDP program attached to the edge veth.
fn attached_prog_id(topo: &Topology) -> u32 {
    let out = topo.edge.exec(&["ip", "link", "show", "dev", &topo.edge_if]);
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
        .and_then(|w| w[2].parse().ok())
        .unwrap_or_else(|| panic!("no XDP program on {}: {text}", topo.edge_if))
}

/// The table: medians per filter, and ratios to nftables netdev ingress.
fn report(filters: &[Filter], samples: &[Vec<Sample>], programs: Option<&ProgramTimes>) {
    struct Row {
        filter: Filter,
        pps: f64,
        ns: f64,
        busy: f64,
        offered: f64,
        full: f64,
    }
    let rows: Vec<Row> = filters
        .iter()
        .zip(samples)
        .map(|(f, s)| Row {
            filter: *f,
            pps: median(s.iter().map(Sample::handled_pps).collect()),
            ns: median(s.iter().map(Sample::ns_per_packet).collect()),
            busy: median(s.iter().map(Sample::busy).collect()),
            offered: median(s.iter().map(|s| (s.sent.sent + s.sent.full) as f64 / s.secs()).collect()),
            full: median(
                s.iter().map(|s| s.sent.full as f64 / (s.sent.sent + s.sent.full).max(1) as f64).collect(),
            ),
        })
        .collect();
    let row = |f: Filter| rows.iter().find(|r| r.filter == f);
    let nft = row(Filter::NftIngress).expect("the nftables ingress row");
    let (nft_pps, nft_ns) = (nft.pps, nft.ns);
    println!();
    println!(
        "{:<36} {:>10} {:>7} {:>8} {:>7} {:>10} {:>6} {:>10} {:>5}",
        "receiver", "dropped/s", "vs nft", "rx ns/p", "vs nft", "1 core/s", "busy", "offered/s", "full"
    );
    for r in &rows {
        println!(
            "{:<36} {:>10.0} {:>6.2}x {:>8.0} {:>6.2}x {:>10.0} {:>5.0}% {:>10.0} {:>4.0}%{}",
            r.filter.name(),
            r.pps,
            r.pps / nft_pps,
            r.ns,
            nft_ns / r.ns,
            1e9 / r.ns,
            r.busy * 100.0,
            r.offered,
            r.full * 100.0,
            if r.filter == Filter::None { "  (dropped/s: read by the socket)" } else { "" },
        );
    }
    println!(
        "\ndropped/s: counted by the filter (nft counters, the agent's drop/blocklist, the veth's xdp_drops) \
         per second; rx ns/p: the receiving NAPI thread's run time (+ the socket reader's) per packet \
         taken off the ring; vs nft: pps over nftables netdev ingress's, and its ns/p over this row's \
         (times cheaper); 1 core/s: 1e9 / rx ns/p, what one receiving core would drop flat out; busy: \
         the NAPI thread's share of the wall time; offered/s: frames the generator offered (taken + \
         refused), full: the share refused because the receive ring was full"
    );
    if let Some(p) = programs {
        let mut line = String::from("XDP program's own ns per packet (BPF run-time stats, a separate pass):");
        for (f, ns) in &p.receivers {
            write!(line, " {} {ns:.0};", f.name().trim()).unwrap();
        }
        if let Some(g) = p.generator {
            write!(line, " the live generator's program {g:.0}").unwrap();
        }
        println!("{line}");
    }
    let Some(t) = row(Filter::Tollgate) else { return };
    let (by_pps, by_ns) = (t.pps / nft_pps, nft_ns / t.ns);
    let met = if by_ns >= 5.0 && by_pps >= 5.0 { "met" } else { "not met" };
    println!(
        "\ngoal: tollgate >= 5x nftables netdev ingress: {by_ns:.2}x by CPU per packet, {by_pps:.2}x by drop \
         rate: {met}"
    );
    if let Some(b) = row(Filter::BareDrop) {
        println!(
            "  ceiling of this setup: a bare XDP_DROP is {:.2}x nftables by CPU per packet ({:.0} ns), so the \
             veth path itself leaves room for 5x",
            nft_ns / b.ns,
            b.ns
        );
    }
    if let Some(r) = row(Filter::ReadDrop) {
        println!(
            "  reading the frame's source first (its first touch, a frame another core wrote) makes it {:.2}x \
             ({:.0} ns): the ceiling of any filter that looks at the packet",
            nft_ns / r.ns,
            r.ns
        );
    }
    let own = |f: Filter| programs.and_then(|p| p.receivers.iter().find(|(g, _)| *g == f)).map(|(_, ns)| *ns);
    if let Some(ns) = own(Filter::Tollgate) {
        println!(
            "  tollgate's program takes {ns:.0} of its {:.0} ns: a listed source is dropped after its headers \
             and the allowlist and blocklist lookups (one hash lookup per prefix length of its family, cold for \
             sources that vary), before any SIP is read (README, \"What is dropped\")",
            t.ns
        );
    }
    if let (Some(c), Some(ns)) = (row(Filter::TollgateCut), own(Filter::TollgateCut)) {
        println!(
            "  with the SIP stages cut the first program alone (headers, allowlist and blocklist lookups, \
             staging the payload, counters) takes {ns:.0} ns and the receiver {:.0} ns: {:.2}x nftables",
            c.ns,
            nft_ns / c.ns
        );
    }
    println!(
        "  drop rates here are not capacities: the receiving thread was {:.0}% busy while {:.0}% of the frames \
         found its ring full (it shares its core with other work and waits to be scheduled), so compare CPU \
         per packet and 1 core/s",
        t.busy * 100.0,
        t.full * 100.0
    );
}
