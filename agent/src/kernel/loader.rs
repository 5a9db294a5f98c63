//! Loading the embedded object, attaching it to interfaces, and the pinned
//! state that lets enforcement outlive the agent.
//!
//! Layout under the pin directory (default /sys/fs/bpf/tollgate):
//! - one file per map (`BLOCKLIST`, `ALLOWLIST`, ...), re-used by the next
//!   agent so no block is lost when it restarts or dies;
//! - `link-<interface>`: the pinned XDP link; while it exists the program
//!   stays attached, with or without an agent. A restarted agent replaces the
//!   program inside the existing link atomically (no enforcement gap).
//! - `egress-<interface>`: the pinned TCX link of the egress counter (Linux
//!   6.6+); before 6.6, `tc-egress-<interface>` or `tcq-egress-<interface>`:
//!   the egress program pinned as the record of a netlink TC filter (see
//!   [`EgressPin`]).

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{
            NlOptions, SchedClassifierLink, TcAttachOptions, TcError, qdisc_add_clsact, qdisc_detach_program,
        },
        xdp::{XdpLink, XdpLinkId},
    },
    util::KernelVersion,
};
use log::{info, warn};
use tollgate_common::{PINNED_MAPS, PROG_ENFORCE, TAIL_PROGRAMS};

use crate::{
    cli::XdpModeArg,
    error::{Error, Result},
};

/// The XDP object built by build.rs, embedded so the binary and the kernel
/// program always match.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate"));

const LINK_PREFIX: &str = "link-";
const EGRESS_PREFIX: &str = "egress-";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The oldest kernel the program loads and attaches on. What needs what:
/// - BPF ring buffer (threshold events, `EVENTS`): 5.8;
/// - XDP attached through a pinnable `bpf_link` (enforcement outliving the
///   agent, atomic replacement on restart): 5.9;
/// - `bpf_loop` (the SIP header scan): 5.17;
/// - `bpf_xdp_load_bytes` (reading the SIP payload at XDP): 5.18.
///
/// (`--egress-iface` uses TCX links from 6.6, netlink TC before.)
pub const MIN_KERNEL: (u8, u8) = (5, 18);

/// Whether kernel `version` is new enough for the program.
pub fn kernel_supported(version: KernelVersion) -> bool {
    version >= KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0)
}

/// Refuses a kernel older than [`MIN_KERNEL`] with one line, before
/// anything is loaded (the verifier's own complaint would name a helper,
/// not the kernel). If the version cannot be read, warns and goes on.
pub fn require_kernel() -> Result<()> {
    match KernelVersion::current() {
        Ok(v) if kernel_supported(v) => Ok(()),
        Ok(v) => Err(Error::KernelTooOld { found: v, major: MIN_KERNEL.0, minor: MIN_KERNEL.1 }),
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                warn!(
                    "cannot read the kernel version ({e}); going on, but tollgate needs Linux {}.{} or newer",
                    MIN_KERNEL.0, MIN_KERNEL.1
                )
            });
            Ok(())
        }
    }
}

pub fn require_root(command: &'static str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot { command });
    }
    Ok(())
}

/// The interface index of `name` in this network namespace.
pub fn if_index(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| Error::UnknownInterface { name: name.to_owned() })?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(Error::UnknownInterface { name: name.to_owned() }),
        i => Ok(i),
    }
}

const BPF_FS_ROOT: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs is plain data; the pointers are valid for the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid statfs to write to.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `dir` will be on a BPF filesystem: its closest existing
/// ancestor must be on bpffs. When the standard /sys/fs/bpf is not mounted
/// (hosts without systemd), it is mounted, as other BPF daemons do.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    let root = Path::new(BPF_FS_ROOT);
    if dir.starts_with(root) && root.is_dir() {
        let src = CString::new("bpf").expect("no NUL");
        let target = CString::new(BPF_FS_ROOT).expect("no NUL");
        // SAFETY: valid NUL-terminated strings; no mount data.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc == 0 && is_bpffs(dir.ancestors().find(|p| p.exists()).unwrap_or(root)) {
            info!("mounted a BPF filesystem on {BPF_FS_ROOT}");
            return Ok(());
        }
    }
    Err(Error::NotBpfFs { path: dir.to_owned() })
}

/// Loads the embedded object. With `pin_dir`, every map is pinned there, or
/// re-used if a previous agent already pinned it.
pub fn load(pin_dir: Option<&Path>) -> Result<Ebpf> {
    load_with(pin_dir, MapSizes::default())
}

/// The map sizes set at load time, by flags (the others are the object's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `--max-sources`: the per-source LRU map.
    pub max_sources: u32,
    /// `--blocklist-capacity`: the blocklist trie.
    pub blocklist_capacity: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            max_sources: tollgate_common::SOURCES_CAPACITY,
            blocklist_capacity: tollgate_common::BLOCKLIST_CAPACITY,
        }
    }
}

/// Pinned maps whose key or value layout differs from this build's, as
/// "NAME (key/value bytes pinned, here)", or whose number of entries does
/// (the per-source map excepted: `--max-sources` sizes it, and an LRU map
/// of another size is adopted as it is). Adopting one would make the
/// kernel and the agent misread it, and the verifier does not always
/// notice (a smaller value read only in its first bytes passes; a counter
/// array with fewer entries than verdicts silently loses some). A pinned
/// blocklist of another size than `sizes` asks for is [`pinned_capacity`]'s.
pub fn incompatible_pins(dir: &Path) -> Result<Vec<String>> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| Error::Object { error: e.to_string() })?;
    let mut bad = Vec::new();
    for name in PINNED_MAPS {
        let path = dir.join(name);
        let Some(def) = obj.maps.get(name).filter(|_| path.exists()) else { continue };
        let want = (def.key_size(), def.value_size());
        let sized_here =
            ![tollgate_common::MAP_SOURCES, tollgate_common::MAP_BLOCKLIST, tollgate_common::MAP_BLOCK_EXACT]
                .contains(&name);
        match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) if (info.key_size(), info.value_size()) != want => bad.push(format!(
                "{name}: {}/{} bytes pinned, {}/{} here",
                info.key_size(),
                info.value_size(),
                want.0,
                want.1
            )),
            Ok(info) if sized_here && info.max_entries() != def.max_entries() => {
                bad.push(format!("{name}: {} entries pinned, {} here", info.max_entries(), def.max_entries()))
            }
            Ok(_) => {}
            Err(e) => bad.push(format!("{name}: {e}")),
        }
    }
    Ok(bad)
}

/// The capacity of the blocklist pinned in `dir`, if it is not `wanted`.
/// It holds blocks that must not be lost, and an LPM trie cannot be
/// resized in place: the operator chooses between the pinned size and
/// starting afresh.
pub fn pinned_capacity(dir: &Path, wanted: u32) -> Result<Option<u32>> {
    let path = dir.join(tollgate_common::MAP_BLOCKLIST);
    if !path.exists() {
        return Ok(None);
    }
    let info = aya::maps::MapInfo::from_pin(&path).map_err(Error::map(format!("map {}", path.display())))?;
    Ok((info.max_entries() != wanted).then_some(info.max_entries()))
}

/// Like [`load`], with the maps `sizes` names sized by it.
pub fn load_with(pin_dir: Option<&Path>, sizes: MapSizes) -> Result<Ebpf> {
    require_kernel()?;
    raise_memlock_limit();
    if let Some(dir) = pin_dir {
        let bad = incompatible_pins(dir)?;
        if !bad.is_empty() {
            return Err(Error::IncompatiblePins { dir: dir.to_owned(), maps: bad.join("; ") });
        }
        if let Some(pinned) = pinned_capacity(dir, sizes.blocklist_capacity)? {
            return Err(Error::PinnedBlocklistCapacity {
                dir: dir.to_owned(),
                pinned,
                wanted: sizes.blocklist_capacity,
            });
        }
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(tollgate_common::MAP_SOURCES, sizes.max_sources);
    loader.map_max_entries(tollgate_common::MAP_BLOCKLIST, sizes.blocklist_capacity);
    loader.map_max_entries(tollgate_common::MAP_BLOCK_EXACT, sizes.blocklist_capacity);
    let paths: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => PINNED_MAPS.iter().map(|m| (*m, dir.join(m))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(EBPF_OBJECT).map_err(|source| {
        let hint = match pin_dir {
            Some(dir) if dir.exists() => format!(
                " (if the maps pinned in {} come from an incompatible tollgate version, remove them with `tollgate detach --pin-path {}`)",
                dir.display(),
                dir.display()
            ),
            _ => String::new(),
        };
        Error::Load { error: Box::new(source), hint }
    })
}

/// Loads (verifies) the SIP parsing and counting stages and fills the jump
/// tables the XDP and TC programs tail-call through. Done before anything is
/// attached, so a (re)attached program never finds stale stages.
pub fn load_sip_stages(ebpf: &mut Ebpf) -> Result<()> {
    use aya::{
        maps::ProgramArray,
        programs::{Program, ProgramFd},
    };
    for (map, index, name) in TAIL_PROGRAMS {
        let prog = ebpf.program_mut(name).expect("the object contains every SIP stage");
        let fd: ProgramFd = match prog {
            Program::Xdp(p) => {
                p.load().map_err(|e| Error::Verifier(Box::new(e)))?;
                p.fd()
            }
            Program::SchedClassifier(p) => {
                p.load().map_err(|e| Error::Verifier(Box::new(e)))?;
                p.fd()
            }
            _ => unreachable!("SIP stages are XDP or TC programs"),
        }
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|e| Error::Verifier(Box::new(e)))?;
        let mut table: ProgramArray<_> =
            ProgramArray::try_from(ebpf.map_mut(map).expect("the object contains the jump tables"))
                .map_err(Error::map(format!("map {map}")))?;
        table.set(index, &fd, 0).map_err(Error::map(format!("filling {map}[{index}] with {name}")))?;
    }
    Ok(())
}

/// Loads (verifies) the enforcement program.
pub fn enforcement_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_ENFORCE)
        .expect("the object always contains the enforcement program")
        .try_into()
        .expect("the enforcement program is XDP");
    prog.load().map_err(|e| Error::Verifier(Box::new(e)))?;
    Ok(prog)
}

/// The pin file for `iface` under `prefix`. bpffs refuses names with a '.'
/// (EPERM), which VLAN sub-interfaces (`eth0.100`) have; ':' is never in an
/// interface name (the kernel refuses it), so it stands in for '.'.
fn pin_file(dir: &Path, prefix: &str, iface: &str) -> PathBuf {
    dir.join(format!("{prefix}{}", iface.replace('.', ":")))
}

fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    pin_file(dir, LINK_PREFIX, iface)
}

/// How the program ended up on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// Newly attached in this mode and pinned.
    Attached { mode: &'static str },
    /// A pinned link from a previous agent now runs this program.
    Adopted,
}

/// Attaches `prog` to `iface`, or adopts the link a previous agent pinned
/// there, replacing its program atomically.
pub fn attach(prog: &mut Xdp, iface: &str, mode: XdpModeArg, pin_dir: &Path) -> Result<Attachment> {
    let pin = link_pin(pin_dir, iface);
    if pin.exists() {
        match adopt(prog, &pin) {
            Ok(_) => return Ok(Attachment::Adopted),
            Err(e) => {
                warn!("cannot adopt the pinned link {} ({e}); attaching afresh", pin.display());
                let _ = fs::remove_file(&pin);
            }
        }
    }
    let (id, mode) = attach_in_mode(prog, iface, mode)?;
    let link = prog.take_link(id).map_err(|source| Error::Attach {
        iface: iface.to_owned(),
        mode,
        error: Box::new(source),
    })?;
    // A bpf_link (Linux >= 5.9) is what can be pinned; without one the
    // program would detach whenever the agent exits, silently ending
    // enforcement, so refuse instead.
    pin_link(link, iface, ("XDP", "Linux 5.9"), "the XDP link", &pin)?;
    Ok(Attachment::Attached { mode })
}

/// Pins the bpf_link the kernel made for `iface`'s `hook` at `pin`, so the
/// attachment outlives the agent; fails if the kernel made none (it would
/// need `needs`).
fn pin_link<L: TryInto<FdLink>>(
    link: L,
    iface: &str,
    (hook, needs): (&'static str, &'static str),
    what: &'static str,
    pin: &Path,
) -> Result<()> {
    let fd_link = link.try_into().map_err(|_| Error::NoLink { iface: iface.to_owned(), hook, needs })?;
    fd_link.pin(pin).map_err(|e| Error::Pin { what, path: pin.to_owned(), error: e.to_string() })?;
    Ok(())
}

fn adopt(prog: &mut Xdp, pin: &Path) -> std::result::Result<XdpLinkId, String> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| e.to_string())?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    prog.attach_to_link(link).map_err(|e| e.to_string())
}

fn attach_in_mode(prog: &mut Xdp, iface: &str, mode: XdpModeArg) -> Result<(XdpLinkId, &'static str)> {
    let try_mode = |prog: &mut Xdp, m: XdpMode, name: &'static str| {
        prog.attach(iface, m).map(|id| (id, name)).map_err(|source| Error::Attach {
            iface: iface.to_owned(),
            mode: name,
            error: Box::new(source),
        })
    };
    match mode {
        XdpModeArg::Driver => try_mode(prog, XdpMode::Driver, "driver"),
        XdpModeArg::Skb => try_mode(prog, XdpMode::Skb, "skb"),
        XdpModeArg::Auto => try_mode(prog, XdpMode::Driver, "driver").or_else(|e| {
            warn!("{e}; falling back to generic (skb) mode, which is slower");
            try_mode(prog, XdpMode::Skb, "skb")
        }),
    }
}

/// How the egress counter is attached: a TCX bpf_link (Linux 6.6+), or
/// before that a netlink TC filter under a clsact qdisc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMode {
    Tcx,
    Netlink,
}

/// Testing and operations override of the egress attach mechanism:
/// `netlink` or `tcx`. Without it the kernel decides (TCX from 6.6). The
/// tests use it to run the pre-6.6 netlink path on a newer kernel; an
/// operator could use it to keep filters visible to `tc filter show`.
/// Deliberately not a flag: nobody should need it.
pub const EGRESS_ATTACH_ENV: &str = "TOLLGATE_EGRESS_ATTACH";

/// The mechanism for this kernel, or the one [`EGRESS_ATTACH_ENV`] names.
pub fn egress_mode() -> Result<EgressMode> {
    match std::env::var(EGRESS_ATTACH_ENV).ok().as_deref() {
        Some("tcx") => return Ok(EgressMode::Tcx),
        Some("netlink") => return Ok(EgressMode::Netlink),
        Some(other) => return Err(Error::EgressAttachEnv { value: other.to_owned() }),
        None => {}
    }
    // aya's own `KernelVersion::at_least` is crate-private in 0.14.
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(6, 6, 0) => Ok(EgressMode::Tcx),
        Ok(_) => Ok(EgressMode::Netlink),
        Err(e) => {
            warn!("cannot read the kernel version ({e}); attaching the egress counter with netlink TC");
            Ok(EgressMode::Netlink)
        }
    }
}

/// What records an egress attachment under the pin directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressPin {
    /// `egress-<iface>`: the pinned TCX link; unpinning it detaches.
    Tcx,
    /// `tc-egress-<iface>` (a clsact qdisc was already there, someone
    /// else's) or `tcq-egress-<iface>` (the agent created the qdisc): the
    /// program itself, pinned as a marker, since bpffs holds no regular
    /// files and a netlink filter has no link to pin. The filter stays
    /// attached whether or not an agent runs.
    Netlink { own_qdisc: bool },
}

impl EgressPin {
    const ALL: [Self; 3] = [Self::Tcx, Self::Netlink { own_qdisc: false }, Self::Netlink { own_qdisc: true }];

    /// No prefix is a prefix of another, and none can be confused with an
    /// interface name: `egress-tc-eth0` could be the TCX pin of `tc-eth0`.
    fn prefix(self) -> &'static str {
        match self {
            Self::Tcx => EGRESS_PREFIX,
            Self::Netlink { own_qdisc: false } => "tc-egress-",
            Self::Netlink { own_qdisc: true } => "tcq-egress-",
        }
    }

    fn path(self, dir: &Path, iface: &str) -> PathBuf {
        pin_file(dir, self.prefix(), iface)
    }

    /// For logs and `tollgate status`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink { own_qdisc: false } => "netlink, existing clsact",
            Self::Netlink { own_qdisc: true } => "netlink, clsact created by tollgate",
        }
    }
}

/// Attaches the TC egress counting program to `iface` in `mode` (see
/// [`egress_mode`]), or takes over what a previous agent left there.
/// Returns how, for the log ("tcx", "netlink, clsact created", ...).
pub fn attach_egress(ebpf: &mut Ebpf, iface: &str, pin_dir: &Path, mode: EgressMode) -> Result<Attachment> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(tollgate_common::PROG_EGRESS)
        .expect("the object always contains the egress program")
        .try_into()
        .expect("the egress program is a TC classifier");
    if prog.fd().is_err() {
        prog.load().map_err(|e| Error::Verifier(Box::new(e)))?;
    }
    // What a previous agent left in the other mode goes first (a kernel
    // upgrade, or the override changed), so the program never counts twice.
    for pin in EgressPin::ALL {
        let other = (pin == EgressPin::Tcx) != (mode == EgressMode::Tcx);
        if other && pin.path(pin_dir, iface).exists() {
            detach_egress(pin_dir, iface, pin)?;
            info!("{iface}: removed the egress counter a previous agent attached with {}", pin.describe());
        }
    }
    match mode {
        EgressMode::Tcx => attach_egress_tcx(prog, iface, pin_dir),
        EgressMode::Netlink => attach_egress_netlink(prog, iface, pin_dir),
    }
}

fn attach_egress_tcx(prog: &mut SchedClassifier, iface: &str, pin_dir: &Path) -> Result<Attachment> {
    let pin = EgressPin::Tcx.path(pin_dir, iface);
    if pin.exists() {
        let adopted = PinnedLink::from_pin(&pin)
            .map_err(|e| e.to_string())
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
            .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
        match adopted {
            Ok(_) => return Ok(Attachment::Adopted),
            Err(e) => {
                warn!("cannot adopt the pinned egress link {} ({e}); attaching afresh", pin.display());
                let _ = fs::remove_file(&pin);
            }
        }
    }
    let attach_err =
        |source| Error::Attach { iface: iface.to_owned(), mode: "tc egress (tcx)", error: Box::new(source) };
    let id = prog
        .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    pin_link(link, iface, ("TC (TCX)", "Linux 6.6"), "the egress link", &pin)?;
    Ok(Attachment::Attached { mode: "tcx" })
}

/// Whether a netlink error is "exists already" / "not found".
fn tc_errno(e: &TcError) -> Option<i32> {
    match e {
        TcError::NetlinkError(e) => e.raw_os_error(),
        TcError::IoError(e) if e.kind() == std::io::ErrorKind::NotFound => Some(libc::ENOENT),
        TcError::IoError(e) => e.raw_os_error(),
        _ => None,
    }
}

/// The netlink filter's priority: the largest number, so it runs after every
/// other egress filter on the interface (as the TCX link is attached last).
/// The program ends classification when it returns, so a filter placed
/// first (the kernel's choice for priority 0) would silence filters that
/// were there before it.
const EGRESS_FILTER_PRIORITY: u16 = u16::MAX;

fn attach_egress_netlink(prog: &mut SchedClassifier, iface: &str, pin_dir: &Path) -> Result<Attachment> {
    let owned_before = EgressPin::Netlink { own_qdisc: true }.path(pin_dir, iface).exists();
    let created = match qdisc_add_clsact(iface) {
        Ok(()) => true,
        Err(e) if tc_errno(&e) == Some(libc::EEXIST) => false,
        Err(e) => {
            return Err(Error::EgressQdisc { iface: iface.to_owned(), error: Box::new(e) });
        }
    };
    // The filter a previous agent left (it counts until now): without
    // removing it every response would be counted twice.
    if !created {
        match qdisc_detach_program(iface, TcAttachType::Egress, tollgate_common::PROG_EGRESS) {
            Ok(()) => info!("{iface}: replacing the egress filter a previous agent left"),
            Err(e) if tc_errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::EgressFilter { iface: iface.to_owned(), error: Box::new(e) }),
        }
    }
    let pin = EgressPin::Netlink { own_qdisc: created || owned_before };
    let undo = |why: &str| {
        let _ = qdisc_detach_program(iface, TcAttachType::Egress, tollgate_common::PROG_EGRESS);
        if created && let Err(e) = if_index(iface).and_then(|i| clsact_delete(iface, i)) {
            warn!("{iface}: removing the clsact qdisc after {why} failed: {e}");
        }
    };
    let options = NlOptions { priority: EGRESS_FILTER_PRIORITY, ..NlOptions::default() };
    let id = prog
        .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::Netlink(options))
        .map_err(|source| {
            undo("a failed attach");
            Error::Attach { iface: iface.to_owned(), mode: "tc egress (netlink)", error: Box::new(source) }
        })?;
    // Dropping the link would detach the filter (when `ebpf` is dropped
    // at exit); it must outlive the agent like the pinned links do. It is
    // plain data (ifindex, priority, handle), so forgetting it leaks
    // nothing; `detach_egress` removes the filter by name.
    let link = prog.take_link(id).map_err(|source| Error::Attach {
        iface: iface.to_owned(),
        mode: "tc egress (netlink)",
        error: Box::new(source),
    })?;
    std::mem::forget(link);
    for old in [EgressPin::Netlink { own_qdisc: false }, EgressPin::Netlink { own_qdisc: true }] {
        let _ = fs::remove_file(old.path(pin_dir, iface));
    }
    let path = pin.path(pin_dir, iface);
    if let Err(e) = prog.pin(&path) {
        undo("a failed pin");
        return Err(Error::Pin { what: "the egress marker", path, error: e.to_string() });
    }
    Ok(Attachment::Attached {
        mode: match (created, owned_before) {
            (true, _) => "netlink, clsact created",
            (false, true) => "netlink, clsact created by a previous agent",
            (false, false) => "netlink, existing clsact",
        },
    })
}

fn clsact_delete(iface: &str, ifindex: u32) -> Result<()> {
    crate::clsact::delete(ifindex)
        .map(|_| ())
        .map_err(Error::io(format!("{iface}: deleting the clsact qdisc tollgate created")))
}

/// Egress attachments recorded in `dir`: interface and how, by interface.
pub fn pinned_egress(dir: &Path) -> Vec<(String, EgressPin)> {
    let mut v: Vec<(String, EgressPin)> = EgressPin::ALL
        .into_iter()
        .flat_map(|pin| pinned_with_prefix(dir, pin.prefix()).into_iter().map(move |i| (i, pin)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Detaches the egress counter recorded by `pin` from `iface`. For a
/// netlink attachment (in the caller's network namespace): the filter, then
/// the clsact qdisc only if tollgate created it, then the marker. An
/// interface that no longer exists took its filter and qdisc with it.
pub fn detach_egress(dir: &Path, iface: &str, pin: EgressPin) -> Result<()> {
    let path = pin.path(dir, iface);
    if pin == EgressPin::Tcx
        && let Err(e) = detach_pinned_link(&path)
    {
        // As for the XDP link: the pin alone would detach it only after
        // an RCU grace period, and a detach returned with it still there.
        log::debug!("BPF_LINK_DETACH of {}: {e}; the link goes with its pin", path.display());
    }
    if let EgressPin::Netlink { own_qdisc } = pin {
        match if_index(iface) {
            Err(_) => warn!(
                "{iface}: no such interface in this network namespace; if it exists elsewhere, its tollgate_egress TC filter{} stays",
                if own_qdisc { " and clsact qdisc" } else { "" }
            ),
            Ok(ifindex) => {
                match qdisc_detach_program(iface, TcAttachType::Egress, tollgate_common::PROG_EGRESS) {
                    Ok(()) => {}
                    Err(e) if tc_errno(&e) == Some(libc::ENOENT) => {}
                    Err(e) => {
                        return Err(Error::EgressFilter { iface: iface.to_owned(), error: Box::new(e) });
                    }
                }
                if own_qdisc {
                    clsact_delete(iface, ifindex)?;
                }
            }
        }
    }
    fs::remove_file(&path).map_err(Error::io(format!("removing {}", path.display())))
}

fn pinned_with_prefix(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix).map(|i| i.replace(':', ".")))
        .collect();
    v.sort();
    v
}

/// Interfaces with a pinned XDP link in `dir`.
pub fn pinned_links(dir: &Path) -> Vec<String> {
    pinned_with_prefix(dir, LINK_PREFIX)
}

/// Removes the pinned link for `iface`: the program detaches from it once no
/// process holds the link any more.
pub fn unpin_link(dir: &Path, iface: &str) -> Result<()> {
    let pin = link_pin(dir, iface);
    if let Err(e) = detach_pinned_link(&pin) {
        log::debug!("BPF_LINK_DETACH of {}: {e}; the link goes with its pin", pin.display());
    }
    fs::remove_file(&pin).map_err(Error::io(format!("removing {}", pin.display())))
}

/// Detaches the link pinned at `pin` at once (BPF_LINK_DETACH on a file
/// descriptor from BPF_OBJ_GET). Removing the pin alone releases the link
/// only when the kernel frees the pin's inode, after an RCU grace period:
/// `tollgate detach` and a stop returned while the program still ran on
/// the interface, for as long as a loaded host took to get there.
fn detach_pinned_link(pin: &Path) -> std::io::Result<()> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let get = ObjGet { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET, with its size; the
    // path outlives the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &get as *const ObjGet, size_of::<ObjGet>() as u32)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; it is closed on drop.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let detach = LinkDetach { link_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32 };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_DETACH, with its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &detach as *const LinkDetach,
            size_of::<LinkDetach>() as u32,
        )
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Removes every pinned link and map under `dir`, and `dir` itself.
/// Returns the interfaces that were detached.
pub fn remove_pinned_state(dir: &Path) -> Result<Vec<String>> {
    if !dir.exists() {
        return Err(Error::NothingPinned { path: dir.to_owned() });
    }
    let ifaces = pinned_links(dir);
    for iface in &ifaces {
        unpin_link(dir, iface)?;
        info!("detached from {iface}");
    }
    for (iface, pin) in pinned_egress(dir) {
        detach_egress(dir, &iface, pin)?;
        info!("detached the egress counter from {iface} ({})", pin.describe());
    }
    for map in PINNED_MAPS {
        let p = dir.join(map);
        if p.exists() {
            fs::remove_file(&p).map_err(Error::io(format!("removing {}", p.display())))?;
        }
    }
    fs::remove_dir(dir).map_err(Error::io(format!("removing {}", dir.display())))?;
    Ok(ifaces)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_from_5_18_are_supported() {
        for (v, ok) in [
            (KernelVersion::new(4, 19, 300), false),
            (KernelVersion::new(5, 10, 0), false),
            (KernelVersion::new(5, 17, 255), false),
            (KernelVersion::new(5, 18, 0), true),
            (KernelVersion::new(5, 18, 19), true),
            (KernelVersion::new(6, 1, 0), true),
            (KernelVersion::new(6, 18, 0), true),
        ] {
            assert_eq!(kernel_supported(v), ok, "{v}");
        }
    }

    #[test]
    fn an_old_kernel_is_refused_in_one_line() {
        let e = Error::KernelTooOld { found: KernelVersion::new(5, 10, 0), major: 5, minor: 18 };
        assert_eq!(
            e.to_string(),
            "tollgate needs Linux 5.18 or newer (bpf_xdp_load_bytes, bpf_loop); this kernel is 5.10.0"
        );
    }

    #[test]
    fn egress_pin_names_cannot_be_confused() {
        let dir = Path::new("/x");
        let names: Vec<PathBuf> = EgressPin::ALL.iter().map(|p| p.path(dir, "tc-eth0")).collect();
        assert_eq!(
            names,
            ["/x/egress-tc-eth0", "/x/tc-egress-tc-eth0", "/x/tcq-egress-tc-eth0"].map(PathBuf::from)
        );
        for a in EgressPin::ALL {
            for b in EgressPin::ALL {
                assert!(a == b || !a.prefix().starts_with(b.prefix()), "{a:?} {b:?}");
            }
        }
    }
}
