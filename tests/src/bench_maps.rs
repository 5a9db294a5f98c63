//! `cargo xtask bench maps`: the per-packet cost of a carrier-scale
//! blocklist (issue 17, part 2). The program is loaded with a blocklist of
//! `--blocklist-capacity` entries, filled step by step (10k, 100k, 1M
//! distinct prefixes by default), and at each fill BPF_PROG_TEST_RUN
//! measures a blocklisted source's REGISTER (dropped), an unlisted
//! source's INVITE and a non-SIP packet, next to the bare XDP_PASS program
//! and the `xdp-filter`-style static drop over the same trie, interleaved
//! round by round. It also reports what the map costs the kernel in memory
//! and how long it takes to write and to read back (what the agent's
//! sweep, scrapes and feeds do). Prints figures and ratios; asserts nothing
//! about them.
//!
//! Documentation ranges only (tests' rule, kept here though nothing is
//! sent anywhere): IPv4 has just 768 such addresses, so the IPv4 part of
//! the fill is every /32 of 192.0.2.0/24 and 203.0.113.0/24 plus a few
//! shorter prefixes, and the rest is IPv6 inside 2001:db8::/32 (/48, /56,
//! /64 and /128, spread over the whole /32 by a bijective scramble). A
//! lookup's cost follows the depth of the trie on its path, so the IPv6
//! probes, which sit in the dense part, are the ones that show it.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tollgate_common::{
    BlockEntry, Config, PROG_BASELINE, PROG_ENFORCE, PROG_STATIC_DROP, corpus::fixture, frames::FrameBuilder,
    reason,
};

use crate::{
    testrun::{Loaded, XDP_DROP, XDP_PASS},
    topology::{ATTACKER_V4, CUSTOMER_V4, CUSTOMER_V6, edge_for},
};

/// What `bench maps` measures, and how long.
#[derive(Clone, Debug)]
pub struct Options {
    /// Runs per measurement (the kernel reports the average).
    pub repeat: u32,
    /// Interleaved rounds; the median is reported.
    pub rounds: usize,
    /// Blocklist sizes to measure at, ascending.
    pub fills: Vec<u32>,
    /// The map's capacity (at least the largest fill).
    pub capacity: u32,
}

impl Options {
    /// 10k, 100k and 1M entries in a map of 1,048,576.
    pub fn full() -> Self {
        Self { repeat: 500_000, rounds: 5, fills: vec![10_000, 100_000, 1_000_000], capacity: 1 << 20 }
    }

    /// The same fills, fewer and shorter rounds.
    pub fn quick() -> Self {
        Self { repeat: 100_000, rounds: 3, ..Self::full() }
    }
}

/// The IPv6 source inside the dense part of the fill that the blocklisted
/// probe uses: a /64 of its own is always in the fill.
const LISTED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0x1, 0, 0, 0, 0x10);

/// The agent's defaults (`tollgate run` with no flags), so the counting
/// windows and thresholds run as in production.
pub fn agent_defaults() -> Config {
    use clap::Parser as _;
    let cli = tollgate::cli::Cli::try_parse_from(["tollgate", "run", "--iface", "bench"]).expect("defaults");
    let tollgate::cli::Command::Run(args) = cli.command else { unreachable!("parsed `run`") };
    tollgate::daemon::setup::kernel_config(&args, tollgate_common::IdentityKey { k0: 1, k1: 2 })
}

/// `n` distinct blocklist prefixes, the same ones for the same `n` (see
/// the module documentation for the mix). Never covers the unlisted
/// probes (CUSTOMER_V4, CUSTOMER_V6); always holds ATTACKER_V4/32 and
/// LISTED_V6/64.
pub fn prefixes(n: usize) -> Vec<IpNet> {
    let customer6 = Ipv6Net::new(
        match CUSTOMER_V6 {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => unreachable!("an IPv6 address"),
        },
        48,
    )
    .expect("a /48")
    .trunc();
    let mut seen: HashSet<IpNet> = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let mut push = |net: IpNet, out: &mut Vec<IpNet>| {
        if out.len() < n && seen.insert(net) {
            out.push(net);
        }
    };
    push(IpNet::new(ATTACKER_V4, 32).expect("/32"), &mut out);
    push(IpNet::V6(Ipv6Net::new(LISTED_V6, 64).expect("/64").trunc()), &mut out);
    // IPv4: every address of two documentation /24s (198.51.100.0/24, the
    // unlisted customer's, only in its upper half), a few shorter ones.
    for last in 0..=255u8 {
        for a in [[192, 0, 2, last], [203, 0, 113, last]] {
            push(IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), 32).expect("/32")), &mut out);
        }
    }
    for (a, len) in [([198, 51, 100, 128], 25), ([198, 51, 100, 64], 26), ([192, 0, 2, 0], 24)] {
        push(IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).expect("prefix")), &mut out);
    }
    // IPv6: i scrambled into 32 bits (multiplying by an odd constant is a
    // bijection mod 2^32), as the third and fourth groups of 2001:db8::.
    let mut i: u32 = 0;
    while out.len() < n {
        let h = i.wrapping_mul(0x9e37_79b1).rotate_left(13);
        let len = match i % 16 {
            0 => 48,
            1 | 2 => 56,
            3..=5 => 128,
            _ => 64,
        };
        let addr = Ipv6Addr::new(0x2001, 0xdb8, (h >> 16) as u16, h as u16, 0, 0, 0, 1 + (i >> 16) as u16);
        let net = Ipv6Net::new(addr, len).expect("prefix").trunc();
        if !net.contains(&customer6) && !customer6.contains(&net) {
            push(IpNet::V6(net), &mut out);
        }
        i = i.checked_add(1).expect("2^32 candidates are enough for any fill");
    }
    out
}

/// The median of `v` (sorted in place), as every bench reports it.
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The memory the kernel reports for the map, and what this process's
/// memory cgroup was charged (the map's memory is charged to the cgroup
/// of the process that created it).
struct Memory {
    /// `bpftool map show id N -j`: "bytes_memlock".
    bpftool: Option<u64>,
    /// The `memlock:` line of the map fd's /proc/self/fdinfo.
    fdinfo: Option<u64>,
    /// Kernel memory charged to this process's memory cgroup.
    cgroup_kmem: Option<u64>,
}

fn bpftool_memlock(id: u32) -> Option<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["map", "show", "id", &id.to_string(), "-j"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("bytes_memlock")?.as_u64()
}

fn fdinfo_memlock(id: u32) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let map = aya::maps::MapData::from_id(id).ok()?;
    let fd = map.fd().as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

/// The kernel memory charged to this process's memory cgroup: cgroup v2's
/// memory.stat "kernel", or v1's memory.kmem.usage_in_bytes.
fn cgroup_kmem() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers == "memory" {
            let file = format!("/sys/fs/cgroup/memory{path}/memory.kmem.usage_in_bytes");
            return std::fs::read_to_string(file).ok()?.trim().parse().ok();
        }
        if controllers.is_empty() {
            let file = format!("/sys/fs/cgroup{path}/memory.stat");
            if let Ok(stat) = std::fs::read_to_string(file) {
                return stat.lines().find_map(|l| l.strip_prefix("kernel ")).and_then(|v| v.parse().ok());
            }
        }
    }
    None
}

/// The memory of the maps `ids` (the blocklist's trie and exact-prefix
/// map), summed.
fn memory(ids: &[u32]) -> Memory {
    let sum = |f: fn(u32) -> Option<u64>| ids.iter().map(|id| f(*id)).sum::<Option<u64>>();
    Memory { bpftool: sum(bpftool_memlock), fdinfo: sum(fdinfo_memlock), cgroup_kmem: cgroup_kmem() }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / (1024.0 * 1024.0)))
}

/// One packet of the table: what it is, the program it goes through, the
/// frame, and the action it must get (or the figures mean nothing).
struct Probe {
    name: &'static str,
    prog: &'static str,
    frame: Vec<u8>,
    expect: u32,
}

pub fn run(opts: &Options) {
    let largest = opts.fills.iter().copied().max().unwrap_or(0);
    assert!(
        largest <= opts.capacity,
        "the largest fill ({largest}) must fit the capacity ({})",
        opts.capacity
    );
    let mut l = Loaded::with_blocklist_capacity(opts.capacity);
    let defaults = agent_defaults();
    l.maps.set_config(defaults).expect("config");
    let ids = l.maps.blocklist.map_ids().expect("the blocklist's ids");
    let empty = memory(&ids);
    println!(
        "blocklist map ids {ids:?} (trie, exact prefixes): capacity {} (BPF_F_NO_PREALLOC: entries are allocated as they arrive)",
        opts.capacity
    );
    println!(
        "BPF_PROG_TEST_RUN, {} runs per measurement, median of {} interleaved rounds; whole ns per run",
        opts.repeat, opts.rounds
    );
    let all = prefixes(largest as usize);
    let v4 = all.iter().filter(|n| n.addr().is_ipv4()).count();
    println!(
        "fill: {v4} IPv4 prefixes (documentation ranges), the rest IPv6 in 2001:db8::/32 (/48, /56, /64, /128)\n"
    );

    let msg =
        |src: IpAddr, name: &str| FrameBuilder::udp(src, edge_for(src), 40000, 5060).payload(fixture(name));
    let listed_v6 = IpAddr::V6(LISTED_V6);
    let probes = [
        Probe {
            name: "REGISTER, blocklisted (IPv4)",
            prog: PROG_ENFORCE,
            frame: msg(ATTACKER_V4, "register-auth.sip").build(),
            expect: XDP_DROP,
        },
        Probe {
            name: "REGISTER, blocklisted (IPv6)",
            prog: PROG_ENFORCE,
            frame: msg(listed_v6, "register-auth.sip").build(),
            expect: XDP_DROP,
        },
        Probe {
            name: "  static drop, the same (IPv4)",
            prog: PROG_STATIC_DROP,
            frame: msg(ATTACKER_V4, "register-auth.sip").build(),
            expect: XDP_DROP,
        },
        Probe {
            name: "  static drop, the same (IPv6)",
            prog: PROG_STATIC_DROP,
            frame: msg(listed_v6, "register-auth.sip").build(),
            expect: XDP_DROP,
        },
        Probe {
            name: "INVITE +232, unlisted (IPv4)",
            prog: PROG_ENFORCE,
            frame: msg(CUSTOMER_V4, "invite-intl-plus-232.sip").build(),
            expect: XDP_PASS,
        },
        Probe {
            name: "INVITE +232, unlisted (IPv6)",
            prog: PROG_ENFORCE,
            frame: msg(CUSTOMER_V6, "invite-intl-plus-232.sip").build(),
            expect: XDP_PASS,
        },
        Probe {
            name: "non-SIP port, unlisted (IPv4)",
            prog: PROG_ENFORCE,
            frame: FrameBuilder::udp(CUSTOMER_V4, edge_for(CUSTOMER_V4), 40000, 5999).payload(b"x").build(),
            expect: XDP_PASS,
        },
        Probe {
            name: "bare XDP_PASS",
            prog: PROG_BASELINE,
            frame: msg(ATTACKER_V4, "register-auth.sip").build(),
            expect: XDP_PASS,
        },
    ];

    // (fill, batch write time, per-probe medians, memory, read-back time)
    let mut results: Vec<(u32, Duration, Vec<Duration>, Memory, Duration)> = Vec::new();
    let mut written = 0usize;
    for &fill in &opts.fills {
        let step: Vec<(IpNet, BlockEntry)> = all[written..fill as usize]
            .iter()
            .map(|n| (*n, BlockEntry { expires_at_ns: 0, reason: reason::FEED, prefix_len: 0 }))
            .collect();
        let started = Instant::now();
        l.maps.blocklist.insert_many(&step).expect("filling the blocklist");
        let write = started.elapsed();
        written = fill as usize;
        let started = Instant::now();
        let read = l.maps.blocklist.read_from_kernel().len();
        let read_time = started.elapsed();
        assert_eq!(read, written, "every prefix is in the map");
        for p in &probes {
            let (action, _) = l.run_program(p.prog, &p.frame, 1);
            assert_eq!(
                action, p.expect,
                "{}: unexpected verdict, the benchmark would be meaningless",
                p.name
            );
        }
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); probes.len()];
        for _ in 0..opts.rounds {
            for (p, s) in probes.iter().zip(samples.iter_mut()) {
                s.push(l.run_program(p.prog, &p.frame, opts.repeat).1);
            }
        }
        let medians: Vec<Duration> = samples.iter_mut().map(|s| median(s)).collect();
        results.push((fill, write, medians, memory(&ids), read_time));
        println!(
            "{fill} entries: written in {:.2} s ({} per call, BPF_MAP_UPDATE_BATCH), read back in {:.2} s",
            write.as_secs_f64(),
            tollgate::maps::BATCH,
            read_time.as_secs_f64()
        );
    }

    println!("\nns per packet by blocklist fill (ratio: to the bare XDP_PASS of the same fill)");
    print!("{:<32}", "packet");
    for (fill, ..) in &results {
        print!(" {:>16}", format!("{fill} entries"));
    }
    println!();
    let base = probes.len() - 1;
    for (i, p) in probes.iter().enumerate() {
        print!("{:<32}", p.name);
        for (_, _, m, ..) in &results {
            let ratio = m[i].as_nanos() as f64 / m[base].as_nanos().max(1) as f64;
            print!(" {:>16}", format!("{} ({ratio:.1}x)", m[i].as_nanos()));
        }
        println!();
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        println!("\nlargest fill / smallest fill, same packet (flat is 1.00):");
        for (i, p) in probes.iter().enumerate().take(base) {
            let r = last.2[i].as_nanos() as f64 / first.2[i].as_nanos().max(1) as f64;
            println!("  {:<32} {r:.2}", p.name.trim());
        }
        let tollgate_v6 = last.2[1].as_nanos() as f64;
        let static_v6 = last.2[3].as_nanos().max(1) as f64;
        println!(
            "  at {} entries tollgate's IPv6 blocklisted drop costs {:.1}x the static drop's",
            last.0,
            tollgate_v6 / static_v6
        );
    }

    println!("\nkernel memory of the blocklist (MiB)");
    println!(
        "{:<10} {:>16} {:>16} {:>18} {:>14} {:>14}",
        "entries", "bpftool memlock", "fdinfo memlock", "cgroup kmem delta", "bytes/entry", "write s/1M"
    );
    let base_kmem = empty.cgroup_kmem;
    println!(
        "{:<10} {:>16} {:>16} {:>18} {:>14} {:>14}",
        0,
        mib(empty.bpftool),
        mib(empty.fdinfo),
        "0.0",
        "-",
        "-"
    );
    let mut prev = 0u32;
    for (fill, write, _, mem, _) in &results {
        let delta = mem.cgroup_kmem.zip(base_kmem).map(|(a, b)| a.saturating_sub(b));
        let per_entry = delta.map_or("-".to_owned(), |d| format!("{:.0}", d as f64 / f64::from(*fill)));
        let rate = write.as_secs_f64() / f64::from(fill - prev) * 1e6;
        prev = *fill;
        println!(
            "{fill:<10} {:>16} {:>16} {:>18} {:>14} {:>14.2}",
            mib(mem.bpftool),
            mib(mem.fdinfo),
            mib(delta),
            per_entry,
            rate
        );
    }
    println!(
        "bpftool's and fdinfo's memlock are the kernel's estimates, summed over the trie ((24-byte node + 16-byte\n\
         key + 16-byte value) x entries, without intermediate nodes or allocator rounding) and the exact-prefix\n\
         hash (its buckets, and element + 24-byte key + 16-byte value x entries). The cgroup delta is what\n\
         this process's memory cgroup was charged since the map was empty (the map is charged to its creator's\n\
         cgroup; includes the allocator's caches and anything else this process allocated or freed in the\n\
         kernel since, such as an earlier section's maps)."
    );

    // One call per entry, for comparison: every entry of the full map
    // replaced one by one (the kernel allocates a new node for each, as for
    // an insert).
    let sample: Vec<IpNet> = all.iter().take(written.min(200_000)).copied().collect();
    let started = Instant::now();
    for net in &sample {
        l.maps
            .blocklist
            .insert(net, BlockEntry { expires_at_ns: 0, reason: reason::FEED, prefix_len: 0 })
            .expect("replacing an entry");
    }
    let single = started.elapsed();
    println!(
        "\none call per entry (BPF_MAP_UPDATE_ELEM), {} entries replaced in a map of {written}: {:.2} s, {:.2} s per 1M",
        sample.len(),
        single.as_secs_f64(),
        single.as_secs_f64() / sample.len() as f64 * 1e6
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_distinct_cover_the_listed_probes_and_not_the_unlisted() {
        let nets = prefixes(50_000);
        assert_eq!(nets.len(), 50_000);
        assert_eq!(nets.iter().collect::<HashSet<_>>().len(), nets.len());
        let covers = |a: IpAddr| nets.iter().any(|n| n.contains(&a));
        assert!(covers(ATTACKER_V4) && covers(IpAddr::V6(LISTED_V6)));
        assert!(!covers(CUSTOMER_V4) && !covers(CUSTOMER_V6));
        assert!(nets.iter().all(|n| {
            match n {
                IpNet::V4(n) => ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]
                    .iter()
                    .any(|r| r.parse::<Ipv4Net>().unwrap().contains(n)),
                IpNet::V6(n) => "2001:db8::/32".parse::<Ipv6Net>().unwrap().contains(n),
            }
        }));
        assert_eq!(prefixes(1000), nets[..1000]);
    }
}
