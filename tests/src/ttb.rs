//! `cargo xtask bench time-to-block`: from the threshold crossing to the
//! first dropped packet, for tollgate (idle, and loaded: a full per-source
//! map, learning passes and back-to-back `/metrics` scrapes) and for a
//! fail2ban-style pipeline in the same harness, trial after trial,
//! interleaved. The pipeline is the comparison baseline, written here:
//! the SIP server logs a line per INVITE, a tailer woken by inotify
//! matches it, counts per source and, at the threshold, runs `nft add
//! element` into a set an `input` hook drops from (fail2ban's nftables
//! action). It is kinder to itself than fail2ban (no Python, no regex
//! engine, inotify rather than polling), so its times are a floor for that
//! design, not fail2ban's own.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tollgate_common::{corpus::fixture, verdict};

use crate::{
    topology::{Agent, EDGE_V4, Topology, in_namespace},
    unique, wait_for,
};

/// International INVITEs (calls) per window that restrict a source.
pub(crate) const THRESHOLD: usize = 20;
/// One INVITE every GAP: the resolution of a measurement.
pub(crate) const GAP: Duration = Duration::from_micros(200);
/// INVITEs per trial: the slowest pipeline must block within the train.
pub(crate) const PACKETS: usize = 1500;

/// One pipeline under test.
pub(crate) trait Pipeline {
    fn name(&self) -> String;
    fn topo(&self) -> &Topology;
    /// Where its counters stand before a trial.
    fn mark(&self) -> (u64, u64);
    /// How many of `src`'s `sent` INVITEs got through, once all are in.
    fn passed(&self, src: IpAddr, sent: usize, mark: (u64, u64)) -> usize;
}

/// Each trial's INVITEs: a call of its own each (the kernel counts calls,
/// not packets).
pub(crate) fn train() -> Arc<Vec<Vec<u8>>> {
    let invite = fixture("invite-intl-plus-232.sip");
    Arc::new((0..PACKETS).map(|i| crate::nth_call(invite, 5_000_000 + i)).collect())
}

/// Sends the train from `src`, one every GAP; returns when each went.
fn send(topo: &Topology, src: IpAddr, train: &Arc<Vec<Vec<u8>>>) -> Vec<Instant> {
    let train = Arc::clone(train);
    topo.peer.run(move || {
        let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind");
        let dst = SocketAddr::new(EDGE_V4, 5060);
        let start = Instant::now();
        train
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let due = start + GAP * i as u32;
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                sock.send_to(m, dst).expect("send");
                Instant::now()
            })
            .collect()
    })
}

/// tollgate on the edge veth.
struct Tollgate {
    name: &'static str,
    agent: Agent,
    topo: Topology,
    scrapes: Option<(Arc<AtomicBool>, std::thread::JoinHandle<usize>)>,
}

impl Tollgate {
    fn start(loaded: bool, sources: u32) -> Self {
        let topo = Topology::new();
        let threshold = THRESHOLD.to_string();
        // Every trial's source is another address of one /24: no cap.
        let mut args = vec!["--intl-invite-threshold", &threshold, "--prefix-cap", "0"];
        if loaded {
            args.extend(["--window", "1s", "--max-sources", "65536"]);
        }
        let agent = Agent::start(&topo, &args);
        let mut t = Self {
            name: if loaded { "tollgate, loaded" } else { "tollgate, idle" },
            agent,
            topo,
            scrapes: None,
        };
        if loaded {
            fill_sources(&t.agent, sources);
            // Let a learning pass or two see the full map first.
            std::thread::sleep(Duration::from_millis(2500));
            let stop = Arc::new(AtomicBool::new(false));
            let metrics = t.agent.metrics_reader();
            let s = Arc::clone(&stop);
            let h = std::thread::spawn(move || {
                let mut n = 0;
                while !s.load(Ordering::Relaxed) {
                    n += metrics().is_some() as usize;
                }
                n
            });
            t.scrapes = Some((stop, h));
        }
        t
    }

    /// (passed, dropped) INVITEs so far.
    fn counted(&self) -> (u64, u64) {
        counted(&self.agent)
    }
}

/// (passed, dropped) SIP packets of `agent` so far.
pub(crate) fn counted(agent: &Agent) -> (u64, u64) {
    let v = agent.verdicts();
    (v[verdict::PASS_SIP as usize].packets, v[verdict::DROP_INTL_SUSPENDED as usize].packets)
}

/// How many of the `sent` INVITEs of a trial got through `agent` (the
/// only SIP it sees meanwhile), from its verdicts' growth since `mark`.
pub(crate) fn passed_through(agent: &Agent, sent: usize, (pass, drop): (u64, u64)) -> Option<usize> {
    // The trials are one at a time: the verdicts' growth is this
    // source's. The kernel handles one veth's packets in order, so the
    // first `passed` went through and the rest were dropped.
    wait_for(Duration::from_secs(5), || {
        let (p, d) = counted(agent);
        (p - pass + d - drop >= sent as u64).then_some((p - pass) as usize)
    })
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Some((stop, h)) = self.scrapes.take() {
            stop.store(true, Ordering::Relaxed);
            let n = h.join().unwrap_or(0);
            println!("  ({}: {n} /metrics scrapes during its trials)", self.name);
        }
    }
}

impl Pipeline for Tollgate {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    fn topo(&self) -> &Topology {
        &self.topo
    }

    fn mark(&self) -> (u64, u64) {
        self.counted()
    }

    fn passed(&self, _src: IpAddr, sent: usize, mark: (u64, u64)) -> usize {
        passed_through(&self.agent, sent, mark)
            .unwrap_or_else(|| panic!("{}: not every INVITE was counted", self.name))
    }
}

/// Fills the agent's per-source map with `n` synthetic sources
/// (2001:db8:9::/48), as a busy edge has them.
pub fn fill_sources(agent: &Agent, n: u32) {
    use aya::maps::{HashMap, Map, MapData};
    use tollgate_common::{AddrKey, MAP_SOURCES, SourceStats};
    let data = MapData::from_pin(agent.pin_dir.join(MAP_SOURCES)).expect("pinned SOURCES");
    let mut map: HashMap<MapData, AddrKey, SourceStats> =
        HashMap::try_from(Map::from_map_data(data).expect("map")).expect("SOURCES is a hash map");
    let now = tollgate::clock::monotonic_now_ns();
    for i in 0..n {
        let addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, (i >> 16) as u16, i as u16);
        let stats =
            SourceStats { first_seen_ns: now, last_seen_ns: now, intl_invites: 3, ..Default::default() };
        map.insert(addr.octets(), stats, 0).expect("insert a source");
    }
}

/// The fail2ban-style baseline on the edge namespace (no XDP there).
struct LogTail {
    topo: Topology,
    /// INVITEs the server received, per source.
    received: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    log: PathBuf,
    bans: Arc<std::sync::Mutex<Vec<Duration>>>,
}

impl LogTail {
    fn start() -> Self {
        let topo = Topology::new();
        let rules = "table inet f2b {\n  set banned { type ipv4_addr; }\n  chain input {\n    type filter hook input priority -1; policy accept;\n    ip saddr @banned drop\n  }\n}\n";
        let file = std::env::temp_dir().join(format!("{}.nft", unique("f2b")));
        std::fs::write(&file, rules).expect("nft rules");
        let out = topo.edge.exec(&["nft", "-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "nft -f: {}", String::from_utf8_lossy(&out.stderr));
        let log = std::env::temp_dir().join(format!("{}.log", unique("sipserver")));
        std::fs::write(&log, b"").expect("log file");
        let received = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let bans = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut t = Self { topo, received, stop, threads: Vec::new(), log, bans };
        t.serve();
        t.tail();
        t
    }

    /// The SIP server: a line per INVITE to its log, as a registrar logs
    /// what it rejects.
    fn serve(&mut self) {
        let (path, received, stop, log) =
            (self.topo.edge.path(), Arc::clone(&self.received), Arc::clone(&self.stop), self.log.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            crate::netns::enter(&path);
            let sock = UdpSocket::bind(SocketAddr::new(EDGE_V4, 5060)).expect("bind the SIP server");
            sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            let mut out = std::fs::OpenOptions::new().append(true).open(&log).expect("log");
            let _ = ready_tx.send(());
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                if !buf[..n].starts_with(b"INVITE ") {
                    continue;
                }
                *received.lock().unwrap().entry(from.ip()).or_insert(0) += 1;
                let _ = writeln!(out, "sip: INVITE to an international number rejected from {}", from.ip());
            }
        }));
        ready_rx.recv().expect("server ready");
    }

    /// The tailer: woken by inotify, counts matches per source and bans at
    /// the threshold with `nft add element`.
    fn tail(&mut self) {
        let (path, stop, log, bans) =
            (self.topo.edge.path(), Arc::clone(&self.stop), self.log.clone(), Arc::clone(&self.bans));
        self.threads.push(std::thread::spawn(move || {
            let file = std::fs::File::open(&log).expect("log");
            // SAFETY: plain inotify calls on descriptors we own.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
            assert!(fd >= 0, "inotify_init1");
            let c = std::ffi::CString::new(log.display().to_string()).expect("path");
            // SAFETY: as above.
            let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_MODIFY) };
            assert!(wd >= 0, "inotify_add_watch");
            let mut reader = BufReader::new(file);
            let mut counts: HashMap<IpAddr, usize> = HashMap::new();
            let mut line = String::new();
            let mut events = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                // SAFETY: reading into our buffer.
                let _ = unsafe { libc::read(fd, events.as_mut_ptr().cast(), events.len()) };
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if !line.ends_with('\n') => break,
                        Ok(_) => {}
                    }
                    let Some(addr) =
                        line.trim_end().rsplit(' ').next().and_then(|a| a.parse::<IpAddr>().ok())
                    else {
                        continue;
                    };
                    let n = counts.entry(addr).or_insert(0);
                    *n += 1;
                    if *n == THRESHOLD {
                        let t = Instant::now();
                        let mut cmd = Command::new("nft");
                        cmd.args(["add", "element", "inet", "f2b", "banned", &format!("{{ {addr} }}")]);
                        in_namespace(&mut cmd, &path);
                        let ok = cmd.status().is_ok_and(|s| s.success());
                        assert!(ok, "nft add element");
                        bans.lock().unwrap().push(t.elapsed());
                    }
                }
            }
            // SAFETY: closing our descriptor.
            unsafe { libc::close(fd) };
        }));
    }
}

impl Drop for LogTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Pipeline for LogTail {
    fn name(&self) -> String {
        "log tail + nftables (baseline)".to_owned()
    }

    fn topo(&self) -> &Topology {
        &self.topo
    }

    fn mark(&self) -> (u64, u64) {
        (0, 0)
    }

    fn passed(&self, src: IpAddr, sent: usize, _: (u64, u64)) -> usize {
        // Settled once nothing more arrives for 100 ms.
        let mut last = usize::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let n = self.received.lock().unwrap().get(&src).copied().unwrap_or(0);
            if n == last || n >= sent {
                return n;
            }
            last = n;
        }
    }
}

/// What one trial measured: the time from the crossing INVITE (the
/// THRESHOLD-th) to the first dropped one; None if none was dropped.
pub(crate) fn trial(p: &dyn Pipeline, src: IpAddr, train: &Arc<Vec<Vec<u8>>>) -> Option<Duration> {
    let mark = p.mark();
    let sent_at = send(p.topo(), src, train);
    let passed = p.passed(src, PACKETS, mark);
    (passed < PACKETS).then(|| sent_at[passed] - sent_at[THRESHOLD - 1])
}

pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `trials` trials of each pipeline, interleaved, and prints the
/// table.
pub fn run(trials: usize, sources: u32) {
    crate::netns::sweep_stale();
    let trials = trials.clamp(1, 150);
    println!(
        "time-to-block: {THRESHOLD} international INVITEs (calls) from one source is the threshold; one INVITE every {GAP:?}, {PACKETS} per trial; {trials} trials per pipeline, interleaved, each from a new source"
    );
    println!(
        "loaded: {sources} tracked sources, a learning pass every second, /metrics scraped back to back"
    );
    let train = train();
    let idle = Tollgate::start(false, 0);
    let loaded = Tollgate::start(true, sources);
    let baseline = LogTail::start();
    let srcs: Vec<Vec<IpAddr>> =
        [idle.topo(), loaded.topo(), baseline.topo()].iter().map(|t| t.more_sources(trials as u8)).collect();
    let mut results: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    let mut missed = [0usize; 3];
    let pipelines = [&idle as &dyn Pipeline, &loaded, &baseline];
    for round in 0..trials {
        // Interleaved: each round gives every pipeline one trial.
        for (k, (p, srcs)) in pipelines.iter().zip(&srcs).enumerate() {
            match trial(*p, srcs[round], &train) {
                Some(d) => results[k].push(d),
                None => missed[k] += 1,
            }
        }
    }
    let bans = baseline.bans.lock().unwrap().clone();
    let names = [idle.name(), loaded.name(), baseline.name()];
    drop((idle, loaded));
    println!();
    println!("| pipeline | trials | p50 ms | p90 ms | p99 ms | max ms | not blocked within {PACKETS} |");
    println!("|---|---|---|---|---|---|---|");
    let mut p50 = [None; 3];
    for k in 0..3 {
        let r = &mut results[k];
        r.sort();
        if r.is_empty() {
            println!("| {} | 0 | | | | | {} |", names[k], missed[k]);
            continue;
        }
        p50[k] = Some(percentile(r, 0.5));
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            names[k],
            r.len(),
            ms(percentile(r, 0.5)),
            ms(percentile(r, 0.9)),
            ms(percentile(r, 0.99)),
            ms(r[r.len() - 1]),
            missed[k]
        );
    }
    if !bans.is_empty() {
        let mut b = bans;
        b.sort();
        println!("baseline's `nft add element` alone: p50 {:.2} ms", ms(percentile(&b, 0.5)));
    }
    if let (Some(t), Some(b)) = (p50[0], p50[2]) {
        println!("baseline / tollgate idle, p50: {:.1}x", b.as_secs_f64() / t.as_secs_f64().max(1e-9));
    }
    if let (Some(t), Some(l)) = (p50[0], p50[1]) {
        println!("tollgate loaded / idle, p50: {:.2}", l.as_secs_f64() / t.as_secs_f64().max(1e-9));
    }
    println!(
        "(resolution {GAP:?}: a time is when the first dropped INVITE was sent, after the crossing one)"
    );
}
