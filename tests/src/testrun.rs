//! Runs hand-built frames through the loaded XDP program with
//! BPF_PROG_TEST_RUN: exact verdicts and counters, no interface needed.

use std::time::Duration;

use aya::{
    Ebpf, TestRunOptions,
    maps::{MapData, RingBuf},
    programs::{TestRun as _, Xdp},
};
use ipnet::IpNet;
use tollgate::{
    kernel::{Kernel, KernelConfig},
    maps::Maps,
};
use tollgate_common::{
    BlockEntry, CONFIG_BLOCK_ALL_PORTS, Config, IPPROTO_TCP, IPPROTO_UDP, MAP_EVENTS, PROG_BASELINE,
    PROG_EGRESS, PROG_ENFORCE, SOURCES_CAPACITY, ThresholdEvent, reason,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The object loaded without pins, with the default SIP ports configured.
pub struct Loaded {
    ebpf: Ebpf,
    pub maps: Maps,
    events: RingBuf<MapData>,
}

impl Loaded {
    pub fn new() -> Self {
        let country_codes: Vec<u16> =
            tollgate_common::number::country_table(tollgate_common::number::COUNTRY_TABLE)
                .map(|r| r.expect("valid table").0)
                .collect();
        let config = KernelConfig {
            max_sources: SOURCES_CAPACITY,
            plan: tollgate_common::corpus::japan(),
            country_codes,
            sip_ports: vec![
                (IPPROTO_UDP, 5060),
                (IPPROTO_TCP, 5060),
                (IPPROTO_UDP, 5080),
                (IPPROTO_TCP, 5080),
            ],
            config: Config::default(),
        };
        let Kernel { mut ebpf, maps } = Kernel::start(None, &config).expect("load and configure the object");
        let events = ebpf.take_map(MAP_EVENTS).expect("EVENTS map");
        let events = RingBuf::try_from(events).expect("EVENTS is a ring buffer");
        for name in [PROG_ENFORCE, PROG_BASELINE] {
            let prog: &mut Xdp = ebpf.program_mut(name).expect("program").try_into().expect("xdp");
            prog.load().expect("verifier accepts the program");
        }
        Self { ebpf, maps, events }
    }

    pub fn block(&mut self, net: &str, expires_at_ns: u64) {
        let net: IpNet = net.parse().expect("prefix");
        self.maps
            .blocklist
            .insert(&net, BlockEntry { expires_at_ns, reason: reason::OPERATOR, prefix_len: 0 })
            .expect("block");
    }

    pub fn allow(&mut self, nets: &[&str]) {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().expect("prefix")).collect();
        self.maps.allowlist.replace(&nets).expect("allow");
    }

    pub fn block_all_ports(&mut self, on: bool) {
        let flags = if on { CONFIG_BLOCK_ALL_PORTS } else { 0 };
        let cfg = self.maps.config().expect("config");
        self.maps.set_config(Config { flags, ..cfg }).expect("config");
    }

    /// The threshold events the kernel wrote since the last call.
    pub fn events(&mut self) -> Vec<ThresholdEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            assert_eq!(item.len(), size_of::<ThresholdEvent>(), "whole records");
            // SAFETY: the kernel writes whole ThresholdEvent records.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        out
    }

    fn program(&self, name: &str) -> &Xdp {
        self.ebpf.program(name).expect("program").try_into().expect("xdp")
    }

    /// Runs `frame` once through the enforcement program; returns the XDP
    /// action and the verdict code whose counter moved.
    pub fn run(&self, frame: &[u8]) -> (u32, u32) {
        let before = self.maps.verdict_totals().expect("stats");
        let action = self.run_program(PROG_ENFORCE, frame, 1).0;
        let after = self.maps.verdict_totals().expect("stats");
        let moved: Vec<u32> = (0..before.len() as u32)
            .filter(|i| after[*i as usize].packets != before[*i as usize].packets)
            .collect();
        assert_eq!(moved.len(), 1, "exactly one verdict counter must move, moved: {moved:?}");
        let code = moved[0];
        assert_eq!(after[code as usize].packets, before[code as usize].packets + 1);
        // BPF_PROG_TEST_RUN keeps about a page linear; XDP counts what it
        // sees of larger frames (real NICs without multi-buffer XDP never
        // hand it frames that large).
        if frame.len() <= 3000 {
            assert_eq!(after[code as usize].bytes, before[code as usize].bytes + frame.len() as u64);
        }
        (action, code)
    }

    /// Loads the programs not loaded yet (the TC egress counter), then
    /// reports every program's verifier work: (name, instructions
    /// processed), the figure the verifier compares with its 1,000,000
    /// budget (`bpf_prog_info.verified_insns`, Linux 5.16+).
    pub fn verifier_counts(&mut self) -> Vec<(String, u32)> {
        for (name, prog) in self.ebpf.programs_mut() {
            if let aya::programs::Program::SchedClassifier(p) = prog
                && p.fd().is_err()
            {
                p.load().unwrap_or_else(|e| panic!("verifier rejects {name}: {e:?}"));
            }
        }
        let mut counts: Vec<(String, u32)> = self
            .ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some((name.to_owned(), info.verified_instruction_count().unwrap_or(0)))
            })
            .collect();
        counts.sort();
        counts
    }

    /// Attaches this copy's egress counter to `iface` (resolved in the
    /// calling thread's namespace) as the last TCX program, to see what
    /// reaches programs after the agent's. Detached when dropped. Linux 6.6+.
    pub fn attach_egress_last(&mut self, iface: &str) {
        use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(PROG_EGRESS).expect("program").try_into().expect("tc");
        if prog.fd().is_err() {
            prog.load().expect("verifier accepts the egress program");
        }
        prog.attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::last()))
            .expect("attach as the last TCX program");
    }

    /// Runs a program `repeat` times in the kernel; returns the action and
    /// the kernel-measured average time per run.
    pub fn run_program(&self, name: &str, frame: &[u8], repeat: u32) -> (u32, Duration) {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .program(name)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        (result.return_value, result.duration)
    }
}

impl Default for Loaded {
    fn default() -> Self {
        Self::new()
    }
}
