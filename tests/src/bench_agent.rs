//! `cargo xtask bench agent`: what the agent itself costs against the
//! number of sources the kernel tracks. For each size (10k, 100k, 1M
//! distinct sources), a fresh agent on a veth (`--window 1s`, a learning
//! pass every second; `--max-sources` a quarter above the size) is filled
//! by that many spoofed-source OPTIONS (one frame from each address,
//! AF_PACKET), then measured while a paced spoofed flood from those
//! addresses goes on and `/metrics` is scraped every second: its CPU
//! (utime + stime from /proc/PID/stat over a fixed interval), its RSS, the
//! scrapes' duration, and time to block (`ttb`'s trial: threshold crossing
//! to first dropped INVITE) with that many sources tracked (the flood
//! paused: the trial counts the agent's SIP verdicts). With
//! `TOLLGATE_BIN_BEFORE` set to another build, that build is measured too,
//! size by size, interleaved with this one. Prints medians and ratios;
//! asserts nothing.

use std::{
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tollgate_common::{corpus::fixture, frames::FrameBuilder};

use crate::{
    flood::generator,
    topology::{Agent, EDGE_V6, Topology},
    ttb::{self, PACKETS, Pipeline},
    unique,
};

/// The spoofed flood's rate while measuring (packets/s), the same at every
/// size: only the number of tracked sources changes.
const FLOOD_PPS: u64 = 10_000;

/// What `bench agent` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Distinct spoofed sources per measurement, ascending.
    pub sizes: Vec<u32>,
    /// How long the CPU is measured.
    pub measure: Duration,
    /// Time-to-block trials per size (at most 150).
    pub trials: usize,
}

impl Options {
    pub fn full() -> Self {
        Self { sizes: vec![10_000, 100_000, 1_000_000], measure: Duration::from_secs(10), trials: 50 }
    }

    pub fn quick() -> Self {
        Self { sizes: vec![10_000, 100_000, 1_000_000], measure: Duration::from_secs(3), trials: 10 }
    }
}

/// One agent's figures at one size.
#[derive(Clone, Debug, Default)]
struct Figures {
    tracked: usize,
    fill: Duration,
    /// CPU seconds per second.
    cpu: f64,
    rss_kb: u64,
    scrape_ms: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    missed: usize,
}

/// The `sources` addresses: 2001:db8:9::/48, the low 32 bits counting.
fn source(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, (i >> 16) as u16, i as u16))
}

/// A spoofed OPTIONS frame from `src` to the edge, ready to send.
fn frame(src: IpAddr, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let mut f = FrameBuilder::udp(src, EDGE_V6, 40000, 5060).payload(fixture("svmap-options.sip")).build();
    generator::finish_frame(&mut f, macs.0, macs.1);
    f
}

/// Sends every frame once, waiting out a full receive ring (so every one
/// arrives).
fn send_all(fd: &OwnedFd, frames: &[Vec<u8>]) {
    let mut at = 0;
    while at < frames.len() {
        let end = (at + generator::BATCH).min(frames.len());
        let mut iov = generator::iovecs(&frames[at..end]);
        let mut msgs = generator::messages(&mut iov);
        // SAFETY: msgs point at frames that outlive the call.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        if n > 0 {
            at += n as usize;
        }
        if n < msgs.len() as i32 {
            // The receiver's ring is full: let it drain.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Entries in the agent's per-source map, counted by their keys.
fn tracked(agent: &Agent) -> usize {
    use aya::maps::{HashMap, Map, MapData};
    use tollgate_common::{AddrKey, MAP_SOURCES, SourceStats};
    let data = MapData::from_pin(agent.pin_dir.join(MAP_SOURCES)).expect("pinned SOURCES");
    let map: HashMap<MapData, AddrKey, SourceStats> =
        HashMap::try_from(Map::from_map_data(data).expect("map")).expect("SOURCES is a hash map");
    map.keys().filter(|k| k.is_ok()).count()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is field 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|w| w.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / hz
}

/// VmRSS of `pid`, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A background task on its own thread, stopped (and joined) on drop.
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl Background {
    fn start(f: impl FnOnce(Arc<AtomicBool>) -> Vec<Duration> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        Self { stop, thread: Some(std::thread::spawn(move || f(s))) }
    }

    /// Stops it; what it measured.
    fn finish(mut self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The paced spoofed flood: `frames` round and round at [`FLOOD_PPS`].
fn flood(fd: Arc<OwnedFd>, frames: Arc<Vec<Vec<u8>>>) -> Background {
    Background::start(move |stop| {
        let batch = generator::BATCH;
        let every = Duration::from_secs_f64(batch as f64 / FLOOD_PPS as f64);
        let start = Instant::now();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let at = (n as usize * batch) % frames.len();
            let end = (at + batch).min(frames.len());
            send_all(&fd, &frames[at..end]);
            n += 1;
            let due = start + every * n;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Vec::new()
    })
}

/// `/metrics` fetched once a second (a busy Prometheus); each fetch's time.
fn scrapes(agent: &Agent) -> Background {
    let get = agent.metrics_reader();
    Background::start(move |stop| {
        let mut took = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if get().is_some() {
                took.push(t.elapsed());
            }
            let rest = Duration::from_secs(1).saturating_sub(t.elapsed());
            let until = Instant::now() + rest;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        took
    })
}

/// The agent as a time-to-block pipeline.
struct Trials<'a> {
    agent: &'a Agent,
    topo: &'a Topology,
}

impl Pipeline for Trials<'_> {
    fn name(&self) -> String {
        "tollgate".to_owned()
    }

    fn topo(&self) -> &Topology {
        self.topo
    }

    fn mark(&self) -> (u64, u64) {
        ttb::counted(self.agent)
    }

    fn passed(&self, _src: IpAddr, sent: usize, mark: (u64, u64)) -> usize {
        ttb::passed_through(self.agent, sent, mark).expect("every INVITE of a trial was counted")
    }
}

/// One agent (`bin`) at one size.
fn measure(bin: &std::path::Path, size: u32, o: &Options, train: &Arc<Vec<Vec<u8>>>) -> Figures {
    let topo = Topology::new();
    let capacity = (size + size / 4).max(65_536).to_string();
    let threshold = ttb::THRESHOLD.to_string();
    let args = [
        "--window",
        "1s",
        "--max-sources",
        &capacity,
        "--intl-invite-threshold",
        &threshold,
        "--prefix-cap",
        "0",
    ];
    let pin_dir = PathBuf::from(crate::netns::PIN_ROOT).join(unique("pin"));
    let state_dir = std::env::temp_dir().join(unique("state"));
    let agent = Agent::start_installed(&topo, bin, &pin_dir, &state_dir, &args);
    let peer_if = format!("{}p", topo.edge_if);
    let macs = (crate::flood::mac(&topo.edge, &topo.edge_if), crate::flood::mac(&topo.peer, &peer_if));
    let fd = {
        let i = peer_if.clone();
        Arc::new(topo.peer.run(move || generator::open(&i)).expect("the generator's socket"))
    };
    // Every source sends once, in chunks (a million frames at once would
    // take ~400 MB here).
    let started = Instant::now();
    let chunk = 65_536;
    for from in (0..size).step_by(chunk) {
        let frames: Vec<Vec<u8>> =
            (from..(from + chunk as u32).min(size)).map(|i| frame(source(i), macs)).collect();
        send_all(&fd, &frames);
    }
    let fill = started.elapsed();
    let mut f = Figures { fill, ..Figures::default() };
    // The flood goes on from (up to) 65,536 of them, spread over all.
    let step = (size / 65_536).max(1);
    let n = (size / step).min(65_536) / generator::BATCH as u32 * generator::BATCH as u32;
    let frames: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(|i| frame(source(i * step), macs)).collect());
    let flooding = flood(Arc::clone(&fd), frames);
    let scraping = scrapes(&agent);
    // Past the start-up pass and the fill's aftermath.
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.pid();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(o.measure);
    f.cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    f.rss_kb = rss_kb(pid);
    flooding.finish();
    f.tracked = tracked(&agent);
    let srcs = topo.more_sources(o.trials.clamp(1, 150) as u8);
    let pipeline = Trials { agent: &agent, topo: &topo };
    let mut times = Vec::new();
    for src in srcs {
        match ttb::trial(&pipeline, src, train) {
            Some(d) => times.push(d),
            None => f.missed += 1,
        }
    }
    let mut took = scraping.finish();
    took.sort();
    if !took.is_empty() {
        f.scrape_ms = ttb::ms(took[took.len() / 2]);
    }
    times.sort();
    eprintln!(
        "agent bench: {} at {size}: tracked {}, time to block (ms, sorted) {:?}",
        bin.display(),
        f.tracked,
        times.iter().map(|d| (ttb::ms(*d) * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    if !times.is_empty() {
        f.p50_ms = Some(ttb::ms(ttb::percentile(&times, 0.5)));
        f.p99_ms = Some(ttb::ms(ttb::percentile(&times, 0.99)));
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&state_dir);
    f
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// Runs the measurements and prints the table and the 1M/10k ratios.
pub fn run(o: &Options) {
    crate::netns::sweep_stale();
    let after = crate::tollgate_bin();
    let before = std::env::var_os("TOLLGATE_BIN_BEFORE").map(PathBuf::from);
    let mut builds = vec![("this build", after)];
    if let Some(b) = before {
        builds.push(("before (TOLLGATE_BIN_BEFORE)", b));
    }
    println!(
        "agent: --window 1s (a learning pass every second), a spoofed OPTIONS flood of {FLOOD_PPS} packets/s from the tracked sources, /metrics scraped every second; CPU over {:?}; {} time-to-block trials per size ({} INVITEs each, flood paused)",
        o.measure, o.trials, PACKETS
    );
    let train = ttb::train();
    let mut rows: Vec<(usize, u32, Figures)> = Vec::new();
    for &size in &o.sizes {
        // Interleaved: each size measures every build in turn.
        for (k, (_, bin)) in builds.iter().enumerate() {
            rows.push((k, size, measure(bin, size, o, &train)));
        }
    }
    println!();
    println!(
        "| build | sources sent | tracked | fill s | agent CPU s/s | RSS MB | scrape ms (median) | time to block p50 ms | p99 ms | not blocked |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (k, size, f) in &rows {
        println!(
            "| {} | {size} | {} | {:.1} | {:.4} | {:.1} | {:.2} | {} | {} | {} |",
            builds[*k].0,
            f.tracked,
            f.fill.as_secs_f64(),
            f.cpu,
            f.rss_kb as f64 / 1024.0,
            f.scrape_ms,
            opt(f.p50_ms),
            opt(f.p99_ms),
            f.missed
        );
    }
    let (Some(&small), Some(&large)) = (o.sizes.first(), o.sizes.last()) else { return };
    if small == large {
        return;
    }
    for (k, (name, _)) in builds.iter().enumerate() {
        let at = |size: u32| rows.iter().find(|(b, s, _)| *b == k && *s == size).map(|r| &r.2);
        let (Some(a), Some(b)) = (at(small), at(large)) else { continue };
        let ratio = |x: f64, y: f64| if x > 0.0 { format!("{:.2}x", y / x) } else { "-".to_owned() };
        println!(
            "{name}, {large} / {small} sources: CPU {}, RSS {}, scrape {}, time to block p99 {}",
            ratio(a.cpu, b.cpu),
            ratio(a.rss_kb as f64, b.rss_kb as f64),
            ratio(a.scrape_ms, b.scrape_ms),
            match (a.p99_ms, b.p99_ms) {
                (Some(x), Some(y)) => ratio(x, y),
                _ => "-".to_owned(),
            }
        );
    }
    println!(
        "(CPU from /proc/PID/stat in clock ticks of {} ms; a scrape's time is the whole GET as the bench sees it)",
        // SAFETY: sysconf has no preconditions.
        1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1)
    );
}
