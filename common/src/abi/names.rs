//! Names and sizes: the maps the agent pins and fills, the programs it
//! loads, and the tail-call tables that join them.

// Intra-doc links name items of the other abi files.
#[cfg(doc)]
#[allow(unused_imports)]
use super::*;

/// Source-address blocklist (LPM trie, key [`AddrKey`], value [`BlockEntry`]).
pub const MAP_BLOCKLIST: &str = "BLOCKLIST";
/// The blocklist again, by exact prefix ([`BlockKey`] to [`BlockEntry`]),
/// for lookups by length: what the trie holds, written by the agent with
/// it, and sized with it (`--blocklist-capacity`).
pub const MAP_BLOCK_EXACT: &str = "BLOCK_EXACT";
/// The prefix lengths [`MAP_BLOCK_EXACT`] holds (array of three
/// [`BlockLengths`]).
pub const MAP_BLOCK_LENGTHS: &str = "BLOCK_LENGTHS";
/// Source-address allowlist (LPM trie, key [`AddrKey`], value [`AllowEntry`]).
pub const MAP_ALLOWLIST: &str = "ALLOWLIST";
/// Ports treated as SIP (hash, key [`port_key`], value `u8` = 1).
pub const MAP_SIP_PORTS: &str = "SIP_PORTS";
/// Global configuration (array of one [`Config`]).
pub const MAP_CONFIG: &str = "CONFIG";
/// Per-CPU packet/byte counters, indexed by verdict code ([`Counter`]).
pub const MAP_STATS: &str = "STATS";
/// Per-CPU packet/byte counters per XDP interface and action (per-CPU
/// hash, key [`iface_key`], value [`Counter`]): only the keys the agent
/// writes for the interfaces it attaches to are counted.
pub const MAP_IFACE_STATS: &str = "IFACE_STATS";
/// Two keys (pass, drop) for each of at most 32 interfaces.
pub const IFACE_STATS_CAPACITY: u32 = 64;

/// The [`MAP_IFACE_STATS`] key of interface `ifindex` and an action.
pub const fn iface_key(ifindex: u32, dropped: bool) -> u32 {
    (ifindex << 1) | dropped as u32
}

/// Per-source SIP counters (LRU hash, key [`AddrKey`], value [`SourceStats`]).
pub const MAP_SOURCES: &str = "SOURCES";
/// Per-CPU SIP message counters, indexed by [`sip_stat`] codes (`u64`).
pub const MAP_SIP_STATS: &str = "SIP_STATS";
/// Per-CPU international INVITEs by E.164 country code (`u64`, index = code).
pub const MAP_COUNTRY_INVITES: &str = "COUNTRY_INVITES";
/// Per-CPU international call attempts dropped (by any restriction or
/// the blocklist), by E.164 country code (`u64`, index = code): each call
/// once, however many of its copies are dropped.
pub const MAP_COUNTRY_BLOCKED: &str = "COUNTRY_BLOCKED";
/// Assigned E.164 country codes (`u32` 1 = assigned, index = code).
pub const MAP_COUNTRY_CODES: &str = "COUNTRY_CODES";
/// The dialling plan (array of one [`crate::number::NumberPlan`]).
pub const MAP_NUMBER_PLAN: &str = "NUMBER_PLAN";
/// Threshold crossings for the agent ([`ThresholdEvent`] records).
pub const MAP_EVENTS: &str = "EVENTS";
/// International call attempts and new authentications for the agent's
/// longer timescales and identity rules ([`ThresholdEvent`] records of
/// kinds [`EVENT_CALL`] and [`EVENT_AUTH_OK`]). Its own ring, so a flood
/// of calls cannot crowd out threshold events.
pub const MAP_CALL_EVENTS: &str = "CALL_EVENTS";
/// International call attempts being counted (LRU, key [`CallKey`], value
/// [`CallSeen`]). Not pinned.
pub const MAP_CALLS: &str = "CALLS";

/// Per-source SIP restrictions (LPM trie, key [`AddrKey`], value
/// [`Restriction`]).
pub const MAP_RESTRICTIONS: &str = "RESTRICTIONS";
/// Country restrictions on international INVITEs (array indexed by E.164
/// code, value [`CountryRestriction`]).
pub const MAP_COUNTRY_RESTRICT: &str = "COUNTRY_RESTRICT";
/// identity-suspend and an identity's intl-suspend, at one address or
/// everywhere (key [`IdentityAt`], value [`IdentityRestriction`]).
pub const MAP_ID_RESTRICT: &str = "ID_RESTRICT";
/// Addresses where a restricted identity's request was dropped, and when
/// (LRU, key [`AddrKey`], value CLOCK_MONOTONIC ns). Not pinned.
pub const MAP_ID_DROPPED: &str = "ID_DROPPED";
pub const ID_DROPPED_CAPACITY: u32 = 16_384;
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

/// The key of identity tags (array of one [`IdentityKey`]), written by the
/// agent at start from its state directory, so the kernel tags a digest
/// username as `tollgate identity-tag` does ([`crate::hash::identity_tag`]).
/// The name is never stored, only its tag.
pub const MAP_IDENTITY_KEY: &str = "IDENTITY_KEY";

/// Tail-call targets of the XDP program ([`JUMP_PARSE`], [`JUMP_COUNT`]).
pub const MAP_JUMP_XDP: &str = "JUMP_XDP";
/// Tail-call targets of the TC egress program.
pub const MAP_JUMP_TC: &str = "JUMP_TC";

/// Every map the agent pins, so a restarted agent re-uses them all and a
/// dead agent's program keeps working. The jump tables are pinned because
/// the kernel empties a program array when its last user reference goes.
/// The event ring buffer is not pinned: a new agent starts a new stream.
pub const PINNED_MAPS: [&str; 22] = [
    MAP_ID_RESTRICT,
    MAP_INTL_BASELINE,
    MAP_COUNTRY_BASELINE,
    MAP_COUNTRY_WINDOW,
    MAP_JUMP_XDP,
    MAP_JUMP_TC,
    MAP_RESTRICTIONS,
    MAP_COUNTRY_RESTRICT,
    MAP_BLOCKLIST,
    MAP_BLOCK_EXACT,
    MAP_BLOCK_LENGTHS,
    MAP_ALLOWLIST,
    MAP_SIP_PORTS,
    MAP_CONFIG,
    MAP_STATS,
    MAP_IFACE_STATS,
    MAP_SOURCES,
    MAP_SIP_STATS,
    MAP_COUNTRY_INVITES,
    MAP_COUNTRY_BLOCKED,
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

/// Default size of the per-source LRU map (`--max-sources`).
pub const SOURCES_CAPACITY: u32 = 65_536;
/// Credentialed requests awaiting their answer (LRU).
pub const TRANSACTIONS_CAPACITY: u32 = 65_536;
/// Nonces issued per client address (LRU).
pub const NONCES_CAPACITY: u32 = 65_536;
/// Size of the event ring buffer in bytes.
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Size of the call event ring buffer in bytes (about 16,000 events).
pub const CALL_EVENTS_BYTES: u32 = 1024 * 1024;
/// International call attempts recognised at once (LRU).
pub const CALLS_CAPACITY: u32 = 65_536;

/// Name of the enforcement program in the object file.
pub const PROG_ENFORCE: &str = "tollgate";
/// A program that only returns `XDP_PASS`: the baseline for benchmarks.
pub const PROG_BASELINE: &str = "tollgate_baseline_pass";
/// An `xdp-filter`-style static drop (source looked up in BLOCKLIST, no
/// SIP, no counters): the cheapest drop, for benchmarks. Never attached.
pub const PROG_STATIC_DROP: &str = "tollgate_static_drop";

pub const BLOCKLIST_CAPACITY: u32 = 65_536;
pub const ALLOWLIST_CAPACITY: u32 = 4_096;
pub const SIP_PORTS_CAPACITY: u32 = 64;
