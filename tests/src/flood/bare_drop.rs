//! The ceiling of the flood setup: a two-instruction XDP program
//! (`r0 = XDP_DROP; exit`) attached in driver mode with a BPF link, loaded
//! with the bpf(2) system call directly (it needs no ELF object and no map).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`'s BPF_XDP.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: native (driver) mode, never the generic fallback.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// An XDP_DROP program attached to an interface; detached on drop (closing
/// the link's last fd detaches it).
pub struct BareDrop {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl BareDrop {
    /// Loads the program and attaches it to `ifname` in the calling
    /// thread's network namespace.
    pub fn attach(ifname: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(ifname).expect("no NUL in an interface name");
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // mov64 r0, 1 (XDP_DROP); exit
        let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]), 0x95];
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        // union bpf_attr, BPF_PROG_LOAD's fields (offsets from linux/bpf.h).
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, BPF_PROG_TYPE_XDP);
        put32(&mut attr, 4, insns.len() as u32);
        put64(&mut attr, 8, insns.as_ptr() as u64);
        put64(&mut attr, 16, license.as_ptr() as u64);
        put32(&mut attr, 24, 1); // log_level
        put32(&mut attr, 28, log.len() as u32);
        put64(&mut attr, 32, log.as_mut_ptr() as u64);
        attr[48..48 + 9].copy_from_slice(b"bare_drop");
        put32(&mut attr, 68, BPF_XDP); // expected_attach_type
        let prog = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            io::Error::other(format!("loading XDP_DROP: {e}: {}", String::from_utf8_lossy(&log[..end])))
        })?;
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, prog.as_raw_fd() as u32);
        put32(&mut attr, 4, ifindex);
        put32(&mut attr, 8, BPF_XDP);
        put32(&mut attr, 12, XDP_FLAGS_DRV_MODE);
        let link = bpf(BPF_LINK_CREATE, &mut attr)
            .map_err(|e| io::Error::other(format!("attaching XDP_DROP to {ifname}: {e}")))?;
        Ok(Self { _link: link, _prog: prog })
    }
}

fn put32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// bpf(2) for a command that returns a new fd.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    // SAFETY: attr is a zero-padded bpf_attr of 128 bytes whose pointers
    // (instructions, license, log) outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
