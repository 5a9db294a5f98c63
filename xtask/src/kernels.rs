//! The kernel matrix: the kernel program judged on the kernels carriers run.
//!
//! Each kernel is one of Debian's own packages (`apt-get download`, cached
//! under target/kernels), booted under qemu with software emulation (TCG:
//! nested KVM on these machines stops with an emulation failure on
//! cmpxchg16b) and an initramfs made here from busybox-static, iproute2,
//! sipp, the agent, the veth and TC modules of the same package, and the test
//! binaries that need nothing else. The guest's /init runs the chosen tests
//! and prints marked lines on the serial console, which this module reads
//! back: one line per kernel, with the verifier's processed-instruction
//! count for every program, so each change to the kernel program shows its
//! headroom against the 1,000,000-instruction budget.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{output, run, target_dir, workspace_root};

/// The kernels in the matrix, as Debian package-name patterns; the newest
/// match of each is used.
const KERNELS: &[(&str, &str)] = &[
    // Debian 12's own kernel line.
    ("debian12", r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$"),
    // Debian 12's newer kernel line (Debian 13's).
    ("debian12-6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$"),
];

/// Modules the tests need that the cloud kernels build as modules: veth for
/// the topology, clsact and cls_bpf for egress counting without TCX.
const MODULES: &[&str] = &["drivers/net/veth.ko", "net/sched/sch_ingress.ko", "net/sched/cls_bpf.ko"];

/// Host programs the guest needs, by absolute path, with their libraries.
/// setpriv runs every test agent with exactly the unit's capabilities.
const GUEST_PROGRAMS: &[&str] = &["/sbin/ip", "/bin/ss", "/usr/bin/sipp", "/usr/bin/setpriv"];

/// The tests run in every guest: (test binary, filters). Chosen to cover
/// what the kernel program does, within minutes of software emulation.
const GUEST_TESTS: &[(&str, &[&str])] = &[
    // Verifier budget first: its lines are printed even if later tests fail.
    ("test_run", &[]),
    ("sip_corpus", &[]),
    ("baselines", &[]),
    // What each restriction drops, and the fail-closed rule for restricted
    // sources (BPF_PROG_TEST_RUN, no veth).
    ("restrictions", &[]),
    ("enforcement", &["blocklisted_sources_are_dropped_on_sip_ports_and_pass_elsewhere"]),
    ("sip", &[]),
    (
        "decisions",
        &[
            "a_brute_force_is_auth_suspended_while_a_customer_keeps_registering",
            "an_international_surge_is_intl_suspended_but_domestic_and_emergency_calls_pass",
        ],
    ),
    ("lifecycle", &["a_block_expires_on_time_with_the_agent_running"]),
    // Egress counting in the kernel's own mode (netlink TC before 6.6,
    // TCX after) and through a clsact qdisc everywhere.
    (
        "egress",
        &[
            "egress_is_counted_once_and_detached_in_the_kernels_own_mode",
            "egress_with_a_netlink_filter_creates_and_removes_its_clsact",
            "egress_with_a_netlink_filter_keeps_someone_elses_clsact",
        ],
    ),
];

/// What the guest prints on the console.
const MARK: &str = "@@tollgate";
/// A guest that runs longer than this is stopped and fails. Debian 12's
/// 6.1 guest takes 850 to 950 s for the suite under software emulation on
/// a 2-vCPU host (every agent start verifies the programs, which 6.1's
/// verifier does slowest), so 900 s left it no margin.
const GUEST_TIMEOUT: Duration = Duration::from_secs(1500);

pub struct Options {
    /// Only kernels whose label or package contains this.
    pub only: Option<String>,
    /// Keep each guest's console log (always kept on failure).
    pub verbose: bool,
}

/// One kernel's outcome.
struct Outcome {
    label: String,
    release: String,
    passed: u64,
    failed: u64,
    /// Test binaries that did not end with a result line.
    broken: Vec<String>,
    verifier: BTreeMap<String, u64>,
    seconds: u64,
    log: PathBuf,
}

impl Outcome {
    fn new(label: &str, log: PathBuf) -> Self {
        Self {
            label: label.to_owned(),
            release: String::new(),
            passed: 0,
            failed: 0,
            broken: Vec::new(),
            verifier: BTreeMap::new(),
            seconds: 0,
            log,
        }
    }

    /// Takes in what one line of a test binary's output says; true for its
    /// closing `test result:` line.
    fn read_line(&mut self, line: &str) -> bool {
        // "verifier: PROGRAM INSNS" (printed by the verifier_budget test);
        // libtest prints a test's output right after "test NAME ... ".
        if let Some(at) = line.find("verifier: ")
            && let Some((prog, n)) = line[at + "verifier: ".len()..].split_once(' ')
            && let Ok(n) = n.split_whitespace().next().unwrap_or("").parse()
        {
            self.verifier.insert(prog.to_owned(), n);
        }
        let Some(rest) = line.strip_prefix("test result: ") else { return false };
        self.passed += crate::count_before(rest, "passed");
        self.failed += crate::count_before(rest, "failed");
        true
    }

    fn ok(&self) -> bool {
        self.failed == 0 && self.broken.is_empty() && self.passed > 0
    }
}

/// The matrix's totals over every kernel.
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    /// Every kernel passed (no failed test, no guest that stopped early).
    pub ok: bool,
}

/// Runs the matrix and prints its table.
pub fn kernels(opts: &Options) -> Result<Totals> {
    let dir = target_dir().join("kernels");
    fs::create_dir_all(&dir)?;
    let tests = build_guest_binaries()?;
    let common = dir.join("initramfs-common.cpio");
    make_common_initramfs(&tests, &common)?;

    let mut outcomes = vec![host(&tests)?];
    for (label, pattern) in KERNELS {
        let package = newest_package(pattern)?;
        if let Some(only) = &opts.only
            && !label.contains(only.as_str())
            && !package.contains(only.as_str())
        {
            continue;
        }
        let kernel = fetch_kernel(&dir, &package)?;
        eprintln!("kernels: booting {package} under qemu (software emulation, a few minutes)");
        outcomes.push(boot(label, &kernel, &common, &dir)?);
    }
    if outcomes.len() == 1
        && let Some(only) = &opts.only
    {
        let labels: Vec<&str> = KERNELS.iter().map(|(l, _)| *l).collect();
        bail!("no kernel matches --only {only:?} (labels: {}, or part of a package name)", labels.join(", "));
    }

    println!("\nkernel matrix (verifier: instructions processed of 1,000,000 per program)");
    let mut failed = false;
    for o in &outcomes {
        let mut insns = String::new();
        for (prog, n) in &o.verifier {
            let _ = write!(insns, " {prog}={n}");
        }
        let verdict = if o.ok() { "PASS" } else { "FAIL" };
        println!(
            "kernel {:<14} {:<28} {verdict} {} passed, {} failed{} in {} s; verifier:{}",
            o.label,
            o.release,
            o.passed,
            o.failed,
            if o.broken.is_empty() { String::new() } else { format!(", broken: {}", o.broken.join(" ")) },
            o.seconds,
            if insns.is_empty() { " (none reported)".to_owned() } else { insns },
        );
        if !o.ok() {
            failed = true;
            eprintln!("  console log: {}", o.log.display());
        } else if !opts.verbose && o.label != "host" {
            let _ = fs::remove_file(&o.log);
        }
    }
    let passed: u64 = outcomes.iter().map(|o| o.passed).sum();
    let failed_n: u64 = outcomes.iter().map(|o| o.failed).sum();
    println!("kernels: {passed} passed, {failed_n} failed");
    Ok(Totals { passed, failed: failed_n, ok: !failed })
}

/// Builds the agent and the test binaries; returns test name -> executable.
fn build_guest_binaries() -> Result<BTreeMap<String, PathBuf>> {
    crate::build(false)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "-p", "tollgate-tests", "--no-run", "--message-format=json"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (Some(exe), Some(src)) = (json_str(line, "executable"), json_str(line, "src_path")) else {
            continue;
        };
        if let Some(name) =
            src.strip_suffix(".rs").and_then(|s| s.rsplit_once("/tests/tests/")).map(|(_, n)| n)
        {
            bins.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    for (name, _) in GUEST_TESTS {
        if !bins.contains_key(*name) {
            bail!("no test binary for tests/tests/{name}.rs");
        }
    }
    Ok(bins)
}

/// The string value of `"key":"..."` in one line of cargo's JSON (paths
/// with no quotes or escapes, which is what cargo writes for ours).
fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// The host's own row: only the verifier budget (the full suite runs there
/// anyway as part of `cargo xtask test`).
fn host(tests: &BTreeMap<String, PathBuf>) -> Result<Outcome> {
    let started = Instant::now();
    let log = target_dir().join("kernels/host.log");
    let out = Command::new(&tests["test_run"])
        .args(["verifier_budget", "--nocapture", "--test-threads=1"])
        .env("TOLLGATE_REQUIRE_PRIVILEGED", "1")
        .output()
        .context("running the verifier budget test on the host")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    fs::write(&log, &text)?;
    let release = output(Command::new("uname").arg("-r")).unwrap_or_default().trim().to_owned();
    let mut o = Outcome::new("host", log);
    o.release = release;
    for line in text.lines() {
        o.read_line(line);
    }
    o.seconds = started.elapsed().as_secs();
    Ok(o)
}

/// The newest package whose name matches `pattern`.
fn newest_package(pattern: &str) -> Result<String> {
    let search =
        || output(Command::new("apt-cache").args(["search", "--names-only", pattern])).unwrap_or_default();
    let mut found = search();
    if found.trim().is_empty() {
        run(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")?;
        found = search();
    }
    found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|name| version_key(name))
        .map(str::to_owned)
        .with_context(|| format!("no Debian package matches {pattern}"))
}

/// Numbers in a package name, compared in order (6.1.0-56 < 6.1.0-100).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect()
}

/// A kernel image and its modules, unpacked.
struct Kernel {
    package: String,
    vmlinuz: PathBuf,
    /// cpio archive with /lib/modules/tollgate/*.ko (uncompressed).
    modules_cpio: PathBuf,
}

fn fetch_kernel(dir: &Path, package: &str) -> Result<Kernel> {
    let kdir = dir.join(package);
    let ready = kdir.join("ready");
    let vmlinuz = kdir.join("vmlinuz");
    let modules_cpio = kdir.join("modules.cpio");
    if !ready.exists() {
        let _ = fs::remove_dir_all(&kdir);
        fs::create_dir_all(&kdir)?;
        eprintln!("kernels: downloading {package}");
        run(Command::new("apt-get").args(["download", "-qq", package]).current_dir(&kdir))
            .with_context(|| format!("apt-get download {package}"))?;
        let deb = fs::read_dir(&kdir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let root = kdir.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let image = fs::read_dir(root.join("boot"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            .context("no vmlinuz in the package")?;
        fs::rename(&image, &vmlinuz)?;
        let release =
            fs::read_dir(root.join("lib/modules"))?.next().context("no modules in the package")??.path();
        let staged = kdir.join("mods");
        let mdir = staged.join("lib/modules/tollgate");
        fs::create_dir_all(&mdir)?;
        for m in MODULES {
            let plain = release.join("kernel").join(m);
            let xz = PathBuf::from(format!("{}.xz", plain.display()));
            let name = Path::new(m).file_name().expect("module file name");
            if plain.exists() {
                fs::copy(&plain, mdir.join(name))?;
            } else if xz.exists() {
                let out = Command::new("xz").arg("-dc").arg(&xz).output().context("xz (apt xz-utils)")?;
                if !out.status.success() {
                    bail!("xz -dc {} failed", xz.display());
                }
                fs::write(mdir.join(name), out.stdout)?;
            }
            // Absent: built in.
        }
        cpio(&staged, &modules_cpio)?;
        fs::remove_dir_all(&root)?;
        fs::remove_file(&deb)?;
        fs::write(&ready, package)?;
    }
    Ok(Kernel { package: package.to_owned(), vmlinuz, modules_cpio })
}

/// Packs `dir` into a newc cpio archive at `out`.
fn cpio(dir: &Path, out: &Path) -> Result<()> {
    let file = fs::File::create(out)?;
    let status = Command::new("sh")
        .args(["-c", "find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0"])
        .current_dir(dir)
        .stdout(file)
        .status()
        .context("cpio (apt cpio)")?;
    if !status.success() {
        bail!("cpio of {} failed", dir.display());
    }
    Ok(())
}

/// Copies `src` into `root` at the same absolute path, with the libraries
/// it links against.
fn install(root: &Path, src: &Path, libs: bool) -> Result<()> {
    let dst = root.join(src.strip_prefix("/").unwrap_or(src));
    fs::create_dir_all(dst.parent().expect("absolute path"))?;
    // Follow links: the guest gets the file itself.
    fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
    if !libs {
        return Ok(());
    }
    // Debug builds carry hundreds of MB of debug info: the guest unpacks
    // the initramfs into RAM, so keep symbols (for backtraces) only.
    run(Command::new("strip").arg("--strip-debug").arg(&dst)).context("strip (apt binutils)")?;
    let ldd = output(Command::new("ldd").arg(src)).unwrap_or_default();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let lib = Path::new(lib);
        let dst = root.join(lib.strip_prefix("/").expect("absolute"));
        if !dst.exists() {
            install(root, lib, false)?;
        }
    }
    Ok(())
}

/// The part of the initramfs every kernel shares.
fn make_common_initramfs(tests: &BTreeMap<String, PathBuf>, out: &Path) -> Result<()> {
    let root = out.with_extension("d");
    let _ = fs::remove_dir_all(&root);
    for d in
        ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "root", "etc", "tests"]
    {
        fs::create_dir_all(root.join(d))?;
    }
    fs::create_dir_all(root.join("var"))?;
    symlink("/run", root.join("var/run"))?;

    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing (apt busybox-static)");
    }
    install(&root, busybox, false)?;
    // busybox's applets, except those iproute2 and util-linux provide for
    // real (its `ip` has no netns, its `setpriv` no --bounding-set).
    let list = output(Command::new(busybox).arg("--list")).context("busybox --list")?;
    for applet in list.lines().filter(|a| !matches!(*a, "ip" | "ss" | "setpriv" | "busybox")) {
        symlink("/bin/busybox", root.join("bin").join(applet)).ok();
    }
    for prog in GUEST_PROGRAMS {
        install(&root, Path::new(prog), true)?;
    }
    symlink("/sbin/ip", root.join("bin/ip"))?;
    // The agent, where the tests look for it.
    let agent = target_dir().join("debug/tollgate");
    install(&root, &agent, true)?;
    symlink(&agent, root.join("bin/tollgate"))?;
    let mut script = String::new();
    for (name, filters) in GUEST_TESTS {
        let exe = &tests[*name];
        install(&root, exe, true)?;
        symlink(exe, root.join("tests").join(name))?;
        let _ = writeln!(
            script,
            "run_test {name} {}",
            filters
                .iter()
                .chain(["--test-threads=1", "--nocapture"].iter())
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    // Test fixtures are read from the path the tests were built at.
    let fixtures = workspace_root().join("tests/fixtures");
    copy_tree(&fixtures, &root.join(fixtures.strip_prefix("/").expect("absolute")))?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    let init = root.join("init");
    fs::write(&init, INIT.replace("@TESTS@", &script).replace("@MARK@", MARK))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    cpio(&root, out)
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else {
            fs::copy(entry.path(), to)?;
        }
    }
    Ok(())
}

/// The guest's init: mount what the agent and the tests use, load the
/// modules, run each test binary, report, power off. The binaries and
/// fixtures sit at the paths they were built at, which may be under /tmp:
/// nothing is mounted over /tmp (the initramfs itself is in RAM).
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp
export TOLLGATE_BIN=/bin/tollgate TOLLGATE_REQUIRE_PRIVILEGED=1 RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
for m in /lib/modules/tollgate/*.ko; do [ -e "$m" ] && insmod "$m"; done
ip link set lo up
echo "@MARK@ release $(uname -r)"
run_test() {
    name=$1; shift
    echo "@MARK@ begin $name"
    /tests/$name "$@" 2>&1
    echo "@MARK@ end $name rc=$?"
}
@TESTS@
echo "@MARK@ done"
poweroff -f
"#;

fn boot(label: &str, kernel: &Kernel, common: &Path, dir: &Path) -> Result<Outcome> {
    let initrd = dir.join(format!("{}.initrd", kernel.package));
    {
        let mut bytes = fs::read(common)?;
        bytes.extend(fs::read(&kernel.modules_cpio)?);
        fs::write(&initrd, bytes)?;
    }
    let log = dir.join(format!("{}.log", kernel.package));
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel"])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("qemu-system-x86_64 (apt qemu-system-x86)")?;
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut o = Outcome::new(label, log.clone());
    let mut console = String::new();
    let mut current: Option<(String, bool)> = None;
    let mut done = false;
    loop {
        let left = GUEST_TIMEOUT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                console.push_str(&line);
                console.push('\n');
                if o.read_line(&line)
                    && let Some((_, seen)) = current.as_mut()
                {
                    *seen = true;
                }
                // The console may put terminal escapes before a mark.
                if let Some(at) = line.find(MARK) {
                    let words: Vec<&str> = line[at + MARK.len()..].split_whitespace().collect();
                    match words.as_slice() {
                        ["release", r] => o.release = (*r).to_owned(),
                        ["begin", name] => {
                            eprintln!("kernels: {label}: {name} ({} s)", started.elapsed().as_secs());
                            current = Some(((*name).to_owned(), false));
                        }
                        ["end", name, _rc] => {
                            // A binary that ended without its result line crashed.
                            let reported = current.take().is_some_and(|(_, seen)| seen);
                            if !reported {
                                o.broken.push((*name).to_owned());
                            }
                        }
                        ["done"] => done = true,
                        _ => {}
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                console.push_str("\n[xtask: guest timed out; killed]\n");
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    console.push_str(&err);
    fs::write(&log, &console)?;
    let _ = fs::remove_file(&initrd);
    if !done {
        o.broken.push(match current {
            Some((name, _)) => format!("{name}(guest stopped)"),
            None => "guest(stopped before the end)".to_owned(),
        });
    }
    o.seconds = started.elapsed().as_secs();
    Ok(o)
}
