//! The Debian package (issue 15), as `cargo xtask deb` builds it: its
//! control data and contents with dpkg-deb, lintian, then installed with
//! dpkg on this machine (where systemd does not run: the maintainer scripts
//! must cope), the installed agent enforcing in a namespace, an upgrade that
//! keeps enforcement, a removal that detaches, and a purge that leaves
//! nothing. A guard purges the package whatever happens.

use std::{collections::BTreeSet, os::unix::fs::MetadataExt as _, path::Path, process::Command};

use tollgate_tests::{
    built_present, command_exists, privileged, target_dir, tool_present,
    topology::{ATTACKER_V4, Agent, CUSTOMER_V4, Topology, edge_for, udp_delivered},
    traffic::{UdpSink, udp_burst},
};

const TEST: &str = "debian_package_installs_enforces_upgrades_removes_and_purges";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const BIN: &str = "/usr/bin/tollgate";
const CONFIG: &str = "/etc/tollgate/tollgate.toml";
/// The unit's StateDirectory= and LogsDirectory=: made by the service, not
/// shipped, and removed by the postrm on purge.
const STATE: &str = "/var/lib/tollgate";
const LOGS: &str = "/var/log/tollgate";
/// The agent's default pin path, the one the prerm detaches on removal.
const PINS: &str = tollgate::cli::DEFAULT_PIN_PATH;
/// Everything of the package's that is not a file in its data archive.
const OTHER_PATHS: [&str; 5] =
    ["/etc/tollgate", "/usr/share/tollgate", "/usr/share/doc/tollgate", STATE, LOGS];

const BLOCK: &str = "203.0.113.0/24=10m";
/// The agent reads the settings the test writes into the installed CONFIG
/// from that file, as the service does.
const SETTINGS: &[&str] = &["--config", CONFIG];
const N: usize = 40;

/// The lintian warnings this package has on purpose (any error fails).
const LINTIAN_ALLOWED: &[&str] = &[
    // The changelog's first entry closes no Debian bug: the package is not
    // uploaded to Debian's archive, so there is no ITP bug to close.
    "initial-upload-closes-no-bugs",
];

#[test]
fn debian_package_installs_enforces_upgrades_removes_and_purges() {
    if !privileged(TEST) {
        return;
    }
    let deb = target_dir().join(format!("debian/tollgate_{VERSION}-1_{}.deb", arch()));
    if !built_present(TEST, &deb.display().to_string(), "cargo xtask deb", deb.exists()) {
        return;
    }
    for tool in ["dpkg", "dpkg-deb", "dpkg-query", "lintian", "bash"] {
        if !tool_present(TEST, tool, command_exists(tool)) {
            return;
        }
    }
    refuse_foreign_files();

    // What the package holds.
    let files = contents(&deb);
    let expected = expected_files();
    let listed: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(listed, wanted, "the package's files (left: packaged, right: expected)");
    for (path, (mode, owner)) in &files {
        let want = if path == BIN { "-rwxr-xr-x" } else { "-rw-r--r--" };
        assert_eq!((mode.as_str(), owner.as_str()), (want, "0/0"), "{path}: mode, owner/group");
    }
    let control = info(&deb, &[]);
    for field in [
        "Package: tollgate".to_owned(),
        format!("Version: {VERSION}-1"),
        "Section: net".to_owned(),
        "Priority: optional".to_owned(),
        "Architecture: ".to_owned() + &arch(),
    ] {
        assert!(control.lines().any(|l| l.trim() == field), "{field:?} not in:\n{control}");
    }
    let depends = control.lines().find_map(|l| l.trim().strip_prefix("Depends: ")).unwrap_or_default();
    assert!(depends.contains("libc6"), "Depends ({depends:?}) names libc6, from dpkg-shlibdeps");
    assert_eq!(info(&deb, &["conffiles"]).trim(), CONFIG, "the configuration is the one conffile");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(control.contains(&format!(" {script} ")), "no {script} in:\n{control}");
    }
    lintian(&deb);

    // Install. No systemd runs here: the generated postinst must succeed
    // anyway, and enable and start nothing.
    let installed = Installed;
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(status().as_deref(), Some("install ok installed"));
    for path in &expected {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path} not installed: {e}"));
        let mode = if path == BIN { 0o755 } else { 0o644 };
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (mode, 0, 0), "{path}: mode, owner");
    }
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/tollgate.service").exists(),
        "installing enabled the service"
    );
    assert!(agent_pids().is_empty(), "installing started tollgate");
    assert_eq!(run(BIN, &["--version"]).trim(), format!("tollgate {VERSION}"));
    let changelog = run("gzip", &["-dc", "/usr/share/doc/tollgate/changelog.Debian.gz"]);
    assert!(
        changelog.starts_with(&format!("tollgate ({VERSION}-1) ")),
        "packaging/debian/changelog's first entry is not this version's:\n{changelog}"
    );
    let page = run("gzip", &["-dc", "/usr/share/man/man1/tollgate.1.gz"]);
    assert!(page.contains("tollgate\\-run(1)"), "tollgate(1) lists tollgate-run(1):\n{page}");
    let completion = run(
        "bash",
        &["-c", "source /usr/share/bash-completion/completions/tollgate && complete -p tollgate"],
    );
    assert!(completion.contains("_tollgate"), "bash completes tollgate: {completion}");
    // systemd's own check of the installed unit, as it is (its ExecStart
    // binary and its Documentation= man pages now exist).
    let verify = Command::new("systemd-analyze")
        .args(["verify", "/usr/lib/systemd/system/tollgate.service"])
        .output()
        .expect("running systemd-analyze verify");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    // The operator's edits: the interface and a block.
    let topo = Topology::new();
    let config = std::fs::read_to_string(CONFIG).expect("reading the installed configuration");
    let edited = edit_config(&config, &topo.edge_if);
    std::fs::write(CONFIG, &edited).expect("editing the installed configuration");

    // Started by hand as the service would, with the state and log
    // directories systemd would make, and --keep-attached-on-exit: the
    // enforcement a removal must not leave behind.
    std::fs::create_dir(LOGS).expect("making the logs directory");
    let audit = format!("{LOGS}/audit.jsonl");
    let args = [SETTINGS, &["--keep-attached-on-exit", "--audit-log", &audit]].concat();
    let mut agent = Agent::start_installed(&topo, Path::new(BIN), Path::new(PINS), Path::new(STATE), &args);
    assert_eq!(udp_delivered(&topo, &agent, ATTACKER_V4, 5060, N), 0, "the blocked source's SIP passed");
    assert_eq!(udp_delivered(&topo, &agent, CUSTOMER_V4, 5060, N), N, "another source's SIP was dropped");
    assert_eq!(agent.stop(libc::SIGTERM), Some(0), "the agent's exit status");
    assert!(topo.xdp_attached(), "--keep-attached-on-exit left the program attached");
    assert!(Path::new(&format!("{STATE}/identity.key")).exists(), "the agent made its state in {STATE}");
    assert!(Path::new(&audit).exists(), "the agent opened its audit log {audit}");

    // An upgrade (here: the same version again, which dpkg runs as one,
    // with `prerm upgrade`) keeps the operator's configuration and the
    // enforcement: the next agent adopts it.
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(status().as_deref(), Some("install ok installed"));
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited, "the upgrade kept the edited conffile");
    assert!(topo.xdp_attached(), "the upgrade detached the program");
    assert_eq!(udp_delivered(&topo, &agent, ATTACKER_V4, 5060, N), 0, "the upgrade stopped enforcement");

    // A removal detaches (no agent and no binary would be left to) and
    // keeps the configuration, state and logs.
    dpkg(&["--remove", "tollgate"]);
    assert_eq!(status().as_deref(), Some("deinstall ok config-files"));
    assert!(!topo.xdp_attached(), "the removal left the program attached");
    assert!(!Path::new(PINS).exists(), "the removal left {PINS}");
    assert_eq!(udp_reached(&topo, ATTACKER_V4), N, "the removal left the block enforced");
    assert!(!Path::new(BIN).exists(), "the removal left {BIN}");
    for kept in [CONFIG, STATE, LOGS] {
        assert!(Path::new(kept).exists(), "the removal removed {kept}");
    }

    // A purge leaves nothing: Debian Policy lets nothing of a purged
    // package stay (conffiles, state and logs included).
    dpkg(&["--purge", "tollgate"]);
    assert_eq!(status(), None, "dpkg still knows tollgate after the purge");
    let out = Command::new("dpkg").args(["-l", "tollgate"]).output().expect("running dpkg -l");
    assert!(!out.status.success(), "dpkg -l lists tollgate: {}", String::from_utf8_lossy(&out.stdout));
    for path in
        expected.iter().map(String::as_str).chain(OTHER_PATHS).chain(["/lib/systemd/system/tollgate.service"])
    {
        assert!(!Path::new(path).exists(), "{path} is left after the purge");
    }
    drop(agent);
    drop(installed);
}

/// Purges the package when dropped, so that a failing test leaves nothing
/// installed (and the directories the test made for the agent).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if status().is_some() {
            let out = Command::new("dpkg").args(["--purge", "tollgate"]).output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "warning: dpkg --purge tollgate failed; purge it by hand:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("warning: running dpkg --purge tollgate: {e}; purge it by hand"),
            }
        }
        for dir in [STATE, LOGS] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Refuses to run where a tollgate not from this package is installed (or
/// its state is there): the test would install over it and purge it.
fn refuse_foreign_files() {
    if status().is_some() {
        // An earlier run's, interrupted: installing and purging is fine.
        return;
    }
    for path in [BIN, PINS].into_iter().chain(OTHER_PATHS) {
        assert!(
            !Path::new(path).exists(),
            "{TEST}: {path} exists but the tollgate package is not installed: this machine has a \
             tollgate of its own, which the test would overwrite and remove; it refuses to run"
        );
    }
}

/// The package's status as dpkg-query shows it, if dpkg knows it at all.
fn status() -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", "tollgate"]).output().ok()?;
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !status.is_empty() && status != "unknown ok not-installed").then_some(status)
}

fn arch() -> String {
    run("dpkg", &["--print-architecture"]).trim().to_owned()
}

/// Runs `program args` and returns its standard output; panics with its
/// standard error if it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs dpkg, showing what it and the maintainer scripts printed (in the
/// test's output when it fails).
fn dpkg(args: &[&str]) {
    eprintln!("dpkg {}:\n{}", args.join(" "), run("dpkg", args));
}

/// `dpkg-deb --info DEB [MEMBER...]`.
fn info(deb: &Path, members: &[&str]) -> String {
    let mut args = vec!["--info", deb.to_str().unwrap()];
    args.extend(members);
    run("dpkg-deb", &args)
}

/// The files (not directories) in the package's data archive, as absolute
/// paths, with their mode string and owner.
fn contents(deb: &Path) -> std::collections::BTreeMap<String, (String, String)> {
    run("dpkg-deb", &["--contents", deb.to_str().unwrap()])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (mode, owner, path) = (fields[0], fields[1], fields[5]);
            (!mode.starts_with('d'))
                .then(|| (path.trim_start_matches('.').to_owned(), (mode.into(), owner.into())))
        })
        .collect()
}

/// Every file the package must hold: one man page per command (made by the
/// same generator the package's are), the completions, the configuration,
/// the unit, the dashboards and their plots, and the docs.
fn expected_files() -> Vec<String> {
    let dir = std::env::temp_dir().join(tollgate_tests::unique("man"));
    let pages = tollgate::commands::generate::man_pages(&dir).expect("generating the man pages");
    let _ = std::fs::remove_dir_all(&dir);
    let mut files: Vec<String> = pages
        .iter()
        .map(|p| format!("/usr/share/man/man1/{}.gz", p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.extend(
        [
            BIN,
            CONFIG,
            "/usr/lib/systemd/system/tollgate.service",
            "/usr/share/bash-completion/completions/tollgate",
            "/usr/share/zsh/vendor-completions/_tollgate",
            "/usr/share/fish/vendor_completions.d/tollgate.fish",
            "/usr/share/tollgate/dashboards/tollgate.json",
            "/usr/share/tollgate/dashboards/alerts.yml",
            "/usr/share/tollgate/dashboards/alerts.test.yml",
            "/usr/share/tollgate/dashboards/README.md",
            "/usr/share/doc/tollgate/README.md",
            "/usr/share/doc/tollgate/copyright",
            "/usr/share/doc/tollgate/changelog.Debian.gz",
        ]
        .map(String::from),
    );
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/img");
    for entry in std::fs::read_dir(&img).expect("reading dashboards/img") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".png") {
            files.push(format!("/usr/share/tollgate/dashboards/img/{name}"));
        }
    }
    files
}

/// `config` with the edge's interface and [`BLOCK`] set at its top (in the
/// root table), replacing any `iface` or `block` it sets.
fn edit_config(config: &str, iface: &str) -> String {
    let sets = |line: &str, key: &str| {
        line.trim_start().strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut edited = format!("iface = [\"{iface}\"]\nblock = [\"{BLOCK}\"]\n");
    for line in config.lines().filter(|l| !sets(l, "iface") && !sets(l, "block")) {
        edited.push_str(line);
        edited.push('\n');
    }
    edited
}

/// How many of [`N`] datagrams from `src` reach the edge's SIP port (with no
/// agent's maps to wait on).
fn udp_reached(topo: &Topology, src: std::net::IpAddr) -> usize {
    let sink = UdpSink::bind(&topo.edge, std::net::SocketAddr::new(edge_for(src), 5060));
    udp_burst(&topo.peer, src, std::net::SocketAddr::new(edge_for(src), 5060), N);
    sink.drain()
}

/// Processes running the installed binary.
fn agent_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            (std::fs::read_link(e.path().join("exe")).ok()? == Path::new(BIN)).then_some(pid)
        })
        .collect()
}

/// Runs lintian on the package: every error fails, and so does every
/// warning not in [`LINTIAN_ALLOWED`].
fn lintian(deb: &Path) {
    let out = Command::new("lintian").arg(deb).output().expect("running lintian");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    for line in report.lines() {
        let Some((severity, rest)) = line.split_once(": ") else { continue };
        let tag = rest.split_whitespace().nth(1).unwrap_or_default();
        let allowed = LINTIAN_ALLOWED.contains(&tag);
        assert!(!(severity == "E" || (severity == "W" && !allowed)), "lintian: {line}");
    }
}
