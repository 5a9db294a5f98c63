//! The enforcement families: verdict counters, the lists and where the
//! program is attached.

use prometheus::proto::{MetricFamily, MetricType};
use tollgate_common::{ALLOWLIST_CAPACITY, INTL_BASELINE_CAPACITY, RESTRICTIONS_CAPACITY, verdict};

use super::{Family, family, sample};
use crate::{
    kernel::loader::MapSizes,
    maps::{BlockCounts, Maps},
};

pub(super) const PACKETS: Family = Family {
    name: "tollgate_xdp_packets_total",
    help: "Packets seen by the XDP program, by action and reason.",
    kind: MetricType::COUNTER,
};
pub(super) const BYTES: Family = Family {
    name: "tollgate_xdp_bytes_total",
    help: "Bytes seen by the XDP program, by action and reason.",
    kind: MetricType::COUNTER,
};
pub(super) const BLOCKLIST: Family = Family {
    name: "tollgate_blocklist_entries",
    help: "Blocklist entries; expired ones no longer drop and are removed within seconds.",
    kind: MetricType::GAUGE,
};
pub(super) const BLOCKLIST_CAP: Family = Family {
    name: "tollgate_blocklist_capacity_entries",
    help: "Maximum number of blocklist entries the kernel map holds (--blocklist-capacity).",
    kind: MetricType::GAUGE,
};
pub(super) const ALLOWLIST: Family = Family {
    name: "tollgate_allowlist_entries",
    help: "Prefixes in the allowlist.",
    kind: MetricType::GAUGE,
};
pub(super) const ATTACHED: Family = Family {
    name: "tollgate_xdp_attached",
    help: "1 for each interface the XDP program is attached to, with its mode.",
    kind: MetricType::GAUGE,
};

/// Packets and bytes by verdict.
pub(super) fn verdicts(maps: &Maps) -> crate::error::Result<Vec<MetricFamily>> {
    let totals = maps.verdict_totals()?;
    let (mut packets, mut bytes) = (Vec::new(), Vec::new());
    for (code, action, reason) in verdict::ALL {
        let c = totals[code as usize];
        let labels = [("action", action), ("reason", reason)];
        packets.push(sample(&labels, c.packets as f64, MetricType::COUNTER));
        bytes.push(sample(&labels, c.bytes as f64, MetricType::COUNTER));
    }
    Ok(vec![family(&PACKETS, packets), family(&BYTES, bytes)])
}

/// The blocklist and allowlist sizes and the attachments.
pub(super) fn lists(
    maps: &Maps,
    blocks: BlockCounts,
    attached: &[(String, String)],
    capacity: u32,
) -> Vec<MetricFamily> {
    vec![
        family(
            &BLOCKLIST,
            vec![
                sample(&[("state", "active")], (blocks.entries - blocks.expired) as f64, MetricType::GAUGE),
                sample(&[("state", "expired")], blocks.expired as f64, MetricType::GAUGE),
            ],
        ),
        family(&BLOCKLIST_CAP, vec![sample(&[], capacity as f64, MetricType::GAUGE)]),
        family(&ALLOWLIST, vec![sample(&[], maps.allowlist.prefixes().len() as f64, MetricType::GAUGE)]),
        family(
            &ATTACHED,
            attached
                .iter()
                .map(|(iface, mode)| sample(&[("interface", iface), ("mode", mode)], 1.0, MetricType::GAUGE))
                .collect(),
        ),
    ]
}

pub(super) const MAP_ENTRIES: Family = Family {
    name: "tollgate_map_entries",
    help: "Entries in each bounded kernel map (sources, blocklist, allowlist, restrictions, identity_restrictions, intl_baselines).",
    kind: MetricType::GAUGE,
};
pub(super) const MAP_CAPACITY: Family = Family {
    name: "tollgate_map_capacity_entries",
    help: "Entries each bounded kernel map holds at most (the per-source map: least recently seen evicted first).",
    kind: MetricType::GAUGE,
};

/// Fill and size of every bounded map; `sizes` are the ones set by flags;
/// the sources as last counted (none before the first count).
pub(super) fn map_pressure(
    maps: &Maps,
    blocklist: usize,
    sources: Option<usize>,
    sizes: MapSizes,
) -> Vec<MetricFamily> {
    let sources = sources.map(|n| ("sources", n, sizes.max_sources));
    let maps = sources.into_iter().chain([
        ("blocklist", blocklist, sizes.blocklist_capacity),
        ("allowlist", maps.allowlist.prefixes().len(), ALLOWLIST_CAPACITY),
        ("restrictions", maps.restrictions.entries().len(), RESTRICTIONS_CAPACITY),
        ("identity_restrictions", maps.identities.entries().len(), RESTRICTIONS_CAPACITY),
        ("intl_baselines", maps.intl_baselines().len(), INTL_BASELINE_CAPACITY),
    ]);
    let (mut entries, mut capacity) = (Vec::new(), Vec::new());
    for (name, n, cap) in maps {
        entries.push(sample(&[("map", name)], n as f64, MetricType::GAUGE));
        capacity.push(sample(&[("map", name)], cap as f64, MetricType::GAUGE));
    }
    vec![family(&MAP_ENTRIES, entries), family(&MAP_CAPACITY, capacity)]
}

pub(super) const INTERFACE_PACKETS: Family = Family {
    name: "tollgate_interface_packets_total",
    help: "Packets the XDP program passed or dropped on each interface it is attached to (given with --iface).",
    kind: MetricType::COUNTER,
};

/// Packets per XDP interface and action.
pub(super) fn interfaces(maps: &Maps, attached: &[(String, String)]) -> MetricFamily {
    let mut samples = Vec::new();
    for (iface, mode) in attached {
        if mode == "tc-egress" {
            continue;
        }
        let Ok(ifindex) = crate::kernel::loader::if_index(iface) else { continue };
        let [pass, drop] = maps.interface_totals(ifindex);
        for (action, c) in [("pass", pass), ("drop", drop)] {
            samples.push(sample(
                &[("interface", iface), ("action", action)],
                c.packets as f64,
                MetricType::COUNTER,
            ));
        }
    }
    family(&INTERFACE_PACKETS, samples)
}
