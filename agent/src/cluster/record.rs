//! What the cluster keeps in etcd: the key layout, the JSON records, and the
//! rules a node applies to what it reads (pure, unit-tested).
//!
//! ```text
//! <prefix>/restrictions/<kind>/<target>   a Record, bound to a lease that
//!                                         ends LEASE_GRACE after its expiry
//! <prefix>/nodes/<name>                   a NodeRecord, bound to the node's
//!                                         lease (kept alive while it runs)
//! ```
//!
//! Times are wall-clock UNIX milliseconds: each node's kernel expiries are
//! CLOCK_MONOTONIC, which means nothing on another host.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::policy::{Evidence, Kind, Target};

/// How long after its expiry a restriction's key lives on: the lease is
/// only the store's garbage collection, each node expires its copy itself
/// (and a key is never the reason a restriction lasts longer).
pub const LEASE_GRACE_SECS: i64 = 5;

/// The version of the record layout (`v`); a node ignores records of a
/// later one it cannot read.
pub const RECORD_VERSION: u32 = 1;

/// The key of a restriction: `<prefix>/restrictions/<kind>/<target>`, the
/// target as `198.51.100.7/32`, `2001:db8::/48`, `44` (a country code) or
/// `<tag>@<address>` (an identity; the address `::` for everywhere).
pub fn restriction_key(prefix: &str, kind: Kind, target: &Target) -> String {
    let t = match target {
        Target::Source(net) => net.to_string(),
        Target::Country(cc) => cc.to_string(),
        Target::Identity(addr, tag) => format!("{tag:016x}@{addr}"),
    };
    format!("{}{}/{t}", restrictions_prefix(prefix), kind.name())
}

/// Everything a node watches for restrictions.
pub fn restrictions_prefix(prefix: &str) -> String {
    format!("{prefix}/restrictions/")
}

/// The members' keys.
pub fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}/nodes/")
}

pub fn node_key(prefix: &str, name: &str) -> String {
    format!("{}{name}", nodes_prefix(prefix))
}

/// A restriction in force somewhere in the cluster, as etcd keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    /// [`Kind::name`].
    pub kind: String,
    /// [`Target`]'s display form (as the state database keeps it).
    pub target: String,
    /// [`crate::policy::Reason::name`] on the deciding node.
    pub reason: String,
    #[serde(default)]
    pub evidence: Evidence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The node that decided it.
    pub origin: String,
    /// The node that wrote this version (an extension may be another's):
    /// a node ignores the echo of its own writes.
    pub writer: String,
    /// When it was imposed and when it ends (wall clock, UNIX ms).
    pub start_ms: i64,
    pub expires_ms: i64,
    /// Decided in dry-run: other nodes record it but enforce nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialize")
    }

    /// The record in `bytes`, or None for one this build cannot read.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(bytes).ok().filter(|r| r.v <= RECORD_VERSION)
    }

    pub fn kind(&self) -> Option<Kind> {
        Kind::from_name(&self.kind)
    }

    pub fn target(&self) -> Option<Target> {
        parse_target(&self.target)
    }

    /// The key this record belongs under.
    pub fn key(&self, prefix: &str) -> Option<String> {
        Some(restriction_key(prefix, self.kind()?, &self.target()?))
    }

    /// Lapsed at `now_ms`: never written, and ignored when read (an expired
    /// restriction is never brought back).
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms <= now_ms
    }

    /// The TTL (whole seconds, as etcd 3.4 takes it) of the lease its key
    /// is bound to: until a little after its expiry. None once expired.
    pub fn lease_ttl(&self, now_ms: i64) -> Option<i64> {
        if self.expired(now_ms) {
            return None;
        }
        let left_ms = self.expires_ms - now_ms;
        Some((left_ms + 999) / 1000 + LEASE_GRACE_SECS)
    }
}

/// What a node does with a record another node wrote, given the expiry
/// (wall clock) of its own copy of the same restriction, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Take it over (a new restriction here).
    Adopt,
    /// Its expiry is later than ours: extend ours to it.
    Extend,
    /// Nothing to do: expired, ours ends as late or later, or our own echo.
    Ignore,
}

pub fn merge(record: &Record, self_name: &str, local_expires_ms: Option<i64>, now_ms: i64) -> Merge {
    if record.writer == self_name || record.expired(now_ms) {
        return Merge::Ignore;
    }
    match local_expires_ms {
        None => Merge::Adopt,
        Some(ours) if record.expires_ms > ours => Merge::Extend,
        Some(_) => Merge::Ignore,
    }
}

/// A node's key: when it last said it was alive, and what it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub version: String,
    pub heartbeat_ms: i64,
}

/// A target in its display form ([`Target`]'s `Display`).
pub fn parse_target(s: &str) -> Option<Target> {
    use std::str::FromStr as _;
    let tag = |h: &str| u64::from_str_radix(h, 16).ok();
    if let Some(cc) = s.strip_prefix('+') {
        return cc.parse().ok().map(Target::Country);
    }
    if let Some(rest) = s.strip_prefix("identity ") {
        let h = rest.strip_suffix(" everywhere")?;
        return Some(Target::Identity(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), tag(h)?));
    }
    if let Some((net, h)) = s.split_once(" identity ") {
        return Some(Target::Identity(ipnet::IpNet::from_str(net).ok()?.addr(), tag(h)?));
    }
    ipnet::IpNet::from_str(s).ok().map(Target::Source)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "tollgate/v1/default";

    fn record(writer: &str, expires_ms: i64) -> Record {
        Record {
            v: RECORD_VERSION,
            kind: Kind::AuthSuspend.name().into(),
            target: "198.51.100.7/32".into(),
            reason: "brute-force".into(),
            evidence: Evidence { count: 12, threshold: 10, ..Evidence::default() },
            note: None,
            origin: "edge-a".into(),
            writer: writer.into(),
            start_ms: 1_000,
            expires_ms,
            dry_run: false,
        }
    }

    #[test]
    fn keys_name_the_kind_and_target() {
        let src = Target::Source("198.51.100.7/32".parse().unwrap());
        assert_eq!(
            restriction_key(P, Kind::AuthSuspend, &src),
            "tollgate/v1/default/restrictions/auth-suspend/198.51.100.7/32"
        );
        assert_eq!(
            restriction_key(P, Kind::CountryRestrict, &Target::Country(232)),
            "tollgate/v1/default/restrictions/country-restrict/232"
        );
        let everywhere = Target::Identity("::".parse().unwrap(), 0xab);
        assert_eq!(
            restriction_key(P, Kind::IntlSuspend, &everywhere),
            "tollgate/v1/default/restrictions/intl-suspend/00000000000000ab@::"
        );
        let v6 = Target::Source("2001:db8::/48".parse().unwrap());
        assert!(restriction_key(P, Kind::Block, &v6).starts_with(&restrictions_prefix(P)));
        assert_eq!(node_key(P, "edge-a"), "tollgate/v1/default/nodes/edge-a");
        assert!(node_key(P, "edge-a").starts_with(&nodes_prefix(P)));
    }

    #[test]
    fn records_round_trip_and_name_their_key() {
        let r = record("edge-a", 61_000);
        let back = Record::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.key(P).unwrap(), "tollgate/v1/default/restrictions/auth-suspend/198.51.100.7/32");
        for t in [
            Target::Country(44),
            Target::Source("2001:db8::7/128".parse().unwrap()),
            Target::Identity("198.51.100.7".parse().unwrap(), 0x0123_4567_89ab_cdef),
            Target::Identity("::".parse().unwrap(), 7),
        ] {
            assert_eq!(parse_target(&t.to_string()), Some(t), "{t}");
        }
        // A later layout, or garbage, is not read.
        let mut later = r.clone();
        later.v = RECORD_VERSION + 1;
        assert_eq!(Record::decode(&later.encode()), None);
        assert_eq!(Record::decode(b"{not json"), None);
    }

    #[test]
    fn leases_end_a_little_after_the_expiry_and_never_for_an_expired_record() {
        let r = record("edge-a", 61_000);
        assert_eq!(r.lease_ttl(1_000), Some(60 + LEASE_GRACE_SECS));
        assert_eq!(r.lease_ttl(60_500), Some(1 + LEASE_GRACE_SECS));
        assert_eq!(r.lease_ttl(61_000), None);
        assert_eq!(r.lease_ttl(99_000), None);
    }

    #[test]
    fn merge_never_resurrects_and_never_shortens() {
        let now = 10_000;
        // Another node's, new here: adopted.
        assert_eq!(merge(&record("edge-b", 20_000), "edge-a", None, now), Merge::Adopt);
        // Expired (even just): never brought back.
        assert_eq!(merge(&record("edge-b", now), "edge-a", None, now), Merge::Ignore);
        assert_eq!(merge(&record("edge-b", 5_000), "edge-a", Some(4_000), now), Merge::Ignore);
        // Our own write coming back through the watch.
        assert_eq!(merge(&record("edge-a", 20_000), "edge-a", None, now), Merge::Ignore);
        // An extension moves ours later, an older version never earlier.
        assert_eq!(merge(&record("edge-b", 30_000), "edge-a", Some(20_000), now), Merge::Extend);
        assert_eq!(merge(&record("edge-b", 15_000), "edge-a", Some(20_000), now), Merge::Ignore);
    }
}
