//! One pass over a SIP message's header lines, a line per step, and what is
//! read from the values it finds: the transaction (Call-ID, CSeq), the
//! credentials (Authorization, Proxy-Authorization: the digest username and
//! nonce) and the challenges (WWW-Authenticate, Proxy-Authenticate: the
//! nonce, `stale=true`), and Content-Length.
//!
//! Shared by the host and the kernel like [`crate::sip`]: every loop has a
//! constant bound, bytes are read through [`ByteWindow`], and the kernel
//! drives the steps of [`LineScan`] and [`ParamScan`] with `bpf_loop`. The end
//! of a line is found a word at a time ([`ByteWindow::word`]), header names
//! are compared as lower-cased words, and compact forms (`i:` Call-ID, `l:`
//! Content-Length), header-name case and white space before the colon are
//! accepted as RFC 3261 allows. Nothing is stored: values are hashed at once
//! (the digest username only with a per-deployment key, see
//! [`crate::hash`]).

use crate::sip::{ByteWindow, SIP_WINDOW};

/// Bytes of a line one [`LineScan::step`] reads: four words (eight were
/// measured no faster).
pub const STEP_BYTES: usize = 32;
/// Most steps of a line scan (a step per [`STEP_BYTES`] of a line, and
/// one per line end): a full window of header lines (2,048 / 32, and 256
/// lines of 8 bytes). A message with more, shorter lines is not read to
/// its end, and is then treated like one whose headers go on past the
/// window.
pub const MAX_LINE_STEPS: usize = SIP_WINDOW / STEP_BYTES + SIP_WINDOW / 8;

const LOWER: u64 = 0x2020_2020_2020_2020;

/// Up to 8 bytes as a little-endian word, as [`ByteWindow::word`] reads them.
const fn lit(s: &[u8]) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < s.len() && i < 8 {
        w |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    w
}

/// The low `n` bytes of a word (n in 0..=8).
#[inline(always)]
const fn low(n: usize) -> u64 {
    if n >= 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 }
}

/// A word with the high bit set in each byte equal to `byte`.
#[inline(always)]
const fn bytes_equal(w: u64, byte: u8) -> u64 {
    let x = w ^ (0x0101_0101_0101_0101u64 * byte as u64);
    // Exact (no false positives above a true match): the classic
    // haszero without the borrow into the next byte.
    !(((x & 0x7f7f_7f7f_7f7f_7f7f) + 0x7f7f_7f7f_7f7f_7f7f) | x | 0x7f7f_7f7f_7f7f_7f7f)
}

/// Index (0..8) of the lowest byte flagged by [`bytes_equal`] (0 when
/// none is). Branch-free: the lowest flag isolated, moved to the bottom of
/// its byte, and multiplied so that the index lands in the top byte. (BPF
/// has no count-trailing-zeros, and a branch here multiplies the
/// verifier's paths.)
#[inline(always)]
pub(crate) const fn first_flagged(m: u64) -> usize {
    let lowest = m & m.wrapping_neg();
    ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// Bytes of `w` that are a space or a tab (flags as [`bytes_equal`]).
#[inline(always)]
pub(crate) const fn white(w: u64) -> u64 {
    bytes_equal(w, b' ') | bytes_equal(w, b'\t')
}

/// Which header a line is (of those read).
pub mod hdr {
    pub const NONE: u8 = 0;
    pub const CALL_ID: u8 = 1;
    pub const CSEQ: u8 = 2;
    pub const CONTENT_LENGTH: u8 = 3;
    /// Authorization or Proxy-Authorization: credentials.
    pub const CREDENTIALS: u8 = 4;
    /// WWW-Authenticate or Proxy-Authenticate: a challenge.
    pub const CHALLENGE: u8 = 5;
}

/// What a sweep ([`LineScan::sweep`]) found after the first message's
/// headers: bits of [`LineScan::later`].
pub mod later {
    /// A line starts like a REGISTER request.
    pub const REGISTER: u8 = 1;
    /// A line starts like an INVITE request.
    pub const INVITE: u8 = 2;
    /// A credentials header.
    pub const CREDENTIALS: u8 = 4;
}

/// A byte range of the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Whether the lower-cased words `l` begin with `name` (lower case, at
/// most 24 bytes).
#[inline(always)]
fn is_name(l: [u64; 3], name: &[u8]) -> bool {
    let n = name.len();
    let part = |k: usize| if n > 8 * k { lit(&name[8 * k..]) } else { 0 };
    let len = |k: usize| n.saturating_sub(8 * k);
    (l[0] & low(len(0).min(8))) == part(0)
        && (n <= 8 || (l[1] & low(len(1).min(8))) == part(1))
        && (n <= 16 || (l[2] & low(len(2).min(8))) == part(2))
}

/// The header at the start of a line, and where its value starts (after
/// the colon and any white space), or `(hdr::NONE, 0)`. The name ends at
/// the first ':', space or tab; up to 7 spaces or tabs may stand before the
/// colon and after it. Written with few branches: each one multiplies the
/// paths the kernel's verifier walks through a line step.
#[inline(always)]
fn header_at<B: ByteWindow + ?Sized>(b: &B, at: usize) -> (u8, usize) {
    let w = [b.word(at), b.word(at + 8), b.word(at + 16)];
    let sep = |x: u64| bytes_equal(x, b':') | white(x);
    let (s0, s1, s2) = (sep(w[0]), sep(w[1]), sep(w[2]));
    let n = if s0 != 0 {
        first_flagged(s0)
    } else if s1 != 0 {
        8 + first_flagged(s1)
    } else if s2 != 0 {
        16 + first_flagged(s2)
    } else {
        return (hdr::NONE, 0);
    };
    let n = b.launder(n);
    // White space, then the colon.
    let after = b.word(at + n);
    let colon = at + n + first_flagged(!white(after) & 0x8080_8080_8080_8080);
    if b.at(colon) != b':' {
        return (hdr::NONE, 0);
    }
    let colon = b.launder(colon);
    let next = b.word(colon + 1);
    let value = b.launder(colon + 1 + first_flagged(!white(next) & 0x8080_8080_8080_8080));
    let l = [w[0] | LOWER, w[1] | LOWER, w[2] | LOWER];
    let h = match n {
        1 if l[0] & 0xff == b'i' as u64 => hdr::CALL_ID,
        1 if l[0] & 0xff == b'l' as u64 => hdr::CONTENT_LENGTH,
        4 if is_name(l, b"cseq") => hdr::CSEQ,
        7 if is_name(l, b"call-id") => hdr::CALL_ID,
        13 if is_name(l, b"authorization") => hdr::CREDENTIALS,
        14 if is_name(l, b"content-length") => hdr::CONTENT_LENGTH,
        16 if is_name(l, b"www-authenticate") => hdr::CHALLENGE,
        18 if is_name(l, b"proxy-authenticate") => hdr::CHALLENGE,
        19 if is_name(l, b"proxy-authorization") => hdr::CREDENTIALS,
        _ => hdr::NONE,
    };
    if h == hdr::NONE { (hdr::NONE, 0) } else { (h, value) }
}

/// State of a line scan of one message's headers, a word per
/// [`LineScan::step`] from `pos`; the kernel keeps this state in a map
/// value between `bpf_loop` steps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineScan {
    /// Where the next step reads.
    pub pos: u32,
    /// Offset just past the blank line ending the headers (0: not seen).
    pub body: u32,
    pub call_id: Span,
    pub credentials: Span,
    pub challenge: Span,
    /// Start of the CSeq and Content-Length values (0: none).
    pub cseq: u32,
    pub content_length: u32,
    /// The header of the line being read, whose end is still to be found.
    pub pending: u8,
    /// The header the last line was (a folded line continues it).
    pub last: u8,
    /// `pos` is inside a line begun in an earlier step.
    pub in_line: u8,
    /// The start line has been passed.
    pub past_start: u8,
    pub done: u8,
    /// More than one credentials header (which one counts is the
    /// registrar's business: tollgate reads the first).
    pub several_credentials: u8,
    /// Sweep mode: read on past the blank line to the window's end.
    pub sweep: u8,
    /// (sweep) [`later`] bits.
    pub later: u8,
}

impl LineScan {
    /// A scan of the message starting at `start`.
    pub fn new(start: usize) -> Self {
        Self { pos: start as u32, ..Self::default() }
    }

    /// A sweep of the whole window, for a restricted source: besides the
    /// first message's headers, every later line is looked at for a start
    /// line of a REGISTER or an INVITE (several messages in one TCP
    /// segment) and for credentials. Method names are matched
    /// case-insensitively, which only ever flags more.
    pub fn sweep() -> Self {
        Self { sweep: 1, ..Self::default() }
    }

    /// Whether the blank line ending the headers was seen.
    pub fn complete(&self) -> bool {
        self.body != 0
    }

    /// One step: the start of a line if `pos` is at one (which header it
    /// is), then the next [`STEP_BYTES`] of the line: if its end ('\n') is
    /// among them, the next step starts the next line there; if not, the
    /// next step reads on. A step per line (or per 32 bytes of a long one),
    /// with the state in a map value between `bpf_loop` steps in the
    /// kernel, keeps the verifier's work per step small. Returns false when the scan is over (the headers
    /// ended, or the window did).
    #[inline(always)]
    pub fn step<B: ByteWindow + ?Sized>(&mut self, b: &B) -> bool {
        let len = b.len();
        let pos = self.pos as usize;
        if self.done != 0 || pos >= len || pos >= SIP_WINDOW {
            self.done = 1;
            return false;
        }
        let line_start = self.in_line == 0;
        let c = b.at(pos);
        let blank = line_start && self.past_start != 0 && (c == b'\r' || c == b'\n');
        if line_start {
            self.start_line(b, pos, c);
        }
        // The next STEP_BYTES of the line, a word at a time: does
        // it end among them? (A '\n' found at or past the window's end is
        // none: what lies there is not the message's.)
        let mut nl = usize::MAX;
        let mut k = 0;
        while k < STEP_BYTES / 8 {
            let m = bytes_equal(b.word(pos + 8 * k), b'\n');
            if m != 0 {
                nl = pos + 8 * k + first_flagged(m);
                break;
            }
            k += 1;
        }
        let nl = b.launder(nl);
        if nl >= len {
            // Not in these words (or the window ends first): read on.
            self.in_line = 1;
            self.pos = (pos + STEP_BYTES) as u32;
            if pos + STEP_BYTES >= len {
                self.end_value(len);
                self.done = 1;
                return false;
            }
            return true;
        }
        if blank {
            // The blank line: the headers end after it.
            if self.body == 0 {
                self.body = nl as u32 + 1;
            }
            if self.sweep == 0 {
                self.done = 1;
                return false;
            }
        }
        // A value ends before the line's CR.
        let end = if nl > 0 && b.at(nl - 1) == b'\r' { nl - 1 } else { nl };
        self.end_value(end);
        self.in_line = 0;
        self.pos = nl as u32 + 1;
        if nl + 1 >= len {
            self.done = 1;
            return false;
        }
        true
    }

    /// A line starts at `pos` (its first byte `c`): which header is it?
    #[inline(always)]
    fn start_line<B: ByteWindow + ?Sized>(&mut self, b: &B, pos: usize, c: u8) {
        self.pending = hdr::NONE;
        if self.past_start == 0 {
            // CR/LF before the start line are ignored (RFC 3261 7.5); they
            // never end the headers.
            if c != b'\r' && c != b'\n' {
                self.past_start = 1;
            }
            return;
        }
        if c == b'\r' || c == b'\n' {
            return;
        }
        if c == b' ' || c == b'\t' {
            // A folded line continues the header before it (past the first
            // message's headers, in a sweep, nothing is recorded).
            if self.body == 0 {
                self.pending = self.last;
            }
            return;
        }
        let (h, value) = header_at(b, pos);
        if self.body != 0 {
            // (sweep) Past the first message's headers.
            let w = b.word(pos) | LOWER;
            if w == lit(b"register") && b.at(pos + 8) == b' ' {
                self.later |= later::REGISTER;
            } else if w & low(7) == lit(b"invite ") {
                self.later |= later::INVITE;
            } else if h == hdr::CREDENTIALS {
                self.later |= later::CREDENTIALS;
            }
            return;
        }
        self.last = h;
        let v = value as u32;
        match h {
            hdr::CALL_ID => {
                self.call_id = Span { start: v, end: v };
                self.pending = h;
            }
            hdr::CSEQ => self.cseq = v,
            hdr::CONTENT_LENGTH => self.content_length = v,
            hdr::CREDENTIALS if self.credentials.start == 0 => {
                self.credentials = Span { start: v, end: v };
                self.pending = h;
            }
            hdr::CREDENTIALS => self.several_credentials = 1,
            hdr::CHALLENGE if self.challenge.start == 0 => {
                self.challenge = Span { start: v, end: v };
                self.pending = h;
            }
            _ => {}
        }
    }

    /// The value of the header being read ends at `end` (so far).
    #[inline(always)]
    fn end_value(&mut self, end: usize) {
        let end = end as u32;
        match self.pending {
            hdr::CALL_ID => self.call_id.end = end,
            hdr::CREDENTIALS => self.credentials.end = end,
            hdr::CHALLENGE => self.challenge.end = end,
            _ => {}
        }
    }
}

/// What a digest header's parameters say.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DigestParams {
    pub username: Span,
    pub nonce: Span,
    /// `stale=true` (challenges).
    pub stale: u8,
    /// (credentials) A second `username`: which one the registrar uses is
    /// its own business, so the one kept is not proof of the identity.
    pub again: u8,
    pub _pad16: u16,
}

/// State of a scan of a digest header's comma-separated `name=value`
/// parameters, a word per [`ParamScan::step`] (or one event: a `=`, `,` or
/// closing quote). Only `username`, `nonce` and `stale` are kept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamScan {
    pub pos: u32,
    pub end: u32,
    /// Where the current parameter's name starts.
    pub name: u32,
    /// Where the current value starts.
    pub value: u32,
    /// [`param`] state.
    pub state: u8,
    /// Which parameter the value being read is (0: none we keep; 1:
    /// username, 2: nonce, 3: stale).
    pub which: u8,
    pub done: u8,
    /// Credentials: done once a username and a nonce are found (the first
    /// of each is kept), unless `thorough`. A challenge is read to its
    /// end, for `stale`.
    pub credentials: u8,
    /// Read credentials to their end too, for a second username
    /// ([`DigestParams::again`]): only a swept source pays for that.
    pub thorough: u8,
    pub params: DigestParams,
}

/// [`ParamScan::state`]s.
pub mod param {
    /// Reading a name, up to its `=` (or a `,`).
    pub const NAME: u8 = 0;
    /// Inside a quoted value, up to its closing quote.
    pub const QUOTED: u8 = 1;
    /// Inside a token value, up to the next `,`.
    pub const TOKEN: u8 = 2;
    /// After a quoted value, up to the next `,`.
    pub const AFTER: u8 = 3;
}

/// Most steps of a parameter scan: a credentials header of about 1 KB.
pub const MAX_PARAM_STEPS: usize = 160;

impl ParamScan {
    /// A scan of the header value `value` (after `Digest`, if present), of
    /// credentials or of a challenge.
    pub fn new<B: ByteWindow + ?Sized>(b: &B, value: Span, credentials: bool, thorough: bool) -> Self {
        let mut pos = b.launder(value.start as usize);
        if (b.word(pos) | LOWER) & low(7) == lit(b"digest ") {
            pos += 7;
        }
        Self {
            pos: pos as u32,
            end: value.end,
            name: pos as u32,
            credentials: credentials as u8,
            thorough: thorough as u8,
            ..Self::default()
        }
    }

    /// One word of the value, or one event in it. Returns false when done.
    #[inline(always)]
    pub fn step<B: ByteWindow + ?Sized>(&mut self, b: &B) -> bool {
        let (pos, end) = (self.pos as usize, self.end as usize);
        if self.done != 0 || pos >= end {
            self.done = 1;
            return false;
        }
        let w = b.word(pos);
        let m = match self.state {
            param::NAME => bytes_equal(w, b'=') | bytes_equal(w, b','),
            param::QUOTED => bytes_equal(w, b'"'),
            _ => bytes_equal(w, b','),
        };
        let at = b.launder(if m == 0 { usize::MAX } else { pos + first_flagged(m) });
        if at >= end {
            // Nothing in this word: read on (a token value may end with
            // the header).
            self.pos = (pos + 8) as u32;
            if pos + 8 >= end {
                if self.state == param::TOKEN {
                    self.keep(b, end);
                }
                self.done = 1;
                return false;
            }
            return true;
        }
        self.pos = at as u32 + 1;
        match self.state {
            param::NAME if b.at(at) == b'=' => {
                self.which = name_of(b, self.name as usize, at);
                let mut v = at + 1;
                let mut k = 0;
                while k < 4 && matches!(b.at(v), b' ' | b'\t') {
                    v += 1;
                    k += 1;
                }
                let v = b.launder(v);
                if b.at(v) == b'"' {
                    self.state = param::QUOTED;
                    self.value = v as u32 + 1;
                } else {
                    self.state = param::TOKEN;
                    self.value = v as u32;
                }
                self.pos = self.value;
            }
            param::QUOTED => {
                self.keep(b, at);
                self.state = param::AFTER;
            }
            param::TOKEN => {
                self.keep(b, at);
                self.state = param::NAME;
                self.name = at as u32 + 1;
            }
            // A ',' (between parameters, or after a quoted value).
            _ => {
                self.state = param::NAME;
                self.name = at as u32 + 1;
            }
        }
        true
    }

    /// The value being read ends at `end`.
    #[inline(always)]
    fn keep<B: ByteWindow + ?Sized>(&mut self, b: &B, end: usize) {
        let mut e = end;
        let mut k = 0;
        while k < 4 && e > self.value as usize && matches!(b.at(e - 1), b' ' | b'\t' | b'\r') {
            e -= 1;
            k += 1;
        }
        let value = Span { start: self.value, end: b.launder(e) as u32 };
        match self.which {
            1 if self.params.username.is_empty() => self.params.username = value,
            1 => self.params.again = 1,
            2 if self.params.nonce.is_empty() => self.params.nonce = value,
            3 => {
                let t = (b.word(value.start as usize) | LOWER) & low(4);
                self.params.stale = (t == lit(b"true") && value.end == value.start + 4) as u8;
            }
            _ => {}
        }
        self.which = 0;
        if self.credentials != 0
            && self.thorough == 0
            && !self.params.username.is_empty()
            && !self.params.nonce.is_empty()
        {
            self.done = 1;
        }
    }
}

/// Which kept parameter the name in `[from, eq)` is (white space around it
/// allowed): 1 username, 2 nonce, 3 stale, 0 another.
#[inline(always)]
fn name_of<B: ByteWindow + ?Sized>(b: &B, from: usize, eq: usize) -> u8 {
    let mut t = from;
    let mut k = 0;
    while k < 8 && t < eq && matches!(b.at(t), b' ' | b'\t' | b'\r' | b'\n') {
        t += 1;
        k += 1;
    }
    let t = b.launder(t);
    let mut e = eq;
    let mut k = 0;
    while k < 4 && e > t && matches!(b.at(e - 1), b' ' | b'\t') {
        e -= 1;
        k += 1;
    }
    let n = b.launder(e).wrapping_sub(t);
    let w = b.word(t) | LOWER;
    if n == 8 && w == lit(b"username") {
        1
    } else if n == 5 && w & low(5) == lit(b"nonce") {
        2
    } else if n == 5 && w & low(5) == lit(b"stale") {
        3
    } else {
        0
    }
}

/// The low `n` bytes of a word for any `n` (0 below 0, all from 8 on),
/// without a branch.
#[inline(always)]
const fn low_sat(n: i64) -> u64 {
    let n = n & !(n >> 63); // max(n, 0)
    let over = 8 - n;
    let n = 8 - (over & !(over >> 63)); // min(n, 8)
    let half = (4 * n) as u32;
    !((u64::MAX << half) << half)
}

/// Most bytes of a value [`value_hash`] reads (with its length, enough to
/// tell Call-IDs and nonces apart).
pub const HASHED_VALUE: usize = 64;

/// A hash of the first [`HASHED_VALUE`] bytes of `span` and its length, for
/// telling values apart (Call-IDs, nonces), not for secrecy. A fixed number
/// of word steps without a branch, so the kernel's verifier walks one path;
/// the host and the kernel get the same value.
#[inline(always)]
pub fn value_hash<B: ByteWindow + ?Sized>(b: &B, span: Span) -> u64 {
    let (start, end) = (b.launder(span.start as usize), b.launder(span.end as usize));
    if end <= start {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (end - start) as u64;
    // Laundered, so the compiler keeps a loop instead of unrolling it into
    // eight words held at once (272 bytes of the kernel's small stack).
    let steps = b.launder(HASHED_VALUE / 8);
    let mut k = 0;
    while k < HASHED_VALUE / 8 && k < steps {
        let at = start + 8 * k;
        let w = b.word(at) & low_sat(end as i64 - at as i64);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
        k += 1;
    }
    // Never 0: 0 means "none".
    h | 1
}

/// Flags (as [`bytes_equal`]) on the bytes of `w` that are not ASCII digits.
#[inline(always)]
const fn non_digits(w: u64) -> u64 {
    let t = w ^ 0x3030_3030_3030_3030;
    // A digit is now 0..=9: adding 0x76 sets the high bit from 10 on (no
    // carry between bytes from the masked low 7 bits); a byte already over
    // 0x7f is no digit either.
    (((t & 0x7f7f_7f7f_7f7f_7f7f) + 0x7676_7676_7676_7676) | t) & 0x8080_8080_8080_8080
}

/// The decimal number at `at` (at most 8 digits: more are read as the
/// first 8), and the offset after its digits. Word at a time, no branch.
#[inline(always)]
pub fn number_at<B: ByteWindow + ?Sized>(b: &B, at: usize) -> (u32, usize) {
    let at = b.launder(at);
    let w = b.word(at);
    let nd = non_digits(w);
    let digits = if nd == 0 { 8 } else { first_flagged(nd) };
    let t = w ^ 0x3030_3030_3030_3030;
    let mut n: u64 = 0;
    let mut i = 0;
    while i < 8 {
        let d = (t >> (8 * i)) & 0xff;
        // All ones while i < digits.
        let keep = ((i as i64 - digits as i64) >> 63) as u64;
        n = ((n * 10 + d) & keep) | (n & !keep);
        i += 1;
    }
    (n as u32, b.launder(at + digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(msg: &[u8]) -> LineScan {
        let mut s = LineScan::new(0);
        let mut n = 0;
        while n < MAX_LINE_STEPS && s.step(msg) {
            n += 1;
        }
        s
    }

    fn text(msg: &[u8], s: Span) -> &[u8] {
        &msg[s.start as usize..s.end as usize]
    }

    fn params(msg: &[u8], value: Span) -> DigestParams {
        let mut p = ParamScan::new(msg, value, false, false);
        let mut n = 0;
        while n < MAX_PARAM_STEPS && p.step(msg) {
            n += 1;
        }
        p.params
    }

    #[test]
    fn byte_search_is_exact() {
        for i in 0..8 {
            let mut w = [b'a'; 8];
            w[i] = b'\n';
            let m = bytes_equal(u64::from_le_bytes(w), b'\n');
            assert_eq!(first_flagged(m), i);
        }
        assert_eq!(bytes_equal(u64::from_le_bytes(*b"abcdefgh"), b'\n'), 0);
        // 0x0b after a match must not be flagged as a match (borrow).
        let m = bytes_equal(u64::from_le_bytes([b'\n', 0x0b, 0, 0, 0, 0, 0, 0]), b'\n');
        assert_eq!(m.count_ones(), 1);
    }

    #[test]
    fn headers_and_values() {
        let msg = b"REGISTER sip:edge.example SIP/2.0\r\n\
            Via: SIP/2.0/UDP 198.51.100.10;branch=z9hG4bK1\r\n\
            CALL-ID : abc@198.51.100.10\r\n\
            cseq:  7 REGISTER\r\n\
            Proxy-Authorization: Digest username=\"1001\", realm=\"edge.example\",\r\n  \
            nonce = \"n0nce\", uri=\"sip:edge.example\", response=\"x\"\r\n\
            l: 0\r\n\r\nbody";
        let s = scan(msg);
        assert!(s.complete());
        assert_eq!(&msg[s.body as usize..], b"body");
        assert_eq!(text(msg, s.call_id), b"abc@198.51.100.10");
        assert_eq!(number_at(msg.as_slice(), s.cseq as usize).0, 7);
        assert_eq!(number_at(msg.as_slice(), s.content_length as usize).0, 0);
        let p = params(msg, s.credentials);
        assert_eq!(text(msg, p.username), b"1001");
        assert_eq!(text(msg, p.nonce), b"n0nce", "found on the folded line");
    }

    #[test]
    fn challenges_and_stale() {
        let msg = b"SIP/2.0 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"e\", nonce=\"abc\", stale=TRUE, qop=\"auth\"\r\ni: x\r\n\r\n";
        let s = scan(msg);
        let p = params(msg, s.challenge);
        assert_eq!((text(msg, p.nonce), p.stale), (b"abc".as_slice(), 1));
        assert_eq!(text(msg, s.call_id), b"x", "compact form");
        let not_stale = b"SIP/2.0 401 U\r\nWWW-Authenticate: Digest nonce=\"abc\", stale=false\r\n\r\n";
        assert_eq!(params(not_stale, scan(not_stale).challenge).stale, 0);
    }

    #[test]
    fn names_that_only_start_alike_are_not_headers() {
        let msg = b"INVITE sip:x SIP/2.0\r\nCall-IDs: no\r\nAuthorizationx: no\r\nIn-Reply-To: no\r\n\r\n";
        let s = scan(msg);
        assert_eq!((s.call_id, s.credentials), (Span::default(), Span::default()));
    }

    #[test]
    fn blank_lines_before_the_start_line_do_not_end_the_headers() {
        let msg = b"\r\n\r\nREGISTER sip:x SIP/2.0\r\nAuthorization: Digest username=\"a\"\r\n\r\n";
        let s = scan(msg);
        assert!(s.complete() && !s.credentials.is_empty());
    }

    #[test]
    fn long_lines_and_cut_headers() {
        let mut msg = b"REGISTER sip:x SIP/2.0\r\nAuthorization: Digest response=\"".to_vec();
        msg.extend(core::iter::repeat_n(b'a', 600));
        msg.extend_from_slice(b"\", username=\"bob\"\r\nCall-ID: c\r\n\r\n");
        let s = scan(&msg);
        assert!(s.complete());
        assert_eq!(text(&msg, s.call_id), b"c");
        assert!(s.credentials.end as usize > 600);
        // The username after a 600-byte parameter is still found.
        assert_eq!(text(&msg, params(&msg, s.credentials).username), b"bob");
        let cut = &msg[..40];
        let s = scan(cut);
        assert!(!s.complete());
    }

    #[test]
    fn value_hashes_tell_values_apart() {
        let a = b"abcdefghijk";
        let h = |s: &[u8], start, end| value_hash(s, Span { start, end });
        assert_ne!(h(a, 0, 11), h(a, 0, 10));
        assert_eq!(h(a, 1, 9), h(b"xbcdefghiz".as_slice(), 1, 9));
        assert_eq!(h(a, 3, 3), 0);
    }
}
