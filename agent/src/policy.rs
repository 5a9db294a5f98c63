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
//! - country surge (counter-measure 7, the last resort, opt-in): a
//!   destination country reported for international INVITEs from at least
//!   `--country-min-sources` distinct sources (so the per-source measures
//!   cannot contain it) is country-restricted for `country_restrict_for`,
//!   extended while reports go on but never beyond `country_restrict_max`
//!   in all, and lifted as soon as a window passes below its threshold.
//!   A country that reached the maximum is only alerted on until its surge
//!   ends: going on is an operator's decision. Without the opt-in, a
//!   country surge is only alerted on;
//! - in dry-run everything is decided and audited, nothing enforced;
//! - an operator may impose any kind by hand (audited the same way, with
//!   the operator's note) and lift any restriction by id.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use tollgate_common::reason;

use crate::{
    detect::{Report, Rule, Subject},
    events::EventKind,
};

/// A kind of restriction: the one vocabulary of the engine, the operator's
/// command line (`tollgate restrict auth|intl|block|country`) and the control
/// socket, which use the short form; audit lines, metrics and tables use
/// [`Kind::name`].
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// auth-suspend a source: drop its REGISTERs and credentialed requests.
    #[value(name = "auth")]
    #[serde(rename = "auth")]
    AuthSuspend,
    /// intl-suspend a source: drop its international INVITEs.
    #[value(name = "intl")]
    #[serde(rename = "intl")]
    IntlSuspend,
    /// block a source: drop all its SIP.
    // Manual only.
    Block,
    /// country-restrict: drop international INVITEs to a country code.
    // The last resort.
    #[value(name = "country")]
    #[serde(rename = "country")]
    CountryRestrict,
    /// identity-suspend: drop one identity's credentialed requests from one
    /// address, where other identities authenticate (an office behind one
    /// NAT), or everywhere (a line, by hand: `restrict auth --identity`).
    #[value(skip)]
    #[serde(rename = "identity")]
    IdentitySuspend,
}

impl Kind {
    /// The kind named `name` ([`Self::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [Kind::AuthSuspend, Kind::IntlSuspend, Kind::Block, Kind::CountryRestrict, Kind::IdentitySuspend]
            .into_iter()
            .find(|k| k.name() == name)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::AuthSuspend => "auth-suspend",
            Kind::IntlSuspend => "intl-suspend",
            Kind::Block => "block",
            Kind::CountryRestrict => "country-restrict",
            Kind::IdentitySuspend => "identity-suspend",
        }
    }
}

/// What a restriction applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Source(IpNet),
    /// An E.164 country code.
    Country(u16),
    /// One identity (its tag) at one address, or at every address (the
    /// unspecified address `::`).
    Identity(IpAddr, u64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Source(net) => write!(f, "{net}"),
            Target::Country(cc) => write!(f, "+{cc}"),
            Target::Identity(addr, tag) if addr.is_unspecified() => {
                write!(f, "identity {} everywhere", tollgate_common::hash::IdentityTag(*tag))
            }
            Target::Identity(addr, tag) => {
                write!(f, "{} identity {}", IpNet::from(*addr), tollgate_common::hash::IdentityTag(*tag))
            }
        }
    }
}

/// The minimal evidence a decision rests on. Kept with a restriction in
/// the state database, so a restarted agent audits it as it was imposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Evidence {
    /// The windowed count the kernel reported.
    pub count: u32,
    /// The threshold in force: the ceiling, or the learned one above it.
    pub threshold: u32,
    pub window: Duration,
    /// The learned normal level per window (thousandths), when the
    /// threshold came from it.
    pub peacetime_milli: Option<u64>,
    /// Distinct sources in the window, at least (country surges).
    pub sources: Option<u32>,
    /// What an authentication-failure report says besides the count.
    pub auth: Option<AuthEvidence>,
    /// The timescale judged ([`crate::detect::SCALE_NAMES`] index).
    pub scale: Option<u8>,
    /// The destination country of the calls (new-destination, new-prefix).
    pub cc: Option<u16>,
    /// The destination is on the high-risk list.
    pub high_risk: bool,
    /// Distinct addresses of an identity in the window, at least.
    pub addresses: Option<u32>,
    /// (new-prefix) The prefix new to the identity, and whether no other
    /// identity is known there (then the address as a whole is restricted).
    pub prefix: Option<IpNet>,
    pub strong: Option<bool>,
    /// (clustering) The part of `count` other nodes counted, and how many
    /// nodes: the cluster's sum was judged.
    pub elsewhere: Option<u32>,
    pub nodes: Option<u32>,
}

/// The evidence of authentication failures: `count` failures bound to the
/// source (README: "Evidence"), and these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthEvidence {
    /// The identity (tag) of the failure that crossed the threshold.
    pub identity: u64,
    /// Failures of requests whose nonce was not issued to the source, in
    /// the window: possibly forged, never counted.
    pub unbound: u32,
    /// Distinct failing identities in the window, at least.
    pub identities: u16,
    /// Another identity authenticated successfully at the address recently.
    pub other_ok: bool,
}

/// Why an automatic country restriction is lifted before its expiry.
pub const SURGE_ENDED: &str = "surge-ended";
/// Who lifts a restriction by its id.
pub const OPERATOR: &str = "operator";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Active {
    pub id: u64,
    pub kind: Kind,
    pub target: Target,
    /// Which policy decided it ([`Reason::Operator`] for manual ones).
    pub reason: Reason,
    /// The operator's own words, for manual restrictions.
    pub note: Option<String>,
    pub evidence: Evidence,
    pub imposed_at_ns: u64,
    pub expires_at_ns: u64,
    /// Written to the kernel (false in dry-run).
    pub enforced: bool,
    /// 1 for a first offence, 2 for the second, ...
    pub offence: u32,
    /// When it was imposed (wall clock, UNIX ms), for one restored from the
    /// state database: its start may be before this boot, which
    /// CLOCK_MONOTONIC cannot express.
    pub imposed_wall_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Impose(Active),
    /// Still abusive while restricted: the expiry moved later.
    Extend(Active),
    /// Lapsed at its expiry.
    Expire(Active),
    /// Lifted before its expiry: by an operator ([`OPERATOR`]) or because
    /// the surge ended ([`SURGE_ENDED`]).
    Lift(Active, &'static str),
    /// Crossed a threshold but not restricted (allowlisted, prefix cap,
    /// country-restrict not opted in or at its maximum).
    Alert {
        kind: Kind,
        target: Target,
        why: &'static str,
        evidence: Evidence,
    },
}

/// A restriction decided on another node, in this node's clock
/// ([`Engine::adopt_remote`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adopted {
    pub kind: Kind,
    pub target: Target,
    pub reason: Reason,
    pub evidence: Evidence,
    pub note: Option<String>,
    pub imposed_at_ns: u64,
    pub expires_at_ns: u64,
    /// Its start on the deciding node (wall clock, UNIX ms).
    pub imposed_wall_ms: i64,
    /// Enforced where it was decided (not in dry-run there).
    pub enforce: bool,
}

#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub auth_suspend: Duration,
    pub intl_suspend: Duration,
    /// Cap of escalated durations.
    pub max_restriction: Duration,
    /// Longest a line's (an identity's) international calling is
    /// suspended by hand.
    pub max_line_suspension: Duration,
    /// Most restricted sources per /24 or /48 and kind (0: no cap).
    pub prefix_cap: usize,
    pub dry_run: bool,
    pub window: Duration,
    /// Whether country surges may be restricted (`--allow-country-restrict`).
    pub country_restrict: bool,
    /// How long a country surge report restricts the country.
    pub country_restrict_for: Duration,
    /// Longest an automatic country restriction lasts in all.
    pub country_restrict_max: Duration,
    /// Distinct failing identities at an address in a window from which
    /// the address as a whole is auth-suspended even where other identities
    /// work (password spraying).
    pub spray_identities: u16,
}

/// Why a restriction was imposed: which rule decided it, or who. Its string
/// form ([`Reason::name`]) is what the audit trail, the control socket and
/// the tables show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Authentication failures over the threshold.
    BruteForce,
    /// International INVITEs over the source's threshold.
    IntlSurge,
    /// Imposed by an operator.
    Operator,
    /// An automatic country restriction.
    CountrySurge,
    /// Found in force at start-up, with an origin the kernel does not keep.
    Adopted,
    /// A line's calls to a country new to it over the lowered threshold.
    NewDestination,
    /// An identity's calls from a prefix new to it.
    NewPrefix,
    /// One identity's calls, summed over all its addresses.
    IdentitySurge,
}

impl Reason {
    pub const fn name(self) -> &'static str {
        match self {
            Reason::BruteForce => "brute-force",
            Reason::IntlSurge => "intl-surge",
            Reason::Operator => OPERATOR,
            Reason::CountrySurge => "country-surge",
            Reason::Adopted => "adopted",
            Reason::NewDestination => "new-destination",
            Reason::NewPrefix => "new-prefix",
            Reason::IdentitySurge => "identity-surge",
        }
    }

    /// The reason named `name` ([`Self::name`]), as the state database keeps it.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Reason::BruteForce,
            Reason::IntlSurge,
            Reason::Operator,
            Reason::CountrySurge,
            Reason::Adopted,
            Reason::NewDestination,
            Reason::NewPrefix,
            Reason::IdentitySurge,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }

    /// The origin the kernel's maps keep with a restriction (only a country
    /// surge's matters after a restart: it is lifted when the surge ends).
    pub const fn kernel_code(self) -> u32 {
        match self {
            Reason::CountrySurge => reason::COUNTRY_SURGE,
            _ => reason::OPERATOR,
        }
    }

    /// The reason of a restriction found in force with the kernel's `code`.
    pub const fn adopted(code: u32) -> Self {
        if code == reason::COUNTRY_SURGE { Reason::CountrySurge } else { Reason::Adopted }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub struct Engine {
    cfg: PolicyConfig,
    allow: Vec<IpNet>,
    active: Vec<Active>,
    offences: HashMap<(Kind, Target), u32>,
    /// Countries whose automatic restriction reached its maximum while the
    /// surge went on: alerted on until the surge ends.
    exhausted: HashSet<u16>,
    next_id: u64,
    /// The wall clock (UNIX ms) of a CLOCK_MONOTONIC instant, if given: a
    /// restriction's start is then fixed once, and the audit trail and the
    /// state database show the same one.
    wall: Option<fn(u64) -> i64>,
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
        Self {
            cfg,
            allow,
            active: Vec::new(),
            offences: HashMap::new(),
            exhausted: HashSet::new(),
            next_id: 1,
            wall: None,
        }
    }

    /// Fixes each new restriction's wall-clock start with `wall`.
    pub fn set_wall_clock(&mut self, wall: fn(u64) -> i64) {
        self.wall = Some(wall);
    }

    /// A reload: the durations, caps, dry-run and allowlist for decisions
    /// from now on (restrictions in force keep their end and mode).
    pub fn set_config(&mut self, cfg: PolicyConfig, allow: Vec<IpNet>) {
        self.cfg = cfg;
        self.allow = allow;
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Ids below `id` are taken (the state database never reuses one).
    pub fn set_next_id(&mut self, id: u64) {
        self.next_id = self.next_id.max(id);
    }

    /// Takes over the offence count of `kind` on `target` kept in the state
    /// database: a repeat offence after a restart still escalates.
    pub fn restore_offences(&mut self, kind: Kind, target: Target, n: u32) {
        let o = self.offences.entry((kind, target)).or_insert(0);
        *o = (*o).max(n);
    }

    /// Takes over a restriction kept in the state database, exactly as it
    /// was imposed.
    pub fn restore(&mut self, a: Active) {
        if self.active.iter().any(|x| x.kind == a.kind && x.target == a.target) {
            return;
        }
        let n = self.offences.entry((a.kind, a.target)).or_insert(0);
        *n = (*n).max(a.offence);
        self.next_id = self.next_id.max(a.id + 1);
        self.active.push(a);
    }

    pub fn active(&self) -> &[Active] {
        &self.active
    }

    /// A kernel report: `addr` crossed the threshold of event `kind` in its
    /// current window, as `evidence` says.
    pub fn on_event(
        &mut self,
        now_ns: u64,
        addr: IpAddr,
        event_kind: EventKind,
        evidence: Evidence,
    ) -> Vec<Decision> {
        let (mut kind, base, reason) = match event_kind {
            EventKind::AuthFailures => (Kind::AuthSuspend, self.cfg.auth_suspend, Reason::BruteForce),
            EventKind::IntlInvites => (Kind::IntlSuspend, self.cfg.intl_suspend, Reason::IntlSurge),
            // Country surges come through on_country_surge.
            EventKind::CountryInvites => return Vec::new(),
        };
        let mut target = Target::Source(IpNet::from(addr));
        // Surgical: at an address where other identities authenticate, the
        // failures of one (or a few) identities restrict only them; many
        // failing identities (spraying), or none working, the address.
        if let Some(a) = evidence.auth
            && a.other_ok
            && a.identity != 0
            && a.identities < self.cfg.spray_identities
        {
            kind = Kind::IdentitySuspend;
            target = Target::Identity(addr, a.identity);
        }
        self.restrict(now_ns, addr, kind, target, reason, base, evidence)
    }

    /// Where detection on the longer timescales, or a new-destination or
    /// new-prefix rule, reported something (see [`crate::detect`]).
    pub fn on_report(&mut self, now_ns: u64, r: &Report) -> Vec<Decision> {
        let evidence = Evidence {
            count: r.count,
            threshold: r.threshold,
            window: r.window,
            peacetime_milli: r.level.map(|l| (l * 1000.0).round() as u64),
            sources: matches!(r.subject, Subject::Country(_)).then_some(r.spread).flatten(),
            auth: None,
            scale: Some(r.scale as u8),
            // A source's sum judged from other nodes' counts has no one
            // destination.
            cc: (r.cc != 0).then_some(r.cc),
            high_risk: r.high_risk,
            addresses: matches!(r.subject, Subject::Identity(_)).then_some(r.spread).flatten(),
            prefix: r.prefix,
            strong: (r.rule == Rule::NewPrefix).then_some(r.strong),
            elsewhere: r.elsewhere.map(|(n, _)| n),
            nodes: r.elsewhere.map(|(_, nodes)| nodes),
        };
        let intl = self.cfg.intl_suspend;
        let source = Target::Source(IpNet::from(r.addr));
        let (kind, target, reason) = match (r.rule, r.subject) {
            (Rule::Surge, Subject::Country(cc)) => return self.on_country_surge(now_ns, cc, evidence),
            (Rule::Surge, Subject::Source(_)) => (Kind::IntlSuspend, source, Reason::IntlSurge),
            // One line's calls from many addresses: its international
            // calling, wherever it is used (counter-measure 5); it still
            // registers and calls at home.
            (Rule::Surge, Subject::Identity(tag)) => (
                Kind::IntlSuspend,
                Target::Identity(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), tag),
                Reason::IdentitySurge,
            ),
            (Rule::NewDestination, Subject::Source(_)) => (Kind::IntlSuspend, source, Reason::NewDestination),
            (Rule::NewDestination, Subject::Identity(tag)) => {
                (Kind::IntlSuspend, Target::Identity(r.addr, tag), Reason::NewDestination)
            }
            // Strong evidence (no customer known at that prefix): the
            // address's international calls; else the identity there.
            (Rule::NewPrefix, Subject::Identity(_)) if r.strong => {
                (Kind::IntlSuspend, source, Reason::NewPrefix)
            }
            (Rule::NewPrefix, Subject::Identity(tag)) => {
                (Kind::IdentitySuspend, Target::Identity(r.addr, tag), Reason::NewPrefix)
            }
            _ => return Vec::new(),
        };
        self.restrict(now_ns, r.addr, kind, target, reason, intl, evidence)
    }

    /// Restricts `target` (reported from `addr`) in the way `kind`, for
    /// `base` on a first offence, unless allowlisted or over the prefix
    /// cap; extends it if already in force.
    #[expect(clippy::too_many_arguments, reason = "one decision's facts")]
    fn restrict(
        &mut self,
        now_ns: u64,
        addr: IpAddr,
        kind: Kind,
        target: Target,
        reason: Reason,
        base: Duration,
        evidence: Evidence,
    ) -> Vec<Decision> {
        if self.allow.iter().any(|a| a.contains(&addr)) {
            return vec![Decision::Alert { kind, target, why: "allowlisted source", evidence }];
        }
        let max = self.cfg.max_restriction;
        if let Some(a) = self.active.iter_mut().find(|a| a.kind == kind && a.target == target) {
            // As long as its offence's duration from now (never its span so
            // far, which each extension would compound).
            let factor = 1u32.checked_shl(a.offence.saturating_sub(1)).unwrap_or(u32::MAX);
            let duration = nanos(base.saturating_mul(factor).min(max));
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
        let offence = self.offence(kind, target);
        let factor = 1u32.checked_shl(offence - 1).unwrap_or(u32::MAX);
        let duration = base.saturating_mul(factor).min(self.cfg.max_restriction);
        vec![Decision::Impose(self.push(kind, target, reason, evidence, now_ns, duration, offence))]
    }

    fn offence(&mut self, kind: Kind, target: Target) -> u32 {
        let n = self.offences.entry((kind, target)).or_insert(0);
        *n += 1;
        *n
    }

    /// Records a new automatic restriction in force.
    #[expect(clippy::too_many_arguments, reason = "one plain record")]
    fn push(
        &mut self,
        kind: Kind,
        target: Target,
        reason: Reason,
        evidence: Evidence,
        now_ns: u64,
        duration: Duration,
        offence: u32,
    ) -> Active {
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
            imposed_wall_ms: self.wall.map(|w| w(now_ns)),
        };
        self.next_id += 1;
        self.active.push(active.clone());
        active
    }

    /// A kernel report: international INVITEs to `cc` from all sources
    /// crossed the country's threshold, from `evidence.sources` distinct
    /// sources at least (the kernel reports only when there are at least
    /// `--country-min-sources`).
    pub fn on_country_surge(&mut self, now_ns: u64, cc: u16, evidence: Evidence) -> Vec<Decision> {
        let (kind, target) = (Kind::CountryRestrict, Target::Country(cc));
        let alert = |why| vec![Decision::Alert { kind, target, why, evidence }];
        if !self.cfg.country_restrict {
            return alert("country-restrict not enabled (--allow-country-restrict)");
        }
        let (step, max) = (nanos(self.cfg.country_restrict_for), nanos(self.cfg.country_restrict_max));
        if let Some(a) = self.active.iter_mut().find(|a| a.kind == kind && a.target == target) {
            if a.reason != Reason::CountrySurge {
                // An operator's restriction stays exactly as they set it.
                return Vec::new();
            }
            let cap = a.imposed_at_ns.saturating_add(max);
            let until = a.expires_at_ns.max(now_ns.saturating_add(step)).min(cap);
            if until == a.expires_at_ns {
                return Vec::new();
            }
            a.expires_at_ns = until;
            a.evidence = evidence;
            return vec![Decision::Extend(a.clone())];
        }
        if self.exhausted.contains(&cc) {
            return alert("country-restrict reached --country-restrict-max; an operator decides");
        }
        let offence = self.offence(kind, target);
        let duration = self.cfg.country_restrict_for.min(self.cfg.country_restrict_max);
        vec![Decision::Impose(self.push(
            kind,
            target,
            Reason::CountrySurge,
            evidence,
            now_ns,
            duration,
            offence,
        ))]
    }

    /// A window that began at `window_start_ns` passed with international
    /// INVITEs to `cc` below its threshold: an automatic restriction of it
    /// imposed before that window is lifted now.
    pub fn country_calm(&mut self, cc: u16, window_start_ns: u64) -> Vec<Decision> {
        self.exhausted.remove(&cc);
        let target = Target::Country(cc);
        let calm = |a: &Active| {
            a.target == target && a.reason == Reason::CountrySurge && a.imposed_at_ns <= window_start_ns
        };
        match self.active.iter().position(calm) {
            Some(i) => vec![Decision::Lift(self.active.remove(i), SURGE_ENDED)],
            None => Vec::new(),
        }
    }

    /// Restrictions whose time is up (the kernel already stopped applying
    /// them; this is for the audit trail and the maps' hygiene).
    pub fn expire(&mut self, now_ns: u64) -> Vec<Decision> {
        let (done, keep): (Vec<_>, Vec<_>) = self.active.drain(..).partition(|a| a.expires_at_ns <= now_ns);
        self.active = keep;
        let max = nanos(self.cfg.country_restrict_max);
        for a in &done {
            if let (Reason::CountrySurge, Target::Country(cc)) = (a.reason, a.target)
                && a.expires_at_ns.saturating_sub(a.imposed_at_ns) >= max
            {
                self.exhausted.insert(cc);
            }
        }
        done.into_iter().map(Decision::Expire).collect()
    }

    /// Takes over a restriction found in the kernel at start-up (restart),
    /// so that its expiry is audited too. `reason` is [`Reason::Adopted`] unless
    /// the kernel kept its origin ([`Reason::CountrySurge`]: the automatic rules
    /// go on applying to it, from its original start).
    pub fn adopt(
        &mut self,
        kind: Kind,
        target: Target,
        reason: Reason,
        imposed_at_ns: u64,
        expires_at_ns: u64,
    ) -> bool {
        if self.active.iter().any(|a| a.kind == kind && a.target == target) {
            // Restored from the state database, with its own origin.
            return false;
        }
        let evidence = Evidence { window: self.cfg.window, ..Evidence::default() };
        self.active.push(Active {
            id: self.next_id,
            kind,
            target,
            reason,
            note: None,
            evidence,
            imposed_at_ns,
            expires_at_ns,
            enforced: true,
            offence: 1,
            imposed_wall_ms: None,
        });
        *self.offences.entry((kind, target)).or_insert(0) += 1;
        self.next_id += 1;
        true
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
            // A line (an identity) everywhere: its international calls,
            // or all its credentialed requests.
            (Kind::IntlSuspend | Kind::IdentitySuspend, Target::Identity(addr, _))
                if addr.is_unspecified() => {}
            (_, Target::Identity(..)) => {
                return Err("an identity is restricted by hand in two ways: intl or auth".into());
            }
            (Kind::IdentitySuspend, _) => return Err("identity-suspend takes an identity".into()),
            (_, Target::Source(net)) => {
                if self.allow.iter().any(|a| a.contains(&net) || net.contains(a)) {
                    return Err(format!("{net} overlaps the allowlist, which wins over every restriction"));
                }
            }
        }
        let (max, flag) = match (kind, target) {
            (Kind::IntlSuspend, Target::Identity(..)) => {
                (self.cfg.max_line_suspension, "--max-line-suspension")
            }
            _ => (self.cfg.max_restriction, "--max-restriction"),
        };
        if duration.is_zero() || duration > max {
            return Err(format!(
                "the duration must be more than 0 and at most {flag} ({})",
                humantime::format_duration(max)
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
            reason: Reason::Operator,
            note,
            evidence: Evidence::default(),
            imposed_at_ns: now_ns,
            expires_at_ns: now_ns.saturating_add(nanos(duration)),
            enforced: !self.cfg.dry_run,
            offence: 1,
            imposed_wall_ms: self.wall.map(|w| w(now_ns)),
        };
        self.next_id += 1;
        self.active.push(active.clone());
        Ok(Decision::Impose(active))
    }

    /// Whether this node's allowlist covers `target` (it wins over the
    /// restrictions of other nodes too).
    pub fn allowlisted(&self, target: &Target) -> bool {
        match target {
            Target::Source(net) => self.allow.iter().any(|a| a.contains(net) || net.contains(a)),
            Target::Identity(addr, _) if !addr.is_unspecified() => {
                self.allow.iter().any(|a| a.contains(addr))
            }
            _ => false,
        }
    }

    /// Takes over a restriction another node decided (clustering): new
    /// here ([`Decision::Impose`]), or moved to its later expiry
    /// ([`Decision::Extend`]); with `exact`, to its expiry even if earlier
    /// (ours lost the race for the record). Not enforced here in dry-run,
    /// on an allowlisted target, or when the deciding node was in dry-run.
    pub fn adopt_remote(&mut self, r: Adopted, exact: bool) -> Option<Decision> {
        if let Some(a) = self.active.iter_mut().find(|a| a.kind == r.kind && a.target == r.target) {
            // The winner's record is always taken (and audited) as it is.
            if !exact && r.expires_at_ns <= a.expires_at_ns {
                return None;
            }
            a.expires_at_ns = r.expires_at_ns;
            if exact {
                (a.reason, a.evidence, a.imposed_wall_ms) = (r.reason, r.evidence, Some(r.imposed_wall_ms));
            }
            return Some(Decision::Extend(a.clone()));
        }
        let enforced = r.enforce && !self.cfg.dry_run && !self.allowlisted(&r.target);
        let active = Active {
            id: self.next_id,
            kind: r.kind,
            target: r.target,
            reason: r.reason,
            note: r.note,
            evidence: r.evidence,
            imposed_at_ns: r.imposed_at_ns,
            expires_at_ns: r.expires_at_ns,
            enforced,
            offence: 1,
            imposed_wall_ms: Some(r.imposed_wall_ms),
        };
        self.next_id += 1;
        self.active.push(active.clone());
        Some(Decision::Impose(active))
    }

    /// Lifts `kind` on `target` if in force (it was lifted elsewhere).
    pub fn lift_target(&mut self, kind: Kind, target: Target, by: &'static str) -> Option<Decision> {
        let i = self.active.iter().position(|a| a.kind == kind && a.target == target)?;
        Some(Decision::Lift(self.active.remove(i), by))
    }

    /// Lifts the restriction `id` now.
    pub fn lift(&mut self, id: u64) -> Result<Decision, String> {
        let i = self
            .active
            .iter()
            .position(|a| a.id == id)
            .ok_or_else(|| format!("no restriction {id} in force"))?;
        Ok(Decision::Lift(self.active.remove(i), OPERATOR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    pub(super) fn cfg() -> PolicyConfig {
        PolicyConfig {
            auth_suspend: Duration::from_secs(600),
            intl_suspend: Duration::from_secs(1800),
            max_restriction: Duration::from_secs(3600),
            max_line_suspension: Duration::from_secs(365 * 86_400),
            prefix_cap: 3,
            dry_run: false,
            window: Duration::from_secs(60),
            country_restrict: true,
            country_restrict_for: Duration::from_secs(900),
            country_restrict_max: Duration::from_secs(3600),
            spray_identities: 3,
        }
    }

    /// An authentication-failure report from `addr`: identity `tag` crossed,
    /// `identities` failing in the window, another identity working there
    /// (`other_ok`).
    fn auth_report(e: &mut Engine, addr: IpAddr, tag: u64, identities: u16, other_ok: bool) -> Vec<Decision> {
        let auth = Some(AuthEvidence { identity: tag, unbound: 0, identities, other_ok });
        let evidence = Evidence {
            count: 10,
            threshold: 10,
            window: Duration::from_secs(60),
            auth,
            ..Evidence::default()
        };
        e.on_event(0, addr, EventKind::AuthFailures, evidence)
    }

    #[test]
    fn failures_of_one_identity_where_others_work_suspend_only_that_identity() {
        let mut e = Engine::new(cfg(), vec![]);
        let office: IpAddr = "198.51.100.200".parse().unwrap();
        let d = auth_report(&mut e, office, 7, 1, true);
        assert!(
            matches!(&d[..], [Decision::Impose(a)] if a.kind == Kind::IdentitySuspend && a.target == Target::Identity(office, 7)),
            "{d:?}"
        );
        // A second misconfigured phone: its own suspension.
        let d = auth_report(&mut e, office, 9, 2, true);
        assert!(matches!(&d[..], [Decision::Impose(a)] if a.target == Target::Identity(office, 9)), "{d:?}");
        // Spraying (three identities failing): the address as a whole.
        let d = auth_report(&mut e, office, 11, 3, true);
        assert!(
            matches!(&d[..], [Decision::Impose(a)] if a.kind == Kind::AuthSuspend && a.target == Target::Source(IpNet::from(office))),
            "{d:?}"
        );
        // Where no other identity works, the address, as before.
        let lone: IpAddr = "203.0.113.10".parse().unwrap();
        let d = auth_report(&mut e, lone, 7, 1, false);
        assert!(matches!(&d[..], [Decision::Impose(a)] if a.kind == Kind::AuthSuspend), "{d:?}");
        // The audit target names the address and the tag, never a name.
        assert_eq!(Target::Identity(office, 7).to_string(), "198.51.100.200/32 identity 0000000000000007");
    }

    /// A kernel report with the ceiling thresholds (10 and 30) in force.
    fn on(e: &mut Engine, now: u64, addr: IpAddr, kind: EventKind, count: u32) -> Vec<Decision> {
        let threshold = if kind == EventKind::AuthFailures { 10 } else { 30 };
        let evidence = Evidence { count, threshold, window: Duration::from_secs(60), ..Evidence::default() };
        e.on_event(now, addr, kind, evidence)
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
        let a = imposed(&on(&mut e, 0, ip("203.0.113.10"), EventKind::AuthFailures, 12)).clone();
        assert_eq!(
            (a.kind, a.reason, a.offence, a.enforced),
            (Kind::AuthSuspend, Reason::BruteForce, 1, true)
        );
        assert_eq!(a.expires_at_ns, 600 * S);
        assert_eq!((a.evidence.count, a.evidence.threshold), (12, 10));
        // Nothing lapses early; then it lapses exactly on time.
        assert!(e.expire(599 * S).is_empty());
        assert!(matches!(e.expire(600 * S).as_slice(), [Decision::Expire(x)] if x.id == a.id));
        assert!(e.active().is_empty());
        // Each repeat offence doubles the duration, until the 1 h cap.
        for (offence, secs) in [(2, 1200), (3, 2400), (4, 3600), (5, 3600)] {
            let b =
                imposed(&on(&mut e, 10_000 * S * offence, ip("203.0.113.10"), EventKind::AuthFailures, 15))
                    .clone();
            assert_eq!((b.offence, b.expires_at_ns - b.imposed_at_ns), (offence as u32, secs * S));
            e.expire(u64::MAX);
        }
    }

    #[test]
    fn a_surge_that_goes_on_extends_the_suspension() {
        let mut e = Engine::new(cfg(), vec![]);
        let a = imposed(&on(&mut e, 0, ip("198.51.100.10"), EventKind::IntlInvites, 31)).clone();
        assert_eq!((a.kind, a.expires_at_ns), (Kind::IntlSuspend, 1800 * S));
        match on(&mut e, 1000 * S, ip("198.51.100.10"), EventKind::IntlInvites, 40).as_slice() {
            [Decision::Extend(x)] => {
                assert_eq!((x.id, x.expires_at_ns, x.evidence.count), (a.id, 2800 * S, 40))
            }
            other => panic!("{other:?}"),
        }
        // Each extension is the offence's duration from now, not the span
        // so far (which would compound).
        match on(&mut e, 1001 * S, ip("198.51.100.10"), EventKind::IntlInvites, 41).as_slice() {
            [Decision::Extend(x)] => assert_eq!(x.expires_at_ns, 2801 * S),
            other => panic!("{other:?}"),
        }
        assert!(e.expire(2799 * S).is_empty());
        // Both kinds are independent.
        imposed(&on(&mut e, 1000 * S, ip("198.51.100.10"), EventKind::AuthFailures, 11));
        assert_eq!(e.active().len(), 2);
    }

    #[test]
    fn the_allowlist_wins_and_the_prefix_cap_limits_spoofed_damage() {
        let mut e = Engine::new(cfg(), vec!["203.0.113.20/32".parse().unwrap()]);
        assert!(matches!(
            on(&mut e, 0, ip("203.0.113.20"), EventKind::AuthFailures, 99).as_slice(),
            [Decision::Alert { why: "allowlisted source", .. }]
        ));
        for i in 1..=3 {
            imposed(&on(&mut e, 0, ip(&format!("198.51.100.{i}")), EventKind::AuthFailures, 10));
        }
        assert!(matches!(
            on(&mut e, 0, ip("198.51.100.4"), EventKind::AuthFailures, 10).as_slice(),
            [Decision::Alert { why: "prefix cap reached", .. }]
        ));
        // Another /24 and another kind are not affected.
        imposed(&on(&mut e, 0, ip("192.0.2.9"), EventKind::AuthFailures, 10));
        imposed(&on(&mut e, 0, ip("198.51.100.4"), EventKind::IntlInvites, 30));
        // IPv6 neighbourhoods are /48s.
        for i in 1..=3 {
            imposed(&on(&mut e, 0, ip(&format!("2001:db8:7:{i}::1")), EventKind::AuthFailures, 10));
        }
        assert!(matches!(
            on(&mut e, 0, ip("2001:db8:7:ff::1"), EventKind::AuthFailures, 10).as_slice(),
            [Decision::Alert { .. }]
        ));
        imposed(&on(&mut e, 0, ip("2001:db8:8::1"), EventKind::AuthFailures, 10));
    }

    #[test]
    fn dry_run_decides_everything_and_enforces_nothing() {
        let mut e = Engine::new(PolicyConfig { dry_run: true, ..cfg() }, vec![]);
        let a = imposed(&on(&mut e, 0, ip("203.0.113.10"), EventKind::AuthFailures, 10)).clone();
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
        assert_eq!(
            (a.reason, a.note.as_deref(), a.expires_at_ns),
            (Reason::Operator, Some("ticket 42"), 3600 * S)
        );
        let c = e.impose_manual(0, Kind::CountryRestrict, Target::Country(232), hour, None).unwrap();
        assert!(matches!(c, Decision::Impose(ref x) if x.target == Target::Country(232)));
        // A line's international calling, for the holder's 30 days (over
        // --max-restriction, within --max-line-suspension).
        let line = Target::Identity(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0xab);
        let month = Duration::from_secs(30 * 86_400);
        let l = e.impose_manual(0, Kind::IntlSuspend, line, month, None).unwrap();
        assert!(
            matches!(l, Decision::Impose(ref x) if x.target == line && x.expires_at_ns == 30 * 86_400 * S)
        );
        let at_one = Target::Identity(ip("192.0.2.1"), 0xab);
        // Refusals, each with a reason the operator can act on.
        for (kind, target, d) in [
            (Kind::IntlSuspend, line, hour),      // already in force
            (Kind::IdentitySuspend, line, month), // over --max-restriction
            (
                Kind::IntlSuspend,
                Target::Identity(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 1),
                Duration::from_secs(366 * 86_400),
            ),
            (Kind::IntlSuspend, at_one, hour), // by hand: everywhere only
            (Kind::Block, line, hour),         // kind does not fit
            (Kind::IdentitySuspend, src("192.0.2.1/32"), hour), // kind does not fit
            (Kind::Block, src("203.0.113.0/24"), hour), // contains an allowlisted source
            (Kind::AuthSuspend, Target::Country(232), hour), // kind does not fit
            (Kind::CountryRestrict, src("192.0.2.1/32"), hour), // kind does not fit
            (Kind::IntlSuspend, src("192.0.2.1/32"), Duration::ZERO),
            (Kind::IntlSuspend, src("192.0.2.1/32"), Duration::from_secs(3601)), // over the cap
            (Kind::Block, src("198.51.100.0/24"), hour),                         // already in force
        ] {
            assert!(e.impose_manual(0, kind, target, d, None).is_err(), "{kind:?} {target} {d:?}");
        }
        assert!(matches!(e.lift(a.id), Ok(Decision::Lift(x, OPERATOR)) if x.id == a.id));
        assert!(e.lift(a.id).is_err(), "only once");
        assert_eq!(e.active().len(), 2);
    }

    /// A detector report with the given rule and subject, from `addr`.
    fn report(rule: Rule, subject: Subject, addr: IpAddr, strong: bool) -> Report {
        Report {
            rule,
            subject,
            addr,
            scale: 1,
            window: Duration::from_secs(3600),
            count: 8,
            threshold: 8,
            level: None,
            cc: 232,
            high_risk: true,
            spread: Some(12),
            prefix: Some("203.0.113.0/24".parse().unwrap()),
            strong,
            elsewhere: None,
        }
    }

    /// What each of the detector's rules restricts, and the evidence kept.
    #[test]
    fn reports_restrict_what_their_rule_says() {
        let mut e = Engine::new(cfg(), vec![]);
        let (line, office, thief) = (ip("198.51.100.40"), ip("198.51.100.41"), ip("203.0.113.66"));
        let every = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        let cases = [
            (
                report(Rule::Surge, Subject::Source(line), line, false),
                Kind::IntlSuspend,
                Target::Source(line.into()),
                Reason::IntlSurge,
            ),
            (
                report(Rule::NewDestination, Subject::Source(office), office, false),
                Kind::IntlSuspend,
                Target::Source(office.into()),
                Reason::NewDestination,
            ),
            (
                report(Rule::NewDestination, Subject::Identity(7), thief, false),
                Kind::IntlSuspend,
                Target::Identity(thief, 7),
                Reason::NewDestination,
            ),
            // Strong evidence: the address; else the identity there.
            (
                report(Rule::NewPrefix, Subject::Identity(8), thief, true),
                Kind::IntlSuspend,
                Target::Source(thief.into()),
                Reason::NewPrefix,
            ),
            (
                report(Rule::NewPrefix, Subject::Identity(9), ip("192.0.2.9"), false),
                Kind::IdentitySuspend,
                Target::Identity(ip("192.0.2.9"), 9),
                Reason::NewPrefix,
            ),
            // One line from many addresses: its international calls,
            // wherever it is used.
            (
                report(Rule::Surge, Subject::Identity(10), thief, false),
                Kind::IntlSuspend,
                Target::Identity(every, 10),
                Reason::IdentitySurge,
            ),
        ];
        for (r, kind, target, reason) in cases {
            let a = imposed(&e.on_report(0, &r)).clone();
            assert_eq!((a.kind, a.target, a.reason), (kind, target, reason), "{r:?}");
            assert_eq!(a.expires_at_ns, 1800 * S, "for --intl-suspend");
            let ev = a.evidence;
            assert_eq!(
                (ev.count, ev.threshold, ev.scale, ev.cc, ev.high_risk),
                (8, 8, Some(1), Some(232), true)
            );
            assert_eq!(ev.strong.is_some(), r.rule == Rule::NewPrefix);
            assert_eq!(ev.addresses.is_some(), matches!(r.subject, Subject::Identity(_)));
        }
        assert_eq!(Target::Identity(every, 10).to_string(), "identity 000000000000000a everywhere");
        // A country's longer-scale surge goes by the country rules.
        let d = e.on_report(0, &report(Rule::Surge, Subject::Country(232), line, false));
        assert!(
            matches!(&d[..], [Decision::Impose(a)] if a.target == Target::Country(232) && a.evidence.sources == Some(12)),
            "{d:?}"
        );
        // A report on a restriction in force extends it; the allowlist wins.
        let d = e.on_report(60 * S, &report(Rule::Surge, Subject::Source(line), line, false));
        assert!(matches!(&d[..], [Decision::Extend(a)] if a.expires_at_ns == 1860 * S), "{d:?}");
        let mut allowing = Engine::new(cfg(), vec!["203.0.113.0/24".parse().unwrap()]);
        let d = allowing.on_report(0, &report(Rule::Surge, Subject::Identity(11), thief, false));
        assert!(matches!(&d[..], [Decision::Alert { why: "allowlisted source", .. }]), "{d:?}");
    }

    #[test]
    fn unknown_event_kinds_are_ignored() {
        // An unknown code never becomes an event kind...
        assert_eq!(EventKind::from_code(1 << 7), None);
        // ...and a country report is not a source's.
        let mut e = Engine::new(cfg(), vec![]);
        assert!(on(&mut e, 0, ip("203.0.113.10"), EventKind::CountryInvites, 10).is_empty());
    }

    #[test]
    fn adopted_restrictions_expire_and_count_as_offences() {
        let mut e = Engine::new(cfg(), vec![]);
        let target = Target::Source("203.0.113.10/32".parse().unwrap());
        assert!(e.adopt(Kind::AuthSuspend, target, Reason::Adopted, 0, 50 * S));
        assert!(!e.adopt(Kind::AuthSuspend, target, Reason::Adopted, 0, 50 * S), "once");
        assert!(matches!(e.expire(50 * S).as_slice(), [Decision::Expire(a)] if a.reason == Reason::Adopted));
        let again = imposed(&on(&mut e, 60 * S, ip("203.0.113.10"), EventKind::AuthFailures, 10)).clone();
        assert_eq!(again.offence, 2);
    }
}

#[cfg(test)]
mod country_tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// The engine tests' configuration (15 min steps, 1 h country cap),
    /// with a day's --max-restriction so that only the country cap bounds.
    fn cfg(opted_in: bool) -> PolicyConfig {
        PolicyConfig {
            max_restriction: Duration::from_secs(86_400),
            max_line_suspension: Duration::from_secs(365 * 86_400),
            country_restrict: opted_in,
            ..super::tests::cfg()
        }
    }

    fn surge(count: u32, sources: u32) -> Evidence {
        Evidence {
            count,
            threshold: 100,
            window: Duration::from_secs(60),
            sources: Some(sources),
            ..Evidence::default()
        }
    }

    #[test]
    fn without_the_opt_in_a_country_surge_is_only_alerted_on() {
        let mut e = Engine::new(cfg(false), vec![]);
        assert!(matches!(
            e.on_country_surge(0, 232, surge(150, 12)).as_slice(),
            [Decision::Alert { kind: Kind::CountryRestrict, target: Target::Country(232), .. }]
        ));
        assert!(e.active().is_empty());
    }

    #[test]
    fn a_country_surge_is_restricted_extended_and_lifted_when_it_ends() {
        let mut e = Engine::new(cfg(true), vec![]);
        let a = match e.on_country_surge(10 * S, 232, surge(150, 12)).as_slice() {
            [Decision::Impose(a)] => a.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (a.reason, a.target, a.expires_at_ns),
            (Reason::CountrySurge, Target::Country(232), 910 * S)
        );
        assert_eq!(a.evidence.sources, Some(12));
        // Another report a window later extends it, by the step.
        match e.on_country_surge(60 * S, 232, surge(140, 15)).as_slice() {
            [Decision::Extend(x)] => assert_eq!((x.id, x.expires_at_ns), (a.id, 960 * S)),
            other => panic!("{other:?}"),
        }
        // Other countries are not affected.
        assert!(e.country_calm(1, 60 * S).is_empty());
        // A window that began before the restriction proves nothing.
        assert!(e.country_calm(232, 0).is_empty() && e.country_calm(232, 5 * S).is_empty());
        assert_eq!(e.active().len(), 1);
        // A calm window after it lifts it at once, audited as the surge's end.
        match e.country_calm(232, 120 * S).as_slice() {
            [Decision::Lift(x, SURGE_ENDED)] => assert_eq!(x.id, a.id),
            other => panic!("{other:?}"),
        }
        assert!(e.active().is_empty());
    }

    #[test]
    fn an_automatic_country_restriction_never_outlasts_its_maximum() {
        let mut e = Engine::new(cfg(true), vec![]);
        e.on_country_surge(0, 232, surge(150, 12));
        // The surge goes on for two hours: extensions stop at the 1 h cap.
        let mut last = 0;
        for minute in 1..=120 {
            for d in e.on_country_surge(minute * 60 * S, 232, surge(150, 12)) {
                if let Decision::Extend(x) = d {
                    assert!(x.expires_at_ns <= 3600 * S);
                    last = x.expires_at_ns;
                }
            }
            for d in e.expire(minute * 60 * S) {
                assert!(matches!(d, Decision::Expire(ref x) if x.expires_at_ns == 3600 * S), "{d:?}");
            }
        }
        assert_eq!(last, 3600 * S);
        assert!(e.active().is_empty());
        // Still surging: only an alert; an operator decides.
        assert!(matches!(
            e.on_country_surge(7300 * S, 232, surge(150, 12)).as_slice(),
            [Decision::Alert { why, .. }] if why.contains("--country-restrict-max")
        ));
        // Once the surge has ended, a new one may be restricted again.
        assert!(e.country_calm(232, 7900 * S).is_empty());
        assert!(
            matches!(e.on_country_surge(8000 * S, 232, surge(150, 12)).as_slice(), [Decision::Impose(x)] if x.offence == 2)
        );
    }

    #[test]
    fn an_operators_country_restriction_is_left_as_set() {
        let mut e = Engine::new(cfg(true), vec![]);
        let hour = Duration::from_secs(3600);
        e.impose_manual(0, Kind::CountryRestrict, Target::Country(232), hour, None).unwrap();
        assert!(e.on_country_surge(60 * S, 232, surge(150, 12)).is_empty());
        assert!(e.country_calm(232, 120 * S).is_empty(), "not lifted by the automatic rule");
        assert_eq!(e.active()[0].expires_at_ns, 3600 * S);
    }

    #[test]
    fn dry_run_restricts_no_country() {
        let mut e = Engine::new(PolicyConfig { dry_run: true, ..cfg(true) }, vec![]);
        assert!(
            matches!(e.on_country_surge(0, 232, surge(150, 12)).as_slice(), [Decision::Impose(x)] if !x.enforced)
        );
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn adopted(target: &str, expires_at_ns: u64) -> Adopted {
        Adopted {
            kind: Kind::AuthSuspend,
            target: Target::Source(target.parse().unwrap()),
            reason: Reason::BruteForce,
            evidence: Evidence::default(),
            note: None,
            imposed_at_ns: 0,
            expires_at_ns,
            imposed_wall_ms: 1_000,
            enforce: true,
        }
    }

    #[test]
    fn another_nodes_restriction_is_adopted_then_only_moved_later() {
        let mut e = Engine::new(super::tests::cfg(), vec![]);
        let d = e.adopt_remote(adopted("198.51.100.7/32", 60 * S), false);
        assert!(
            matches!(&d, Some(Decision::Impose(a)) if a.enforced && a.reason == Reason::BruteForce),
            "{d:?}"
        );
        // An older version (earlier expiry) changes nothing.
        assert_eq!(e.adopt_remote(adopted("198.51.100.7/32", 30 * S), false), None);
        let d = e.adopt_remote(adopted("198.51.100.7/32", 90 * S), false);
        assert!(matches!(&d, Some(Decision::Extend(a)) if a.expires_at_ns == 90 * S), "{d:?}");
        // The winner of a race: its record, even if it ends sooner.
        let d = e.adopt_remote(adopted("198.51.100.7/32", 45 * S), true);
        assert!(matches!(&d, Some(Decision::Extend(a)) if a.expires_at_ns == 45 * S), "{d:?}");
        assert_eq!(e.active().len(), 1);
        let d =
            e.lift_target(Kind::AuthSuspend, Target::Source("198.51.100.7/32".parse().unwrap()), "cluster");
        assert!(matches!(d, Some(Decision::Lift(_, "cluster"))));
        assert!(e.active().is_empty());
    }

    #[test]
    fn the_local_allowlist_and_dry_run_win_over_adopted_restrictions() {
        let mut e = Engine::new(super::tests::cfg(), vec!["198.51.100.0/24".parse().unwrap()]);
        let d = e.adopt_remote(adopted("198.51.100.7/32", 60 * S), false);
        assert!(matches!(&d, Some(Decision::Impose(a)) if !a.enforced), "{d:?}");
        let mut r = adopted("203.0.113.9/32", 60 * S);
        r.enforce = false;
        assert!(matches!(e.adopt_remote(r, false), Some(Decision::Impose(a)) if !a.enforced));
        let mut cfg = super::tests::cfg();
        cfg.dry_run = true;
        let mut e = Engine::new(cfg, vec![]);
        assert!(
            matches!(e.adopt_remote(adopted("203.0.113.9/32", 60 * S), false), Some(Decision::Impose(a)) if !a.enforced)
        );
    }
}
