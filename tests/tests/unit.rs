//! The systemd unit (packaging/tollgate.service): systemd's own checker
//! accepts it without a warning and rates its exposure; its capability set
//! is not only enough (every other test runs its agents under exactly that
//! set, see tests/src/unit.rs) but minimal, each capability in it needed;
//! and the agent speaks the notification protocol `Type=notify` and
//! `WatchdogSec=` rely on.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tollgate_common::verdict;
use tollgate_tests::{
    TempFile, command_exists, privileged, tollgate_bin, tool_present,
    topology::{ATTACKER_V4, Agent, Topology, in_namespace, udp_delivered},
    unique,
    unit::{UNIT, capabilities, setpriv_args, setting},
};

/// `systemd-analyze verify` on a copy of the unit whose ExecStart names the
/// binary under test (verify checks that it exists; the package test
/// verifies the installed file as it is): its exit status and what it said.
fn verify(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(unique("unit"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tollgate.service");
    std::fs::write(&file, text.replace("/usr/bin/tollgate", &tollgate_bin().to_string_lossy())).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&file).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "--threshold=30"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let exposure = String::from_utf8_lossy(&security.stdout);
    let level = exposure.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("(none)");
    println!("{}", level.trim_start_matches(['→', ' ']));
    (out.status.success() && security.status.success(), said)
}

#[test]
fn systemd_accepts_the_unit_without_a_warning_and_rates_it_hardened() {
    if !tool_present("systemd_accepts_the_unit", "systemd-analyze", command_exists("systemd-analyze")) {
        return;
    }
    let (ok, said) = verify(UNIT);
    assert!(ok && said.trim().is_empty(), "systemd-analyze verify / security (exposure over 3.0):\n{said}");
    // The check can fail: a setting systemd cannot parse is reported.
    let (_, said) = verify(&UNIT.replace("Type=notify", "Type=notifyy"));
    assert!(said.contains("notifyy"), "a misspelt Type= went unnoticed:\n{said}");

    // What the issue asks of the unit, as written.
    assert_eq!(setting("Type"), ["notify"]);
    assert_eq!(setting("ExecReload"), ["/bin/kill -HUP $MAINPID"], "a reload is SIGHUP");
    for dir in ["StateDirectory", "RuntimeDirectory", "ConfigurationDirectory", "LogsDirectory"] {
        assert_eq!(setting(dir), ["tollgate"], "{dir}");
    }
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
        ("SystemCallFilter", "@system-service bpf"),
        ("ReadWritePaths", "/sys/fs/bpf"),
    ] {
        assert_eq!(setting(key), [value], "{key}");
    }
    assert!(setting("ExecStart")[0].ends_with("--config /etc/tollgate/tollgate.toml"));
    // The control socket's default is in the unit's runtime directory, the
    // state directory's is the unit's, and the sample audit log is in its
    // logs directory.
    let defaults = Command::new(tollgate_bin()).args(["config", "default"]).output().unwrap();
    let defaults = String::from_utf8_lossy(&defaults.stdout);
    for line in [
        r#"# control-socket = "/run/tollgate/control.sock""#,
        r#"# state-dir = "/var/lib/tollgate""#,
        r#"audit-log = "/var/log/tollgate/"#,
    ] {
        assert!(defaults.contains(line), "`tollgate config default` lacks {line}:\n{defaults}");
    }
}

/// The capability bits of `/proc/PID/status`'s `field` (CapEff, CapBnd...).
fn caps_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

/// The kernel's number of a capability named as in the unit.
fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other}'s number to cap_number"),
    }
}

#[test]
fn the_agent_enforces_with_exactly_the_units_capabilities() {
    if !privileged("the_agent_enforces_with_exactly_the_units_capabilities") {
        return;
    }
    let caps = capabilities();
    let want = caps.iter().fold(0u64, |m, c| m | 1 << cap_number(c));
    let topo = Topology::new();
    let mut agent = Agent::start(&topo, &["--block", "203.0.113.10"]);
    // Test agents are confined to the unit's set (tests/src/unit.rs): this
    // one holds exactly those capabilities, and no others.
    assert_eq!(caps_of(agent.pid(), "CapEff"), want, "effective set of the agent, want {caps:?}");
    assert_eq!(caps_of(agent.pid(), "CapBnd"), want, "bounding set of the agent");
    // And it does its work: loads, attaches, writes maps, enforces, counts,
    // answers its control socket, reloads, and detaches at SIGTERM.
    assert_eq!(udp_delivered(&topo, &agent, ATTACKER_V4, 5060, 3), 0, "the block is enforced");
    assert!(agent.packets(verdict::DROP_BLOCKLIST) >= 3);
    let (ok, out, err) = agent.control(&["restrict", "intl", "198.51.100.10", "--for", "5m"]);
    assert!(ok, "restrict by hand: {out}{err}");
    agent.signal(libc::SIGHUP);
    let reloaded = tollgate_tests::wait_for(Duration::from_secs(10), || {
        agent.log_text().contains("reload: nothing to change").then_some(())
    });
    assert!(reloaded.is_some(), "reload under the unit's capabilities:\n{}", agent.log_text());
    assert_eq!(agent.stop(libc::SIGTERM), Some(0), "{}", agent.log_text());
    assert!(!topo.xdp_attached(), "detached at SIGTERM");
}

/// Starts `tollgate run` in `topo`'s edge namespace with exactly `caps`;
/// waits for it to exit (it must) and returns its standard error.
fn start_without(topo: &Topology, caps: &[String]) -> String {
    let pin = Path::new("/sys/fs/bpf").join(unique("pin"));
    let state = std::env::temp_dir().join(unique("state"));
    let socket = std::env::temp_dir().join(format!("{}.sock", unique("ctl")));
    let mut cmd = Command::new("setpriv");
    cmd.args(setpriv_args(caps))
        .arg(tollgate_bin())
        .args(["run", "--config", "/dev/null", "--iface", &topo.edge_if, "--metrics-addr", "127.0.0.1:9465"])
        .arg("--pin-path")
        .arg(&pin)
        .arg("--state-dir")
        .arg(&state)
        .arg("--control-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    in_namespace(&mut cmd, &topo.edge.path());
    let mut child = cmd.spawn().expect("setpriv tollgate run");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let _ = tollgate::loader::remove_pinned_state(&pin);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&socket);
    let status = status.unwrap_or_else(|| panic!("still running after 60 s with {caps:?}:\n{err}"));
    assert!(!status.success(), "started with only {caps:?}:\n{err}");
    err
}

#[test]
fn each_capability_of_the_unit_is_needed() {
    if !privileged("each_capability_of_the_unit_is_needed") {
        return;
    }
    let caps = capabilities();
    let topo = Topology::new();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let err = start_without(&topo, &fewer);
        // An error that says what failed (the verifier's log may follow
        // it), and nothing attached.
        let said = err.lines().find(|l| l.starts_with("tollgate: error: "));
        let said = said.unwrap_or_else(|| panic!("without {missing}, no error line: {err}"));
        assert!(!topo.xdp_attached(), "without {missing} something stayed attached");
        println!("without {missing}: {}", said.chars().take(160).collect::<String>());
    }
}

/// Reads notifications until one starts with `want` (skipping WATCHDOG=1
/// pings unless asked for), within `limit`.
fn next(sock: &UnixDatagram, want: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
        ))
        .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.starts_with(want) {
            return message;
        }
        if want == "WATCHDOG=1" || message != "WATCHDOG=1" {
            seen.push(message);
        }
    }
    panic!("no {want} within {limit:?}; got {seen:?}");
}

#[test]
fn the_agent_tells_systemd_it_is_ready_reloading_alive_and_stopping() {
    if !privileged("the_agent_tells_systemd_it_is_ready_reloading_alive_and_stopping") {
        return;
    }
    let topo = Topology::new();
    let path = std::env::temp_dir().join(format!("{}.sock", unique("notify")));
    let sock = UnixDatagram::bind(&path).unwrap();
    let hook_env = TempFile::new("hook-env");
    let hook = format!("env > {}", hook_env.path());
    let mut agent = Agent::start_with_env(
        &topo,
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")],
        &["--on-decision", &hook],
    );
    // READY=1 is the first thing said, once attached (Agent::start waited
    // for the metrics to say so; the program is on the interface).
    let ready = next(&sock, "READY=1", Duration::from_secs(5));
    assert!(ready.contains(&format!("STATUS=enforcing on {}", topo.edge_if)), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", agent.pid())), "{ready}");
    assert!(topo.xdp_attached());
    // WatchdogSec=1s: a ping every half second from the main loop.
    next(&sock, "WATCHDOG=1", Duration::from_secs(2));
    next(&sock, "WATCHDOG=1", Duration::from_secs(2));
    // systemctl reload: RELOADING=1, then READY=1 again.
    agent.signal(libc::SIGHUP);
    next(&sock, "RELOADING=1", Duration::from_secs(5));
    next(&sock, "READY=1", Duration::from_secs(5));
    // What the agent runs cannot speak for it to systemd.
    let (ok, out, err) = agent.control(&["restrict", "intl", "198.51.100.10", "--for", "5m"]);
    assert!(ok, "{out}{err}");
    let env = tollgate_tests::wait_for(Duration::from_secs(10), || {
        let text = hook_env.text();
        text.contains("TOLLGATE_EVENT=").then_some(text)
    })
    .expect("the decision hook ran");
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(!env.contains(&format!("{var}=")), "the hook inherited {var}:\n{env}");
    }
    agent.signal(libc::SIGTERM);
    let stopping = next(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(stopping.contains("STATUS=SIGTERM"), "{stopping}");
    // Signal 0: nothing more is sent, only the exit awaited.
    assert_eq!(agent.stop(0), Some(0));
    let _ = std::fs::remove_file(&path);
}
