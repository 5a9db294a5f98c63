//! Errors an operator can act on. Each renders as one line.
//!
//! Causes are part of each message and deliberately not `#[source]`: the
//! binary prints errors with `{:#}`, which would repeat a source after the
//! message that already names it.

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

    #[error("loading the eBPF object failed: {error}{hint}")]
    Load {
        error: Box<aya::EbpfError>,
        /// Extra advice, e.g. when pinned maps from another version are in the way.
        hint: String,
    },

    #[error(
        "the maps pinned in {dir} were made by an incompatible tollgate version ({maps}); the program they serve keeps running. Remove them with `tollgate detach --pin-path {dir}` (this also lifts the blocks and restrictions they hold), then start again",
        dir = dir.display()
    )]
    IncompatiblePins { dir: PathBuf, maps: String },

    #[error(
        "the blocklist pinned in {dir} holds at most {pinned} entries, --blocklist-capacity asks for {wanted}; the program it serves keeps running. Start with --blocklist-capacity {pinned}, or remove the pins with `tollgate detach --pin-path {dir}` (this also lifts the blocks and restrictions they hold) and start again",
        dir = dir.display()
    )]
    PinnedBlocklistCapacity { dir: PathBuf, pinned: u32, wanted: u32 },

    #[error(
        "tollgate's SIP parsing does not work on this kernel: in a start-up self-test {what}; refusing to start, since it would enforce static blocks only and detect nothing"
    )]
    SelfTest { what: String },

    #[error("the kernel rejected the XDP program: {0}")]
    Verifier(Box<aya::programs::ProgramError>),

    #[error("attaching to {iface} in {mode} mode failed: {error}")]
    Attach { iface: String, mode: &'static str, error: Box<aya::programs::ProgramError> },

    #[error("{iface}: the kernel attached {hook} without a bpf_link, which needs {needs} or newer")]
    NoLink { iface: String, hook: &'static str, needs: &'static str },

    #[error("pinning {what} at {}: {error}", path.display())]
    Pin { what: &'static str, path: PathBuf, error: String },

    #[error("the embedded eBPF object cannot be parsed: {error}")]
    Object { error: String },

    #[error("TOLLGATE_EGRESS_ATTACH={value:?}: expected `netlink` or `tcx` (or leave it unset)")]
    EgressAttachEnv { value: String },

    // `error`, not `source`: the message already carries it, and a source
    // would be printed twice in the one-line `{:#}` report.
    #[error("{iface}: adding the clsact qdisc the egress counter needs (Linux before 6.6) failed: {error}")]
    EgressQdisc { iface: String, error: Box<aya::programs::tc::TcError> },

    #[error("{iface}: removing tollgate's egress TC filter failed: {error}")]
    EgressFilter { iface: String, error: Box<aya::programs::tc::TcError> },

    #[error("another tollgate agent is listening on {}", path.display())]
    AgentRunning { path: PathBuf },

    #[error("cannot reach the agent at {} (is `tollgate run` running? are you root?): {error}", path.display())]
    AgentUnreachable { path: PathBuf, error: std::io::Error },

    #[error("the agent's answer is not valid: {error}")]
    BadAnswer { error: serde_json::Error },

    #[error("no tollgate state under {}", path.display())]
    NothingPinned { path: PathBuf },

    #[error("no identity key in {}: it is created when `tollgate run` first starts", dir.display())]
    NoIdentityKey { dir: PathBuf },

    #[error("cannot read the identity key {}: {error}{hint}", path.display())]
    IdentityKeyUnreadable {
        path: PathBuf,
        error: std::io::Error,
        /// Advice when permission is what is missing.
        hint: &'static str,
    },

    #[error(
        "the identity key {} has mode {mode:04o}, broader than 0600, so others may have read it; refusing to use it. If no one can have, `chmod 600 {}`; else remove it and `tollgate run` makes a new one (tags made with the old key then no longer match)",
        path.display(), path.display()
    )]
    IdentityKeyMode { path: PathBuf, mode: u32 },

    #[error(
        "the identity key {} belongs to uid {owner}, not to uid {uid} running tollgate; refusing a key another user controls. If you trust it, `chown {uid} {}`; else remove it and `tollgate run` makes a new one (tags made with the old key then no longer match)",
        path.display(), path.display()
    )]
    IdentityKeyOwner { path: PathBuf, owner: u32, uid: u32 },

    #[error(
        "{} is not a tollgate identity key ({problem}; a key is a file of {} random bytes): move it away and `tollgate run` makes a new one (tags made with the old key then no longer match)",
        path.display(), tollgate_common::IdentityKey::LEN
    )]
    IdentityKeyInvalid { path: PathBuf, problem: String },

    #[error("cannot get random bytes for a new identity key from the kernel (getrandom): {error}")]
    Random { error: std::io::Error },

    #[error("state database {}: {context}: {error}", path.display())]
    Store { path: PathBuf, context: String, error: String },

    /// A state database tollgate will not use, with advice.
    #[error("state database {}: {problem}", path.display())]
    StoreUnusable { path: PathBuf, problem: String },

    #[error("{context}: {error}")]
    Map { context: String, error: aya::maps::MapError },

    #[error("{context}: {error}")]
    Io { context: String, error: std::io::Error },
}

impl Error {
    /// The identity key at `path` could not be opened or read.
    pub fn identity_key_unreadable(path: PathBuf, error: std::io::Error) -> Self {
        let hint = if error.kind() == std::io::ErrorKind::PermissionDenied {
            " (it is readable by root only: run as root, with the --state-dir `tollgate run` uses)"
        } else {
            ""
        };
        Self::IdentityKeyUnreadable { path, error, hint }
    }

    pub fn map(context: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> Self {
        let context = context.into();
        move |error| Self::Map { context, error }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |error| Self::Io { context, error }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// What the binary prints (`{:#}` of an anyhow chain) names a cause once.
    #[test]
    fn a_cause_is_printed_once() {
        let e = Error::io("removing /x")(std::io::Error::other("busy"));
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "removing /x: busy");
        let e = Error::Pin { what: "the XDP link", path: "/p".into(), error: "EPERM".into() };
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "pinning the XDP link at /p: EPERM");
    }
}
