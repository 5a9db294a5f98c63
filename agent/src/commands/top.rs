//! `tollgate top`: the busiest sources and countries, with the thresholds
//! in force for them.

use std::time::Duration;

use tollgate_common::{Baseline, Config};

use crate::{cli::TopArgs, clock::monotonic_now_ns, countries::Countries};

fn window_text(config: &Config) -> String {
    humantime::format_duration(Duration::from_secs(config.window_ns / 1_000_000_000)).to_string()
}

pub fn top(args: TopArgs) -> anyhow::Result<()> {
    let dir = args.pin.pin_path.as_path();
    let maps = super::open_pinned("top", dir)?;
    let countries = Countries::shipped();
    let now = monotonic_now_ns();
    let mut sources = maps.sources();
    let ago =
        |ns: u64| humantime::format_duration(Duration::from_secs(now.saturating_sub(ns) / 1_000_000_000));
    println!("{} sources tracked", sources.len());
    println!("\nREGISTER authentication failures (rejections beyond the first challenge):");
    sources.sort_by_key(|(_, s)| std::cmp::Reverse(s.auth_failures()));
    println!(
        "  {:<40} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "source", "failures", "with-auth", "no-auth", "ok", "last seen"
    );
    for (addr, s) in sources.iter().filter(|(_, s)| s.auth_failures() > 0).take(args.count) {
        println!(
            "  {:<40} {:>9} {:>9} {:>9} {:>9} {:>12}",
            addr.to_string(),
            s.auth_failures(),
            s.register_auth,
            s.register_noauth,
            s.register_ok,
            format!("{} ago", ago(s.last_seen_ns))
        );
    }
    // The threshold in force for each: learned above the ceiling, or it.
    let config = maps.config()?;
    let judged = |learned: Option<Baseline>, ceiling: u32| match learned {
        _ if ceiling == 0 => ("off".to_owned(), "-".to_owned()),
        Some(b) if b.threshold > ceiling => {
            (b.threshold.to_string(), format!("{:.1}", b.peacetime_milli as f64 / 1000.0))
        }
        _ => (ceiling.to_string(), "-".to_owned()),
    };
    let learned = maps.intl_baselines();
    println!(
        "\nInternational INVITEs (threshold per {}-window; normal: the learned level):",
        window_text(&config)
    );
    sources.sort_by_key(|(_, s)| std::cmp::Reverse(s.intl_invites));
    println!(
        "  {:<40} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "source", "intl", "all", "emergency", "threshold", "normal", "last seen"
    );
    for (addr, s) in sources.iter().filter(|(_, s)| s.intl_invites > 0).take(args.count) {
        let b = learned.iter().find(|(a, _)| a == addr).map(|(_, b)| *b);
        let (threshold, normal) = judged(b, config.intl_invite_threshold);
        println!(
            "  {:<40} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
            addr.to_string(),
            s.intl_invites,
            s.invites,
            s.emergency_invites,
            threshold,
            normal,
            format!("{} ago", ago(s.last_seen_ns))
        );
    }
    println!("\nInternational INVITEs by destination country:");
    let mut by_country = maps.country_invites()?;
    by_country.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let learned = maps.country_baselines()?;
    println!("  {:<5} {:<10} {:>9} {:>9} {:>9}", "cc", "country", "intl", "threshold", "normal");
    for (cc, n) in by_country.into_iter().take(args.count) {
        let b = learned.iter().find(|(c, _)| *c == cc).map(|(_, b)| *b);
        let (threshold, normal) = judged(b, config.country_invite_threshold);
        let label = countries.label(cc).unwrap_or("unassigned");
        println!("  +{cc:<4} {label:<10} {n:>9} {threshold:>9} {normal:>9}");
    }
    Ok(())
}
