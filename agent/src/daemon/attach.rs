//! Start-up against the kernel: the self-test, then loading, configuring
//! and attaching the program (or taking over the one a previous agent left).

use std::{fs, path::Path};

use aya::Ebpf;
use log::{info, warn};

use super::{actuator, setup::Setup};
use crate::{
    cli::RunArgs,
    error::Error,
    kernel::{
        Kernel,
        loader::{self, Attachment},
        maps::Maps,
    },
};

pub(super) type Started = (Ebpf, Maps, Vec<(String, String)>);

/// Self-tests the program on this kernel, then loads, configures and
/// attaches it with its state pinned in `--pin-path`.
pub(super) fn start(args: &RunArgs, setup: &Setup) -> anyhow::Result<Started> {
    let pin_dir = args.pin.pin_path.as_path();
    // Before touching what is pinned or attached: prove on this kernel that
    // the program, as its verifier accepted it, reads SIP.
    let tested = std::time::Instant::now();
    crate::selftest::sip_self_test()?;
    info!("SIP self-test passed on this kernel in {} ms", tested.elapsed().as_millis());
    let fresh = !pin_dir.exists();
    fs::create_dir_all(pin_dir).map_err(Error::io(format!("creating {}", pin_dir.display())))?;
    load_and_attach(args, setup, pin_dir).inspect_err(|_| {
        // Leave no half-configured program behind on a fresh start; an
        // adopted state keeps enforcing as before.
        if fresh {
            let _ = loader::remove_pinned_state(pin_dir);
        }
    })
}

fn load_and_attach(args: &RunArgs, setup: &Setup, pin_dir: &Path) -> anyhow::Result<Started> {
    // Configure the maps and the SIP stages before attaching anything new,
    // so the program never runs with an empty configuration.
    let Kernel { mut ebpf, mut maps } = Kernel::start(Some(pin_dir), &setup.kernel)?;
    forward_kernel_logs(&mut ebpf);
    configure(&mut maps, args)?;

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
        maps.count_interface(loader::if_index(iface)?)?;
    }
    for iface in &args.egress_ifaces {
        let mode = setup.egress_mode.expect("decided in run() when --egress-iface is given");
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

/// The allowlist and the command-line blocks, as the flags give them.
fn configure(maps: &mut Maps, args: &RunArgs) -> anyhow::Result<()> {
    maps.allowlist.replace(&args.allows)?;
    actuator::apply_cli_blocks(maps, &args.blocks, args.block_duration, &args.allows)
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
