//! The daemon's durable state ([`Store`], `tollgate.db` in --state-dir):
//! restrictions with their wall-clock start and expiry, origin, reason and
//! evidence; learned levels on every scale; operators' thresholds; line and
//! identity histories. Pinned maps do not survive a reboot; this does.
//!
//! At start [`restore`] reconciles it with the kernel: a restriction still
//! in force is put back into the kernel if the kernel lost it (a reboot)
//! and keeps its original start, reason and evidence either way; one that
//! expired while the agent was down is audited as expired and forgotten;
//! what the kernel has and the database does not (pins of an agent without
//! this database) is adopted as before.

use std::{path::Path, str::FromStr as _};

use anyhow::Context as _;
use ipnet::IpNet;
use log::{info, warn};

use super::{actuator, learning::Learned};
use crate::{
    audit::Auditor,
    clock::monotonic_now_ns,
    detect::{Destination, Detector, Exported, Level, Line, SCALES, Subject},
    maps::Maps,
    policy::{Active, Decision, Engine, Kind, Reason, Target},
    store::{
        IdentityPrefix, LevelKey, LineDestination, Store, StoredLevel, StoredLine, StoredOverride,
        StoredRestriction, now_ms,
    },
};

pub(super) fn open(dir: &Path) -> anyhow::Result<Store> {
    let store = Store::open(dir)?;
    info!("state database {}", store.path().map_or_else(String::new, |p| p.display().to_string()));
    Ok(store)
}

const NS_PER_MS: u64 = 1_000_000;

/// A CLOCK_MONOTONIC instant of wall-clock `ms`, given both clocks now
/// (saturating at the boot for instants before it).
pub(super) fn mono_of(ms: i64, now_ms: i64, now_ns: u64) -> u64 {
    let delta = (ms - now_ms).unsigned_abs().saturating_mul(NS_PER_MS);
    if ms >= now_ms { now_ns.saturating_add(delta) } else { now_ns.saturating_sub(delta) }
}

pub(super) fn wall_of(ns: u64, now_ms: i64, now_ns: u64) -> i64 {
    let delta = i64::try_from(now_ns.abs_diff(ns) / NS_PER_MS).unwrap_or(i64::MAX);
    if ns >= now_ns { now_ms.saturating_add(delta) } else { now_ms.saturating_sub(delta) }
}

/// The database row of a restriction.
pub(super) fn stored(a: &Active) -> StoredRestriction {
    let (now, now_ns) = (now_ms(), monotonic_now_ns());
    StoredRestriction {
        id: a.id,
        kind: a.kind.name().to_owned(),
        target: a.target.to_string(),
        reason: a.reason.name().to_owned(),
        note: a.note.clone(),
        evidence: serde_json::to_string(&a.evidence).expect("evidence serializes"),
        imposed_at_ms: a.imposed_wall_ms.unwrap_or_else(|| wall_of(a.imposed_at_ns, now, now_ns)),
        expires_at_ms: wall_of(a.expires_at_ns, now, now_ns),
        enforced: a.enforced,
        offence: a.offence,
    }
}

/// The restriction of a database row (None: a row this build cannot read).
fn active(r: &StoredRestriction, now: i64, now_ns: u64) -> Option<Active> {
    Some(Active {
        id: r.id,
        kind: Kind::from_name(&r.kind)?,
        target: parse_target(&r.target)?,
        reason: Reason::from_name(&r.reason)?,
        note: r.note.clone(),
        evidence: serde_json::from_str(&r.evidence).unwrap_or_default(),
        imposed_at_ns: mono_of(r.imposed_at_ms, now, now_ns),
        expires_at_ns: mono_of(r.expires_at_ms, now, now_ns),
        enforced: r.enforced,
        offence: r.offence,
        imposed_wall_ms: Some(r.imposed_at_ms),
    })
}

/// A target in its display form ([`Target`]'s `Display`).
pub(super) fn parse_target(s: &str) -> Option<Target> {
    crate::cluster::record::parse_target(s)
}

fn subject_key(s: Subject) -> (String, String) {
    let key = match s {
        Subject::Source(a) => a.to_string(),
        Subject::Identity(t) => format!("{t:016x}"),
        Subject::Country(cc) => cc.to_string(),
    };
    (s.scope().to_owned(), key)
}

fn subject(scope: &str, key: &str) -> Option<Subject> {
    match scope {
        "source" => key.parse().ok().map(Subject::Source),
        "identity" => u64::from_str_radix(key, 16).ok().map(Subject::Identity),
        "country" => key.parse().ok().map(Subject::Country),
        _ => None,
    }
}

/// A line as one text column: `scope:key`.
fn line_text(s: Subject) -> String {
    let (scope, key) = subject_key(s);
    format!("{scope}:{key}")
}

/// The database row of a line's history.
pub(super) fn stored_line(s: Subject, l: &Line) -> StoredLine {
    StoredLine {
        line: line_text(s),
        first_seen_ms: l.first_seen_ms,
        last_seen_ms: l.last_seen_ms,
        last_intl_ms: l.last_intl_ms,
        customer: l.customer,
    }
}

/// The line of a database row (None: one this build cannot read).
pub(super) fn line_record(l: &StoredLine) -> Option<(Subject, Line)> {
    let line = Line {
        first_seen_ms: l.first_seen_ms,
        last_seen_ms: l.last_seen_ms,
        last_intl_ms: l.last_intl_ms,
        customer: l.customer,
    };
    Some((line_of(&l.line)?, line))
}

fn line_of(text: &str) -> Option<Subject> {
    let (scope, key) = text.split_once(':')?;
    subject(scope, key)
}

pub(super) fn level_key(s: Subject, scale: usize) -> LevelKey {
    let (scope, key) = subject_key(s);
    LevelKey { scope, key, scale: scale as u8 }
}

/// Takes over what the database holds (see the module documentation).
pub(super) fn restore(
    store: &Store,
    maps: &mut Maps,
    engine: &mut Engine,
    learned: &mut Learned,
    auditor: &Auditor,
) -> anyhow::Result<()> {
    let (now, now_ns) = (now_ms(), monotonic_now_ns());
    engine.set_next_id(store.next_restriction_id().context("reading the state database")?);
    let (mut kept, mut lapsed) = (0, 0);
    for row in store.restrictions()? {
        let Some(a) = active(&row, now, now_ns) else {
            warn!(
                "state database: restriction {} ({} on {}) is not one this version knows; left alone",
                row.id, row.kind, row.target
            );
            continue;
        };
        if row.expires_at_ms <= now {
            // Lapsed while no agent ran: its expiry is audited now.
            auditor.record(&Decision::Expire(a.clone()), None);
            if a.enforced {
                let _ = actuator::write_restriction(maps, &a, 0);
            }
            store.remove_restriction(row.id)?;
            lapsed += 1;
            continue;
        }
        if a.enforced
            && let Err(e) = actuator::write_restriction(maps, &a, a.expires_at_ns)
        {
            warn!("restoring restriction {} into the kernel: {e}", a.id);
        }
        info!(
            "{} on {} still in force, {} left (since {}, {})",
            a.kind.name(),
            a.target,
            humantime::format_duration(std::time::Duration::from_secs(
                u64::try_from(row.expires_at_ms - now).unwrap_or(0) / 1000
            )),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(row.imposed_at_ms).unwrap_or(0))
            ),
            a.reason.name()
        );
        engine.restore(a);
        kept += 1;
    }
    for (kind, target, n) in store.offences()? {
        if let (Some(kind), Some(target)) = (Kind::from_name(&kind), parse_target(&target)) {
            engine.restore_offences(kind, target, n);
        }
    }
    let mut e = Exported::default();
    for l in store.levels()? {
        if let Some(s) = subject(&l.key.scope, &l.key.key).filter(|_| usize::from(l.key.scale) < SCALES) {
            e.levels.push((
                s,
                usize::from(l.key.scale),
                Level { level: l.level, windows: l.windows, first_ms: l.first_ms },
            ));
        }
    }
    e.lines = store.lines()?.iter().filter_map(line_record).collect();
    e.destinations = store
        .destinations()?
        .into_iter()
        .filter_map(|d| {
            Some((
                line_of(&d.line)?,
                d.cc,
                Destination { first_call_ms: d.first_call_ms, last_call_ms: d.last_call_ms },
            ))
        })
        .collect();
    e.prefixes = store
        .identity_prefixes()?
        .into_iter()
        .filter_map(|p| Some((p.tag, IpNet::from_str(&p.prefix).ok()?, p.first_seen_ms, p.last_seen_ms)))
        .collect();
    let levels = e.levels.len();
    learned.detector.import(e);
    for o in store.overrides()? {
        if let Some(s) = subject(&o.key.scope, &o.key.key) {
            learned.detector.set_override(s, usize::from(o.key.scale), Some(o.threshold));
        }
    }
    if kept + lapsed + levels > 0 {
        info!(
            "state database: {kept} restrictions in force restored, {lapsed} lapsed while stopped, {levels} learned levels"
        );
    }
    Ok(())
}

/// Forgets history older than the new-destination history (and at least
/// the minimum history and two long windows): destinations, identity
/// prefixes, levels not updated since.
pub(super) fn prune(store: &Store, d: &mut Detector) {
    let c = d.config();
    let keep = c.new_destination.history.max(c.learning.min_history).max(c.windows[SCALES - 1] * 2);
    let before = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    d.prune(before);
    match store.prune(before) {
        Ok(0) => {}
        Ok(n) => info!(
            "state database: forgot {n} records of history older than {}",
            humantime::format_duration(keep)
        ),
        Err(e) => warn!("{e}"),
    }
}

/// Writes what the detector learned since the last call.
pub(super) fn save_learned(store: &Store, d: &mut Detector) -> crate::error::Result<()> {
    if !d.dirty() {
        return Ok(());
    }
    let now = now_ms();
    let e = d.export();
    let levels: Vec<StoredLevel> = e
        .levels
        .iter()
        .map(|(s, k, l)| StoredLevel {
            key: level_key(*s, *k),
            level: l.level,
            windows: l.windows,
            first_ms: l.first_ms,
            updated_ms: now,
        })
        .collect();
    store.put_levels(&levels)?;
    let lines: Vec<StoredLine> = e.lines.iter().map(|(s, l)| stored_line(*s, l)).collect();
    store.put_lines(&lines)?;
    let dests: Vec<LineDestination> = e
        .destinations
        .iter()
        .map(|(s, cc, d)| LineDestination {
            line: line_text(*s),
            cc: *cc,
            first_call_ms: d.first_call_ms,
            last_call_ms: d.last_call_ms,
        })
        .collect();
    store.put_destinations(&dests)?;
    let prefixes: Vec<IdentityPrefix> = e
        .prefixes
        .iter()
        .map(|(tag, net, f, l)| IdentityPrefix {
            tag: *tag,
            prefix: net.to_string(),
            first_seen_ms: *f,
            last_seen_ms: *l,
        })
        .collect();
    store.put_identity_prefixes(&prefixes)
}

/// An operator's threshold, kept.
pub(super) fn save_override(
    store: &Store,
    s: Subject,
    scale: usize,
    threshold: Option<u32>,
    note: Option<String>,
) -> crate::error::Result<()> {
    let key = level_key(s, scale);
    match threshold {
        Some(threshold) => store.put_override(&StoredOverride { key, threshold, note, set_at_ms: now_ms() }),
        None => store.remove_override(&key).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_back_from_their_display_form() {
        let every = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        for t in [
            Target::Source("198.51.100.0/24".parse().unwrap()),
            Target::Source("2001:db8::7/128".parse().unwrap()),
            Target::Country(232),
            Target::Identity("198.51.100.7".parse().unwrap(), 0xab),
            Target::Identity(every, u64::MAX),
        ] {
            assert_eq!(parse_target(&t.to_string()), Some(t), "{t}");
        }
        assert_eq!(parse_target("nonsense"), None);
    }

    #[test]
    fn wall_and_monotonic_instants_convert_both_ways() {
        let (now, now_ns) = (1_700_000_000_000, 50 * 1_000_000_000);
        for ms in [now - 10_000, now, now + 3_600_000] {
            assert_eq!(wall_of(mono_of(ms, now, now_ns), now, now_ns), ms);
        }
        // Before this boot: the boot itself.
        assert_eq!(mono_of(now - 3_600_000, now, now_ns), 0);
        for s in [Subject::Source("2001:db8::1".parse().unwrap()), Subject::Identity(7), Subject::Country(44)]
        {
            assert_eq!(line_of(&line_text(s)), Some(s));
        }
        let l = Line { first_seen_ms: 1, last_seen_ms: 2, last_intl_ms: None, customer: true };
        let s = Subject::Identity(0xab);
        assert_eq!(stored_line(s, &l).line, "identity:00000000000000ab");
        assert_eq!(line_record(&stored_line(s, &l)), Some((s, l)));
    }
}
