//! `tollgate run`.

use std::{
    fs,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use aya::Ebpf;
use ipnet::IpNet;
use log::{info, warn};
use tokio::signal::unix::{SignalKind, signal};
use tollgate_common::{
    Baseline, BlockEntry, CONFIG_BLOCK_ALL_PORTS, Config, CountryRestriction, EVENT_COUNTRY_INVITES,
    EVENT_INTL_INVITES, NO_EXPIRY,
    number::{MAX_EMERGENCY_NUMBERS, MAX_INTL_PREFIXES, NumberPlan},
    reason,
};

use crate::{
    audit::Auditor,
    baseline::{BaselineConfig, Baselines, Change},
    cli::{BlockDuration, BlockSpec, DetectArgs, PlanArgs, RunArgs},
    clock::{expiry_after, monotonic_now_ns},
    control,
    countries::Countries,
    error::Error,
    events,
    loader::{self, Attachment},
    maps::{Maps, key_addr},
    metrics,
    policy::{ADOPTED, Active, COUNTRY_SURGE, Decision, Engine, Evidence, Kind, PolicyConfig, Target},
};

/// How often expired blocks are removed from the map. The kernel already
/// ignores them once expired; this only keeps the map and the audit tidy.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    loader::require_root("run")?;
    loader::require_kernel()?;
    // Checked before anything is attached.
    let egress_mode = if args.egress_ifaces.is_empty() { None } else { Some(loader::egress_mode()?) };
    if args.policy.country_restrict_max > args.policy.max_restriction {
        anyhow::bail!(
            "--country-restrict-max ({}) must not exceed --max-restriction ({})",
            humantime::format_duration(args.policy.country_restrict_max),
            humantime::format_duration(args.policy.max_restriction)
        );
    }
    for list in [&args.ifaces, &args.egress_ifaces] {
        for (i, iface) in list.iter().enumerate() {
            if list[..i].contains(iface) {
                return Err(Error::DuplicateInterface { name: iface.clone() }.into());
            }
            loader::if_index(iface)?;
        }
    }
    let countries = Countries::shipped();
    let plan = number_plan(&args.plan, &countries)?;
    let auditor =
        Auditor::open(args.policy.audit_log.as_deref(), args.policy.dry_run, args.policy.on_decision.clone())
            .with_context(|| {
                format!(
                    "cannot open --audit-log {}",
                    args.policy.audit_log.as_deref().unwrap_or(Path::new("")).display()
                )
            })?;
    let pin_dir = args.pin.pin_path.as_path();
    loader::ensure_bpffs(pin_dir)?;
    // Bind before touching the kernel, so a busy port fails cleanly.
    let listener = metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;

    let control_listener = control::bind(&args.control_socket)?;
    let _socket_file = control::SocketFile(args.control_socket.clone());

    // Before touching what is pinned or attached: prove on this kernel that
    // the program, as its verifier accepted it, reads SIP.
    let tested = std::time::Instant::now();
    crate::selftest::sip_self_test()?;
    info!("SIP self-test passed on this kernel in {} ms", tested.elapsed().as_millis());
    let fresh = !pin_dir.exists();
    fs::create_dir_all(pin_dir).map_err(Error::io(format!("creating {}", pin_dir.display())))?;
    let started = start(&args, pin_dir, &plan, &countries, egress_mode);
    let (mut ebpf, maps, attached) = match started {
        Ok(s) => s,
        Err(e) => {
            // Leave no half-configured program behind on a fresh start; an
            // adopted state keeps enforcing as before.
            if fresh {
                let _ = loader::remove_pinned_state(pin_dir);
            }
            return Err(e);
        }
    };
    let mut engine = Engine::new(policy_config(&args), args.allows.clone());
    adopt_restrictions(&maps, &mut engine);
    let mut learned = Learned::new(&args.detect);
    learned.adopt(&maps);
    let maps = Arc::new(Mutex::new(maps));
    // A second, read-only handle on the same pinned maps for the whole-map
    // reads (metrics scrapes, the learning pass: ~60 ms for 65,536 sources),
    // so they never hold up a decision.
    let reader = Arc::new(Mutex::new(Maps::open_pinned(pin_dir)?));
    let event_counts = events::EventCounts::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    events::spawn(&mut ebpf, event_counts.clone(), tx)?;
    let decisions = metrics::DecisionCounts::default();
    let registry = Arc::new(prometheus::Registry::new());
    registry
        .register(Box::new(metrics::KernelCollector::new(
            Arc::clone(&reader),
            attached.clone(),
            countries,
            event_counts,
            decisions.clone(),
            args.detect.max_sources,
        )))
        .expect("collector registers once");
    let server = tokio::spawn(metrics::serve(listener, Arc::clone(&registry)));
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel::<control::Pending>(16);
    let control_server = tokio::spawn(control::serve(control_listener, ctl_tx));
    info!(
        "enforcing on {}; metrics on http://{}/metrics; state pinned in {}",
        attached.iter().map(|(i, m)| format!("{i} ({m})")).collect::<Vec<_>>().join(", "),
        args.metrics_addr,
        pin_dir.display()
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
    // The first learning window is a whole one: adopted levels must not
    // learn from the moment between start-up and the first tick.
    let mut learn =
        tokio::time::interval_at(tokio::time::Instant::now() + args.detect.window, args.detect.window);
    let (snap_tx, mut snap_rx) = tokio::sync::mpsc::channel::<Snapshot>(1);
    let signame = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            Some(event) = rx.recv() => {
                let now = monotonic_now_ns();
                let latency_us = now.saturating_sub(event.at_ns) / 1000;
                let mut m = maps.lock().unwrap_or_else(|p| p.into_inner());
                for d in learned.decide(&mut engine, now, &event, args.detect.window) {
                    apply(&mut m, &d, &auditor, Some(latency_us), &decisions);
                }
            }
            _ = learn.tick() => {
                let (reader, tx) = (Arc::clone(&reader), snap_tx.clone());
                tokio::task::spawn_blocking(move || {
                    let snapshot = Snapshot::read(&reader.lock().unwrap_or_else(|p| p.into_inner()));
                    let _ = tx.blocking_send(snapshot);
                });
            }
            Some(snapshot) = snap_rx.recv() => {
                let mut m = maps.lock().unwrap_or_else(|p| p.into_inner());
                for d in learned.window_passed(snapshot, &mut m, &mut engine) {
                    apply(&mut m, &d, &auditor, None, &decisions);
                }
            }
            Some((request, reply)) = ctl_rx.recv() => {
                let mut m = maps.lock().unwrap_or_else(|p| p.into_inner());
                let _ = reply.send(handle_control(request, &mut engine, &mut m, &auditor, &decisions));
            }
            _ = sweep.tick() => {
                let mut m = maps.lock().unwrap_or_else(|p| p.into_inner());
                for d in engine.expire(monotonic_now_ns()) {
                    apply(&mut m, &d, &auditor, None, &decisions);
                }
                remove_expired(&mut m);
            }
        }
    };
    server.abort();
    control_server.abort();
    if args.keep_attached_on_exit {
        info!(
            "{signame}: leaving the program attached and its state pinned in {} (--keep-attached-on-exit); `tollgate detach` removes it",
            pin_dir.display()
        );
    } else {
        let detached = loader::remove_pinned_state(pin_dir)?;
        info!("{signame}: detached from {} and removed {}", detached.join(", "), pin_dir.display());
    }
    // Dropping the object closes our link and map descriptors; with the pins
    // gone that detaches the program.
    drop(ebpf);
    Ok(())
}

type Started = (Ebpf, Maps, Vec<(String, String)>);

fn start(
    args: &RunArgs,
    pin_dir: &Path,
    plan: &NumberPlan,
    countries: &Countries,
    egress_mode: Option<loader::EgressMode>,
) -> anyhow::Result<Started> {
    let mut ebpf = loader::load_with(Some(pin_dir), args.detect.max_sources)?;
    forward_kernel_logs(&mut ebpf);
    // Configure the maps and the SIP stages before attaching anything new,
    // so the program never runs with an empty configuration.
    loader::load_sip_stages(&mut ebpf)?;
    let mut maps = Maps::take(&mut ebpf)?;
    configure(&mut maps, args)?;
    maps.set_number_plan(*plan)?;
    maps.set_country_codes(&countries.codes())?;

    let prog = loader::enforcement_program(&mut ebpf)?;
    let mut attached = Vec::new();
    for iface in &args.ifaces {
        let mode = match loader::attach(prog, iface, args.xdp_mode, pin_dir)? {
            Attachment::Attached { mode } => {
                info!("attached to {iface} in {mode} mode");
                mode
            }
            Attachment::Adopted => {
                info!("{iface}: took over the link left by a previous agent; program replaced in place");
                "adopted"
            }
        };
        attached.push((iface.clone(), mode.to_owned()));
    }
    for iface in &args.egress_ifaces {
        let mode = egress_mode.expect("decided in run() when --egress-iface is given");
        match loader::attach_egress(&mut ebpf, iface, pin_dir, mode)? {
            Attachment::Attached { mode } => {
                info!("counting SIP responses leaving {iface}: tc egress ({mode})")
            }
            Attachment::Adopted => {
                info!("{iface}: took over the egress counter left by a previous agent: tc egress (tcx)")
            }
        }
        attached.push((iface.clone(), "tc-egress".to_owned()));
    }
    for stale in loader::pinned_links(pin_dir) {
        if !args.ifaces.contains(&stale) {
            loader::unpin_link(pin_dir, &stale)?;
            info!("detached from {stale}: no longer given with --iface");
        }
    }
    for (stale, pin) in loader::pinned_egress(pin_dir) {
        if !args.egress_ifaces.contains(&stale) {
            loader::detach_egress(pin_dir, &stale, pin)?;
            info!("detached the egress counter from {stale}: no longer given with --egress-iface");
        }
    }
    Ok((ebpf, maps, attached))
}

fn policy_config(args: &RunArgs) -> PolicyConfig {
    PolicyConfig {
        auth_suspend: args.policy.auth_suspend,
        intl_suspend: args.policy.intl_suspend,
        max_restriction: args.policy.max_restriction,
        prefix_cap: args.policy.prefix_cap,
        dry_run: args.policy.dry_run,
        window: args.detect.window,
        country_restrict: args.policy.allow_country_restrict,
        country_restrict_for: args.policy.country_restrict_for,
        country_restrict_max: args.policy.country_restrict_max,
    }
}

/// The cumulative international INVITE counts of every tracked source and
/// country at the end of a learning window.
struct Snapshot {
    at_ns: u64,
    sources: Vec<(IpAddr, u64)>,
    /// None when the map could not be read (then countries learn nothing).
    countries: Option<Vec<(u16, u64)>>,
}

impl Snapshot {
    fn read(maps: &Maps) -> Self {
        let at_ns = monotonic_now_ns();
        let sources = maps.sources().into_iter().map(|(a, s)| (a, s.intl_invites)).collect();
        let countries = maps.country_invites().map_err(|e| warn!("{e}")).ok();
        Self { at_ns, sources, countries }
    }
}

/// The learned normal levels of sources and countries, kept in step with
/// the kernel's thresholds once per window.
struct Learned {
    sources: Baselines<IpAddr>,
    countries: Baselines<u16>,
    /// When the current learning window began (CLOCK_MONOTONIC ns).
    window_start_ns: u64,
}

impl Learned {
    fn new(d: &DetectArgs) -> Self {
        let cfg = |ceiling| BaselineConfig {
            ceiling,
            ratio: d.surge_ratio,
            weight: d.baseline_weight,
            min_windows: d.baseline_min_windows,
        };
        Self {
            sources: Baselines::new(cfg(d.intl_invite_threshold)),
            countries: Baselines::new(cfg(d.country_invite_threshold)),
            window_start_ns: monotonic_now_ns(),
        }
    }

    /// Takes over what the previous agent learned (pinned maps).
    fn adopt(&mut self, maps: &Maps) {
        let sources = maps.intl_baselines();
        for (addr, b) in &sources {
            let total = maps.source(*addr).map_or(0, |s| s.intl_invites);
            self.sources.adopt(*addr, *b, total);
        }
        let countries = maps.country_baselines().unwrap_or_default();
        let totals = maps.country_invites().unwrap_or_default();
        for (cc, b) in &countries {
            let total = totals.iter().find(|(c, _)| c == cc).map_or(0, |(_, n)| *n);
            self.countries.adopt(*cc, *b, total);
        }
        if !sources.is_empty() || !countries.is_empty() {
            info!(
                "adopted the learned peacetime levels of {} sources and {} countries",
                sources.len(),
                countries.len()
            );
        }
    }

    /// The engine's decisions on a kernel event, with its evidence.
    fn decide(
        &self,
        engine: &mut Engine,
        now: u64,
        e: &tollgate_common::ThresholdEvent,
        window: Duration,
    ) -> Vec<Decision> {
        let addr = key_addr(&e.addr);
        // The level is evidence only when the threshold came from it.
        let peacetime = |p: Option<f64>, ceiling: u32| {
            p.filter(|_| e.threshold > ceiling).map(|p| (p * 1000.0).round() as u64)
        };
        let mut evidence = Evidence { count: e.count, threshold: e.threshold, window, ..Evidence::default() };
        match e.kind {
            EVENT_COUNTRY_INVITES => {
                evidence.peacetime_milli =
                    peacetime(self.countries.peacetime(e.cc), self.countries.ceiling());
                evidence.sources = Some(u32::from(e.sources));
                engine.on_country_surge(now, e.cc, evidence)
            }
            EVENT_INTL_INVITES => {
                evidence.peacetime_milli = peacetime(self.sources.peacetime(addr), self.sources.ceiling());
                engine.on_event(now, addr, e.kind, evidence)
            }
            kind => engine.on_event(now, addr, kind, evidence),
        }
    }

    /// A window passed: learn from it, write the thresholds to the kernel,
    /// and lift the automatic restrictions of countries that calmed down.
    fn window_passed(&mut self, snapshot: Snapshot, m: &mut Maps, engine: &mut Engine) -> Vec<Decision> {
        let restricted =
            |kind: Kind, target: Target| engine.active().iter().any(|r| r.kind == kind && r.target == target);
        let changes = self
            .sources
            .window_passed(&snapshot.sources, |a| restricted(Kind::IntlSuspend, Target::Source(a.into())));
        for change in changes {
            let (addr, b) = match change {
                Change::Set(a, b) => (a, Some(b)),
                Change::Remove(a) => (a, None),
            };
            if let Err(e) = m.set_intl_baseline(addr, b) {
                warn!("{e}");
            }
        }
        let Some(totals) = snapshot.countries else { return Vec::new() };
        let changes = self
            .countries
            .window_passed(&totals, |cc| restricted(Kind::CountryRestrict, Target::Country(cc)));
        for change in changes {
            let (cc, b) = match change {
                Change::Set(cc, b) => (cc, b),
                Change::Remove(cc) => (cc, Baseline::default()),
            };
            if let Err(e) = m.set_country_baseline(cc, b) {
                warn!("{e}");
            }
        }
        let window_start = std::mem::replace(&mut self.window_start_ns, snapshot.at_ns);
        let calm = |cc: u16| {
            self.countries.last_window(cc).is_some_and(|n| n < u64::from(self.countries.threshold(cc)))
        };
        totals
            .iter()
            .filter(|(cc, _)| calm(*cc))
            .flat_map(|(cc, _)| engine.country_calm(*cc, window_start))
            .collect()
    }
}

/// Restrictions still in force in the kernel (the agent restarted): the
/// engine takes them over so their expiry is audited, and repeat offences
/// escalate from them.
fn adopt_restrictions(maps: &Maps, engine: &mut Engine) {
    let now = monotonic_now_ns();
    // (kind, target, reason, imposed at, until)
    let mut found: Vec<(Kind, Target, &'static str, u64, u64)> = Vec::new();
    for (net, r) in maps.restrictions.entries() {
        found.push((Kind::AuthSuspend, Target::Source(net), ADOPTED, now, r.auth_until_ns));
        found.push((Kind::IntlSuspend, Target::Source(net), ADOPTED, now, r.intl_until_ns));
    }
    for (net, b) in maps.blocklist.entries() {
        if b.reason == reason::OPERATOR && b.expires_at_ns != NO_EXPIRY {
            found.push((Kind::Block, Target::Source(net), ADOPTED, now, b.expires_at_ns));
        }
    }
    for (cc, r) in maps.country_restrictions().unwrap_or_default() {
        let (why, since) =
            if r.reason == reason::COUNTRY_SURGE { (COUNTRY_SURGE, r.imposed_at_ns) } else { (ADOPTED, now) };
        found.push((Kind::CountryRestrict, Target::Country(cc), why, since, r.until_ns));
    }
    for (kind, target, why, since, until) in found.into_iter().filter(|f| f.4 > now) {
        engine.adopt(kind, target, why, since, until);
        info!(
            "{} on {target} still in force, {} left",
            kind.name(),
            humantime::format_duration(Duration::from_secs((until - now) / 1_000_000_000))
        );
    }
}

/// Writes a restriction into (or, with `until` 0, removes it from) the
/// kernel map that enforces its kind.
fn write_restriction(maps: &mut Maps, a: &Active, until: u64) -> crate::error::Result<()> {
    match (a.kind, a.target) {
        (Kind::AuthSuspend | Kind::IntlSuspend, Target::Source(net)) => {
            let existing = maps.restrictions.get(&net);
            let mut r = existing.unwrap_or_default();
            if a.kind == Kind::AuthSuspend {
                r.auth_until_ns = until;
            } else {
                r.intl_until_ns = until;
            }
            match (r.auth_until_ns == 0 && r.intl_until_ns == 0, existing.is_some()) {
                (true, true) => maps.restrictions.remove(&net),
                (true, false) => Ok(()),
                (false, _) => maps.restrictions.set(&net, r),
            }
        }
        (Kind::Block, Target::Source(net)) => {
            if until != 0 {
                maps.blocklist.insert(
                    &net,
                    BlockEntry { expires_at_ns: until, reason: reason::OPERATOR, prefix_len: 0 },
                )
            } else if maps.blocklist.entries().iter().any(|(n, _)| *n == net) {
                maps.blocklist.remove(&net)
            } else {
                Ok(())
            }
        }
        (Kind::CountryRestrict, Target::Country(cc)) => {
            let r = if until == 0 {
                CountryRestriction::default()
            } else {
                CountryRestriction {
                    until_ns: until,
                    imposed_at_ns: a.imposed_at_ns,
                    reason: if a.reason == COUNTRY_SURGE { reason::COUNTRY_SURGE } else { reason::OPERATOR },
                    _reserved: 0,
                }
            };
            maps.set_country_restriction(cc, r)
        }
        _ => Ok(()),
    }
}

/// Writes an enforced decision into the kernel and audits every decision.
fn apply(
    maps: &mut Maps,
    d: &Decision,
    auditor: &Auditor,
    latency_us: Option<u64>,
    counts: &metrics::DecisionCounts,
) {
    let written = match d {
        Decision::Impose(a) | Decision::Extend(a) if a.enforced => {
            write_restriction(maps, a, a.expires_at_ns)
        }
        Decision::Expire(a) | Decision::Lift(a, _) if a.enforced => write_restriction(maps, a, 0),
        _ => Ok(()),
    };
    if let Err(e) = written {
        warn!("applying a decision to the kernel failed: {e}");
    }
    counts.record(d);
    auditor.record(d, latency_us);
}

fn view(a: &Active, now: u64) -> control::RestrictionView {
    control::RestrictionView {
        id: a.id,
        kind: a.kind.name().to_owned(),
        target: a.target.to_string(),
        reason: a.reason.to_owned(),
        note: a.note.clone(),
        expires_in_secs: a.expires_at_ns.saturating_sub(now) / 1_000_000_000,
        enforced: a.enforced,
    }
}

/// Answers an operator's request in the main loop.
fn handle_control(
    request: control::Request,
    engine: &mut Engine,
    maps: &mut Maps,
    auditor: &Auditor,
    counts: &metrics::DecisionCounts,
) -> control::Response {
    let now = monotonic_now_ns();
    let decision = match request {
        control::Request::List => Ok(None),
        control::Request::Restrict { kind, target, seconds, note } => {
            parse_manual(&kind, &target).and_then(|(kind, target)| {
                engine.impose_manual(now, kind, target, Duration::from_secs(seconds), note).map(Some)
            })
        }
        control::Request::Lift { id } => engine.lift(id).map(Some),
    };
    match decision {
        Ok(d) => {
            let mut shown: Vec<control::RestrictionView> =
                engine.active().iter().map(|a| view(a, now)).collect();
            if let Some(d) = d {
                apply(maps, &d, auditor, None, counts);
                if let Decision::Lift(a, _) | Decision::Impose(a) = &d {
                    shown = vec![view(a, now)];
                }
            }
            control::Response { ok: true, error: None, restrictions: shown }
        }
        Err(e) => control::Response::error(e),
    }
}

fn parse_manual(kind: &str, target: &str) -> Result<(Kind, Target), String> {
    let kind = match kind {
        "auth" => Kind::AuthSuspend,
        "intl" => Kind::IntlSuspend,
        "block" => Kind::Block,
        "country" => Kind::CountryRestrict,
        other => return Err(format!("unknown kind {other:?}")),
    };
    let target = if kind == Kind::CountryRestrict {
        let code = target.trim_start_matches('+');
        Target::Country(code.parse().map_err(|_| format!("{target:?} is not an E.164 country code"))?)
    } else {
        Target::Source(crate::cli::parse_cidr(target)?)
    };
    Ok((kind, target))
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

/// The kernel's configuration for these flags.
pub fn kernel_config(args: &RunArgs) -> Config {
    Config {
        flags: if args.block_all_ports { CONFIG_BLOCK_ALL_PORTS } else { 0 },
        auth_failure_threshold: args.detect.auth_failure_threshold,
        window_ns: u64::try_from(args.detect.window.as_nanos()).unwrap_or(u64::MAX),
        intl_invite_threshold: args.detect.intl_invite_threshold,
        country_invite_threshold: args.detect.country_invite_threshold,
        country_min_sources: args.detect.country_min_sources,
        _reserved: 0,
    }
}

fn configure(maps: &mut Maps, args: &RunArgs) -> anyhow::Result<()> {
    maps.set_config(kernel_config(args))?;
    let ports: Vec<(u8, u16)> = args.sip_ports.iter().flat_map(|p| p.keys()).collect();
    maps.set_sip_ports(&ports)?;
    maps.allowlist.replace(&args.allows)?;
    apply_cli_blocks(maps, &args.blocks, args.block_duration, &args.allows)
}

/// Makes the CLI-given blocks exactly `specs`: new entries are written before
/// stale ones are removed, so a prefix blocked before and after a restart is
/// never momentarily unblocked. Blocks imposed by other means are kept.
fn apply_cli_blocks(
    maps: &mut Maps,
    specs: &[BlockSpec],
    default: Duration,
    allows: &[IpNet],
) -> anyhow::Result<()> {
    let now = monotonic_now_ns();
    for spec in specs {
        let (expires_at_ns, lasts) = match spec.duration {
            BlockDuration::Permanent => (NO_EXPIRY, "until removed".to_owned()),
            BlockDuration::Default => {
                (expiry_after(now, default), humantime::format_duration(default).to_string())
            }
            BlockDuration::For(d) => (expiry_after(now, d), humantime::format_duration(d).to_string()),
        };
        maps.blocklist.insert(&spec.net, BlockEntry { expires_at_ns, reason: reason::CLI, prefix_len: 0 })?;
        info!("block {} (reason cli), lasts {lasts}", spec.net);
        if spec.duration == BlockDuration::Permanent {
            warn!("block {} is permanent: it never lapses by itself", spec.net);
        }
        for allow in allows {
            if allow.contains(&spec.net) || spec.net.contains(allow) {
                warn!("block {} overlaps allow {allow}: the allowlist wins for {allow}", spec.net);
            }
        }
    }
    for (net, entry) in maps.blocklist.entries() {
        if entry.reason == reason::CLI && !specs.iter().any(|s| s.net == net) {
            maps.blocklist.remove(&net)?;
            info!("unblock {net}: no longer given with --block");
        }
    }
    Ok(())
}

/// Removes expired command-line blocks (operator blocks are lifted by the
/// engine, which audits them).
fn remove_expired(maps: &mut Maps) {
    let now = monotonic_now_ns();
    for (net, entry) in maps.blocklist.entries() {
        if !entry.is_active(now) && entry.reason != reason::OPERATOR {
            match maps.blocklist.remove(&net) {
                Ok(()) => info!("block {net} (reason {}) expired and was lifted", reason::name(entry.reason)),
                Err(e) => warn!("removing expired block {net}: {e}"),
            }
        }
    }
}

/// Forwards aya-log records from the kernel program to our logger.
fn forward_kernel_logs(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        // SAFETY: the logger owns its ring-buffer descriptor and moves into
        // the AsyncFd, so the descriptor outlives the registration.
        Ok(logger) => match unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        } {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable_mut().await else { break };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => warn!("kernel log forwarding unavailable: {e}"),
        },
        Err(e) => warn!("kernel log forwarding unavailable: {e}"),
    }
}
