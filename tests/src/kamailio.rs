//! Kamailio (Debian package `kamailio`) as a real digest registrar in a test
//! namespace, with the configuration and subscriber table kept in
//! tests/fixtures/kamailio/. Stopped on drop.

use std::{
    fs,
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{netns::NetNs, unique, wait_for};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/kamailio")
}

/// The subscriber sipp's phones register as (tests/fixtures/sipp/good.csv):
/// (user, domain, password).
pub const CUSTOMER: (&str, &str, &str) = ("1001", "edge.example", "secret");
/// The subscriber the acceptance tests attack; its password is long and
/// not in any list of usual passwords.
pub const VICTIM: (&str, &str, &str) = ("1002", "edge.example", "zebra-quartz-71");

/// Whether Kamailio (Debian package kamailio) is installed.
pub fn installed() -> bool {
    crate::command_exists("kamailio")
}

/// Kamailio running in the foreground in a namespace, listening on UDP
/// `addr`:5060, with its own run directory (and copy of the subscriber
/// table) under the temporary directory.
pub struct Kamailio {
    child: Option<Child>,
    rundir: PathBuf,
}

impl Kamailio {
    /// A registrar on UDP `addr`:5060 only.
    pub fn start(ns: &NetNs, addr: IpAddr) -> Self {
        let listen = if addr.is_ipv6() { format!("udp:[{addr}]:5060") } else { format!("udp:{addr}:5060") };
        Self::start_with(ns, &[listen], None)
    }

    /// A registrar and proxy on UDP and TCP port 5060 of `v4` and `v6`,
    /// relaying authenticated calls to the UAS at `uas` (a SIP URI).
    pub fn core(ns: &NetNs, v4: IpAddr, v6: IpAddr, uas: &str) -> Self {
        Self::core_with(ns, v4, v6, uas, &[])
    }

    /// Like [`Kamailio::core`], with more defines for its configuration
    /// (e.g. `("NONCE_EXPIRE", "2")`).
    pub fn core_with(ns: &NetNs, v4: IpAddr, v6: IpAddr, uas: &str, defines: &[(&str, &str)]) -> Self {
        let listens: Vec<String> = ["udp", "tcp"]
            .iter()
            .flat_map(|t| [format!("{t}:{v4}:5060"), format!("{t}:[{v6}]:5060")])
            .collect();
        Self::start_defined(ns, &listens, Some(uas), defines)
    }

    /// The general form: up to four listen sockets (Kamailio's `listen=`
    /// syntax), and where to relay calls.
    pub fn start_with(ns: &NetNs, listens: &[String], uas: Option<&str>) -> Self {
        Self::start_defined(ns, listens, uas, &[])
    }

    fn start_defined(ns: &NetNs, listens: &[String], uas: Option<&str>, defines: &[(&str, &str)]) -> Self {
        assert!((1..=4).contains(&listens.len()), "kamailio.cfg takes one to four listen sockets");
        let rundir = std::env::temp_dir().join(unique("kam"));
        let db = rundir.join("db");
        fs::create_dir_all(&db).expect("kamailio run directory");
        for table in ["version", "subscriber"] {
            fs::copy(fixtures().join("db").join(table), db.join(table))
                .expect("copying the subscriber table");
        }
        let log = fs::File::create(rundir.join("kamailio.log")).expect("kamailio log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "kamailio", "-f"])
            .arg(fixtures().join("kamailio.cfg"))
            .args(["-DD", "-E", "-Y"])
            .arg(&rundir)
            .args(["-m", "64", "-M", "8"]);
        for (i, listen) in listens.iter().enumerate() {
            let name = if i == 0 { "LISTEN".to_owned() } else { format!("LISTEN{}", i + 1) };
            cmd.arg("-A").arg(format!("{name}={listen}"));
        }
        if let Some(uas) = uas {
            cmd.arg("-A").arg(format!("UAS={uas}"));
        }
        for (name, value) in defines {
            cmd.arg("-A").arg(format!("{name}={value}"));
        }
        let child = cmd
            .arg("-A")
            .arg(format!("DBURL=\"text://{}\"", db.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            // Its own process group, so that drop can stop the workers too.
            .process_group(0)
            .spawn()
            .expect("kamailio (Debian package kamailio) must be installed: cargo xtask setup installs it");
        // `ip netns exec` execs kamailio, so the child is its main process.
        let mut kamailio = Self { child: Some(child), rundir };
        let listening = wait_for(Duration::from_secs(10), || {
            if let Some(status) = kamailio.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("kamailio exited during start-up ({status}):\n{}", kamailio.log_text());
            }
            let out = ns.exec(&["ss", "-lnuH", "sport", "= :5060"]);
            (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
        });
        assert!(listening.is_some(), "kamailio did not listen on udp/5060:\n{}", kamailio.log_text());
        kamailio
    }

    pub fn rundir(&self) -> &Path {
        &self.rundir
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.rundir.join("kamailio.log")).unwrap_or_default()
    }

    /// How many REGISTERs from `src` Kamailio's script has seen.
    pub fn registers_from(&self, src: IpAddr) -> usize {
        self.logged("tollgate-register", src)
    }

    /// How many registrations from `src` it accepted (200 OK).
    pub fn accepted_from(&self, src: IpAddr) -> usize {
        self.logged("tollgate-register-ok", src)
    }

    /// How many REGISTERs from `src` it answered 403 (wrong password).
    pub fn forbidden_from(&self, src: IpAddr) -> usize {
        self.logged("tollgate-register-forbidden", src)
    }

    /// How many of its `event` lines (tests/fixtures/kamailio/kamailio.cfg
    /// lists them) name `src` as the sender.
    pub fn logged(&self, event: &str, src: IpAddr) -> usize {
        let needle = format!("{event} from {src}");
        self.log_text()
            .lines()
            .filter(|l| {
                l.split_once(&needle).is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with(' '))
            })
            .count()
    }

    /// How many INVITEs from `src` it authenticated and relayed, and to
    /// which Request-URI users (the dialled numbers, in order).
    pub fn calls_relayed_from(&self, src: IpAddr) -> Vec<String> {
        let needle = format!("tollgate-invite-ok from {src} ");
        self.log_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| l.split(" to ").nth(1).map(|n| n.trim().to_owned()))
            .collect()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Nothing to save (no database writes, usrloc in memory): SIGKILL
            // the whole process group, our child and the workers it forked.
            // (SIGTERM to the main process alone sometimes left a worker
            // deadlocked in its handler, orphaned in the namespace.)
            // SAFETY: signalling our own child's process group.
            unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- kamailio log ---\n{}", self.log_text());
        }
        let _ = fs::remove_dir_all(&self.rundir);
    }
}
