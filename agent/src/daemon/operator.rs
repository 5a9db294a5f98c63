//! The operator's requests from the control socket, answered by the engine.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use tollgate_common::{IdentityKey, hash};

use super::{actuator::Actuator, learning::Learned, reporting::Reporting};
use crate::{
    clock::monotonic_now_ns,
    control,
    detect::{SCALE_NAMES, Subject},
    maps::Maps,
    policy::{Active, Decision, Engine, Kind, Target},
};

fn view(a: &Active, now: u64, actuator: &Actuator) -> control::RestrictionView {
    control::RestrictionView {
        id: a.id,
        kind: a.kind.name().to_owned(),
        target: a.target.to_string(),
        reason: a.reason.name().to_owned(),
        note: a.note.clone(),
        expires_in_secs: a.expires_at_ns.saturating_sub(now) / 1_000_000_000,
        enforced: a.enforced,
        origin: actuator.cluster().and_then(|c| c.origin_of(a)),
    }
}

/// The subject an operator names: `source ADDR`, `identity TAG` (16 hex
/// digits, from `tollgate identity-tag`) or `country CC`.
fn parse_subject(scope: &str, key: &str) -> Result<Subject, String> {
    match scope {
        "source" => key.parse().map(Subject::Source).map_err(|_| format!("{key:?} is not an IP address")),
        "identity" => u64::from_str_radix(key, 16)
            .ok()
            .filter(|_| key.len() == 16)
            .map(Subject::Identity)
            .ok_or_else(|| format!("{key:?} is not an identity tag (16 hex digits)")),
        "country" => key
            .trim_start_matches('+')
            .parse()
            .ok()
            .filter(|cc| (1..1000).contains(cc))
            .map(Subject::Country)
            .ok_or_else(|| format!("{key:?} is not an E.164 country code")),
        other => Err(format!("unknown scope {other:?} (source, identity or country)")),
    }
}

/// Sets or clears an operator's threshold; audited and kept.
fn baseline(
    learned: &mut Learned,
    actuator: &Actuator,
    maps: &mut Maps,
    (scope, key, scale, threshold, note): (String, String, String, Option<u32>, Option<String>),
) -> Result<Vec<control::BaselineView>, String> {
    let subject = parse_subject(&scope, &key)?;
    let k = SCALE_NAMES
        .iter()
        .position(|n| *n == scale)
        .ok_or_else(|| format!("unknown scale {scale:?} (short, medium or long)"))?;
    if threshold == Some(0) {
        return Err(
            "a threshold must be at least 1 (use `baseline clear` to return to the learned one)".into()
        );
    }
    if k == 0 && matches!(subject, Subject::Source(_)) && learned.detector.config().source[0] == 0 {
        return Err("the short scale of sources is off (--intl-invite-threshold 0)".into());
    }
    learned.detector.set_override(subject, k, threshold);
    learned.apply_thresholds(maps);
    super::persist::save_override(actuator.store(), subject, k, threshold, note.clone())
        .map_err(|e| e.to_string())?;
    actuator.auditor().record_baseline(&scope, &key, &scale, threshold, note.as_deref());
    Ok(views(learned).into_iter().filter(|v| v.scope == scope && v.scale == scale && v.key == key).collect())
}

/// Every operator's threshold, with the learned level beside it.
fn views(learned: &Learned) -> Vec<control::BaselineView> {
    let d = &learned.detector;
    let now = crate::store::now_ms();
    let mut out: Vec<control::BaselineView> = d
        .overrides()
        .map(|(s, k, t)| {
            let lk = super::persist::level_key(s, k);
            control::BaselineView {
                scope: lk.scope,
                key: lk.key,
                scale: SCALE_NAMES[k].to_owned(),
                threshold: t,
                operator: true,
                level: d.level(s, k, now),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.scope, &a.key, &a.scale).cmp(&(&b.scope, &b.key, &b.scale)));
    out
}

/// Answers an operator's request in the main loop.
pub(super) fn handle_control(
    request: control::Request,
    engine: &mut Engine,
    learned: &mut Learned,
    maps: &mut Maps,
    actuator: &Actuator,
    reporting: &mut Reporting,
    key: &IdentityKey,
) -> control::Response {
    let now = monotonic_now_ns();
    let decision = match request {
        control::Request::ReportDormant { since_seconds } => {
            let since = Duration::from_secs(since_seconds);
            return match reporting.dormant(actuator.store(), &learned.detector, engine, since) {
                Ok(r) => control::Response { ok: true, dormant: Some(r), ..Default::default() },
                Err(e) => control::Response::error(e.to_string()),
            };
        }
        control::Request::ReportCountries { since_seconds } => {
            let since = Duration::from_secs(since_seconds);
            return match reporting.countries(actuator.store(), maps, engine, since) {
                Ok(r) => control::Response { ok: true, countries: Some(r), ..Default::default() },
                Err(e) => control::Response::error(e.to_string()),
            };
        }
        // The main loop reloads before it gets here.
        control::Request::Reload => return control::Response::error("reload is the main loop's"),
        control::Request::BaselineList => {
            return control::Response { ok: true, baselines: views(learned), ..Default::default() };
        }
        control::Request::Baseline { scope, key, scale, threshold, note } => {
            return match baseline(learned, actuator, maps, (scope, key, scale, threshold, note)) {
                Ok(baselines) => control::Response { ok: true, baselines, ..Default::default() },
                Err(e) => control::Response::error(e),
            };
        }
        control::Request::Cluster => {
            let cluster = actuator.cluster().map(|c| c.view(engine));
            return control::Response { ok: true, cluster, ..Default::default() };
        }
        control::Request::List => Ok(None),
        control::Request::Restrict { kind, target, seconds, note, identity } => {
            parse_target(kind, &target, identity.as_deref(), key).and_then(|(kind, target)| {
                engine.impose_manual(now, kind, target, Duration::from_secs(seconds), note).map(Some)
            })
        }
        control::Request::Lift { id } => engine.lift(id).map(Some),
    };
    match decision {
        Ok(d) => {
            let mut shown: Vec<control::RestrictionView> =
                engine.active().iter().map(|a| view(a, now, actuator)).collect();
            if let Some(d) = d {
                reporting.decision(&d);
                actuator.apply(maps, &d, None);
                if let Decision::Lift(a, _) | Decision::Impose(a) = &d {
                    shown = vec![view(a, now, actuator)];
                }
            }
            control::Response { ok: true, restrictions: shown, ..Default::default() }
        }
        Err(e) => control::Response::error(e),
    }
}

/// What a restriction of `kind` given by an operator applies to, and in
/// which way: a line (identity `name`, turned into its tag here and not
/// kept, or `identity TAG everywhere`) is intl-suspended, or for `auth`
/// identity-suspended, at every address.
fn parse_target(
    kind: Kind,
    target: &str,
    name: Option<&str>,
    key: &IdentityKey,
) -> Result<(Kind, Target), String> {
    let everywhere = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    if name.is_some_and(str::is_empty) {
        return Err("--identity needs a username".into());
    }
    let line = match (name, super::persist::parse_target(target)) {
        (Some(name), _) => Some(Target::Identity(everywhere, hash::identity_tag(key, name.as_bytes()))),
        (None, Some(t @ Target::Identity(..))) if target.split(' ').nth(1).is_some_and(|t| t.len() == 16) => {
            Some(t)
        }
        _ => None,
    };
    if let Some(line) = line {
        return match kind {
            Kind::IntlSuspend | Kind::IdentitySuspend => Ok((kind, line)),
            Kind::AuthSuspend => Ok((Kind::IdentitySuspend, line)),
            _ => Err(format!("{} takes a source address or prefix, not an identity", kind.name())),
        };
    }
    if !target.is_empty() && target.starts_with("identity ") {
        return Err(format!("{target:?} is not `identity TAG everywhere` (TAG: 16 hex digits)"));
    }
    if kind == Kind::CountryRestrict {
        let code = target.trim_start_matches('+');
        Ok((
            kind,
            Target::Country(code.parse().map_err(|_| format!("{target:?} is not an E.164 country code"))?),
        ))
    } else {
        Ok((kind, Target::Source(crate::cli::parse_cidr(target)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_named_by_its_identity_or_its_tag_and_kept_as_the_tag() {
        let key = IdentityKey { k0: 7, k1: 11 };
        let tag = hash::identity_tag(&key, b"alice");
        let line = Target::Identity(IpAddr::V6(Ipv6Addr::UNSPECIFIED), tag);
        assert_eq!(parse_target(Kind::IntlSuspend, "", Some("alice"), &key), Ok((Kind::IntlSuspend, line)));
        // `auth` on a line: its credentials, everywhere.
        assert_eq!(
            parse_target(Kind::AuthSuspend, "", Some("alice"), &key),
            Ok((Kind::IdentitySuspend, line))
        );
        // The tag, as audit records and `restrictions list` show the line.
        assert_eq!(
            parse_target(Kind::IntlSuspend, &line.to_string(), None, &key),
            Ok((Kind::IntlSuspend, line))
        );
        assert!(
            parse_target(Kind::CountryRestrict, "", Some("alice"), &key)
                .unwrap_err()
                .contains("not an identity")
        );
        assert!(parse_target(Kind::Block, "", Some("alice"), &key).is_err());
        assert!(
            parse_target(Kind::IntlSuspend, "", Some(""), &key).unwrap_err().contains("needs a username")
        );
        assert!(
            parse_target(Kind::IntlSuspend, "identity 12 everywhere", None, &key)
                .unwrap_err()
                .contains("16 hex")
        );
        assert_eq!(
            parse_target(Kind::IntlSuspend, "198.51.100.7", None, &key),
            Ok((Kind::IntlSuspend, Target::Source("198.51.100.7/32".parse().unwrap())))
        );
    }
}
