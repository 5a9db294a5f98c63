//! The SIP parser and number classifier on arbitrary bytes, as an
//! unrestricted source's packet (`parse`) and as a restricted one's (the
//! sweep, `parse_with(_, true, true)`; and not reading the headers of
//! requests other than REGISTER, `parse_with(_, false, false)`), and the header extraction under it (the
//! line scan, the digest parameter scan, value hashes): no panic, and the
//! invariants the kernel's counting relies on hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_common::{
    corpus::{TableCodes, japan},
    headers::{LineScan, ParamScan, Span, value_hash},
    number::{class, classify},
    sip::{self, ByteWindow, MAX_DIGITS, SIP_WINDOW, SipSummary, kind, method},
};

static CODES: std::sync::LazyLock<TableCodes> = std::sync::LazyLock::new(TableCodes::shipped);

fuzz_target!(|data: &[u8]| {
    // What the kernel copies: at most the window.
    let window = &data[..data.len().min(SIP_WINDOW)];
    let plain = sip::parse(data);
    assert_eq!(plain, sip::parse_with(window, false, true), "only the window is read");
    // Not reading a request's headers changes only what they would say.
    let start_only = sip::parse_with(window, false, false);
    if start_only.sweep == sip::sweep::START_ONLY {
        assert_eq!((start_only.kind, start_only.method, start_only.number), (plain.kind, plain.method, plain.number));
        assert!(plain.method != method::REGISTER && plain.method != method::INVITE);
    } else {
        assert_eq!(start_only, plain, "a REGISTER or a response is always read");
    }
    summary_invariants(window, &plain, false);
    let swept = sip::parse_with(data, true, true);
    summary_invariants(window, &swept, true);
    // The sweep reads more, never less: it only adds what it found later.
    if plain.kind == kind::REQUEST && swept.kind == kind::REQUEST {
        assert_eq!((plain.method, plain.scheme, plain.number), (swept.method, swept.scheme, swept.number));
        assert!(swept.has_auth || !plain.has_auth, "the sweep lost credentials");
    }
    // Everything but an empty payload and a keep-alive is swept.
    assert_eq!(
        swept.sweep & sip::sweep::SWEPT != 0,
        matches!(swept.kind, kind::REQUEST | kind::RESPONSE | kind::UNPARSED)
    );
    assert_eq!(plain.sweep, 0);
    arbitrary_spans(window);
});

/// Whether a span lies inside a window of `len` bytes, in order.
fn inside(s: Span, len: usize) -> bool {
    s.start <= s.end && s.end as usize <= len
}

/// A hash is 0 exactly when its span is empty.
fn hash_of(window: &[u8], s: Span) -> u64 {
    let h = value_hash(window, s);
    assert_eq!(h == 0, s.is_empty(), "hash {h:#x} of span {s:?}");
    h
}

fn summary_invariants(window: &[u8], s: &SipSummary, sweep: bool) {
    let len = window.len();
    assert!(s.kind <= kind::UNPARSED);
    assert!(s.method <= method::OTHER && s.cseq_method <= method::OTHER);
    if s.kind == kind::RESPONSE {
        assert!((100..700).contains(&s.status));
        assert_ne!(s.cseq_method, method::NONE);
    }
    if s.number.valid {
        assert!(s.number.len > 0 && s.number.len as usize <= MAX_DIGITS);
    }
    assert!(inside(s.username, len), "username {:?} outside the {len}-byte window", s.username);
    assert!(s.body == 0 || s.body as usize <= len, "body {} past the {len}-byte window", s.body);
    let c = classify(&s.number, &japan(), &*CODES);
    assert!((c.class as usize) < class::COUNT);
    assert!(c.cc < 1000);
    if c.class != class::INTERNATIONAL {
        assert_eq!(c.cc, 0);
    }

    // The extraction the summary came from, run again step by step: its
    // spans lie in the window, each hash is 0 exactly when its span is
    // empty, and the summary holds what it found.
    let lines = window.scan_lines(if sweep { LineScan::sweep() } else { LineScan::new(0) });
    for (what, span) in
        [("Call-ID", lines.call_id), ("credentials", lines.credentials), ("challenge", lines.challenge)]
    {
        assert!(inside(span, len), "{what} {span:?} outside the {len}-byte window");
    }
    assert!(lines.cseq as usize <= len && lines.content_length as usize <= len);
    assert!(lines.body == 0 || lines.body as usize <= len);
    let call_id = hash_of(window, lines.call_id);
    if s.kind == kind::UNPARSED && sweep {
        // Swept unreadable bytes keep the transaction found in them, but
        // a message cut short after its start line keeps nothing.
        assert!(s.call_id == 0 || s.call_id == call_id);
        assert!(s.body == 0 || s.body == lines.body);
        assert_eq!((s.auth_nonce, s.challenge_nonce, s.username, s.stale), (0, 0, Span::default(), false));
        return;
    }
    let read = s.kind == kind::RESPONSE
        || (s.kind == kind::REQUEST && (sweep || (s.method != method::ACK && s.method != method::CANCEL)));
    if !read {
        assert_eq!((s.call_id, s.auth_nonce, s.challenge_nonce, s.body), (0, 0, 0, 0));
        assert!(s.username.is_empty() && !s.stale);
        return;
    }
    // The transaction is read for a response and for credentials in the
    // message's own headers.
    let transaction = s.kind == kind::RESPONSE || !lines.credentials.is_empty();
    assert_eq!(s.call_id, if transaction { call_id } else { 0 });
    assert_eq!(s.body, lines.body);
    let challenge = s.kind == kind::RESPONSE && (s.status == 401 || s.status == 407);
    let digest = if challenge { lines.challenge } else { lines.credentials };
    let params = window.scan_params(ParamScan::new(window, digest, !challenge)).params;
    for (what, span) in [("username", params.username), ("nonce", params.nonce)] {
        assert!(inside(span, len), "{what} {span:?} outside the {len}-byte window");
        assert!(
            digest.is_empty() || (span.is_empty() || (span.start >= digest.start && span.end <= digest.end)),
            "{what} {span:?} outside its header value {digest:?}"
        );
    }
    let nonce = hash_of(window, params.nonce);
    hash_of(window, params.username);
    let digest_read = !digest.is_empty() && (challenge || s.kind == kind::REQUEST);
    if challenge {
        assert_eq!(s.challenge_nonce, if digest_read { nonce } else { 0 });
        assert_eq!(s.stale, digest_read && params.stale != 0);
        assert_eq!((s.auth_nonce, s.username), (0, Span::default()));
    } else if s.kind == kind::REQUEST {
        assert_eq!(s.auth_nonce, if digest_read { nonce } else { 0 });
        assert_eq!(s.username, if digest_read { params.username } else { Span::default() });
        assert_eq!((s.challenge_nonce, s.stale), (0, false));
        assert!(s.has_auth || lines.credentials.is_empty());
    } else {
        assert_eq!((s.auth_nonce, s.challenge_nonce, s.username, s.stale), (0, 0, Span::default(), false));
    }
}

/// The parameter scan and the value hash over spans the line scan would
/// never give (any range of the window, chosen by the input's last bytes):
/// no panic, the parameters found lie inside the range, and a value's hash
/// depends only on its bytes, not on where they are.
fn arbitrary_spans(window: &[u8]) {
    let len = window.len();
    if len < 4 {
        return;
    }
    let pick = |i: usize| u16::from_le_bytes([window[len - 2 * i - 2], window[len - 2 * i - 1]]) as usize;
    let start = pick(0) % (len + 1);
    let end = start + pick(1) % (len - start + 1);
    let span = Span { start: start as u32, end: end as u32 };
    let h = hash_of(window, span);
    let moved: Vec<u8> = [b"xyz".as_slice(), &window[start..end]].concat();
    assert_eq!(h, value_hash(moved.as_slice(), Span { start: 3, end: 3 + (end - start) as u32 }));
    let params = window.scan_params(ParamScan::new(window, span, start % 2 == 0)).params;
    for found in [params.username, params.nonce] {
        assert!(
            found.is_empty() || (found.start >= span.start && found.end <= span.end),
            "{found:?} outside {span:?}"
        );
        hash_of(window, found);
    }
}
