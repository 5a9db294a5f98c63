//! SIP restrictions (auth-suspend, intl-suspend, country-restrict): the
//! final verdict of a SIP request, decided in the count stage once the
//! message is parsed and its number classified.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use tollgate_common::{
    AddrKey, MAX_NESTED_BLOCKS, NO_VERDICT, SipContext,
    number::class,
    sip::{SipSummary, kind, method},
    verdict,
};

use crate::maps::{COUNTRY_RESTRICT, RESTRICTIONS};

/// auth-suspend: REGISTER and credentialed requests.
pub(crate) const AUTH: u8 = 0;
/// intl-suspend: INVITEs to international numbers.
pub(crate) const INTL: u8 = 1;

/// Whether `addr` is under an active restriction of `kind`. Like the
/// blocklist, an expired (or other-kind) narrow entry does not hide an
/// active broader one.
#[inline(always)]
pub(crate) fn restricted(addr: &AddrKey, kind: u8, now: u64) -> bool {
    let mut key = Key::new(128, *addr);
    for _ in 0..MAX_NESTED_BLOCKS {
        let Some(r) = RESTRICTIONS.get(&key) else { return false };
        let until = if kind == AUTH { r.auth_until_ns } else { r.intl_until_ns };
        if until > now {
            return true;
        }
        if r.prefix_len == 0 {
            return false;
        }
        key = Key::new(r.prefix_len - 1, *addr);
    }
    false
}

/// The final verdict of a SIP request: the first program's, unless a SIP
/// restriction applies. Allowlisted sources and emergency calls are never
/// restricted; a packet already dropped stays dropped.
#[inline(always)]
pub(crate) fn restrict(sc: &SipContext, s: &SipSummary, class: u8, cc: u16) -> (i32, u32) {
    let staged = (sc.action, sc.code);
    if sc.code == NO_VERDICT
        || sc.action != xdp_action::XDP_PASS as i32
        || sc.allowlisted != 0
        || s.kind != kind::REQUEST
        || class == class::EMERGENCY
    {
        return staged;
    }
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    let now = unsafe { bpf_ktime_get_ns() };
    let drop = xdp_action::XDP_DROP as i32;
    if (s.method == method::REGISTER || s.has_auth) && restricted(&sc.src, AUTH, now) {
        return (drop, verdict::DROP_AUTH_SUSPENDED);
    }
    if class == class::INTERNATIONAL {
        if restricted(&sc.src, INTL, now) {
            return (drop, verdict::DROP_INTL_SUSPENDED);
        }
        if COUNTRY_RESTRICT.get(cc as u32).is_some_and(|r| r.until_ns > now) {
            return (drop, verdict::DROP_COUNTRY_RESTRICTED);
        }
    }
    staged
}
