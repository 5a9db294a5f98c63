//! Typed access to the XDP program's maps.
//!
//! [`Maps`] owns the map handles, whether they come from a freshly loaded
//! object (`tollgate run`) or from the pins of a running or dead agent
//! (`tollgate status`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use ipnet::IpNet;
use tollgate_common::{
    AddrKey, AllowEntry, Baseline, BlockEntry, BlockKey, BlockLengths, Config, Counter, CountryRestriction,
    FAMILY_V4, FAMILY_V6, IdentityAt, IdentityRestriction, MAP_ALLOWLIST, MAP_BLOCK_EXACT, MAP_BLOCK_LENGTHS,
    MAP_BLOCKLIST, MAP_CONFIG, MAP_COUNTRY_BASELINE, MAP_COUNTRY_BLOCKED, MAP_COUNTRY_CODES,
    MAP_COUNTRY_INVITES, MAP_COUNTRY_RESTRICT, MAP_ID_RESTRICT, MAP_IFACE_STATS, MAP_INTL_BASELINE,
    MAP_NUMBER_PLAN, MAP_RESTRICTIONS, MAP_SIP_PORTS, MAP_SIP_STATS, MAP_SOURCES, MAP_STATS,
    MAX_BLOCK_LENGTHS, NO_EXPIRY, Restriction, SourceStats, V4_MAPPED_PREFIX_LEN, block_key,
    number::{COUNTRY_CODE_SLOTS, NumberPlan},
    port_key, prefix_mask, reason, sip_stat, v4_mapped, v4_unmapped, verdict,
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
    /// The loader of the program is the blocklist's writer: it indexes it
    /// ([`Blocklist::index`]).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut maps = Self::from_source(|name| {
            ebpf.take_map(name).ok_or_else(|| Error::Map {
                context: format!("map {name} missing from the eBPF object"),
                error: aya::maps::MapError::InvalidName { name: name.to_owned() },
            })
        })?;
        maps.blocklist.index()?;
        Ok(maps)
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
            blocklist: Blocklist::new(
                typed(s, MAP_BLOCKLIST)?,
                typed(s, MAP_BLOCK_EXACT)?,
                typed(s, MAP_BLOCK_LENGTHS)?,
            ),
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
fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::RawFd,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
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
    // values hold `count` records of the map's key and value sizes (K and V
    // are the map's key and value types: a packed Key<AddrKey> is the
    // 20-byte LPM key).
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

/// Prefix lengths of an [`AddrKey`]: 0 to 128.
const LENGTHS: usize = 129;

/// The blocklist: an LPM trie, and the same entries by exact prefix with
/// the prefix lengths they have, which is what the kernel looks a source
/// up in (a hash lookup per length; the trie when there are more lengths
/// than [`MAX_BLOCK_LENGTHS`], or while they are being indexed).
///
/// The agent that loaded the program is the blocklist's only writer: it
/// keeps a copy ([`Index`]), so reading the blocklist costs no system
/// calls there, and it knows when a length comes or goes. A handle on the
/// pins (`tollgate status`, the metrics' reader) reads the kernel's trie.
pub struct Blocklist {
    trie: LpmTrie<MapData, AddrKey, BlockEntry>,
    exact: HashMap<MapData, BlockKey, BlockEntry>,
    lengths: Array<MapData, BlockLengths>,
    index: Option<Index>,
}

/// The writer's copy of the blocklist.
struct Index {
    entries: BTreeMap<IpNet, BlockEntry>,
    lengths: Lengths,
    /// When each entry that lapses does (the expiry sweep's queue).
    deadlines: BTreeSet<(u64, IpNet)>,
    /// Entries an operator's block made ([`reason::OPERATOR`]).
    operator: usize,
    /// The slot of BLOCK_LENGTHS in force (0: the trie).
    active: u32,
}

/// Entries per prefix length of their keys, for each family of sources
/// they can match ([`FAMILY_V4`], [`FAMILY_V6`]).
struct Lengths([[u32; LENGTHS]; 2]);

impl Default for Lengths {
    fn default() -> Self {
        Self([[0; LENGTHS]; 2])
    }
}

impl Lengths {
    /// The families of sources `net`'s entry can match, and its key's
    /// length: an IPv4 prefix matches IPv4 sources (mapped into
    /// `::ffff:0:0/96`); an IPv6 one IPv6 sources, and IPv4 ones too if it
    /// covers `::ffff:0:0/96`.
    fn of(net: &IpNet) -> ([bool; 2], usize) {
        let key = prefix_key(net);
        let net = ipnet::Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
            .expect("key lengths are at most 128");
        let mapped = ipnet::Ipv6Net::new(Ipv6Addr::from(v4_mapped([0; 4])), V4_MAPPED_PREFIX_LEN as u8)
            .expect("96 is a length");
        let v4 = net.contains(&mapped) || mapped.contains(&net);
        let mut families = [false; 2];
        families[FAMILY_V4] = v4;
        families[FAMILY_V6] = !mapped.contains(&net);
        (families, key.prefix_len() as usize)
    }

    /// Counts `net`'s entry; whether a list gained a length.
    fn add(&mut self, net: &IpNet) -> bool {
        let (families, len) = Self::of(net);
        let mut new = false;
        for f in (0..2).filter(|f| families[*f]) {
            new |= self.0[f][len] == 0;
            self.0[f][len] += 1;
        }
        new
    }

    /// Whether `net`'s entry is the last of its length in a list.
    fn last(&self, net: &IpNet) -> bool {
        let (families, len) = Self::of(net);
        (0..2).any(|f| families[f] && self.0[f][len] == 1)
    }

    fn sub(&mut self, net: &IpNet) {
        let (families, len) = Self::of(net);
        for f in (0..2).filter(|f| families[*f]) {
            self.0[f][len] = self.0[f][len].saturating_sub(1);
        }
    }

    /// Each family's lengths with entries, longest first, if the kernel
    /// can look them all up one by one.
    fn lists(&self) -> Option<[Vec<u32>; 2]> {
        let list = |f: usize| -> Vec<u32> {
            (0..LENGTHS as u32).rev().filter(|l| self.0[f][*l as usize] > 0).collect()
        };
        let lists = [list(FAMILY_V4), list(FAMILY_V6)];
        lists.iter().all(|l| l.len() <= MAX_BLOCK_LENGTHS).then_some(lists)
    }
}

impl Blocklist {
    fn new(
        trie: LpmTrie<MapData, AddrKey, BlockEntry>,
        exact: HashMap<MapData, BlockKey, BlockEntry>,
        lengths: Array<MapData, BlockLengths>,
    ) -> Self {
        Self { trie, exact, lengths, index: None }
    }

    /// Makes the exact-prefix map what the trie holds and the kernel look
    /// sources up in it: the trie answers meanwhile. Done once by the
    /// agent that loads the program (about 3 s for a million entries:
    /// both maps read), before anything is written.
    pub fn index(&mut self) -> Result<()> {
        self.set_active(0)?;
        let entries: BTreeMap<IpNet, BlockEntry> = self.read_trie().into_iter().collect();
        let want: std::collections::HashMap<BlockKey, BlockEntry> =
            entries.iter().map(|(net, e)| (exact_key(net), *e)).collect();
        let stale: Vec<BlockKey> = self
            .exact
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, e)| want.get(k) != Some(e))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            match self.exact.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(Error::map("indexing the blocklist")(e)),
            }
        }
        let missing: Vec<(BlockKey, BlockEntry)> =
            want.into_iter().filter(|(k, e)| self.exact.get(k, 0).ok().as_ref() != Some(e)).collect();
        self.write_exact(&missing)?;
        let mut lengths = Lengths::default();
        for net in entries.keys() {
            lengths.add(net);
        }
        let deadlines = entries
            .iter()
            .filter(|(_, e)| e.expires_at_ns != NO_EXPIRY)
            .map(|(net, e)| (e.expires_at_ns, *net))
            .collect();
        let operator = entries.values().filter(|e| e.reason == reason::OPERATOR).count();
        self.index = Some(Index { entries, lengths, deadlines, operator, active: 0 });
        self.publish()
    }

    /// The index, made first if need be.
    fn indexed(&mut self) -> Result<&mut Index> {
        if self.index.is_none() {
            self.index()?;
        }
        Ok(self.index.as_mut().expect("indexed just above"))
    }

    fn set_active(&mut self, slot: u32) -> Result<()> {
        let head = BlockLengths { active: slot, ..BlockLengths::default() };
        self.lengths.set(0, head, 0).map_err(Error::map("writing BLOCK_LENGTHS"))?;
        if let Some(i) = &mut self.index {
            i.active = slot;
        }
        Ok(())
    }

    /// Tells the kernel the lengths in use: into the slot not in force,
    /// which then comes into force (or the trie, if there are too many).
    fn publish(&mut self) -> Result<()> {
        let index = self.index.as_ref().expect("published once indexed");
        let Some(lists) = index.lengths.lists() else { return self.set_active(0) };
        let slot = if index.active == 1 { 2 } else { 1 };
        let mut value = BlockLengths::default();
        for (list, lens) in value.lists.iter_mut().zip(lists) {
            list.count = lens.len() as u32;
            for (i, len) in lens.into_iter().enumerate() {
                list.lens[i] = len;
                list.masks[i] = prefix_mask(len);
            }
        }
        self.lengths.set(slot, value, 0).map_err(Error::map("writing BLOCK_LENGTHS"))?;
        self.set_active(slot)
    }

    /// Entries into the exact-prefix map, batched where the kernel takes
    /// batches.
    fn write_exact(&mut self, entries: &[(BlockKey, BlockEntry)]) -> Result<()> {
        use std::os::fd::{AsFd as _, AsRawFd as _};

        use aya::maps::IterableMap as _;
        for chunk in entries.chunks(BATCH) {
            let (keys, values): (Vec<BlockKey>, Vec<BlockEntry>) = chunk.iter().copied().unzip();
            let fd = self.exact.map().fd().as_fd().as_raw_fd();
            if update_batch(fd, &keys, &values).is_ok() {
                continue;
            }
            for (k, e) in chunk {
                self.exact.insert(k, e, 0).map_err(Error::map("writing BLOCK_EXACT"))?;
            }
        }
        Ok(())
    }

    /// After a failed write to the exact-prefix map the trie (written
    /// first) holds every entry: the kernel looks there until the next
    /// write indexes again.
    fn fall_back(&mut self) {
        if let Err(e) = self.set_active(0) {
            log::warn!("{e}");
        }
        self.index = None;
    }

    /// Inserts or replaces the entry for `net` (its `prefix_len` is set here).
    pub fn insert(&mut self, net: &IpNet, entry: BlockEntry) -> Result<()> {
        self.insert_many(&[(net.trunc(), entry)])
    }

    /// Inserts or replaces every entry, [`BATCH`] per system call
    /// (BPF_MAP_UPDATE_BATCH), where the kernel takes batches; otherwise
    /// one call per entry. The kernel's own work per entry (a node
    /// allocated and linked under the trie's lock) dominates either way:
    /// about 3.5 s per million entries into a trie of a million on a
    /// 2-vCPU machine, batched or not (`cargo xtask bench maps`); batches
    /// save the system calls. Stops at the first entry the kernel refuses
    /// (the map full), naming it. A new prefix length comes into force
    /// after its entries are in.
    pub fn insert_many(&mut self, entries: &[(IpNet, BlockEntry)]) -> Result<()> {
        use std::os::fd::{AsFd as _, AsRawFd as _};

        use aya::maps::IterableMap as _;
        self.indexed()?;
        for chunk in entries.chunks(BATCH) {
            let keys: Vec<Key<AddrKey>> = chunk.iter().map(|(net, _)| prefix_key(net)).collect();
            let values: Vec<BlockEntry> = chunk
                .iter()
                .zip(&keys)
                .map(|((_, e), k)| BlockEntry { prefix_len: k.prefix_len(), ..*e })
                .collect();
            let fd = self.trie.map().fd().as_fd().as_raw_fd();
            let written = if update_batch(fd, &keys, &values).is_ok() {
                chunk.len()
            } else {
                // No batches on this kernel (the count written back is not
                // reliable then), or an entry refused: the chunk again one
                // by one (inserting replaces), which names the refused
                // entry.
                let mut n = 0;
                for ((net, _), (k, v)) in chunk.iter().zip(keys.iter().zip(&values)) {
                    if let Err(e) = self.trie.insert(k, v, 0) {
                        self.index_written(&chunk[..n], &values[..n])?;
                        return Err(Error::map(format!("blocking {net}"))(e));
                    }
                    n += 1;
                }
                n
            };
            self.index_written(&chunk[..written], &values[..written])?;
        }
        Ok(())
    }

    /// Entries the trie took: into the exact-prefix map and the copy.
    fn index_written(&mut self, chunk: &[(IpNet, BlockEntry)], values: &[BlockEntry]) -> Result<()> {
        let exact: Vec<(BlockKey, BlockEntry)> =
            chunk.iter().zip(values).map(|((net, _), v)| (exact_key(net), *v)).collect();
        if let Err(e) = self.write_exact(&exact) {
            self.fall_back();
            return Err(e);
        }
        let index = self.index.as_mut().expect("indexed before writing");
        let mut new_length = false;
        for ((net, _), v) in chunk.iter().zip(values) {
            let net = net.trunc();
            index.operator += usize::from(v.reason == reason::OPERATOR);
            match index.entries.insert(net, *v) {
                Some(old) => {
                    index.deadlines.remove(&(old.expires_at_ns, net));
                    index.operator -= usize::from(old.reason == reason::OPERATOR);
                }
                None => new_length |= index.lengths.add(&net),
            }
            if v.expires_at_ns != NO_EXPIRY {
                index.deadlines.insert((v.expires_at_ns, net));
            }
        }
        if new_length { self.publish() } else { Ok(()) }
    }

    /// Removes the entry for `net`; a prefix length it was the last of
    /// goes out of force first.
    pub fn remove(&mut self, net: &IpNet) -> Result<()> {
        let net = &net.trunc();
        let index = self.indexed()?;
        if index.entries.contains_key(net) {
            let last = index.lengths.last(net);
            index.lengths.sub(net);
            if last && let Err(e) = self.publish() {
                // Still listed, and still counted.
                self.index.as_mut().expect("indexed").lengths.add(net);
                return Err(e);
            }
        }
        let removed = self.trie.remove(&prefix_key(net)).map_err(Error::map(format!("unblocking {net}")));
        let index = self.index.as_mut().expect("indexed");
        if let Some(old) = index.entries.remove(net) {
            index.deadlines.remove(&(old.expires_at_ns, *net));
            index.operator -= usize::from(old.reason == reason::OPERATOR);
        }
        match self.exact.remove(&exact_key(net)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => {
                self.fall_back();
                return Err(Error::map(format!("unblocking {net}"))(e));
            }
        }
        removed
    }

    /// The kernel's identities of the trie and of the exact-prefix map
    /// (`bpftool map show id N`).
    pub fn map_ids(&self) -> Result<[u32; 2]> {
        use aya::maps::IterableMap as _;
        let id = |m: &MapData| m.info().map(|i| i.id()).map_err(Error::map("reading the blocklist's info"));
        Ok([id(self.trie.map())?, id(self.exact.map())?])
    }

    /// Every entry as the kernel's trie holds it, read whole (what a
    /// handle on the pins does), sorted by prefix.
    pub fn read_from_kernel(&self) -> Vec<(IpNet, BlockEntry)> {
        self.read_trie()
    }

    /// Every entry (active or expired), sorted by prefix: from the
    /// writer's copy, or read from the kernel.
    pub fn entries(&self) -> Vec<(IpNet, BlockEntry)> {
        match &self.index {
            Some(i) => i.entries.iter().map(|(n, e)| (*n, *e)).collect(),
            None => self.read_trie(),
        }
    }

    /// The entries that lapsed by `now_ns` (CLOCK_MONOTONIC): from the
    /// writer's queue of deadlines (as many steps as there are), or read
    /// from the kernel.
    pub fn expired(&self, now_ns: u64) -> Vec<(IpNet, BlockEntry)> {
        match &self.index {
            Some(i) => i
                .deadlines
                .range(..(now_ns.saturating_add(1), IpNet::V4(Default::default())))
                .filter_map(|(_, net)| i.entries.get(net).map(|e| (*net, *e)))
                .filter(|(_, e)| !e.is_active(now_ns))
                .collect(),
            None => self.read_trie().into_iter().filter(|(_, e)| !e.is_active(now_ns)).collect(),
        }
    }

    /// How many entries there are, how many lapsed by `now_ns`, and how
    /// many operators' blocks are in force: from the writer's copy, in as
    /// many steps as entries lapsed (None: not the writer).
    pub fn counts(&self, now_ns: u64) -> Option<BlockCounts> {
        let i = self.index.as_ref()?;
        let expired = self.expired(now_ns);
        let operator_expired = expired.iter().filter(|(_, e)| e.reason == reason::OPERATOR).count();
        Some(BlockCounts {
            entries: i.entries.len(),
            expired: expired.len(),
            operator_active: i.operator - operator_expired,
        })
    }

    /// Whether `net` has an entry.
    pub fn contains(&self, net: &IpNet) -> bool {
        match &self.index {
            Some(i) => i.entries.contains_key(&net.trunc()),
            None => self.trie.get(&prefix_key(net), 0).is_ok(),
        }
    }

    /// The prefix lengths of its keys the kernel looks an IPv4 and an
    /// IPv6 source up at, longest first (None: it walks the trie).
    pub fn lengths_in_force(&self) -> Result<Option<[Vec<u32>; 2]>> {
        let read = |slot| self.lengths.get(&slot, 0).map_err(Error::map("reading BLOCK_LENGTHS"));
        let active = read(0)?.active;
        if active == 0 {
            return Ok(None);
        }
        let l = read(active)?;
        Ok(Some(l.lists.map(|list| list.lens[..(list.count as usize).min(MAX_BLOCK_LENGTHS)].to_vec())))
    }

    fn read_trie(&self) -> Vec<(IpNet, BlockEntry)> {
        let mut v: Vec<_> =
            self.trie.iter().filter_map(|r| r.ok()).map(|(k, e)| (key_prefix(&k), e)).collect();
        v.sort_unstable_by_key(|(net, _)| *net);
        v
    }
}

/// The blocklist's figures for the metrics ([`Blocklist::counts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockCounts {
    pub entries: usize,
    /// Lapsed, not yet removed: they no longer drop.
    pub expired: usize,
    /// Operators' blocks ([`reason::OPERATOR`]) in force.
    pub operator_active: usize,
}

impl BlockCounts {
    /// The same figures counted over `entries` (a reader's, off the pins).
    pub fn of(entries: &[(IpNet, BlockEntry)], now_ns: u64) -> Self {
        let active = |e: &BlockEntry| e.is_active(now_ns);
        Self {
            entries: entries.len(),
            expired: entries.iter().filter(|(_, e)| !active(e)).count(),
            operator_active: entries
                .iter()
                .filter(|(_, e)| e.reason == reason::OPERATOR && active(e))
                .count(),
        }
    }
}

/// The exact-prefix key of `net`.
fn exact_key(net: &IpNet) -> BlockKey {
    let key = prefix_key(net);
    block_key(&key.data(), key.prefix_len())
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
