//! sipp (apt package sip-tester) in the test namespaces: a digest registrar
//! and phones registering with a right or a wrong password.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{TempFile, netns::NetNs, wait_for};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/sipp").join(name)
}

fn transport_flag(tcp: bool) -> &'static str {
    if tcp { "t1" } else { "u1" }
}

fn host(addr: IpAddr) -> String {
    if addr.is_ipv6() { format!("[{addr}]") } else { addr.to_string() }
}

/// A sipp registrar running in a namespace; killed on drop.
pub struct Registrar(Child);

impl Registrar {
    pub fn start(ns: &NetNs, addr: IpAddr, tcp: bool) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sipp", "-sf"])
            .arg(fixture("registrar.xml"))
            .args(["-i", &addr.to_string(), "-p", "5060", "-t", transport_flag(tcp), "-nostdin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp (apt package sip-tester) must be installed: cargo xtask setup installs it");
        // `ip netns exec` execs sipp, so the child is sipp itself.
        let proto = if tcp { "tcp" } else { "udp" };
        let listening = wait_for(Duration::from_secs(10), || {
            let out = ns.exec(&["ss", "-lnH", if tcp { "-t" } else { "-u" }, "sport", "= :5060"]);
            (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
        });
        assert!(listening.is_some(), "sipp registrar did not listen on {proto}/5060");
        Self(child)
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `calls` registrations from `src` to the registrar at `dst`, with
/// the right password or a wrong one; panics if sipp fails.
pub fn register(ns: &NetNs, src: IpAddr, dst: IpAddr, tcp: bool, right_password: bool, calls: u32) {
    if let Err(e) = try_register(ns, src, dst, tcp, right_password, calls) {
        panic!("{e}");
    }
}

/// Like [`register`], returning sipp's failure instead of panicking (an
/// attacker's registrations may time out once it is suspended).
pub fn try_register(
    ns: &NetNs,
    src: IpAddr,
    dst: IpAddr,
    tcp: bool,
    right_password: bool,
    calls: u32,
) -> Result<(), String> {
    let csv = if right_password { "good.csv" } else { "bad.csv" };
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "timeout", "60", "sipp", "-sf"])
        .arg(fixture("register-client.xml"))
        .arg("-inf")
        .arg(fixture(csv))
        .args(["-i", &src.to_string(), "-t", transport_flag(tcp), "-m", &calls.to_string(), "-r", "20"])
        .args(["-nostdin", "-timeout", "30s", "-timeout_error", &format!("{}:5060", host(dst))])
        .output()
        .expect("running sipp");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "sipp phone {src} -> {dst} ({}) failed: {}{}",
        if tcp { "tcp" } else { "udp" },
        String::from_utf8_lossy(&out.stdout).lines().rev().take(15).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A sipp server (e.g. the UAS calls are relayed to) in a namespace, on
/// UDP `addr`:`port`, with a scenario file of tests/fixtures/sipp or one of
/// sipp's built-in ones (`-sn uas`); killed on drop.
pub struct Server(Child);

impl Server {
    pub fn uas(ns: &NetNs, addr: IpAddr, port: u16) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sipp", "-sn", "uas"])
            .args(["-i", &addr.to_string(), "-p", &port.to_string(), "-t", "u1", "-nostdin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp (apt package sip-tester) must be installed: cargo xtask setup installs it");
        let listening = wait_for(Duration::from_secs(10), || {
            let out = ns.exec(&["ss", "-lnuH", "sport", &format!("= :{port}")]);
            (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
        });
        assert!(listening.is_some(), "sipp UAS did not listen on udp/{port}");
        Self(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One sipp client run: `calls` calls of `scenario` (a file in
/// tests/fixtures/sipp) from `src` to `dst`:5060, each taking its fields from
/// a row of `csv` (a fixture name or a path), at `rate` calls per second.
#[derive(Clone, Debug)]
pub struct Client {
    pub scenario: String,
    pub csv: PathBuf,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub tcp: bool,
    pub calls: u32,
    pub rate: u32,
    /// The Request-URI user (`-s`): the dialled number of a call.
    pub service: Option<String>,
    /// How long to wait for any one expected message before the call fails.
    pub recv_timeout_ms: u32,
    /// A socket per call (`-t un`): many phones from one address.
    pub socket_per_call: bool,
    /// The scenario's `<pause/>` (sipp's `-d`).
    pub pause_ms: Option<u32>,
    /// Most calls under way at once (sipp's `-l`).
    pub limit: u32,
}

/// What a sipp client run did, from its own final statistics.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub successful: u64,
    pub failed: u64,
    /// sipp's last lines of output, for failure messages.
    pub text: String,
}

impl Client {
    pub fn new(scenario: &str, csv: impl Into<PathBuf>, src: IpAddr, dst: IpAddr) -> Self {
        let csv = csv.into();
        let csv = if csv.is_absolute() { csv } else { fixture(csv.to_str().expect("utf-8")) };
        Self {
            scenario: scenario.to_owned(),
            csv,
            src,
            dst,
            tcp: false,
            calls: 1,
            rate: 10,
            service: None,
            recv_timeout_ms: 5000,
            socket_per_call: false,
            pause_ms: None,
            limit: 100,
        }
    }

    /// Runs it to the end in `ns` (a namespace name, so it can run on a
    /// thread of its own).
    pub fn run(&self, ns: &str) -> Outcome {
        let transport = match (self.tcp, self.socket_per_call) {
            (false, false) => "u1",
            (false, true) => "un",
            (true, false) => "t1",
            (true, true) => "tn",
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "timeout", "120", "sipp", "-sf"])
            .arg(fixture(&self.scenario))
            .arg("-inf")
            .arg(&self.csv)
            .args(["-i", &self.src.to_string(), "-t", transport, "-m", &self.calls.to_string()])
            .args(["-r", &self.rate.to_string(), "-l", &self.limit.to_string()])
            .args(["-max_socket", &(self.limit + 100).to_string()])
            .args(["-recv_timeout", &self.recv_timeout_ms.to_string(), "-nostdin"]);
        if let Some(s) = &self.service {
            cmd.args(["-s", s]);
        }
        if let Some(ms) = self.pause_ms {
            cmd.args(["-d", &ms.to_string()]);
        }
        let out = cmd.arg(format!("{}:5060", host(self.dst))).output().expect("running sipp");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stat = |name: &str| {
            stdout
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with(name))
                .and_then(|l| l.split('|').filter_map(|f| f.trim().parse::<u64>().ok()).next_back())
                .unwrap_or(0)
        };
        Outcome {
            successful: stat("Successful call"),
            failed: stat("Failed call"),
            text: format!(
                "{}{}",
                stdout
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

/// `calls` calls of `call-uac.xml` (407 proxy authentication with the CSV's
/// credentials, relayed to the UAS) from `src` to `number`, at `rate` a
/// second, to Kamailio in the acceptance site's core.
pub fn call(csv: impl Into<PathBuf>, src: IpAddr, number: &str, calls: u32, rate: u32) -> Client {
    let mut c = Client::new("call-uac.xml", csv, src, crate::site::core_for(src));
    c.service = Some(number.to_owned());
    c.calls = calls;
    c.rate = rate;
    c.recv_timeout_ms = 2000;
    c
}

/// Whether sipp (Debian package sip-tester) is installed.
pub fn installed() -> bool {
    crate::command_exists("sipp")
}

/// A sipp CSV of credentials for `user`: wrong passwords, with the right
/// one at position `right_at` (1-based) of `rows` (0: never).
pub fn guesses_csv(user: &str, right: &str, right_at: usize, rows: usize) -> TempFile {
    let f = TempFile::new("guesses");
    let mut text = String::from("SEQUENTIAL\n");
    for i in 1..=rows {
        let pw = if i == right_at { right.to_owned() } else { format!("guess{i:04}") };
        text.push_str(&format!("{user};[authentication username={user} password={pw}]\n"));
    }
    std::fs::write(&f.0, text).expect("guesses csv");
    f
}

/// The credentials of the site's `i`th PBX (subscriber 300`i+1`).
pub fn pbx_csv(i: u8) -> TempFile {
    users_csv(&[(format!("300{}", i + 1), format!("pbx-300{}", i + 1))])
}

/// A sipp CSV of `users` with their right passwords.
pub fn users_csv(users: &[(String, String)]) -> TempFile {
    let f = TempFile::new("users");
    let mut text = String::from("SEQUENTIAL\n");
    for (u, pw) in users {
        text.push_str(&format!("{u};[authentication username={u} password={pw}]\n"));
    }
    std::fs::write(&f.0, text).expect("users csv");
    f
}

/// Runs a sipp client `every` interval on a thread until stopped, counting
/// its successful and failed calls: a customer's normal traffic going on
/// during an attack.
pub struct Repeater {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64)>>,
}

impl Repeater {
    pub fn start(ns: String, client: Client, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !stopped.load(Ordering::Relaxed) {
                let out = client.run(&ns);
                ok += out.successful;
                failed += out.failed + u64::from(out.successful + out.failed == 0);
                if out.failed > 0 {
                    eprintln!("legitimate client {} failed:\n{}", client.src, out.text);
                }
                std::thread::sleep(every);
            }
            (ok, failed)
        });
        Self { stop, thread: Some(thread) }
    }

    /// Stops it and returns (successful, failed) calls.
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("repeater thread")
    }
}

impl Drop for Repeater {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
