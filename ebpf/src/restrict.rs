//! SIP restrictions (auth-suspend, intl-suspend, country-restrict): the
//! final verdict of a SIP request, decided in the count stage once the
//! message is parsed and its number classified.

use aya_ebpf::{bindings::xdp_action, maps::lpm_trie::Key};
use tollgate_common::{
    AddrKey, IPPROTO_TCP, IdentityAt, IdentityRestriction, MAX_NESTED_BLOCKS, NO_VERDICT, SipContext,
    number::class,
    sip::{SipSummary, kind, method, sweep},
    verdict,
};

use crate::{
    maps::{COUNTRY_RESTRICT, ID_DROPPED, ID_RESTRICT, RESTRICTIONS},
    sip::counters::{mark_challenged, within_horizon},
};

/// auth-suspend: REGISTER and credentialed requests ([`SipContext::restricted`] bit).
pub(crate) const AUTH: u8 = 1;
/// intl-suspend: INVITEs to international numbers.
pub(crate) const INTL: u8 = 2;

/// The restrictions `addr` is under now: [`AUTH`] and [`INTL`] bits, found
/// in one walk from the narrowest entry up. Like the blocklist, an expired
/// (or other-kind) narrow entry does not hide an active broader one. The
/// parse stage asks once per packet; the count stage reads the answer from
/// [`SipContext::restricted`].
#[inline(always)]
pub(crate) fn restrictions(addr: &AddrKey, now: u64) -> u8 {
    let mut key = Key::new(128, *addr);
    let mut found = 0;
    for _ in 0..MAX_NESTED_BLOCKS {
        let Some(r) = RESTRICTIONS.get(&key) else { break };
        if r.auth_until_ns > now {
            found |= AUTH;
        }
        if r.intl_until_ns > now {
            found |= INTL;
        }
        if found == AUTH | INTL || r.prefix_len == 0 {
            break;
        }
        key = Key::new(r.prefix_len - 1, *addr);
    }
    found
}

/// What a restricted source sent that the kernel cannot prove harmless for
/// its restriction, and so drops (fail closed for the restricted; everyone
/// else fails open). Only packets the parse stage swept get here: it sweeps
/// exactly those of auth- or intl-suspended sources.
///
/// Over TCP the registrar reads a byte stream: a later message in the same
/// segment, or one beyond the window, is as real as the first. Over UDP a
/// receiver discards what follows the first message (RFC 3261 18.3), so
/// only the first counts there. An emergency call is dropped only when it
/// shares a TCP segment with a later REGISTER or INVITE from a restricted
/// source (README: "What is dropped").
#[inline(always)]
fn fail_closed(sc: &SipContext, s: &SipSummary, class: u8) -> Option<u32> {
    let auth = sc.restricted & AUTH != 0;
    let intl = sc.restricted & INTL != 0;
    if !auth && !intl {
        return None;
    }
    let tcp = sc.proto == IPPROTO_TCP;
    // Unreadable (a continuation segment, a start line split across
    // segments, garbage) or not read to its end: it could be anything.
    if s.kind == kind::UNPARSED || (tcp && sc.truncated != 0) {
        return Some(verdict::DROP_RESTRICTED_UNREADABLE);
    }
    if tcp && auth && s.sweep & sweep::LATER_REGISTER != 0 {
        return Some(verdict::DROP_AUTH_SUSPENDED);
    }
    if tcp && intl && s.sweep & sweep::LATER_INVITE != 0 {
        return Some(verdict::DROP_RESTRICTED_UNREADABLE);
    }
    // Credentials could sit in the part of the headers not read (a second
    // IP fragment, the next segment).
    if auth && s.kind == kind::REQUEST && class != class::EMERGENCY && s.sweep & sweep::HEADERS_OPEN != 0 {
        return Some(verdict::DROP_RESTRICTED_UNREADABLE);
    }
    None
}

/// The restrictions of identity `tag` at `addr` (none: all zero).
#[inline(always)]
fn identity_at(addr: AddrKey, tag: u64) -> IdentityRestriction {
    // SAFETY: a value from a successful lookup, copied at once.
    ID_RESTRICT.get_ptr(&IdentityAt { addr, tag }).map(|r| unsafe { *r }).unwrap_or_default()
}

/// Whether a restricted identity's request from `addr` was dropped within
/// the nonce horizon (the parse stage asks once per packet; the count
/// stage reads [`SipContext::marked`]).
#[inline(always)]
pub(crate) fn dropped_here(addr: &AddrKey, now: u64) -> bool {
    // SAFETY: a value from a successful lookup, read at once.
    ID_DROPPED.get_ptr(addr).is_some_and(|t| within_horizon(unsafe { *t }, now))
}

/// The final verdict of a SIP request: the first program's, unless a SIP
/// restriction applies. Allowlisted sources and readable emergency calls
/// are never restricted; a packet already dropped stays dropped.
#[inline(always)]
pub(crate) fn restrict(sc: &SipContext, s: &SipSummary, class: u8, cc: u16, tag: u64) -> (i32, u32) {
    let staged = (sc.action, sc.code);
    if sc.code == NO_VERDICT || sc.action != xdp_action::XDP_PASS as i32 || sc.allowlisted != 0 {
        return staged;
    }
    let now = sc.now_ns;
    let drop = xdp_action::XDP_DROP as i32;
    if s.sweep & sweep::SWEPT != 0
        && let Some(code) = fail_closed(sc, s, class)
    {
        return (drop, code);
    }
    // Where a restricted identity was dropped, what could carry its
    // credentials unseen is dropped too (fail closed there): a datagram
    // not readable as SIP (a tiny first IP fragment), and an international
    // INVITE whose headers do not end in what was read (the credentials in
    // a later fragment or segment) or whose credentials are ambiguous
    // (another credentials header, a decoy first; a second username;
    // sweep::SEVERAL_CREDENTIALS). TCP continuation segments pass:
    // other phones behind the same NAT send them (README: "Lines").
    let hidden = (s.kind == kind::UNPARSED && sc.proto != IPPROTO_TCP)
        || (s.kind == kind::REQUEST
            && class == class::INTERNATIONAL
            && (s.body == 0 || s.sweep & sweep::SEVERAL_CREDENTIALS != 0));
    if hidden && sc.marked != 0 {
        return (drop, verdict::DROP_RESTRICTED_UNREADABLE);
    }
    if s.kind != kind::REQUEST || class == class::EMERGENCY {
        return staged;
    }
    if (s.method == method::REGISTER || s.has_auth) && sc.restricted & AUTH != 0 {
        return (drop, verdict::DROP_AUTH_SUSPENDED);
    }
    if tag != 0 {
        // The identity at this address, and everywhere (the all-zero
        // address: a credential used from many addresses, or a line).
        let (here, everywhere) = (identity_at(sc.src, tag), identity_at([0; 16], tag));
        let suspended = here.until_ns > now || everywhere.until_ns > now;
        let intl =
            class == class::INTERNATIONAL && (here.intl_until_ns > now || everywhere.intl_until_ns > now);
        if suspended || intl {
            // Keep reading this address's requests while the identity
            // tries (see CHALLENGED), and fail closed here (above).
            mark_challenged(&sc.src, now);
            let _ = ID_DROPPED.insert(&sc.src, &now, 0);
            let code =
                if suspended { verdict::DROP_IDENTITY_SUSPENDED } else { verdict::DROP_INTL_SUSPENDED };
            return (drop, code);
        }
    }
    if class == class::INTERNATIONAL {
        if sc.restricted & INTL != 0 {
            return (drop, verdict::DROP_INTL_SUSPENDED);
        }
        if COUNTRY_RESTRICT.get(cc as u32).is_some_and(|r| r.until_ns > now) {
            return (drop, verdict::DROP_COUNTRY_RESTRICTED);
        }
    }
    staged
}
