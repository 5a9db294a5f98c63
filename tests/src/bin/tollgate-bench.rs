//! `cargo xtask bench verdict`: cost per packet of each verdict path of the
//! enforcement program, measured by the kernel with BPF_PROG_TEST_RUN, next
//! to a bare XDP_PASS program in the same run, interleaved so both see the
//! same machine conditions, and the blocklisted drop next to an
//! `xdp-filter`-style static drop. Prints medians and ratios; asserts
//! nothing. `bench maps` (tollgate_tests::bench_maps) does the same with a
//! carrier-scale blocklist; `bench time-to-block` runs the agent end to
//! end; `bench agent` (tollgate_tests::bench_agent) measures the agent's
//! own cost with 10k to 1M tracked sources; `bench all [--quick]` runs
//! every one of them in one report.

use std::{net::IpAddr, time::Duration};

use clap::{Parser, Subcommand};
use tollgate_common::{
    Config, JUMP_COUNT, JUMP_PARSE, PROG_BASELINE, PROG_ENFORCE, PROG_STATIC_DROP, corpus::fixture,
    frames::FrameBuilder, packet::ETH_P_8021Q,
};
use tollgate_tests::{
    bench_agent, bench_maps,
    testrun::{Loaded, XDP_DROP, XDP_PASS},
    topology::*,
};

/// Benchmarks that print ratios measured side by side in one run (run
/// through `cargo xtask bench ...`).
#[derive(Parser)]
#[command(name = "cargo xtask bench")]
struct Cli {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Threshold crossing to the first dropped packet, end to end through
    /// the agent in throw-away namespaces, idle and with a full per-source
    /// map under continuous metrics scrapes, next to a fail2ban-style
    /// log-tail + nftables pipeline, trial after trial, interleaved
    /// (p50/p90/p99).
    TimeToBlock {
        /// Trials per pipeline, each from a source of its own (at most 150).
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Tracked sources in the loaded case (the per-source map full).
        #[arg(long, default_value_t = 60_000)]
        sources: u32,
    },
    /// BPF_PROG_TEST_RUN ns per packet for each verdict path, next to a bare
    /// XDP_PASS program in the same run (and the blocklisted drop next to
    /// an xdp-filter-style static drop).
    Verdict {
        /// Runs per measurement (the kernel reports the average).
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Interleaved rounds; the median is reported.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Also split each packet's cost by stage: the first program alone,
        /// with the parse stage, and the whole chain (parse + count).
        #[arg(long)]
        stages: bool,
        /// Only the packets whose name contains this (e.g. `OPTIONS`), to
        /// profile one path.
        #[arg(long)]
        only: Option<String>,
    },
    /// A UDP/5060 flood from blocklisted sources over a veth: drop rate and
    /// receiver CPU per packet of tollgate, nftables and bare XDP_DROP.
    Flood(tollgate_tests::flood::Args),
    /// BPF_PROG_TEST_RUN ns per packet with a carrier-scale blocklist
    /// (10k, 100k, 1M prefixes), its kernel memory and write time.
    Maps {
        /// Runs per measurement [default: 500000; --quick 100000].
        #[arg(long)]
        repeat: Option<u32>,
        /// Interleaved rounds; the median is reported [default: 5; --quick 3].
        #[arg(long)]
        rounds: Option<usize>,
        /// Blocklist sizes to measure at (comma-separated, ascending).
        #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000, 1_000_000])]
        fills: Vec<u32>,
        /// Shorter rounds (the same fills).
        #[arg(long)]
        quick: bool,
    },
    /// The agent's own cost against the sources the kernel tracks (10k,
    /// 100k, 1M spoofed sources sending): CPU per second, RSS, /metrics
    /// scrape time, time to block p50/p99, and the ratios 1M/10k. With
    /// TOLLGATE_BIN_BEFORE=PATH another build is measured next to this one.
    Agent {
        /// Distinct spoofed sources per measurement (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000, 1_000_000])]
        sizes: Vec<u32>,
        /// Time-to-block trials per size (at most 150) [default: 50; --quick 10].
        #[arg(long)]
        trials: Option<usize>,
        /// Shorter measurements (3 s of CPU, 10 trials; the same sizes).
        #[arg(long)]
        quick: bool,
    },
    /// Every benchmark in one report (verdict, maps, flood, time-to-block,
    /// agent), with the machine it ran on.
    All {
        /// A short version: fewer and shorter rounds, fewer runs (the 1M
        /// blocklist fill is still measured).
        #[arg(long)]
        quick: bool,
    },
}

/// One section of `bench all`: its title, and how to run it (`quick` or not).
type Section = (&'static str, fn(bool));

/// The sections of `bench all`, in order. Another benchmark joins the
/// report by adding its line here.
const SECTIONS: &[Section] = &[
    ("verdict: ns per packet by verdict path", |quick| {
        let (repeat, rounds) = if quick { (200_000, 3) } else { (1_000_000, 7) };
        verdict(repeat, rounds, false, None)
    }),
    ("maps: carrier-scale blocklist", |quick| {
        bench_maps::run(&if quick { bench_maps::Options::quick() } else { bench_maps::Options::full() })
    }),
    ("flood: XDP vs nftables dropping a flood on a veth", |quick| {
        tollgate_tests::flood::run(tollgate_tests::flood::Args::defaults(quick))
    }),
    ("time-to-block: tollgate vs a log-tail + nftables pipeline", |quick| {
        tollgate_tests::ttb::run(if quick { 10 } else { 50 }, 60_000)
    }),
    ("agent: its cost against the number of tracked sources", |quick| {
        bench_agent::run(&if quick { bench_agent::Options::quick() } else { bench_agent::Options::full() })
    }),
];

/// `bench all`: every section under a heading, with the machine it ran on.
fn all(quick: bool) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "tollgate bench all{}: kernel {}, {cpus} CPUs, load average {}",
        if quick { " --quick" } else { "" },
        release.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let started = std::time::Instant::now();
    for (i, (title, run)) in SECTIONS.iter().enumerate() {
        println!("\n== {}. {title} ==\n", i + 1);
        let t = std::time::Instant::now();
        run(quick);
        println!("\n({title}: {:.0} s)", t.elapsed().as_secs_f64());
    }
    println!("\nall sections in {:.0} s", started.elapsed().as_secs_f64());
}

/// The challenged phone (see `challenge` below).
const PHONE_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 20));

const SIP: &[u8] = b"REGISTER sip:edge.example SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.10:5060\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";

fn main() {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark loads the XDP program: run it as root");
        std::process::exit(1);
    }
    match cli.which {
        Which::Verdict { repeat, rounds, stages, only } => verdict(repeat, rounds, stages, only),
        Which::TimeToBlock { runs, sources } => tollgate_tests::ttb::run(runs, sources),
        Which::Flood(args) => tollgate_tests::flood::run(args),
        Which::Maps { repeat, rounds, mut fills, quick } => {
            fills.sort_unstable();
            fills.dedup();
            let base = if quick { bench_maps::Options::quick() } else { bench_maps::Options::full() };
            let capacity = fills.iter().copied().max().unwrap_or(0).max(base.capacity);
            bench_maps::run(&bench_maps::Options {
                repeat: repeat.unwrap_or(base.repeat),
                rounds: rounds.unwrap_or(base.rounds),
                capacity: capacity.next_power_of_two(),
                fills,
            })
        }
        Which::Agent { mut sizes, trials, quick } => {
            sizes.sort_unstable();
            sizes.dedup();
            let base = if quick { bench_agent::Options::quick() } else { bench_agent::Options::full() };
            bench_agent::run(&bench_agent::Options { sizes, trials: trials.unwrap_or(base.trials), ..base })
        }
        Which::All { quick } => all(quick),
    }
}

fn verdict(repeat: u32, rounds: usize, stages: bool, only: Option<String>) {
    let mut l = Loaded::new();
    // A realistically populated blocklist: 10,000 IPv6 /64s plus IPv4 entries.
    const V6_ENTRIES: u32 = 10_000;
    for i in 0..V6_ENTRIES {
        l.block(&format!("2001:db8:{:x}:{:x}::/64", 0x100 + (i >> 16), i & 0xffff), 0);
    }
    l.block("203.0.113.0/24", 0);
    l.allow(&["203.0.113.20/32"]);
    // The agent's defaults, so the counting windows and thresholds run as
    // in production (the repeated source soon sits above every ceiling,
    // the costliest case: learned-threshold lookups on every INVITE).
    let defaults = bench_maps::agent_defaults();
    l.maps.set_config(defaults).expect("config");

    let udp = |src: IpAddr, dport: u16| FrameBuilder::udp(src, edge_for(src), 40000, dport).payload(SIP);
    let msg =
        |src: IpAddr, name: &str| FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(fixture(name));
    // A phone the registrar has just challenged: the headers of all its
    // requests are read (their credentials could count). CUSTOMER_V4 is
    // never challenged, like a trunk peer authenticated by its address:
    // only its REGISTERs are read through.
    let challenge =
        FrameBuilder::udp(EDGE_V4, PHONE_V4, 5060, 40000).payload(fixture("401-register.sip")).build();
    let no_country = Config { country_invite_threshold: 0, ..defaults };
    // (name, frame, expected action, configuration if not the defaults)
    let cases: Vec<(&str, Vec<u8>, u32, Option<Config>)> = vec![
        ("REGISTER, no credentials", msg(CUSTOMER_V4, "register-noauth.sip").build(), XDP_PASS, None),
        ("REGISTER, with credentials", msg(PHONE_V4, "register-auth.sip").build(), XDP_PASS, None),
        ("INVITE +232 with SDP", msg(CUSTOMER_V4, "invite-intl-plus-232.sip").build(), XDP_PASS, None),
        (
            "  the same, no country windows",
            msg(CUSTOMER_V4, "invite-intl-plus-232.sip").build(),
            XDP_PASS,
            Some(no_country),
        ),
        ("  the same, challenged phone", msg(PHONE_V4, "invite-intl-plus-232.sip").build(), XDP_PASS, None),
        (
            "INVITE with SDP (IPv6, 802.1Q)",
            msg(CUSTOMER_V6, "invite-domestic-trunk.sip").vlan(ETH_P_8021Q).build(),
            XDP_PASS,
            None,
        ),
        ("401 response to REGISTER", challenge.clone(), XDP_PASS, None),
        ("OPTIONS keep-alive", msg(CUSTOMER_V4, "options-keepalive.sip").build(), XDP_PASS, None),
        ("  the same, challenged phone", msg(PHONE_V4, "options-keepalive.sip").build(), XDP_PASS, None),
        ("REGISTER, blocklisted source", msg(ATTACKER_V4, "register-auth.sip").build(), XDP_DROP, None),
        ("REGISTER, allowlisted source", udp(TRUSTED_V4, 5060).build(), XDP_PASS, None),
        ("non-SIP port", udp(CUSTOMER_V4, 5999).build(), XDP_PASS, None),
    ];
    let cases: Vec<_> =
        cases.into_iter().filter(|c| only.as_deref().is_none_or(|o| c.0.contains(o))).collect();
    println!("BPF_PROG_TEST_RUN, {repeat} runs per measurement, median of {rounds} interleaved rounds");
    let entries = l.maps.blocklist.entries().len();
    println!("blocklist: {entries} entries; the kernel reports whole ns per run\n");
    println!(
        "{:<34} {:>12} {:>12} {:>8} {:>10}",
        "packet", "tollgate ns", "XDP_PASS ns", "ratio", "extra ns"
    );
    let measure_with = |l: &mut Loaded, prog: &str, frame: &[u8], config: Option<Config>| {
        l.maps.set_config(config.unwrap_or(defaults)).expect("config");
        // Renewed before each measurement, well inside the nonce horizon.
        l.run_program(PROG_ENFORCE, &challenge, 1);
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.push(l.run_program(prog, frame, repeat).1);
            base.push(l.run_program(PROG_BASELINE, frame, repeat).1);
        }
        (bench_maps::median(&mut ours), bench_maps::median(&mut base))
    };
    let measure =
        |l: &mut Loaded, frame: &[u8], config: Option<Config>| measure_with(l, PROG_ENFORCE, frame, config);
    let row = |name: &str, (o, b): (Duration, Duration)| {
        let ratio = if b.is_zero() { f64::NAN } else { o.as_nanos() as f64 / b.as_nanos() as f64 };
        println!(
            "{name:<34} {:>12} {:>12} {:>7.2}x {:>10}",
            o.as_nanos(),
            b.as_nanos(),
            ratio,
            o.as_nanos() as i128 - b.as_nanos() as i128
        );
    };
    let mut whole = Vec::new();
    for (name, frame, expect, config) in &cases {
        l.maps.set_config(config.unwrap_or(defaults)).expect("config");
        let (action, _) = l.run_program(PROG_ENFORCE, frame, 1);
        assert_eq!(action, *expect, "{name}: unexpected verdict, benchmark would be meaningless");
        let (o, b) = measure(&mut l, frame, *config);
        whole.push(o);
        row(name, (o, b));
        // Next to tollgate's drop: the cheapest static drop of the same
        // packet (xdp-filter's kind), over the same blocklist.
        if *expect == XDP_DROP && !stages {
            assert_eq!(l.run_program(PROG_STATIC_DROP, frame, 1).0, XDP_DROP, "the static drop drops it");
            row(STATIC_ROW, measure_with(&mut l, PROG_STATIC_DROP, frame, None));
        }
    }
    if !stages {
        return;
    }
    // Cutting the chain from its end: first without the count stage, then
    // without the parse stage too. Each cut run is measured in the same way.
    l.cut_xdp_chain(JUMP_COUNT);
    let with_parse: Vec<_> = cases.iter().map(|(_, f, _, c)| measure(&mut l, f, *c).0).collect();
    l.cut_xdp_chain(JUMP_PARSE);
    let first: Vec<_> = cases.iter().map(|(_, f, _, c)| measure(&mut l, f, *c).0).collect();
    println!("\nby stage (ns; each stage's share is the difference of two measurements)");
    println!("{:<34} {:>10} {:>10} {:>10} {:>10}", "packet", "first", "parse", "count", "whole");
    for (i, (name, ..)) in cases.iter().enumerate() {
        let ns = |d: Duration| d.as_nanos() as i128;
        println!(
            "{name:<34} {:>10} {:>10} {:>10} {:>10}",
            ns(first[i]),
            ns(with_parse[i]) - ns(first[i]),
            ns(whole[i]) - ns(with_parse[i]),
            ns(whole[i])
        );
    }
}

/// The static-drop row of `bench verdict`, under tollgate's drop.
const STATIC_ROW: &str = "  the same, static drop (xdp-filter)";
