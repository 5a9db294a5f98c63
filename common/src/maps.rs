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

/// Every map the agent pins, so a restarted agent re-uses them all.
pub const PINNED_MAPS: [&str; 5] = [MAP_BLOCKLIST, MAP_ALLOWLIST, MAP_SIP_PORTS, MAP_CONFIG, MAP_STATS];

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

/// Why a blocklist entry exists. Stored in [`BlockEntry::reason`].
pub mod reason {
    /// Given with `tollgate run --block` at start-up.
    pub const CLI: u32 = 1;
    /// Imposed by an operator at run time.
    pub const OPERATOR: u32 = 2;

    pub const fn name(code: u32) -> &'static str {
        match code {
            CLI => "cli",
            OPERATOR => "operator",
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

    pub const COUNT: u32 = 7;

    /// `(code, action, reason)` for every verdict, for metrics and status.
    pub const ALL: [(u32, &str, &str); COUNT as usize] = [
        (PASS_SIP, "pass", "sip"),
        (PASS_NOT_SIP, "pass", "not_sip"),
        (PASS_ALLOWLISTED, "pass", "allowlisted"),
        (PASS_EXPIRED, "pass", "block_expired"),
        (PASS_NOT_IP, "pass", "not_ip"),
        (PASS_MALFORMED, "pass", "malformed"),
        (DROP_BLOCKLIST, "drop", "blocklist"),
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
}

// The kernel and the agent must agree on these sizes; a mismatch would be
// silently misread through the maps.
const _: () = assert!(core::mem::size_of::<BlockEntry>() == 16);
const _: () = assert!(core::mem::size_of::<AllowEntry>() == 4);
const _: () = assert!(core::mem::size_of::<Config>() == 8);
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
    fn verdict_table_is_indexed_by_code() {
        for (i, (code, _, _)) in verdict::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i);
        }
    }
}
