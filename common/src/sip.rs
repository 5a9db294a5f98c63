//! Just enough SIP, over a bounded window of a message, for counting fraud:
//! the method, the Request-URI scheme and dialled number, whether
//! credentials are present, and for responses the status and CSeq method.
//!
//! Nothing is stored: the dialled number only lives in a [`Number`] on the
//! stack until [`crate::number::classify`] has turned it into a class and a
//! country code. Every loop has a constant bound and every read goes through
//! [`ByteWindow::at`], which the kernel implements with a masked index into a
//! fixed scratch buffer, so the verifier sees no unchecked access.

use crate::headers::{
    LineScan, MAX_LINE_STEPS, MAX_PARAM_STEPS, ParamScan, Span, later, number_at, value_hash,
};

/// Bytes of a message examined. A power of two, so the kernel can mask.
pub const SIP_WINDOW: usize = 2048;
/// Longest method token.
pub const MAX_METHOD_LEN: usize = 16;
/// Longest Request-URI user part examined.
pub const MAX_USER_LEN: usize = 64;
/// Most digits of a dialled number (E.164 allows 15, plus an access
/// prefix); 19 digits always fit in a u64.
pub const MAX_DIGITS: usize = 19;
/// Leading CR/LF bytes skipped (RFC 5626 keep-alives, stray line ends).
pub const MAX_LEADING_CRLF: usize = 4;

/// Random access to the first bytes of a message.
pub trait ByteWindow {
    /// Bytes available, at most [`SIP_WINDOW`].
    fn len(&self) -> usize;
    /// The byte at `i`, or 0 past the end.
    fn at(&self, i: usize) -> u8;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The 8 bytes from `i` as a little-endian word; bytes at or past
    /// [`Self::len`] read as 0. The kernel overrides this with one load.
    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        let mut w = 0u64;
        let mut k = 0;
        while k < 8 {
            w |= (self.at(i + k) as u64) << (8 * k);
            k += 1;
        }
        w
    }
    /// `v`, unchanged. The kernel passes it through map memory, whose
    /// contents the verifier does not track: the paths out of a search loop
    /// (one per iteration it may stop at) then carry the same unknown value
    /// and are checked once from there on, instead of once each.
    #[inline(always)]
    fn launder(&self, v: usize) -> usize {
        v
    }
    /// The start line of the window ([`start_line`]). The kernel reads it
    /// in a callback of its own and hands the summary back through map
    /// memory: the paths through the start line (one per way it can be
    /// read) then reach the rest as one.
    #[inline(always)]
    fn start(&self) -> SipSummary {
        start_line(self)
    }
    /// The hash of the value in `span` ([`value_hash`]). The kernel
    /// computes this, [`Self::cseq`] and [`Self::number`] each in a
    /// callback of its own, so that the paths through their loops do not
    /// multiply with the rest of the program's in the verifier.
    #[inline(always)]
    fn hash(&self, span: Span) -> u64 {
        value_hash(self, span)
    }
    /// The CSeq value at `at`: its number and method ([`cseq_at`]).
    #[inline(always)]
    fn cseq(&self, at: usize) -> (u32, u8) {
        cseq_at(self, at)
    }
    /// The decimal number at `at` ([`number_at`]).
    #[inline(always)]
    fn number(&self, at: usize) -> u32 {
        number_at(self, at).0
    }
    /// Runs a line scan to its end, one line per [`LineScan::step`]; the
    /// kernel overrides it with `bpf_loop`.
    #[inline(always)]
    fn scan_lines(&self, mut scan: LineScan) -> LineScan {
        let mut n = 0;
        while n < MAX_LINE_STEPS {
            if !scan.step(self) {
                break;
            }
            n += 1;
        }
        scan
    }
    /// Runs a digest parameter scan to its end, likewise.
    #[inline(always)]
    fn scan_params(&self, mut scan: ParamScan) -> ParamScan {
        let mut n = 0;
        while n < MAX_PARAM_STEPS {
            if !scan.step(self) {
                break;
            }
            n += 1;
        }
        scan
    }
    /// Runs a Request-URI number scan (at most [`MAX_USER_SCAN`] bytes of
    /// the user part) to its end; the kernel overrides it with `bpf_loop` for
    /// the same reason as [`Self::scan_headers`].
    #[inline(always)]
    fn scan_user(&self, mut scan: UserScan) -> UserScan {
        let mut pos = 0;
        while pos < MAX_USER_SCAN {
            if !scan.step(self, pos) {
                break;
            }
            pos += 1;
        }
        scan
    }
}

impl ByteWindow for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self).min(SIP_WINDOW)
    }
    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        if i < SIP_WINDOW { self.get(i).copied().unwrap_or(0) } else { 0 }
    }
}

/// What a message is. `u8` constants because they cross into BPF maps.
pub mod kind {
    /// No payload (e.g. a bare TCP ACK): not counted.
    pub const EMPTY: u8 = 0;
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    /// Only CR/LF: a keep-alive.
    pub const KEEPALIVE: u8 = 3;
    /// On a SIP port but not the start of a SIP message we can read (a TCP
    /// continuation segment, garbage, or headers cut off before what we need).
    pub const UNPARSED: u8 = 4;
}

pub mod method {
    pub const NONE: u8 = 0;
    pub const REGISTER: u8 = 1;
    pub const INVITE: u8 = 2;
    pub const ACK: u8 = 3;
    pub const BYE: u8 = 4;
    pub const CANCEL: u8 = 5;
    pub const OPTIONS: u8 = 6;
    pub const OTHER: u8 = 7;
    pub const COUNT: usize = 8;

    pub const NAMES: [&str; COUNT] =
        ["none", "register", "invite", "ack", "bye", "cancel", "options", "other"];
}

pub mod scheme {
    pub const NONE: u8 = 0;
    pub const SIP: u8 = 1;
    pub const SIPS: u8 = 2;
    pub const TEL: u8 = 3;
    pub const OTHER: u8 = 4;
}

/// A dialled number, visual separators removed, as its digits' value and
/// count (leading zeros are implied by the count). Transient. Kept as
/// integers rather than a digit array so the kernel's verifier never sees a
/// store at a data-dependent index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Number {
    pub value: u64,
    pub len: u8,
    /// Written with a leading '+' (global number).
    pub plus: bool,
    /// The user part was a number at all (only digits, '+' first, and the
    /// visual separators `-`, `.`, `(`, `)`).
    pub valid: bool,
    // Explicit padding: the kernel copies summaries a word at a time, and
    // a padding byte read that way is undefined (LLVM then emits reads of
    // registers never written, which the verifier refuses).
    pub _pad8: u8,
    pub _pad32: u32,
}

const POW10: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// 10^e for e in 0..=19 (saturating at 10^19). A table lookup rather than a
/// loop: a loop with a data-dependent exit multiplies the paths the kernel's
/// verifier has to walk through everything after it.
#[inline(always)]
pub fn pow10(e: u8) -> u64 {
    POW10[(e as usize).min(19)]
}

impl Number {
    pub const NONE: Self = Self { value: 0, len: 0, plus: false, valid: false, _pad8: 0, _pad32: 0 };

    /// The value of the first `k` digits (`k <= len`).
    #[inline(always)]
    pub fn leading(&self, k: u8) -> u64 {
        // checked_*: no panic path for the kernel (pow10 is never 0).
        if k > self.len { 0 } else { self.value.checked_div(pow10(self.len - k)).unwrap_or(0) }
    }

    /// The value of the digits after the first `skip`.
    #[inline(always)]
    pub fn trailing_after(&self, skip: u8) -> u64 {
        if skip >= self.len { 0 } else { self.value.checked_rem(pow10(self.len - skip)).unwrap_or(0) }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipSummary {
    pub kind: u8,
    /// Request method (requests only).
    pub method: u8,
    /// Request-URI scheme (requests only).
    pub scheme: u8,
    /// An Authorization or Proxy-Authorization header is present (every
    /// request but ACK and CANCEL is read for it).
    pub has_auth: bool,
    /// Response status code (responses only).
    pub status: u16,
    /// Method named in CSeq.
    pub cseq_method: u8,
    /// What a sweep of the whole window found ([`sweep`] bits; only for
    /// restricted sources, see [`parse_with`]).
    pub sweep: u8,
    /// The Request-URI's user part as a number (requests only).
    pub number: Number,
    /// The CSeq number (0: none found).
    pub cseq: u32,
    /// A challenge (401/407) with `stale=true`: a retry with a fresh nonce
    /// is asked for, not a wrong password.
    pub stale: bool,
    // Explicit padding as scalars: a zeroed array would be a memset call,
    // which the kernel's verifier walks byte by byte.
    pub _pad8: u8,
    pub _pad16: u16,
    /// Hash of the Call-ID value (0: none). With [`Self::cseq`] and
    /// [`Self::cseq_method`] it names the transaction a response answers.
    pub call_id: u64,
    /// Hash of the nonce the credentials answer (0: none).
    pub auth_nonce: u64,
    /// Hash of the nonce a 401/407 challenge issues (0: none).
    pub challenge_nonce: u64,
    /// Where the digest username is, in the window (empty: none). Only its
    /// keyed hash is ever kept ([`crate::hash`]).
    pub username: Span,
    /// Offset of the body: just past the blank line ending the headers (0:
    /// the headers did not end in the window).
    pub body: u32,
    /// The Content-Length value (0 when absent).
    pub content_length: u32,
}

/// Bits of [`SipSummary::sweep`]: what a restricted source's packet might
/// carry beyond its first message, where the kernel reads no further.
pub mod sweep {
    /// The window was swept (the source is restricted).
    pub const SWEPT: u8 = 1;
    /// A line after the first starts like a REGISTER request.
    pub const LATER_REGISTER: u8 = 2;
    /// A line after the first starts like an INVITE request.
    pub const LATER_INVITE: u8 = 4;
    /// The first message's headers do not end inside the window: a
    /// credential could follow in the part not seen (a later segment or IP
    /// fragment, or past the window).
    pub const HEADERS_OPEN: u8 = 8;
    /// Only the start line was read: a request other than REGISTER whose
    /// credentials could not count (see [`parse_with`]'s `requests`).
    pub const START_ONLY: u8 = 16;
    /// More than one credentials header (Authorization and
    /// Proxy-Authorization, or two of one), a second `username` in one
    /// (looked for only when swept), or one too long to read to its end:
    /// only the first username is read, and the registrar may use another.
    pub const SEVERAL_CREDENTIALS: u8 = 1 << 5;
}

impl SipSummary {
    pub const fn of_kind(kind: u8) -> Self {
        Self {
            kind,
            method: method::NONE,
            scheme: scheme::NONE,
            has_auth: false,
            status: 0,
            cseq_method: method::NONE,
            sweep: 0,
            number: Number::NONE,
            cseq: 0,
            stale: false,
            _pad8: 0,
            _pad16: 0,
            call_id: 0,
            auth_nonce: 0,
            challenge_nonce: 0,
            username: Span { start: 0, end: 0 },
            body: 0,
            content_length: 0,
        }
    }
}

#[inline(always)]
fn lower(c: u8) -> u8 {
    if c.is_ascii_uppercase() { c + 32 } else { c }
}

/// Whether `lit` (lower case) is at `at`, compared case-insensitively.
#[inline(always)]
fn starts_with_ci<B: ByteWindow + ?Sized>(b: &B, at: usize, lit: &[u8]) -> bool {
    let mut i = 0;
    while i < lit.len() {
        if lower(b.at(at + i)) != lit[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `lit` is at `at`, exactly.
#[inline(always)]
fn starts_with<B: ByteWindow + ?Sized>(b: &B, at: usize, lit: &[u8]) -> bool {
    let mut i = 0;
    while i < lit.len() {
        if b.at(at + i) != lit[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The method token at `at` and its length, or `None` if it is not one.
#[inline(always)]
fn method_at<B: ByteWindow + ?Sized>(b: &B, at: usize) -> Option<(u8, usize)> {
    const KNOWN: [(&[u8], u8); 6] = [
        (b"REGISTER", method::REGISTER),
        (b"INVITE", method::INVITE),
        (b"ACK", method::ACK),
        (b"BYE", method::BYE),
        (b"CANCEL", method::CANCEL),
        (b"OPTIONS", method::OPTIONS),
    ];
    let mut len = 0;
    while len < MAX_METHOD_LEN && b.at(at + len).is_ascii_uppercase() {
        len += 1;
    }
    if len == 0 || len == MAX_METHOD_LEN {
        return None;
    }
    let mut k = 0;
    while k < KNOWN.len() {
        let (name, code) = KNOWN[k];
        if name.len() == len && starts_with(b, at, name) {
            return Some((code, len));
        }
        k += 1;
    }
    Some((method::OTHER, len))
}

/// Parses the start line and, where needed, the headers.
#[inline(always)]
pub fn parse<B: ByteWindow + ?Sized>(b: &B) -> SipSummary {
    parse_with(b, false, true)
}

/// Like [`parse`]; with `sweep_all`, the whole window is also swept (see
/// [`LineScan::sweep`]) for credentials in any request and for REGISTER or
/// INVITE start lines after the first message, with the result in
/// [`SipSummary::sweep`]. The kernel asks for that only for restricted
/// sources: what it cannot prove harmless for their restriction is dropped.
///
/// Without `requests`, the headers of a request other than REGISTER or
/// INVITE are not read (marked [`sweep::START_ONLY`]): the kernel asks for
/// that for a UDP request from a source the registrar has not challenged
/// within the nonce horizon, whose credentials could only be unbound. A
/// REGISTER, an INVITE (its Call-ID and CSeq count calls) and every
/// response are always read.
#[inline(always)]
pub fn parse_with<B: ByteWindow + ?Sized>(b: &B, sweep_all: bool, requests: bool) -> SipSummary {
    let mut summary = b.start();
    let k = summary.kind;
    // ACK and CANCEL are never challenged; every other request may carry
    // credentials, whose rejection is a failure. Every response is read
    // for its transaction. One scan reads them (and sweeps, when asked).
    let challengeable =
        k == kind::REQUEST && summary.method != method::ACK && summary.method != method::CANCEL;
    // An INVITE is always read for its Call-ID and CSeq: an international
    // call attempt is counted once, not once per retransmission or retry.
    let counted = summary.method == method::INVITE;
    if challengeable && !requests && !sweep_all && summary.method != method::REGISTER && !counted {
        summary.sweep = sweep::START_ONLY;
        return summary;
    }
    let read = challengeable
        || k == kind::RESPONSE
        || (sweep_all && k == kind::UNPARSED)
        || (sweep_all && k == kind::REQUEST);
    if !read {
        return summary;
    }
    let lines = b.scan_lines(if sweep_all { LineScan::sweep() } else { LineScan::new(0) });
    // What is needed of the scan, so that it can go before the parameters
    // are read (the kernel's stack is small).
    let (complete, later_bits, body) = (lines.complete(), lines.later, lines.body);
    // Branch-free (and below), so the verifier keeps one state for both.
    let mut several = (lines.several_credentials & 1) << 5;
    let (call_id, cseq_at, length_at) = (lines.call_id, lines.cseq, lines.content_length);
    let has_auth = !lines.credentials.is_empty();
    let challenge = k == kind::RESPONSE && (summary.status == 401 || summary.status == 407);
    let digest = if challenge { lines.challenge } else { lines.credentials };
    // The transaction matters for a response and for a request with
    // credentials (pairing) or a call (counting); Content-Length for
    // framing a TCP stream.
    if k == kind::RESPONSE || has_auth || (k == kind::REQUEST && counted) {
        summary.call_id = b.hash(call_id);
        if cseq_at != 0 {
            (summary.cseq, summary.cseq_method) = b.cseq(cseq_at as usize);
        }
    }
    if length_at != 0 {
        summary.content_length = b.number(length_at as usize);
    }
    summary.body = body;
    summary.has_auth = has_auth;
    if (challenge || k == kind::REQUEST) && !digest.is_empty() {
        let scan = b.scan_params(ParamScan::new(b, digest, !challenge, sweep_all));
        let p = scan.params;
        let nonce = b.hash(p.nonce);
        // A second username (looked for when swept), or a header too long
        // to read to its end: the identity kept may not be the one the
        // registrar uses.
        if !challenge {
            several |= ((p.again | (scan.done ^ 1)) & 1) << 5;
        }
        if challenge {
            summary.challenge_nonce = nonce;
            summary.stale = p.stale != 0;
        } else {
            summary.username = p.username;
            summary.auth_nonce = nonce;
        }
    }
    let mut swept = 0;
    if sweep_all {
        summary.has_auth |= later_bits & later::CREDENTIALS != 0;
        swept = sweep::SWEPT
            | if later_bits & later::REGISTER != 0 { sweep::LATER_REGISTER } else { 0 }
            | if later_bits & later::INVITE != 0 { sweep::LATER_INVITE } else { 0 }
            | if complete { 0 } else { sweep::HEADERS_OPEN };
    }
    summary.sweep = swept | several;
    // Every response has a CSeq: without it, it cannot be attributed. A
    // REGISTER whose headers did not end in the window may have its
    // credentials in the part not seen: do not guess.
    let unreadable = (k == kind::RESPONSE && summary.cseq_method == method::NONE)
        || (k == kind::REQUEST && summary.method == method::REGISTER && !summary.has_auth && !complete);
    if unreadable {
        return SipSummary { sweep: swept, ..SipSummary::of_kind(kind::UNPARSED) };
    }
    summary
}

/// The start line of the first message of the window: its kind, and the
/// method, scheme and dialled number of a request or the status of a
/// response.
#[inline(always)]
pub fn start_line<B: ByteWindow + ?Sized>(b: &B) -> SipSummary {
    let len = b.len();
    if len == 0 {
        return SipSummary::of_kind(kind::EMPTY);
    }
    let mut start = 0;
    while start < MAX_LEADING_CRLF && start < len && matches!(b.at(start), b'\r' | b'\n') {
        start += 1;
    }
    if start == len {
        return SipSummary::of_kind(kind::KEEPALIVE);
    }
    if starts_with(b, start, b"SIP/2.0 ") { status_line(b, start + 8) } else { request_line(b, start) }
}

#[inline(always)]
fn status_line<B: ByteWindow + ?Sized>(b: &B, at: usize) -> SipSummary {
    let (d0, d1, d2) = (b.at(at), b.at(at + 1), b.at(at + 2));
    if !(d0.is_ascii_digit() && d1.is_ascii_digit() && d2.is_ascii_digit()) || b.at(at + 3) != b' ' {
        return SipSummary::of_kind(kind::UNPARSED);
    }
    let status = (d0 - b'0') as u16 * 100 + (d1 - b'0') as u16 * 10 + (d2 - b'0') as u16;
    if !(100..700).contains(&status) {
        return SipSummary::of_kind(kind::UNPARSED);
    }
    SipSummary { status, ..SipSummary::of_kind(kind::RESPONSE) }
}

#[inline(always)]
fn request_line<B: ByteWindow + ?Sized>(b: &B, at: usize) -> SipSummary {
    let Some((method, mlen)) = method_at(b, at) else {
        return SipSummary::of_kind(kind::UNPARSED);
    };
    let uri = at + mlen + 1;
    if b.at(at + mlen) != b' ' || !b.at(uri).is_ascii_alphabetic() {
        return SipSummary::of_kind(kind::UNPARSED);
    }
    let mut summary = SipSummary { method, ..SipSummary::of_kind(kind::REQUEST) };
    // The dialled number only matters for INVITE.
    if method == method::INVITE {
        let scheme = if starts_with_ci(b, uri, b"sip:") {
            scheme::SIP
        } else if starts_with_ci(b, uri, b"sips:") {
            scheme::SIPS
        } else if starts_with_ci(b, uri, b"tel:") {
            scheme::TEL
        } else {
            scheme::OTHER
        };
        summary.scheme = scheme;
        if scheme != scheme::OTHER {
            let user = uri + if scheme == scheme::SIPS { 5 } else { 4 };
            summary.number = uri_number(b, scheme == scheme::TEL, user);
        }
    }
    summary
}

/// Reads the dialled number of a Request-URI, one byte per
/// [`UserScan::step`], from the first byte after the scheme's ':' (`start`;
/// the kernel keeps the scan in a map value, so the offset costs its
/// verifier nothing). For sip:/sips: the number is the user part, which
/// exists only if '@' comes before the end of the URI, up to any ';'
/// parameters; for tel: the number up to its parameters. A number is an
/// optional leading '+', digits, and the visual separators `-`, `.`, `(`,
/// `)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserScan {
    /// Where the user part starts.
    pub start: u32,
    /// The next byte is the user part's first.
    pub at_user_start: bool,
    /// tel: URI (no '@' to wait for).
    pub tel: bool,
    /// Past a ';': parameters, not digits.
    pub in_params: bool,
    /// sip:/sips: the '@' ending the user part was seen.
    pub has_user: bool,
    pub done: bool,
    // Explicit padding (see Number's).
    pub _pad8: u8,
    pub _pad16: u16,
    pub _pad32: u32,
    pub number: Number,
}

/// Most bytes a user part scan reads: the longest user part and the byte
/// that ends it.
pub const MAX_USER_SCAN: usize = MAX_USER_LEN + 1;

impl UserScan {
    pub fn new(tel: bool, start: usize) -> Self {
        Self {
            start: start as u32,
            at_user_start: true,
            tel,
            in_params: false,
            has_user: false,
            done: false,
            _pad8: 0,
            _pad16: 0,
            _pad32: 0,
            number: Number { valid: true, ..Number::NONE },
        }
    }

    /// Examines the byte `i` bytes into the user part; steps must come in
    /// order from 0. Returns false when the scan is over.
    #[inline(always)]
    pub fn step<B: ByteWindow + ?Sized>(&mut self, b: &B, i: usize) -> bool {
        if self.done {
            return false;
        }
        let c = b.at(self.start as usize + i);
        let first = self.at_user_start;
        self.at_user_start = false;
        match c {
            // The end of the URI (or of the window: a number cut off there
            // may be incomplete, so it is not a number).
            b' ' | b'>' | b'\r' | b'\n' | b'?' | 0 => {
                self.done = true;
                if c == 0 {
                    self.number.valid = false;
                }
            }
            b'@' if !self.tel => {
                self.has_user = true;
                self.done = true;
            }
            b';' => {
                self.in_params = true;
                if self.tel {
                    self.done = true;
                }
            }
            _ if self.in_params => {}
            b'+' if first => self.number.plus = true,
            b'0'..=b'9' => {
                if (self.number.len as usize) < MAX_DIGITS {
                    self.number.value = self.number.value * 10 + (c - b'0') as u64;
                    self.number.len += 1;
                } else {
                    self.number.valid = false;
                }
            }
            b'-' | b'.' | b'(' | b')' => {}
            _ => self.number.valid = false,
        }
        !self.done
    }

    /// The number, if the user part was one.
    pub fn finish(&self) -> Number {
        let n = self.number;
        if !self.done || !n.valid || n.len == 0 || (!self.tel && !self.has_user) {
            return Number::NONE;
        }
        n
    }
}

/// The dialled number of the request whose start line begins the window.
#[inline(always)]
fn uri_number<B: ByteWindow + ?Sized>(b: &B, tel: bool, start: usize) -> Number {
    b.scan_user(UserScan::new(tel, start)).finish()
}

/// A CSeq value (`1 REGISTER`): its number and method, or `(0, NONE)`.
#[inline(always)]
pub fn cseq_at<B: ByteWindow + ?Sized>(b: &B, at: usize) -> (u32, u8) {
    let (n, after) = number_at(b, at);
    let m = cseq_method(b, at);
    if after > at && m != method::NONE { (n, m) } else { (0, method::NONE) }
}

/// The method in a CSeq value (`1 REGISTER`), or NONE: digits, white
/// space, a method name ending in white space or the line's end. Word at a
/// time: a handful of paths for the verifier.
#[inline(always)]
fn cseq_method<B: ByteWindow + ?Sized>(b: &B, at: usize) -> u8 {
    let (_, after) = number_at(b, at);
    if after == at {
        return method::NONE;
    }
    let ws = b.word(after);
    let gap = crate::headers::first_flagged(!crate::headers::white(ws) & 0x8080_8080_8080_8080);
    if gap == 0 {
        return method::NONE;
    }
    let m = b.launder(after + gap);
    let w = b.word(m);
    let named = |lit: u64, n: usize| {
        (w & ((1u64 << (8 * n)) - 1)) == lit && matches!(b.at(m + n), b' ' | b'\t' | b'\r' | b'\n' | 0)
    };
    let lit = |s: &[u8]| {
        let mut v = 0u64;
        let mut i = 0;
        while i < s.len() {
            v |= (s[i] as u64) << (8 * i);
            i += 1;
        }
        v
    };
    if w == lit(b"REGISTER") && matches!(b.at(m + 8), b' ' | b'\t' | b'\r' | b'\n' | 0) {
        method::REGISTER
    } else if named(lit(b"INVITE"), 6) {
        method::INVITE
    } else if named(lit(b"ACK"), 3) {
        method::ACK
    } else if named(lit(b"BYE"), 3) {
        method::BYE
    } else if named(lit(b"CANCEL"), 6) {
        method::CANCEL
    } else if named(lit(b"OPTIONS"), 7) {
        method::OPTIONS
    } else if w & 0xff >= b'A' as u64 && w & 0xff <= b'Z' as u64 {
        method::OTHER
    } else {
        method::NONE
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{
        corpus::{CORPUS, TableCodes, japan},
        number::{class, classify},
    };

    /// The number of a tel: URI (terminated by a space).
    fn number(s: &str) -> Number {
        uri_number(std::format!("INVITE tel:{s} SIP/2.0").as_bytes(), true, 11)
    }

    #[test]
    fn a_number_cut_off_by_the_window_is_not_a_number() {
        assert!(!uri_number(b"INVITE tel:+2327612".as_slice(), true, 11).valid);
        assert!(uri_number(b"INVITE sip:+2327612@".as_slice(), false, 11).valid);
        assert_eq!(
            uri_number(b"INVITE sip:2327612 SIP/2.0".as_slice(), false, 11),
            Number::NONE,
            "no '@': a host, not a user"
        );
    }

    #[test]
    fn numbers_and_separators() {
        let n = number("+1-(876)-555.0100");
        assert!(n.valid && n.plus);
        assert_eq!((n.value, n.len), (18765550100, 11));
        assert!(!number("alice").valid);
        assert!(!number("*67").valid);
        assert!(!number("+").valid, "a lone plus is not a number");
        assert!(!number("12+34").valid, "plus only first");
        assert!(!number(&"9".repeat(MAX_DIGITS + 1)).valid, "too many digits");
        let n = number("0312345678;phone-context=x");
        assert_eq!((n.value, n.len), (312345678, 10), "the leading zero is kept in the count");
        assert_eq!((n.leading(1), n.leading(3), n.trailing_after(2)), (0, 31, 12345678));
    }

    #[test]
    fn classification_rules() {
        let (plan, codes) = (japan(), TableCodes::shipped());
        let c = |s: &str| classify(&number(s), &plan, &codes);
        assert_eq!(c("110").class, class::EMERGENCY);
        assert_eq!(c("+110").class, class::INTERNATIONAL, "a + number is never a short code");
        assert_eq!(c("1100").class, class::UNKNOWN);
        assert_eq!((c("+23276123456").class, c("+23276123456").cc), (class::INTERNATIONAL, 232));
        assert_eq!(c("01023276123456").cc, 232);
        assert_eq!(c("0023276123456").cc, 232);
        assert_eq!(c("0101876555").cc, 1, "010 then NANP");
        assert_eq!(c("07012345678").class, class::DOMESTIC);
        assert_eq!(c("+81312345678").class, class::DOMESTIC);
        assert_eq!(c("+2101").cc, 0, "unassigned code");
        assert_eq!(c("+7").cc, 7);
        assert_eq!(c("12345").class, class::UNKNOWN, "no prefix: local or extension");
    }

    #[test]
    fn credentials_in_every_request() {
        let invite = crate::corpus::CORPUS.iter().find(|c| c.name == "invite-with-auth.sip").unwrap().bytes;
        assert!(parse(invite).has_auth);
        assert!(parse_with(invite, true, true).has_auth);
        assert_eq!(parse_with(invite, true, true).sweep, sweep::SWEPT);
        let plain =
            crate::corpus::CORPUS.iter().find(|c| c.name == "invite-intl-plus-232.sip").unwrap().bytes;
        assert!(!parse_with(plain, true, true).has_auth);
    }

    #[test]
    fn several_credentials_are_flagged_whether_swept_or_not() {
        // A decoy first, the credential the registrar will use second: the
        // kernel reads the first only, so it must know there is another.
        let msg = b"INVITE sip:0023276000000@x SIP/2.0\r\nCall-ID: c\r\nCSeq: 2 INVITE\r\n\
            Authorization: Digest username=\"decoy\", nonce=\"n\"\r\n\
            proxy-authorization : Digest username=\"stolen\", nonce=\"m\"\r\n\r\n";
        for (sweep_all, requests) in [(false, false), (false, true), (true, true)] {
            let s = parse_with(msg.as_slice(), sweep_all, requests);
            assert!(s.has_auth && s.sweep & sweep::SEVERAL_CREDENTIALS != 0, "{sweep_all} {requests}");
        }
        // A second username in one header: the registrar may take the last.
        let twice = b"INVITE sip:0023276000000@x SIP/2.0\r\nCall-ID: c\r\nCSeq: 2 INVITE\r\n\
            Proxy-Authorization: Digest username=\"decoy\", nonce=\"n\", uri=\"sip:x\", UserName = \"stolen\"\r\n\r\n";
        let s = parse_with(twice.as_slice(), true, true);
        assert!(s.sweep & sweep::SEVERAL_CREDENTIALS != 0);
        let one = b"INVITE sip:0023276000000@x SIP/2.0\r\nCall-ID: c\r\nCSeq: 2 INVITE\r\n\
            Authorization: Digest username=\"a\", nonce=\"n\", uri=\"sip:x\", response=\"00\"\r\n\r\n";
        assert_eq!(parse_with(one.as_slice(), false, true).sweep & sweep::SEVERAL_CREDENTIALS, 0);
    }

    #[test]
    fn eleven_selectable_as_access_prefix() {
        let mut plan = japan();
        plan.intl_prefixes[2] = crate::number::Digits::new(b"011").unwrap();
        let c = classify(&number("01144207946"), &plan, &TableCodes::shipped());
        assert_eq!((c.class, c.cc), (class::INTERNATIONAL, 44));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let s = parse(bytes.as_slice());
            let _ = classify(&s.number, &japan(), &TableCodes::shipped());
        }

        #[test]
        fn mutated_corpus_never_panics(i in 0usize..CORPUS.len(), edits in proptest::collection::vec((0usize..2048, any::<u8>()), 0..12), cut in 0usize..2100) {
            let mut m = CORPUS[i].bytes.to_vec();
            for (at, b) in edits {
                if let Some(slot) = m.get_mut(at) { *slot = b; }
            }
            m.truncate(cut);
            let s = parse(m.as_slice());
            prop_assert!(s.kind <= kind::UNPARSED);
            if s.kind == kind::RESPONSE { prop_assert!((100..700).contains(&s.status)); }
        }
    }
}
