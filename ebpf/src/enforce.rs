//! The allowlist/blocklist verdict of every packet the XDP program sees,
//! and its counter.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use tollgate_common::{
    AddrKey, CONFIG_BLOCK_ALL_PORTS, Config, IdentityKey, MAX_BLOCK_LENGTHS, MAX_NESTED_BLOCKS, addr_words,
    masked_key,
    packet::{Headers, ParseError, Ports, Transport, parse_headers},
    port_key, source_family, verdict,
};

use crate::{
    maps::{ALLOWLIST, BLOCK_EXACT, BLOCK_LENGTHS, BLOCK_SCAN, BLOCKLIST, CONFIG, SIP_PORTS, STATS},
    sip::View,
};

const DEFAULT_CONFIG: Config = Config {
    flags: 0,
    auth_failure_threshold: 0,
    window_ns: 0,
    intl_invite_threshold: 0,
    country_invite_threshold: 0,
    country_min_sources: 0,
    nonce_horizon_s: 0,
    success_horizon_s: 0,
    _reserved: 0,
    identity_key: IdentityKey { k0: 0, k1: 0 },
};

/// The verdict, its counter, and the headers of a SIP-port packet.
#[inline(always)]
pub(crate) fn evaluate(ctx: &XdpContext) -> (u32, u32, Option<(Headers, Ports)>) {
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
    match blocked_by_length(&h.src).unwrap_or_else(|| blocked_in_trie(&mut key, &h.src)) {
        Lookup::Active => return (xdp_action::XDP_DROP, verdict::DROP_BLOCKLIST),
        Lookup::Expired => return (PASS, verdict::PASS_EXPIRED),
        Lookup::Unlisted => {}
    }
    if is_sip { (PASS, verdict::PASS_SIP) } else { (PASS, verdict::PASS_NOT_SIP) }
}

/// What the blocklist holds for a source.
enum Lookup {
    Active,
    /// Only entries that have expired.
    Expired,
    Unlisted,
}

/// The source looked up once per prefix length the blocklist holds for
/// its family, longest first, in BLOCK_EXACT: a hash lookup per length (one
/// for a typical feed) rather than a trie walk of one node per bit, so a
/// flood from many sources costs no more than one from a few. The lengths
/// are walked by `bpf_loop` in [`length_step`], which the verifier checks
/// once rather than once per length (6.1's verifier took 66,000 more
/// instructions for the loop written out). None: the agent has not
/// indexed the blocklist by length (starting up, or more lengths than
/// BLOCK_LENGTHS holds): the trie answers.
#[inline(always)]
fn blocked_by_length(src: &AddrKey) -> Option<Lookup> {
    let active = BLOCK_LENGTHS.get(0)?.active;
    if active == 0 {
        return None;
    }
    let words = addr_words(src);
    let family = source_family(&words);
    let count = BLOCK_LENGTHS.get(active)?.lists.get(family)?.count;
    let st = BLOCK_SCAN.get_ptr_mut(0)?;
    // SAFETY: a live per-CPU map value, this program's until it returns.
    unsafe {
        (*st).words = words;
        (*st).active = active;
        (*st).family = family as u32;
        (*st).found = FOUND_NONE;
    }
    // SAFETY: length_step reads and writes only BLOCK_SCAN's per-CPU value
    // and looks up maps; no context pointer is passed.
    unsafe {
        bpf_loop(count.min(MAX_BLOCK_LENGTHS as u32), length_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    // SAFETY: as above.
    Some(match unsafe { core::ptr::read_volatile(&raw const (*st).found) } {
        FOUND_ACTIVE => Lookup::Active,
        FOUND_EXPIRED => Lookup::Expired,
        _ => Lookup::Unlisted,
    })
}

/// What [`length_step`] found.
const FOUND_NONE: u32 = 0;
const FOUND_EXPIRED: u32 = 1;
const FOUND_ACTIVE: u32 = 2;

/// One prefix length of [`blocked_by_length`]'s walk (its `index`-th of the
/// source's family): 1 (stop) once an active entry is found.
///
/// # Safety
///
/// Called by `bpf_loop` only, from [`blocked_by_length`], which set
/// BLOCK_SCAN's value up.
#[inline(never)]
unsafe extern "C" fn length_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(st) = BLOCK_SCAN.get_ptr_mut(0) else { return 1 };
    // SAFETY: a live per-CPU map value, owned by this walk until it returns.
    let st = unsafe { &mut *st };
    let Some(lengths) = BLOCK_LENGTHS.get(st.active) else { return 1 };
    let Some(list) = lengths.lists.get(st.family as usize) else { return 1 };
    let i = index as usize;
    if i >= MAX_BLOCK_LENGTHS {
        return 1;
    }
    let key = masked_key(&st.words, list.lens[i], &list.masks[i]);
    // SAFETY: the value is plain data, read before any update could free it.
    let Some(entry) = (unsafe { BLOCK_EXACT.get(&key) }) else { return 0 };
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    if entry.is_active(unsafe { bpf_ktime_get_ns() }) {
        st.found = FOUND_ACTIVE;
        return 1;
    }
    // Expired: a broader entry enclosing it may still be active.
    st.found = FOUND_EXPIRED;
    0
}

/// The state of [`blocked_by_length`]'s walk, per CPU (BLOCK_SCAN).
#[repr(C)]
pub(crate) struct BlockScan {
    words: [u64; 2],
    active: u32,
    family: u32,
    found: u32,
    _pad: u32,
}

/// The source looked up in the trie: its longest match, and past expired
/// entries the broader ones enclosing them.
#[inline(always)]
fn blocked_in_trie(key: &mut Key<AddrKey>, src: &AddrKey) -> Lookup {
    let mut expired = false;
    for _ in 0..MAX_NESTED_BLOCKS {
        let Some(entry) = BLOCKLIST.get(&*key) else { break };
        // Read the clock only when an entry matches.
        // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
        if entry.is_active(unsafe { bpf_ktime_get_ns() }) {
            return Lookup::Active;
        }
        expired = true;
        if entry.prefix_len == 0 {
            break;
        }
        *key = Key::new(entry.prefix_len - 1, *src);
    }
    if expired { Lookup::Expired } else { Lookup::Unlisted }
}

#[inline(always)]
pub(crate) fn is_sip_port(proto: u8, port: u16) -> bool {
    // SAFETY: the value is a plain u8 and is only checked for presence.
    unsafe { SIP_PORTS.get(port_key(proto, port)) }.is_some()
}

/// Counts a packet under its verdict `code`.
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

/// Counts the final action of an XDP packet under its interface, if the
/// agent asked for that interface (IFACE_STATS).
#[inline(always)]
pub(crate) fn count_iface(ctx: &aya_ebpf::programs::XdpContext, action: u32) {
    // SAFETY: the context's xdp_md, valid for the program's run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let key = tollgate_common::iface_key(ifindex, action == aya_ebpf::bindings::xdp_action::XDP_DROP);
    if let Some(c) = crate::maps::IFACE_STATS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value from a successful lookup.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
}
