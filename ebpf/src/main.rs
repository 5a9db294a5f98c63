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
//!
//! This file holds the entry points only. The rest, one concern per module:
//! - [`maps`]: every map;
//! - [`enforce`]: the allowlist/blocklist verdict of every packet;
//! - [`restrict`]: the SIP restrictions, the final verdict of a SIP request;
//! - [`sip`]: packet and payload access; [`sip::stages`], the SIP stages
//!   joined by tail calls; [`sip::counters`], the SIP counters and threshold
//!   events.
#![no_std]
#![no_main]
// Atomic adds on shared map values (BPF_ATOMIC); the BPF target's core has
// no fetch_add, and this crate is built with nightly anyway.
#![expect(internal_features, reason = "atomic_xadd is unstable")]
#![feature(core_intrinsics)]

mod enforce;
mod maps;
mod restrict;
mod sip;

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use tollgate_common::{
    AddrKey, JUMP_COUNT, JUMP_PARSE,
    packet::{ETH_P_IPV4, ETH_P_IPV6, Transport, parse_headers},
    v4_mapped, verdict,
};

use crate::{
    enforce::{count, count_iface, evaluate, is_sip_port},
    maps::{BLOCKLIST, JUMP_TC, JUMP_XDP},
    sip::{View, stages},
};

#[xdp]
pub fn tollgate(ctx: XdpContext) -> u32 {
    let (action, code, sip) = evaluate(&ctx);
    let bytes = (ctx.data_end() - ctx.data()) as u32;
    // A blocked source (--block, an operator's block, a feed) is dropped
    // here, before any SIP is read: nothing it sends can change a decision,
    // and a flood of it costs no more than the lookups (README, "What is
    // dropped"). Suspended sources go on: their requests are evidence.
    if code != verdict::DROP_BLOCKLIST
        && let Some((h, p)) = sip
        && stages::stage(&ctx, &h, &p, action as i32, code, bytes, false)
    {
        // Does not return on success: the count stage decides the final
        // verdict (SIP restrictions) and counts it. If the tail call fails
        // (no agent has filled the table yet), the verdict stands.
        // SAFETY: a tail call into a program array of this program's type.
        unsafe { JUMP_XDP.tail_call(&ctx, JUMP_PARSE) };
    }
    count(code, bytes as u64);
    count_iface(&ctx, action);
    action
}

#[xdp]
pub fn tollgate_sip_parse(ctx: XdpContext) -> u32 {
    stages::parse_stage();
    // SAFETY: as in tollgate; on failure the staged verdict stands.
    unsafe { JUMP_XDP.tail_call(&ctx, JUMP_COUNT) };
    let action = stages::staged_verdict() as u32;
    count_iface(&ctx, action);
    action
}

#[xdp]
pub fn tollgate_sip_count(ctx: XdpContext) -> u32 {
    let (action, more) = stages::count_stage();
    if more {
        // The next message of the TCP segment: parse it, then back here.
        // SAFETY: a tail call into a program array of this program's type.
        unsafe { JUMP_XDP.tail_call(&ctx, JUMP_PARSE) };
        // The chain ended early: the verdict so far stands.
        let action = stages::finish(action, stages::staged_code()) as u32;
        count_iface(&ctx, action);
        return action;
    }
    count_iface(&ctx, action as u32);
    action as u32
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
        && stages::stage(&ctx, &h, &p, TC_ACT_UNSPEC, tollgate_common::NO_VERDICT, 0, true)
    {
        // SAFETY: a tail call into a program array of this program's type.
        unsafe { JUMP_TC.tail_call(&ctx, JUMP_PARSE) };
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tollgate_sip_parse_tc(ctx: TcContext) -> i32 {
    stages::parse_stage();
    // SAFETY: as in tollgate_egress.
    unsafe { JUMP_TC.tail_call(&ctx, JUMP_COUNT) };
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tollgate_sip_count_tc(ctx: TcContext) -> i32 {
    if stages::count_stage().1 {
        // SAFETY: as in tollgate_egress.
        unsafe { JUMP_TC.tail_call(&ctx, JUMP_PARSE) };
    }
    TC_ACT_UNSPEC
}

/// The baseline for benchmarks: the cheapest possible XDP program.
#[xdp]
pub fn tollgate_baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The other benchmark reference: the cheapest static drop, as
/// `xdp-filter` does one. Untagged Ethernet, the IPv4 or IPv6 source looked
/// up in the same BLOCKLIST trie (whatever a benchmark filled it with),
/// dropped if any entry covers it. No ports, allowlist, expiry or counters:
/// what tollgate's blocklisted-source drop is compared with. The agent
/// never loads it.
#[xdp]
pub fn tollgate_static_drop(ctx: XdpContext) -> u32 {
    const ETH: usize = 14;
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: every read below is inside [start, end), checked just before.
    let ether_type = unsafe { u16::from_be_bytes(*((start + 12) as *const [u8; 2])) };
    let src: AddrKey = if ether_type == ETH_P_IPV4 {
        if start + ETH + 20 > end {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: the IPv4 header's first 20 bytes were checked above.
        v4_mapped(unsafe { *((start + ETH + 12) as *const [u8; 4]) })
    } else if ether_type == ETH_P_IPV6 {
        if start + ETH + 40 > end {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: the IPv6 header's 40 bytes were checked above.
        unsafe { *((start + ETH + 8) as *const [u8; 16]) }
    } else {
        return xdp_action::XDP_PASS;
    };
    if BLOCKLIST.get(&Key::new(128, src)).is_some() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
