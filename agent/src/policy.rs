//! Turns the kernel's threshold events into time-limited restrictions.
//!
//! Pure: no I/O, time is passed in (CLOCK_MONOTONIC ns, the kernel's clock),
//! so every rule is unit-tested with synthetic event streams. The caller
//! writes enforced decisions into the kernel maps and audits every decision.
//!
//! Rules (counter-measures 5 and 6 of the regulator's list, see MISSION.md):
//! - brute force: a source reported for REGISTER authentication failures is
//!   auth-suspended for `auth_suspend`; each repeat offence doubles it, up
//!   to `max_restriction` (like fail2ban's bantime.increment);
//! - international surge: a source reported for international INVITEs is
//!   intl-suspended for `intl_suspend` (escalating the same way); a new
//!   report while suspended extends it, so it lasts while the surge lasts;
//! - the allowlist wins over everything: an allowlisted source is only
//!   alerted on;
//! - a prefix cap limits spoofed-source damage: once `prefix_cap` sources of
//!   one /24 (IPv4) or /48 (IPv6) are restricted in a way, further ones are
//!   alerted on instead;
//! - in dry-run everything is decided and audited, nothing enforced;
//! - an operator may impose any kind by hand (audited the same way, with
//!   the operator's note) and lift any restriction by id.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use ipnet::IpNet;
use tollgate_common::{EVENT_AUTH_FAILURES, EVENT_INTL_INVITES};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    AuthSuspend,
    IntlSuspend,
    /// All SIP from a source prefix (manual only).
    Block,
    /// International INVITEs to one country code (manual; last resort).
    CountryRestrict,
}

impl Kind {
    pub const fn name(self) -> &'static str {
        match self {
            Kind::AuthSuspend => "auth-suspend",
            Kind::IntlSuspend => "intl-suspend",
            Kind::Block => "block",
            Kind::CountryRestrict => "country-restrict",
        }
    }
}

/// What a restriction applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Source(IpNet),
    /// An E.164 country code.
    Country(u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Source(net) => write!(f, "{net}"),
            Target::Country(cc) => write!(f, "+{cc}"),
        }
    }
}

/// The minimal evidence a decision rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The windowed count the kernel reported.
    pub count: u32,
    pub threshold: u32,
    pub window: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Active {
    pub id: u64,
    pub kind: Kind,
    pub target: Target,
    /// Which policy decided it ("operator" for manual ones).
    pub reason: &'static str,
    /// The operator's own words, for manual restrictions.
    pub note: Option<String>,
    pub evidence: Evidence,
    pub imposed_at_ns: u64,
    pub expires_at_ns: u64,
    /// Written to the kernel (false in dry-run).
    pub enforced: bool,
    /// 1 for a first offence, 2 for the second, ...
    pub offence: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Impose(Active),
    /// Still abusive while restricted: the expiry moved later.
    Extend(Active),
    /// Lapsed at its expiry.
    Expire(Active),
    /// Lifted by an operator before its expiry.
    Lift(Active),
    /// Crossed a threshold but not restricted (allowlisted, prefix cap).
    Alert {
        kind: Kind,
        target: Target,
        why: &'static str,
        evidence: Evidence,
    },
}

#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub auth_suspend: Duration,
    pub intl_suspend: Duration,
    /// Cap of escalated durations.
    pub max_restriction: Duration,
    /// Most restricted sources per /24 or /48 and kind (0: no cap).
    pub prefix_cap: usize,
    pub dry_run: bool,
    pub auth_threshold: u32,
    pub intl_threshold: u32,
    pub window: Duration,
}

pub struct Engine {
    cfg: PolicyConfig,
    allow: Vec<IpNet>,
    active: Vec<Active>,
    offences: HashMap<(Kind, Target), u32>,
    next_id: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The /24 or /48 a source belongs to, for the prefix cap.
fn neighbourhood(addr: IpAddr) -> IpNet {
    let len = if addr.is_ipv4() { 24 } else { 48 };
    IpNet::new(addr, len).expect("valid prefix length").trunc()
}

impl Engine {
    pub fn new(cfg: PolicyConfig, allow: Vec<IpNet>) -> Self {
        Self { cfg, allow, active: Vec::new(), offences: HashMap::new(), next_id: 1 }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    pub fn active(&self) -> &[Active] {
        &self.active
    }

    /// A kernel report: `addr` crossed the threshold of event `kind` with
    /// `count` in its current window.
    pub fn on_event(&mut self, now_ns: u64, addr: IpAddr, event_kind: u32, count: u32) -> Vec<Decision> {
        let (kind, base, threshold, reason) = match event_kind {
            EVENT_AUTH_FAILURES => {
                (Kind::AuthSuspend, self.cfg.auth_suspend, self.cfg.auth_threshold, "brute-force")
            }
            EVENT_INTL_INVITES => {
                (Kind::IntlSuspend, self.cfg.intl_suspend, self.cfg.intl_threshold, "intl-surge")
            }
            _ => return Vec::new(),
        };
        let evidence = Evidence { count, threshold, window: self.cfg.window };
        let target = Target::Source(IpNet::from(addr));
        if self.allow.iter().any(|a| a.contains(&addr)) {
            return vec![Decision::Alert { kind, target, why: "allowlisted source", evidence }];
        }
        if let Some(a) = self.active.iter_mut().find(|a| a.kind == kind && a.target == target) {
            let duration = a.expires_at_ns.saturating_sub(a.imposed_at_ns);
            a.expires_at_ns = a.expires_at_ns.max(now_ns.saturating_add(duration));
            a.evidence = evidence;
            return vec![Decision::Extend(a.clone())];
        }
        if self.cfg.prefix_cap > 0 {
            let hood = neighbourhood(addr);
            let near = self
                .active
                .iter()
                .filter(|a| {
                    a.kind == kind && matches!(a.target, Target::Source(n) if hood.contains(&n.addr()))
                })
                .count();
            if near >= self.cfg.prefix_cap {
                return vec![Decision::Alert { kind, target, why: "prefix cap reached", evidence }];
            }
        }
        let offence = {
            let n = self.offences.entry((kind, target)).or_insert(0);
            *n += 1;
            *n
        };
        let factor = 1u32.checked_shl(offence - 1).unwrap_or(u32::MAX);
        let duration = base.saturating_mul(factor).min(self.cfg.max_restriction);
        let active = Active {
            id: self.next_id,
            kind,
            target,
            reason,
            note: None,
            evidence,
            imposed_at_ns: now_ns,
            expires_at_ns: now_ns.saturating_add(nanos(duration)),
            enforced: !self.cfg.dry_run,
            offence,
        };
        self.next_id += 1;
        self.active.push(active.clone());
        vec![Decision::Impose(active)]
    }

    /// Restrictions whose time is up (the kernel already stopped applying
    /// them; this is for the audit trail and the maps' hygiene).
    pub fn expire(&mut self, now_ns: u64) -> Vec<Decision> {
        let (done, keep): (Vec<_>, Vec<_>) = self.active.drain(..).partition(|a| a.expires_at_ns <= now_ns);
        self.active = keep;
        done.into_iter().map(Decision::Expire).collect()
    }

    /// Takes over a restriction found in the kernel at start-up (restart),
    /// so that its expiry is audited too.
    pub fn adopt(&mut self, kind: Kind, target: Target, expires_at_ns: u64, now_ns: u64) {
        let evidence = Evidence { count: 0, threshold: 0, window: self.cfg.window };
        self.active.push(Active {
            id: self.next_id,
            kind,
            target,
            reason: "adopted",
            note: None,
            evidence,
            imposed_at_ns: now_ns,
            expires_at_ns,
            enforced: true,
            offence: 1,
        });
        *self.offences.entry((kind, target)).or_insert(0) += 1;
        self.next_id += 1;
    }

    /// An operator's restriction. Refused when the kind does not fit the
    /// target, the duration is not within (0, --max-restriction], the source
    /// is allowlisted, or the same restriction is already in force.
    pub fn impose_manual(
        &mut self,
        now_ns: u64,
        kind: Kind,
        target: Target,
        duration: Duration,
        note: Option<String>,
    ) -> Result<Decision, String> {
        match (kind, target) {
            (Kind::CountryRestrict, Target::Country(cc)) if (1..1000).contains(&cc) => {}
            (Kind::CountryRestrict, _) => return Err("country-restrict takes an E.164 country code".into()),
            (_, Target::Country(_)) => {
                return Err(format!("{} takes a source address or prefix", kind.name()));
            }
            (_, Target::Source(net)) => {
                if self.allow.iter().any(|a| a.contains(&net) || net.contains(a)) {
                    return Err(format!("{net} overlaps the allowlist, which wins over every restriction"));
                }
            }
        }
        if duration.is_zero() || duration > self.cfg.max_restriction {
            return Err(format!(
                "the duration must be more than 0 and at most --max-restriction ({})",
                humantime::format_duration(self.cfg.max_restriction)
            ));
        }
        if let Some(a) = self.active.iter().find(|a| a.kind == kind && a.target == target) {
            return Err(format!(
                "{} on {target} is already in force (id {}); lift it first",
                kind.name(),
                a.id
            ));
        }
        let active = Active {
            id: self.next_id,
            kind,
            target,
            reason: "operator",
            note,
            evidence: Evidence { count: 0, threshold: 0, window: Duration::ZERO },
            imposed_at_ns: now_ns,
            expires_at_ns: now_ns.saturating_add(nanos(duration)),
            enforced: !self.cfg.dry_run,
            offence: 1,
        };
        self.next_id += 1;
        self.active.push(active.clone());
        Ok(Decision::Impose(active))
    }

    /// Lifts the restriction `id` now.
    pub fn lift(&mut self, id: u64) -> Result<Decision, String> {
        let i = self
            .active
            .iter()
            .position(|a| a.id == id)
            .ok_or_else(|| format!("no restriction {id} in force"))?;
        Ok(Decision::Lift(self.active.remove(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            auth_suspend: Duration::from_secs(600),
            intl_suspend: Duration::from_secs(1800),
            max_restriction: Duration::from_secs(3600),
            prefix_cap: 3,
            dry_run: false,
            auth_threshold: 10,
            intl_threshold: 30,
            window: Duration::from_secs(60),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn imposed(d: &[Decision]) -> &Active {
        match d {
            [Decision::Impose(a)] => a,
            other => panic!("expected one impose, got {other:?}"),
        }
    }

    #[test]
    fn brute_force_is_auth_suspended_and_escalates_up_to_the_cap() {
        let mut e = Engine::new(cfg(), vec![]);
        let a = imposed(&e.on_event(0, ip("203.0.113.10"), EVENT_AUTH_FAILURES, 12)).clone();
        assert_eq!((a.kind, a.reason, a.offence, a.enforced), (Kind::AuthSuspend, "brute-force", 1, true));
        assert_eq!(a.expires_at_ns, 600 * S);
        assert_eq!(a.evidence, Evidence { count: 12, threshold: 10, window: Duration::from_secs(60) });
        // Nothing lapses early; then it lapses exactly on time.
        assert!(e.expire(599 * S).is_empty());
        assert!(matches!(e.expire(600 * S).as_slice(), [Decision::Expire(x)] if x.id == a.id));
        assert!(e.active().is_empty());
        // Each repeat offence doubles the duration, until the 1 h cap.
        for (offence, secs) in [(2, 1200), (3, 2400), (4, 3600), (5, 3600)] {
            let b = imposed(&e.on_event(10_000 * S * offence, ip("203.0.113.10"), EVENT_AUTH_FAILURES, 15))
                .clone();
            assert_eq!((b.offence, b.expires_at_ns - b.imposed_at_ns), (offence as u32, secs * S));
            e.expire(u64::MAX);
        }
    }

    #[test]
    fn a_surge_that_goes_on_extends_the_suspension() {
        let mut e = Engine::new(cfg(), vec![]);
        let a = imposed(&e.on_event(0, ip("198.51.100.10"), EVENT_INTL_INVITES, 31)).clone();
        assert_eq!((a.kind, a.expires_at_ns), (Kind::IntlSuspend, 1800 * S));
        match e.on_event(1000 * S, ip("198.51.100.10"), EVENT_INTL_INVITES, 40).as_slice() {
            [Decision::Extend(x)] => {
                assert_eq!((x.id, x.expires_at_ns, x.evidence.count), (a.id, 2800 * S, 40))
            }
            other => panic!("{other:?}"),
        }
        assert!(e.expire(2799 * S).is_empty());
        // Both kinds are independent.
        imposed(&e.on_event(1000 * S, ip("198.51.100.10"), EVENT_AUTH_FAILURES, 11));
        assert_eq!(e.active().len(), 2);
    }

    #[test]
    fn the_allowlist_wins_and_the_prefix_cap_limits_spoofed_damage() {
        let mut e = Engine::new(cfg(), vec!["203.0.113.20/32".parse().unwrap()]);
        assert!(matches!(
            e.on_event(0, ip("203.0.113.20"), EVENT_AUTH_FAILURES, 99).as_slice(),
            [Decision::Alert { why: "allowlisted source", .. }]
        ));
        for i in 1..=3 {
            imposed(&e.on_event(0, ip(&format!("198.51.100.{i}")), EVENT_AUTH_FAILURES, 10));
        }
        assert!(matches!(
            e.on_event(0, ip("198.51.100.4"), EVENT_AUTH_FAILURES, 10).as_slice(),
            [Decision::Alert { why: "prefix cap reached", .. }]
        ));
        // Another /24 and another kind are not affected.
        imposed(&e.on_event(0, ip("192.0.2.9"), EVENT_AUTH_FAILURES, 10));
        imposed(&e.on_event(0, ip("198.51.100.4"), EVENT_INTL_INVITES, 30));
        // IPv6 neighbourhoods are /48s.
        for i in 1..=3 {
            imposed(&e.on_event(0, ip(&format!("2001:db8:7:{i}::1")), EVENT_AUTH_FAILURES, 10));
        }
        assert!(matches!(
            e.on_event(0, ip("2001:db8:7:ff::1"), EVENT_AUTH_FAILURES, 10).as_slice(),
            [Decision::Alert { .. }]
        ));
        imposed(&e.on_event(0, ip("2001:db8:8::1"), EVENT_AUTH_FAILURES, 10));
    }

    #[test]
    fn dry_run_decides_everything_and_enforces_nothing() {
        let mut e = Engine::new(PolicyConfig { dry_run: true, ..cfg() }, vec![]);
        let a = imposed(&e.on_event(0, ip("203.0.113.10"), EVENT_AUTH_FAILURES, 10)).clone();
        assert!(!a.enforced);
        assert!(matches!(e.expire(600 * S).as_slice(), [Decision::Expire(x)] if !x.enforced));
    }

    #[test]
    fn operators_impose_and_lift_within_the_rules() {
        let mut e = Engine::new(cfg(), vec!["203.0.113.20/32".parse().unwrap()]);
        let src = |s: &str| Target::Source(s.parse().unwrap());
        let hour = Duration::from_secs(3600);
        let d =
            e.impose_manual(0, Kind::Block, src("198.51.100.0/24"), hour, Some("ticket 42".into())).unwrap();
        let Decision::Impose(a) = d else { panic!() };
        assert_eq!((a.reason, a.note.as_deref(), a.expires_at_ns), ("operator", Some("ticket 42"), 3600 * S));
        let c = e.impose_manual(0, Kind::CountryRestrict, Target::Country(232), hour, None).unwrap();
        assert!(matches!(c, Decision::Impose(ref x) if x.target == Target::Country(232)));
        // Refusals, each with a reason the operator can act on.
        for (kind, target, d) in [
            (Kind::Block, src("203.0.113.0/24"), hour), // contains an allowlisted source
            (Kind::AuthSuspend, Target::Country(232), hour), // kind does not fit
            (Kind::CountryRestrict, src("192.0.2.1/32"), hour), // kind does not fit
            (Kind::IntlSuspend, src("192.0.2.1/32"), Duration::ZERO),
            (Kind::IntlSuspend, src("192.0.2.1/32"), Duration::from_secs(3601)), // over the cap
            (Kind::Block, src("198.51.100.0/24"), hour),                         // already in force
        ] {
            assert!(e.impose_manual(0, kind, target, d, None).is_err(), "{kind:?} {target} {d:?}");
        }
        assert!(matches!(e.lift(a.id), Ok(Decision::Lift(x)) if x.id == a.id));
        assert!(e.lift(a.id).is_err(), "only once");
        assert_eq!(e.active().len(), 1);
    }

    #[test]
    fn unknown_event_kinds_are_ignored() {
        let mut e = Engine::new(cfg(), vec![]);
        assert!(e.on_event(0, ip("203.0.113.10"), 1 << 7, 10).is_empty());
    }

    #[test]
    fn adopted_restrictions_expire_and_count_as_offences() {
        let mut e = Engine::new(cfg(), vec![]);
        e.adopt(Kind::AuthSuspend, Target::Source("203.0.113.10/32".parse().unwrap()), 50 * S, 0);
        assert!(matches!(e.expire(50 * S).as_slice(), [Decision::Expire(a)] if a.reason == "adopted"));
        let again = imposed(&e.on_event(60 * S, ip("203.0.113.10"), EVENT_AUTH_FAILURES, 10)).clone();
        assert_eq!(again.offence, 2);
    }
}
