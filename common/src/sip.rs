//! Just enough SIP, over a bounded window of a message, for counting fraud:
//! the method, the Request-URI scheme and dialled number, whether
//! credentials are present, and for responses the status and CSeq method.
//!
//! Nothing is stored: the dialled number only lives in a [`Number`] on the
//! stack until [`crate::number::classify`] has turned it into a class and a
//! country code. Every loop has a constant bound and every read goes through
//! [`ByteWindow::at`], which the kernel implements with a masked index into a
//! fixed scratch buffer, so the verifier sees no unchecked access.

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
    /// The byte at `i` without the end check, for callers that checked the
    /// range once already (past the end: any value, never out of bounds).
    fn raw(&self, i: usize) -> u8 {
        self.at(i)
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Runs a header scan over the window, one byte per [`HeaderScan::step`].
    /// The kernel overrides this to drive the steps with `bpf_loop`.
    ///
    /// Each step is given the position to examine, so nothing the verifier
    /// must track precisely is carried from one step to the next.
    #[inline(always)]
    fn scan_headers(&self, mut scan: HeaderScan) -> HeaderScan {
        let mut pos = 0;
        while pos < SIP_WINDOW {
            if !scan.step(self, pos) {
                break;
            }
            pos += 1;
        }
        scan
    }
    /// Runs a Request-URI number scan (at most [`MAX_USER_SCAN`] bytes from
    /// the start) to its end; the kernel overrides it with `bpf_loop` for
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
    pub const NONE: Self = Self { value: 0, len: 0, plus: false, valid: false };

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
    /// An Authorization or Proxy-Authorization header is present. Looked
    /// for in REGISTER requests, and in any request with `parse_with`.
    pub has_auth: bool,
    /// Response status code (responses only).
    pub status: u16,
    /// Method named in CSeq (responses only).
    pub cseq_method: u8,
    /// What a sweep of the whole window found ([`sweep`] bits; only for
    /// restricted sources, see [`parse_with`]).
    pub sweep: u8,
    /// The Request-URI's user part as a number (requests only).
    pub number: Number,
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
}

impl SipSummary {
    const fn of_kind(kind: u8) -> Self {
        Self {
            kind,
            method: method::NONE,
            scheme: scheme::NONE,
            has_auth: false,
            status: 0,
            cseq_method: method::NONE,
            sweep: 0,
            number: Number::NONE,
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

/// Whether the header name `name` (lower-case letters and '-') is at `at`,
/// case-insensitively. Branch-free over the name: one range check, then the
/// differences of all bytes are OR-ed together (`| 0x20` lower-cases a
/// letter). Per-byte early exits would multiply the kernel verifier's paths.
#[inline(always)]
fn name_at<B: ByteWindow + ?Sized>(b: &B, at: usize, name: &[u8]) -> bool {
    if at + name.len() > b.len() {
        return false;
    }
    let mut diff = 0u8;
    let mut i = 0;
    while i < name.len() {
        diff |= (b.raw(at + i) | 0x20) ^ name[i];
        i += 1;
    }
    diff == 0
}

/// If a header named `name` (lower case) starts at `at`, the offset just
/// after its colon (HCOLON allows spaces and tabs before the colon).
#[inline(always)]
fn header_value<B: ByteWindow + ?Sized>(b: &B, at: usize, name: &[u8]) -> Option<usize> {
    if !name_at(b, at, name) {
        return None;
    }
    let mut i = at + name.len();
    for _ in 0..4 {
        match b.at(i) {
            b' ' | b'\t' => i += 1,
            b':' => return Some(i + 1),
            _ => return None,
        }
    }
    None
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
    parse_with(b, false)
}

/// Like [`parse`]; with `sweep_all`, the whole window is also swept (see
/// [`HeaderScan::sweep`]) for credentials in any request and for REGISTER or
/// INVITE start lines after the first message, with the result in
/// [`SipSummary::sweep`]. The kernel asks for that only for restricted
/// sources: what it cannot prove harmless for their restriction is dropped.
#[inline(always)]
pub fn parse_with<B: ByteWindow + ?Sized>(b: &B, sweep_all: bool) -> SipSummary {
    let mut summary = parse_first(b);
    if sweep_all && summary.kind != kind::EMPTY && summary.kind != kind::KEEPALIVE {
        let s = b.scan_headers(HeaderScan::sweep());
        summary.has_auth |= s.has_auth;
        summary.sweep = sweep::SWEPT
            | if s.later_register { sweep::LATER_REGISTER } else { 0 }
            | if s.later_invite { sweep::LATER_INVITE } else { 0 }
            | if s.complete { 0 } else { sweep::HEADERS_OPEN };
    }
    summary
}

/// The first message of the window.
#[inline(always)]
fn parse_first<B: ByteWindow + ?Sized>(b: &B) -> SipSummary {
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
    if starts_with(b, start, b"SIP/2.0 ") { parse_response(b, start + 8) } else { parse_request(b, start) }
}

#[inline(always)]
fn parse_response<B: ByteWindow + ?Sized>(b: &B, at: usize) -> SipSummary {
    let (d0, d1, d2) = (b.at(at), b.at(at + 1), b.at(at + 2));
    if !(d0.is_ascii_digit() && d1.is_ascii_digit() && d2.is_ascii_digit()) || b.at(at + 3) != b' ' {
        return SipSummary::of_kind(kind::UNPARSED);
    }
    let status = (d0 - b'0') as u16 * 100 + (d1 - b'0') as u16 * 10 + (d2 - b'0') as u16;
    if !(100..700).contains(&status) {
        return SipSummary::of_kind(kind::UNPARSED);
    }
    let scan = scan_headers(b, false);
    let cseq = if scan.cseq_value == 0 { method::NONE } else { cseq_method(b, scan.cseq_value) };
    if cseq == method::NONE {
        // Every response has a CSeq; without it we cannot attribute it.
        return SipSummary::of_kind(kind::UNPARSED);
    }
    SipSummary { status, cseq_method: cseq, ..SipSummary::of_kind(kind::RESPONSE) }
}

#[inline(always)]
fn parse_request<B: ByteWindow + ?Sized>(b: &B, at: usize) -> SipSummary {
    let Some((method, mlen)) = method_at(b, at) else {
        return SipSummary::of_kind(kind::UNPARSED);
    };
    let uri = at + mlen + 1;
    if b.at(at + mlen) != b' ' || !b.at(uri).is_ascii_alphabetic() {
        return SipSummary::of_kind(kind::UNPARSED);
    }
    let mut summary = SipSummary { method, ..SipSummary::of_kind(kind::REQUEST) };
    match method {
        // The dialled number only matters for INVITE.
        method::INVITE => {
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
                summary.number = uri_number(b, scheme == scheme::TEL);
            }
        }
        // Credentials only matter for REGISTER.
        method::REGISTER => {
            let scan = scan_headers(b, true);
            if !scan.has_auth && !scan.complete {
                // Credentials may be in the part we did not see: do not guess.
                return SipSummary::of_kind(kind::UNPARSED);
            }
            summary.has_auth = scan.has_auth;
        }
        _ => {}
    }
    summary
}

/// Reads the dialled number of a Request-URI, one byte per
/// [`UserScan::step`], from the start of the message: it skips any leading
/// CR/LF, the method and the scheme itself, so the kernel passes it no
/// offset (which keeps the verifier's work independent of the method and
/// scheme lengths). For sip:/sips: the number is the user part, which exists
/// only if '@' comes before the end of the URI, up to any ';' parameters;
/// for tel: the number up to its parameters. A number is an optional leading
/// '+', digits, and the visual separators `-`, `.`, `(`, `)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserScan {
    /// 0: start line before the URI, 1: scheme, 2: user part.
    pub phase: u8,
    /// The previous byte ended the scheme (the next is the user part's first).
    pub at_user_start: bool,
    /// tel: URI (no '@' to wait for).
    pub tel: bool,
    /// Past a ';': parameters, not digits.
    pub in_params: bool,
    /// sip:/sips: the '@' ending the user part was seen.
    pub has_user: bool,
    pub done: bool,
    pub number: Number,
}

/// Longest start-line prefix before the user part that a scan follows.
pub const MAX_USER_SCAN: usize = MAX_LEADING_CRLF + MAX_METHOD_LEN + 1 + 5 + MAX_USER_LEN;

impl UserScan {
    pub fn new(tel: bool) -> Self {
        Self {
            phase: 0,
            at_user_start: false,
            tel,
            in_params: false,
            has_user: false,
            done: false,
            number: Number { valid: true, ..Number::NONE },
        }
    }

    /// Examines the byte at `pos`; steps must come in order from 0.
    /// Returns false when the scan is over.
    #[inline(always)]
    pub fn step<B: ByteWindow + ?Sized>(&mut self, b: &B, pos: usize) -> bool {
        if self.done {
            return false;
        }
        let c = b.at(pos);
        match self.phase {
            0 => {
                if c == b' ' {
                    self.phase = 1;
                } else if c == 0 {
                    self.done = true;
                }
                return !self.done;
            }
            1 => {
                if c == b':' {
                    self.phase = 2;
                    self.at_user_start = true;
                } else if !c.is_ascii_alphabetic() {
                    self.done = true;
                }
                return !self.done;
            }
            _ => {}
        }
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
        if !self.done || self.phase != 2 || !n.valid || n.len == 0 || (!self.tel && !self.has_user) {
            return Number::NONE;
        }
        n
    }
}

/// The dialled number of the request whose start line begins the window.
#[inline(always)]
fn uri_number<B: ByteWindow + ?Sized>(b: &B, tel: bool) -> Number {
    b.scan_user(UserScan::new(tel)).finish()
}

/// State of a header scan: one [`HeaderScan::step`] per byte. Header names
/// are only looked at where a line starts after the start line (CR/LF
/// before the start line, which receivers ignore, start no line: a blank
/// line there would otherwise end the scan before the headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderScan {
    /// The previous byte ended a line.
    pub line_start: bool,
    /// A byte other than CR/LF was seen: the start line has begun.
    pub seen_text: bool,
    /// Sweep mode: read to the end of the window whatever is found.
    pub sweep: bool,
    /// (sweep) A later line starts like a REGISTER request.
    pub later_register: bool,
    /// (sweep) A later line starts like an INVITE request.
    pub later_invite: bool,
    pub has_auth: bool,
    /// Offset of the CSeq header's value (0: not found). Only the position
    /// is recorded here, so each step stays small for the verifier.
    pub cseq_value: usize,
    /// The empty line ending the headers was seen.
    pub complete: bool,
    /// Stop: found what was wanted, or the headers ended.
    pub stop: bool,
    /// Looking for credentials (REGISTER) rather than CSeq (responses).
    pub want_auth: bool,
}

impl HeaderScan {
    pub fn new(want_auth: bool) -> Self {
        Self { want_auth, ..Self::default() }
    }

    /// A scan of the whole window for a restricted source: credentials in
    /// any header line, REGISTER or INVITE start lines after the first line
    /// (several messages in one TCP segment), and whether the first
    /// message's headers end in the window. It stops at nothing but the
    /// window's end. Method names are matched case-insensitively, which
    /// only ever flags more.
    pub fn sweep() -> Self {
        Self { want_auth: true, sweep: true, ..Self::default() }
    }

    /// Examines the byte at `pos`; steps must come in order from 0.
    /// Returns false when the scan is over.
    #[inline(always)]
    pub fn step<B: ByteWindow + ?Sized>(&mut self, b: &B, pos: usize) -> bool {
        if self.stop || pos >= b.len() {
            self.stop = true;
            return false;
        }
        let c = b.at(pos);
        if self.line_start && self.sweep {
            if c == b'\r' || c == b'\n' {
                self.complete = true;
            } else if header_value(b, pos, b"authorization").is_some()
                || header_value(b, pos, b"proxy-authorization").is_some()
            {
                self.has_auth = true;
            } else if name_at(b, pos, b"register ") {
                self.later_register = true;
            } else if name_at(b, pos, b"invite ") {
                self.later_invite = true;
            }
        } else if self.line_start {
            if c == b'\r' || c == b'\n' {
                self.complete = true;
                self.stop = true;
                return false;
            }
            if self.want_auth {
                if header_value(b, pos, b"authorization").is_some()
                    || header_value(b, pos, b"proxy-authorization").is_some()
                {
                    self.has_auth = true;
                    self.stop = true;
                    return false;
                }
            } else if let Some(v) = header_value(b, pos, b"cseq") {
                self.cseq_value = v;
                self.stop = true;
                return false;
            }
        }
        self.seen_text |= c != b'\r' && c != b'\n';
        self.line_start = c == b'\n' && self.seen_text;
        true
    }
}

/// Scans the headers for credentials or for CSeq.
#[inline(always)]
fn scan_headers<B: ByteWindow + ?Sized>(b: &B, want_auth: bool) -> HeaderScan {
    b.scan_headers(HeaderScan::new(want_auth))
}

/// The method in a CSeq value (`1 REGISTER`), or NONE.
#[inline(always)]
fn cseq_method<B: ByteWindow + ?Sized>(b: &B, at: usize) -> u8 {
    let mut i = at;
    let mut saw_digit = false;
    for _ in 0..16 {
        match b.at(i) {
            b' ' | b'\t' if !saw_digit => i += 1,
            b'0'..=b'9' => {
                saw_digit = true;
                i += 1;
            }
            b' ' | b'\t' => break,
            _ => return method::NONE,
        }
    }
    if !saw_digit {
        return method::NONE;
    }
    for _ in 0..4 {
        if matches!(b.at(i), b' ' | b'\t') {
            i += 1;
        }
    }
    match method_at(b, i) {
        Some((m, _)) => m,
        None => method::NONE,
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
        uri_number(std::format!("INVITE tel:{s} SIP/2.0").as_bytes(), true)
    }

    #[test]
    fn a_number_cut_off_by_the_window_is_not_a_number() {
        assert!(!uri_number(b"INVITE tel:+2327612".as_slice(), true).valid);
        assert!(uri_number(b"INVITE sip:+2327612@".as_slice(), false).valid);
        assert_eq!(
            uri_number(b"INVITE sip:2327612 SIP/2.0".as_slice(), false),
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
    fn credentials_in_other_requests_only_when_asked() {
        let invite = crate::corpus::CORPUS.iter().find(|c| c.name == "invite-with-auth.sip").unwrap().bytes;
        assert!(!parse(invite).has_auth);
        assert!(parse_with(invite, true).has_auth);
        assert_eq!(parse_with(invite, true).sweep, sweep::SWEPT);
        let plain =
            crate::corpus::CORPUS.iter().find(|c| c.name == "invite-intl-plus-232.sip").unwrap().bytes;
        assert!(!parse_with(plain, true).has_auth);
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
