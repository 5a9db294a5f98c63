//! `tollgate status`: what is pinned, attached and configured, and the
//! verdict totals.

use std::time::Duration;

use tollgate_common::{CONFIG_BLOCK_ALL_PORTS, NO_EXPIRY, reason, verdict};

use crate::{cli::PinArgs, clock::monotonic_now_ns, loader};

pub fn status(args: PinArgs) -> anyhow::Result<()> {
    let dir = args.pin_path.as_path();
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
    let blocks = maps.blocklist.entries();
    println!("blocklist:    {} entries", blocks.len());
    for (net, e) in blocks {
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
        println!("  {:<43} reason={:<8} {left}", net.to_string(), reason::name(e.reason));
    }
    println!("verdicts:");
    let totals = maps.verdict_totals()?;
    for (code, action, why) in verdict::ALL {
        let c = totals[code as usize];
        println!("  {action:<5} {why:<18} {:>14} packets {:>16} bytes", c.packets, c.bytes);
    }
    Ok(())
}
