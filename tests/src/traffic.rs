//! Real traffic between the namespaces: UDP bursts counted by a receiver,
//! TCP connection attempts.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

/// A SIP-looking datagram; its content is irrelevant to enforcement.
pub const OPTIONS: &[u8] = b"OPTIONS sip:edge.example SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n";

/// A UDP socket bound in a namespace that counts what it receives.
pub struct UdpSink(UdpSocket);

impl UdpSink {
    pub fn bind(ns: &NetNs, addr: SocketAddr) -> Self {
        let sock = ns.run(move || UdpSocket::bind(addr).expect("bind UDP sink"));
        sock.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        Self(sock)
    }

    /// Counts datagrams until none arrives for 300 ms.
    pub fn drain(&self) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while self.0.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

/// Sends `count` datagrams from `src` (an address of the namespace) to `dst`.
pub fn udp_burst(ns: &NetNs, src: IpAddr, dst: SocketAddr, count: usize) {
    udp_burst_of(ns, src, dst, OPTIONS, count);
}

/// Sends `count` copies of `payload` from `src` to `dst`.
pub fn udp_burst_of(ns: &NetNs, src: IpAddr, dst: SocketAddr, payload: &'static [u8], count: usize) {
    ns.run(move || {
        let sock = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind UDP source");
        for _ in 0..count {
            sock.send_to(payload, dst).expect("send");
            // Stay well inside socket buffers: losses must come from XDP only.
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

/// Sends `payload` from `src` (an address of `ns`) to `dst` once every
/// `every` until dropped: a line's steady, normal traffic.
pub struct Pacer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pacer {
    pub fn start(ns: &NetNs, src: IpAddr, dst: SocketAddr, payload: &'static [u8], every: Duration) -> Self {
        let sock = ns.run(move || UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind UDP source"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        // A message with a Call-ID is sent as a call of its own each time.
        let calls = payload.windows(9).any(|w| w == b"Call-ID: ");
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let message = if calls { crate::fresh_call(payload) } else { payload.to_vec() };
                sock.send_to(&message, dst).expect("send");
                std::thread::sleep(every);
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listening TCP socket in a namespace; connections complete in its
/// backlog without being accepted.
pub fn tcp_listen(ns: &NetNs, addr: SocketAddr) -> TcpListener {
    ns.run(move || TcpListener::bind(addr).expect("bind TCP listener"))
}

/// Whether a TCP connection from `src` to `dst` completes within a second.
pub fn tcp_connects(ns: &NetNs, src: IpAddr, dst: SocketAddr) -> bool {
    ns.run(move || tcp_stream_from(src, dst).is_some())
}

/// A TCP connection from `src` (bound first) to `dst`, made in the calling
/// thread's namespace; `None` if it does not complete within a second.
pub fn tcp_stream_from(src: IpAddr, dst: SocketAddr) -> Option<TcpStream> {
    {
        let domain = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        // std has no bind-before-connect for TCP; use a raw socket for the
        // source address, then hand it to std.
        // SAFETY: plain socket calls with valid arguments.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let (addr, len) = sockaddr(SocketAddr::new(src, 0));
        // SAFETY: addr is a valid sockaddr of length len.
        let rc = unsafe { libc::bind(fd, (&raw const addr).cast(), len) };
        assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: SO_SNDTIMEO bounds a blocking connect().
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let (daddr, dlen) = sockaddr(dst);
        // SAFETY: daddr is a valid sockaddr of length dlen.
        let rc = unsafe { libc::connect(fd, (&raw const daddr).cast(), dlen) };
        // SAFETY: fd is ours; TcpStream closes it.
        let stream: TcpStream = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        (rc == 0).then_some(stream)
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}
