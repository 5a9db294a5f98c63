//! Errors an operator can act on. Each renders as one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`tollgate {command}` must run as root (it loads XDP programs and pins maps under the BPF filesystem)"
    )]
    NotRoot { command: &'static str },

    #[error(
        "tollgate needs Linux {major}.{minor} or newer (bpf_xdp_load_bytes, bpf_loop); this kernel is {found}"
    )]
    KernelTooOld {
        /// The running kernel's version, as aya reads it.
        found: aya::util::KernelVersion,
        major: u8,
        minor: u8,
    },

    #[error("interface {name:?} does not exist")]
    UnknownInterface { name: String },

    #[error("interface {name:?} is given more than once")]
    DuplicateInterface { name: String },

    #[error(
        "{} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` or choose another --pin-path",
        path.display()
    )]
    NotBpfFs { path: PathBuf },

    #[error("loading the eBPF object failed: {source}{hint}")]
    Load {
        source: Box<aya::EbpfError>,
        /// Extra advice, e.g. when pinned maps from another version are in the way.
        hint: String,
    },

    #[error(
        "the maps pinned in {dir} were made by an incompatible tollgate version ({maps}); the program they serve keeps running. Remove them with `tollgate detach --pin-path {dir}` (this also lifts the blocks and restrictions they hold), then start again",
        dir = dir.display()
    )]
    IncompatiblePins { dir: PathBuf, maps: String },

    #[error(
        "tollgate's SIP parsing does not work on this kernel: in a start-up self-test {what}; refusing to start, since it would enforce static blocks only and detect nothing"
    )]
    SelfTest { what: String },

    #[error("the kernel rejected the XDP program: {0}")]
    Verifier(#[source] Box<aya::programs::ProgramError>),

    #[error("attaching to {iface} in {mode} mode failed: {source}")]
    Attach { iface: String, mode: &'static str, source: Box<aya::programs::ProgramError> },

    #[error("TOLLGATE_EGRESS_ATTACH={value:?}: expected `netlink` or `tcx` (or leave it unset)")]
    EgressAttachEnv { value: String },

    // `error`, not `source`: the message already carries it, and a source
    // would be printed twice in the one-line `{:#}` report.
    #[error("{iface}: adding the clsact qdisc the egress counter needs (Linux before 6.6) failed: {error}")]
    EgressQdisc { iface: String, error: Box<aya::programs::tc::TcError> },

    #[error("{iface}: removing tollgate's egress TC filter failed: {error}")]
    EgressFilter { iface: String, error: Box<aya::programs::tc::TcError> },

    #[error("no tollgate state under {}", path.display())]
    NothingPinned { path: PathBuf },

    #[error("{context}: {source}")]
    Map { context: String, source: aya::maps::MapError },

    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    pub fn map(context: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> Self {
        let context = context.into();
        move |source| Self::Map { context, source }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
