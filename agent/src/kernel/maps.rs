//! Typed access to the XDP program's maps.
//!
//! [`Maps`] owns the map handles, whether they come from a freshly loaded
//! object (`tollgate run`) or from the pins of a running or dead agent
//! (`tollgate status`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use ipnet::IpNet;
use tollgate_common::{
    AddrKey, AllowEntry, Baseline, BlockEntry, Config, Counter, CountryRestriction, IdentityAt,
    IdentityRestriction, MAP_ALLOWLIST, MAP_BLOCKLIST, MAP_CONFIG, MAP_COUNTRY_BASELINE, MAP_COUNTRY_BLOCKED,
    MAP_COUNTRY_CODES, MAP_COUNTRY_INVITES, MAP_COUNTRY_RESTRICT, MAP_ID_RESTRICT, MAP_IFACE_STATS,
    MAP_INTL_BASELINE, MAP_NUMBER_PLAN, MAP_RESTRICTIONS, MAP_SIP_PORTS, MAP_SIP_STATS, MAP_SOURCES,
    MAP_STATS, Restriction, SourceStats, V4_MAPPED_PREFIX_LEN,
    number::{COUNTRY_CODE_SLOTS, NumberPlan},
    port_key, sip_stat, v4_mapped, v4_unmapped, verdict,
};

use crate::error::{Error, Result};

pub struct Maps {
    pub blocklist: Blocklist,
    pub allowlist: Allowlist,
    pub restrictions: Restrictions,
    pub identities: IdentityRestrictions,
    country_restrict: Array<MapData, CountryRestriction>,
    intl_baseline: HashMap<MapData, AddrKey, Baseline>,
    country_baseline: Array<MapData, Baseline>,
    sip_ports: HashMap<MapData, u32, u8>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, Counter>,
    iface_stats: aya::maps::PerCpuHashMap<MapData, u32, Counter>,
    sources: HashMap<MapData, AddrKey, SourceStats>,
    sip_stats: PerCpuArray<MapData, u64>,
    country_invites: PerCpuArray<MapData, u64>,
    country_blocked: PerCpuArray<MapData, u64>,
    country_codes: Array<MapData, u32>,
    number_plan: Array<MapData, NumberPlan>,
}

/// The [`AddrKey`] of an address.
pub fn addr_key(addr: IpAddr) -> AddrKey {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address an [`AddrKey`] stands for.
pub fn key_addr(key: &AddrKey) -> IpAddr {
    match v4_unmapped(key) {
        Some(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        None => IpAddr::V6(Ipv6Addr::from(*key)),
    }
}

/// The LPM key of a prefix (IPv4 is mapped into `::ffff:0:0/96`).
pub fn prefix_key(net: &IpNet) -> Key<AddrKey> {
    match net {
        IpNet::V4(n) => {
            Key::new(V4_MAPPED_PREFIX_LEN + u32::from(n.prefix_len()), v4_mapped(n.network().octets()))
        }
        IpNet::V6(n) => Key::new(u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// The prefix an LPM key stands for.
pub fn key_prefix(key: &Key<AddrKey>) -> IpNet {
    let data = key.data();
    let len = key.prefix_len();
    match v4_unmapped(&data) {
        Some(v4) if len >= V4_MAPPED_PREFIX_LEN => {
            IpNet::new(IpAddr::V4(Ipv4Addr::from(v4)), (len - V4_MAPPED_PREFIX_LEN) as u8)
        }
        _ => IpNet::new(IpAddr::V6(Ipv6Addr::from(data)), len.min(128) as u8),
    }
    .expect("prefix lengths from the map are in range")
}

/// The E.164 codes whose slot in a per-country array is not the default,
/// with their values.
fn set_slots<T: aya::Pod + Default + PartialEq>(
    array: &Array<MapData, T>,
    name: &str,
) -> Result<Vec<(u16, T)>> {
    let mut out = Vec::new();
    for cc in 0..COUNTRY_CODE_SLOTS {
        let v = array.get(&cc, 0).map_err(Error::map(format!("reading {name}")))?;
        if v != T::default() {
            out.push((cc as u16, v));
        }
    }
    Ok(out)
}

/// A map from `source`, converted to its typed wrapper.
fn typed<T>(source: &mut impl FnMut(&str) -> Result<Map>, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(source(name)?).map_err(Error::map(format!("map {name}")))
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::from_source(|name| {
            ebpf.take_map(name).ok_or_else(|| Error::Map {
                context: format!("map {name} missing from the eBPF object"),
                error: aya::maps::MapError::InvalidName { name: name.to_owned() },
            })
        })
    }

    /// Opens the maps pinned in `dir` by `tollgate run`.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        Self::from_source(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(Error::map(format!("opening {}", path.display())))?;
            Map::from_map_data(data).map_err(Error::map(format!("map {name}")))
        })
    }

    fn from_source(mut source: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        let s = &mut source;
        Ok(Self {
            blocklist: Blocklist(typed(s, MAP_BLOCKLIST)?),
            allowlist: Allowlist(typed(s, MAP_ALLOWLIST)?),
            restrictions: Restrictions(typed(s, MAP_RESTRICTIONS)?),
            identities: IdentityRestrictions(typed(s, MAP_ID_RESTRICT)?),
            country_restrict: typed(s, MAP_COUNTRY_RESTRICT)?,
            intl_baseline: typed(s, MAP_INTL_BASELINE)?,
            country_baseline: typed(s, MAP_COUNTRY_BASELINE)?,
            sip_ports: typed(s, MAP_SIP_PORTS)?,
            config: typed(s, MAP_CONFIG)?,
            stats: typed(s, MAP_STATS)?,
            iface_stats: typed(s, MAP_IFACE_STATS)?,
            sources: typed(s, MAP_SOURCES)?,
            sip_stats: typed(s, MAP_SIP_STATS)?,
            country_invites: typed(s, MAP_COUNTRY_INVITES)?,
            country_blocked: typed(s, MAP_COUNTRY_BLOCKED)?,
            country_codes: typed(s, MAP_COUNTRY_CODES)?,
            number_plan: typed(s, MAP_NUMBER_PLAN)?,
        })
    }

    /// Sets (Some) or removes (None) a source's learned level and threshold
    /// for international INVITEs.
    pub fn set_intl_baseline(&mut self, addr: IpAddr, baseline: Option<Baseline>) -> Result<()> {
        let key = addr_key(addr);
        match baseline {
            Some(b) => self.intl_baseline.insert(key, b, 0),
            None => match self.intl_baseline.remove(&key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                other => other,
            },
        }
        .map_err(Error::map(format!("learned baseline of {addr}")))
    }

    /// Every source with a learned baseline in the kernel.
    pub fn intl_baselines(&self) -> Vec<(IpAddr, Baseline)> {
        self.intl_baseline.iter().filter_map(|r| r.ok()).map(|(k, v)| (key_addr(&k), v)).collect()
    }

    /// Sets a country's learned level and threshold (`Baseline::default()`
    /// forgets it).
    pub fn set_country_baseline(&mut self, cc: u16, baseline: Baseline) -> Result<()> {
        self.country_baseline
            .set(u32::from(cc), baseline, 0)
            .map_err(Error::map(format!("learned baseline of +{cc}")))
    }

    /// Every country with a learned baseline.
    pub fn country_baselines(&self) -> Result<Vec<(u16, Baseline)>> {
        set_slots(&self.country_baseline, MAP_COUNTRY_BASELINE)
    }

    /// Restricts international INVITEs to `cc` (`CountryRestriction::default()` lifts).
    pub fn set_country_restriction(&mut self, cc: u16, r: CountryRestriction) -> Result<()> {
        self.country_restrict.set(u32::from(cc), r, 0).map_err(Error::map(format!("restricting +{cc}")))
    }

    /// Country codes with a restriction entry.
    pub fn country_restrictions(&self) -> Result<Vec<(u16, CountryRestriction)>> {
        set_slots(&self.country_restrict, MAP_COUNTRY_RESTRICT)
    }

    pub fn set_number_plan(&mut self, plan: NumberPlan) -> Result<()> {
        self.number_plan.set(0, plan, 0).map_err(Error::map("writing NUMBER_PLAN"))
    }

    /// Marks exactly `codes` as assigned E.164 country codes.
    pub fn set_country_codes(&mut self, codes: &[u16]) -> Result<()> {
        for cc in 0..COUNTRY_CODE_SLOTS {
            let assigned = codes.contains(&(cc as u16)) as u32;
            self.country_codes.set(cc, assigned, 0).map_err(Error::map("writing COUNTRY_CODES"))?;
        }
        Ok(())
    }

    /// SIP message counters summed over CPUs, indexed by `sip_stat` codes.
    pub fn sip_totals(&self) -> Result<Vec<u64>> {
        (0..sip_stat::COUNT)
            .map(|i| {
                let per_cpu = self.sip_stats.get(&i, 0).map_err(Error::map("reading SIP_STATS"))?;
                Ok(per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
            })
            .collect()
    }

    /// International call attempts per E.164 country code, non-zero ones
    /// only.
    pub fn country_invites(&self) -> Result<Vec<(u16, u64)>> {
        per_country(&self.country_invites, MAP_COUNTRY_INVITES)
    }

    /// International call attempts dropped per E.164 country code (each
    /// call once), non-zero ones only.
    pub fn country_blocked(&self) -> Result<Vec<(u16, u64)>> {
        per_country(&self.country_blocked, MAP_COUNTRY_BLOCKED)
    }

    /// How many sources are tracked: their keys only (one syscall each,
    /// none of their counters copied), for the metrics.
    pub fn sources_tracked(&self) -> usize {
        self.sources.keys().filter(|k| k.is_ok()).count()
    }

    /// Every tracked source with its counters.
    pub fn sources(&self) -> Vec<(IpAddr, SourceStats)> {
        self.sources.iter().filter_map(|r| r.ok()).map(|(k, v)| (key_addr(&k), v)).collect()
    }

    /// The tracked sources `keep` accepts, with their counters: one pass
    /// over the map, the others not kept.
    pub fn sources_where(&self, keep: impl Fn(&SourceStats) -> bool) -> Vec<(IpAddr, SourceStats)> {
        self.sources
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| keep(v))
            .map(|(k, v)| (key_addr(&k), v))
            .collect()
    }

    /// One source's counters, if tracked.
    pub fn source(&self, addr: IpAddr) -> Option<SourceStats> {
        self.sources.get(&addr_key(addr), 0).ok()
    }

    pub fn set_config(&mut self, config: Config) -> Result<()> {
        self.config.set(0, config, 0).map_err(Error::map("writing CONFIG"))
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(Error::map("reading CONFIG"))
    }

    /// Makes the set of SIP (protocol, port) pairs exactly `ports`.
    pub fn set_sip_ports(&mut self, ports: &[(u8, u16)]) -> Result<()> {
        let wanted: Vec<u32> = ports.iter().map(|(p, n)| port_key(*p, *n)).collect();
        let stale: Vec<u32> =
            self.sip_ports.keys().filter_map(|k| k.ok()).filter(|k| !wanted.contains(k)).collect();
        for k in stale {
            self.sip_ports.remove(&k).map_err(Error::map("updating SIP_PORTS"))?;
        }
        for k in wanted {
            self.sip_ports.insert(k, 1, 0).map_err(Error::map("updating SIP_PORTS"))?;
        }
        Ok(())
    }

    /// The configured SIP ports as (protocol, port), sorted.
    pub fn sip_ports(&self) -> Vec<(u8, u16)> {
        let mut v: Vec<_> =
            self.sip_ports.keys().filter_map(|k| k.ok()).map(|k| ((k >> 16) as u8, k as u16)).collect();
        v.sort_unstable();
        v
    }

    /// Counts the final actions of XDP packets on interface `ifindex`
    /// from now on (an existing count is kept).
    pub fn count_interface(&mut self, ifindex: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::io("counting CPUs")(e))?;
        for dropped in [false, true] {
            let key = tollgate_common::iface_key(ifindex, dropped);
            if self.iface_stats.get(&key, 0).is_err() {
                let zeros = aya::maps::PerCpuValues::try_from(vec![Counter::default(); cpus])
                    .map_err(Error::io("making per-CPU zeros"))?;
                self.iface_stats.insert(key, zeros, 0).map_err(Error::map("writing IFACE_STATS"))?;
            }
        }
        Ok(())
    }

    /// Packets and bytes of interface `ifindex`, passed and dropped,
    /// summed over CPUs (zero if not counted).
    pub fn interface_totals(&self, ifindex: u32) -> [Counter; 2] {
        [false, true].map(|dropped| {
            let mut total = Counter::default();
            if let Ok(per_cpu) = self.iface_stats.get(&tollgate_common::iface_key(ifindex, dropped), 0) {
                for c in per_cpu.iter() {
                    total.packets = total.packets.wrapping_add(c.packets);
                    total.bytes = total.bytes.wrapping_add(c.bytes);
                }
            }
            total
        })
    }

    /// Packet and byte totals per verdict code, summed over CPUs.
    pub fn verdict_totals(&self) -> Result<[Counter; verdict::COUNT as usize]> {
        let mut totals = [Counter::default(); verdict::COUNT as usize];
        for (code, total) in totals.iter_mut().enumerate() {
            let per_cpu = self.stats.get(&(code as u32), 0).map_err(Error::map("reading STATS"))?;
            for c in per_cpu.iter() {
                total.packets = total.packets.wrapping_add(c.packets);
                total.bytes = total.bytes.wrapping_add(c.bytes);
            }
        }
        Ok(totals)
    }
}

/// Entries per BPF_MAP_UPDATE_BATCH call ([`Blocklist::insert_many`]).
pub const BATCH: usize = 16_384;

/// BPF_MAP_UPDATE_BATCH of `keys` and `values` into the map `fd` (aya
/// 0.14 has no batch operations).
fn update_batch(fd: std::os::fd::RawFd, keys: &[Key<AddrKey>], values: &[BlockEntry]) -> std::io::Result<()> {
    /// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; keys and
    // values hold `count` records of the map's key and value sizes (a
    // packed Key<AddrKey> is the 20-byte LPM key, BlockEntry the value).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

pub struct Blocklist(LpmTrie<MapData, AddrKey, BlockEntry>);

impl Blocklist {
    /// Inserts or replaces the entry for `net` (its `prefix_len` is set here).
    pub fn insert(&mut self, net: &IpNet, entry: BlockEntry) -> Result<()> {
        let key = prefix_key(net);
        let entry = BlockEntry { prefix_len: key.prefix_len(), ..entry };
        self.0.insert(&key, entry, 0).map_err(Error::map(format!("blocking {net}")))
    }

    /// Inserts or replaces every entry, [`BATCH`] per system call
    /// (BPF_MAP_UPDATE_BATCH), where the kernel takes batches; otherwise
    /// one call per entry. The kernel's own work per entry (a node
    /// allocated and linked under the trie's lock) dominates either way:
    /// about 3.5 s per million entries into a trie of a million on a
    /// 2-vCPU machine, batched or not (`cargo xtask bench maps`); batches
    /// save the system calls. Stops at the first entry the kernel refuses
    /// (the map full), naming it.
    pub fn insert_many(&mut self, entries: &[(IpNet, BlockEntry)]) -> Result<()> {
        use std::os::fd::{AsFd as _, AsRawFd as _};

        use aya::maps::IterableMap as _;
        for chunk in entries.chunks(BATCH) {
            let keys: Vec<Key<AddrKey>> = chunk.iter().map(|(net, _)| prefix_key(net)).collect();
            let values: Vec<BlockEntry> = chunk
                .iter()
                .zip(&keys)
                .map(|((_, e), k)| BlockEntry { prefix_len: k.prefix_len(), ..*e })
                .collect();
            let fd = self.0.map().fd().as_fd().as_raw_fd();
            if update_batch(fd, &keys, &values).is_ok() {
                continue;
            }
            // No batches on this kernel (the count written back is not
            // reliable then), or an entry refused: the chunk again one by
            // one (inserting replaces), which names the refused entry.
            for (net, entry) in chunk {
                self.insert(net, *entry)?;
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, net: &IpNet) -> Result<()> {
        self.0.remove(&prefix_key(net)).map_err(Error::map(format!("unblocking {net}")))
    }

    /// The kernel's identity of the map (`bpftool map show id N`).
    pub fn map_id(&self) -> Result<u32> {
        use aya::maps::IterableMap as _;
        Ok(self.0.map().info().map_err(Error::map("reading the blocklist's info"))?.id())
    }

    /// Every entry (active or expired), sorted by prefix.
    pub fn entries(&self) -> Vec<(IpNet, BlockEntry)> {
        let mut v: Vec<_> = self.0.iter().filter_map(|r| r.ok()).map(|(k, e)| (key_prefix(&k), e)).collect();
        v.sort_unstable_by_key(|(net, _)| *net);
        v
    }
}

/// auth-suspend and intl-suspend per source prefix.
pub struct Restrictions(LpmTrie<MapData, AddrKey, Restriction>);

impl Restrictions {
    /// Inserts or replaces the entry for `net` (its `prefix_len` is set here).
    pub fn set(&mut self, net: &IpNet, r: Restriction) -> Result<()> {
        let key = prefix_key(net);
        let r = Restriction { prefix_len: key.prefix_len(), ..r };
        self.0.insert(&key, r, 0).map_err(Error::map(format!("restricting {net}")))
    }

    pub fn get(&self, net: &IpNet) -> Option<Restriction> {
        self.entries().into_iter().find(|(n, _)| n == net).map(|(_, r)| r)
    }

    pub fn remove(&mut self, net: &IpNet) -> Result<()> {
        self.0.remove(&prefix_key(net)).map_err(Error::map(format!("lifting restrictions on {net}")))
    }

    pub fn entries(&self) -> Vec<(IpNet, Restriction)> {
        let mut v: Vec<_> = self.0.iter().filter_map(|r| r.ok()).map(|(k, r)| (key_prefix(&k), r)).collect();
        v.sort_unstable_by_key(|(net, _)| *net);
        v
    }
}

/// A per-CPU counter array indexed by country code, summed, non-zero
/// entries only.
fn per_country(map: &PerCpuArray<MapData, u64>, name: &str) -> Result<Vec<(u16, u64)>> {
    let mut out = Vec::new();
    for cc in 0..COUNTRY_CODE_SLOTS {
        let per_cpu = map.get(&cc, 0).map_err(Error::map(format!("reading {name}")))?;
        let n = per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        if n != 0 {
            out.push((cc as u16, n));
        }
    }
    Ok(out)
}

/// identity-suspend: one identity (tag) at one address.
pub struct IdentityRestrictions(HashMap<MapData, IdentityAt, IdentityRestriction>);

impl IdentityRestrictions {
    pub fn set(&mut self, addr: IpAddr, tag: u64, r: IdentityRestriction) -> Result<()> {
        let key = IdentityAt { addr: addr_key(addr), tag };
        self.0.insert(key, r, 0).map_err(Error::map(format!("suspending an identity at {addr}")))
    }

    pub fn get(&self, addr: IpAddr, tag: u64) -> Option<IdentityRestriction> {
        self.0.get(&IdentityAt { addr: addr_key(addr), tag }, 0).ok()
    }

    pub fn remove(&mut self, addr: IpAddr, tag: u64) -> Result<()> {
        let key = IdentityAt { addr: addr_key(addr), tag };
        match self.0.remove(&key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => r.map_err(Error::map(format!("lifting an identity's suspension at {addr}"))),
        }
    }

    /// Every entry: (address, tag, restriction).
    pub fn entries(&self) -> Vec<(IpAddr, u64, IdentityRestriction)> {
        self.0.iter().filter_map(|r| r.ok()).map(|(k, r)| (key_addr(&k.addr), k.tag, r)).collect()
    }
}

pub struct Allowlist(LpmTrie<MapData, AddrKey, AllowEntry>);

impl Allowlist {
    /// Makes the allowlist exactly `nets`.
    pub fn replace(&mut self, nets: &[IpNet]) -> Result<()> {
        for old in self.prefixes() {
            if !nets.contains(&old) {
                self.0.remove(&prefix_key(&old)).map_err(Error::map(format!("removing allow {old}")))?;
            }
        }
        for net in nets {
            self.0
                .insert(&prefix_key(net), AllowEntry::default(), 0)
                .map_err(Error::map(format!("allowing {net}")))?;
        }
        Ok(())
    }

    pub fn prefixes(&self) -> Vec<IpNet> {
        let mut v: Vec<_> = self.0.keys().filter_map(|k| k.ok()).map(|k| key_prefix(&k)).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keys_round_trip() {
        for s in
            ["203.0.113.0/24", "198.51.100.7/32", "0.0.0.0/0", "2001:db8::/32", "2001:db8::1/128", "::/0"]
        {
            let net: IpNet = s.parse().unwrap();
            assert_eq!(key_prefix(&prefix_key(&net)), net, "{s}");
        }
        assert_eq!(prefix_key(&"203.0.113.0/24".parse().unwrap()).prefix_len(), 120);
    }
}
