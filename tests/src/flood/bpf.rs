//! The flood's own BPF programs, a few instructions each, loaded with the
//! bpf(2) system call directly (they need no ELF object and no map): the
//! bare `XDP_DROP` receiver (the ceiling of the setup), the `XDP_PASS` that
//! registers the generator veth's XDP receive queue, and the live-frames
//! generator. Also the kernel's per-program run-time statistics.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`'s BPF_XDP.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: native (driver) mode, never the generic fallback.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;

/// One instruction: opcode, registers, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let o = off.to_le_bytes();
    let i = imm.to_le_bytes();
    u64::from_le_bytes([code, dst | (src << 4), o[0], o[1], i[0], i[1], i[2], i[3]])
}

const EXIT: u64 = insn(0x95, 0, 0, 0, 0);

/// A loaded XDP program.
pub struct Program(OwnedFd);

impl Program {
    /// `return action;`
    pub fn action(action: i32) -> io::Result<Self> {
        Self::load(&[insn(0xb7, 0, 0, 0, action), EXIT], "flood_action")
    }

    /// `XDP_DROP` once the frame's IPv4 source (or the IPv6 source's
    /// middle) is read: what any filter that looks at a packet pays at
    /// least, the first touch of a frame another core wrote. Frames too
    /// short for it, or read as zero, pass.
    pub fn read_and_drop() -> io::Result<Self> {
        let prog = [
            insn(0x61, 2, 1, 0, 0),        // 0: r2 = ctx->data
            insn(0x61, 3, 1, 4, 0),        // 1: r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),        // 2: r4 = r2
            insn(0x07, 4, 0, 0, 38),       // 3: r4 += 38
            insn(0x2d, 4, 3, 4, 0),        // 4: if r4 > r3 goto 9
            insn(0x61, 5, 2, 26, 0),       // 5: r5 = the 4 bytes at 26
            insn(0x15, 5, 0, 2, 0),        // 6: if r5 == 0 goto 9
            insn(0xb7, 0, 0, 0, XDP_DROP), // 7: return XDP_DROP
            EXIT,                          // 8
            insn(0xb7, 0, 0, 0, XDP_PASS), // 9: return XDP_PASS
            EXIT,                          // 10
        ];
        Self::load(&prog, "flood_read_drop")
    }

    /// The live-frames generator: gives each frame a random source from the
    /// flood's list, then `XDP_TX` (in live mode: out of the interface the
    /// frame "arrived" on, the generator's veth, to its peer).
    ///
    /// The frame sent is the page's last one as modified in place, so the
    /// checksums are kept valid without recomputing them, by invariants the
    /// frames are built with ([`crate::flood::generator::live_frame`]):
    /// - IPv4 (source a.b.c.d, d random in 1..=254): IP ID and UDP source
    ///   port are both 0xffff - d, so the IPv4 header and UDP sums do not
    ///   change;
    /// - IPv6 (source 2001:db8:100:i::j, i random below `v6_prefixes`):
    ///   j = 0xffff - i, so the UDP sum does not change.
    pub fn live_generator(v6_prefixes: u32) -> io::Result<Self> {
        assert!((1..=65_536).contains(&v6_prefixes), "the IPv6 prefixes differ in one 16-bit word");
        let n6 = v6_prefixes as i32;
        let prog = [
            insn(0xbf, 6, 1, 0, 0),      // 0: r6 = ctx
            insn(0x85, 0, 0, 0, 7),      // 1: call bpf_get_prandom_u32
            insn(0xbf, 7, 0, 0, 0),      // 2: r7 = r0
            insn(0x61, 2, 6, 0, 0),      // 3: r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),      // 4: r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),      // 5: r4 = r2
            insn(0x07, 4, 0, 0, 38),     // 6: r4 += 38 (through the IPv6 source)
            insn(0x2d, 4, 3, 18, 0),     // 7: if r4 > r3 goto 26
            insn(0x69, 5, 2, 12, 0),     // 8: r5 = ethertype (as loaded: LE)
            insn(0x15, 5, 0, 9, 0xdd86), // 9: if IPv6 goto 19
            insn(0x97, 7, 0, 0, 254),    // 10: r7 %= 254
            insn(0x07, 7, 0, 0, 1),      // 11: r7 += 1 (d)
            insn(0x73, 2, 7, 29, 0),     // 12: source's last byte = d
            insn(0xb7, 8, 0, 0, 0xffff), // 13: r8 = 0xffff
            insn(0x1f, 8, 7, 0, 0),      // 14: r8 -= d
            insn(0xdc, 8, 0, 0, 16),     // 15: r8 = htons(r8)
            insn(0x6b, 2, 8, 18, 0),     // 16: IP ID = r8
            insn(0x6b, 2, 8, 34, 0),     // 17: UDP source port = r8
            insn(0x05, 0, 0, 7, 0),      // 18: goto 26
            insn(0x97, 7, 0, 0, n6),     // 19: r7 %= v6_prefixes (i)
            insn(0xb7, 8, 0, 0, 0xffff), // 20: r8 = 0xffff
            insn(0x1f, 8, 7, 0, 0),      // 21: r8 -= i (j)
            insn(0xdc, 7, 0, 0, 16),     // 22: r7 = htons(i)
            insn(0xdc, 8, 0, 0, 16),     // 23: r8 = htons(j)
            insn(0x6b, 2, 7, 28, 0),     // 24: source's 4th word = i
            insn(0x6b, 2, 8, 36, 0),     // 25: source's 8th word = j
            insn(0xb7, 0, 0, 0, XDP_TX), // 26: return XDP_TX
            EXIT,
        ];
        Self::load(&prog, "flood_gen")
    }

    fn load(insns: &[u64], name: &str) -> io::Result<Self> {
        let license = c"GPL";
        let mut log = vec![0u8; 16 * 1024];
        // union bpf_attr, BPF_PROG_LOAD's fields (offsets from linux/bpf.h).
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, BPF_PROG_TYPE_XDP);
        put32(&mut attr, 4, insns.len() as u32);
        put64(&mut attr, 8, insns.as_ptr() as u64);
        put64(&mut attr, 16, license.as_ptr() as u64);
        put32(&mut attr, 24, 1); // log_level
        put32(&mut attr, 28, log.len() as u32);
        put64(&mut attr, 32, log.as_mut_ptr() as u64);
        let name = &name.as_bytes()[..name.len().min(15)];
        attr[48..48 + name.len()].copy_from_slice(name);
        put32(&mut attr, 68, BPF_XDP); // expected_attach_type
        bpf(BPF_PROG_LOAD, &mut attr).map(Self).map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            io::Error::other(format!("loading an XDP program: {e}: {}", String::from_utf8_lossy(&log[..end])))
        })
    }

    /// Runs the program `repeat` times in live-frames mode on `frame`, as
    /// if it arrived on `ifindex` (of the calling thread's namespace).
    pub fn run_live(&self, frame: &[u8], ifindex: u32, repeat: u32) -> io::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, self.0.as_raw_fd() as u32);
        put32(&mut attr, 8, frame.len() as u32);
        put64(&mut attr, 16, frame.as_ptr() as u64);
        put32(&mut attr, 32, repeat);
        put32(&mut attr, 40, size_of_val(&ctx) as u32);
        put64(&mut attr, 48, ctx.as_ptr() as u64);
        put32(&mut attr, 64, BPF_F_TEST_XDP_LIVE_FRAMES);
        bpf_cmd(BPF_PROG_TEST_RUN, &mut attr).map(drop)
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN, no side
    /// effects): its return value and the frame as it left it.
    pub fn run_once(&self, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, self.0.as_raw_fd() as u32);
        put32(&mut attr, 8, frame.len() as u32);
        put32(&mut attr, 12, out.len() as u32);
        put64(&mut attr, 16, frame.as_ptr() as u64);
        put64(&mut attr, 24, out.as_mut_ptr() as u64);
        put32(&mut attr, 32, 1);
        bpf_cmd(BPF_PROG_TEST_RUN, &mut attr)?;
        let retval = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
        let size = u32::from_ne_bytes(attr[12..16].try_into().expect("4 bytes")) as usize;
        out.truncate(size);
        Ok((retval, out))
    }

    /// Attaches the program to `ifname` of the calling thread's network
    /// namespace in driver mode; detached when the link is dropped.
    pub fn attach(&self, ifname: &str) -> io::Result<OwnedFd> {
        let ifindex = ifindex(ifname)?;
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, self.0.as_raw_fd() as u32);
        put32(&mut attr, 4, ifindex);
        put32(&mut attr, 8, BPF_XDP);
        put32(&mut attr, 12, XDP_FLAGS_DRV_MODE);
        bpf(BPF_LINK_CREATE, &mut attr)
            .map_err(|e| io::Error::other(format!("attaching an XDP program to {ifname}: {e}")))
    }

    /// The program with this id (e.g. the one attached to an interface).
    pub fn by_id(id: u32) -> io::Result<Self> {
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, id);
        bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(Self)
    }

    /// The kernel's (run time in ns, runs) of this program, counted while
    /// [`enable_run_time_stats`] is in effect.
    pub fn run_stats(&self) -> io::Result<(u64, u64)> {
        let mut info = [0u8; 232];
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, self.0.as_raw_fd() as u32);
        put32(&mut attr, 4, info.len() as u32);
        put64(&mut attr, 8, info.as_mut_ptr() as u64);
        bpf_cmd(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        let at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().expect("8 bytes"));
        Ok((at(192), at(200)))
    }
}

/// An XDP_DROP program attached to an interface; detached on drop (closing
/// the link's last fd detaches it).
pub struct BareDrop {
    _link: OwnedFd,
    pub prog: Program,
}

impl BareDrop {
    pub fn attach(ifname: &str) -> io::Result<Self> {
        Self::attach_program(ifname, Program::action(XDP_DROP)?)
    }

    /// [`Program::read_and_drop`] instead.
    pub fn attach_reading(ifname: &str) -> io::Result<Self> {
        Self::attach_program(ifname, Program::read_and_drop()?)
    }

    fn attach_program(ifname: &str, prog: Program) -> io::Result<Self> {
        Ok(Self { _link: prog.attach(ifname)?, prog })
    }
}

/// Turns on the kernel's run-time statistics of every BPF program until the
/// returned fd is closed (BPF_ENABLE_STATS: counted, not a global switch
/// left on).
pub fn enable_run_time_stats() -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128]; // type BPF_STATS_RUN_TIME = 0
    bpf(BPF_ENABLE_STATS, &mut attr)
}

/// The interface's index in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(ifname).expect("no NUL in an interface name");
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

fn put32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// bpf(2); returns what it returned.
fn bpf_cmd(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr of 128 bytes whose pointers
    // (instructions, license, log, frames, info) outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// bpf(2) for a command that returns a new fd.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    let fd = bpf_cmd(cmd, attr)?;
    // SAFETY: a new fd the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
