//! `tollgate status`: what is pinned, attached and configured, and the
//! verdict totals.

use std::time::Duration;

use tollgate_common::{CONFIG_BLOCK_ALL_PORTS, MAX_BLOCK_LENGTHS, NO_EXPIRY, reason, verdict};

use crate::{
    cli::StatusArgs, clock::monotonic_now_ns, control, daemon::feeds::StateFile, loader, store::now_ms,
};

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let dir = args.pin.pin_path.as_path();
    let maps = super::open_pinned("status", dir)?;
    let now = monotonic_now_ns();
    let links = loader::pinned_links(dir);
    println!("state:        {}", dir.display());
    println!("attached to:  {}", if links.is_empty() { "nothing".to_owned() } else { links.join(", ") });
    let egress: Vec<String> =
        loader::pinned_egress(dir).into_iter().map(|(i, pin)| format!("{i} ({})", pin.describe())).collect();
    if !egress.is_empty() {
        println!("egress:       {}", egress.join(", "));
    }
    let config = maps.config()?;
    println!(
        "block scope:  {}",
        if config.flags & CONFIG_BLOCK_ALL_PORTS != 0 { "all ports" } else { "SIP ports" }
    );
    let ports: Vec<String> = maps
        .sip_ports()
        .iter()
        .map(|(p, n)| format!("{}/{n}", if *p == tollgate_common::IPPROTO_UDP { "udp" } else { "tcp" }))
        .collect();
    println!("SIP ports:    {}", ports.join(" "));
    let allows = maps.allowlist.prefixes();
    println!(
        "allowlist:    {}",
        if allows.is_empty() {
            "empty".to_owned()
        } else {
            allows.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" ")
        }
    );
    // Which feed owns a FEED entry is the agent's: feeds.json says.
    let feeds = StateFile::read(&args.state_dir).unwrap_or_else(|e| {
        eprintln!("tollgate: warning: {e:#}");
        StateFile::default()
    });
    let blocks = maps.blocklist.entries();
    // How the kernel looks a source up: a hash per prefix length, or the
    // trie past MAX_BLOCK_LENGTHS of them.
    let lookup = match maps.blocklist.lengths_in_force() {
        Ok(Some(_)) if blocks.is_empty() => "nothing to look up".to_owned(),
        Ok(Some(_)) => {
            let lengths: std::collections::BTreeSet<(bool, u8)> =
                blocks.iter().map(|(n, _)| (n.addr().is_ipv6(), n.prefix_len())).collect();
            let names: Vec<String> = lengths
                .iter()
                .map(|(v6, len)| format!("{} /{len}", if *v6 { "IPv6" } else { "IPv4" }))
                .collect();
            format!("looked up by prefix length ({})", names.join(", "))
        }
        Ok(None) => format!("looked up in the trie (more than {MAX_BLOCK_LENGTHS} prefix lengths)"),
        Err(e) => format!("lookup unknown ({e})"),
    };
    println!("blocklist:    {} entries, {lookup}", blocks.len());
    for (net, e) in blocks {
        let owners: Vec<&str> =
            feeds.feeds.iter().filter(|f| f.entries.contains(&net)).map(|f| f.name.as_str()).collect();
        let why = match (e.reason, owners.is_empty()) {
            (reason::FEED, false) => format!("feed:{}", owners.join("+")),
            (r, _) => reason::name(r).to_owned(),
        };
        let left = if e.expires_at_ns == NO_EXPIRY {
            "permanent".to_owned()
        } else if e.is_active(now) {
            format!(
                "expires in {}",
                humantime::format_duration(Duration::from_secs((e.expires_at_ns - now) / 1_000_000_000))
            )
        } else {
            "expired".to_owned()
        };
        println!("  {:<43} reason={why:<8} {left}", net.to_string());
    }
    print_feeds(&feeds);
    println!("verdicts:");
    let totals = maps.verdict_totals()?;
    for (code, action, why) in verdict::ALL {
        let c = totals[code as usize];
        println!("  {action:<5} {why:<18} {:>14} packets {:>16} bytes", c.packets, c.bytes);
    }
    cluster(&args.control.control_socket);
    Ok(())
}

/// The feeds of the last `run` with this state directory.
fn print_feeds(feeds: &StateFile) {
    if feeds.feeds.is_empty() {
        println!("feeds:        none");
        return;
    }
    println!("feeds:");
    let now = now_ms();
    let when = |ms: i64| {
        let ago = Duration::from_secs(u64::try_from((now - ms) / 1000).unwrap_or(0));
        format!("{} ago", humantime::format_duration(ago))
    };
    for f in &feeds.feeds {
        let entries = if f.entries.is_empty() || f.expires_ms <= now {
            "0 entries".to_owned()
        } else {
            let left = Duration::from_secs(u64::try_from((f.expires_ms - now) / 1000).unwrap_or(0));
            format!("{} entries, for {}", f.entries.len(), humantime::format_duration(left))
        };
        let success = f.last_success_ms.map_or_else(|| "never".to_owned(), when);
        println!("  {} ({}, {}): {entries}; last success {success}", f.name, f.format, f.source);
        if let Some(e) = &f.last_error {
            let at = f.last_attempt_ms.map_or_else(String::new, |ms| format!(" ({})", when(ms)));
            println!("    last error{at}: {e}");
        }
    }
}

/// The cluster section, from the running agent; nothing when it runs
/// without one or does not answer (the rest works without it).
fn cluster(socket: &std::path::Path) {
    let Ok(response) = control::call(socket, &control::Request::Cluster) else { return };
    let Some(c) = response.cluster else { return };
    let secs = |s: f64| humantime::format_duration(Duration::from_secs(s as u64)).to_string();
    println!("cluster:      node {} under {} ({})", c.node, c.prefix, c.endpoints.join(","));
    println!(
        "  etcd:       {}, last sync {}{}",
        if c.connected { "connected" } else { "DISCONNECTED" },
        c.last_sync_age_secs.map_or_else(|| "never".to_owned(), |s| format!("{} ago", secs(s))),
        c.last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default()
    );
    if c.queued > 0 {
        println!("  queued:     {} local decisions waiting for etcd", c.queued);
    }
    println!("  members:    {}", c.members.len());
    for m in &c.members {
        println!("    {:<24} {:<10} heartbeat {} ago", m.name, m.version, secs(m.heartbeat_age_secs));
    }
    println!(
        "  counts:     summed with {} other nodes' for {} countries and {} sources",
        c.counting_nodes, c.summed_countries, c.summed_sources
    );
    let by: Vec<String> = c.by_origin.iter().map(|(n, k)| format!("{n} {k}")).collect();
    println!("  restrictions by origin: {}", if by.is_empty() { "none".to_owned() } else { by.join(", ") });
}
