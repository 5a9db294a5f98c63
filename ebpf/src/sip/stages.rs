//! SIP counting, shared by the XDP (ingress) and TC (egress) programs, in
//! three stages joined by tail calls:
//!
//! 1. [`stage`], in the first program: copy the payload into a per-CPU
//!    scratch buffer and note addresses and verdict in [`SIP_CTX`];
//! 2. [`parse_stage`]: parse it with `tollgate_common::sip` (reading
//!    through a masked index, so every access is provably inside the
//!    buffer) into [`SUMMARY`];
//! 3. [`count_stage`]: update the counters ([`super::counters`]) and decide
//!    the final verdict ([`crate::restrict`]).
//!
//! Each stage is a program of its own whose inputs come from maps, so the
//! verifier checks it once, instead of once per path through everything
//! before it, which together exceeds its budget.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
};
use tollgate_common::{
    IPPROTO_TCP, NO_VERDICT, SipContext,
    number::{CountryCodes, class, classify},
    packet::{Headers, Ports},
    sip::{self, HeaderScan, MAX_USER_SCAN, SIP_WINDOW, UserScan, kind, method},
    sip_stat, verdict,
};

use super::{
    Packet, Window,
    counters::{request, response, stat},
};
use crate::{
    enforce::count,
    maps::{CONFIG, COUNTRY_CODES, NUMBER_PLAN, SCRATCH, SIP_CTX, SUMMARY},
    restrict::{AUTH, INTL, restrict, restricted},
};

/// The value of [`SCRATCH`].
pub(crate) struct Scratch {
    payload: [u8; SIP_WINDOW],
    header: ScanState<HeaderScan>,
    user: ScanState<UserScan>,
}

/// The state of a `bpf_loop` scan, between its steps and back to the
/// caller.
///
/// Why a map value and not the caller's stack (what each kernel needed):
/// - Linux 6.1 verifies a `bpf_loop` callback as if it ran exactly once.
///   State kept on the stack is tracked precisely, so after "one step" the
///   verifier believes a multi-step outcome (a header found on a later
///   line, the URI scan reaching the user part) is impossible, and its
///   dead-code pass hard-wires those branches away: the loaded program then
///   reads every message as unparsed, without any error.
/// - Linux 6.7 and later verify the callback until its state repeats.
///   Precisely tracked scan state (positions, digit values) keeps changing,
///   so the verifier walks many iterations: 0.7M of the 1M-instruction
///   budget on 6.18, over it on 6.12.
///
/// Loads from a map value are unknown to the verifier, so it checks one
/// generic step on every kernel and keeps every outcome after the loop.
struct ScanState<S> {
    len: usize,
    scan: S,
}

/// One `bpf_loop` iteration per byte, the byte's position being the loop
/// index: the verifier checks the step once, with nothing it must track
/// precisely carried between iterations. The scan's state lives in a map
/// value, not on the stack: see [`ScanState`]. `len` is the payload's.
#[inline(always)]
pub(super) fn scan_headers(len: usize, scan: HeaderScan) -> HeaderScan {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return HeaderScan { stop: true, ..scan } };
    // SAFETY: a live per-CPU map value.
    let st = unsafe { &raw mut (*sc).header };
    // SAFETY: st is a live per-CPU map value; nothing else on this CPU
    // runs between here and the read below.
    unsafe {
        (*st).len = len;
        (*st).scan = scan;
    }
    // SAFETY: header_step matches bpf_loop's callback ABI and takes no
    // context (NULL is allowed).
    unsafe {
        bpf_loop(len as u32, header_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    // SAFETY: as above. Volatile: the callback wrote it behind LLVM's back.
    unsafe { core::ptr::read_volatile(&raw const (*st).scan) }
}

/// The same for the Request-URI user part.
#[inline(always)]
pub(super) fn scan_user(len: usize, scan: UserScan) -> UserScan {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return UserScan { done: true, ..scan } };
    // SAFETY: a live per-CPU map value.
    let st = unsafe { &raw mut (*sc).user };
    // SAFETY: as in scan_headers.
    unsafe {
        (*st).len = len;
        (*st).scan = scan;
    }
    // SAFETY: as in scan_headers, with user_step.
    unsafe {
        bpf_loop(MAX_USER_SCAN as u32, user_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    // SAFETY: as in scan_headers.
    unsafe { core::ptr::read_volatile(&raw const (*st).scan) }
}

/// One step: one map lookup finds both the payload and the state.
///
/// # Safety
///
/// Only for `bpf_loop`, which calls it with the loop index and the NULL
/// context [`scan_headers`] passes.
#[inline(never)]
unsafe extern "C" fn header_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: a live per-CPU map value, owned by this scan until it returns.
    let sc = unsafe { &mut *sc };
    // SAFETY: payload is part of the same live map value.
    let window = unsafe { Window::new(&raw const sc.payload, sc.header.len) };
    if sc.header.scan.step(&window, index as usize) { 0 } else { 1 }
}

/// # Safety
///
/// As for [`header_step`], with [`scan_user`].
#[inline(never)]
unsafe extern "C" fn user_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: as in header_step.
    let sc = unsafe { &mut *sc };
    // SAFETY: as in header_step.
    let window = unsafe { Window::new(&raw const sc.payload, sc.user.len) };
    if sc.user.scan.step(&window, index as usize) { 0 } else { 1 }
}

struct KernelCountryCodes;

impl CountryCodes for KernelCountryCodes {
    #[inline(always)]
    fn is_assigned(&self, cc: u16) -> bool {
        COUNTRY_CODES.get(cc as u32).is_some_and(|v| *v != 0)
    }
}

/// Stage 1: copies the payload of a SIP-port packet and notes what the
/// later stages need. Returns false when there is nothing to parse.
#[inline(always)]
pub(crate) fn stage<C: Packet>(
    ctx: &C,
    h: &Headers,
    p: &Ports,
    action: i32,
    code: u32,
    bytes: u32,
    responses_only: bool,
) -> bool {
    let off = p.payload_offset as usize;
    let total = ctx.total_len();
    if off >= total {
        return false;
    }
    let mut len = total - off;
    let truncated = len > SIP_WINDOW;
    if truncated {
        len = SIP_WINDOW;
    }
    // Same value for 1..=SIP_WINDOW, but in a form whose range the verifier
    // can see is never 0 (the helper rejects zero-sized copies).
    let len = ((len - 1) & (SIP_WINDOW - 1)) + 1;
    let (Some(scratch), Some(sc)) = (SCRATCH.get_ptr_mut(0), SIP_CTX.get_ptr_mut(0)) else { return false };
    // SAFETY: a live per-CPU map value.
    let buf = unsafe { &raw mut (*scratch).payload };
    // SAFETY: buf is SIP_WINDOW writable bytes and len <= SIP_WINDOW.
    if !unsafe { ctx.load(off, buf.cast(), len) } {
        return false;
    }
    // SAFETY: per-CPU map value from a successful lookup.
    unsafe {
        *sc = SipContext {
            src: h.src,
            dst: h.dst,
            len: len as u32,
            action,
            proto: p.proto,
            responses_only: responses_only as u8,
            allowlisted: (code == verdict::PASS_ALLOWLISTED) as u8,
            truncated: truncated as u8,
            code,
            bytes,
        }
    };
    true
}

/// The verdict the first program decided, counted here: used when the
/// count stage cannot be reached.
#[inline(always)]
pub(crate) fn staged_verdict() -> i32 {
    match SIP_CTX.get(0) {
        Some(sc) => {
            if sc.code != NO_VERDICT {
                count(sc.code, sc.bytes as u64);
            }
            sc.action
        }
        // Unreachable for a one-element array. Only the XDP parse stage
        // asks (the TC stages never take the staged action): 2 is XDP_PASS.
        None => xdp_action::XDP_PASS as i32,
    }
}

/// Stage 2: parses the copied payload into SUMMARY.
#[inline(always)]
pub(crate) fn parse_stage() {
    let (Some(scratch), Some(sc), Some(slot)) = (SCRATCH.get_ptr(0), SIP_CTX.get(0), SUMMARY.get_ptr_mut(0))
    else {
        return;
    };
    // SAFETY: a live per-CPU map value.
    let buf = unsafe { &raw const (*scratch).payload };
    let len = sc.len as usize;
    if len == 0 || len > SIP_WINDOW {
        return;
    }
    // Hide len's range from LLVM: knowing i < len <= SIP_WINDOW it would
    // drop the index mask in Window::at and fold offsets past it, producing
    // accesses the verifier cannot prove in bounds. The verifier still
    // tracks the value through the stack.
    // SAFETY: reading a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    // Only a restricted source's packets are swept whole (credentials in
    // any request, later messages in a TCP segment): see restrict.rs.
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    let now = unsafe { bpf_ktime_get_ns() };
    let sweep = sc.responses_only == 0
        && sc.allowlisted == 0
        && (restricted(&sc.src, AUTH, now) || restricted(&sc.src, INTL, now));
    // SAFETY: buf is the SIP_WINDOW-byte payload of a live per-CPU map value.
    let window = unsafe { Window::new(buf, len) };
    // SAFETY: per-CPU map value from a successful lookup.
    unsafe { *slot = sip::parse_with(&window, sweep) };
}

/// Stage 3: counts the parsed message, applies the SIP restrictions, and
/// counts the final verdict. Returns the action.
#[inline(always)]
pub(crate) fn count_stage<C: EbpfContext>(ctx: &C) -> i32 {
    let (Some(s), Some(sc), Some(cfg)) = (SUMMARY.get(0), SIP_CTX.get(0), CONFIG.get(0)) else {
        return staged_verdict();
    };
    let mut class = class::UNKNOWN;
    let mut cc = 0u16;
    match s.kind {
        kind::EMPTY => {}
        kind::KEEPALIVE => stat(sip_stat::KEEPALIVE),
        kind::UNPARSED => {
            stat(if sc.proto == IPPROTO_TCP { sip_stat::UNPARSED_TCP } else { sip_stat::UNPARSED_UDP })
        }
        kind::REQUEST if sc.responses_only == 0 => {
            if s.method == method::INVITE
                && let Some(plan) = NUMBER_PLAN.get(0)
            {
                let c = classify(&s.number, plan, &KernelCountryCodes);
                (class, cc) = (c.class, c.cc);
            }
            request(ctx, &sc.src, s, class, cc, cfg);
        }
        kind::RESPONSE => response(ctx, &sc.dst, s, cfg),
        _ => {}
    }
    let (action, code) = restrict(sc, s, class, cc);
    if code != NO_VERDICT {
        count(code, sc.bytes as u64);
    }
    action
}
