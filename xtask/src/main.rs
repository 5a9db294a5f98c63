//! Developer tasks. Deliberately dependency-light: `setup` must build and run
//! on a fresh machine before bpf-linker exists, so nothing here depends on
//! the agent or the eBPF crate.

use std::{
    env,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod kernels;

/// The bpf-linker release known to work with this machine's toolchains and
/// Debian's LLVM 22 (README: Development, Toolchain).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";
const APT_PACKAGES: &[&str] = &[
    // bpf-linker's build against Debian's LLVM 22.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Namespaces, veth, setpriv/nsenter for the tests and the demo.
    "iproute2",
    "util-linux",
    // systemd-analyze verify/security for tests/unit.rs (systemd need not run).
    "systemd",
    // The test proving XDP blocks are not bypassed by conntrack, and the
    // flood benchmark's nftables receivers.
    "nftables",
    // The flood benchmark: GRO and TSO of its veths, their queue counters.
    "ethtool",
    // Real SIP peers for the integration tests (sipp) and a real registrar
    // for the acceptance tests (Kamailio; its base package has auth,
    // auth_db, db_text, registrar and usrloc).
    "sip-tester",
    "kamailio",
    // The venv SIPVicious is installed into.
    "python3-venv",
    // Inspecting attached programs and maps by hand.
    "bpftool",
    // The kernel matrix: Debian's kernels booted under qemu with an
    // initramfs made from busybox (xz unpacks 6.12's modules).
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    // promtool (check and unit-test dashboards/alerts.yml) and the
    // Prometheus the dashboard tests scrape the agent with.
    "prometheus",
    // The dashboard's query plots (dashboards/plot.py): its test
    // (tests/tests/plot.rs) and `cargo xtask dashboards-png`.
    "python3-matplotlib",
    // The Debian package: dpkg-shlibdeps (cargo-deb's `depends = "$auto"`)
    // and strip come with dpkg-dev; its test (tests/tests/package.rs) checks
    // it with lintian.
    "dpkg-dev",
    "lintian",
    // Clustering (agent/src/cluster/): the etcd its tests run (etcdctl
    // checks the keys), and protoc for the etcd-client crate's build.
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    // The TLS cluster test's CA, server and client certificates.
    "openssl",
];

/// The cargo-deb release `cargo xtask deb` packages with: the
/// [package.metadata.deb] keys in agent/Cargo.toml are its.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// The interpreter dashboards/plot.py runs under: Debian's, the one the
/// python3-matplotlib package is installed for (a `python3` earlier on
/// PATH, such as pyenv's, does not see Debian's packages).
const PYTHON: &str = "/usr/bin/python3";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tollgate developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything a fresh machine needs (apt packages, nightly
    /// rust-src, bpf-linker, SIPVicious, the dashboard check's npm
    /// packages). Idempotent and quiet when already done.
    Setup,
    /// Set up, then build the agent (which embeds the XDP program).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build (the Debian package too), then run every test (unit,
    /// BPF_PROG_TEST_RUN and network-namespace integration tests; needs
    /// root), then the kernel matrix (`cargo xtask kernels`). With a
    /// filter, only `cargo test`.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run tollgate. Without --iface: a self-contained
    /// demo in throw-away network namespaces. With --iface: the real agent
    /// on that interface (remaining arguments go to `tollgate run`).
    Demo {
        /// Run for real on this interface instead of the demo.
        #[arg(long)]
        iface: Option<String>,
        /// Extra arguments for `tollgate run` (with --iface).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian's kernels (12's 6.1 and 6.12) under qemu and run the
    /// kernel program's tests in each; print one line per kernel with the
    /// verifier's instruction count per program. Fails if any kernel fails.
    Kernels {
        /// Only kernels whose label or package name contains this.
        #[arg(long)]
        only: Option<String>,
        /// Keep every guest's console log under target/kernels.
        #[arg(long)]
        verbose: bool,
    },
    /// Run the acceptance scenarios against real SIP software (Kamailio as
    /// registrar and proxy, SIPVicious and sipp as attackers and phones) in
    /// their full size, each enforced and in dry-run, and print the report
    /// table. (`cargo xtask test` runs a short version of the same.)
    Acceptance {
        /// Extra arguments for the test binary (e.g. a scenario name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the SIP and header parsers with cargo-fuzz (nightly) for a
    /// bounded time, seeded with tests/fixtures/sip. Installs cargo-fuzz.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (sip_parse or headers).
        #[arg(long)]
        target: Option<String>,
    },
    /// Benchmarks that print ratios measured side by side in one run:
    /// `bench verdict [--repeat N] [--rounds N]` (each verdict path next to
    /// a bare XDP_PASS and an xdp-filter-style static drop), `bench maps
    /// [--fills 10000,100000,1000000] [--quick]` (a carrier-scale
    /// blocklist: ns per packet, kernel memory, write time), `bench flood
    /// [--quick] [--generator live|packet] [--prefixes N]` (XDP vs
    /// nftables on a veth), `bench time-to-block [--runs N] [--sources N]`
    /// (next to a log-tail + nftables pipeline), `bench agent [--quick]
    /// [--sizes 10000,100000,1000000]` (the agent's CPU, RSS, scrape time
    /// and time to block against the sources tracked; TOLLGATE_BIN_BEFORE
    /// measures another build next to it), and `bench all [--quick]`,
    /// every one in one report (`cargo xtask bench help` lists them). The
    /// arguments go to the bench binary, which defines them once.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build the release binary and its man pages and completions,
    /// and make the Debian package with cargo-deb; prints its path
    /// (target/debian/tollgate_VERSION-1_ARCH.deb). cargo-deb runs only
    /// when the package is older than the binary or a file it packages.
    Deb,
    /// Run the live dashboard test (Prometheus scraping agents under real
    /// SIP traffic; needs root) and plot its query results, one PNG per
    /// dashboard row (dashboards/plot.py; plots of the queries, not
    /// Grafana screenshots). Installs python3-matplotlib.
    DashboardsPng {
        /// Plot these recorded query results instead of running the test
        /// (the test writes dashboard-data/queries.json in the target
        /// directory).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where the PNGs go [default: dashboards/img, in the workspace].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    match task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn task(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup(),
        Task::Build { release } => {
            setup()?;
            build(release)
        }
        Task::Test { args } => {
            setup()?;
            test(&args)
        }
        Task::Demo { iface, args } => {
            setup()?;
            build(true)?;
            match iface {
                Some(iface) => {
                    let bin = target_dir().join("release/tollgate");
                    run(Command::new(bin).args(["run", "--iface", &iface]).args(&args))
                }
                None => {
                    let bin = target_dir().join("release/tollgate");
                    cargo(
                        &["run", "--release", "--quiet", "-p", "tollgate-tests", "--bin", "tollgate-demo"],
                        &[("TOLLGATE_BIN", bin.to_str().context("non-UTF-8 target dir")?)],
                    )
                }
            }
        }
        Task::Kernels { only, verbose } => {
            setup()?;
            if !kernels::kernels(&kernels::Options { only, verbose })?.ok {
                bail!("the kernel matrix failed (console logs named above)");
            }
            Ok(())
        }
        Task::Acceptance { args } => {
            setup()?;
            acceptance(&args)
        }
        Task::Fuzz { seconds, target } => {
            setup()?;
            fuzz(seconds, target.as_deref())
        }
        Task::Bench { args } => {
            setup()?;
            // time-to-block runs the release agent; building it is cheap
            // when nothing changed.
            build(true)?;
            let bin = target_dir().join("release/tollgate");
            let mut cmd =
                vec!["run", "--release", "--quiet", "-p", "tollgate-tests", "--bin", "tollgate-bench", "--"];
            cmd.extend(args.iter().map(String::as_str));
            cargo(&cmd, &[("TOLLGATE_BIN", bin.to_str().context("non-UTF-8 target dir")?)])
        }
        Task::Deb => {
            setup()?;
            println!("{}", deb()?.display());
            Ok(())
        }
        Task::DashboardsPng { data, out } => {
            let data = match data {
                Some(data) => data,
                None => {
                    setup()?;
                    live_dashboard_test()?;
                    target_dir().join("dashboard-data/queries.json")
                }
            };
            dashboards_png(&data, &out.unwrap_or_else(|| workspace_root().join("dashboards/img")))
        }
    }
}

/// Builds the agent and runs tests/tests/prometheus_live.rs, which writes
/// its query results to dashboard-data/queries.json in the target directory.
fn live_dashboard_test() -> Result<()> {
    build(false)?;
    let bin = target_dir().join("debug/tollgate");
    cargo(
        &["test", "-p", "tollgate-tests", "--test", "prometheus_live"],
        &[
            ("TOLLGATE_BIN", bin.to_str().context("non-UTF-8 target dir")?),
            ("TOLLGATE_REQUIRE_PRIVILEGED", "1"),
        ],
    )
}

/// Runs dashboards/plot.py on `data`, writing into `out`; the script
/// prints the path of each PNG it writes. Looks for the data before
/// installing anything.
fn dashboards_png(data: &Path, out: &Path) -> Result<()> {
    if !data.exists() {
        bail!(
            "{} does not exist (`cargo xtask dashboards-png` without --data runs the test that writes it)",
            data.display()
        );
    }
    apt_install(&["python3-matplotlib"])?;
    run(Command::new(PYTHON).arg(workspace_root().join("dashboards/plot.py")).arg(data).arg(out))
        .context("dashboards/plot.py failed")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_owned()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).args(args).envs(envs.iter().copied()).current_dir(workspace_root()))
}

fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "-p", "tollgate"];
    if release {
        args.push("--release");
    }
    cargo(&args, &[])
}

/// Where the acceptance scenarios write their report rows (README:
/// Acceptance); `name` tells the short run's report from the full one's.
fn acceptance_report(name: &str) -> Result<PathBuf> {
    let dir = target_dir().join("acceptance");
    std::fs::create_dir_all(&dir).context("creating target/acceptance")?;
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(path),
    }
}

/// Prints the acceptance report table: its header, then the rows sorted by
/// scenario and mode (they are written in the order the scenarios finish).
fn print_report(path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.len() < 3 {
        return;
    }
    let rows = &mut lines[2..];
    rows.sort_unstable();
    println!("\nacceptance report ({}):\n{}\n", path.display(), lines.join("\n"));
}

fn acceptance(extra: &[String]) -> Result<()> {
    build(false)?;
    let report = acceptance_report("report.md")?;
    let mut args = vec!["test", "-p", "tollgate-tests", "--test", "acceptance", "--"];
    args.extend(extra.iter().map(String::as_str));
    let bin = target_dir().join("debug/tollgate");
    let result = cargo(
        &args,
        &[
            ("TOLLGATE_BIN", bin.to_str().context("non-UTF-8 target dir")?),
            ("TOLLGATE_REQUIRE_PRIVILEGED", "1"),
            ("TOLLGATE_ACCEPTANCE", "full"),
            ("TOLLGATE_ACCEPTANCE_REPORT", report.to_str().context("non-UTF-8 target dir")?),
        ],
    );
    print_report(&report);
    result
}

fn test(extra: &[String]) -> Result<()> {
    // The integration tests run the real binary, and tests/tests/package.rs
    // the Debian package; build them first.
    deb()?;
    bpffs()?;
    build(false)?;
    let bin = target_dir().join("debug/tollgate");
    let report = acceptance_report("report-short.md")?;
    // Default members: everything but the BPF-only eBPF crate.
    let mut args = vec!["test", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(&args)
        .env("TOLLGATE_BIN", &bin)
        .env("TOLLGATE_REQUIRE_PRIVILEGED", "1")
        .env("TOLLGATE_ACCEPTANCE_REPORT", &report)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through and add up every test binary's result line,
    // so the run ends with one summary line instead of the last binary's.
    let mut totals = [0u64; 3];
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for (i, word) in ["passed", "failed", "ignored"].iter().enumerate() {
                totals[i] += count_before(rest, word);
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    print_report(&report);
    // Every change to the kernel program is judged on every kernel: the
    // matrix is part of the whole run (a filtered run is a developer's
    // shortcut, and says so).
    let matrix = if extra.is_empty() {
        Some(kernels::kernels(&kernels::Options { only: None, verbose: false }))
    } else {
        eprintln!(
            "\n!!!!! kernel matrix SKIPPED: test arguments given; `cargo xtask kernels` runs it !!!!!\n"
        );
        None
    };
    let (kp, kf) = match &matrix {
        Some(Ok(t)) => (t.passed, t.failed + u64::from(!t.ok && t.failed == 0)),
        Some(Err(_)) => (0, 1),
        None => (0, 0),
    };
    println!("tests: {} passed, {} failed, {} skipped", totals[0] + kp, totals[1] + kf, totals[2]);
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if totals[0] == 0 {
        bail!("no test ran");
    }
    match matrix {
        Some(Err(e)) => Err(e.context("the kernel matrix could not run")),
        Some(Ok(t)) if !t.ok => bail!("the kernel matrix failed (console logs named above)"),
        _ => Ok(()),
    }
}

/// The number written just before `word` in "ok. 5 passed; 0 failed; ...".
fn count_before(text: &str, word: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

const FUZZ_TARGETS: [&str; 2] = ["sip_parse", "headers"];

fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        eprintln!("setup: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz")?;
    }
    let root = workspace_root();
    let targets: Vec<&str> = match only {
        Some(t) if FUZZ_TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("unknown fuzz target {t:?} (one of {})", FUZZ_TARGETS.join(", ")),
        None => FUZZ_TARGETS.to_vec(),
    };
    for target in targets {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus).context("creating the fuzz corpus")?;
        if target == "sip_parse" {
            for entry in std::fs::read_dir(root.join("tests/fixtures/sip")).context("reading SIP fixtures")? {
                let entry = entry?;
                std::fs::copy(entry.path(), corpus.join(entry.file_name()))?;
            }
        }
        eprintln!("fuzzing {target} for {seconds} s");
        run(Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(root.join("fuzz")))
        .with_context(|| format!("fuzz target {target} found a failure (see fuzz/artifacts/{target})"))?;
    }
    Ok(())
}

/// Mounts the BPF filesystem on /sys/fs/bpf if nothing did (a host
/// without systemd). The agent mounts it itself when it may, but the tests
/// run it with the packaged unit's capabilities only, as systemd would
/// (which mounts it at boot): without CAP_SYS_ADMIN it cannot.
fn bpffs() -> Result<()> {
    let kind = output(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]));
    if kind.as_deref().map(str::trim) == Some("bpf_fs") {
        return Ok(());
    }
    eprintln!("test: mounting the BPF filesystem on /sys/fs/bpf (nothing had)");
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn setup() -> Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    sipvicious()?;
    dashboard_validation()
}

fn cargo_deb() -> Result<()> {
    let version = output(Command::new("cargo").args(["deb", "--version"]));
    if version.is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION)) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-deb {CARGO_DEB_VERSION} (a few minutes)");
    run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--force",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
    .context("installing cargo-deb failed")
}

/// Where cargo-deb writes the package (its own naming: name, version with
/// the Debian revision, architecture).
fn deb_path() -> Result<PathBuf> {
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture failed (the Debian package is built on Debian)")?;
    let version = env!("CARGO_PKG_VERSION");
    Ok(target_dir().join(format!("debian/tollgate_{version}-1_{}.deb", arch.trim())))
}

/// Builds the Debian package and returns its path. cargo-deb cannot run
/// commands, so the release binary writes its man pages (gzipped here, as
/// Debian wants) and completions into target/release/debian-assets first,
/// where agent/Cargo.toml's assets expect them. cargo-deb runs only when
/// the package is older than the binary or any file it packages.
fn deb() -> Result<PathBuf> {
    build(true)?;
    let release = target_dir().join("release");
    let bin = release.join("tollgate");
    let deb = deb_path()?;
    let root = workspace_root();
    let mut inputs = vec![bin.clone(), root.join("agent/Cargo.toml"), root.join("README.md")];
    for dir in ["packaging", "packaging/debian", "dashboards", "dashboards/img"] {
        inputs.extend(files_in(&root.join(dir))?);
    }
    if newer_than_all(&deb, &inputs) {
        eprintln!("xtask: {} is up to date", deb.display());
        return Ok(deb);
    }
    let assets = release.join("debian-assets");
    if assets.exists() {
        std::fs::remove_dir_all(&assets).with_context(|| format!("removing {}", assets.display()))?;
    }
    for what in ["man", "completions"] {
        run(Command::new(&bin).args(["generate", what]).arg(assets.join(what)).stdout(Stdio::null()))?;
    }
    // Debian Policy 12.1: man pages compressed with `gzip -9n` (-n: no name
    // or time stamp, so the same page gives the same bytes).
    let pages = files_in(&assets.join("man"))?;
    if pages.is_empty() {
        bail!("`tollgate generate man` wrote no page into {}", assets.join("man").display());
    }
    run(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))?;
    // Its standard output is the path, which the callers print.
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args(["deb", "-p", "tollgate", "--no-build"])
        .current_dir(&root)
        .stdout(Stdio::null()))?;
    if !deb.exists() {
        bail!("cargo-deb did not write {} (see its output above)", deb.display());
    }
    Ok(deb)
}

/// The files directly in `dir` (not in its subdirectories).
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// Whether `path` exists and was modified after every one of `inputs`.
fn newer_than_all(path: &Path, inputs: &[PathBuf]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(made) = modified(path) else { return false };
    inputs.iter().all(|input| modified(input).is_some_and(|t| t < made))
}

/// Installs the npm packages that check the Grafana dashboard against
/// Grafana's schema (dashboards/validate: @grafana/schema and typescript,
/// pinned in its package-lock.json) with `npm ci`, when node_modules is
/// missing or was installed from another lockfile. Node.js and npm come
/// with the machine; Debian's are installed where they do not.
fn dashboard_validation() -> Result<()> {
    let dir = workspace_root().join("dashboards/validate");
    let lock = std::fs::read(dir.join("package-lock.json"))
        .context("reading dashboards/validate/package-lock.json")?;
    // A copy of the lockfile npm ci installed from, inside node_modules (so
    // that removing node_modules removes it too).
    let stamp = dir.join("node_modules/.tollgate-installed-lock.json");
    if std::fs::read(&stamp).is_ok_and(|installed| installed == lock) {
        return Ok(());
    }
    if output(Command::new("npm").arg("--version")).is_none() {
        // The dashboard's schema check.
        apt_install(&["nodejs", "npm"])?;
    }
    eprintln!("setup: npm ci in dashboards/validate (@grafana/schema, typescript)");
    // Quiet: npm's "added 2 packages" goes to stdout, errors to stderr.
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .stdout(Stdio::null()))
    .context("npm ci in dashboards/validate failed")?;
    std::fs::write(&stamp, &lock).with_context(|| format!("writing {}", stamp.display()))
}

/// The SIPVicious release the acceptance tests attack with (Debian's 0.3.3
/// is older than the one whose svcrack behaviour they rely on).
const SIPVICIOUS_VERSION: &str = "0.3.8";

/// Installs SIPVicious from PyPI into a venv of the repository's own,
/// target/venv (where tests/src/sipvicious.rs looks for it).
fn sipvicious() -> Result<()> {
    let venv = target_dir().join("venv");
    let pip = venv.join("bin/pip");
    let installed = output(Command::new(&pip).args(["show", "sipvicious"]))
        .is_some_and(|s| s.lines().any(|l| l.trim() == format!("Version: {SIPVICIOUS_VERSION}")));
    if installed {
        return Ok(());
    }
    eprintln!("setup: installing SIPVicious {SIPVICIOUS_VERSION} into {}", venv.display());
    if !pip.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv failed (Debian package python3-venv)")?;
    }
    run(Command::new(&pip)
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(format!("sipvicious=={SIPVICIOUS_VERSION}")))
    .context("pip install sipvicious failed")
}

fn apt_packages() -> Result<()> {
    if apt_install(APT_PACKAGES)?.contains(&"prometheus") {
        stop_packaged_prometheus()?;
    }
    Ok(())
}

/// Installs those of `packages` that dpkg does not list as installed, with
/// one apt-get update and install; returns the ones it installed (none
/// when all were, without touching apt).
fn apt_install<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update (installing packages needs root and the Debian package mirror)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(missing)
}

/// Debian's prometheus package starts its service when it is installed
/// (through /etc/init.d where there is no systemd), unless a policy-rc.d
/// forbids it as in most containers: a daemon on :9090 with the package's
/// configuration, which nothing here wants (the tests start their own
/// Prometheus on loopback). The init script stops only the daemon of its
/// own pidfile, and succeeds when none runs.
fn stop_packaged_prometheus() -> Result<()> {
    let script = Path::new("/etc/init.d/prometheus");
    if !script.exists() {
        return Ok(());
    }
    run(Command::new(script).arg("stop")).context("stopping the prometheus service its package started")
}

fn rust_src() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .context("no nightly toolchain: the eBPF crate needs `rustup toolchain install nightly`")?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain (needed for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("could not add rust-src to nightly; the eBPF program cannot be built without it")
}

/// Whether the installed bpf-linker is the pinned version linked against
/// Debian's LLVM 22 (one built against another LLVM fails at link time).
fn bpf_linker_ok() -> bool {
    let Some(version) = output(Command::new("bpf-linker").arg("--version")) else { return false };
    if !version.contains(BPF_LINKER_VERSION) {
        return false;
    }
    let Some(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else { return false };
    output(Command::new("ldd").arg(path.trim()))
        .is_some_and(|libs| libs.contains(&format!("libLLVM.so.{LLVM_MAJOR}")))
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about a minute)");
    let llvm = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    let path = format!("{llvm}/bin:{}", env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--force", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")])
        .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), &llvm)
        .env("PATH", path))
    .context("building bpf-linker failed")?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed but is not the one on PATH (check ~/.cargo/bin is on PATH)"
        );
    }
    Ok(())
}
