//! Codes and index arithmetic: verdict and SIP counter indices, event
//! bits, reasons, flags, and how keys and indices are computed.

use super::records::AddrKey;

// Intra-doc links name items of the other abi files.
#[cfg(doc)]
#[allow(unused_imports)]
use super::*;

/// Egress packets are not counted under an XDP verdict.
pub const NO_VERDICT: u32 = u32::MAX;

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

/// Why a blocklist or country-restrict entry exists ([`BlockEntry::reason`],
/// [`CountryRestriction::reason`]).
pub mod reason {
    /// Given with `tollgate run --block` at start-up.
    pub const CLI: u32 = 1;
    /// Imposed by an operator at run time.
    pub const OPERATOR: u32 = 2;
    /// Imposed by the agent on a many-source surge to a country.
    pub const COUNTRY_SURGE: u32 = 3;
    /// Listed by a blocklist feed (`run --feed`); which feed is kept by the
    /// agent. The kernel treats every reason alike.
    pub const FEED: u32 = 4;

    pub const fn name(code: u32) -> &'static str {
        match code {
            CLI => "cli",
            OPERATOR => "operator",
            COUNTRY_SURGE => "country-surge",
            FEED => "feed",
            _ => "unknown",
        }
    }
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

pub const EVENT_AUTH_FAILURES: u32 = 1 << 0;
pub const EVENT_INTL_INVITES: u32 = 1 << 1;
pub const EVENT_COUNTRY_INVITES: u32 = 1 << 2;
/// (call events, [`MAP_CALL_EVENTS`]) A new international call attempt
/// (`cc`, `tag` when its credentials are known), or its identity
/// ([`EVENT_FLAG_IDENTIFIED`]).
pub const EVENT_CALL: u32 = 1 << 3;
/// (call events) An identity (`tag`) authenticated successfully at an
/// address where it was not one of the last two that did.
pub const EVENT_AUTH_OK: u32 = 1 << 4;
/// (call events) A customer's source (it sent an INVITE, or an identity
/// authenticated there) was seen in a new window: at most once per
/// source and window, with its first sighting in the kernel in
/// `window_start_ns` and this one in `at_ns`. The agent learns the
/// sources' histories from these, not by reading every tracked source.
pub const EVENT_SEEN: u32 = 1 << 5;

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
    /// Requests carrying credentials, by binding: their nonce issued to
    /// their source (or over TCP), or not.
    pub const ATTEMPT_BOUND: u32 = KEEPALIVE + 4;
    pub const ATTEMPT_UNBOUND: u32 = KEEPALIVE + 5;
    /// Authentication failures (rejections paired with a credentialed
    /// request), by the request's binding.
    pub const FAILURE_BOUND: u32 = KEEPALIVE + 6;
    pub const FAILURE_UNBOUND: u32 = KEEPALIVE + 7;
    /// Stale-nonce challenges answering a credentialed request.
    pub const STALE: u32 = KEEPALIVE + 8;
    /// Call events lost because their ring buffer was full.
    pub const CALL_EVENTS_LOST: u32 = KEEPALIVE + 9;
    /// International INVITEs counted as new call attempts, and those that
    /// were copies (retransmissions) or the authentication retry of one.
    pub const INTL_CALLS: u32 = KEEPALIVE + 10;
    pub const INTL_REPEATS: u32 = KEEPALIVE + 11;
    pub const COUNT: u32 = KEEPALIVE + 12;
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
    /// Dropped: a SIP-port packet from an auth- or intl-suspended source
    /// that the kernel cannot prove harmless for that restriction (not
    /// readable as a SIP message, a TCP segment longer than the window or
    /// with a later INVITE, a request whose headers go on past what was
    /// read). Fail open for everyone, fail closed for the restricted.
    pub const DROP_RESTRICTED_UNREADABLE: u32 = 10;
    /// Dropped: a credentialed request of an identity suspended at this
    /// source address (the address's other identities pass).
    pub const DROP_IDENTITY_SUSPENDED: u32 = 11;

    pub const COUNT: u32 = 12;

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
        (DROP_RESTRICTED_UNREADABLE, "drop", "restricted_unreadable"),
        (DROP_IDENTITY_SUSPENDED, "drop", "identity_suspended"),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::records::v4_mapped;

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
