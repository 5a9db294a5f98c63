//! The clsact qdisc operations aya 0.14 lacks: finding and deleting it.
//!
//! Before Linux 6.6 (no TCX) the egress counter is a netlink TC filter,
//! which needs a clsact qdisc on the interface. aya can add one
//! (`qdisc_add_clsact`) but not remove it, so a qdisc the agent created
//! would outlive `tollgate detach`. These are single rtnetlink requests
//! (RTM_GETQDISC / RTM_DELQDISC) sent with libc, with no external `tc`.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `TC_H_CLSACT` (== `TC_H_INGRESS`): the parent clsact (and ingress)
/// qdiscs hang off.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// The handle a clsact qdisc always has, `ffff:`.
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// `TCA_KIND`: the kernel refuses the request if the qdisc there is of
/// another kind, so an `ingress` qdisc is never mistaken for ours.
const TCA_KIND: u16 = 1;
const KIND: &[u8] = b"clsact\0";
const NLMSG_HDRLEN: usize = 16;
/// `struct tcmsg`: family, 3 bytes padding, ifindex, handle, parent, info.
const TCMSG_LEN: usize = 20;
const RTA_HDRLEN: usize = 4;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Whether a clsact qdisc is on the interface with index `ifindex` (in the
/// caller's network namespace).
pub fn present(ifindex: u32) -> io::Result<bool> {
    match request(libc::RTM_GETQDISC, ifindex) {
        Ok(()) => Ok(true),
        Err(e) if absent(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the clsact qdisc of `ifindex`, and with it every TC filter
/// attached to it. Returns false when there was none.
pub fn delete(ifindex: u32) -> io::Result<bool> {
    match request(libc::RTM_DELQDISC, ifindex) {
        Ok(()) => Ok(true),
        Err(e) if absent(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How the kernel says "no clsact here": ENOENT when the device never had
/// an ingress queue, EINVAL ("Invalid handle" / "Invalid qdisc name") when
/// the queue holds the no-op qdisc or a qdisc of another kind.
fn absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL))
}

/// The request: nlmsghdr, tcmsg naming ifindex/parent/handle, TCA_KIND.
fn message(msg_type: u16, ifindex: u32, seq: u32) -> Vec<u8> {
    let attr_len = RTA_HDRLEN + KIND.len();
    let len = NLMSG_HDRLEN + TCMSG_LEN + align4(attr_len);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&CLSACT_HANDLE.to_ne_bytes());
    m.extend_from_slice(&TC_H_CLSACT.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // tcm_info
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&TCA_KIND.to_ne_bytes());
    m.extend_from_slice(KIND);
    m.resize(len, 0);
    m
}

/// The kernel's answer to request `seq` in `buf`: Some(errno or 0) once the
/// NLMSG_ERROR (acknowledgement) message is found.
fn ack_in(buf: &[u8], seq: u32) -> Option<i32> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let field = |at: usize, n: usize| buf.get(off + at..off + at + n);
        let len = u32::from_ne_bytes(field(0, 4)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(field(4, 2)?.try_into().ok()?);
        let msg_seq = u32::from_ne_bytes(field(8, 4)?.try_into().ok()?);
        if len < NLMSG_HDRLEN {
            return None;
        }
        if kind == libc::NLMSG_ERROR as u16 && msg_seq == seq {
            return Some(i32::from_ne_bytes(field(NLMSG_HDRLEN, 4)?.try_into().ok()?));
        }
        off += align4(len);
    }
    None
}

/// Sends one request for the clsact qdisc of `ifindex` and waits for its
/// acknowledgement.
fn request(msg_type: u16, ifindex: u32) -> io::Result<()> {
    // SAFETY: socket() takes no pointers; the result is checked below.
    let raw =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own exclusively.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    const SEQ: u32 = 1;
    let msg = message(msg_type, ifindex, SEQ);
    // SAFETY: the pointer and length describe `msg`, alive for the call. An
    // unconnected netlink socket sends to the kernel (port 0).
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: the pointer and length describe `buf`, alive for the call.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::other("netlink socket closed before the acknowledgement"));
        }
        match ack_in(&buf[..n as usize], SEQ) {
            Some(0) => return Ok(()),
            Some(err) => return Err(io::Error::from_raw_os_error(-err)),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_one_aligned_message_naming_clsact() {
        let m = message(libc::RTM_DELQDISC, 7, 1);
        assert_eq!(m.len(), 48);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 48);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), libc::RTM_DELQDISC);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(m[24..28].try_into().unwrap()), 0xFFFF_0000);
        assert_eq!(u32::from_ne_bytes(m[28..32].try_into().unwrap()), 0xFFFF_FFF1);
        assert_eq!(&m[36..47], b"\x0b\x00\x01\x00clsact\0");
    }

    #[test]
    fn the_acknowledgement_is_found_after_other_messages() {
        let mut buf = Vec::new();
        // An unrelated 20-byte message (padded to 20), then the ack.
        buf.extend_from_slice(&20u32.to_ne_bytes());
        buf.extend_from_slice(&36u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 2]);
        buf.extend_from_slice(&1u32.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        buf.extend_from_slice(&[0; 2]);
        buf.extend_from_slice(&1u32.to_ne_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
        assert_eq!(ack_in(&buf, 1), Some(-libc::ENOENT));
        assert_eq!(ack_in(&buf, 2), None);
        assert_eq!(ack_in(&buf[..20], 1), None);
    }
}
