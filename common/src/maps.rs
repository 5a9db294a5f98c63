//! Map names, keys, values and verdict codes shared by kernel and userspace.

/// Source-address blocklist (LPM trie, key [`AddrKey`], value [`BlockEntry`]).
pub const MAP_BLOCKLIST: &str = "BLOCKLIST";
/// Source-address allowlist (LPM trie, key [`AddrKey`], value [`AllowEntry`]).
pub const MAP_ALLOWLIST: &str = "ALLOWLIST";
/// Ports treated as SIP (hash, key [`port_key`], value `u8` = 1).
pub const MAP_SIP_PORTS: &str = "SIP_PORTS";
/// Global configuration (array of one [`Config`]).
pub const MAP_CONFIG: &str = "CONFIG";
/// Per-CPU packet/byte counters, indexed by verdict code ([`Counter`]).
pub const MAP_STATS: &str = "STATS";

/// Per-source SIP counters (LRU hash, key [`AddrKey`], value [`SourceStats`]).
pub const MAP_SOURCES: &str = "SOURCES";
/// Per-CPU SIP message counters, indexed by [`sip_stat`] codes (`u64`).
pub const MAP_SIP_STATS: &str = "SIP_STATS";
/// Per-CPU international INVITEs by E.164 country code (`u64`, index = code).
pub const MAP_COUNTRY_INVITES: &str = "COUNTRY_INVITES";
/// Assigned E.164 country codes (`u32` 1 = assigned, index = code).
pub const MAP_COUNTRY_CODES: &str = "COUNTRY_CODES";
/// The dialling plan (array of one [`crate::number::NumberPlan`]).
pub const MAP_NUMBER_PLAN: &str = "NUMBER_PLAN";
/// Threshold crossings for the agent ([`ThresholdEvent`] records).
pub const MAP_EVENTS: &str = "EVENTS";

/// Per-source SIP restrictions (LPM trie, key [`AddrKey`], value
/// [`Restriction`]).
pub const MAP_RESTRICTIONS: &str = "RESTRICTIONS";
/// Country restrictions on international INVITEs (array indexed by E.164
/// code, value [`CountryRestriction`]).
pub const MAP_COUNTRY_RESTRICT: &str = "COUNTRY_RESTRICT";
pub const RESTRICTIONS_CAPACITY: u32 = 65_536;
/// Learned per-source thresholds for international INVITEs (hash, key
/// [`AddrKey`], value [`Baseline`]): a source whose normal ("peacetime")
/// volume is high is reported only well above it, never below the global
/// ceiling. Only sources whose learned threshold exceeds the ceiling have
/// an entry.
pub const MAP_INTL_BASELINE: &str = "INTL_BASELINE";
pub const INTL_BASELINE_CAPACITY: u32 = 65_536;
/// Learned per-country thresholds (array indexed by E.164 code, value
/// [`Baseline`]; threshold 0 = the global ceiling applies).
pub const MAP_COUNTRY_BASELINE: &str = "COUNTRY_BASELINE";
/// The current window of international INVITEs to each country (array
/// indexed by E.164 code, value [`CountryWindow`]), written by the kernel.
pub const MAP_COUNTRY_WINDOW: &str = "COUNTRY_WINDOW";

/// Tail-call targets of the XDP program ([`JUMP_PARSE`], [`JUMP_COUNT`]).
pub const MAP_JUMP_XDP: &str = "JUMP_XDP";
/// Tail-call targets of the TC egress program.
pub const MAP_JUMP_TC: &str = "JUMP_TC";

/// Every map the agent pins, so a restarted agent re-uses them all and a
/// dead agent's program keeps working. The jump tables are pinned because
/// the kernel empties a program array when its last user reference goes.
/// The event ring buffer is not pinned: a new agent starts a new stream.
pub const PINNED_MAPS: [&str; 17] = [
    MAP_INTL_BASELINE,
    MAP_COUNTRY_BASELINE,
    MAP_COUNTRY_WINDOW,
    MAP_JUMP_XDP,
    MAP_JUMP_TC,
    MAP_RESTRICTIONS,
    MAP_COUNTRY_RESTRICT,
    MAP_BLOCKLIST,
    MAP_ALLOWLIST,
    MAP_SIP_PORTS,
    MAP_CONFIG,
    MAP_STATS,
    MAP_SOURCES,
    MAP_SIP_STATS,
    MAP_COUNTRY_INVITES,
    MAP_COUNTRY_CODES,
    MAP_NUMBER_PLAN,
];

/// Name of the egress (TC) counting program in the object file.
pub const PROG_EGRESS: &str = "tollgate_egress";

/// SIP parsing and counting run as tail-called programs, each verified on
/// its own (with inputs from maps), because one program doing everything
/// exceeds the verifier's budget. `(jump table, index, program)`.
pub const JUMP_PARSE: u32 = 0;
pub const JUMP_COUNT: u32 = 1;
pub const TAIL_PROGRAMS: [(&str, u32, &str); 4] = [
    (MAP_JUMP_XDP, JUMP_PARSE, "tollgate_sip_parse"),
    (MAP_JUMP_XDP, JUMP_COUNT, "tollgate_sip_count"),
    (MAP_JUMP_TC, JUMP_PARSE, "tollgate_sip_parse_tc"),
    (MAP_JUMP_TC, JUMP_COUNT, "tollgate_sip_count_tc"),
];

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
    pub _reserved: [u8; 1],
    /// Verdict code to count ([`verdict`]), or [`NO_VERDICT`] (egress).
    pub code: u32,
    /// Frame bytes, for the verdict counter.
    pub bytes: u32,
}

/// Egress packets are not counted under an XDP verdict.
pub const NO_VERDICT: u32 = u32::MAX;

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

/// Buckets of [`CountryWindow::sources`].
pub const SOURCE_BUCKETS: u32 = 128;

/// The bucket of a source address in [`CountryWindow::sources`].
#[inline(always)]
pub fn source_bucket(addr: &AddrKey) -> u32 {
    let w = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = w(0) ^ w(4).rotate_left(8) ^ w(8).rotate_left(16) ^ w(12).rotate_left(24);
    // Fibonacci hashing: the top 7 bits of the product.
    folded.wrapping_mul(0x9e37_79b1) >> 25
}

/// Distinct sources seen in a window, at least (bits set).
#[inline(always)]
pub const fn sources_at_least(bits: &[u64; 2]) -> u32 {
    bits[0].count_ones() + bits[1].count_ones()
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

/// Default size of the per-source LRU map (`--max-sources`).
pub const SOURCES_CAPACITY: u32 = 65_536;
/// Size of the event ring buffer in bytes.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Name of the enforcement program in the object file.
pub const PROG_ENFORCE: &str = "tollgate";
/// A program that only returns `XDP_PASS`: the baseline for benchmarks.
pub const PROG_BASELINE: &str = "tollgate_baseline_pass";

pub const BLOCKLIST_CAPACITY: u32 = 65_536;
pub const ALLOWLIST_CAPACITY: u32 = 4_096;
pub const SIP_PORTS_CAPACITY: u32 = 64;

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

/// Why a blocklist or country-restrict entry exists ([`BlockEntry::reason`],
/// [`CountryRestriction::reason`]).
pub mod reason {
    /// Given with `tollgate run --block` at start-up.
    pub const CLI: u32 = 1;
    /// Imposed by an operator at run time.
    pub const OPERATOR: u32 = 2;
    /// Imposed by the agent on a many-source surge to a country.
    pub const COUNTRY_SURGE: u32 = 3;

    pub const fn name(code: u32) -> &'static str {
        match code {
            CLI => "cli",
            OPERATOR => "operator",
            COUNTRY_SURGE => "country-surge",
            _ => "unknown",
        }
    }
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
    pub _reserved: u32,
}

/// Drop blocklisted sources on every port, not only on SIP ports.
pub const CONFIG_BLOCK_ALL_PORTS: u32 = 1 << 0;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of [`MAP_SIP_PORTS`]: transport protocol and port in host byte order.
#[inline(always)]
pub const fn port_key(proto: u8, port: u16) -> u32 {
    ((proto as u32) << 16) | port as u32
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
    pub win_register_noauth: u32,
    /// 401/407/403 to REGISTER within the window.
    pub win_register_rejected: u32,
    pub win_intl_invites: u32,
    /// `EVENT_*` bits already emitted in this window.
    pub win_events: u32,
}

impl SourceStats {
    /// REGISTER authentication failures: rejections that are not the normal
    /// challenge of an uncredentialed first REGISTER. A phone that registers
    /// correctly has none; with no responses visible the result is 0, so
    /// missing visibility can never look like an attack.
    pub const fn auth_failures(&self) -> u64 {
        (self.register_challenged + self.register_forbidden).saturating_sub(self.register_noauth)
    }

    /// The same, within the current window.
    pub const fn window_auth_failures(&self) -> u32 {
        self.win_register_rejected.saturating_sub(self.win_register_noauth)
    }
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
}

pub const EVENT_AUTH_FAILURES: u32 = 1 << 0;
pub const EVENT_INTL_INVITES: u32 = 1 << 1;
pub const EVENT_COUNTRY_INVITES: u32 = 1 << 2;

/// Indices into [`MAP_SIP_STATS`].
pub mod sip_stat {
    use crate::{number::class, sip::method};

    /// Requests, by method: index = `method::*` (0..8).
    pub const REQUEST_BASE: u32 = 0;
    pub const REGISTER_WITH_AUTH: u32 = method::COUNT as u32;
    pub const RESPONSE_REGISTER_CHALLENGE: u32 = REGISTER_WITH_AUTH + 1;
    pub const RESPONSE_REGISTER_FORBIDDEN: u32 = REGISTER_WITH_AUTH + 2;
    pub const RESPONSE_REGISTER_OK: u32 = REGISTER_WITH_AUTH + 3;
    pub const RESPONSE_REGISTER_OTHER: u32 = REGISTER_WITH_AUTH + 4;
    pub const RESPONSE_OTHER: u32 = REGISTER_WITH_AUTH + 5;
    /// INVITEs by number class: index = INVITE_CLASS_BASE + `class::*`.
    pub const INVITE_CLASS_BASE: u32 = REGISTER_WITH_AUTH + 6;
    pub const KEEPALIVE: u32 = INVITE_CLASS_BASE + class::COUNT as u32;
    pub const UNPARSED_UDP: u32 = KEEPALIVE + 1;
    pub const UNPARSED_TCP: u32 = KEEPALIVE + 2;
    /// Threshold events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = KEEPALIVE + 3;
    pub const COUNT: u32 = KEEPALIVE + 4;
}

/// Packet and byte counter, one slot per verdict code in [`MAP_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Verdict codes: every packet the program sees is counted in exactly one.
pub mod verdict {
    /// IP packet on a SIP port whose source matched nothing.
    pub const PASS_SIP: u32 = 0;
    /// IP packet not on a SIP port (not examined further unless
    /// `--block-all-ports`), including non-first fragments.
    pub const PASS_NOT_SIP: u32 = 1;
    /// Source is in the allowlist (checked before the blocklist).
    pub const PASS_ALLOWLISTED: u32 = 2;
    /// Source matched a blocklist entry whose expiry has passed.
    pub const PASS_EXPIRED: u32 = 3;
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    pub const PASS_NOT_IP: u32 = 4;
    /// Truncated or malformed headers: the program fails open.
    pub const PASS_MALFORMED: u32 = 5;
    /// Dropped: source matched an active blocklist entry.
    pub const DROP_BLOCKLIST: u32 = 6;
    /// Dropped: REGISTER or credentialed request from an auth-suspended source.
    pub const DROP_AUTH_SUSPENDED: u32 = 7;
    /// Dropped: international INVITE from an intl-suspended source.
    pub const DROP_INTL_SUSPENDED: u32 = 8;
    /// Dropped: international INVITE to a restricted country code.
    pub const DROP_COUNTRY_RESTRICTED: u32 = 9;

    pub const COUNT: u32 = 10;

    /// `(code, action, reason)` for every verdict, for metrics and status.
    pub const ALL: [(u32, &str, &str); COUNT as usize] = [
        (PASS_SIP, "pass", "sip"),
        (PASS_NOT_SIP, "pass", "not_sip"),
        (PASS_ALLOWLISTED, "pass", "allowlisted"),
        (PASS_EXPIRED, "pass", "block_expired"),
        (PASS_NOT_IP, "pass", "not_ip"),
        (PASS_MALFORMED, "pass", "malformed"),
        (DROP_BLOCKLIST, "drop", "blocklist"),
        (DROP_AUTH_SUSPENDED, "drop", "auth_suspended"),
        (DROP_INTL_SUSPENDED, "drop", "intl_suspended"),
        (DROP_COUNTRY_RESTRICTED, "drop", "country_restricted"),
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers with explicit
    // padding fields, so every bit pattern is valid and there is no padding.
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::SourceStats {}
    unsafe impl aya::Pod for super::Restriction {}
    unsafe impl aya::Pod for super::ThresholdEvent {}
    unsafe impl aya::Pod for super::Baseline {}
    unsafe impl aya::Pod for super::CountryRestriction {}
    unsafe impl aya::Pod for super::CountryWindow {}
    unsafe impl aya::Pod for crate::number::NumberPlan {}
}

// The kernel and the agent must agree on these sizes; a mismatch would be
// silently misread through the maps.
const _: () = assert!(core::mem::size_of::<BlockEntry>() == 16);
const _: () = assert!(core::mem::size_of::<AllowEntry>() == 4);
const _: () = assert!(core::mem::size_of::<Config>() == 32);
const _: () = assert!(core::mem::size_of::<SourceStats>() == 104);
const _: () = assert!(core::mem::size_of::<ThresholdEvent>() == 48);
const _: () = assert!(core::mem::size_of::<Baseline>() == 16);
const _: () = assert!(core::mem::size_of::<CountryRestriction>() == 24);
const _: () = assert!(core::mem::size_of::<CountryWindow>() == 32);
const _: () = assert!(core::mem::size_of::<crate::number::NumberPlan>() == 216);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_phone_that_registers_correctly_has_no_failures() {
        // Every minute: REGISTER without credentials, 401, REGISTER with
        // credentials, 200 OK.
        let mut s = SourceStats::default();
        for _ in 0..60 {
            s.register_noauth += 1;
            s.register_challenged += 1;
            s.register_auth += 1;
            s.register_ok += 1;
        }
        assert_eq!(s.auth_failures(), 0);
        // A wrong password: the credentialed REGISTER is rejected again.
        s.register_noauth += 1;
        s.register_challenged += 2;
        assert_eq!(s.auth_failures(), 1);
        // A brute forcer that always sends credentials.
        let mut b = SourceStats { register_auth: 500, register_challenged: 500, ..SourceStats::default() };
        assert_eq!(b.auth_failures(), 500);
        b.register_forbidden = 3;
        assert_eq!(b.auth_failures(), 503);
        // No responses visible: never failures.
        let blind = SourceStats { register_noauth: 10, register_auth: 10, ..SourceStats::default() };
        assert_eq!(blind.auth_failures(), 0);
    }

    #[test]
    fn source_buckets_spread_and_never_overcount() {
        let mut bits = [0u64; 2];
        let add = |bits: &mut [u64; 2], key: &AddrKey| {
            let b = source_bucket(key);
            assert!(b < SOURCE_BUCKETS);
            bits[(b >> 6) as usize] |= 1 << (b & 63);
        };
        // The same source many times is one source.
        for _ in 0..10 {
            add(&mut bits, &v4_mapped([203, 0, 113, 10]));
        }
        assert_eq!(sources_at_least(&bits), 1);
        // Neighbouring addresses (a typical surge from one /24) spread well.
        for i in 1..=20u8 {
            add(&mut bits, &v4_mapped([198, 51, 100, i]));
        }
        let n = sources_at_least(&bits);
        assert!((18..=21).contains(&n), "{n} of 21 distinct sources seen");
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let before = sources_at_least(&bits);
        for i in 1..=10u8 {
            v6[15] = i;
            add(&mut bits, &v6);
        }
        assert!(sources_at_least(&bits) >= before + 8);
    }

    #[test]
    fn verdict_table_is_indexed_by_code() {
        for (i, (code, _, _)) in verdict::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i);
        }
    }
}
