//! Runs hand-built frames through the loaded XDP program with
//! BPF_PROG_TEST_RUN: exact verdicts and counters, no interface needed.

use std::time::Duration;

use aya::{
    Ebpf, TestRunOptions,
    maps::{MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{SchedClassifier, TestRun as _, Xdp},
};
use ipnet::IpNet;
use tollgate::{
    kernel::{Kernel, KernelConfig},
    maps::Maps,
};
use tollgate_common::{
    BlockEntry, CONFIG_BLOCK_ALL_PORTS, Config, IPPROTO_TCP, IPPROTO_UDP, MAP_CALL_EVENTS, MAP_EVENTS,
    PROG_BASELINE, PROG_EGRESS, PROG_ENFORCE, PROG_STATIC_DROP, SOURCES_CAPACITY, SipContext, ThresholdEvent,
    reason,
    sip::{Number, SipSummary},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The parse stage's result map (per-CPU array of one [`SipSummary`]), the
/// `#[map]` of that name in ebpf/src/maps.rs. Not pinned, so not in
/// [`Maps`]: only tests read it.
pub const MAP_SUMMARY: &str = "SUMMARY";
/// The hand-over from the first program to the SIP stages (per-CPU array
/// of one [`SipContext`]).
pub const MAP_SIP_CTX: &str = "SIP_CTX";

/// Bytes of a [`SipSummary`] in SUMMARY. Read and written as bytes: the
/// summary is not `Pod` (it has `bool`s and padding), and a value the
/// kernel wrote is checked before it is taken for one ([`summary_from`]).
pub const SUMMARY_BYTES: usize = size_of::<SipSummary>();
const SIP_CTX_BYTES: usize = size_of::<SipContext>();

/// What SUMMARY holds before a run: `kind` 0xff is no kind, so a run that
/// never reached the parse stage leaves it and is told from one that did.
pub const SUMMARY_SENTINEL: [u8; SUMMARY_BYTES] = [0xff; SUMMARY_BYTES];

/// What the parse stage left in SUMMARY for one run ([`Loaded::parse_run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The sentinel is still there: the parse stage did not run.
    NotReached,
    /// A summary the parse stage wrote.
    Summary(SipSummary),
    /// Bytes that are no summary (a `bool` that is neither 0 nor 1).
    Invalid([u8; SUMMARY_BYTES]),
}

/// One run through the enforcement program as [`Loaded::parse_run`] saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseRun {
    pub action: u32,
    pub parsed: Parsed,
    /// Payload bytes the first program staged for parsing (SIP_CTX's
    /// `len`), if the parse stage ran.
    pub staged_len: Option<u32>,
}

/// The summary in `bytes`, if they are one: every `bool` 0 or 1 (every
/// other field takes any bit pattern).
pub fn summary_from(bytes: &[u8; SUMMARY_BYTES]) -> Option<SipSummary> {
    let number = std::mem::offset_of!(SipSummary, number);
    let bools = [
        std::mem::offset_of!(SipSummary, has_auth),
        std::mem::offset_of!(SipSummary, stale),
        number + std::mem::offset_of!(Number, plus),
        number + std::mem::offset_of!(Number, valid),
    ];
    if bools.iter().any(|&i| bytes[i] > 1) {
        return None;
    }
    // SAFETY: SUMMARY_BYTES is the size of SipSummary, read unaligned;
    // every bool was just checked, every other field is an integer.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SipSummary>()) })
}

/// Pins the calling thread to `cpu`: BPF_PROG_TEST_RUN runs the program on
/// the CPU of the calling thread, so per-CPU map values written by the run
/// ([`Loaded::parse_run`]) are that CPU's.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity get a valid set of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::sched_getcpu(), cpu as i32, "running on CPU {cpu} after pinning");
    }
}

/// The object loaded without pins, with the default SIP ports configured.
pub struct Loaded {
    ebpf: Ebpf,
    pub maps: Maps,
    events: RingBuf<MapData>,
    call_events: RingBuf<MapData>,
    summary: PerCpuArray<MapData, [u8; SUMMARY_BYTES]>,
    sip_ctx: PerCpuArray<MapData, [u8; SIP_CTX_BYTES]>,
}

impl Loaded {
    pub fn new() -> Self {
        Self::with_blocklist_capacity(tollgate_common::BLOCKLIST_CAPACITY)
    }

    /// The same with a blocklist of `blocklist_capacity` entries
    /// (`--blocklist-capacity`).
    pub fn with_blocklist_capacity(blocklist_capacity: u32) -> Self {
        let country_codes: Vec<u16> =
            tollgate_common::number::country_table(tollgate_common::number::COUNTRY_TABLE)
                .map(|r| r.expect("valid table").0)
                .collect();
        let config = KernelConfig {
            max_sources: SOURCES_CAPACITY,
            blocklist_capacity,
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
        let call_events = ebpf.take_map(MAP_CALL_EVENTS).expect("CALL_EVENTS map");
        let call_events = RingBuf::try_from(call_events).expect("CALL_EVENTS is a ring buffer");
        let summary = ebpf.take_map(MAP_SUMMARY).expect("SUMMARY map");
        let summary = PerCpuArray::try_from(summary).expect("SUMMARY is a per-CPU array of one SipSummary");
        let sip_ctx = ebpf.take_map(MAP_SIP_CTX).expect("SIP_CTX map");
        let sip_ctx = PerCpuArray::try_from(sip_ctx).expect("SIP_CTX is a per-CPU array of one SipContext");
        for name in [PROG_ENFORCE, PROG_BASELINE, PROG_STATIC_DROP] {
            let prog: &mut Xdp = ebpf.program_mut(name).expect("program").try_into().expect("xdp");
            prog.load().expect("verifier accepts the program");
        }
        Self { ebpf, maps, events, call_events, summary, sip_ctx }
    }

    /// Writes `value` into SUMMARY (and zeroes SIP_CTX) on every CPU.
    pub fn set_summary(&mut self, value: [u8; SUMMARY_BYTES]) {
        let cpus = aya::util::nr_cpus().expect("number of possible CPUs");
        let values = PerCpuValues::try_from(vec![value; cpus]).expect("one value per CPU");
        self.summary.set(0, values, 0).expect("writing SUMMARY");
        let zero = PerCpuValues::try_from(vec![[0u8; SIP_CTX_BYTES]; cpus]).expect("one value per CPU");
        self.sip_ctx.set(0, zero, 0).expect("writing SIP_CTX");
    }

    /// SUMMARY as `cpu` holds it: what the last run there parsed, or the
    /// sentinel ([`SUMMARY_SENTINEL`]) if none did since it was written.
    pub fn summary(&self, cpu: usize) -> Parsed {
        let values = self.summary.get(&0, 0).expect("reading SUMMARY");
        let bytes = values[cpu];
        if bytes == SUMMARY_SENTINEL {
            return Parsed::NotReached;
        }
        summary_from(&bytes).map_or(Parsed::Invalid(bytes), Parsed::Summary)
    }

    /// SIP_CTX's `len` on `cpu`: the payload bytes last staged there.
    pub fn staged_len(&self, cpu: usize) -> u32 {
        let values = self.sip_ctx.get(&0, 0).expect("reading SIP_CTX");
        let at = std::mem::offset_of!(SipContext, len);
        u32::from_ne_bytes(values[cpu][at..at + 4].try_into().expect("4 bytes"))
    }

    /// Runs `frame` once through the enforcement program on `cpu` (the
    /// calling thread must be pinned there, [`pin_to_cpu`]), with the
    /// sentinel in SUMMARY first: the whole summary the parse stage wrote,
    /// or that it did not run.
    pub fn parse_run(&mut self, cpu: usize, frame: &[u8]) -> ParseRun {
        self.set_summary(SUMMARY_SENTINEL);
        let action = self.run_program(PROG_ENFORCE, frame, 1).0;
        self.parse_result(cpu, action)
    }

    /// The same through the TC egress counter and its own parse stage
    /// (`tollgate_sip_parse_tc`, verified apart from the XDP one); loads
    /// the egress program on first use. `action` is the TC return code.
    pub fn parse_run_egress(&mut self, cpu: usize, frame: &[u8]) -> ParseRun {
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(PROG_EGRESS).expect("program").try_into().expect("tc");
        if prog.fd().is_err() {
            prog.load().expect("verifier accepts the egress program");
        }
        self.set_summary(SUMMARY_SENTINEL);
        let prog: &SchedClassifier = self.ebpf.program(PROG_EGRESS).expect("program").try_into().expect("tc");
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        self.parse_result(cpu, result.return_value)
    }

    fn parse_result(&self, cpu: usize, action: u32) -> ParseRun {
        let parsed = self.summary(cpu);
        let staged_len = (parsed != Parsed::NotReached).then(|| self.staged_len(cpu));
        ParseRun { action, parsed, staged_len }
    }

    pub fn block(&mut self, net: &str, expires_at_ns: u64) {
        let net: IpNet = net.parse().expect("prefix");
        self.maps
            .blocklist
            .insert(&net, BlockEntry { expires_at_ns, reason: reason::OPERATOR, prefix_len: 0 })
            .expect("block");
    }

    pub fn unblock(&mut self, net: &str) {
        let net: IpNet = net.parse().expect("prefix");
        self.maps.blocklist.remove(&net).expect("unblock");
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
        drain(&mut self.events)
    }

    /// The call events the kernel wrote since the last call (call attempts
    /// and new authentications, [`MAP_CALL_EVENTS`]).
    pub fn call_events(&mut self) -> Vec<ThresholdEvent> {
        drain(&mut self.call_events)
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
        use aya::programs::{LinkOrder, TcAttachType, tc::TcAttachOptions};
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(PROG_EGRESS).expect("program").try_into().expect("tc");
        if prog.fd().is_err() {
            prog.load().expect("verifier accepts the egress program");
        }
        prog.attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::last()))
            .expect("attach as the last TCX program");
    }

    /// Empties slot `index` of the XDP jump table, so the chain of SIP
    /// stages ends before it (the staged verdict stands): benchmarks use it
    /// to measure each stage's share of a packet's cost.
    pub fn cut_xdp_chain(&mut self, index: u32) {
        let map = self.ebpf.map_mut(tollgate_common::MAP_JUMP_XDP).expect("the XDP jump table");
        let mut table = aya::maps::ProgramArray::try_from(map).expect("a program array");
        table.clear_index(&index).expect("clearing a jump table slot");
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

/// Every record waiting in an event ring buffer.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<ThresholdEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<ThresholdEvent>(), "whole records");
        // SAFETY: the kernel writes whole ThresholdEvent records.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    out
}
