//! SIP, shared by the XDP (ingress) and TC (egress) programs: byte access to
//! the packet ([`Packet`], [`View`]) and to the payload copied for parsing
//! ([`Window`]). The stages joined by tail calls are in [`stages`], the
//! counters they update in [`counters`].

pub(crate) mod counters;
pub(crate) mod stages;

use aya_ebpf::programs::{TcContext, XdpContext};
use tollgate_common::{
    packet::{MAX_HEADER_OFFSET, PacketView},
    sip::{ByteWindow, HeaderScan, SIP_WINDOW, UserScan},
};

/// Direct access to the linear part of a packet, with the bounds checks the
/// verifier wants to see before every access.
pub(crate) trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Bytes of the whole packet (may exceed `data_end - data`).
    fn total_len(&self) -> usize;
    /// Copies `len` bytes at `off` into `dst` with the program type's helper.
    ///
    /// # Safety
    ///
    /// `dst` must point to at least `len` writable bytes (the verifier
    /// checks it too, against the map value size).
    unsafe fn load(&self, off: usize, dst: *mut u8, len: usize) -> bool;
}

impl Packet for XdpContext {
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    fn total_len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
    #[inline(always)]
    unsafe fn load(&self, off: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: dst points to at least `len` writable bytes (the caller's
        // contract, checked by the verifier against the map value size).
        unsafe {
            aya_ebpf::helpers::generated::bpf_xdp_load_bytes(self.ctx, off as u32, dst.cast(), len as u32)
                == 0
        }
    }
}

impl Packet for TcContext {
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    fn total_len(&self) -> usize {
        self.len() as usize
    }
    #[inline(always)]
    unsafe fn load(&self, off: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: as above.
        unsafe {
            aya_ebpf::helpers::generated::bpf_skb_load_bytes(
                self.skb.skb.cast(),
                off as u32,
                dst.cast(),
                len as u32,
            ) == 0
        }
    }
}

/// The packet's headers, read in place for `tollgate_common::packet`.
pub(crate) struct View<'a, P: Packet>(pub(crate) &'a P);

impl<P: Packet> PacketView for View<'_, P> {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // Bounding the offset first lets the verifier track its range.
        if off > MAX_HEADER_OFFSET {
            return None;
        }
        let start = self.0.data();
        let end = self.0.data_end();
        if start + off + N > end {
            return None;
        }
        // SAFETY: [start + off, start + off + N) was just checked to lie
        // inside the packet; [u8; N] has alignment 1.
        Some(unsafe { core::ptr::read((start + off) as *const [u8; N]) })
    }
}

/// The copied payload. Reads past `len` yield 0; the mask keeps every index
/// inside the buffer whatever the verifier knows about `i`.
pub(crate) struct Window {
    buf: *const [u8; SIP_WINDOW],
    len: usize,
}

impl Window {
    /// # Safety
    ///
    /// `buf` must point to a live map value of `SIP_WINDOW` bytes for as
    /// long as the window is used.
    #[inline(always)]
    pub(crate) unsafe fn new(buf: *const [u8; SIP_WINDOW], len: usize) -> Self {
        Self { buf, len }
    }
}

impl ByteWindow for Window {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        if i < self.len {
            // SAFETY: buf is a live map value of SIP_WINDOW bytes (the
            // contract of Window::new).
            unsafe { (*self.buf)[i & (SIP_WINDOW - 1)] }
        } else {
            0
        }
    }

    #[inline(always)]
    fn raw(&self, i: usize) -> u8 {
        // SAFETY: buf is a live map value of SIP_WINDOW bytes (the contract
        // of Window::new).
        unsafe { (*self.buf)[i & (SIP_WINDOW - 1)] }
    }

    /// A `bpf_loop` scan: see [`stages::scan_headers`].
    #[inline(always)]
    fn scan_headers(&self, scan: HeaderScan) -> HeaderScan {
        stages::scan_headers(self.len, scan)
    }

    /// The same for the Request-URI user part.
    #[inline(always)]
    fn scan_user(&self, scan: UserScan) -> UserScan {
        stages::scan_user(self.len, scan)
    }
}
