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
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
};
use tollgate_common::{
    IPPROTO_TCP, NO_VERDICT, SipContext,
    headers::{self, LineScan, MAX_LINE_STEPS, MAX_PARAM_STEPS, ParamScan, Span},
    number::{CountryCodes, class, classify},
    packet::{Headers, Ports},
    sip::{self, ByteWindow as _, MAX_USER_SCAN, SIP_WINDOW, UserScan, kind, method},
    sip_stat, verdict,
};

use super::{
    Packet, Payload, Window,
    counters::{blocked, challenged, identity, request, response, stat},
    zero_tail,
};
use crate::{
    enforce::count,
    maps::{CONFIG, COUNTRY_CODES, NUMBER_PLAN, SCRATCH, SIP_CTX, SUMMARY},
    restrict::{dropped_here, restrict, restrictions},
};

/// The value of [`SCRATCH`].
pub(crate) struct Scratch {
    payload: Payload,
    user: ScanState<UserScan>,
    lines: ScanState<LineScan>,
    params: ScanState<ParamScan>,
    call: Isolated,
}

/// The arguments and result of one computation done in a callback of its
/// own ([`isolated`]).
#[derive(Clone, Copy)]
struct Isolated {
    len: usize,
    base: usize,
    op: u64,
    a: u64,
    b: u64,
    out: u64,
}

/// [`Isolated::op`]s.
pub(super) mod op {
    pub const HASH: u64 = 0;
    pub const CSEQ: u64 = 1;
    pub const NUMBER: u64 = 2;
}

/// Runs `op` on (`a`, `b`) in a callback of its own (one per op), called
/// once by `bpf_loop`: the verifier checks the callback on its own, so the
/// paths through the computation's loops (one per iteration it may stop
/// at) do not multiply with the paths through the rest of the parse stage.
/// One callback per op: a callback is checked at each call site, for every
/// op it could run.
#[inline(always)]
pub(super) fn isolated(w: &Window, op: u64, a: u64, b: u64) -> u64 {
    let (len, base) = (w.len(), w.base());
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: a live per-CPU map value.
    let st = unsafe { &raw mut (*sc).call };
    // SAFETY: as in scan_user.
    unsafe {
        (*st).len = len;
        (*st).base = base;
        (*st).op = op;
        (*st).a = a;
        (*st).b = b;
        (*st).out = 0;
    }
    let step = match op {
        op::HASH => hash_step as *mut c_void,
        op::CSEQ => cseq_step as *mut c_void,
        _ => number_step as *mut c_void,
    };
    // SAFETY: as in scan_user, with one of the steps below.
    unsafe {
        bpf_loop(1, step, core::ptr::null_mut(), 0);
    }
    // SAFETY: as in scan_user.
    unsafe { core::ptr::read_volatile(&raw const (*st).out) }
}

/// Reads the start line of `w`'s message in [`start_step`], called once by
/// `bpf_loop` (see [`isolated`]); the summary is left in the payload
/// buffer's summary words.
#[inline(always)]
pub(super) fn start_isolated(w: &Window) {
    let (len, base) = (w.len(), w.base());
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: a live per-CPU map value.
    let st = unsafe { &raw mut (*sc).call };
    // SAFETY: as in scan_user.
    unsafe {
        (*st).len = len;
        (*st).base = base;
    }
    // SAFETY: as in scan_user, with start_step.
    unsafe {
        bpf_loop(1, start_step as *mut c_void, core::ptr::null_mut(), 0);
    }
}

/// # Safety
///
/// As for [`user_step`], with [`start_isolated`].
#[inline(never)]
unsafe extern "C" fn start_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: a live per-CPU map value, owned by this computation until it returns.
    let sc = unsafe { &mut *sc };
    // SAFETY: as in user_step.
    let window = unsafe { Window::at_base(&raw const sc.payload, sc.call.len + sc.call.base, sc.call.base) };
    window.store_summary(&sip::start_line(&window));
    1
}

/// Runs `f` on the scratch window and the call's arguments, storing its
/// result.
#[inline(always)]
fn isolated_call(f: impl FnOnce(&Window, u64, u64) -> u64) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: a live per-CPU map value, owned by this computation until it returns.
    let sc = unsafe { &mut *sc };
    // SAFETY: as in user_step.
    let window = unsafe { Window::at_base(&raw const sc.payload, sc.call.len + sc.call.base, sc.call.base) };
    sc.call.out = f(&window, sc.call.a, sc.call.b);
    1
}

/// # Safety
///
/// As for [`user_step`], with [`isolated`].
#[inline(never)]
unsafe extern "C" fn hash_step(_index: u64, _ctx: *mut c_void) -> i64 {
    isolated_call(|w, a, b| headers::value_hash(w, Span { start: a as u32, end: b as u32 }))
}

/// # Safety
///
/// As for [`user_step`], with [`isolated`].
#[inline(never)]
unsafe extern "C" fn cseq_step(_index: u64, _ctx: *mut c_void) -> i64 {
    isolated_call(|w, a, _| {
        let (n, m) = sip::cseq_at(w, a as usize);
        ((m as u64) << 32) | n as u64
    })
}

/// # Safety
///
/// As for [`user_step`], with [`isolated`].
#[inline(never)]
unsafe extern "C" fn number_step(_index: u64, _ctx: *mut c_void) -> i64 {
    isolated_call(|w, a, _| headers::number_at(w, a as usize).0 as u64)
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
    base: usize,
    scan: S,
}

/// Writes `v` to `dst` a 32-bit word at a time, volatile: a plain store of
/// a mostly zero struct becomes a memset call, which the verifier walks
/// byte by byte (over a million instructions with the line scan).
///
/// # Safety
///
/// `dst` must be valid for writes and 4-aligned; `T` must be a multiple of
/// 4 bytes long.
#[inline(always)]
unsafe fn store<T: Copy>(dst: *mut T, v: T) {
    const { assert!(size_of::<T>() % 4 == 0) };
    let src = (&raw const v).cast::<u32>();
    let dst = dst.cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: i < size_of::<T>() / 4: inside both (the caller's contract).
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read(src.add(i))) };
        i += 1;
    }
}

/// The Request-URI number scan: one `bpf_loop` iteration per byte, the
/// byte's position being the loop index, with the scan's state in a map
/// value, not on the stack (see [`ScanState`]): the verifier checks the
/// step once, with nothing it must track precisely carried between
/// iterations. `len` is the payload's.
#[inline(always)]
pub(super) fn scan_user(w: &Window, scan: UserScan) -> UserScan {
    let (len, base) = (w.len(), w.base());
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return UserScan { done: true, ..scan } };
    // SAFETY: a live per-CPU map value.
    let st = unsafe { &raw mut (*sc).user };
    // SAFETY: st is a live per-CPU map value; nothing else on this CPU
    // runs between here and the read below.
    unsafe {
        (*st).len = len;
        (*st).base = base;
        store(&raw mut (*st).scan, scan);
    }
    // SAFETY: user_step matches bpf_loop's callback ABI and takes no
    // context (NULL is allowed).
    unsafe {
        bpf_loop(MAX_USER_SCAN as u32, user_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    // SAFETY: as above. Volatile: the callback wrote it behind LLVM's back.
    unsafe { core::ptr::read_volatile(&raw const (*st).scan) }
}

/// The same, one step per header line (README: Performance).
#[inline(always)]
pub(super) fn scan_lines(w: &Window, scan: LineScan) -> LineScan {
    let (len, base) = (w.len(), w.base());
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return LineScan { done: 1, ..scan } };
    // SAFETY: a live per-CPU map value.
    let st = unsafe { &raw mut (*sc).lines };
    // SAFETY: as in scan_user.
    unsafe {
        (*st).len = len;
        (*st).base = base;
        store(&raw mut (*st).scan, scan);
    }
    // SAFETY: as in scan_user, with line_step.
    unsafe {
        bpf_loop(MAX_LINE_STEPS as u32, line_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    // SAFETY: as in scan_user.
    unsafe { core::ptr::read_volatile(&raw const (*st).scan) }
}

/// The same, one step per digest parameter.
#[inline(always)]
pub(super) fn scan_params(w: &Window, scan: ParamScan) -> ParamScan {
    let (len, base) = (w.len(), w.base());
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return ParamScan { done: 1, ..scan } };
    // SAFETY: a live per-CPU map value.
    let st = unsafe { &raw mut (*sc).params };
    // SAFETY: as in scan_user.
    unsafe {
        (*st).len = len;
        (*st).base = base;
        store(&raw mut (*st).scan, scan);
    }
    // SAFETY: as in scan_user, with param_step.
    unsafe {
        bpf_loop(MAX_PARAM_STEPS as u32, param_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    // SAFETY: as in scan_user.
    unsafe { core::ptr::read_volatile(&raw const (*st).scan) }
}

/// # Safety
///
/// As for [`user_step`], with [`scan_lines`].
#[inline(never)]
unsafe extern "C" fn line_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: a live per-CPU map value, owned by this scan until it returns.
    let sc = unsafe { &mut *sc };
    // SAFETY: a live per-CPU map value, owned by this scan until it returns.
    let window =
        unsafe { Window::at_base(&raw const sc.payload, sc.lines.len + sc.lines.base, sc.lines.base) };
    if sc.lines.scan.step(&window) { 0 } else { 1 }
}

/// # Safety
///
/// As for [`user_step`], with [`scan_params`].
#[inline(never)]
unsafe extern "C" fn param_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: a live per-CPU map value, owned by this scan until it returns.
    let sc = unsafe { &mut *sc };
    // SAFETY: a live per-CPU map value, owned by this scan until it returns.
    let window =
        unsafe { Window::at_base(&raw const sc.payload, sc.params.len + sc.params.base, sc.params.base) };
    if sc.params.scan.step(&window) { 0 } else { 1 }
}

/// # Safety
///
/// Only for `bpf_loop`, which calls it with the loop index and the NULL
/// context [`scan_user`] passes.
#[inline(never)]
unsafe extern "C" fn user_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: a live per-CPU map value, owned by this scan until it returns.
    let sc = unsafe { &mut *sc };
    // SAFETY: a live per-CPU map value, owned by this scan until it returns.
    let window = unsafe { Window::at_base(&raw const sc.payload, sc.user.len + sc.user.base, sc.user.base) };
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
    // Up to the IP packet's own end: a short frame's Ethernet padding is
    // not payload (a keep-alive or a bare ACK would read as unparsed).
    let frame = ctx.total_len();
    let total = if (p.payload_end as usize) < frame { p.payload_end as usize } else { frame };
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
    // SAFETY: buf is more than SIP_WINDOW writable bytes and len <= SIP_WINDOW.
    if !unsafe { ctx.load(off, buf.cast(), len) } {
        return false;
    }
    // SAFETY: buf is a live Payload.
    unsafe { zero_tail(buf, len) };
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    let now_ns = unsafe { bpf_ktime_get_ns() };
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
            base: 0,
            msgs: 0,
            restricted: 0,
            marked: 0,
            _pad16: 0,
            now_ns,
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
    let (Some(scratch), Some(sc_ptr), Some(slot)) =
        (SCRATCH.get_ptr(0), SIP_CTX.get_ptr_mut(0), SUMMARY.get_ptr_mut(0))
    else {
        return;
    };
    // SAFETY: a live per-CPU map value, only this program's on this CPU.
    let sc = unsafe { &mut *sc_ptr };
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
    // The restrictions are looked up once, for the packet's first message;
    // an allowlisted source has none, egress counts responses only.
    let base = sc.base as usize;
    if base == 0 && sc.responses_only == 0 && sc.allowlisted == 0 {
        sc.restricted = restrictions(&sc.src, sc.now_ns);
        sc.marked = dropped_here(&sc.src, sc.now_ns) as u8;
    }
    let restricted = sc.restricted;
    // Only a restricted source's packets are swept whole (credentials in
    // any request, later messages in a TCP segment, a second username):
    // see restrict.rs. The sweep reads the whole window once, from its
    // start.
    let sweep = base == 0 && (restricted != 0 || sc.marked != 0);
    // The headers of a request other than REGISTER matter only where its
    // credentials could count (or be restricted): over TCP (the handshake
    // binds them, and the framing needs Content-Length), and over UDP from
    // a source the registrar challenged recently, since only a nonce
    // issued to it within the horizon binds them (README: Evidence model).
    let requests = sc.proto == IPPROTO_TCP || restricted != 0 || challenged(&sc.src, sc.now_ns);
    if base >= len {
        return;
    }
    // SAFETY: buf is the payload of a live per-CPU map value.
    let window = unsafe { Window::at_base(buf, len, base) };
    // SAFETY: per-CPU map value from a successful lookup.
    unsafe { *slot = sip::parse_with(&window, sweep, requests) };
}

/// Stage 3: counts the parsed message and applies the SIP restrictions.
/// Returns the action, and whether another message of the same TCP segment
/// is to be parsed (the caller tail-calls the parse stage again, which
/// comes back here); the verdict is counted once, when the last message is
/// done or one is dropped.
#[inline(always)]
pub(crate) fn count_stage() -> (i32, bool) {
    let (action, code) = count_message();
    let (Some(s), Some(sc)) = (SUMMARY.get(0), SIP_CTX.get_ptr_mut(0)) else {
        return (finish(action, code), false);
    };
    // SAFETY: a per-CPU map value from a successful lookup.
    let sc = unsafe { &mut *sc };
    let dropped = code != NO_VERDICT && action != sc.action;
    // The next message of a TCP segment: after this one's body. Over UDP a
    // receiver discards what follows the first message (RFC 3261 18.3).
    let next = sc.base as u64 + s.body as u64 + s.content_length as u64;
    if !dropped
        && sc.proto == IPPROTO_TCP
        && s.body != 0
        && sc.msgs + 1 < tollgate_common::MAX_MESSAGES
        && next < sc.len as u64
    {
        sc.base = next as u32;
        sc.msgs += 1;
        return (action, true);
    }
    (finish(action, code), false)
}

/// The verdict code the first program staged.
#[inline(always)]
pub(crate) fn staged_code() -> u32 {
    SIP_CTX.get(0).map_or(NO_VERDICT, |sc| sc.code)
}

/// Counts the final verdict of the packet.
#[inline(always)]
pub(crate) fn finish(action: i32, code: u32) -> i32 {
    if code != NO_VERDICT {
        count(code, SIP_CTX.get(0).map_or(0, |sc| sc.bytes as u64));
    }
    action
}

/// One message: its counters and the restriction verdict.
#[inline(always)]
fn count_message() -> (i32, u32) {
    let (Some(s), Some(sc), Some(cfg)) = (SUMMARY.get(0), SIP_CTX.get(0), CONFIG.get(0)) else {
        return SIP_CTX.get(0).map_or((xdp_action::XDP_PASS as i32, NO_VERDICT), |sc| (sc.action, sc.code));
    };
    let mut class = class::UNKNOWN;
    let mut cc = 0u16;
    // The identity of a request's credentials, for counting and for
    // identity-suspend.
    let mut tag = 0;
    if s.kind == kind::REQUEST
        && s.has_auth
        && let Some(scratch) = SCRATCH.get_ptr(0)
    {
        // SAFETY: the payload of a live per-CPU map value, its tail zeroed
        // by the first stage.
        let window =
            unsafe { Window::at_base(&raw const (*scratch).payload, sc.len as usize, sc.base as usize) };
        tag = identity(s, &window, cfg);
    }
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
            request(sc, s, tag, class, cc, cfg);
        }
        kind::RESPONSE => response(&sc.dst, s, cfg, sc.now_ns),
        _ => {}
    }
    let (action, code) = restrict(sc, s, class, cc, tag);
    if class == class::INTERNATIONAL && action == xdp_action::XDP_DROP as i32 {
        blocked(sc, s, cc);
    }
    (action, code)
}
