//! `tollgate run`: the wiring of the daemon and its main loop.

mod actuator;
mod attach;
mod cluster;
pub mod feeds;
mod learning;
mod operator;
mod persist;
mod reload;
mod reporting;
pub mod setup;

use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use log::info;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tollgate_common::ThresholdEvent;

use self::{
    actuator::Actuator,
    learning::{Learned, Snapshot},
    reporting::Reporting,
    setup::Setup,
};
use crate::{
    cli::RunArgs, clock::monotonic_now_ns, control, events, loader, maps::Maps, metrics, notify::Notifier,
    policy::Engine,
};

/// How often expired blocks are removed from the map. The kernel already
/// ignores them once expired; this only keeps the map and the audit tidy.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

pub async fn run(args: RunArgs, notifier: Notifier) -> anyhow::Result<()> {
    let setup = Setup::check(&args)?;
    // What a reload (SIGHUP) compares with: the command line as given.
    let running = reload::Running::at_start(std::env::args_os().collect())?;
    if let Some(path) = &args.config {
        info!("configuration file: {}", path.display());
    }
    // Opened before anything is bound or loaded, so a database it cannot
    // use fails cleanly.
    let store = persist::open(&args.state.state_dir)?;
    let pin_dir = args.pin.pin_path.as_path();
    // Bind before touching the kernel, so a busy port fails cleanly.
    let listener = metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;

    let control_listener = control::bind(&args.control_socket)?;
    let _socket_file = control::SocketFile(args.control_socket.clone());

    let (mut ebpf, mut maps, attached) = attach::start(&args, &setup)?;
    let mut engine = Engine::new(setup.policy, args.allows.clone());
    engine.set_wall_clock(learning::wall_ms);
    let event_counts = events::EventCounts::default();
    let mut learned = Learned::new(learning::config(&args.detect, setup.high_risk), event_counts.clone());
    persist::restore(&store, &mut maps, &mut engine, &mut learned, &setup.auditor)?;
    actuator::adopt_restrictions(&maps, &mut engine);
    let reporting = Reporting::start(&store, &maps)?;
    let registry = Arc::new(prometheus::Registry::new());
    // After the command-line blocks, which feeds never replace.
    let (feeds, feed_rx) = feeds::Feeds::start(
        &args.feeds,
        &args.state.state_dir,
        &mut maps,
        &args.allows,
        feeds::FeedMetrics::register(&registry),
        args.blocklist_capacity,
    );
    let maps = Arc::new(Mutex::new(maps));
    // A second, read-only handle on the same pinned maps for the reads of
    // metrics scrapes and learning passes, so they never hold up a
    // decision.
    let reader = Arc::new(Mutex::new(Maps::open_pinned(pin_dir)?));
    let (tx, rx) = mpsc::unbounded_channel();
    events::spawn(&mut ebpf, event_counts.clone(), tx)?;
    let (call_tx, call_rx) = mpsc::unbounded_channel();
    events::spawn_calls(&mut ebpf, event_counts.clone(), call_tx)?;
    let mut actuator = Actuator::new(setup.auditor, store, args.policy.dry_run);
    let shared = crate::cluster::Shared::default();
    // Without a cluster the sender stays here, so the main loop's receiver
    // just never yields.
    let (remote_rx, _no_cluster, sharing) = match setup.cluster {
        Some(config) => {
            let (c, rx) = crate::cluster::start(config, shared.clone());
            actuator.set_cluster(cluster::Link::new(&c));
            let sharing = cluster::Sharing::new(&c, &mut learned.detector);
            (rx, None, Some(sharing))
        }
        None => {
            let (tx, rx) = mpsc::unbounded_channel();
            (rx, Some(tx), None)
        }
    };
    registry
        .register(Box::new(crate::cluster::metrics::ClusterCollector::new(shared)))
        .expect("collector registers once");
    registry
        .register(Box::new(
            metrics::KernelCollector::new(
                Arc::clone(&reader),
                attached.clone(),
                setup.countries,
                event_counts,
                actuator.counts().clone(),
                crate::kernel::loader::MapSizes {
                    max_sources: args.detect.max_sources,
                    blocklist_capacity: args.blocklist_capacity,
                },
                metrics::SourcesCount::start(Maps::open_pinned(pin_dir)?)
                    .context("starting the sources count")?,
            )
            .with_writer(Arc::clone(&maps)),
        ))
        .expect("collector registers once");
    let (ctl_tx, ctl_rx) = mpsc::channel::<control::Pending>(16);
    // /countries.json is answered by the main loop, like `tollgate report`.
    let server = tokio::spawn(metrics::serve(listener, Arc::clone(&registry), ctl_tx.clone()));
    let control_server = tokio::spawn(control::serve(control_listener, ctl_tx));
    let enforcing = format!(
        "enforcing on {}",
        attached.iter().map(|(i, m)| format!("{i} ({m})")).collect::<Vec<_>>().join(", ")
    );
    info!(
        "{enforcing}; metrics on http://{}/metrics; state pinned in {}",
        args.metrics_addr,
        pin_dir.display()
    );
    // Attached, maps written, both sockets listening: what systemd's
    // Type=notify waits for before it starts what is ordered after us.
    notifier.ready(&enforcing);

    let daemon = Daemon {
        engine,
        learned,
        maps,
        reader,
        actuator,
        reporting,
        window: args.detect.window,
        identity_key: setup.identity_key,
        running,
        notifier,
        enforcing,
        feeds,
        sharing,
        adopted: false,
    };
    let (signame, notifier) = daemon.run(rx, call_rx, ctl_rx, feed_rx, remote_rx).await?;
    notifier.stopping(signame);
    server.abort();
    control_server.abort();
    shut_down(&args, pin_dir, signame)?;
    // Dropping the object closes our link and map descriptors; with the pins
    // gone that detaches the program.
    drop(ebpf);
    Ok(())
}

/// Leaves the program attached or removes it, as `--keep-attached-on-exit`
/// says.
fn shut_down(args: &RunArgs, pin_dir: &Path, signame: &str) -> anyhow::Result<()> {
    if args.keep_attached_on_exit {
        info!(
            "{signame}: leaving the program attached and its state pinned in {} (--keep-attached-on-exit); `tollgate detach` removes it",
            pin_dir.display()
        );
    } else {
        let detached = loader::remove_pinned_state(pin_dir)?;
        info!("{signame}: detached from {} and removed {}", detached.join(", "), pin_dir.display());
    }
    Ok(())
}

/// What the main loop owns: the engine, the learned levels and the maps the
/// decisions are written to.
struct Daemon {
    engine: Engine,
    learned: Learned,
    maps: Arc<Mutex<Maps>>,
    reader: Arc<Mutex<Maps>>,
    actuator: Actuator,
    /// Per-country counts for the reports.
    reporting: Reporting,
    /// The detection and learning window.
    window: Duration,
    /// Turns the identity an operator names into its tag.
    identity_key: tollgate_common::IdentityKey,
    /// The configuration in force, for reloads.
    running: reload::Running,
    /// Tells systemd of readiness, reloads and liveness.
    notifier: Notifier,
    /// The readiness status line, told again after each reload.
    enforcing: String,
    /// The blocklist feeds.
    feeds: feeds::Feeds,
    /// (clustering) The counts summed across the cluster.
    sharing: Option<cluster::Sharing>,
    /// Whether the per-source map's customers were read once (at the first
    /// window), to adopt what a previous agent's pinned map holds.
    adopted: bool,
}

/// Whether a decision removes a blocklist entry.
fn unblocks(d: &crate::policy::Decision) -> bool {
    use crate::policy::{Decision, Kind};
    matches!(d, Decision::Expire(a) | Decision::Lift(a, _) if a.kind == Kind::Block && a.enforced)
}

fn lock(maps: &Mutex<Maps>) -> MutexGuard<'_, Maps> {
    maps.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    /// Runs until SIGTERM or SIGINT; returns the signal's name (and the
    /// notifier, to say the agent is stopping).
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<ThresholdEvent>,
        mut call_rx: mpsc::UnboundedReceiver<ThresholdEvent>,
        mut ctl_rx: mpsc::Receiver<control::Pending>,
        mut feed_rx: mpsc::UnboundedReceiver<feeds::Fetched>,
        mut remote_rx: mpsc::UnboundedReceiver<crate::cluster::Remote>,
    ) -> anyhow::Result<(&'static str, Notifier)> {
        let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
        // The first learning window is a whole one: adopted levels must not
        // learn from the moment between start-up and the first tick.
        let mut learn = tokio::time::interval_at(tokio::time::Instant::now() + self.window, self.window);
        let (snap_tx, mut snap_rx) = mpsc::channel::<Snapshot>(1);
        // WATCHDOG=1 from this loop, so a loop that hangs is restarted.
        let watchdog_every = self.notifier.watchdog_interval();
        let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        // (clustering) This node's counts go out when they change.
        let mut share = tokio::time::interval(Duration::from_secs(1));
        let signame = loop {
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                _ = sighup.recv() => {
                    let _ = self.reload_now(&mut learn);
                }
                Some(event) = rx.recv() => self.event(&event),
                Some(event) = call_rx.recv() => self.call_event(&event),
                Some(fetched) = feed_rx.recv() => {
                    let mut m = lock(&self.maps);
                    let allows = &self.running.args.allows;
                    self.feeds.fetched(fetched, &mut m, allows, self.actuator.auditor());
                }
                _ = learn.tick() => self.read_snapshot(&snap_tx),
                Some(snapshot) = snap_rx.recv() => self.window_passed(snapshot),
                Some((request, reply)) = ctl_rx.recv() => {
                    if matches!(request, control::Request::Reload) {
                        let _ = reply.send(match self.reload_now(&mut learn) {
                            Ok(summary) => control::Response { ok: true, message: Some(summary), ..Default::default() },
                            Err(why) => control::Response::error(why),
                        });
                        continue;
                    }
                    let mut m = lock(&self.maps);
                    let lift = matches!(request, control::Request::Lift { .. });
                    let answer = operator::handle_control(
                        request,
                        &mut self.engine,
                        &mut self.learned,
                        &mut m,
                        &self.actuator,
                        &mut self.reporting,
                        &self.identity_key,
                    );
                    if lift {
                        // A lifted block may have covered a prefix a feed lists.
                        self.feeds.write_all(&mut m, &self.running.args.allows);
                    }
                    let _ = reply.send(answer);
                }
                _ = sweep.tick() => self.sweep(),
                _ = watchdog.tick(), if watchdog_every.is_some() => self.notifier.watchdog(),
                Some(msg) = remote_rx.recv() => self.remote(msg),
                _ = share.tick(), if self.sharing.is_some() => self.share(),
            }
        };
        // The surges and restrictions counted since the last window are
        // kept (the counters' growth is read by the next agent).
        self.reporting.window(self.actuator.store(), None);
        Ok((signame, self.notifier))
    }

    /// A reload (SIGHUP or `tollgate reload`); the learning timer follows
    /// a changed window.
    fn reload_now(&mut self, learn: &mut tokio::time::Interval) -> Result<String, String> {
        self.notifier.reloading();
        let reloaded = self.reload();
        // Applied or rejected, the agent enforces as before: ready again.
        self.notifier.ready(&self.enforcing);
        if reloaded.window_changed {
            *learn = tokio::time::interval_at(tokio::time::Instant::now() + self.window, self.window);
        }
        reloaded.outcome
    }

    fn event(&mut self, event: &ThresholdEvent) {
        let now = monotonic_now_ns();
        if events::EventKind::from_code(event.kind) == Some(events::EventKind::CountryInvites) {
            self.reporting.surge(event.cc);
        }
        let mut m = lock(&self.maps);
        for d in self.learned.decide(&mut self.engine, now, event, self.window) {
            self.reporting.decision(&d);
            self.actuator.apply(&mut m, &d, Some(event.at_ns));
        }
    }

    fn call_event(&mut self, event: &ThresholdEvent) {
        let now = monotonic_now_ns();
        let decisions = self.learned.call_event(&mut self.engine, &mut self.reporting, now, event);
        self.apply_all(decisions, Some(event.at_ns));
    }

    /// Applies decisions (taken on a kernel event at `at_ns`, if one).
    fn apply_all(&mut self, decisions: Vec<crate::policy::Decision>, at_ns: Option<u64>) {
        if decisions.is_empty() {
            return;
        }
        let mut m = lock(&self.maps);
        for d in decisions {
            self.reporting.decision(&d);
            self.actuator.apply(&mut m, &d, at_ns);
        }
    }

    /// Reads the window's counts off the main loop; the snapshot comes back
    /// through `tx`.
    /// The first one also adopts the customers' sources the pinned map
    /// already holds (a previous agent's); later ones read only fixed-size
    /// maps (see [`Snapshot`]).
    fn read_snapshot(&mut self, tx: &mpsc::Sender<Snapshot>) {
        let (reader, tx) = (Arc::clone(&self.reader), tx.clone());
        let adopt = !std::mem::replace(&mut self.adopted, true);
        tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot::read(&lock(&reader), adopt);
            let _ = tx.blocking_send(snapshot);
        });
    }

    fn window_passed(&mut self, mut snapshot: Snapshot) {
        let counters = snapshot.countries.take();
        // Country restrictions another node decided: it lifts them.
        let foreign: std::collections::HashSet<u16> = match self.actuator.cluster() {
            Some(link) => self
                .engine
                .active()
                .iter()
                .filter(|a| link.origin_of(a).is_some_and(|o| o != link.node()))
                .filter_map(|a| match a.target {
                    crate::policy::Target::Country(cc) => Some(cc),
                    _ => None,
                })
                .collect(),
            None => Default::default(),
        };
        let mut m = lock(&self.maps);
        for d in self.learned.window_passed(snapshot, &mut m, &mut self.engine, &foreign) {
            self.reporting.decision(&d);
            self.actuator.apply(&mut m, &d, None);
        }
        self.actuator.persist_learned(&mut self.learned.detector);
        self.reporting.window(self.actuator.store(), counters);
    }

    /// What the cluster's store says another node decided, or counts.
    fn remote(&mut self, msg: crate::cluster::Remote) {
        if let crate::cluster::Remote::Counts(others) = msg {
            // Judged at the next share tick: at most once a second, however
            // many nodes publish (summing is linear in all their counts).
            if let Some(sharing) = &mut self.sharing {
                sharing.set_others(others);
            }
            return;
        }
        let Some(link) = self.actuator.cluster() else { return };
        let mut m = lock(&self.maps);
        cluster::apply_remote(link, &mut self.engine, &mut m, &self.actuator, msg);
    }

    /// (clustering) Once a second: publishes this node's counts if they
    /// changed, and judges the sums again if they or the others' changed.
    fn share(&mut self) {
        let Some(sharing) = &mut self.sharing else { return };
        let published = sharing.publish(&mut self.learned.detector, self.window);
        if sharing.take_changed() | published {
            self.judge_sums();
        }
    }

    /// (clustering) Judges the cluster's sums this node is the one to.
    fn judge_sums(&mut self) {
        let Some(sharing) = &self.sharing else { return };
        let sums = sharing.sums();
        let now = monotonic_now_ns();
        let decisions = self.learned.elsewhere(&mut self.engine, &mut self.reporting, now, sums);
        self.apply_all(decisions, None);
    }

    fn sweep(&mut self) {
        let mut m = lock(&self.maps);
        let mut unblocked = 0;
        for d in self.engine.expire(monotonic_now_ns()) {
            unblocked += usize::from(unblocks(&d));
            self.actuator.apply(&mut m, &d, None);
        }
        // The kernel already ignores expired entries: removing them is
        // tidying, from a queue of deadlines (as many steps as entries
        // lapsed, however large the blocklist).
        unblocked += actuator::remove_expired(&mut m);
        self.feeds.lapse(self.actuator.auditor());
        if unblocked > 0 {
            // A block that went may have covered a prefix a feed lists.
            self.feeds.write_all(&mut m, &self.running.args.allows);
        }
    }
}
