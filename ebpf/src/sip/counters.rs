//! The SIP counters the count stage updates: per message kind
//! ([`SIP_STATS`]), per source ([`SOURCES`]), per destination country, and
//! the threshold events they raise. Counters are updated with atomic adds:
//! the same source can be seen on several CPUs at once.

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;
use tollgate_common::{
    AddrKey, CALL_BLOCKED, CALL_COPIES, CALL_LIFETIME_NS, CALL_RETRIED, CallKey, CallSeen, Config,
    EVENT_AUTH_FAILURES, EVENT_AUTH_OK, EVENT_CALL, EVENT_COUNTRY_INVITES, EVENT_FLAG_IDENTIFIED,
    EVENT_FLAG_OTHER_OK, EVENT_INTL_INVITES, EVENT_SEEN, IPPROTO_TCP, NonceKey, SipContext, SourceStats,
    TXN_BOUND, TXN_LIFETIME_NS, ThresholdEvent, Txn, TxnKey,
    hash::identity_tag_window,
    number::class,
    sip::{SipSummary, method},
    sip_stat, source_bucket, sources_at_least,
};

use super::Window;
use crate::maps::{
    CALL_EVENTS, CALLS, CHALLENGED, CONFIG, COUNTRY_BASELINE, COUNTRY_BLOCKED, COUNTRY_INVITES,
    COUNTRY_WINDOW, EVENTS, INTL_BASELINE, NONCES, SIP_STATS, SOURCES, TRANSACTIONS,
};

/// Counts a request against its sender. A request carrying credentials is
/// remembered until its answer (transaction pairing), with whether its
/// nonce was issued to this sender (nonce binding) and its identity tag.
#[inline(always)]
pub(super) fn request(sc: &SipContext, s: &SipSummary, tag: u64, class: u8, cc: u16, cfg: &Config) {
    let src = &sc.src;
    stat(sip_stat::REQUEST_BASE + s.method as u32);
    let now = sc.now_ns;
    let Some(e) = source(src, now, cfg) else { return };
    if s.has_auth && s.call_id != 0 && s.cseq != 0 {
        remember(sc, s, tag, cfg, now);
        // SAFETY: e points into a live map value (from `source`); its
        // fields are naturally aligned (repr(C)).
        unsafe { add64(&raw mut (*e).attempts) };
    }
    let counted = match s.method {
        method::REGISTER => {
            if s.has_auth {
                stat(sip_stat::REGISTER_WITH_AUTH);
                // SAFETY: as above.
                unsafe { add64(&raw mut (*e).register_auth) };
            } else {
                // SAFETY: as above.
                unsafe { add64(&raw mut (*e).register_noauth) };
            }
            true
        }
        method::INVITE => {
            stat(sip_stat::INVITE_CLASS_BASE + class as u32);
            // SAFETY: as above.
            unsafe { add64(&raw mut (*e).invites) };
            if class == class::INTERNATIONAL && new_call(sc, s, tag, cc, now) {
                // SAFETY: as above.
                unsafe {
                    add64(&raw mut (*e).intl_invites);
                    add32(&raw mut (*e).win_intl_invites);
                }
                if let Some(slot) = COUNTRY_INVITES.get_ptr_mut(cc as u32) {
                    // SAFETY: per-CPU slot from a successful lookup.
                    unsafe { *slot += 1 };
                }
                country_window(src, cc, cfg, now);
            } else if class == class::EMERGENCY {
                // SAFETY: as above.
                unsafe { add64(&raw mut (*e).emergency_invites) };
            }
            true
        }
        _ => false,
    };
    // SAFETY: e points into a live map value (from `source`); no other
    // reference to it is held here.
    let st = unsafe { &mut *e };
    // After the counts: a source's first INVITE makes it a customer's.
    seen(st, src, now);
    if counted {
        check_thresholds(st, src, cfg, now, None);
    }
}

/// Reports a customer's source (one that sent an INVITE, or where an
/// identity authenticated: the agent's own test) on [`CALL_EVENTS`] once
/// per window, with its first sighting here, so the agent learns sources'
/// histories from what changed rather than by reading every tracked
/// source. Other sources (a spoofed flood's) cost the agent nothing. Plain
/// stores, as in `source`: at worst two CPUs both report.
#[inline(always)]
fn seen(st: &mut SourceStats, addr: &AddrKey, now: u64) {
    if st.win_events & EVENT_SEEN != 0 || (st.invites == 0 && st.ok_tag[0] == 0) {
        return;
    }
    st.win_events |= EVENT_SEEN;
    let event = ThresholdEvent {
        addr: *addr,
        kind: EVENT_SEEN,
        window_start_ns: st.first_seen_ns,
        at_ns: now,
        ..ThresholdEvent::default()
    };
    if CALL_EVENTS.output::<ThresholdEvent>(&event, 0).is_err() {
        stat(sip_stat::CALL_EVENTS_LOST);
    }
}

/// An international INVITE to `cc` was dropped: its call counts once in
/// COUNTRY_BLOCKED, however many of its copies (and its retry) are
/// dropped. Without a Call-ID (or once its call is forgotten), every drop
/// counts.
#[inline(always)]
pub(crate) fn blocked(sc: &SipContext, s: &SipSummary, cc: u16) {
    if s.call_id != 0
        && let Some(c) = CALLS.get_ptr_mut(&CallKey { addr: sc.src, call_id: s.call_id })
    {
        // SAFETY: c points into a live map value; a race at worst counts
        // the call twice.
        let c = unsafe { &mut *c };
        if c.flags & CALL_BLOCKED != 0 {
            return;
        }
        c.flags |= CALL_BLOCKED;
    }
    if let Some(slot) = COUNTRY_BLOCKED.get_ptr_mut(cc as u32) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *slot += 1 };
    }
}

/// Whether an international INVITE is a new call attempt, to count: not a
/// copy of one counted within SIP's Timer B (same Call-ID, CSeq and
/// number, at most [`CALL_COPIES`] in all) nor its one authentication
/// retry (CSeq + 1). A new attempt, and the identity a retry reveals, are
/// reported on [`CALL_EVENTS`]. Without a Call-ID, every INVITE counts.
#[inline(always)]
fn new_call(sc: &SipContext, s: &SipSummary, tag: u64, cc: u16, now: u64) -> bool {
    let number = s.number.value;
    if s.call_id != 0 {
        let key = CallKey { addr: sc.src, call_id: s.call_id };
        if let Some(c) = CALLS.get_ptr_mut(&key) {
            // SAFETY: c points into a live map value; plain stores race
            // benignly (at worst a copy is counted).
            let c = unsafe { &mut *c };
            if now.wrapping_sub(c.at_ns) < CALL_LIFETIME_NS && c.number == number {
                let copies = c.flags >> 8;
                let retried = c.flags & CALL_RETRIED != 0;
                let copy = s.cseq == c.cseq || (retried && s.cseq.wrapping_add(1) == c.cseq);
                if copy && copies + 1 < CALL_COPIES {
                    c.flags += 1 << 8;
                    stat(sip_stat::INTL_REPEATS);
                    return false;
                }
                if !retried && s.cseq == c.cseq.wrapping_add(1) {
                    c.flags |= CALL_RETRIED;
                    c.cseq = s.cseq;
                    if tag != 0 && c.tag == 0 {
                        c.tag = tag;
                        call_event(&sc.src, EVENT_CALL, tag, cc, EVENT_FLAG_IDENTIFIED, now);
                    }
                    stat(sip_stat::INTL_REPEATS);
                    return false;
                }
            }
        }
        let seen = CallSeen { at_ns: now, tag, number, cseq: s.cseq, flags: 0 };
        let _ = CALLS.insert(&key, &seen, 0);
    }
    stat(sip_stat::INTL_CALLS);
    call_event(&sc.src, EVENT_CALL, tag, cc, 0, now);
    true
}

/// Reports a call attempt or an authentication on [`CALL_EVENTS`].
#[inline(always)]
fn call_event(addr: &AddrKey, kind: u32, tag: u64, cc: u16, flags: u16, now: u64) {
    let event = ThresholdEvent { addr: *addr, kind, at_ns: now, cc, tag, flags, ..ThresholdEvent::default() };
    if CALL_EVENTS.output::<ThresholdEvent>(&event, 0).is_err() {
        stat(sip_stat::CALL_EVENTS_LOST);
    }
}

/// Whether `addr` was challenged within the nonce horizon (see
/// [`CHALLENGED`]). Without a configuration, it is taken as challenged.
#[inline(always)]
pub(crate) fn challenged(addr: &AddrKey, now: u64) -> bool {
    // The configuration first, then the address: the other order (as in
    // `within_horizon`) costs the parse stage 60% more verifier
    // instructions on Linux 6.1 (197k against 315k).
    let Some(cfg) = CONFIG.get(0) else { return true };
    let horizon = cfg.nonce_horizon_s as u64 * 1_000_000_000;
    // SAFETY: a value from a successful lookup, read at once.
    CHALLENGED.get_ptr(addr).is_some_and(|t| now.wrapping_sub(unsafe { *t }) < horizon)
}

/// Whether `then` is within the nonce horizon of `now` (without a
/// configuration: yes).
#[inline(always)]
pub(crate) fn within_horizon(then: u64, now: u64) -> bool {
    let Some(cfg) = CONFIG.get(0) else { return true };
    now.wrapping_sub(then) < cfg.nonce_horizon_s as u64 * 1_000_000_000
}

/// Notes that `addr` was challenged now (see [`CHALLENGED`]).
#[inline(always)]
pub(crate) fn mark_challenged(addr: &AddrKey, now: u64) {
    let _ = CHALLENGED.insert(addr, &now, 0);
}

/// The identity tag of a message's credentials (0: none).
#[inline(always)]
pub(super) fn identity(s: &SipSummary, window: &Window, cfg: &Config) -> u64 {
    let u = s.username;
    if !s.has_auth || u.end <= u.start {
        return 0;
    }
    identity_tag_window(&cfg.identity_key, window, u.start as usize, (u.end - u.start) as usize).unwrap_or(0)
}

/// The transaction of a message (as its response names it).
#[inline(always)]
fn txn_key(s: &SipSummary, method: u8) -> TxnKey {
    TxnKey { call_id: s.call_id, cseq: s.cseq, method: method as u32 }
}

#[inline(always)]
fn same_addr(a: &AddrKey, b: &AddrKey) -> bool {
    let w = |k: &AddrKey, i: usize| {
        u64::from_le_bytes([k[i], k[i + 1], k[i + 2], k[i + 3], k[i + 4], k[i + 5], k[i + 6], k[i + 7]])
    };
    w(a, 0) == w(b, 0) && w(a, 8) == w(b, 8)
}

/// Remembers a credentialed request until its answer.
#[inline(always)]
fn remember(sc: &SipContext, s: &SipSummary, tag: u64, cfg: &Config, now: u64) {
    // Over TCP the handshake already proved the address; over UDP the
    // nonce must be one the registrar sent to this address, recently.
    let horizon = cfg.nonce_horizon_s as u64 * 1_000_000_000;
    let issued = s.auth_nonce != 0
        && NONCES
            // SAFETY: a value from a successful lookup, read at once.
            .get_ptr(&NonceKey { addr: sc.src, nonce: s.auth_nonce })
            .is_some_and(|t| now.wrapping_sub(unsafe { *t }) < horizon);
    let bound = sc.proto == IPPROTO_TCP || issued;
    stat(if bound { sip_stat::ATTEMPT_BOUND } else { sip_stat::ATTEMPT_UNBOUND });
    let txn = Txn { client: sc.src, tag, at_ns: now, flags: if bound { TXN_BOUND } else { 0 }, _reserved: 0 };
    let _ = TRANSACTIONS.insert(&txn_key(s, s.method), &txn, 0);
}

/// What a final answer to a credentialed request says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Failure,
    Stale,
    Success,
    Other,
}

/// Counts a response against the client it is sent to. A challenge's
/// nonce is remembered as issued to that client; a final answer to a
/// remembered credentialed request of that client is its outcome: a
/// failure (401/407 not stale, 403), a stale nonce, or a success (2xx).
#[inline(always)]
pub(super) fn response(dst: &AddrKey, s: &SipSummary, cfg: &Config, now: u64) {
    let register = s.cseq_method == method::REGISTER;
    let challenge = s.status == 401 || s.status == 407;
    if register {
        match s.status {
            401 | 407 => stat(sip_stat::RESPONSE_REGISTER_CHALLENGE),
            403 => stat(sip_stat::RESPONSE_REGISTER_FORBIDDEN),
            200..=299 => stat(sip_stat::RESPONSE_REGISTER_OK),
            _ => stat(sip_stat::RESPONSE_REGISTER_OTHER),
        }
    } else {
        stat(sip_stat::RESPONSE_OTHER);
    }
    if challenge {
        mark_challenged(dst, now);
        if s.challenge_nonce != 0 {
            let _ = NONCES.insert(&NonceKey { addr: *dst, nonce: s.challenge_nonce }, &now, 0);
        }
    }
    // The request this answers, if it carried credentials from `dst`.
    let key = txn_key(s, s.cseq_method);
    let mut paired: Option<(u64, bool)> = None;
    if s.call_id != 0
        && s.cseq != 0
        && let Some(t) = TRANSACTIONS.get_ptr(&key)
    {
        // SAFETY: a value from a successful lookup, read at once.
        let t = unsafe { *t };
        if same_addr(&t.client, dst) && now.wrapping_sub(t.at_ns) < TXN_LIFETIME_NS {
            paired = Some((t.tag, t.flags & TXN_BOUND != 0));
        }
        if s.status >= 200 {
            let _ = TRANSACTIONS.remove(&key);
        }
    }
    let outcome = match s.status {
        401 | 407 if s.stale => Outcome::Stale,
        401 | 407 | 403 => Outcome::Failure,
        200..=299 => Outcome::Success,
        _ => Outcome::Other,
    };
    if !register && paired.is_none() {
        return;
    }
    // A response counts against the client it is sent to.
    let Some(e) = source(dst, now, cfg) else { return };
    if register {
        // SAFETY: as in `request`.
        unsafe {
            match s.status {
                401 | 407 => add64(&raw mut (*e).register_challenged),
                403 => add64(&raw mut (*e).register_forbidden),
                200..=299 => add64(&raw mut (*e).register_ok),
                _ => {}
            }
        }
    }
    let Some((tag, bound)) = paired else { return };
    // SAFETY: e points into a live map value (from `source`); no other
    // reference to it is held here.
    let st = unsafe { &mut *e };
    match outcome {
        Outcome::Failure if bound => {
            stat(sip_stat::FAILURE_BOUND);
            // SAFETY: as in `request`.
            unsafe {
                add64(&raw mut st.failures);
                add32(&raw mut st.win_failures);
            }
            st.win_identities |= 1 << (tag & 63);
            check_thresholds(st, dst, cfg, now, Some(tag));
        }
        Outcome::Failure => {
            stat(sip_stat::FAILURE_UNBOUND);
            // SAFETY: as in `request`.
            unsafe {
                add64(&raw mut st.unbound_failures);
                add32(&raw mut st.win_unbound);
            }
        }
        Outcome::Stale => {
            stat(sip_stat::STALE);
            // SAFETY: as in `request`.
            unsafe { add64(&raw mut st.stale) }
        }
        Outcome::Success if tag != 0 => {
            // An identity new here (as far as this entry remembers) is
            // reported: the agent learns where each identity works.
            if st.ok_tag[0] != tag && st.ok_tag[1] != tag {
                call_event(dst, EVENT_AUTH_OK, tag, 0, 0, now);
            }
            // The two most recent distinct identities that worked here.
            if st.ok_tag[0] != tag {
                st.ok_tag[1] = st.ok_tag[0];
                st.ok_ns[1] = st.ok_ns[0];
                st.ok_tag[0] = tag;
            }
            st.ok_ns[0] = now;
            seen(st, dst, now);
        }
        _ => {}
    }
}

/// The entry for `addr`, created if needed, with its window rolled over if
/// it has ended. The LRU map bounds memory under a spoofed-source flood.
#[inline(always)]
fn source(addr: &AddrKey, now: u64, cfg: &Config) -> Option<*mut SourceStats> {
    let e = match SOURCES.get_ptr_mut(addr) {
        Some(e) => e,
        None => {
            let fresh = SourceStats {
                first_seen_ns: now,
                last_seen_ns: now,
                window_start_ns: now,
                ..SourceStats::default()
            };
            // Another CPU may have created it meanwhile: then keep theirs.
            let _ = SOURCES.insert(addr, fresh, BPF_NOEXIST as u64);
            SOURCES.get_ptr_mut(addr)?
        }
    };
    // SAFETY: e points into a live map value. Plain stores race benignly
    // with other CPUs here: at worst a window restarts twice.
    unsafe {
        (*e).last_seen_ns = now;
        if now.wrapping_sub((*e).window_start_ns) >= cfg.window_ns && cfg.window_ns != 0 {
            (*e).window_start_ns = now;
            (*e).win_failures = 0;
            (*e).win_unbound = 0;
            (*e).win_identities = 0;
            (*e).win_intl_invites = 0;
            (*e).win_events = 0;
        }
    }
    Some(e)
}

/// Reports `addr` once per window for each per-source threshold its window
/// has reached. `failed` is the identity of a failure just counted.
#[inline(always)]
fn check_thresholds(st: &mut SourceStats, addr: &AddrKey, cfg: &Config, now: u64, failed: Option<u64>) {
    let fails = st.window_auth_failures();
    // Reported at the threshold and at every multiple of it in the window:
    // where only an identity is restricted (an office), another identity
    // failing at the same address must be reported too.
    if let Some(tag) = failed
        && cfg.auth_failure_threshold != 0
        && fails >= cfg.auth_failure_threshold
        && fails % cfg.auth_failure_threshold == 0
    {
        let threshold = cfg.auth_failure_threshold;
        let horizon = cfg.success_horizon_s as u64 * 1_000_000_000;
        let other_ok =
            |i: usize| st.ok_tag[i] != 0 && st.ok_tag[i] != tag && now.wrapping_sub(st.ok_ns[i]) < horizon;
        let auth = AuthEvidence {
            tag,
            unbound: st.win_unbound,
            identities: st.win_identities.count_ones() as u16,
            flags: if other_ok(0) || other_ok(1) { EVENT_FLAG_OTHER_OK } else { 0 },
        };
        let event = Emit { kind: EVENT_AUTH_FAILURES, count: fails, threshold, cc: 0, sources: 0, auth };
        emit(addr, &event, st.window_start_ns, now);
    }
    let intl = st.win_intl_invites;
    if cfg.intl_invite_threshold != 0
        && intl >= cfg.intl_invite_threshold
        && st.win_events & EVENT_INTL_INVITES == 0
    {
        // Only a source already at the ceiling pays for this lookup: a
        // learned threshold is never below it.
        let threshold = INTL_BASELINE
            .get_ptr(addr)
            // SAFETY: b points into a live map value from a successful lookup.
            .map(|b| unsafe { (*b).threshold })
            .filter(|t| *t > cfg.intl_invite_threshold)
            .unwrap_or(cfg.intl_invite_threshold);
        if intl >= threshold {
            st.win_events |= EVENT_INTL_INVITES;
            let event =
                Emit { kind: EVENT_INTL_INVITES, count: intl, threshold, cc: 0, sources: 0, auth: NO_AUTH };
            emit(addr, &event, st.window_start_ns, now);
        }
    }
}

/// Counts an international INVITE to `cc` from `src` in the country's
/// window, and reports the country once per window when the count reaches
/// its threshold with enough distinct sources.
#[inline(always)]
fn country_window(src: &AddrKey, cc: u16, cfg: &Config, now: u64) {
    if cfg.country_invite_threshold == 0 {
        return;
    }
    let Some(w) = COUNTRY_WINDOW.get_ptr_mut(cc as u32) else { return };
    let bucket = source_bucket(src);
    // SAFETY: w points into a live map value. As for sources, plain stores
    // race benignly: a lost bit only undercounts the sources.
    let w = unsafe { &mut *w };
    if now.wrapping_sub(w.window_start_ns) >= cfg.window_ns && cfg.window_ns != 0 {
        w.window_start_ns = now;
        w.count = 0;
        w.events = 0;
        w.sources = [0; 2];
    }
    w.sources[((bucket >> 6) & 1) as usize] |= 1 << (bucket & 63);
    // SAFETY: derived from a live reference to an aligned u32.
    unsafe { add32(&raw mut w.count) };
    let count = w.count;
    if count < cfg.country_invite_threshold || w.events & EVENT_COUNTRY_INVITES != 0 {
        return;
    }
    let threshold = COUNTRY_BASELINE
        .get(cc as u32)
        .map(|b| b.threshold)
        .filter(|t| *t > cfg.country_invite_threshold)
        .unwrap_or(cfg.country_invite_threshold);
    let sources = sources_at_least(&w.sources);
    if count >= threshold && sources >= cfg.country_min_sources {
        w.events |= EVENT_COUNTRY_INVITES;
        let event = Emit {
            kind: EVENT_COUNTRY_INVITES,
            count,
            threshold,
            cc,
            sources: sources as u16,
            auth: NO_AUTH,
        };
        emit(&[0; 16], &event, w.window_start_ns, now);
    }
}

/// What a threshold event reports, besides where and when.
struct Emit {
    kind: u32,
    count: u32,
    threshold: u32,
    cc: u16,
    sources: u16,
    auth: AuthEvidence,
}

/// What an authentication-failure event reports besides the count.
#[derive(Clone, Copy)]
struct AuthEvidence {
    tag: u64,
    unbound: u32,
    identities: u16,
    flags: u16,
}

const NO_AUTH: AuthEvidence = AuthEvidence { tag: 0, unbound: 0, identities: 0, flags: 0 };

#[inline(always)]
fn emit(addr: &AddrKey, e: &Emit, window_start_ns: u64, at_ns: u64) {
    let event = ThresholdEvent {
        addr: *addr,
        kind: e.kind,
        count: e.count,
        window_start_ns,
        at_ns,
        threshold: e.threshold,
        cc: e.cc,
        sources: e.sources,
        tag: e.auth.tag,
        unbound: e.auth.unbound,
        identities: e.auth.identities,
        flags: e.auth.flags,
    };
    // Counted, not logged: the agent reports lost events from this
    // counter (an aya-log call here also cost its 272-byte stack frame on
    // top of the count stage's, over the kernel's 512 with the tail call
    // of the next message).
    if EVENTS.output::<ThresholdEvent>(&event, 0).is_err() {
        stat(sip_stat::EVENTS_LOST);
    }
}

/// Counts one SIP message under `index` ([`sip_stat`]).
#[inline(always)]
pub(super) fn stat(index: u32) {
    if let Some(c) = SIP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *c += 1 };
    }
}

/// Adds 1 to a counter shared between CPUs.
///
/// # Safety
///
/// `p` must point into a live map value and be 8-byte aligned.
#[inline(always)]
unsafe fn add64(p: *mut u64) {
    // SAFETY: p points into a live map value, 8-byte aligned (the caller's
    // contract; the value types are repr(C)).
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(p, 1) };
}

/// Adds 1 to a counter shared between CPUs.
///
/// # Safety
///
/// `p` must point into a live map value and be 4-byte aligned.
#[inline(always)]
unsafe fn add32(p: *mut u32) {
    // SAFETY: p points into a live map value, 4-byte aligned (the caller's
    // contract; the value types are repr(C)).
    unsafe { atomic_xadd::<u32, u32, { Relaxed }>(p, 1) };
}
