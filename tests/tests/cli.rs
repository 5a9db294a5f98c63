//! Bad input gets one clear line and a non-zero exit, never a panic.

use std::process::{Command, Output};

use tollgate_tests::{privileged, tollgate_bin};

fn tollgate(args: &[&str]) -> Output {
    let mut cmd = Command::new(tollgate_bin());
    cmd.args(args);
    // Never the host's /etc/tollgate/tollgate.toml (as Agent::spawn).
    if args.first() == Some(&"run") {
        cmd.args(["--config", "/dev/null"]);
    }
    cmd.output().expect("run tollgate")
}

fn assert_clean_failure(out: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn malformed_flags_are_rejected_by_the_parser() {
    for (args, expect) in [
        (&["run", "--iface", "lo", "--block", "203.0.113.0/33"][..], "not an IP prefix"),
        (&["run", "--iface", "lo", "--block", "203.0.113.7=0s"], "greater than zero"),
        (&["run", "--iface", "lo", "--block", "203.0.113.7=-5m"], "not a duration"),
        (&["run", "--iface", "lo", "--allow", "not-an-address"], "not an IP prefix"),
        (&["run", "--iface", "lo", "--sip-port", "0"], "not a port number"),
        (&["run", "--iface", "lo", "--xdp-mode", "turbo"], "invalid value"),
        (&["run", "--iface", "lo", "--metrics-addr", "nowhere"], "invalid value"),
        (&["run"], "--iface"),
        (&["run", "--iface", "lo", "--surge-ratio", "0.5"], "not a ratio of at least 1"),
        (&["run", "--iface", "lo", "--surge-ratio", "NaN"], "not a ratio of at least 1"),
        (&["run", "--iface", "lo", "--baseline-weight", "0"], "not a weight in (0, 1]"),
        (&["run", "--iface", "lo", "--baseline-weight", "1.5"], "not a weight in (0, 1]"),
        (&["run", "--iface", "lo", "--baseline-min-windows", "0"], "is not in 1.."),
        (&["run", "--iface", "lo", "--country-min-sources", "0"], "is not in 1..=128"),
        (&["run", "--iface", "lo", "--country-min-sources", "129"], "is not in 1..=128"),
        (&["run", "--iface", "lo", "--country-restrict-for", "0s"], "greater than zero"),
        (&["run", "--iface", "lo", "--identity-thresholds", "30,60"], "not 3 comma-separated counts"),
        (&["run", "--iface", "lo", "--country-longer-thresholds", "x,1"], "not 2 comma-separated counts"),
        (&["run", "--iface", "lo", "--identity-prefix", "33,48"], "not an IPv4 length (8-32)"),
        (&["run", "--iface", "lo", "--baseline-learn-below", "0"], "not a weight in (0, 1]"),
        (&["run", "--iface", "lo", "--baseline-max-rise", "0.9"], "not a ratio of at least 1"),
        (&["run", "--iface", "lo", "--baseline-min-history", "soon"], "not a duration"),
        (&["run", "--iface", "lo", "--high-risk-divisor", "0"], "is not in 1.."),
        (&["run", "--iface", "lo", "--blocklist-capacity", "1000"], "is not in 8192..=16777216"),
        (&["run", "--iface", "lo", "--blocklist-capacity", "16777217"], "is not in 8192..=16777216"),
        (&["baseline", "set", "source", "198.51.100.1", "--scale", "hourly"], "invalid value"),
        (&["restrict", "intl", "--for", "30d"], "<TARGET|--identity <NAME>|--tag <TAG>>"),
        (&["restrict", "intl", "198.51.100.7", "--identity", "1001", "--for", "1h"], "cannot be used with"),
        (&["restrict", "intl", "--identity", "1001", "--tag", "00ab", "--for", "1h"], "cannot be used with"),
    ] {
        let out = tollgate(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_clean_failure(&out, expect);
    }
}

#[test]
fn unknown_interface_and_duplicates_fail_before_touching_the_kernel() {
    if !privileged("unknown_interface_and_duplicates_fail_before_touching_the_kernel") {
        return;
    }
    let out = tollgate(&["run", "--iface", "tgt-no-such-if", "--pin-path", "/sys/fs/bpf/tgt-never-created"]);
    assert_eq!(out.status.code(), Some(1));
    assert_clean_failure(&out, "interface \"tgt-no-such-if\" does not exist");
    let out =
        tollgate(&["run", "--iface", "lo", "--iface", "lo", "--pin-path", "/sys/fs/bpf/tgt-never-created"]);
    assert_clean_failure(&out, "given more than once");
    // An automatic country restriction may not outlast what any may.
    let out = tollgate(&[
        "run",
        "--iface",
        "lo",
        "--country-restrict-max",
        "48h",
        "--pin-path",
        "/sys/fs/bpf/tgt-never-created",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_clean_failure(&out, "--country-restrict-max (2days) must not exceed --max-restriction (1day)");
    // A list of high-risk destinations it cannot read, or with a line that
    // is no country code: one line, naming the file (and the line).
    let list = std::env::temp_dir().join(tollgate_tests::unique("highrisk"));
    std::fs::write(&list, "# counter-measure 4\n232\n+44\nSierra Leone\n").expect("write the list");
    for (file, expect) in [
        (
            "/nonexistent/tgt-high-risk",
            "cannot read --high-risk-destinations /nonexistent/tgt-high-risk".to_owned(),
        ),
        (
            list.to_str().expect("utf-8"),
            format!("{}:4: \"Sierra Leone\" is not an E.164 country code", list.display()),
        ),
    ] {
        let state = std::env::temp_dir().join(tollgate_tests::unique("state"));
        let out = tollgate(&[
            "run",
            "--iface",
            "lo",
            "--high-risk-destinations",
            file,
            "--pin-path",
            "/sys/fs/bpf/tgt-never-created",
            "--state-dir",
            state.to_str().expect("utf-8"),
        ]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        assert_clean_failure(&out, &expect);
        assert!(!state.exists(), "a start refused for its flags makes no state directory or key");
    }
    let _ = std::fs::remove_file(&list);
    // A state database that is not one: refused, named, left alone.
    let state = std::env::temp_dir().join(tollgate_tests::unique("state"));
    std::fs::create_dir_all(&state).expect("state dir");
    let db = state.join("tollgate.db");
    std::fs::write(&db, b"not a database, for sure not SQLite").expect("garbage");
    let out = tollgate(&[
        "run",
        "--iface",
        "lo",
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--metrics-addr",
        "127.0.0.1:0",
        "--pin-path",
        "/sys/fs/bpf/tgt-never-created",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_clean_failure(&out, &format!("state database {}: it is not a SQLite database", db.display()));
    assert_eq!(std::fs::read(&db).expect("read"), b"not a database, for sure not SQLite", "left alone");
    let _ = std::fs::remove_dir_all(&state);
    assert!(!std::path::Path::new("/sys/fs/bpf/tgt-never-created").exists());
}

#[test]
fn a_pin_path_off_bpffs_is_refused() {
    if !privileged("a_pin_path_off_bpffs_is_refused") {
        return;
    }
    let state = std::env::temp_dir().join(tollgate_tests::unique("state"));
    let out = tollgate(&[
        "run",
        "--iface",
        "lo",
        "--pin-path",
        "/tmp/tgt-not-bpffs",
        "--state-dir",
        state.to_str().expect("UTF-8"),
    ]);
    assert_clean_failure(&out, "not on a BPF filesystem");
    assert!(!state.exists(), "a start refused for its flags makes no state directory or key");
}

#[test]
fn not_root_is_one_clear_line() {
    if !privileged("not_root_is_one_clear_line (needs root to drop to nobody)") {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(tollgate_bin())
        .args(["run", "--iface", "lo", "--config", "/dev/null"])
        .output()
        .expect("setpriv (util-linux)");
    assert_clean_failure(&out, "must run as root");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
}

#[test]
fn maps_pinned_by_an_incompatible_version_are_named_and_left_alone() {
    if !privileged("maps_pinned_by_an_incompatible_version_are_named_and_left_alone") {
        return;
    }
    // A CONFIG map as an older tollgate pinned it (24-byte value).
    let pin =
        PinnedMap::create("old", "CONFIG", &["type", "array", "key", "4", "value", "24", "entries", "1"]);
    let (dir, old) = (&pin.dir, &pin.map);
    let state = StateDir::new(None);
    let out = tollgate(&[
        "run",
        "--iface",
        "lo",
        "--pin-path",
        dir.to_str().expect("UTF-8"),
        "--state-dir",
        state.path(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let here = size_of::<tollgate_common::Config>();
    assert_clean_failure(
        &out,
        &format!("incompatible tollgate version (CONFIG: 4/24 bytes pinned, 4/{here} here)"),
    );
    assert_clean_failure(&out, "tollgate detach --pin-path");
    assert!(old.exists(), "the old state is left for the operator to decide");
}

#[test]
fn a_pinned_blocklist_of_another_size_is_named_with_both_ways_out() {
    if !privileged("a_pinned_blocklist_of_another_size_is_named_with_both_ways_out") {
        return;
    }
    // The blocklist an agent with the default --blocklist-capacity pinned.
    let key = (4 + size_of::<tollgate_common::AddrKey>()).to_string();
    let value = size_of::<tollgate_common::BlockEntry>().to_string();
    let entries = tollgate_common::BLOCKLIST_CAPACITY.to_string();
    let pin = PinnedMap::create(
        "cap",
        tollgate_common::MAP_BLOCKLIST,
        &["type", "lpm_trie", "key", &key, "value", &value, "entries", &entries, "flags", "1"],
    );
    let (dir, pinned) = (&pin.dir, &pin.map);
    let state = StateDir::new(None);
    let dir_s = dir.to_str().expect("UTF-8");
    let control = format!("{}/control.sock", state.path());
    let out = tollgate(&[
        "run",
        "--iface",
        "lo",
        "--pin-path",
        dir_s,
        "--state-dir",
        state.path(),
        "--blocklist-capacity",
        "1048576",
        // Its own listeners: the other tests here start agents at the same time.
        "--metrics-addr",
        "127.0.0.1:0",
        "--control-socket",
        &control,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_clean_failure(
        &out,
        &format!(
            "the blocklist pinned in {dir_s} holds at most {entries} entries, --blocklist-capacity asks for 1048576"
        ),
    );
    assert_clean_failure(&out, &format!("Start with --blocklist-capacity {entries}"));
    assert_clean_failure(&out, "tollgate detach --pin-path");
    assert!(pinned.exists(), "the pinned blocks are left for the operator to decide");
}

/// A pin directory of the test's own holding one map made by `bpftool map
/// create` (`spec`: its type, sizes and flags), removed on drop.
struct PinnedMap {
    dir: std::path::PathBuf,
    map: std::path::PathBuf,
}

impl PinnedMap {
    fn create(tag: &str, name: &str, spec: &[&str]) -> Self {
        let dir = std::path::PathBuf::from(tollgate_tests::netns::PIN_ROOT).join(tollgate_tests::unique(tag));
        std::fs::create_dir_all(&dir).expect("pin dir");
        let pin = Self { map: dir.join(name), dir };
        let made = Command::new("bpftool")
            .args(["map", "create"])
            .arg(&pin.map)
            .args(spec)
            .args(["name", name])
            .output()
            .expect("bpftool (installed by cargo xtask setup)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        pin
    }
}

impl Drop for PinnedMap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A state directory of the test's own, removed on drop; with `key`, an
/// identity key as `tollgate run` leaves it (16 bytes, mode 0600).
struct StateDir(std::path::PathBuf);

impl StateDir {
    fn new(key: Option<[u8; 16]>) -> Self {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let dir = std::env::temp_dir().join(tollgate_tests::unique("state"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).expect("state dir");
        if let Some(key) = key {
            let file = dir.join(tollgate::state::IDENTITY_KEY_FILE);
            std::fs::write(&file, key).expect("key file");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        Self(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8")
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn identity_tag(name: &str, state: &StateDir) -> Output {
    tollgate(&["identity-tag", name, "--state-dir", state.path()])
}

fn tag_of(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout.clone()).expect("UTF-8");
    let tag = stdout.strip_suffix('\n').expect("one line");
    assert!(
        tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "16 lower-case hex digits: {stdout:?}"
    );
    tag.to_owned()
}

#[test]
fn identity_tag_prints_the_names_tag_under_the_deployments_key() {
    let key = [0x42u8; 16];
    let state = StateDir::new(Some(key));
    let alice = tag_of(&identity_tag("alice", &state));
    assert_eq!(alice, tag_of(&identity_tag("alice", &state)), "stable across calls");
    // The tag the kernel and the audit records compute for the same bytes.
    let want = tollgate_common::hash::identity_tag(&tollgate_common::IdentityKey::from_bytes(key), b"alice");
    assert_eq!(alice, tollgate_common::hash::IdentityTag(want).to_string());
    assert_eq!(alice, tag_of(&identity_tag("ALICE", &state)), "ASCII case does not count");
    assert_ne!(alice, tag_of(&identity_tag("alice2", &state)));
    let other = StateDir::new(Some([0x17; 16]));
    assert_ne!(alice, tag_of(&identity_tag("alice", &other)), "another deployment, another tag");
}

#[test]
fn identity_tag_without_a_usable_key_is_one_clear_line() {
    let empty = StateDir::new(None);
    let out = identity_tag("alice", &empty);
    assert_eq!(out.status.code(), Some(1));
    let expect =
        format!("no identity key in {}: it is created when `tollgate run` first starts", empty.path());
    assert_clean_failure(&out, &expect);
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_dir(&empty.0).expect("list").count(), 0, "identity-tag never makes a key");

    // A key others may read is refused, with the fix.
    let open = StateDir::new(Some([0x42; 16]));
    let file = open.0.join(tollgate::state::IDENTITY_KEY_FILE);
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let out = identity_tag("alice", &open);
    assert_eq!(out.status.code(), Some(1));
    assert_clean_failure(&out, "has mode 0644, broader than 0600");
    assert_clean_failure(&out, &format!("chmod 600 {}", file.display()));
}

#[test]
fn identity_tag_as_another_user_cannot_read_the_key() {
    if !privileged("identity_tag_as_another_user_cannot_read_the_key (needs root to drop to nobody)") {
        return;
    }
    let state = StateDir::new(Some([0x42; 16]));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(tollgate_bin())
        .args(["identity-tag", "alice", "--state-dir", state.path()])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(1));
    assert_clean_failure(&out, "cannot read the identity key");
    assert_clean_failure(&out, "run as root");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
}
