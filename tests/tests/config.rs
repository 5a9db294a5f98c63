//! The configuration file: `tollgate config check|default` (no root), and
//! an agent configured by a file, with a flag on the command line over it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use tollgate_common::verdict;
use tollgate_tests::{
    TempFile, privileged, tollgate_bin,
    topology::*,
    traffic::{UdpSink, udp_burst},
    wait_for,
};

fn tollgate(args: &[&str]) -> Output {
    Command::new(tollgate_bin()).args(args).output().expect("run tollgate")
}

/// A configuration file holding `text`, removed on drop.
fn config_file(text: &str) -> TempFile {
    let file = TempFile::new("toml");
    std::fs::write(&file.0, text).expect("write the configuration file");
    file
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

/// The key lines of `config check`'s output (after its two header lines).
fn keys(check: &str) -> Vec<&str> {
    check.lines().skip(2).collect()
}

fn committed_default() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/tollgate.toml");
    std::fs::read_to_string(path).expect("packaging/tollgate.toml")
}

#[test]
fn config_check_prints_the_effective_configuration() {
    let file =
        config_file("window = \"90s\"\niface = \"eth0\"\ndry-run = true\nsip-port = [\"udp/5070\", 5080]\n");
    let out = stdout(&tollgate(&["config", "check", file.path()]));
    let lines = keys(&out);
    for want in [
        "window = \"90s\"  # from the file",
        "iface = [\"eth0\"]  # from the file",
        "dry-run = true  # from the file",
        "sip-port = [\"udp/5070\", 5080]  # from the file",
        "medium-window = \"1h\"",
        "auth-failure-threshold = 10",
        "keep-attached-on-exit = false",
    ] {
        assert!(lines.contains(&want), "{want:?} in:\n{out}");
    }
    assert!(out.contains(file.path()), "names the file:\n{out}");
    // Without iface the file is still valid (the command line may give it).
    let out = stdout(&tollgate(&["config", "check", "/dev/null"]));
    assert!(keys(&out).contains(&"iface = []  # required: set it here or give --iface"), "{out}");
}

#[test]
fn an_invalid_file_is_one_line_naming_the_key_for_check_and_run() {
    // The last: values valid each but not together, which `run` checks
    // only once it knows it is root.
    for (text, expect, before_root) in [
        ("windw = \"60s\"\n", "unknown key \"windw\" (did you mean \"window\"?)", true),
        ("dry-run = 1\n", "dry-run: expected true or false, found integer", true),
        ("window = \"soon\"\n", "window: \"soon\" is not a duration", true),
        (
            "country-min-sources = 129\n",
            "country-min-sources: invalid value \"129\": 129 is not in 1..=128",
            true,
        ),
        ("iface = [\"eth0\"\n", ":1: not valid TOML: ", true),
        ("country-restrict-max = \"48h\"\n", ": --country-restrict-max (2days) must not exceed", false),
    ] {
        let file = config_file(text);
        let check = tollgate(&["config", "check", file.path()]);
        assert!(check.stdout.is_empty(), "nothing printed for an invalid file");
        let run = tollgate(&["run", "--config", file.path(), "--iface", "lo"]);
        for (what, out) in
            [("check", &check), ("run", &run)].into_iter().take(if before_root { 2 } else { 1 })
        {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{what} {text:?}: {stderr}");
            let line = stderr.strip_suffix('\n').expect("a line");
            assert!(!line.contains('\n'), "{what}: one line: {stderr}");
            let want = format!("tollgate: error: {}", file.path());
            assert!(line.starts_with(&want), "{what}: names the file: {line}");
            assert!(line[want.len()..].contains(expect), "{what} {text:?}: expected {expect:?} in {line}");
        }
    }
    let out = tollgate(&["config", "check", "/nonexistent/tollgate.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .starts_with("tollgate: error: cannot read the configuration file /nonexistent/tollgate.toml: ")
    );
    let out = tollgate(&["run", "--iface", "lo", "--config", "/nonexistent/tollgate.toml"]);
    assert_eq!(out.status.code(), Some(1), "a --config that cannot be read is an error");
}

#[test]
fn the_committed_default_is_the_generated_one_and_changes_nothing() {
    let generated = stdout(&tollgate(&["config", "default"]));
    assert!(
        generated == committed_default(),
        "packaging/tollgate.toml is stale: regenerate it with \
         `cargo run -p tollgate -- config default > packaging/tollgate.toml`"
    );
    // It passes `config check`, and its configuration is the built-in one.
    let file = config_file(&generated);
    let with_default = stdout(&tollgate(&["config", "check", file.path()]));
    let with_none = stdout(&tollgate(&["config", "check", "/dev/null"]));
    assert_eq!(keys(&with_default), keys(&with_none));
    assert!(!with_default.contains("# from the file"));
    // Every key of `config check` is documented in it.
    for line in keys(&with_none) {
        let key = line.trim_start_matches("# ").split([' ', '=']).next().expect("a key");
        // A table key's flag (`feed`) is shown as its tables (`[[feeds]]`).
        let table = tollgate::config::TABLE_KEYS.iter().find(|(_, flag)| *flag == key);
        let documented = match table {
            Some((table, _)) => format!("\n# [[{table}]]\n"),
            None => format!("\n# {key} = "),
        };
        assert!(generated.contains(&documented), "{key} in the default file");
    }
}

#[test]
fn run_takes_its_flags_from_the_file_and_the_command_line_over_it() {
    if !privileged("run_takes_its_flags_from_the_file_and_the_command_line_over_it") {
        return;
    }
    let topo = Topology::new();
    // Not a port the test's agent can be reached on: only the command
    // line's --metrics-addr lets it become ready.
    let file = config_file(&format!(
        "iface = [\"{}\"]\nblock = [\"203.0.113.0/24=10m\"]\nauth-failure-threshold = 7\n\
         intl-invite-threshold = 5\nmetrics-addr = \"127.0.0.1:1\"\n",
        topo.edge_if
    ));
    let agent = Agent::start_configured(
        &topo,
        &["--config", file.path(), "--intl-invite-threshold", "9", "--metrics-addr", "127.0.0.1:9467"],
    );
    assert!(topo.xdp_attached(), "attached to the file's iface");
    assert!(agent.log_text().contains(&format!("configuration file: {}", file.path())));
    assert_eq!(agent.metrics_addr(), "127.0.0.1:9467".parse::<SocketAddr>().unwrap());
    let kernel =
        tollgate::maps::Maps::open_pinned(&agent.pin_dir).expect("pinned maps").config().expect("CONFIG");
    assert_eq!(kernel.auth_failure_threshold, 7, "from the file");
    assert_eq!(kernel.intl_invite_threshold, 9, "the command line over the file");

    // The file's block drops the attacker's SIP in XDP; the customer's passes.
    const N: usize = 20;
    for (src, delivered) in [(ATTACKER_V4, 0), (CUSTOMER_V4, N)] {
        let dst = SocketAddr::new(EDGE_V4, 5060);
        let sink = UdpSink::bind(&topo.edge, dst);
        let drops = agent.packets(verdict::DROP_BLOCKLIST);
        let seen: u64 = agent.verdicts().iter().map(|c| c.packets).sum();
        udp_burst(&topo.peer, src, dst, N);
        let counted = wait_for(Duration::from_secs(5), || {
            (agent.verdicts().iter().map(|c| c.packets).sum::<u64>() >= seen + N as u64).then_some(())
        });
        assert!(counted.is_some(), "XDP saw the {N} datagrams from {src}");
        assert_eq!(sink.drain(), delivered, "{src}");
        assert_eq!(agent.packets(verdict::DROP_BLOCKLIST), drops + (N - delivered) as u64, "{src}");
    }
}
