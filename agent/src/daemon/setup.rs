//! `tollgate run`'s flags turned into every configuration the daemon needs,
//! with all their checks in one place.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use tollgate_common::{
    CONFIG_BLOCK_ALL_PORTS, Config, IdentityKey,
    number::{MAX_EMERGENCY_NUMBERS, MAX_INTL_PREFIXES, NumberPlan},
};

use crate::{
    audit::Auditor,
    cli::{PlanArgs, RunArgs},
    countries::Countries,
    error::Error,
    kernel::{KernelConfig, loader},
    policy::PolicyConfig,
    state,
};

/// What the flags of `tollgate run` configure, checked.
pub struct Setup {
    /// The TC attachment for `--egress-iface`, when one is given.
    pub egress_mode: Option<loader::EgressMode>,
    pub countries: Countries,
    /// What the kernel program is configured with.
    pub kernel: KernelConfig,
    pub policy: PolicyConfig,
    pub auditor: Auditor,
    /// The deployment's identity key (`--state-dir`), for the kernel's
    /// identity tags; made at the first start.
    pub identity_key: IdentityKey,
    /// `--high-risk-destinations`, read.
    pub high_risk: std::collections::HashSet<u16>,
    /// `--cluster-*`: None without `--cluster-endpoints`.
    pub cluster: Option<crate::cluster::Config>,
}

impl Setup {
    /// Checks the flags and the host before anything is bound or attached.
    pub fn check(args: &RunArgs) -> anyhow::Result<Self> {
        loader::require_root("run")?;
        loader::require_kernel()?;
        // Checked before anything is attached.
        let egress_mode = if args.egress_ifaces.is_empty() { None } else { Some(loader::egress_mode()?) };
        let countries = Countries::shipped();
        let plan = check_values(args, &countries)?;
        let cluster = args.cluster.config()?.map(|c| crate::cluster::Config {
            state_file: Some(args.state.state_dir.join(crate::cluster::STATE_FILE)),
            ..c
        });
        check_interfaces(args)?;
        let auditor = Auditor::open(
            args.policy.audit_log.as_deref(),
            args.policy.dry_run,
            args.policy.on_decision.clone(),
        )
        .with_context(|| {
            format!(
                "cannot open --audit-log {}",
                args.policy.audit_log.as_deref().unwrap_or(Path::new("")).display()
            )
        })?;
        let high_risk = match &args.detect.high_risk_destinations {
            Some(path) => super::learning::read_high_risk(path)?,
            None => Default::default(),
        };
        loader::ensure_bpffs(args.pin.pin_path.as_path())?;
        // Last: a first start with bad flags leaves no key behind.
        let identity_key = state::identity_key(&args.state.state_dir)?;
        Ok(Self {
            egress_mode,
            kernel: KernelConfig {
                max_sources: args.detect.max_sources,
                blocklist_capacity: args.blocklist_capacity,
                plan,
                country_codes: countries.codes(),
                sip_ports: args.sip_ports.iter().flat_map(|p| p.keys()).collect(),
                config: kernel_config(args, identity_key),
            },
            countries,
            policy: policy_config(args),
            auditor,
            identity_key,
            high_risk,
            cluster,
        })
    }
}

/// The checks of the flags' values against each other and the country
/// table, which need neither root nor the host (`tollgate config check`
/// makes them too); the dialling plan they give.
pub fn check_values(args: &RunArgs, countries: &Countries) -> anyhow::Result<NumberPlan> {
    if args.policy.country_restrict_max > args.policy.max_restriction {
        anyhow::bail!(
            "--country-restrict-max ({}) must not exceed --max-restriction ({})",
            humantime::format_duration(args.policy.country_restrict_max),
            humantime::format_duration(args.policy.max_restriction)
        );
    }
    crate::feeds::check_unique(&args.feeds).map_err(anyhow::Error::msg)?;
    number_plan(&args.plan, countries)
}

/// Every interface exists and is given once per list.
fn check_interfaces(args: &RunArgs) -> anyhow::Result<()> {
    for list in [&args.ifaces, &args.egress_ifaces] {
        for (i, iface) in list.iter().enumerate() {
            if list[..i].contains(iface) {
                return Err(Error::DuplicateInterface { name: iface.clone() }.into());
            }
            loader::if_index(iface)?;
        }
    }
    Ok(())
}

pub(super) fn policy_config(args: &RunArgs) -> PolicyConfig {
    PolicyConfig {
        auth_suspend: args.policy.auth_suspend,
        intl_suspend: args.policy.intl_suspend,
        max_restriction: args.policy.max_restriction,
        max_line_suspension: args.policy.max_line_suspension,
        prefix_cap: args.policy.prefix_cap,
        spray_identities: args.policy.spray_identities,
        dry_run: args.policy.dry_run,
        window: args.detect.window,
        country_restrict: args.policy.allow_country_restrict,
        country_restrict_for: args.policy.country_restrict_for,
        country_restrict_max: args.policy.country_restrict_max,
    }
}

/// The dialling plan from the flags, checked against the country table.
fn number_plan(args: &PlanArgs, countries: &Countries) -> anyhow::Result<NumberPlan> {
    if countries.label(args.home_cc).is_none() {
        anyhow::bail!("--home-cc {} is not an assigned E.164 country code", args.home_cc);
    }
    if args.intl_prefixes.len() > MAX_INTL_PREFIXES {
        anyhow::bail!("at most {MAX_INTL_PREFIXES} --intl-prefix values");
    }
    if args.emergency_numbers.len() > MAX_EMERGENCY_NUMBERS {
        anyhow::bail!("at most {MAX_EMERGENCY_NUMBERS} --emergency-number values");
    }
    let mut plan =
        NumberPlan { home_cc: args.home_cc, trunk_prefix: args.trunk_prefix, ..NumberPlan::default() };
    plan.intl_prefixes[..args.intl_prefixes.len()].copy_from_slice(&args.intl_prefixes);
    plan.emergency[..args.emergency_numbers.len()].copy_from_slice(&args.emergency_numbers);
    Ok(plan)
}

/// The kernel's configuration for these flags and the deployment's
/// identity key.
pub fn kernel_config(args: &RunArgs, identity_key: IdentityKey) -> Config {
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    Config {
        flags: if args.block_all_ports { CONFIG_BLOCK_ALL_PORTS } else { 0 },
        auth_failure_threshold: args.detect.auth_failure_threshold,
        window_ns: u64::try_from(args.detect.window.as_nanos()).unwrap_or(u64::MAX),
        intl_invite_threshold: args.detect.intl_invite_threshold,
        country_invite_threshold: args.detect.country_invite_threshold,
        country_min_sources: args.detect.country_min_sources,
        nonce_horizon_s: secs(args.detect.nonce_horizon),
        success_horizon_s: secs(args.detect.success_horizon),
        _reserved: 0,
        identity_key,
    }
}
