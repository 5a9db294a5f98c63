//! The operator's requests from the control socket, answered by the engine.

use std::time::Duration;

use super::actuator::Actuator;
use crate::{
    clock::monotonic_now_ns,
    control,
    maps::Maps,
    policy::{Active, Decision, Engine, Kind, Target},
};

fn view(a: &Active, now: u64) -> control::RestrictionView {
    control::RestrictionView {
        id: a.id,
        kind: a.kind.name().to_owned(),
        target: a.target.to_string(),
        reason: a.reason.name().to_owned(),
        note: a.note.clone(),
        expires_in_secs: a.expires_at_ns.saturating_sub(now) / 1_000_000_000,
        enforced: a.enforced,
    }
}

/// Answers an operator's request in the main loop.
pub(super) fn handle_control(
    request: control::Request,
    engine: &mut Engine,
    maps: &mut Maps,
    actuator: &Actuator,
) -> control::Response {
    let now = monotonic_now_ns();
    let decision = match request {
        control::Request::List => Ok(None),
        control::Request::Restrict { kind, target, seconds, note } => {
            parse_target(kind, &target).and_then(|target| {
                engine.impose_manual(now, kind, target, Duration::from_secs(seconds), note).map(Some)
            })
        }
        control::Request::Lift { id } => engine.lift(id).map(Some),
    };
    match decision {
        Ok(d) => {
            let mut shown: Vec<control::RestrictionView> =
                engine.active().iter().map(|a| view(a, now)).collect();
            if let Some(d) = d {
                actuator.apply(maps, &d, None);
                if let Decision::Lift(a, _) | Decision::Impose(a) = &d {
                    shown = vec![view(a, now)];
                }
            }
            control::Response { ok: true, error: None, restrictions: shown }
        }
        Err(e) => control::Response::error(e),
    }
}

/// What a restriction of `kind` given by an operator applies to.
fn parse_target(kind: Kind, target: &str) -> Result<Target, String> {
    if kind == Kind::CountryRestrict {
        let code = target.trim_start_matches('+');
        Ok(Target::Country(code.parse().map_err(|_| format!("{target:?} is not an E.164 country code"))?))
    } else {
        Ok(Target::Source(crate::cli::parse_cidr(target)?))
    }
}
