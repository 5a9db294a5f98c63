//! A start-up proof that the kernel program, as this kernel's verifier
//! accepted it, really reads SIP.
//!
//! A verifier may accept a program and still change what it does: Linux 6.1
//! pruned the SIP scans' later steps as dead code, and tollgate loaded,
//! attached and counted every message as unparsed, detecting nothing with no
//! error anywhere. A kernel the matrix (`cargo xtask kernels`) never ran
//! could do the same. So before attaching, the agent loads a private,
//! unpinned copy of the object, runs a few known messages through it with
//! BPF_PROG_TEST_RUN, and refuses to start if they are not counted as they
//! must be. Nothing the live program counts is touched.

use std::net::{IpAddr, Ipv4Addr};

use aya::{TestRunOptions, programs::TestRun as _};
use tollgate_common::{
    Config, IPPROTO_UDP,
    frames::FrameBuilder,
    number::{NumberPlan, class},
    sip::method,
    sip_stat,
};

use super::{Kernel, KernelConfig, loader};
use crate::error::{Error, Result};

/// The messages and what each must move in SIP_STATS.
const PROBES: &[(&str, &[u8], u32)] = &[
    (
        "a REGISTER without credentials",
        b"REGISTER sip:selftest.invalid SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK1\r\nFrom: <sip:t@selftest.invalid>;tag=1\r\nTo: <sip:t@selftest.invalid>\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
        sip_stat::REQUEST_BASE + method::REGISTER as u32,
    ),
    (
        "a REGISTER with credentials",
        b"REGISTER sip:selftest.invalid SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2\r\nFrom: <sip:t@selftest.invalid>;tag=1\r\nTo: <sip:t@selftest.invalid>\r\nCall-ID: 1\r\nCSeq: 2 REGISTER\r\nAuthorization: Digest username=\"t\", realm=\"r\", nonce=\"n\", uri=\"sip:selftest.invalid\", response=\"0\"\r\nContent-Length: 0\r\n\r\n",
        sip_stat::REGISTER_WITH_AUTH,
    ),
    (
        "a 401 response to a REGISTER",
        b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK1\r\nFrom: <sip:t@selftest.invalid>;tag=1\r\nTo: <sip:t@selftest.invalid>;tag=2\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
        sip_stat::RESPONSE_REGISTER_CHALLENGE,
    ),
    (
        "an INVITE to an international number",
        b"INVITE sip:+23276123456@selftest.invalid SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK3\r\nFrom: <sip:t@selftest.invalid>;tag=1\r\nTo: <sip:+23276123456@selftest.invalid>\r\nCall-ID: 2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        sip_stat::INVITE_CLASS_BASE + class::INTERNATIONAL as u32,
    ),
];

/// Runs the probes through a private copy of the program on this kernel.
pub fn sip_self_test() -> Result<()> {
    let Kernel { mut ebpf, maps } = Kernel::start(
        None,
        &KernelConfig {
            // A small per-source map: the probes come from one address.
            max_sources: 64,
            // The probes are never blocked.
            blocklist_capacity: 64,
            // Sierra Leone (+232) is international to any home country but itself.
            plan: NumberPlan { home_cc: 81, ..NumberPlan::default() },
            country_codes: vec![81, 232],
            sip_ports: vec![(IPPROTO_UDP, 5060)],
            config: Config::default(),
        },
    )?;
    let prog = loader::enforcement_program(&mut ebpf)?;
    let src = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    let dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    for (what, message, counter) in PROBES {
        let before = maps.sip_totals()?;
        let frame = FrameBuilder::udp(src, dst, 5060, 5060).payload(message).build();
        let mut out = vec![0u8; frame.len() + 256];
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .map_err(|e| Error::SelfTest { what: format!("{what} could not be run (BPF_PROG_TEST_RUN: {e})") })?;
        let after = maps.sip_totals()?;
        judge(what, *counter, &before, &after)?;
    }
    Ok(())
}

/// Whether a probe moved its own counter (and not the unparsed ones).
fn judge(what: &str, counter: u32, before: &[u64], after: &[u64]) -> Result<()> {
    let moved =
        |i: u32| after.get(i as usize).copied().unwrap_or(0) > before.get(i as usize).copied().unwrap_or(0);
    if moved(counter) {
        return Ok(());
    }
    let seen =
        if moved(sip_stat::UNPARSED_UDP) { "counted as unparsed" } else { "not counted as it must be" };
    Err(Error::SelfTest { what: format!("{what} was {seen}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_passes_only_when_its_own_counter_moves() {
        let n = sip_stat::COUNT as usize;
        let before = vec![0u64; n];
        let mut good = before.clone();
        good[sip_stat::REGISTER_WITH_AUTH as usize] = 1;
        assert!(judge("x", sip_stat::REGISTER_WITH_AUTH, &before, &good).is_ok());
        // What Linux 6.1 did with the scan state on the stack.
        let mut unparsed = before.clone();
        unparsed[sip_stat::UNPARSED_UDP as usize] = 1;
        let e = judge("a REGISTER", sip_stat::REGISTER_WITH_AUTH, &before, &unparsed).unwrap_err();
        assert!(e.to_string().contains("a REGISTER was counted as unparsed"), "{e}");
        let e = judge("x", sip_stat::REGISTER_WITH_AUTH, &before, &before).unwrap_err();
        assert!(e.to_string().contains("not counted"), "{e}");
    }
}
