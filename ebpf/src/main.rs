//! tollgate's kernel programs.
//!
//! `tollgate` (XDP, ingress): drops traffic from blocklisted source addresses
//! on SIP ports (or on every port), never drops allowlisted sources, counts
//! every packet under exactly one verdict, and counts SIP per source and per
//! destination country. `tollgate_egress` (TC classifier): counts the SIP
//! responses a local registrar sends, never drops.
//!
//! Both fail open: anything they cannot parse is passed and counted, never
//! dropped or aborted. Parsing lives in `tollgate-common`, shared with the
//! host's tests.
#![no_std]
#![no_main]
// Atomic adds on shared map values (BPF_ATOMIC); the BPF target's core has
// no fetch_add, and this crate is built with nightly anyway.
#![expect(internal_features, reason = "atomic_xadd is unstable")]
#![feature(core_intrinsics)]

mod observe;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, ProgramArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use tollgate_common::{
    ALLOWLIST_CAPACITY, AddrKey, AllowEntry, BLOCKLIST_CAPACITY, BlockEntry, CONFIG_BLOCK_ALL_PORTS, Config,
    Counter, JUMP_COUNT, JUMP_PARSE, MAX_NESTED_BLOCKS, SIP_PORTS_CAPACITY,
    packet::{Headers, MAX_HEADER_OFFSET, PacketView, ParseError, Ports, Transport, parse_headers},
    port_key, verdict,
};

#[map]
static BLOCKLIST: LpmTrie<AddrKey, BlockEntry> =
    LpmTrie::with_max_entries(BLOCKLIST_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
static ALLOWLIST: LpmTrie<AddrKey, AllowEntry> =
    LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
static SIP_PORTS: HashMap<u32, u8> = HashMap::with_max_entries(SIP_PORTS_CAPACITY, 0);

#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Tail-call targets: SIP parsing and counting, each verified on its own.
#[map]
static JUMP_XDP: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[map]
static JUMP_TC: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(verdict::COUNT, 0);

/// Direct access to the linear part of a packet, with the bounds checks the
/// verifier wants to see before every access.
pub(crate) trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Bytes of the whole packet (may exceed `data_end - data`).
    fn total_len(&self) -> usize;
    /// Copies `len` bytes at `off` into `dst` with the program type's helper.
    fn load(&self, off: usize, dst: *mut u8, len: usize) -> bool;
}

impl Packet for XdpContext {
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    fn total_len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
    #[inline(always)]
    fn load(&self, off: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: dst points to at least `len` writable bytes (checked by the
        // verifier against the map value size).
        unsafe {
            aya_ebpf::helpers::generated::bpf_xdp_load_bytes(self.ctx, off as u32, dst.cast(), len as u32)
                == 0
        }
    }
}

impl Packet for TcContext {
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    fn total_len(&self) -> usize {
        self.len() as usize
    }
    #[inline(always)]
    fn load(&self, off: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: as above.
        unsafe {
            aya_ebpf::helpers::generated::bpf_skb_load_bytes(
                self.skb.skb.cast(),
                off as u32,
                dst.cast(),
                len as u32,
            ) == 0
        }
    }
}

struct View<'a, P: Packet>(&'a P);

impl<P: Packet> PacketView for View<'_, P> {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // Bounding the offset first lets the verifier track its range.
        if off > MAX_HEADER_OFFSET {
            return None;
        }
        let start = self.0.data();
        let end = self.0.data_end();
        if start + off + N > end {
            return None;
        }
        // SAFETY: [start + off, start + off + N) was just checked to lie
        // inside the packet; [u8; N] has alignment 1.
        Some(unsafe { core::ptr::read((start + off) as *const [u8; N]) })
    }
}

#[xdp]
pub fn tollgate(ctx: XdpContext) -> u32 {
    let (action, code, sip) = evaluate(&ctx);
    let bytes = (ctx.data_end() - ctx.data()) as u32;
    if let Some((h, p)) = sip
        && observe::stage(&ctx, &h, &p, action as i32, code, bytes, false)
    {
        // Does not return on success: the count stage decides the final
        // verdict (SIP restrictions) and counts it. If the tail call fails
        // (no agent has filled the table yet), the verdict stands.
        unsafe { JUMP_XDP.tail_call(&ctx, JUMP_PARSE) };
    }
    count(code, bytes as u64);
    action
}

#[xdp]
pub fn tollgate_sip_parse(ctx: XdpContext) -> u32 {
    observe::parse_stage();
    unsafe { JUMP_XDP.tail_call(&ctx, JUMP_COUNT) };
    observe::staged_verdict() as u32
}

#[xdp]
pub fn tollgate_sip_count(ctx: XdpContext) -> u32 {
    observe::count_stage(&ctx) as u32
}

/// Counts the SIP a local registrar sends (responses to its clients) on
/// egress. Never drops: enforcement happens on ingress in XDP. Every TC
/// program here returns TC_ACT_UNSPEC ("no opinion"): TC_ACT_OK would end
/// the egress chain and skip whatever other programs or filters the host
/// runs after the counter (TCX and classic tc alike).
#[classifier]
pub fn tollgate_egress(ctx: TcContext) -> i32 {
    if let Ok(h) = parse_headers(&View(&ctx))
        && let Transport::Ports(p) = h.transport
        && (is_sip_port(p.proto, p.src_port) || is_sip_port(p.proto, p.dst_port))
        && observe::stage(&ctx, &h, &p, TC_ACT_UNSPEC, tollgate_common::NO_VERDICT, 0, true)
    {
        unsafe { JUMP_TC.tail_call(&ctx, JUMP_PARSE) };
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tollgate_sip_parse_tc(ctx: TcContext) -> i32 {
    observe::parse_stage();
    unsafe { JUMP_TC.tail_call(&ctx, JUMP_COUNT) };
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tollgate_sip_count_tc(ctx: TcContext) -> i32 {
    observe::count_stage(&ctx);
    TC_ACT_UNSPEC
}

/// The baseline for benchmarks: the cheapest possible XDP program.
#[xdp]
pub fn tollgate_baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

const DEFAULT_CONFIG: Config = Config {
    flags: 0,
    auth_failure_threshold: 0,
    window_ns: 0,
    intl_invite_threshold: 0,
    country_invite_threshold: 0,
    country_min_sources: 0,
    _reserved: 0,
};

/// The verdict, its counter, and the headers of a SIP-port packet.
#[inline(always)]
fn evaluate(ctx: &XdpContext) -> (u32, u32, Option<(Headers, Ports)>) {
    const PASS: u32 = xdp_action::XDP_PASS;
    let h: Headers = match parse_headers(&View(ctx)) {
        Ok(h) => h,
        Err(ParseError::NotIp) => return (PASS, verdict::PASS_NOT_IP, None),
        Err(ParseError::Malformed) => return (PASS, verdict::PASS_MALFORMED, None),
    };
    let cfg = CONFIG.get(0).unwrap_or(&DEFAULT_CONFIG);
    let (is_sip, sip) = match h.transport {
        Transport::Ports(p) => {
            let sip = is_sip_port(p.proto, p.dst_port) || is_sip_port(p.proto, p.src_port);
            (sip, if sip { Some((h, p)) } else { None })
        }
        // The port is unknown: a blocked source must not slip through.
        Transport::Opaque => (true, None),
        Transport::Other(_) | Transport::Fragment => (false, None),
    };
    if !is_sip && cfg.flags & CONFIG_BLOCK_ALL_PORTS == 0 {
        return (PASS, verdict::PASS_NOT_SIP, None);
    }
    let (action, code) = enforce(&h, is_sip);
    (action, code, sip)
}

#[inline(always)]
fn enforce(h: &Headers, is_sip: bool) -> (u32, u32) {
    const PASS: u32 = xdp_action::XDP_PASS;
    let mut key = Key::new(128, h.src);
    if ALLOWLIST.get(&key).is_some() {
        return (PASS, verdict::PASS_ALLOWLISTED);
    }
    let mut expired = false;
    for _ in 0..MAX_NESTED_BLOCKS {
        let Some(entry) = BLOCKLIST.get(&key) else { break };
        // Read the clock only when an entry matches.
        if entry.is_active(unsafe { bpf_ktime_get_ns() }) {
            return (xdp_action::XDP_DROP, verdict::DROP_BLOCKLIST);
        }
        // Expired: a broader entry enclosing it may still be active.
        expired = true;
        if entry.prefix_len == 0 {
            break;
        }
        key = Key::new(entry.prefix_len - 1, h.src);
    }
    if expired {
        return (PASS, verdict::PASS_EXPIRED);
    }
    if is_sip { (PASS, verdict::PASS_SIP) } else { (PASS, verdict::PASS_NOT_SIP) }
}

#[inline(always)]
fn is_sip_port(proto: u8, port: u16) -> bool {
    // SAFETY: the value is a plain u8 and is only checked for presence.
    unsafe { SIP_PORTS.get(port_key(proto, port)) }.is_some()
}

#[inline(always)]
pub(crate) fn count(code: u32, bytes: u64) {
    if let Some(c) = STATS.get_ptr_mut(code) {
        // SAFETY: per-CPU slot, so no other program instance writes it
        // concurrently; the pointer comes from a successful lookup.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
