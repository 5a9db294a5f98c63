//! The flood's generators. This kernel has no pktgen and Debian's
//! xdp-trafficgen does not load on it (../shared/PEERS.md), so they are
//! ours:
//! - `packet`: prebuilt Ethernet frames written straight to the generator's
//!   veth with an AF_PACKET socket, `PACKET_QDISC_BYPASS` (no qdisc: the
//!   frame goes to the driver's transmit function from the `sendmmsg` call)
//!   and batches of [`BATCH`] frames per system call. Each frame is an skb
//!   the receiving veth must copy into a page before XDP can see it.
//! - `live`: BPF_PROG_TEST_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES` (what
//!   xdp-trafficgen does): the kernel runs a small XDP program over frames
//!   from its own page pool and transmits each with `XDP_TX` out of the
//!   generator's veth, which hands it to its peer as an XDP frame, as a
//!   NIC's driver receives one (no skb, no copy).
//!
//! A veth's transmit puts the frame on the peer's receive ring; when that
//! ring is full the frame is refused: counted, never as sent.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use tollgate_common::{
    frames::FrameBuilder,
    packet::{ETH_P_IPV4, ETH_P_IPV6},
};

use super::bpf::Program;

/// Frames per `sendmmsg`.
pub const BATCH: usize = 64;

/// What one flood sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Frames the veth took (queued for the receiver).
    pub sent: u64,
    /// Calls that stopped at a frame the veth refused because the
    /// receiver's ring was full (the rest of that batch is skipped).
    pub full: u64,
    pub elapsed: Duration,
    /// CPU time of the generator's thread (user + system).
    pub cpu: Duration,
}

/// An AF_PACKET socket bound to `ifname` of the calling thread's network
/// namespace, bypassing the qdisc. Send-only (protocol 0 receives nothing).
pub fn open(ifname: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname).expect("no NUL in an interface name");
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: a sockaddr_ll of its own size.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends `frames` round and round for `duration` on `fd` ([`open`]), in
/// batches of [`BATCH`] (the number of frames must be a multiple of it).
pub fn flood(fd: &OwnedFd, frames: &[Vec<u8>], duration: Duration) -> Sent {
    assert!(!frames.is_empty() && frames.len().is_multiple_of(BATCH), "whole batches of frames");
    let mut iov = iovecs(frames);
    let mut msgs = messages(&mut iov);
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let (mut sent, mut full, mut at) = (0u64, 0u64, 0usize);
    while start.elapsed() < duration {
        // Many batches between clock reads.
        for _ in 0..16 {
            // SAFETY: BATCH messages from `at` (a multiple of BATCH below
            // len), each pointing at a frame that outlives the call.
            let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs[at..].as_mut_ptr(), BATCH as u32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                assert!(
                    matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)),
                    "sendmmsg on the flood socket: {e}"
                );
                full += 1;
            } else {
                sent += n as u64;
                // Stopped short: the next frame was refused.
                full += u64::from((n as usize) < BATCH);
            }
            // Whole batches only, so the next call stays inside the array.
            at = (at + BATCH) % frames.len();
        }
    }
    Sent { sent, full, elapsed: start.elapsed(), cpu: thread_cpu() - cpu0 }
}

/// One `iovec` per frame (valid while `frames` is).
pub fn iovecs(frames: &[Vec<u8>]) -> Vec<libc::iovec> {
    frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() }).collect()
}

/// One `sendmmsg` message per `iovec` (valid while `iov` is).
pub fn messages(iov: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iov.iter_mut()
        .map(|v| {
            // SAFETY: msghdr is plain data; all-zero is an empty message.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = v;
            hdr.msg_iovlen = 1;
            libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }
        })
        .collect()
}

/// A frame for [`crate::flood::bpf::Program::live_generator`]: UDP from
/// `src` to `dst`:5060 with `payload`, built with the invariants that
/// program keeps (see there), and with valid checksums.
pub fn live_frame(src: IpAddr, dst: IpAddr, payload: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let (src, sport) = match src {
        IpAddr::V4(a) => {
            let d = a.octets()[3];
            assert!((1..=254).contains(&d), "the generator picks d in 1..=254");
            (IpAddr::V4(a), 0xffff - u16::from(d))
        }
        IpAddr::V6(a) => {
            let mut w = a.segments();
            assert_eq!(w[2], 0x100, "the generator varies the 4th word of 2001:db8:100::/48");
            w[7] = 0xffff - w[3];
            (IpAddr::V6(w.into()), 40000)
        }
    };
    let mut f = FrameBuilder::udp(src, dst, sport, 5060).payload(payload).build();
    if src.is_ipv4() {
        f[18..20].copy_from_slice(&sport.to_be_bytes());
    }
    finish_frame(&mut f, dst_mac, src_mac);
    f
}

/// Runs `prog` (the live-frames generator) on the calling thread, which
/// must be in the namespace of `ifindex`, for `duration`: calls of
/// `repeat` frames each, cycling through `frames`. The frames sent are
/// counted by the veth (see the caller); returns (elapsed, thread CPU).
pub fn flood_live(
    prog: &Program,
    frames: &[Vec<u8>],
    ifindex: u32,
    duration: Duration,
) -> (Duration, Duration) {
    const REPEAT: u32 = 1 << 16;
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < duration {
        prog.run_live(&frames[i % frames.len()], ifindex, REPEAT).expect("BPF_PROG_TEST_RUN, live frames");
        i += 1;
    }
    (start.elapsed(), thread_cpu() - cpu0)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pins the calling thread (`tid` 0) or thread `tid` to one CPU.
pub fn pin(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Fills in the IPv4 header checksum and the UDP checksum of an untagged
/// Ethernet frame from `FrameBuilder` (which leaves them zero: XDP does not
/// check them, but the stack behind the nftables hooks and the socket does,
/// and an IPv6 UDP checksum of zero is invalid), and sets its MAC addresses.
pub fn finish_frame(frame: &mut [u8], dst_mac: [u8; 6], src_mac: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = &mut frame[14..];
    let (pseudo, l4) = match ethertype {
        ETH_P_IPV4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            ip[10..12].fill(0);
            let c = fold(sum(&ip[..ihl]));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let pseudo = sum(&ip[12..20]) + u32::from(ip[9]) + (len - ihl) as u32;
            (pseudo, ihl..len)
        }
        ETH_P_IPV6 => {
            assert_eq!(ip[6], tollgate_common::IPPROTO_UDP, "flood frames are plain UDP over IPv6");
            let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            (sum(&ip[8..40]) + u32::from(ip[6]) + len as u32, 40..40 + len)
        }
        other => panic!("flood frame of ethertype {other:#06x}"),
    };
    let udp = &mut ip[l4];
    udp[6..8].fill(0);
    let c = match fold(pseudo + sum(udp)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
}

/// Ones'-complement sum of big-endian 16-bit words (odd tail padded).
fn sum(b: &[u8]) -> u32 {
    b.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A correct checksum sums, with itself, to all ones.
    #[test]
    fn checksums_verify() {
        for (src, dst) in [("198.51.100.7", "192.0.2.1"), ("2001:db8:100::7", "2001:db8:ffff::1")] {
            let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let mut f = FrameBuilder::udp(src, dst, 40000, 5060).payload(b"OPTIONS x SIP/2.0\r\n\r").build();
            finish_frame(&mut f, [2; 6], [4; 6]);
            let ip = &f[14..];
            let (pseudo, udp) = if src.is_ipv4() {
                assert_eq!(fold(sum(&ip[..20])), 0, "IPv4 header checksum");
                (sum(&ip[12..20]) + 17 + (ip.len() - 20) as u32, &ip[20..])
            } else {
                (sum(&ip[8..40]) + 17 + (ip.len() - 40) as u32, &ip[40..])
            };
            assert_eq!(fold(pseudo + sum(udp)), 0, "UDP checksum of {src}");
        }
    }

    /// The live generator's program itself (loaded, so verified, and run
    /// with BPF_PROG_TEST_RUN): every frame it sends has valid checksums
    /// and a source from the list.
    #[test]
    fn live_program_keeps_checksums() {
        if !crate::privileged("live_program_keeps_checksums") {
            return;
        }
        const N6: u32 = 60_932;
        let prog = Program::live_generator(N6).expect("the generator program loads");
        let dst4 = "192.0.2.1".parse().unwrap();
        let dst6 = "2001:db8:ffff::1".parse().unwrap();
        let mut f4 = live_frame("203.0.113.1".parse().unwrap(), dst4, b"OPTIONS x", [2; 6], [4; 6]);
        let mut f6 = live_frame("2001:db8:100::".parse().unwrap(), dst6, b"OPTIONS x", [2; 6], [4; 6]);
        for _ in 0..200 {
            let (action, out) = prog.run_once(&f4).expect("test run");
            assert_eq!(action, super::super::bpf::XDP_TX as u32);
            let ip = &out[14..];
            assert_eq!(fold(sum(&ip[..20])), 0, "IPv4 header checksum");
            assert_eq!(fold(sum(&ip[12..20]) + 17 + (ip.len() - 20) as u32 + sum(&ip[20..])), 0, "UDP/IPv4");
            assert!((1..=254).contains(&ip[15]) && ip[12..15] == [203, 0, 113], "source {:?}", &ip[12..16]);
            f4 = out;
            let (_, out) = prog.run_once(&f6).expect("test run");
            let ip = &out[14..];
            assert_eq!(fold(sum(&ip[8..40]) + 17 + (ip.len() - 40) as u32 + sum(&ip[40..])), 0, "UDP/IPv6");
            let i = u16::from_be_bytes([ip[14], ip[15]]);
            assert!(
                u32::from(i) < N6 && ip[8..14] == [0x20, 0x01, 0x0d, 0xb8, 0x01, 0x00],
                "source {:?}",
                &ip[8..24]
            );
            f6 = out;
        }
    }

    /// The live generator's rewrite (a new d, or a new i and j, kept by the
    /// invariants) leaves both checksums valid.
    #[test]
    fn live_rewrites_keep_checksums() {
        let v4 =
            live_frame("203.0.113.1".parse().unwrap(), "192.0.2.1".parse().unwrap(), b"x", [2; 6], [4; 6]);
        let v6 = live_frame(
            "2001:db8:100::".parse().unwrap(),
            "2001:db8:ffff::1".parse().unwrap(),
            b"x",
            [2; 6],
            [4; 6],
        );
        for d in [1u8, 77, 254] {
            let mut f = v4.clone();
            f[29] = d;
            f[18..20].copy_from_slice(&(0xffff - u16::from(d)).to_be_bytes());
            f[34..36].copy_from_slice(&(0xffff - u16::from(d)).to_be_bytes());
            let ip = &f[14..];
            assert_eq!(fold(sum(&ip[..20])), 0, "IPv4 header, d {d}");
            assert_eq!(
                fold(sum(&ip[12..20]) + 17 + (ip.len() - 20) as u32 + sum(&ip[20..])),
                0,
                "UDP, d {d}"
            );
        }
        for i in [0u16, 1, 60_000, 0xffff] {
            let mut f = v6.clone();
            f[28..30].copy_from_slice(&i.to_be_bytes());
            f[36..38].copy_from_slice(&(0xffff - i).to_be_bytes());
            let ip = &f[14..];
            assert_eq!(fold(sum(&ip[8..40]) + 17 + (ip.len() - 40) as u32 + sum(&ip[40..])), 0, "UDP, i {i}");
        }
    }
}
