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
/// Header lines examined after the start line.
pub const MAX_HEADER_LINES: usize = 48;
/// Longest header line followed; a longer one ends the scan as truncated.
pub const MAX_LINE_LEN: usize = 1024;
/// Longest method token.
pub const MAX_METHOD_LEN: usize = 16;
/// Longest Request-URI user part examined.
pub const MAX_USER_LEN: usize = 64;
/// Most digits kept of a dialled number (E.164 allows 15, plus a prefix).
pub const MAX_DIGITS: usize = 24;
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

/// Digits of a dialled number, visual separators removed. Transient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Number {
    pub digits: [u8; MAX_DIGITS],
    pub len: u8,
    /// Written with a leading '+' (global number).
    pub plus: bool,
    /// The user part was a number at all (only digits, '+' first, and the
    /// visual separators `-`, `.`, `(`, `)`).
    pub valid: bool,
}

impl Number {
    pub const NONE: Self = Self { digits: [0; MAX_DIGITS], len: 0, plus: false, valid: false };

    pub fn as_digits(&self) -> &[u8] {
        &self.digits[..(self.len as usize).min(MAX_DIGITS)]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipSummary {
    pub kind: u8,
    /// Request method (requests only).
    pub method: u8,
    /// Request-URI scheme (requests only).
    pub scheme: u8,
    /// An Authorization or Proxy-Authorization header is present. Only
    /// looked for in REGISTER requests, the only place it is counted.
    pub has_auth: bool,
    /// Response status code (responses only).
    pub status: u16,
    /// Method named in CSeq (responses only).
    pub cseq_method: u8,
    /// The Request-URI's user part as a number (requests only).
    pub number: Number,
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

/// If a header named `name` (lower case) starts at `at`, the offset just
/// after its colon (HCOLON allows spaces and tabs before the colon).
#[inline(always)]
fn header_value<B: ByteWindow + ?Sized>(b: &B, at: usize, name: &[u8]) -> Option<usize> {
    if !starts_with_ci(b, at, name) {
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
    let scan = scan_headers(b, at + 4, false);
    if scan.cseq_method == method::NONE {
        // Every response has a CSeq; without it we cannot attribute it.
        return SipSummary::of_kind(kind::UNPARSED);
    }
    SipSummary { status, cseq_method: scan.cseq_method, ..SipSummary::of_kind(kind::RESPONSE) }
}

#[inline(always)]
fn parse_request<B: ByteWindow + ?Sized>(b: &B, at: usize) -> SipSummary {
    let Some((method, mlen)) = method_at(b, at) else {
        return SipSummary::of_kind(kind::UNPARSED);
    };
    let uri = at + mlen + 1;
    if b.at(at + mlen) != b' ' {
        return SipSummary::of_kind(kind::UNPARSED);
    }
    let (scheme, user) = if starts_with_ci(b, uri, b"sip:") {
        (scheme::SIP, uri + 4)
    } else if starts_with_ci(b, uri, b"sips:") {
        (scheme::SIPS, uri + 5)
    } else if starts_with_ci(b, uri, b"tel:") {
        (scheme::TEL, uri + 4)
    } else if b.at(uri).is_ascii_alphabetic() {
        (scheme::OTHER, uri)
    } else {
        return SipSummary::of_kind(kind::UNPARSED);
    };
    let number = match scheme {
        scheme::SIP | scheme::SIPS => sip_user_number(b, user),
        scheme::TEL => number_at(b, user),
        _ => Number::NONE,
    };
    let mut summary = SipSummary { method, scheme, number, ..SipSummary::of_kind(kind::REQUEST) };
    if method == method::REGISTER {
        let scan = scan_headers(b, uri, true);
        if !scan.has_auth && !scan.complete {
            // Credentials may be in the part we did not see: do not guess.
            return SipSummary::of_kind(kind::UNPARSED);
        }
        summary.has_auth = scan.has_auth;
    }
    summary
}

/// A sip:/sips: URI has a user part only if '@' comes before the end of
/// the URI; the number is that user part up to any ';' parameters.
#[inline(always)]
fn sip_user_number<B: ByteWindow + ?Sized>(b: &B, user: usize) -> Number {
    let mut i = 0;
    while i < MAX_USER_LEN {
        match b.at(user + i) {
            b'@' => return number_at(b, user),
            b' ' | b'>' | b'\r' | b'\n' | b'?' | 0 => return Number::NONE,
            _ => i += 1,
        }
    }
    Number::NONE
}

/// Reads a telephone number at `at`: optional '+', digits and visual
/// separators, ending at '@', ';', '?', '>' or a space.
#[inline(always)]
fn number_at<B: ByteWindow + ?Sized>(b: &B, at: usize) -> Number {
    let mut n = Number { valid: true, ..Number::NONE };
    let mut i = 0;
    while i < MAX_USER_LEN {
        let c = b.at(at + i);
        match c {
            b'+' if i == 0 => n.plus = true,
            b'0'..=b'9' => {
                if (n.len as usize) < MAX_DIGITS {
                    n.digits[n.len as usize] = c;
                    n.len += 1;
                } else {
                    n.valid = false;
                }
            }
            b'-' | b'.' | b'(' | b')' => {}
            b'@' | b';' | b'?' | b'>' | b' ' | b'\r' | b'\n' => break,
            _ => {
                n.valid = false;
                break;
            }
        }
        i += 1;
    }
    if n.len == 0 || i == MAX_USER_LEN {
        n.valid = false;
    }
    if !n.valid {
        return Number::NONE;
    }
    n
}

/// State of a header scan: one [`HeaderScan::step`] per line, so the kernel
/// can drive it with a bounded loop or `bpf_loop`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderScan {
    /// Offset of the current line's first byte.
    pub pos: usize,
    pub has_auth: bool,
    pub cseq_method: u8,
    /// The empty line ending the headers was seen.
    pub complete: bool,
    /// Stop: done, or the window/line limits were reached.
    pub stop: bool,
    /// Looking for credentials (REGISTER) rather than CSeq (responses).
    pub want_auth: bool,
}

impl HeaderScan {
    /// Starts scanning at the line after the one containing `from`.
    pub fn new<B: ByteWindow + ?Sized>(b: &B, from: usize, want_auth: bool) -> Self {
        let mut s = Self { pos: from, want_auth, ..Self::default() };
        s.pos = s.next_line(b);
        s
    }

    /// Offset of the line after the one at `self.pos`, or past the window.
    #[inline(always)]
    fn next_line<B: ByteWindow + ?Sized>(&self, b: &B) -> usize {
        let mut i = 0;
        while i < MAX_LINE_LEN {
            let p = self.pos + i;
            if p >= b.len() {
                return SIP_WINDOW;
            }
            if b.at(p) == b'\n' {
                return p + 1;
            }
            i += 1;
        }
        SIP_WINDOW
    }

    /// Examines one header line. Returns false when the scan is over.
    #[inline(always)]
    pub fn step<B: ByteWindow + ?Sized>(&mut self, b: &B) -> bool {
        if self.stop || self.pos >= b.len() {
            self.stop = true;
            return false;
        }
        let p = self.pos;
        let c = b.at(p);
        if c == b'\r' || c == b'\n' {
            self.complete = true;
            self.stop = true;
            return false;
        }
        if self.want_auth {
            if header_value(b, p, b"authorization").is_some()
                || header_value(b, p, b"proxy-authorization").is_some()
            {
                self.has_auth = true;
                self.stop = true;
                return false;
            }
        } else if let Some(v) = header_value(b, p, b"cseq") {
            self.cseq_method = cseq_method(b, v);
            self.stop = true;
            return false;
        }
        self.pos = self.next_line(b);
        true
    }
}

/// Scans headers starting after the line containing `from`.
#[inline(always)]
fn scan_headers<B: ByteWindow + ?Sized>(b: &B, from: usize, want_auth: bool) -> HeaderScan {
    let mut scan = HeaderScan::new(b, from, want_auth);
    for _ in 0..MAX_HEADER_LINES {
        if !scan.step(b) {
            break;
        }
    }
    scan
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

    /// The number in a Request-URI-like context (terminated by a space).
    fn number(s: &str) -> Number {
        number_at(std::format!("{s} ").as_bytes(), 0)
    }

    #[test]
    fn a_number_cut_off_by_the_window_is_not_a_number() {
        assert!(!number_at(b"+2327612".as_slice(), 0).valid);
    }

    #[test]
    fn numbers_and_separators() {
        let n = number("+1-(876)-555.0100");
        assert!(n.valid && n.plus);
        assert_eq!(n.as_digits(), b"18765550100");
        assert!(!number("alice").valid);
        assert!(!number("*67").valid);
        assert!(!number("+").valid, "a lone plus is not a number");
        assert!(!number("12+34").valid, "plus only first");
        assert!(!number(&"9".repeat(MAX_DIGITS + 1)).valid, "too many digits");
        assert_eq!(number("0312345678;phone-context=x").as_digits(), b"0312345678");
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
