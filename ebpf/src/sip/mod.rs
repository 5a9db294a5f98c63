//! SIP, shared by the XDP (ingress) and TC (egress) programs: byte access to
//! the packet ([`Packet`], [`View`]) and to the payload copied for parsing
//! ([`Window`]). The stages joined by tail calls are in [`stages`], the
//! counters they update in [`counters`].

pub(crate) mod counters;
pub(crate) mod stages;

use aya_ebpf::programs::{TcContext, XdpContext};
use tollgate_common::{
    headers::{LineScan, ParamScan, Span},
    packet::{MAX_HEADER_OFFSET, PacketView},
    sip::{ByteWindow, SIP_WINDOW, SipSummary, UserScan},
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

/// Bytes of [`Payload`]: twice the window, so that any index masked with
/// `PAYLOAD_MASK` leaves room for the two aligned words a [`Window::word`]
/// reads, plus the word [`ByteWindow::launder`] uses.
const PAYLOAD_WORDS: usize = 2 * SIP_WINDOW / 8 + 3 + SUMMARY_WORDS;
/// Words of a [`SipSummary`], laundered after the payload's launder word.
const SUMMARY_WORDS: usize = size_of::<SipSummary>() / 8;
const _: () = assert!(size_of::<SipSummary>() % 8 == 0);
const PAYLOAD_MASK: usize = 2 * SIP_WINDOW - 1;
const LAUNDER_WORD: usize = PAYLOAD_WORDS - 1 - SUMMARY_WORDS;
/// Bytes after the payload that [`zero_tail`] clears: as far as any read
/// goes past `len` (a header name compared three words from a line start).
pub(crate) const TAIL: usize = 24;

/// The per-CPU scratch buffer the payload is copied into, as words so that
/// it is 8-aligned.
pub(crate) type Payload = [u64; PAYLOAD_WORDS];

/// Clears the `TAIL` bytes after the first `len` of `buf`: a word read
/// that runs past the payload sees zeros, as on the host.
///
/// # Safety
///
/// `buf` must point to a live map value holding a [`Payload`].
#[inline(always)]
pub(crate) unsafe fn zero_tail(buf: *mut Payload, len: usize) {
    let bytes = buf as *mut u8;
    let mut k = 0;
    while k < TAIL {
        // SAFETY: the index is masked to PAYLOAD_MASK < the Payload's size.
        // Volatile: a loop of plain stores becomes a memset call, which the
        // verifier walks byte by byte.
        unsafe { core::ptr::write_volatile(bytes.add((len + k) & PAYLOAD_MASK), 0) };
        k += 1;
    }
}

/// One message of the copied payload: the bytes from `base` (where the
/// message starts in a TCP segment holding several), `len` of them. Reads
/// past `len` yield 0; the mask keeps every index inside the buffer
/// whatever the verifier knows about `i`.
pub(crate) struct Window {
    buf: *const Payload,
    len: usize,
    base: usize,
}

impl Window {
    /// The message at `base` of a payload of `end` bytes.
    ///
    /// # Safety
    ///
    /// `buf` must point to a live map value holding a [`Payload`] whose
    /// `TAIL` bytes after `end` are zero ([`zero_tail`]), for as long as
    /// the window is used.
    #[inline(always)]
    pub(crate) unsafe fn at_base(buf: *const Payload, end: usize, base: usize) -> Self {
        Self { buf, len: end.saturating_sub(base), base }
    }

    /// The message's start in the payload, and its length.
    #[inline(always)]
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        // SAFETY: the index is masked inside the live Payload (the
        // contract of Window::at_base).
        unsafe { *(self.buf as *const u8).add((self.base + i) & PAYLOAD_MASK) }
    }
}

impl Window {
    /// Writes `s` into the summary words after the launder word, a word
    /// at a time, volatile (no memcpy call, whose byte loop the verifier
    /// would walk).
    #[inline(always)]
    pub(crate) fn store_summary(&self, s: &SipSummary) {
        let words = (s as *const SipSummary).cast::<u64>();
        let mut i = 0;
        while i < SUMMARY_WORDS {
            // SAFETY: LAUNDER_WORD + 1 + i is inside the live Payload (the
            // contract of Window::at_base), a writable map value; `s` is
            // SUMMARY_WORDS words long with no padding (checked above).
            unsafe {
                let slot = (self.buf as *mut u64).add(LAUNDER_WORD + 1 + i);
                core::ptr::write_volatile(slot, core::ptr::read(words.add(i)));
            }
            i += 1;
        }
    }

    /// The summary [`Window::store_summary`] wrote.
    #[inline(always)]
    fn load_summary(&self) -> SipSummary {
        let mut out = SipSummary::of_kind(tollgate_common::sip::kind::EMPTY);
        let words = (&raw mut out).cast::<u64>();
        let mut i = 0;
        while i < SUMMARY_WORDS {
            // SAFETY: as in store_summary; the words are those of a valid
            // SipSummary written there by this CPU's parse stage.
            unsafe {
                let slot = (self.buf as *const u64).add(LAUNDER_WORD + 1 + i);
                core::ptr::write(words.add(i), core::ptr::read_volatile(slot));
            }
            i += 1;
        }
        out
    }
}

impl ByteWindow for Window {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        if i < self.len { self.byte(i) } else { 0 }
    }

    /// Two aligned loads and shifts, no branch: the header scans read at
    /// most `TAIL` bytes past `len`, which [`zero_tail`] cleared, so bytes
    /// past the payload read as 0 as on the host. (The identity hash reads
    /// further, and masks what lies past its value.)
    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        let p = self.base + i;
        let w = (p & PAYLOAD_MASK) >> 3;
        let off = ((p & 7) * 8) as u32;
        // SAFETY: w + 1 < PAYLOAD_WORDS: both words lie inside the live
        // Payload (the contract of Window::at_base).
        let (lo, hi) = unsafe {
            let words = self.buf as *const u64;
            (*words.add(w), *words.add(w + 1))
        };
        // `hi << 1 << (63 - off)` is `hi << (64 - off)` without the
        // undefined shift by 64 when off is 0.
        (lo >> off) | ((hi << 1) << (63 - off))
    }

    /// Through the last word of the payload buffer, never read as payload
    /// (reads stop `TAIL` bytes after `len <= SIP_WINDOW`).
    #[inline(always)]
    fn launder(&self, v: usize) -> usize {
        // SAFETY: LAUNDER_WORD is inside the live Payload (the contract of
        // Window::at_base), a map value and so writable; nothing else on this
        // CPU uses it meanwhile.
        unsafe {
            let slot = (self.buf as *mut u64).add(LAUNDER_WORD);
            core::ptr::write_volatile(slot, v as u64);
            core::ptr::read_volatile(slot) as usize
        }
    }

    /// In a callback of its own: see [`stages::isolated`].
    #[inline(always)]
    fn hash(&self, span: Span) -> u64 {
        stages::isolated(self, stages::op::HASH, span.start as u64, span.end as u64)
    }

    #[inline(always)]
    fn cseq(&self, at: usize) -> (u32, u8) {
        let v = stages::isolated(self, stages::op::CSEQ, at as u64, 0);
        (v as u32, (v >> 32) as u8)
    }

    #[inline(always)]
    fn number(&self, at: usize) -> u32 {
        stages::isolated(self, stages::op::NUMBER, at as u64, 0) as u32
    }

    /// In a callback of its own ([`stages::start_isolated`]).
    #[inline(always)]
    fn start(&self) -> SipSummary {
        stages::start_isolated(self);
        self.load_summary()
    }

    /// One `bpf_loop` step per header line: see [`stages::scan_lines`].
    #[inline(always)]
    fn scan_lines(&self, scan: LineScan) -> LineScan {
        stages::scan_lines(self, scan)
    }

    /// One `bpf_loop` step per digest parameter.
    #[inline(always)]
    fn scan_params(&self, scan: ParamScan) -> ParamScan {
        stages::scan_params(self, scan)
    }

    /// The same for the Request-URI user part.
    #[inline(always)]
    fn scan_user(&self, scan: UserScan) -> UserScan {
        stages::scan_user(self, scan)
    }
}
