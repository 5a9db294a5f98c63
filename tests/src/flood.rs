//! `cargo xtask bench flood`: how fast each filter drops a UDP/5060 flood
//! from blocklisted sources, and what each dropped packet costs the
//! receiving core, all filters measured in one run, interleaved.
//!
//! Receivers, each on its own veth pair and pair of namespaces made at the
//! start (so the agent is started once, not once per round):
//! 1. no filter: a UDP socket on port 5060 that reads and discards;
//! 2. a bare `XDP_DROP` program in driver mode (the ceiling of the setup);
//! 3. tollgate: the real agent (`tollgate run --xdp-mode driver`), its
//!    blocklist loaded from a `--feed` file;
//! 4. nftables, netdev family, ingress hook of the veth, dropping UDP/5060
//!    from sources in two interval sets (IPv4 and IPv6);
//! 5. nftables, inet family, prerouting at filter priority with conntrack
//!    in use (a `ct state established,related accept` rule first), dropping
//!    the same.
//!
//! Every blocking receiver gets the same prefixes. IPv4's documentation
//! ranges hold only 768 addresses, so the list is 508 IPv4 /32s
//! (198.51.100.1-254, 203.0.113.1-254) and IPv6 /64s in 2001:db8:100::/40
//! for the rest. The flood is half IPv4 (every listed /32, four source
//! ports each) and half IPv6 (2,048 prefixes spread evenly over the list),
//! so every lookup has to find a different entry of a full list: the same
//! packets for every receiver, and a hit for each, as in a flood from known
//! attackers.
//!
//! What is charged to the receiver. A veth's transmit (here in the
//! generator's `sendmmsg`) puts the packet on the peer's receive ring and
//! schedules the peer's NAPI; without threaded NAPI the receive path then
//! runs as a softirq on the *sender's* core, mixed with the sender's own
//! work. So each receiving veth gets GRO on (veth then uses NAPI with or
//! without XDP, as a real NIC driver does) and threaded NAPI, its poll
//! thread pinned to CPU 1 and the generator to CPU 0. Everything the
//! receiver does per packet (the XDP program, building the skb, GRO, the
//! nftables hooks, conntrack, the IP and UDP layers) runs in that thread;
//! its run time (/proc/TID/schedstat) divided by the packets it took off
//! the ring (ethtool's `rx_queue_0_xdp_packets`, counted with or without a
//! program) is the CPU per packet. For the socket case the reading
//! thread's run time (also on CPU 1) is added.

pub mod bare_drop;
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
pub const FEED_LIMIT: usize = BLOCKLIST_CAPACITY as usize - tollgate::daemon::feeds::RESERVE;

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
    /// Blocklisted prefixes, the same for every filter. The agent takes at
    /// most FEED_LIMIT (61,440) from a feed; above that its row is left out
    /// and said why.
    #[arg(long, default_value_t = FEED_LIMIT)]
    pub prefixes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Filter {
    None,
    BareDrop,
    Tollgate,
    NftIngress,
    NftPrerouting,
}

impl Filter {
    const ALL: [Filter; 5] =
        [Filter::None, Filter::BareDrop, Filter::Tollgate, Filter::NftIngress, Filter::NftPrerouting];

    fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter (socket reads, discards)",
            Filter::BareDrop => "bare XDP_DROP (driver mode)",
            Filter::Tollgate => "tollgate XDP (agent, driver mode)",
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

    /// The flood's sources, in sending order: IPv4 and IPv6 alternately;
    /// each listed IPv4 address with four source ports, and IPv6 addresses
    /// in prefixes spread over the whole list.
    fn sources(&self) -> Vec<(IpAddr, u16)> {
        let half = FRAMES / 2;
        (0..half)
            .flat_map(|k| {
                let v4 = self.v4[k % self.v4.len()];
                let p = self.v6[k * self.v6.len() / half].segments();
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
    _bare: Option<bare_drop::BareDrop>,
    sink: Option<Sink>,
    _feed: Option<TempFile>,
    /// The generator's AF_PACKET socket on the peer end.
    gen_fd: OwnedFd,
    frames: Vec<Vec<u8>>,
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
    fn gen_ns_per_packet(&self) -> f64 {
        self.sent.cpu.as_nanos() as f64 / self.sent.sent.max(1) as f64
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
    let out = topo.edge.exec(&["ethtool", "-S", &topo.edge_if]);
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

fn mac(ns: &crate::netns::NetNs, ifname: &str) -> [u8; 6] {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("MAC")).collect();
    bytes.try_into().expect("a 6-byte MAC")
}

impl Receiver {
    fn new(filter: Filter, list: &Blocklist) -> Self {
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
                bare = Some(topo.edge.run(move || bare_drop::BareDrop::attach(&i)).expect("XDP_DROP"));
            }
            Filter::Tollgate => {
                let file = TempFile::new("feed");
                std::fs::write(&file.0, list.feed()).expect("write the feed file");
                let spec = format!("name=flood,path={}", file.path());
                let a = Agent::start(&topo, &["--xdp-mode", "driver", "--feed", &spec]);
                let series = "tollgate_blocklist_entries{state=\"active\"}";
                let loaded = wait_for(Duration::from_secs(120), || {
                    a.metrics().and_then(|m| metric_value(&m, series)).filter(|n| *n as usize >= list.len())
                });
                assert!(loaded.is_some(), "the agent did not load the feed's {} prefixes", list.len());
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
        let frames = list
            .sources()
            .into_iter()
            .map(|(src, sport)| {
                let dst = if src.is_ipv4() { EDGE_V4 } else { EDGE_V6 };
                let mut f = FrameBuilder::udp(src, dst, sport, 5060).payload(payload).build();
                generator::finish_frame(&mut f, dst_mac, src_mac);
                f
            })
            .collect();
        let gen_fd = topo.peer.run(move || generator::open(&peer_if)).expect("the generator's socket");
        Self { filter, agent, _bare: bare, sink, _feed: feed, gen_fd, frames, napi_tid, topo }
    }

    fn snapshot(&self) -> Snapshot {
        let stats = ethtool_stats(&self.topo);
        let handled = match self.filter {
            Filter::None => self.sink.as_ref().expect("sink").received.load(Ordering::Relaxed),
            Filter::BareDrop => stat(&stats, "rx_queue_0_xdp_drops"),
            Filter::Tollgate => self.agent.as_ref().expect("agent").packets(verdict::DROP_BLOCKLIST),
            Filter::NftIngress => nft_counted(&self.topo, "netdev"),
            Filter::NftPrerouting => nft_counted(&self.topo, "inet"),
        };
        let reader = self.sink.as_ref().map_or(0, |s| run_time_ns(s.tid));
        Snapshot {
            taken: stat(&stats, "rx_queue_0_xdp_packets"),
            handled,
            rx_ns: run_time_ns(self.napi_tid) + reader,
        }
    }

    fn measure(&self, duration: Duration) -> Sample {
        let before = self.snapshot();
        let sent = std::thread::scope(|s| {
            s.spawn(|| {
                generator::pin(0, GEN_CPU).expect("pin the generator");
                generator::flood(&self.gen_fd, &self.frames, duration)
            })
            .join()
            .expect("generator")
        });
        // What is still on the ring is taken within microseconds; the
        // socket reader may be a little behind.
        std::thread::sleep(Duration::from_millis(200));
        let after = self.snapshot();
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
    let filters: Vec<Filter> =
        Filter::ALL.into_iter().filter(|f| *f != Filter::Tollgate || list.len() <= FEED_LIMIT).collect();
    println!(
        "flood: UDP/5060 SVMAP-like OPTIONS ({} bytes on the wire), {FRAMES} frames from {} sources \
         (half IPv4, half IPv6), AF_PACKET + PACKET_QDISC_BYPASS + sendmmsg x{} on CPU {GEN_CPU}",
        FrameBuilder::udp(EDGE_V4, EDGE_V4, 1, 5060).payload(fixture("svmap-options.sip")).build().len(),
        FRAMES,
        generator::BATCH,
    );
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
    if list.len() > FEED_LIMIT {
        println!(
            "not measured: tollgate; its blocklist map holds {BLOCKLIST_CAPACITY} entries and a feed at \
             most {FEED_LIMIT} (run with --prefixes {FEED_LIMIT} or fewer for its row)"
        );
    }
    let receivers: Vec<Receiver> = filters.iter().map(|f| Receiver::new(*f, &list)).collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); receivers.len()];
    for round in 1..=rounds {
        for (r, out) in receivers.iter().zip(samples.iter_mut()) {
            let s = r.measure(duration);
            eprintln!(
                "round {round} {:<36} sent {:>9.0}/s handled {:>9.0}/s taken {:>9} {:>6.0} ns/pkt busy {:>4.0}%",
                r.filter.name(),
                s.sent_pps(),
                s.handled_pps(),
                s.taken,
                s.ns_per_packet(),
                s.busy() * 100.0
            );
            out.push(s);
        }
    }
    report(&filters, &samples);
}

/// The table: medians per filter, and ratios to nftables netdev ingress.
fn report(filters: &[Filter], samples: &[Vec<Sample>]) {
    struct Row {
        filter: Filter,
        pps: f64,
        ns: f64,
        busy: f64,
        sent: f64,
        gen_ns: f64,
        lost: f64,
    }
    let rows: Vec<Row> = filters
        .iter()
        .zip(samples)
        .map(|(f, s)| Row {
            filter: *f,
            pps: median(s.iter().map(Sample::handled_pps).collect()),
            ns: median(s.iter().map(Sample::ns_per_packet).collect()),
            busy: median(s.iter().map(Sample::busy).collect()),
            sent: median(s.iter().map(Sample::sent_pps).collect()),
            gen_ns: median(s.iter().map(Sample::gen_ns_per_packet).collect()),
            lost: median(s.iter().map(|s| s.sent.sent.saturating_sub(s.handled) as f64).collect()),
        })
        .collect();
    let nft = rows.iter().find(|r| r.filter == Filter::NftIngress).expect("the nftables ingress row");
    let (nft_pps, nft_ns) = (nft.pps, nft.ns);
    println!();
    println!(
        "{:<36} {:>11} {:>8} {:>10} {:>6} {:>10} {:>8} {:>8} {:>9}",
        "receiver", "dropped/s", "vs nft", "ns/pkt rx", "vs nft", "1 core/s", "rx busy", "sent/s", "gen ns"
    );
    for r in &rows {
        let pps_label = if r.filter == Filter::None { "(received)" } else { "" };
        println!(
            "{:<36} {:>11.0} {:>7.2}x {:>10.0} {:>5.2}x {:>10.0} {:>7.0}% {:>8.0} {:>9.0} {pps_label}",
            r.filter.name(),
            r.pps,
            r.pps / nft_pps,
            r.ns,
            nft_ns / r.ns,
            1e9 / r.ns,
            r.busy * 100.0,
            r.sent,
            r.gen_ns,
        );
        if r.filter != Filter::None && r.lost > 0.0 {
            println!("    ({:.0} packets sent but not counted as dropped, median per run)", r.lost);
        }
    }
    println!(
        "\ndropped/s: packets the filter counted as dropped (no filter: datagrams the socket read) per \
         second of flood; ns/pkt rx: run time of the receiving NAPI thread (+ socket reader) per packet \
         it took; 1 core/s: 1e9 / ns, what one receiving core would drop flat out; vs nft: the pps \
         ratio, and for ns nftables' ns over this one (how many times cheaper)"
    );
    if let Some(t) = rows.iter().find(|r| r.filter == Filter::Tollgate) {
        let (by_pps, by_ns) = (t.pps / nft_pps, nft_ns / t.ns);
        let verdict = if by_pps >= 5.0 { "met" } else { "not met" };
        println!(
            "goal (tollgate >= 5x nftables netdev ingress): {by_pps:.2}x by drop rate, {by_ns:.2}x by CPU per \
             packet: {verdict}"
        );
        if by_pps < 5.0 {
            println!(
                "  why: on veth the drop rate is bounded by the generator's core (one AF_PACKET sendmmsg \
                 per packet, on a 2-core machine shared with other work) and by veth's own receive cost \
                 (it copies every skb into a page before XDP sees it: not a NIC's driver path), paid by \
                 XDP and nftables alike; and tollgate drops after counting, not before (see the bare \
                 XDP_DROP row for the setup's ceiling)"
            );
        }
    }
}
