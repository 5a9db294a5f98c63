//! Counts summed across the cluster (issue 16): each node publishes its
//! windowed international call counts, and each node judges the sum, so a
//! surge split over nodes, none of them over its own threshold, is caught.
//!
//! ```text
//! <prefix>/counts/<node>   a NodeCounts, bound to the node's lease: it goes
//!                          when the node does
//! ```
//!
//! A node publishes, per scale (short, medium, long), the sliding estimate
//! of its calls to every country it counts, with their distinct sources,
//! and of the sources above a fraction of their threshold (at most a bound
//! of them, the highest first). What it reads of the others is summed here
//! (pure, unit-tested) into an [`Elsewhere`] per subject, which the detector
//! adds to its own count when it judges.
//!
//! **One decider.** Every node sees the same publications, so each can tell
//! whether it is the one to decide on a sum: the node that published the
//! largest count of the subject on that scale (ties: the first name). Only
//! that node judges the sum; the others judge their own count alone (as
//! without a cluster) and adopt the decider's restriction when it arrives.
//! Had two nodes each thought so (their views differ for a moment), the
//! store's create-if-absent still leaves one record.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::detect::{Count, Elsewhere, SCALES, Shared, Subject};

/// The version of the counts layout (`v`); counts of a later one are
/// ignored.
pub const COUNTS_VERSION: u32 = 1;

pub fn counts_prefix(prefix: &str) -> String {
    format!("{prefix}/counts/")
}

pub fn counts_key(prefix: &str, node: &str) -> String {
    format!("{}{node}", counts_prefix(prefix))
}

/// A country's calls on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountryCount {
    pub cc: u16,
    #[serde(flatten)]
    pub count: Count,
}

/// A source's calls on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCount {
    pub addr: IpAddr,
    #[serde(flatten)]
    pub count: Count,
}

/// The most entries a node's counts may have to be read (a bound on what
/// one node makes the others parse and sum): every country code, and the
/// most --cluster-max-sources allows.
pub const MAX_COUNTRIES: usize = 1000;
pub const MAX_SOURCES: usize = 100_000;

/// What one node publishes of its counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounts {
    pub v: u32,
    pub node: String,
    /// When it was read (wall clock, UNIX ms).
    pub at_ms: i64,
    /// The node's window lengths (ms): a scale is summed only with nodes
    /// that count it over the same window.
    pub windows_ms: [u64; SCALES],
    #[serde(default)]
    pub countries: Vec<CountryCount>,
    #[serde(default)]
    pub sources: Vec<SourceCount>,
}

impl NodeCounts {
    /// What `node` publishes of `shared`, read at `at_ms`.
    pub fn new(node: &str, at_ms: i64, windows_ms: [u64; SCALES], shared: Shared) -> Self {
        Self {
            v: COUNTS_VERSION,
            node: node.to_owned(),
            at_ms,
            windows_ms,
            countries: shared.countries.into_iter().map(|(cc, count)| CountryCount { cc, count }).collect(),
            sources: shared.sources.into_iter().map(|(addr, count)| SourceCount { addr, count }).collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("counts serialize")
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(bytes).ok().filter(|c| {
            c.v <= COUNTS_VERSION && c.countries.len() <= MAX_COUNTRIES && c.sources.len() <= MAX_SOURCES
        })
    }

    /// Whether it counts nothing (no need to keep it in the store).
    pub fn is_empty(&self) -> bool {
        self.countries.is_empty() && self.sources.is_empty()
    }

    /// The same counts, whenever read (to tell whether they changed).
    pub fn same_counts(&self, other: &NodeCounts) -> bool {
        self.windows_ms == other.windows_ms
            && self.countries == other.countries
            && self.sources == other.sources
    }

    fn each(&self) -> impl Iterator<Item = (Subject, &Count)> + '_ {
        let countries = self.countries.iter().map(|c| (Subject::Country(c.cc), &c.count));
        let sources = self.sources.iter().map(|s| (Subject::Source(s.addr), &s.count));
        countries.chain(sources)
    }
}

/// Sums what the other nodes published (`others`, by name; this node's
/// own entry, if there, is skipped) next to what this node published
/// (`mine`), scale by scale where the windows agree.
pub fn sum(
    me: &str,
    mine: Option<&NodeCounts>,
    others: &BTreeMap<String, NodeCounts>,
) -> HashMap<Subject, Elsewhere> {
    let mut out: HashMap<Subject, Elsewhere> = HashMap::new();
    // The largest count published so far per subject and scale, and whose.
    let mut best: HashMap<(Subject, usize), (u32, &str)> = HashMap::new();
    let Some(mine) = mine else { return out };
    let windows = mine.windows_ms;
    for (name, c) in others {
        if name == me || c.node != *name {
            continue;
        }
        for (s, count) in c.each() {
            let n = count.n;
            for k in 0..SCALES {
                if c.windows_ms[k] != windows[k] || n[k] == 0 {
                    continue;
                }
                let e = out.entry(s).or_default();
                e.others[k] = e.others[k].saturating_add(n[k]);
                e.sources[k] = e.sources[k].saturating_add(count.sources[k]);
                e.level_milli[k] = e.level_milli[k].saturating_add(count.level_milli[k]);
                e.nodes[k] += 1;
                let b = best.entry((s, k)).or_insert((0, name.as_str()));
                if (n[k], std::cmp::Reverse(name.as_str())) > (b.0, std::cmp::Reverse(b.1)) {
                    *b = (n[k], name.as_str());
                }
            }
        }
    }
    let published: HashMap<Subject, [u32; SCALES]> = mine.each().map(|(s, c)| (s, c.n)).collect();
    for (s, e) in out.iter_mut() {
        for k in 0..SCALES {
            let own = published.get(s).map_or(0, |n| n[k]);
            let Some(&(n, name)) = best.get(&(*s, k)) else { continue };
            e.lead[k] = own > 0 && (own, std::cmp::Reverse(me)) > (n, std::cmp::Reverse(name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: [u64; SCALES] = [10_000, 3_600_000, 86_400_000];

    fn node(name: &str, countries: &[(u16, u32)], sources: &[(&str, u32)]) -> NodeCounts {
        NodeCounts {
            v: COUNTS_VERSION,
            node: name.to_owned(),
            at_ms: 0,
            windows_ms: W,
            countries: countries
                .iter()
                .map(|&(cc, n)| CountryCount {
                    cc,
                    count: Count {
                        n: [n; SCALES],
                        sources: [n.min(5); SCALES],
                        level_milli: [n as u64 * 100; SCALES],
                    },
                })
                .collect(),
            sources: sources
                .iter()
                .map(|&(a, n)| SourceCount {
                    addr: a.parse().unwrap(),
                    count: Count { n: [n; SCALES], ..Count::default() },
                })
                .collect(),
        }
    }

    fn others(nodes: &[NodeCounts]) -> BTreeMap<String, NodeCounts> {
        nodes.iter().map(|n| (n.node.clone(), n.clone())).collect()
    }

    #[test]
    fn the_others_counts_are_summed_and_the_largest_contributor_decides() {
        let a = node("edge-a", &[(232, 15)], &[("198.51.100.7", 4)]);
        let b = node("edge-b", &[(232, 20)], &[("198.51.100.7", 4)]);
        let c = node("edge-c", &[(232, 15), (44, 3)], &[]);
        let all = others(&[a.clone(), b.clone(), c.clone()]);
        let at_a = sum("edge-a", Some(&a), &all);
        let cc = at_a[&Subject::Country(232)];
        assert_eq!((cc.others, cc.sources, cc.nodes, cc.level_milli), ([35; 3], [10; 3], [2; 3], [3500; 3]));
        assert_eq!(cc.lead, [false; 3], "edge-b published more");
        assert!(sum("edge-b", Some(&b), &all)[&Subject::Country(232)].lead.iter().all(|l| *l));
        assert!(!sum("edge-c", Some(&c), &all)[&Subject::Country(232)].lead[0]);
        // Ties go to the first name; a node that counts none never decides.
        let src = Subject::Source("198.51.100.7".parse().unwrap());
        assert_eq!(at_a[&src].others, [4; 3]);
        assert!(at_a[&src].lead[0], "a tie: edge-a before edge-b");
        assert!(!sum("edge-b", Some(&b), &all)[&src].lead[0]);
        let at_c = sum("edge-c", Some(&c), &all);
        assert_eq!(at_c[&src].others, [8; 3]);
        assert!(!at_c[&src].lead[0], "edge-c counts none of it");
        assert!(!at_a.contains_key(&Subject::Country(44)) || !at_a[&Subject::Country(44)].lead[0]);
    }

    #[test]
    fn a_scale_counted_over_another_window_is_not_summed() {
        let a = node("edge-a", &[(232, 15)], &[]);
        let mut b = node("edge-b", &[(232, 20)], &[]);
        b.windows_ms[0] = 60_000;
        let s = sum("edge-a", Some(&a), &others(&[b]))[&Subject::Country(232)];
        assert_eq!(s.others, [0, 20, 20]);
        // Without counts of its own published yet, a node sums nothing.
        assert!(sum("edge-a", None, &others(std::slice::from_ref(&a))).is_empty());
    }

    #[test]
    fn its_own_entry_and_a_misnamed_one_are_skipped() {
        let a = node("edge-a", &[(232, 15)], &[]);
        let mut forged = node("edge-b", &[(232, 99)], &[]);
        forged.node = "edge-c".into();
        let mut all = others(std::slice::from_ref(&a));
        all.insert("edge-b".into(), forged);
        let s = sum("edge-a", Some(&a), &all);
        assert!(s.is_empty(), "{s:?}");
    }

    #[test]
    fn counts_round_trip_and_later_versions_are_ignored() {
        let a = node("edge-a", &[(232, 15)], &[("2001:db8::7", 3)]);
        assert_eq!(NodeCounts::decode(&a.encode()), Some(a.clone()));
        let mut later = a.clone();
        later.v = COUNTS_VERSION + 1;
        assert_eq!(NodeCounts::decode(&later.encode()), None);
        assert_eq!(NodeCounts::decode(b"not json"), None);
        // A node cannot make the others parse and sum without bound.
        let mut huge = a.clone();
        huge.sources = (0..=MAX_SOURCES as u32)
            .map(|i| SourceCount {
                addr: std::net::Ipv6Addr::from(i as u128).into(),
                count: Count::default(),
            })
            .collect();
        assert_eq!(NodeCounts::decode(&huge.encode()), None);
        assert_eq!(counts_key("tollgate/v1/east", "edge-a"), "tollgate/v1/east/counts/edge-a");
    }
}
