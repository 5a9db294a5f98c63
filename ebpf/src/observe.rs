//! SIP counting, shared by the XDP (ingress) and TC (egress) programs, in
//! three stages joined by tail calls:
//!
//! 1. [`stage`], in the first program: copy the payload into a per-CPU
//!    scratch buffer and note addresses and verdict in [`SIP_CTX`];
//! 2. [`parse_stage`]: parse it with `tollgate_common::sip` (reading
//!    through a masked index, so every access is provably inside the
//!    buffer) into [`SUMMARY`];
//! 3. [`count_stage`]: update the counters.
//!
//! Each stage is a program of its own whose inputs come from maps, so the
//! verifier checks it once, instead of once per path through everything
//! before it, which together exceeds its budget. Counters are updated with
//! atomic adds: the same source can be seen on several CPUs at once.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering::Relaxed, atomic_xadd},
};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, xdp_action},
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use aya_log_ebpf::warn;
use tollgate_common::{
    AddrKey, Baseline, Config, CountryRestriction, CountryWindow, EVENT_AUTH_FAILURES, EVENT_COUNTRY_INVITES,
    EVENT_INTL_INVITES, EVENTS_BYTES, INTL_BASELINE_CAPACITY, IPPROTO_TCP, MAX_NESTED_BLOCKS, NO_VERDICT,
    RESTRICTIONS_CAPACITY, Restriction, SOURCES_CAPACITY, SipContext, SourceStats, ThresholdEvent,
    number::{COUNTRY_CODE_SLOTS, CountryCodes, NumberPlan, class, classify},
    packet::{Headers, Ports},
    sip::{self, ByteWindow, HeaderScan, MAX_USER_SCAN, SIP_WINDOW, UserScan, kind, method},
    sip_stat, source_bucket, sources_at_least, verdict,
};

use crate::{CONFIG, Packet, count};

#[map]
static SOURCES: LruHashMap<AddrKey, SourceStats> = LruHashMap::with_max_entries(SOURCES_CAPACITY, 0);

#[map]
static SIP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(sip_stat::COUNT, 0);

#[map]
static COUNTRY_INVITES: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTRY_CODE_SLOTS, 0);

#[map]
static COUNTRY_CODES: Array<u32> = Array::with_max_entries(COUNTRY_CODE_SLOTS, 0);

#[map]
static NUMBER_PLAN: Array<NumberPlan> = Array::with_max_entries(1, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// auth-suspend and intl-suspend per source prefix, decided by the agent.
#[map]
static RESTRICTIONS: LpmTrie<AddrKey, Restriction> =
    LpmTrie::with_max_entries(RESTRICTIONS_CAPACITY, BPF_F_NO_PREALLOC);

/// Learned per-source thresholds for international INVITEs (written by the
/// agent; only sources whose normal volume is high have one).
#[map]
static INTL_BASELINE: HashMap<AddrKey, Baseline> = HashMap::with_max_entries(INTL_BASELINE_CAPACITY, 0);

/// Learned per-country thresholds (written by the agent).
#[map]
static COUNTRY_BASELINE: Array<Baseline> = Array::with_max_entries(COUNTRY_CODE_SLOTS, 0);

/// Each destination country's current window (written here).
#[map]
static COUNTRY_WINDOW: Array<CountryWindow> = Array::with_max_entries(COUNTRY_CODE_SLOTS, 0);

/// country-restrict: expiry per E.164 country code.
#[map]
static COUNTRY_RESTRICT: Array<CountryRestriction> = Array::with_max_entries(COUNTRY_CODE_SLOTS, 0);

/// The parse result, from stage 2 to stage 3.
#[map]
static SUMMARY: PerCpuArray<sip::SipSummary> = PerCpuArray::with_max_entries(1, 0);

/// Addresses, payload length and verdict, from the first program to the
/// stages.
#[map]
static SIP_CTX: PerCpuArray<SipContext> = PerCpuArray::with_max_entries(1, 0);

/// Where the payload window is copied, and the state of the scans over it;
/// per CPU, so no locking.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

struct Scratch {
    payload: [u8; SIP_WINDOW],
    header: ScanState<HeaderScan>,
    user: ScanState<UserScan>,
}

/// The copied payload. Reads past `len` yield 0; the mask keeps every index
/// inside the buffer whatever the verifier knows about `i`.
struct Window {
    buf: *const [u8; SIP_WINDOW],
    len: usize,
}

impl ByteWindow for Window {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        if i < self.len {
            // SAFETY: buf is a live map value of SIP_WINDOW bytes.
            unsafe { (*self.buf)[i & (SIP_WINDOW - 1)] }
        } else {
            0
        }
    }

    #[inline(always)]
    fn raw(&self, i: usize) -> u8 {
        // SAFETY: buf is a live map value of SIP_WINDOW bytes.
        unsafe { (*self.buf)[i & (SIP_WINDOW - 1)] }
    }

    /// One `bpf_loop` iteration per byte, the byte's position being the
    /// loop index: the verifier checks the step once, with nothing it must
    /// track precisely carried between iterations. The scan's state lives in
    /// a map value, not on the stack: see [`ScanState`].
    #[inline(always)]
    fn scan_headers(&self, scan: HeaderScan) -> HeaderScan {
        let Some(sc) = SCRATCH.get_ptr_mut(0) else { return HeaderScan { stop: true, ..scan } };
        // SAFETY: a live per-CPU map value.
        let st = unsafe { &raw mut (*sc).header };
        // SAFETY: st is a live per-CPU map value; nothing else on this CPU
        // runs between here and the read below.
        unsafe {
            (*st).len = self.len;
            (*st).scan = scan;
        }
        // SAFETY: header_step matches bpf_loop's callback ABI and takes no
        // context (NULL is allowed).
        unsafe {
            bpf_loop(self.len as u32, header_step as *mut c_void, core::ptr::null_mut(), 0);
        }
        // SAFETY: as above. Volatile: the callback wrote it behind LLVM's back.
        unsafe { core::ptr::read_volatile(&raw const (*st).scan) }
    }

    /// The same for the Request-URI user part.
    #[inline(always)]
    fn scan_user(&self, scan: UserScan) -> UserScan {
        let Some(sc) = SCRATCH.get_ptr_mut(0) else { return UserScan { done: true, ..scan } };
        // SAFETY: a live per-CPU map value.
        let st = unsafe { &raw mut (*sc).user };
        // SAFETY: as in scan_headers.
        unsafe {
            (*st).len = self.len;
            (*st).scan = scan;
        }
        // SAFETY: as in scan_headers, with user_step.
        unsafe {
            bpf_loop(MAX_USER_SCAN as u32, user_step as *mut c_void, core::ptr::null_mut(), 0);
        }
        // SAFETY: as in scan_headers.
        unsafe { core::ptr::read_volatile(&raw const (*st).scan) }
    }
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

/// One step: one map lookup finds both the payload and the state.
#[inline(never)]
unsafe extern "C" fn header_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: a live per-CPU map value, owned by this scan until it returns.
    let sc = unsafe { &mut *sc };
    let window = Window { buf: &raw const sc.payload, len: sc.header.len };
    if sc.header.scan.step(&window, index as usize) { 0 } else { 1 }
}

#[inline(never)]
unsafe extern "C" fn user_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: as in header_step.
    let sc = unsafe { &mut *sc };
    let window = Window { buf: &raw const sc.payload, len: sc.user.len };
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
#[expect(clippy::too_many_arguments, reason = "one plain record for the next stages")]
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
    if len > SIP_WINDOW {
        len = SIP_WINDOW;
    }
    // Same value for 1..=SIP_WINDOW, but in a form whose range the verifier
    // can see is never 0 (the helper rejects zero-sized copies).
    let len = ((len - 1) & (SIP_WINDOW - 1)) + 1;
    let (Some(scratch), Some(sc)) = (SCRATCH.get_ptr_mut(0), SIP_CTX.get_ptr_mut(0)) else { return false };
    // SAFETY: a live per-CPU map value.
    let buf = unsafe { &raw mut (*scratch).payload };
    if !ctx.load(off, buf.cast(), len) {
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
            _reserved: [0; 1],
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

const AUTH: u8 = 0;
const INTL: u8 = 1;

/// Whether `addr` is under an active restriction of `kind`. Like the
/// blocklist, an expired (or other-kind) narrow entry does not hide an
/// active broader one.
#[inline(always)]
fn restricted(addr: &AddrKey, kind: u8, now: u64) -> bool {
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
    // Credentials in any request matter only for an auth-suspended source.
    let auth_any = sc.responses_only == 0
        && sc.allowlisted == 0
        && restricted(&sc.src, AUTH, unsafe { bpf_ktime_get_ns() });
    // SAFETY: per-CPU map value from a successful lookup.
    unsafe { *slot = sip::parse_with(&Window { buf, len }, auth_any) };
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

/// The final verdict of a SIP request: the first program's, unless a SIP
/// restriction applies. Allowlisted sources and emergency calls are never
/// restricted; a packet already dropped stays dropped.
#[inline(always)]
fn restrict(sc: &SipContext, s: &sip::SipSummary, class: u8, cc: u16) -> (i32, u32) {
    let staged = (sc.action, sc.code);
    if sc.code == NO_VERDICT
        || sc.action != xdp_action::XDP_PASS as i32
        || sc.allowlisted != 0
        || s.kind != kind::REQUEST
        || class == class::EMERGENCY
    {
        return staged;
    }
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

#[inline(always)]
fn request<C: EbpfContext>(ctx: &C, src: &AddrKey, s: &sip::SipSummary, class: u8, cc: u16, cfg: &Config) {
    stat(sip_stat::REQUEST_BASE + s.method as u32);
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(e) = source(src, now, cfg) else { return };
    match s.method {
        method::REGISTER => {
            if s.has_auth {
                stat(sip_stat::REGISTER_WITH_AUTH);
                add64(unsafe { &raw mut (*e).register_auth });
            } else {
                add64(unsafe { &raw mut (*e).register_noauth });
                add32(unsafe { &raw mut (*e).win_register_noauth });
            }
        }
        method::INVITE => {
            stat(sip_stat::INVITE_CLASS_BASE + class as u32);
            add64(unsafe { &raw mut (*e).invites });
            if class == class::INTERNATIONAL {
                add64(unsafe { &raw mut (*e).intl_invites });
                add32(unsafe { &raw mut (*e).win_intl_invites });
                if let Some(slot) = COUNTRY_INVITES.get_ptr_mut(cc as u32) {
                    // SAFETY: per-CPU slot from a successful lookup.
                    unsafe { *slot += 1 };
                }
                country_window(ctx, src, cc, cfg, now);
            } else if class == class::EMERGENCY {
                add64(unsafe { &raw mut (*e).emergency_invites });
            }
        }
        _ => return,
    }
    check_thresholds(ctx, e, src, cfg, now);
}

#[inline(always)]
fn response<C: EbpfContext>(ctx: &C, dst: &AddrKey, s: &sip::SipSummary, cfg: &Config) {
    if s.cseq_method != method::REGISTER {
        stat(sip_stat::RESPONSE_OTHER);
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    match s.status {
        401 | 407 => stat(sip_stat::RESPONSE_REGISTER_CHALLENGE),
        403 => stat(sip_stat::RESPONSE_REGISTER_FORBIDDEN),
        200..=299 => stat(sip_stat::RESPONSE_REGISTER_OK),
        _ => {
            stat(sip_stat::RESPONSE_REGISTER_OTHER);
            return;
        }
    }
    // A response counts against the client it is sent to.
    let Some(e) = source(dst, now, cfg) else { return };
    match s.status {
        401 | 407 => {
            add64(unsafe { &raw mut (*e).register_challenged });
            add32(unsafe { &raw mut (*e).win_register_rejected });
        }
        403 => {
            add64(unsafe { &raw mut (*e).register_forbidden });
            add32(unsafe { &raw mut (*e).win_register_rejected });
        }
        _ => add64(unsafe { &raw mut (*e).register_ok }),
    }
    check_thresholds(ctx, e, dst, cfg, now);
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
            (*e).win_register_noauth = 0;
            (*e).win_register_rejected = 0;
            (*e).win_intl_invites = 0;
            (*e).win_events = 0;
        }
    }
    Some(e)
}

#[inline(always)]
fn check_thresholds<C: EbpfContext>(ctx: &C, e: *mut SourceStats, addr: &AddrKey, cfg: &Config, now: u64) {
    // SAFETY: e points into a live map value.
    let st = unsafe { &mut *e };
    let fails = st.window_auth_failures();
    if cfg.auth_failure_threshold != 0
        && fails >= cfg.auth_failure_threshold
        && st.win_events & EVENT_AUTH_FAILURES == 0
    {
        st.win_events |= EVENT_AUTH_FAILURES;
        let threshold = cfg.auth_failure_threshold;
        let event = Emit { kind: EVENT_AUTH_FAILURES, count: fails, threshold, cc: 0, sources: 0 };
        emit(ctx, addr, &event, st.window_start_ns, now);
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
            .map(|b| unsafe { (*b).threshold })
            .filter(|t| *t > cfg.intl_invite_threshold)
            .unwrap_or(cfg.intl_invite_threshold);
        if intl >= threshold {
            st.win_events |= EVENT_INTL_INVITES;
            let event = Emit { kind: EVENT_INTL_INVITES, count: intl, threshold, cc: 0, sources: 0 };
            emit(ctx, addr, &event, st.window_start_ns, now);
        }
    }
}

/// Counts an international INVITE to `cc` from `src` in the country's
/// window, and reports the country once per window when the count reaches
/// its threshold with enough distinct sources.
#[inline(always)]
fn country_window<C: EbpfContext>(ctx: &C, src: &AddrKey, cc: u16, cfg: &Config, now: u64) {
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
    add32(&raw mut w.count);
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
        let event = Emit { kind: EVENT_COUNTRY_INVITES, count, threshold, cc, sources: sources as u16 };
        emit(ctx, &[0; 16], &event, w.window_start_ns, now);
    }
}

/// What a threshold event reports, besides where and when.
struct Emit {
    kind: u32,
    count: u32,
    threshold: u32,
    cc: u16,
    sources: u16,
}

#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, addr: &AddrKey, e: &Emit, window_start_ns: u64, at_ns: u64) {
    let event = ThresholdEvent {
        addr: *addr,
        kind: e.kind,
        count: e.count,
        window_start_ns,
        at_ns,
        threshold: e.threshold,
        cc: e.cc,
        sources: e.sources,
    };
    if EVENTS.output::<ThresholdEvent>(&event, 0).is_err() {
        stat(sip_stat::EVENTS_LOST);
        warn!(ctx, "threshold event lost: the agent is not draining the ring buffer");
    }
}

#[inline(always)]
fn stat(index: u32) {
    if let Some(c) = SIP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add64(p: *mut u64) {
    // SAFETY: p points into a live map value, 8-byte aligned (repr(C)).
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(p, 1) };
}

#[inline(always)]
fn add32(p: *mut u32) {
    // SAFETY: p points into a live map value, 4-byte aligned (repr(C)).
    unsafe { atomic_xadd::<u32, u32, { Relaxed }>(p, 1) };
}
