//! The TC egress counter (`--egress-iface`) in both of its attach modes:
//! TCX links (Linux 6.6+) and, before 6.6, a netlink filter under a clsact
//! qdisc. `TOLLGATE_EGRESS_ATTACH` forces a mode, so a new kernel runs the
//! old kernels' path too. Each test counts the SIP responses the edge
//! host sends, across an agent exit and a restart (counted once, never
//! twice), then checks `tollgate detach` leaves no filter, and no clsact
//! qdisc unless one was there before. Needs only `ip` and tollgate.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use aya::{
    programs::{SchedClassifier, TcAttachType, loaded_programs, tc},
    util::KernelVersion,
};
use tollgate::loader::{EGRESS_ATTACH_ENV, EgressPin};
use tollgate_common::{corpus::CORPUS, sip_stat};
use tollgate_tests::{privileged, testrun::Loaded, topology::*, traffic::UdpSink, wait_for};

const BURST: u64 = 5;

fn tcx_kernel() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// 401s to the customer's REGISTERs, counted against the customer.
fn challenges(agent: &Agent) -> u64 {
    tollgate::maps::Maps::open_pinned(&agent.pin_dir)
        .expect("pinned maps")
        .source(CUSTOMER_V4)
        .unwrap_or_default()
        .register_challenged
}

/// The registrar on the edge host sends `BURST` 401s to the customer, and
/// they are counted exactly once each.
fn respond_and_count(topo: &Topology, agent: &Agent, sink: &UdpSink) {
    let before = challenges(agent);
    let bytes = CORPUS.iter().find(|c| c.name == "401-register.sip").expect("fixture").bytes;
    topo.edge.run(move || {
        let sock = UdpSocket::bind(SocketAddr::new(EDGE_V4, 5060)).expect("bind the registrar's port");
        for _ in 0..BURST {
            sock.send_to(bytes, SocketAddr::new(CUSTOMER_V4, 5060)).expect("send");
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let want = before + BURST;
    let reached = wait_for(Duration::from_secs(5), || (challenges(agent) >= want).then_some(()));
    assert!(reached.is_some(), "{BURST} responses counted (had {before}, now {})", challenges(agent));
    assert_eq!(sink.drain() as u64, BURST, "every response delivered");
    assert_eq!(challenges(agent), want, "each response counted once");
}

/// Runs `f` in the edge namespace with the edge interface's name.
fn in_edge<T: Send + 'static>(topo: &Topology, f: impl FnOnce(&str) -> T + Send + 'static) -> T {
    let iface = topo.edge_if.clone();
    topo.edge.run(move || f(&iface))
}

fn clsact_present(topo: &Topology) -> bool {
    in_edge(topo, |iface| {
        tollgate::clsact::present(tollgate::loader::if_index(iface).expect("ifindex")).expect("RTM_GETQDISC")
    })
}

/// Whether a filter named tollgate_egress is on the edge interface's egress
/// hook (removing it if so: only called where there must be none).
fn netlink_filter_present(topo: &Topology) -> bool {
    in_edge(topo, |iface| match tc::qdisc_detach_program(iface, TcAttachType::Egress, "tollgate_egress") {
        Ok(()) => true,
        Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("listing TC filters: {e}"),
    })
}

fn tcx_programs(topo: &Topology) -> Vec<u32> {
    in_edge(topo, |iface| {
        let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Egress).expect("query tcx");
        progs.iter().map(|p| p.id()).collect()
    })
}

/// The id of the egress program attached to the edge interface, from the
/// agent's records.
fn attached_program(topo: &Topology, pin_dir: &Path) -> u32 {
    let pins = tollgate::loader::pinned_egress(pin_dir);
    assert_eq!(pins.len(), 1, "one egress record: {pins:?}");
    match pins[0].1 {
        EgressPin::Tcx => {
            let ids = tcx_programs(topo);
            assert_eq!(ids.len(), 1, "one TCX program: {ids:?}");
            ids[0]
        }
        EgressPin::Netlink { own_qdisc } => {
            let prefix = if own_qdisc { "tcq-egress-" } else { "tc-egress-" };
            let marker = pin_dir.join(format!("{prefix}{}", topo.edge_if));
            let prog = SchedClassifier::from_pin(&marker).expect("the marker is a pinned program");
            prog.info().expect("program info").id()
        }
    }
}

fn program_loaded(id: u32) -> bool {
    loaded_programs().filter_map(Result::ok).any(|p| p.id() == id)
}

/// What the agent should do in `mode` (None: the kernel's choice).
fn netlink(mode: Option<&str>) -> bool {
    match mode {
        Some(m) => m == "netlink",
        None => !tcx_kernel(),
    }
}

fn exercise(mode: Option<&str>, clsact_before: bool) {
    let topo = Topology::new();
    let sink = UdpSink::bind(&topo.peer, SocketAddr::new(CUSTOMER_V4, 5060));
    if clsact_before {
        in_edge(&topo, |iface| tc::qdisc_add_clsact(iface).expect("someone else's clsact"));
    }
    let env: Vec<(&str, &str)> = mode.map(|m| (EGRESS_ATTACH_ENV, m)).into_iter().collect();
    let iface = topo.edge_if.clone();
    let args = ["--egress-iface", &iface, "--dry-run", "--keep-attached-on-exit"];
    let mut agent = Agent::start_with_env(&topo, &env, &args);
    let netlink = netlink(mode);
    let how = match (netlink, clsact_before) {
        (false, _) => "tc egress (tcx)",
        (true, false) => "tc egress (netlink, clsact created)",
        (true, true) => "tc egress (netlink, existing clsact)",
    };
    assert!(agent.log_text().contains(&format!("leaving {iface}: {how}")), "{}", agent.log_text());
    assert_eq!(clsact_present(&topo), netlink || clsact_before, "a clsact qdisc only for netlink");
    respond_and_count(&topo, &agent, &sink);

    // The agent exits keeping everything attached: counting goes on.
    assert_eq!(agent.stop(libc::SIGINT), Some(0));
    respond_and_count(&topo, &agent, &sink);

    // A restarted agent takes over: still counted once, not twice, and
    // the previous agent's program is no longer attached anywhere.
    let old = attached_program(&topo, &agent.pin_dir);
    agent.restart();
    assert_ne!(attached_program(&topo, &agent.pin_dir), old, "the new agent's program is attached");
    let freed = wait_for(Duration::from_secs(5), || (!program_loaded(old)).then_some(()));
    assert!(freed.is_some(), "the previous agent's program {old} is still loaded (a filter left behind?)");
    let log = agent.log_text();
    if netlink {
        assert!(log.contains("replacing the egress filter a previous agent left"), "{log}");
        let again = if clsact_before { "existing clsact" } else { "clsact created by a previous agent" };
        assert!(log.contains(&format!("leaving {iface}: tc egress (netlink, {again})")), "{log}");
    } else {
        assert!(log.contains("took over the egress counter"), "{log}");
        assert_eq!(tcx_programs(&topo).len(), 1, "one TCX program after the restart");
    }
    respond_and_count(&topo, &agent, &sink);
    let status = agent.cli("status");
    assert!(status.contains(&format!("egress:       {iface} (")), "{status}");

    assert_eq!(agent.stop(libc::SIGINT), Some(0));
    let prog = attached_program(&topo, &agent.pin_dir);
    agent.cli("detach");
    assert!(!agent.pin_dir.exists(), "pins removed");
    assert_eq!(clsact_present(&topo), clsact_before, "only a clsact tollgate created is removed");
    if netlink {
        assert!(!clsact_before || !netlink_filter_present(&topo), "no filter left");
    } else {
        assert!(tcx_programs(&topo).is_empty(), "no TCX program left");
    }
    let freed = wait_for(Duration::from_secs(5), || (!program_loaded(prog)).then_some(()));
    assert!(freed.is_some(), "program {prog} is still loaded: something still holds it");
}

#[test]
fn egress_is_counted_once_and_detached_in_the_kernels_own_mode() {
    if !privileged("egress_is_counted_once_and_detached_in_the_kernels_own_mode") {
        return;
    }
    exercise(None, false);
}

#[test]
fn egress_with_a_netlink_filter_creates_and_removes_its_clsact() {
    if !privileged("egress_with_a_netlink_filter_creates_and_removes_its_clsact") {
        return;
    }
    exercise(Some("netlink"), false);
}

#[test]
fn egress_with_a_netlink_filter_keeps_someone_elses_clsact() {
    if !privileged("egress_with_a_netlink_filter_keeps_someone_elses_clsact") {
        return;
    }
    exercise(Some("netlink"), true);
}

#[test]
fn egress_with_a_tcx_link() {
    if !privileged("egress_with_a_tcx_link") {
        return;
    }
    if !tcx_kernel() {
        eprintln!("egress_with_a_tcx_link: skipped, TCX needs Linux 6.6");
        return;
    }
    exercise(Some("tcx"), false);
}

/// A kernel upgrade (or the override changing) between two agents: the
/// netlink filter the first left is removed, not counted alongside TCX.
#[test]
fn switching_from_netlink_to_tcx_counts_once() {
    if !privileged("switching_from_netlink_to_tcx_counts_once") {
        return;
    }
    if !tcx_kernel() {
        eprintln!("switching_from_netlink_to_tcx_counts_once: skipped, TCX needs Linux 6.6");
        return;
    }
    let topo = Topology::new();
    let sink = UdpSink::bind(&topo.peer, SocketAddr::new(CUSTOMER_V4, 5060));
    let iface = topo.edge_if.clone();
    let args = ["--egress-iface", &iface, "--dry-run", "--keep-attached-on-exit"];
    let mut first = Agent::start_with_env(&topo, &[(EGRESS_ATTACH_ENV, "netlink")], &args);
    respond_and_count(&topo, &first, &sink);
    assert_eq!(first.stop(libc::SIGINT), Some(0));
    let mut second = Agent::start_with(&topo, &first.pin_dir, &[(EGRESS_ATTACH_ENV, "tcx")], &args);
    assert!(second.log_text().contains("removed the egress counter a previous agent attached"));
    assert!(!clsact_present(&topo), "the clsact the first agent created is gone");
    respond_and_count(&topo, &second, &sink);
    assert_eq!(second.stop(libc::SIGINT), Some(0));
    second.cli("detach");
    assert!(tcx_programs(&topo).is_empty());
}

/// The counter has no opinion on a packet: programs the host runs after it
/// on egress still see every packet and decide. Returning TC_ACT_OK would
/// end the chain there (for TCX programs after it and classic tc filters
/// alike). Shown with a second copy of tollgate's own counter attached as
/// the last TCX program: it must count the responses too.
#[test]
fn programs_after_the_counter_still_see_every_packet() {
    if !privileged("programs_after_the_counter_still_see_every_packet") {
        return;
    }
    if !tcx_kernel() {
        eprintln!("programs_after_the_counter_still_see_every_packet: skipped, TCX needs Linux 6.6");
        return;
    }
    let topo = Topology::new();
    let sink = UdpSink::bind(&topo.peer, SocketAddr::new(CUSTOMER_V4, 5060));
    let iface = topo.edge_if.clone();
    let agent =
        Agent::start_with_env(&topo, &[(EGRESS_ATTACH_ENV, "tcx")], &["--egress-iface", &iface, "--dry-run"]);
    let after = in_edge(&topo, |iface| {
        let mut l = Loaded::new();
        l.attach_egress_last(iface);
        l
    });
    respond_and_count(&topo, &agent, &sink);
    let seen = after.maps.sip_totals().expect("SIP_STATS")[sip_stat::RESPONSE_REGISTER_CHALLENGE as usize];
    assert_eq!(seen, BURST, "the program after tollgate's saw every response");
}
