//! Record layouts: the `#[repr(C)]` keys and values the kernel and the
//! agent read and write through the maps. Their sizes are asserted below.

// Intra-doc links name items of the other abi files.
#[cfg(doc)]
#[allow(unused_imports)]
use super::*;

/// What the first program hands the SIP stages (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SipContext {
    pub src: AddrKey,
    pub dst: AddrKey,
    /// Bytes of payload copied into the scratch buffer (1..=SIP_WINDOW).
    pub len: u32,
    /// What the stages must return (the enforcement verdict).
    pub action: i32,
    pub proto: u8,
    /// Egress: only responses are counted.
    pub responses_only: u8,
    /// The source is allowlisted: no restriction may apply.
    pub allowlisted: u8,
    /// The payload was longer than the copied window: something could lie
    /// beyond what was read (only a restricted source pays for that).
    pub truncated: u8,
    /// Verdict code to count ([`verdict`]), or [`NO_VERDICT`] (egress).
    pub code: u32,
    /// Frame bytes, for the verdict counter.
    pub bytes: u32,
    /// Where in the payload the message being parsed starts (a TCP segment
    /// may hold several), and how many came before it.
    pub base: u32,
    pub msgs: u32,
    /// The SIP restrictions on the source (bits: 1 auth-suspend, 2
    /// intl-suspend), looked up once by the parse stage.
    pub restricted: u8,
    /// A restricted identity's request from the source was dropped within
    /// the nonce horizon (1), looked up once by the parse stage: its
    /// packets are swept, and what could hide credentials fails closed.
    pub marked: u8,
    pub _pad16: u16,
    /// When the packet arrived (CLOCK_MONOTONIC ns), read once by the
    /// first program: every stage judges expiries against the same time.
    pub now_ns: u64,
}

/// Most SIP messages of one TCP segment parsed and counted (two tail calls
/// each, of the kernel's 33).
pub const MAX_MESSAGES: u32 = 8;

/// SIP restrictions on one source prefix, each with its own expiry
/// (CLOCK_MONOTONIC ns; 0 = not restricted in that way). Every restriction
/// is temporary: the kernel stops applying it at its expiry by itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Restriction {
    /// auth-suspend: REGISTER and requests carrying credentials are dropped.
    pub auth_until_ns: u64,
    /// intl-suspend: INVITEs to international numbers are dropped.
    pub intl_until_ns: u64,
    /// The LPM prefix length of this entry (see [`BlockEntry::prefix_len`]).
    pub prefix_len: u32,
    pub _reserved: u32,
}

/// A learned normal ("peacetime") level and the reporting threshold made
/// from it. Kept in pinned maps, so a restarted agent goes on from what the
/// last one learned. The kernel reads only `threshold`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Baseline {
    /// Windowed count at which the kernel reports (0: the global ceiling).
    pub threshold: u32,
    /// Windows the level was learned from.
    pub windows: u32,
    /// The learned level: events per window, in thousandths.
    pub peacetime_milli: u64,
}

/// One country's current counting window (international INVITEs to it from
/// every source), kept by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CountryWindow {
    pub window_start_ns: u64,
    pub count: u32,
    /// `EVENT_*` bits already emitted in this window.
    pub events: u32,
    /// One bit per bucket of [`source_bucket`]: the number of bits set is a
    /// lower bound of the distinct source addresses in the window (two
    /// sources may share a bucket, never one source two buckets), so a
    /// surge is never judged to come from more sources than it does.
    pub sources: [u64; 2],
}

/// A restriction on international INVITEs to one country code, from every
/// source. Kept with its origin and start so that a restarted agent applies
/// the same rules to it (an automatic one stays bounded by its maximum and
/// is lifted when the surge ends; an operator's is left as set).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CountryRestriction {
    /// CLOCK_MONOTONIC ns until which it applies (0: not restricted).
    pub until_ns: u64,
    pub imposed_at_ns: u64,
    /// [`reason::OPERATOR`] or [`reason::COUNTRY_SURGE`].
    pub reason: u32,
    pub _reserved: u32,
}

/// IPv6 address bytes, or an IPv4 address mapped into `::ffff:0:0/96`, so one
/// LPM lookup serves both families.
pub type AddrKey = [u8; 16];

/// Prefix length of the IPv4-mapped range: an IPv4 `/n` is stored as `/96+n`.
pub const V4_MAPPED_PREFIX_LEN: u32 = 96;

/// Maps an IPv4 address (network byte order octets) into an [`AddrKey`].
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> AddrKey {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

/// Returns the IPv4 octets if `key` is an IPv4-mapped address.
pub fn v4_unmapped(key: &AddrKey) -> Option<[u8; 4]> {
    if key[..10].iter().all(|b| *b == 0) && key[10] == 0xff && key[11] == 0xff {
        Some([key[12], key[13], key[14], key[15]])
    } else {
        None
    }
}

/// A blocklist entry.
///
/// `expires_at_ns` is compared in the kernel with `bpf_ktime_get_ns()`
/// (CLOCK_MONOTONIC), so a block lapses on time even when no agent is running.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// CLOCK_MONOTONIC nanoseconds after which the entry no longer drops;
    /// [`NO_EXPIRY`] means it never lapses by itself.
    pub expires_at_ns: u64,
    /// Why the entry exists (one of [`reason`]).
    pub reason: u32,
    /// The LPM prefix length of this entry's key. When an entry has expired
    /// the kernel looks up the next shorter prefix with it, so an expired
    /// narrow entry never shadows a broader active one.
    pub prefix_len: u32,
}

pub const NO_EXPIRY: u64 = 0;

/// How many nested blocklist entries the kernel walks past expired ones.
pub const MAX_NESTED_BLOCKS: usize = 4;

impl BlockEntry {
    /// Whether the entry still drops at `now_ns` (CLOCK_MONOTONIC).
    #[inline(always)]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        self.expires_at_ns == NO_EXPIRY || now_ns < self.expires_at_ns
    }
}

/// The key of a blocklist entry in [`MAP_BLOCK_EXACT`]: its address masked
/// to its prefix length (the [`AddrKey`]'s bytes, as two words in memory
/// order), and the length (of the [`AddrKey`], so IPv4 lengths are 96
/// more). The kernel looks a source up once per prefix length the
/// blocklist holds ([`BlockLengths`]): a hash lookup or two instead of a
/// trie walk of one node per bit. `_pad` is zero, so equal keys hash equal.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BlockKey {
    pub addr: [u64; 2],
    pub prefix_len: u32,
    pub _pad: u32,
}

/// An [`AddrKey`] as two words in memory order (what [`BlockKey`] holds).
#[inline(always)]
pub fn addr_words(a: &AddrKey) -> [u64; 2] {
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

/// The mask of a prefix length (129 and more: all of it) over
/// [`addr_words`]: the first `prefix_len` bits of the address set.
pub fn prefix_mask(prefix_len: u32) -> [u64; 2] {
    let bits = |n: u32| -> u64 {
        match n {
            0 => 0,
            1..=63 => (u64::MAX << (64 - n)).to_be(),
            _ => u64::MAX,
        }
    };
    [bits(prefix_len.min(64)), bits(prefix_len.saturating_sub(64).min(64))]
}

/// The [`BlockKey`] of `words` (an address's [`addr_words`]) at a prefix
/// length whose [`prefix_mask`] is `mask`: no branches, so the kernel's
/// loop over lengths stays small for the verifier. Shared by the kernel
/// (masks from [`BlockLengths`]) and the agent ([`block_key`]).
#[inline(always)]
pub fn masked_key(words: &[u64; 2], prefix_len: u32, mask: &[u64; 2]) -> BlockKey {
    BlockKey { addr: [words[0] & mask[0], words[1] & mask[1]], prefix_len, _pad: 0 }
}

/// `addr` masked to its first `prefix_len` bits (at most 128), as the
/// [`BlockKey`] of that length.
pub fn block_key(addr: &AddrKey, prefix_len: u32) -> BlockKey {
    let len = prefix_len.min(128);
    masked_key(&addr_words(addr), len, &prefix_mask(len))
}

/// The most distinct prefix lengths the kernel looks up one by one in
/// [`MAP_BLOCK_EXACT`]; a blocklist with more is looked up in the trie.
pub const MAX_BLOCK_LENGTHS: usize = 8;

/// The prefix lengths one family of sources is looked up at, longest
/// first, and each length's [`prefix_mask`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LengthList {
    pub count: u32,
    pub _pad: u32,
    pub lens: [u32; MAX_BLOCK_LENGTHS],
    pub masks: [[u64; 2]; MAX_BLOCK_LENGTHS],
}

/// Which [`BlockLengths::lists`] a source is looked up with: IPv4 (mapped
/// into `::ffff:0:0/96`), or IPv6.
pub const FAMILY_V4: usize = 0;
pub const FAMILY_V6: usize = 1;

/// The [`FAMILY_V4`] or [`FAMILY_V6`] of a source (its first 12 bytes
/// compared as words: 2 comparisons).
#[inline(always)]
pub fn source_family(words: &[u64; 2]) -> usize {
    const MAPPED: [u8; 4] = [0, 0, 0xff, 0xff];
    let mapped = words[0] == 0 && (words[1] as u32) == u32::from_ne_bytes(MAPPED);
    if mapped { FAMILY_V4 } else { FAMILY_V6 }
}

/// One slot of [`MAP_BLOCK_LENGTHS`]. Slot 0's `active` says which of
/// slots 1 and 2 holds the lengths in force (0: none, look up the trie);
/// the agent writes the other slot and then flips `active`, so the kernel
/// never reads a list half written. An IPv4 source is looked up only at
/// the lengths of IPv4 entries (and of IPv6 ones covering
/// `::ffff:0:0/96`), an IPv6 source at those of IPv6 entries: one lookup
/// each for a feed of IPv4 /32s and IPv6 /64s.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockLengths {
    pub active: u32,
    pub _pad: u32,
    pub lists: [LengthList; 2],
}

/// An allowlist entry; its presence is what matters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllowEntry {
    pub _reserved: u32,
}

/// Global configuration, element 0 of [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Bit set of `CONFIG_*` flags.
    pub flags: u32,
    /// REGISTER authentication failures from one source within a window
    /// that make the kernel emit an [`EVENT_AUTH_FAILURES`] (0: never).
    pub auth_failure_threshold: u32,
    /// Length of a source's counting window, in nanoseconds.
    pub window_ns: u64,
    /// International INVITEs from one source within a window that make the
    /// kernel emit an [`EVENT_INTL_INVITES`] (0: never), unless the source
    /// has a higher learned threshold in [`MAP_INTL_BASELINE`].
    pub intl_invite_threshold: u32,
    /// International INVITEs to one country (from all sources) within a
    /// window that make the kernel emit an [`EVENT_COUNTRY_INVITES`] (0:
    /// never), unless the country has a higher learned threshold.
    pub country_invite_threshold: u32,
    /// Distinct sources (at least, see [`CountryWindow::sources`]) a
    /// country's window must have for the event.
    pub country_min_sources: u32,
    /// How long a nonce a registrar issued to an address (in a 401/407)
    /// binds credentials sent from that address, in seconds.
    pub nonce_horizon_s: u32,
    /// How long a successful authentication makes an address "one where
    /// this identity works", in seconds (surgical restrictions).
    pub success_horizon_s: u32,
    pub _reserved: u32,
    /// The per-deployment key of identity tags ([`crate::hash`]).
    pub identity_key: IdentityKey,
}

/// SIP counters of one source address. Requests count against the sender;
/// responses against the address they are sent TO (the client).
///
/// Cumulative fields only grow. `win_*` fields restart when a packet arrives
/// more than `Config::window_ns` after `window_start_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceStats {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub window_start_ns: u64,
    /// REGISTERs without credentials (the first leg of digest auth).
    pub register_noauth: u64,
    /// REGISTERs carrying Authorization or Proxy-Authorization.
    pub register_auth: u64,
    /// 401/407 responses to REGISTER sent to this address.
    pub register_challenged: u64,
    /// 403 responses to REGISTER sent to this address.
    pub register_forbidden: u64,
    /// 2xx responses to REGISTER sent to this address.
    pub register_ok: u64,
    pub invites: u64,
    pub intl_invites: u64,
    pub emergency_invites: u64,
    /// Requests of any method carrying credentials.
    pub attempts: u64,
    /// Authentication failures: a 401/407 (not stale) or 403 answering a
    /// credentialed request of this address's own (same Call-ID, CSeq and
    /// method), sent back to it, whose nonce the registrar had issued to
    /// this address (or sent over TCP, whose handshake proves the address).
    pub failures: u64,
    /// The same for credentialed requests whose nonce was not issued to
    /// this address: possibly forged with its address. Never restricts it
    /// alone.
    pub unbound_failures: u64,
    /// Stale-nonce challenges answering its credentialed requests: a retry
    /// with a fresh nonce asked for, not a failure.
    pub stale: u64,
    /// The last two distinct identities (tags) that authenticated here
    /// successfully, most recent first, and when.
    pub ok_tag: [u64; 2],
    pub ok_ns: [u64; 2],
    /// Identity buckets (tag modulo 64) with a failure in this window: the
    /// bits set are a lower bound of the distinct failing identities.
    pub win_identities: u64,
    pub win_failures: u32,
    pub win_unbound: u32,
    pub win_intl_invites: u32,
    /// `EVENT_*` bits already emitted in this window.
    pub win_events: u32,
}

impl SourceStats {
    /// Authentication failures (bound: see [`Self::failures`]).
    pub const fn auth_failures(&self) -> u64 {
        self.failures
    }

    /// The same, within the current window.
    pub const fn window_auth_failures(&self) -> u32 {
        self.win_failures
    }
}

/// A request carrying credentials, waiting for its answer: the key is its
/// transaction as a response names it (hash of Call-ID, CSeq number and
/// method).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TxnKey {
    pub call_id: u64,
    pub cseq: u32,
    pub method: u32,
}

/// What is kept of a credentialed request until its final response.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    /// Who sent it: only a response sent back to this address counts.
    pub client: AddrKey,
    /// The identity (tag) of its credentials.
    pub tag: u64,
    pub at_ns: u64,
    /// `TXN_*` bits.
    pub flags: u32,
    pub _reserved: u32,
}

/// The request's nonce was issued to its source (or it came over TCP).
pub const TXN_BOUND: u32 = 1;

/// How long a credentialed request waits for its answer (SIP's Timer F).
pub const TXN_LIFETIME_NS: u64 = 32_000_000_000;

/// An international call attempt being counted (key of [`MAP_CALLS`]):
/// its source and the hash of its Call-ID.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CallKey {
    pub addr: AddrKey,
    pub call_id: u64,
}

/// What is kept of a counted call attempt, so that its retransmissions
/// and its authentication retry are not counted again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CallSeen {
    /// When it was first counted.
    pub at_ns: u64,
    /// The identity (tag) of its credentials, once seen (0: none yet).
    pub tag: u64,
    /// The dialled number's digits: a retransmission and a retry dial the
    /// same.
    pub number: u64,
    /// The CSeq number last seen.
    pub cseq: u32,
    /// `CALL_*` bits in the low byte; copies not counted in the next.
    pub flags: u32,
}

/// The call's one authentication retry (CSeq + 1) was seen.
pub const CALL_RETRIED: u32 = 1;
/// A copy of the call was dropped: it is counted once in
/// [`crate::MAP_COUNTRY_BLOCKED`].
pub const CALL_BLOCKED: u32 = 2;
/// Copies of one call attempt (same Call-ID, CSeq and number) counted once
/// within [`CALL_LIFETIME_NS`]: the first send and the six retransmissions
/// of SIP's Timer A before Timer B ends the transaction. A client reusing
/// one Call-ID and CSeq for distinct calls gets no more than this many
/// counted as one.
pub const CALL_COPIES: u32 = 7;
/// How long a call attempt's copies and retry are recognised (SIP's
/// Timer B, 64 x T1).
pub const CALL_LIFETIME_NS: u64 = 32_000_000_000;

/// One identity's credentials from one address (identity-suspend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct IdentityAt {
    pub addr: AddrKey,
    /// The identity tag ([`crate::hash::identity_tag`]).
    pub tag: u64,
}

/// The restrictions of one identity at one address (or, at the all-zero
/// address, everywhere), each until when (CLOCK_MONOTONIC ns; 0: none)
/// and since when: identity-suspend drops its credentialed requests,
/// intl-suspend its international INVITEs (a line's international
/// calling, counter-measures 2, 3 and 5).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IdentityRestriction {
    pub until_ns: u64,
    pub imposed_at_ns: u64,
    pub intl_until_ns: u64,
    pub intl_imposed_at_ns: u64,
}

/// A nonce a registrar issued to an address (in a 401/407 sent to it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NonceKey {
    pub addr: AddrKey,
    pub nonce: u64,
}

/// A source (or, for [`EVENT_COUNTRY_INVITES`], a destination country)
/// crossed a threshold within its window. One per kind and window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ThresholdEvent {
    /// The source; all zero for a country event.
    pub addr: AddrKey,
    /// `EVENT_*`.
    pub kind: u32,
    /// The windowed count that crossed the threshold.
    pub count: u32,
    pub window_start_ns: u64,
    pub at_ns: u64,
    /// The threshold in force (the ceiling, or a learned one above it).
    pub threshold: u32,
    /// The E.164 country code of a country event (else 0).
    pub cc: u16,
    /// Distinct sources in the window, at least (country events; else 0).
    pub sources: u16,
    /// (auth events) The identity of the failure that crossed.
    pub tag: u64,
    /// (auth events) Unbound failures in the window.
    pub unbound: u32,
    /// (auth events) Distinct failing identities in the window, at least.
    pub identities: u16,
    /// `EVENT_FLAG_*` bits.
    pub flags: u16,
}

/// (auth events) Another identity than the failing one authenticated
/// successfully at this address within `Config::success_horizon_s`.
pub const EVENT_FLAG_OTHER_OK: u16 = 1;
/// (call events) Not a new call: the identity (`tag`) of one counted
/// before, seen in its authentication retry.
pub const EVENT_FLAG_IDENTIFIED: u16 = 2;

/// The deployment's key for identity tags ([`crate::hash::identity_tag`]),
/// element 0 of [`MAP_IDENTITY_KEY`]. `k0` and `k1` are the key's bytes
/// 0..8 and 8..16 read little-endian, as in the SipHash paper, so the 16
/// bytes of the agent's key file are the SipHash key as written.
///
/// All zero means no key was loaded: the agent refuses such a key, so the
/// kernel can tell an unset map from a key. `Debug` does not print the key.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentityKey {
    pub k0: u64,
    pub k1: u64,
}

impl IdentityKey {
    /// Bytes of a key.
    pub const LEN: usize = 16;

    /// The key whose bytes are `b` (SipHash's byte order).
    pub const fn from_bytes(b: [u8; Self::LEN]) -> Self {
        Self {
            k0: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            k1: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    /// No key: the value of a map slot nobody wrote.
    pub const fn is_unset(&self) -> bool {
        self.k0 == 0 && self.k1 == 0
    }
}

impl core::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(if self.is_unset() { "IdentityKey(unset)" } else { "IdentityKey(..)" })
    }
}

/// Packet and byte counter, one slot per verdict code in [`MAP_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers with explicit
    // padding fields, so every bit pattern is valid and there is no padding.
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::BlockKey {}
    unsafe impl aya::Pod for super::BlockLengths {}
    unsafe impl aya::Pod for super::LengthList {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::SourceStats {}
    unsafe impl aya::Pod for super::TxnKey {}
    unsafe impl aya::Pod for super::Txn {}
    unsafe impl aya::Pod for super::NonceKey {}
    unsafe impl aya::Pod for super::IdentityAt {}
    unsafe impl aya::Pod for super::CallKey {}
    unsafe impl aya::Pod for super::CallSeen {}
    unsafe impl aya::Pod for super::IdentityRestriction {}
    unsafe impl aya::Pod for super::Restriction {}
    unsafe impl aya::Pod for super::ThresholdEvent {}
    unsafe impl aya::Pod for super::Baseline {}
    unsafe impl aya::Pod for super::CountryRestriction {}
    unsafe impl aya::Pod for super::CountryWindow {}
    unsafe impl aya::Pod for super::IdentityKey {}
    unsafe impl aya::Pod for crate::number::NumberPlan {}
}

// The kernel and the agent must agree on these sizes; a mismatch would be
// silently misread through the maps.
const _: () = assert!(core::mem::size_of::<BlockEntry>() == 16);
const _: () = assert!(core::mem::size_of::<BlockKey>() == 24);
const _: () = assert!(core::mem::size_of::<LengthList>() == 8 + 20 * MAX_BLOCK_LENGTHS);
const _: () = assert!(core::mem::size_of::<BlockLengths>() == 8 + 2 * size_of::<LengthList>());
const _: () = assert!(core::mem::size_of::<AllowEntry>() == 4);
const _: () = assert!(core::mem::size_of::<Config>() == 56);
const _: () = assert!(core::mem::size_of::<SourceStats>() == 176);
const _: () = assert!(core::mem::size_of::<ThresholdEvent>() == 64);
const _: () = assert!(core::mem::size_of::<TxnKey>() == 16);
const _: () = assert!(core::mem::size_of::<Txn>() == 40);
const _: () = assert!(core::mem::size_of::<NonceKey>() == 24);
const _: () = assert!(core::mem::size_of::<IdentityAt>() == 24);
const _: () = assert!(core::mem::size_of::<CallKey>() == 24);
const _: () = assert!(core::mem::size_of::<CallSeen>() == 32);
const _: () = assert!(core::mem::size_of::<IdentityRestriction>() == 32);
const _: () = assert!(core::mem::size_of::<Baseline>() == 16);
const _: () = assert!(core::mem::size_of::<CountryRestriction>() == 24);
const _: () = assert!(core::mem::size_of::<CountryWindow>() == 32);
const _: () = assert!(core::mem::size_of::<crate::number::NumberPlan>() == 216);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<IdentityKey>() == IdentityKey::LEN);

#[cfg(test)]
mod tests {
    #[test]
    fn sources_are_looked_up_by_family() {
        use super::{FAMILY_V4, FAMILY_V6, addr_words, source_family, v4_mapped};
        assert_eq!(source_family(&addr_words(&v4_mapped([203, 0, 113, 7]))), FAMILY_V4);
        assert_eq!(source_family(&addr_words(&v4_mapped([0, 0, 0, 0]))), FAMILY_V4);
        let mut v6 = v4_mapped([203, 0, 113, 7]);
        v6[10] = 0xfe;
        assert_eq!(source_family(&addr_words(&v6)), FAMILY_V6);
        assert_eq!(source_family(&addr_words(&[0; 16])), FAMILY_V6);
        assert_eq!(source_family(&addr_words(b"\x20\x01\x0d\xb8abcdefghijkl")), FAMILY_V6);
    }

    #[test]
    fn block_keys_mask_to_their_length() {
        for addr in [[0xffu8; 16], super::v4_mapped([203, 0, 113, 77]), *b"\x20\x01\x0d\xb8abcdefghijkl"] {
            let whole = u128::from_be_bytes(addr);
            for len in 0..=130u32 {
                let l = len.min(128);
                let want = if l == 0 { 0 } else { whole & (u128::MAX << (128 - l)) };
                let k = super::block_key(&addr, len);
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&k.addr[0].to_ne_bytes());
                bytes[8..].copy_from_slice(&k.addr[1].to_ne_bytes());
                assert_eq!((k.prefix_len, u128::from_be_bytes(bytes)), (l, want), "{addr:?}/{len}");
            }
        }
    }

    use super::*;
    use crate::abi::codes::reason;

    #[test]
    fn v4_mapping_round_trips() {
        let key = v4_mapped([203, 0, 113, 7]);
        assert_eq!(v4_unmapped(&key), Some([203, 0, 113, 7]));
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        assert_eq!(v4_unmapped(&v6), None);
    }

    #[test]
    fn expiry_semantics() {
        let forever = BlockEntry { expires_at_ns: NO_EXPIRY, reason: reason::CLI, prefix_len: 128 };
        assert!(forever.is_active(u64::MAX));
        let timed = BlockEntry { expires_at_ns: 100, reason: reason::CLI, prefix_len: 128 };
        assert!(timed.is_active(99));
        assert!(!timed.is_active(100));
    }
}
