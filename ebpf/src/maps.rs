//! Every map of the kernel programs. Names, key and value layouts and sizes
//! are shared with the agent through `tollgate-common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};
use tollgate_common::{
    ALLOWLIST_CAPACITY, AddrKey, AllowEntry, BLOCKLIST_CAPACITY, Baseline, BlockEntry, BlockKey,
    BlockLengths, CALL_EVENTS_BYTES, CALLS_CAPACITY, CallKey, CallSeen, Config, Counter, CountryRestriction,
    CountryWindow, EVENTS_BYTES, ID_DROPPED_CAPACITY, IFACE_STATS_CAPACITY, INTL_BASELINE_CAPACITY,
    IdentityAt, IdentityRestriction, NONCES_CAPACITY, NonceKey, RESTRICTIONS_CAPACITY, Restriction,
    SIP_PORTS_CAPACITY, SOURCES_CAPACITY, SipContext, SourceStats, TRANSACTIONS_CAPACITY, Txn, TxnKey,
    number::{COUNTRY_CODE_SLOTS, NumberPlan},
    sip::SipSummary,
    sip_stat, verdict,
};

use crate::sip::stages::Scratch;

// Enforcement (the first program).

#[map]
pub(crate) static BLOCKLIST: LpmTrie<AddrKey, BlockEntry> =
    LpmTrie::with_max_entries(BLOCKLIST_CAPACITY, BPF_F_NO_PREALLOC);

/// The blocklist by exact prefix, for lookups one length at a time
/// (enforce.rs); sized with BLOCKLIST by the loader.
#[map]
pub(crate) static BLOCK_EXACT: HashMap<BlockKey, BlockEntry> =
    HashMap::with_max_entries(BLOCKLIST_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static BLOCK_LENGTHS: Array<BlockLengths> = Array::with_max_entries(3, 0);

/// The state of the walk over BLOCK_LENGTHS (enforce.rs), per CPU. Not
/// pinned: it holds nothing between packets.
#[map]
pub(crate) static BLOCK_SCAN: PerCpuArray<crate::enforce::BlockScan> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static ALLOWLIST: LpmTrie<AddrKey, AllowEntry> =
    LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static SIP_PORTS: HashMap<u32, u8> = HashMap::with_max_entries(SIP_PORTS_CAPACITY, 0);

#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Tail-call targets: SIP parsing and counting, each verified on its own.
#[map]
pub(crate) static JUMP_XDP: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[map]
pub(crate) static JUMP_TC: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[map]
pub(crate) static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(verdict::COUNT, 0);

/// Per interface and action; the agent writes the keys (lookups only here).
#[map]
pub(crate) static IFACE_STATS: PerCpuHashMap<u32, Counter> =
    PerCpuHashMap::with_max_entries(IFACE_STATS_CAPACITY, 0);

// SIP counting.

#[map]
pub(crate) static SOURCES: LruHashMap<AddrKey, SourceStats> =
    LruHashMap::with_max_entries(SOURCES_CAPACITY, 0);

#[map]
pub(crate) static SIP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(sip_stat::COUNT, 0);

#[map]
pub(crate) static COUNTRY_INVITES: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTRY_CODE_SLOTS, 0);

/// International call attempts dropped, per country (each call once).
#[map]
pub(crate) static COUNTRY_BLOCKED: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTRY_CODE_SLOTS, 0);

#[map]
pub(crate) static COUNTRY_CODES: Array<u32> = Array::with_max_entries(COUNTRY_CODE_SLOTS, 0);

#[map]
pub(crate) static NUMBER_PLAN: Array<NumberPlan> = Array::with_max_entries(1, 0);

/// Credentialed requests waiting for their answer (transaction pairing):
/// only a rejection that answers one counts as a failure. Not pinned: a
/// restarted agent loses at most the answers in flight.
#[map]
pub(crate) static TRANSACTIONS: LruHashMap<TxnKey, Txn> =
    LruHashMap::with_max_entries(TRANSACTIONS_CAPACITY, 0);

/// Nonces the registrar issued, per client address, and when (nonce
/// binding): credentials count as their source's attempt only with a nonce
/// issued to it.
#[map]
pub(crate) static NONCES: LruHashMap<NonceKey, u64> = LruHashMap::with_max_entries(NONCES_CAPACITY, 0);

/// When each client address was last challenged (or last had credentials
/// dropped as identity-suspended). Within the nonce horizon the headers of
/// its UDP requests other than REGISTER are read; before it, credentials
/// from it could only be unbound, and they are not looked for. As large as
/// [`NONCES`], with one entry per address rather than per nonce, so an
/// address is not forgotten here while a nonce of it is remembered there.
/// Not pinned, like NONCES.
#[map]
pub(crate) static CHALLENGED: LruHashMap<AddrKey, u64> = LruHashMap::with_max_entries(NONCES_CAPACITY, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// International call attempts counted within SIP's Timer B, so that the
/// copies and the authentication retry of one are not counted again (calls,
/// not packets). Not pinned: a restarted agent may count a call in flight
/// twice.
#[map]
pub(crate) static CALLS: LruHashMap<CallKey, CallSeen> = LruHashMap::with_max_entries(CALLS_CAPACITY, 0);

/// Call attempts and new authentications, for the agent's longer
/// timescales and identity rules.
#[map]
pub(crate) static CALL_EVENTS: RingBuf = RingBuf::with_byte_size(CALL_EVENTS_BYTES, 0);

// SIP restrictions and learned thresholds.

/// auth-suspend and intl-suspend per source prefix, decided by the agent.
#[map]
pub(crate) static RESTRICTIONS: LpmTrie<AddrKey, Restriction> =
    LpmTrie::with_max_entries(RESTRICTIONS_CAPACITY, BPF_F_NO_PREALLOC);

/// Learned per-source thresholds for international INVITEs (written by the
/// agent; only sources whose normal volume is high have one).
#[map]
pub(crate) static INTL_BASELINE: HashMap<AddrKey, Baseline> =
    HashMap::with_max_entries(INTL_BASELINE_CAPACITY, 0);

/// Learned per-country thresholds (written by the agent).
#[map]
pub(crate) static COUNTRY_BASELINE: Array<Baseline> = Array::with_max_entries(COUNTRY_CODE_SLOTS, 0);

/// Each destination country's current window (written here).
#[map]
pub(crate) static COUNTRY_WINDOW: Array<CountryWindow> = Array::with_max_entries(COUNTRY_CODE_SLOTS, 0);

/// identity-suspend: one identity's credentials from one address, decided
/// by the agent where other identities work (an office behind one NAT).
#[map]
pub(crate) static ID_RESTRICT: HashMap<IdentityAt, IdentityRestriction> =
    HashMap::with_max_entries(RESTRICTIONS_CAPACITY, 0);

/// Where a restricted identity's request was last dropped: within the
/// nonce horizon, what could carry its credentials unseen from there is
/// dropped too (restrict.rs). Not pinned.
#[map]
pub(crate) static ID_DROPPED: LruHashMap<AddrKey, u64> = LruHashMap::with_max_entries(ID_DROPPED_CAPACITY, 0);

/// country-restrict: expiry per E.164 country code.
#[map]
pub(crate) static COUNTRY_RESTRICT: Array<CountryRestriction> =
    Array::with_max_entries(COUNTRY_CODE_SLOTS, 0);

// Hand-over between the SIP stages.

/// The parse result, from stage 2 to stage 3.
#[map]
pub(crate) static SUMMARY: PerCpuArray<SipSummary> = PerCpuArray::with_max_entries(1, 0);

/// Addresses, payload length and verdict, from the first program to the
/// stages.
#[map]
pub(crate) static SIP_CTX: PerCpuArray<SipContext> = PerCpuArray::with_max_entries(1, 0);

/// Where the payload window is copied, and the state of the scans over it;
/// per CPU, so no locking.
#[map]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
