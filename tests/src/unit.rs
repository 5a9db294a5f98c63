//! The systemd unit the package ships (packaging/tollgate.service), as the
//! tests read it: its capability set is the one every test agent runs with
//! (`setpriv`), so the integration tests prove the set is enough, here and
//! in the kernel matrix's guests; tests/tests/unit.rs proves each
//! capability in it is needed.

use std::process::Command;

/// The unit file, as shipped (compiled in: the kernel matrix's guests have
/// no checkout).
pub const UNIT: &str = include_str!("../../packaging/tollgate.service");

/// The values of every `KEY=` line of the unit, in order (comments and
/// section headers skipped).
pub fn setting(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

/// The unit's `CapabilityBoundingSet=`, e.g. `["CAP_BPF", "CAP_NET_ADMIN"]`.
pub fn capabilities() -> Vec<String> {
    let sets = setting("CapabilityBoundingSet");
    assert_eq!(sets.len(), 1, "the unit has one CapabilityBoundingSet= line");
    sets[0].split_whitespace().map(str::to_owned).collect()
}

/// `setpriv`'s arguments that run what follows them as root limited to
/// exactly `caps` (names as in the unit): the bounding set, hence root's
/// permitted and effective sets after exec, as systemd's
/// `CapabilityBoundingSet=` leaves them; no inheritable or ambient
/// capabilities, and no new privileges (`NoNewPrivileges=yes`).
pub fn setpriv_args(caps: &[String]) -> Vec<String> {
    let mut set = String::from("-all");
    for cap in caps {
        let name = cap.strip_prefix("CAP_").unwrap_or(cap).to_ascii_lowercase();
        set.push_str(&format!(",+{name}"));
    }
    [format!("--bounding-set={set}")]
        .into_iter()
        .chain(["--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"].map(str::to_owned))
        .collect()
}

/// `program` under `setpriv` with exactly `caps` ([`setpriv_args`]).
pub fn confined(program: &std::path::Path, caps: &[String]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(setpriv_args(caps)).arg(program);
    cmd
}
