//! tollgate's XDP program: drops traffic from blocklisted source addresses on
//! SIP ports (or on every port), never drops allowlisted sources, and counts
//! every packet under exactly one verdict.
//!
//! It fails open: anything it cannot parse is passed and counted as
//! malformed, never dropped or aborted.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::error;
use tollgate_common::{
    ALLOWLIST_CAPACITY, AddrKey, AllowEntry, BLOCKLIST_CAPACITY, BlockEntry, CONFIG_BLOCK_ALL_PORTS, Config,
    Counter, MAX_NESTED_BLOCKS, SIP_PORTS_CAPACITY,
    packet::{MAX_HEADER_OFFSET, PacketView, ParseError, Transport, parse_headers},
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
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(verdict::COUNT, 0);

/// The packet bytes of an XDP context, with the bounds checks the verifier
/// wants to see before every access.
struct XdpPacket<'a>(&'a XdpContext);

impl PacketView for XdpPacket<'_> {
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
    let (action, code) = evaluate(&ctx);
    count(code, (ctx.data_end() - ctx.data()) as u64);
    action
}

/// The baseline for benchmarks: the cheapest possible XDP program.
#[xdp]
pub fn tollgate_baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn evaluate(ctx: &XdpContext) -> (u32, u32) {
    const PASS: u32 = xdp_action::XDP_PASS;
    let headers = match parse_headers(&XdpPacket(ctx)) {
        Ok(h) => h,
        Err(ParseError::NotIp) => return (PASS, verdict::PASS_NOT_IP),
        Err(ParseError::Malformed) => return (PASS, verdict::PASS_MALFORMED),
    };
    let is_sip = match headers.transport {
        Transport::Ports(p) => is_sip_port(p.proto, p.dst_port) || is_sip_port(p.proto, p.src_port),
        // The port is unknown: a blocked source must not slip through.
        Transport::Opaque => true,
        Transport::Other(_) | Transport::Fragment => false,
    };
    if !is_sip && !block_all_ports(ctx) {
        return (PASS, verdict::PASS_NOT_SIP);
    }
    let mut key = Key::new(128, headers.src);
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
        key = Key::new(entry.prefix_len - 1, headers.src);
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
fn block_all_ports(ctx: &XdpContext) -> bool {
    match CONFIG.get(0) {
        Some(c) => c.flags & CONFIG_BLOCK_ALL_PORTS != 0,
        None => {
            // Impossible for a one-element array; logged because it would
            // mean the object and the agent disagree about the maps.
            error!(ctx, "CONFIG map has no element 0");
            false
        }
    }
}

#[inline(always)]
fn count(code: u32, bytes: u64) {
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
