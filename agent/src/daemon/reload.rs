//! Live reload (SIGHUP, as systemd's `ExecReload=` sends it): the
//! configuration file and the original command line are read again, as a
//! restart would read them, and what can change in place is applied
//! without a gap in enforcement; what cannot (interfaces, pins, map sizes,
//! listening addresses, files held open) is logged and left as it was.
//! An invalid file is rejected whole and the running configuration stays.
//! Every reload is audited with what changed.

use std::{collections::BTreeMap, ffi::OsString};

use log::{info, warn};

use super::{Daemon, actuator, learning, lock, setup};
use crate::{audit, cli::RunArgs, config, countries::Countries};

/// The keys a reload cannot apply: they name what was set up at start
/// (attachments, pins, map sizes, listening sockets, files held open).
const NEEDS_RESTART: &[&str] = &[
    "iface",
    "egress-iface",
    "xdp-mode",
    "pin-path",
    "state-dir",
    "max-sources",
    "blocklist-capacity",
    "metrics-addr",
    "control-socket",
    "audit-log",
    "on-decision",
    "keep-attached-on-exit",
    // The cluster session is made once, at start-up.
    "cluster-endpoints",
    "node-name",
    "cluster-name",
    "cluster-prefix",
    "cluster-ca",
    "cluster-cert",
    "cluster-key",
    "cluster-source-fraction",
    "cluster-max-sources",
];

/// What the running agent was configured with, to compare a reload with.
pub(super) struct Running {
    /// The process's command line, read again with the file at each reload.
    argv: Vec<OsString>,
    pub(super) args: RunArgs,
    values: BTreeMap<String, Vec<String>>,
}

impl Running {
    /// The configuration the agent started with (the file as it was then).
    pub(super) fn at_start(argv: Vec<OsString>) -> anyhow::Result<Self> {
        let (args, values) = config::run_args_and_values(argv.clone())?;
        Ok(Self { argv, args, values })
    }
}

/// What a reload did.
pub(super) struct Reloaded {
    /// The detection window changed: the learning timer must follow.
    pub(super) window_changed: bool,
    /// What was applied and left, in a line for the operator; or why the
    /// file was rejected.
    pub(super) outcome: Result<String, String>,
}

impl Daemon {
    /// Reads the configuration again and applies what changed.
    pub(super) fn reload(&mut self) -> Reloaded {
        let (mut args, values) = match config::run_args_and_values(self.running.argv.clone()) {
            Ok(read) => read,
            Err(e) => return self.rejected(&e.to_string()),
        };
        let old = &self.running.values;
        let changed: Vec<&str> =
            values.keys().map(String::as_str).filter(|k| old.get(*k) != values.get(*k)).collect();
        let (restart, apply): (Vec<&str>, Vec<&str>) =
            changed.iter().partition(|k| NEEDS_RESTART.contains(k));
        keep_restart_only(&mut args, &self.running.args);
        let plan = match setup::check_values(&args, &Countries::shipped()) {
            Ok(plan) => plan,
            Err(e) => return self.rejected(&format!("{e:#}")),
        };
        let high_risk = match &args.detect.high_risk_destinations {
            Some(path) => match learning::read_high_risk(path) {
                Ok(set) => set,
                Err(e) => return self.rejected(&format!("{e:#}")),
            },
            None => Default::default(),
        };
        // The kernel first, each write complete in itself: the CONFIG entry
        // is one value; new SIP ports, allowlist entries and blocks are
        // written before stale ones go, so nothing enforced lapses between.
        let written = {
            let mut m = lock(&self.maps);
            m.set_config(setup::kernel_config(&args, self.identity_key))
                .and_then(|()| {
                    m.set_sip_ports(&args.sip_ports.iter().flat_map(|p| p.keys()).collect::<Vec<_>>())
                })
                .and_then(|()| m.set_number_plan(plan))
                .and_then(|()| m.allowlist.replace(&args.allows))
                .map_err(anyhow::Error::from)
                .and_then(|()| {
                    actuator::apply_cli_blocks(&mut m, &args.blocks, args.block_duration, &args.allows)
                })
        };
        // After the command-line blocks (a --block no longer given may
        // uncover a prefix a feed lists).
        self.feeds.reconfigure(&args.feeds, &mut lock(&self.maps), &args.allows, self.actuator.auditor());
        if let Err(e) = written {
            // Partly applied: say so; the next reload (or restart) writes it whole.
            warn!("reload: writing the new configuration into the kernel failed: {e:#}");
        }
        self.engine.set_config(setup::policy_config(&args), args.allows.clone());
        self.learned.detector.set_config(learning::config(&args.detect, high_risk));
        self.learned.apply_thresholds(&mut lock(&self.maps));
        self.actuator.set_dry_run(args.policy.dry_run);
        let window_changed = args.detect.window != self.window;
        self.window = args.detect.window;

        let changes: Vec<(&str, Vec<String>, Vec<String>)> = apply
            .iter()
            .map(|k| {
                let shown = |v: Option<&Vec<String>>| -> Vec<String> {
                    let v = v.cloned().unwrap_or_default();
                    // A feed's URL without its credentials.
                    if *k == "feed" { v.iter().map(|s| crate::feeds::redacted(s)).collect() } else { v }
                };
                (*k, shown(old.get(*k)), shown(values.get(*k)))
            })
            .collect();
        for k in &restart {
            warn!("reload: {k} changed, which needs a restart: left as it was");
        }
        let mut summary = if apply.is_empty() {
            "nothing to change".to_owned()
        } else {
            format!("applied {}", apply.join(", "))
        };
        if !restart.is_empty() {
            summary.push_str(&format!("; left for a restart: {}", restart.join(", ")));
        }
        info!("reload: {summary}");
        self.actuator.auditor().record_reload(&audit::Reload {
            config: args.config.as_deref(),
            changed: &changes,
            needs_restart: &restart,
            rejected: None,
        });
        // What is running now; the restart-only keys as they were.
        let mut values = values;
        for k in NEEDS_RESTART {
            if let Some(v) = old.get(*k) {
                values.insert((*k).to_owned(), v.clone());
            }
        }
        self.running.args = args;
        self.running.values = values;
        Reloaded { window_changed, outcome: Ok(summary) }
    }

    fn rejected(&self, why: &str) -> Reloaded {
        warn!("reload rejected, the running configuration stays: {why}");
        self.actuator.auditor().record_reload(&audit::Reload {
            config: self.running.args.config.as_deref(),
            changed: &[],
            needs_restart: &[],
            rejected: Some(why),
        });
        Reloaded {
            window_changed: false,
            outcome: Err(format!("rejected, the running configuration stays: {why}")),
        }
    }
}

/// Copies into `args` what only a restart may change.
fn keep_restart_only(args: &mut RunArgs, running: &RunArgs) {
    args.ifaces.clone_from(&running.ifaces);
    args.egress_ifaces.clone_from(&running.egress_ifaces);
    args.xdp_mode = running.xdp_mode;
    args.pin.pin_path.clone_from(&running.pin.pin_path);
    args.state.state_dir.clone_from(&running.state.state_dir);
    args.detect.max_sources = running.detect.max_sources;
    args.blocklist_capacity = running.blocklist_capacity;
    args.metrics_addr = running.metrics_addr;
    args.control_socket.clone_from(&running.control_socket);
    args.policy.audit_log.clone_from(&running.policy.audit_log);
    args.policy.on_decision.clone_from(&running.policy.on_decision);
    args.keep_attached_on_exit = running.keep_attached_on_exit;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_restart_only_key_is_a_run_flag() {
        let (_, values) = config::run_args_and_values(
            ["tollgate", "run", "--config", "/dev/null", "--iface", "lo"].map(OsString::from).to_vec(),
        )
        .unwrap();
        for k in NEEDS_RESTART {
            assert!(values.contains_key(*k), "{k} is not a flag of tollgate run");
        }
        assert_eq!(values["iface"], ["lo"]);
        assert_eq!(values["window"], ["60s"]);
    }
}
