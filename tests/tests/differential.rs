//! Differential test of the one SIP parser (issue 11): the kernel runs it
//! through `Window`, `bpf_loop` steps with their state in SCRATCH and the
//! isolated computations; the host runs the same code over a byte slice.
//! Every corpus message, and thousands of mutations of them, go through the
//! loaded program with BPF_PROG_TEST_RUN, and the whole [`SipSummary`] the
//! parse stage wrote into SUMMARY must equal `parse_with` on the host over
//! the bytes the kernel copied (the first `min(len, SIP_WINDOW)` of the
//! payload). Unrestricted sources are compared with `parse_with(_, false)`,
//! auth-suspended ones with the sweep, `parse_with(_, true)`; the TC egress
//! program's parse stage too. Over TCP the kernel parses every message of
//! a segment in turn, so SUMMARY holds the last one it parsed: the host
//! reads the segment the same way ([`host_messages`]).
//!
//! The mutations come from a fixed-seed PRNG (printed; `TOLLGATE_DIFF_SEED`
//! and `TOLLGATE_DIFF_CASES` override it and the count). A disagreement is
//! printed with its case number, the payload escaped, both summaries and
//! the fields that differ, then shrunk to a smaller payload that still
//! disagrees in the same fields; up to [`MAX_REPORTED`] are collected
//! before the test fails.

use std::{
    net::IpAddr,
    sync::{
        LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tollgate::clock::monotonic_now_ns;
use tollgate_common::{
    MAX_MESSAGES, Restriction,
    corpus::CORPUS,
    frames::FrameBuilder,
    sip::{SIP_WINDOW, SipSummary, parse_with},
};
use tollgate_tests::{
    privileged,
    testrun::{Loaded, ParseRun, Parsed, XDP_DROP, pin_to_cpu},
    topology::*,
};

/// The PRNG seed unless `TOLLGATE_DIFF_SEED` says otherwise.
const SEED: u64 = 0x7011_6a7e_0000_0011;
/// Mutated messages from an unrestricted source.
const MUTATIONS: usize = 10_000;
/// Mutated messages from an auth-suspended source (the sweep).
const RESTRICTED_MUTATIONS: usize = 1_000;
/// Mutated messages through the TC egress program.
const EGRESS_MUTATIONS: usize = 2_000;
/// Disagreements printed before the test gives up.
const MAX_REPORTED: usize = 20;
/// The CPUs the test threads are pinned to, one each in turn (from CPU 0),
/// so that the tests of this file, run in parallel, do not share one.
fn next_cpu() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    NEXT.fetch_add(1, Ordering::Relaxed) % cpus
}
/// Longest payload sent: with the largest headers built here (IPv6, a VLAN
/// tag, TCP) the frame stays in the linear part BPF_PROG_TEST_RUN gives
/// XDP (a page less head- and tailroom, about 3,500 bytes), which is all
/// the program reads.
const MAX_PAYLOAD: usize = 3300;
/// How long the whole comparison may take.
const BUDGET: Duration = Duration::from_secs(50);
const HOUR: u64 = 3_600_000_000_000;

/// SplitMix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when n is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The PRNG of case `index` under `seed`: each case can be rerun alone.
fn case_rng(seed: u64, index: usize) -> Rng {
    let mut r = Rng(seed ^ (index as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
    r.next();
    r
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok().and_then(|n| n.to_string().parse().ok()),
                None => v.parse().ok(),
            };
            parsed.unwrap_or_else(|| panic!("{name}={v} is not a number"))
        }
        Err(_) => default,
    }
}

/// Bytes the mutations insert, delete and write: the ones the scans look
/// for, and a few they must not mistake for them.
const SPECIAL: &[u8] = b"\r\n :,\"\t=;@<>+\\";
const INTERESTING: &[u8] = b"\0\r\n \t:,\"=;@<>?+-.()0159AZaz\x7f\x80\xff";
/// Header names the line scan knows (and near misses), for renaming lines.
const NAMES: &[&[u8]] = &[
    b"Call-ID",
    b"i",
    b"CSeq",
    b"Content-Length",
    b"l",
    b"Authorization",
    b"Proxy-Authorization",
    b"WWW-Authenticate",
    b"Proxy-Authenticate",
    b"call-id ",
    b"AUTHORIZATION\t",
    b"Authorizatio",
    b"Call-IDs",
    b"cseq",
    b"Via",
];
/// Digest parameters, for the parameter scan.
const PARAMS: &[&[u8]] = &[
    b"username=\"alice\"",
    b"username = \"bob\" ",
    b"nonce=\"n0nce\"",
    b"nonce=abc",
    b"stale=true",
    b"stale=TRUE",
    b"stale=\"true\"",
    b"realm=\"x\"",
    b"Digest ",
    b"digest username=",
    b",,",
    b"=\"",
];

/// Where each line of `m` starts (after the start line when `headers`).
fn line_starts(m: &[u8], headers: bool) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(m.iter().enumerate().filter(|(_, c)| **c == b'\n').map(|(i, _)| i + 1));
    starts.retain(|s| *s < m.len());
    if headers && starts.len() > 1 {
        starts.remove(0);
    }
    starts
}

/// The line of `m` starting at `s`, with its line end.
fn line_at(m: &[u8], s: usize) -> std::ops::Range<usize> {
    let end = m[s..].iter().position(|c| *c == b'\n').map_or(m.len(), |i| s + i + 1);
    s..end
}

/// A random header line of `m` (not the start line when it has others).
fn some_line(r: &mut Rng, m: &[u8]) -> Option<std::ops::Range<usize>> {
    let starts = line_starts(m, true);
    if m.is_empty() {
        return None;
    }
    Some(line_at(m, *r.pick(&starts)))
}

/// One mutation of `m`, `other` being another corpus message to splice.
fn mutate_once(r: &mut Rng, m: &mut Vec<u8>, other: &[u8]) {
    let len = m.len();
    match r.below(19) {
        // A byte flipped, or replaced by a random or an interesting byte.
        0 if len > 0 => {
            let i = r.below(len);
            m[i] = match r.below(3) {
                0 => m[i] ^ (1 << r.below(8)),
                1 => r.next() as u8,
                _ => *r.pick(INTERESTING),
            };
        }
        // A special byte (or CRLF) inserted.
        1 => {
            let i = r.below(len + 1);
            if r.one_in(4) {
                m.splice(i..i, b"\r\n".iter().copied());
            } else {
                m.insert(i, *r.pick(SPECIAL));
            }
        }
        // A special byte deleted (or any byte).
        2 if len > 0 => {
            let specials: Vec<usize> = (0..len).filter(|i| SPECIAL.contains(&m[*i])).collect();
            let i = if specials.is_empty() || r.one_in(4) { r.below(len) } else { *r.pick(&specials) };
            m.remove(i);
        }
        // A header name's case changed.
        3 => {
            if let Some(line) = some_line(r, m) {
                let name_end =
                    m[line.clone()].iter().position(|c| *c == b':').map_or(line.end, |i| line.start + i);
                let how = r.below(3);
                for c in &mut m[line.start..name_end] {
                    *c = match how {
                        0 => c.to_ascii_uppercase(),
                        1 => c.to_ascii_lowercase(),
                        _ if c.is_ascii_alphabetic() && r.one_in(2) => *c ^ 0x20,
                        _ => *c,
                    };
                }
            }
        }
        // Cut short anywhere, or near the end of the headers.
        4 if len > 0 => {
            let blank = m.windows(4).position(|w| w == b"\r\n\r\n");
            let at = match blank {
                Some(b) if r.one_in(2) => (b + r.range(0, 6)).saturating_sub(2).min(len),
                _ => r.below(len),
            };
            m.truncate(at);
        }
        // A header line duplicated (next to itself or elsewhere).
        5 => {
            if let Some(line) = some_line(r, m) {
                let copy = m[line.clone()].to_vec();
                let starts = line_starts(m, true);
                let at = if r.one_in(2) { line.end } else { *r.pick(&starts) };
                m.splice(at..at, copy);
            }
        }
        // A header line dropped.
        6 => {
            if let Some(line) = some_line(r, m) {
                m.drain(line);
            }
        }
        // Two messages spliced: a prefix of one and a suffix of the other,
        // or one after the other (pipelined, as in a TCP segment).
        7 => {
            let cut = r.below(len + 1);
            let from = r.below(other.len() + 1);
            match r.below(3) {
                0 => {
                    m.truncate(cut);
                    m.extend_from_slice(&other[from..]);
                }
                1 => m.extend_from_slice(other),
                _ => {
                    let tail = m.split_off(cut);
                    m.extend_from_slice(other);
                    m.extend_from_slice(&tail);
                }
            }
        }
        // A header line padded to a length around the window, around
        // HASHED_VALUE (the most of a value hashed), or so that the message ends
        // around the window's end.
        8 => {
            if let Some(line) = some_line(r, m) {
                let cur = line.len();
                let target = match r.below(4) {
                    0 => r.range(2030, 2070),
                    1 => r.range(118, 140),
                    2 => r.range(1, 40) * 8 + r.range(0, 2),
                    _ => (cur + SIP_WINDOW + r.range(0, 24)).saturating_sub(len + 12),
                };
                if target > cur {
                    let fill = *r.pick(b"a ,x\"=");
                    let at = if r.one_in(2) {
                        // Before the line end.
                        line.end
                            - m[line.clone()]
                                .iter()
                                .rev()
                                .take_while(|c| **c == b'\n' || **c == b'\r')
                                .count()
                    } else {
                        r.range(line.start, line.end)
                    };
                    m.splice(at..at, std::iter::repeat_n(fill, target - cur));
                }
            }
        }
        // CR/LF before the start line.
        9 => {
            let n = r.range(1, 7);
            let prefix: Vec<u8> = (0..n).map(|_| if r.one_in(2) { b'\r' } else { b'\n' }).collect();
            m.splice(0..0, prefix);
        }
        // A line folded: "\r\n " (or a tab) inside a header line.
        10 => {
            if let Some(line) = some_line(r, m) {
                let at = r.range(line.start, line.end);
                let fold: &[u8] = if r.one_in(3) { b"\r\n\t" } else { b"\r\n " };
                m.splice(at..at, fold.iter().copied());
            }
        }
        // A header renamed to one the scan reads (or a near miss).
        11 => {
            if let Some(line) = some_line(r, m) {
                let name_end =
                    m[line.clone()].iter().position(|c| *c == b':').map_or(line.start, |i| line.start + i);
                m.splice(line.start..name_end, r.pick(NAMES).iter().copied());
            }
        }
        // Digest parameters inserted into a line, most often a credentials
        // or challenge line.
        12 => {
            let digest: Vec<usize> = line_starts(m, true)
                .into_iter()
                .filter(|s| {
                    let l = &m[line_at(m, *s)];
                    l.len() > 20 && l[..20].to_ascii_lowercase().windows(4).any(|w| w == b"auth")
                })
                .collect();
            let line = if !digest.is_empty() && !r.one_in(3) {
                Some(line_at(m, *r.pick(&digest)))
            } else {
                some_line(r, m)
            };
            if let Some(line) = line {
                // Most often between parameters (after a comma), else anywhere.
                let commas: Vec<usize> = line.clone().filter(|i| m[*i] == b',').map(|i| i + 1).collect();
                let between = !commas.is_empty() && !r.one_in(3);
                let at = if between { *r.pick(&commas) } else { r.range(line.start, line.end) };
                let mut p = r.pick(PARAMS).to_vec();
                if between || r.one_in(2) {
                    p.push(b',');
                }
                m.splice(at..at, p);
            }
        }
        // The start line of the other message.
        13 => {
            let mine = line_at(m, 0);
            let theirs = line_at(other, 0);
            m.splice(mine, other[theirs].iter().copied());
        }
        // A run of bytes duplicated or deleted.
        14 if len > 0 => {
            let a = r.below(len);
            let b = (a + r.range(1, 64)).min(len);
            if r.one_in(2) {
                let run = m[a..b].to_vec();
                m.splice(b..b, run);
            } else {
                m.drain(a..b);
            }
        }
        // Many short lines: past the line scan's step budget
        // (MAX_LINE_STEPS), or lines ending at each offset of a word.
        15 => {
            let starts = line_starts(m, true);
            let at = if starts.is_empty() { len } else { *r.pick(&starts) };
            const SHORT: &[&[u8]] = &[b"a:b\r\n", b"X:\r\n", b"i\r\n", b"Via: x\r\n", b" \r\n", b"\n"];
            let line = *r.pick(SHORT);
            let n = if r.one_in(2) { r.range(100, 420) } else { r.range(1, 12) };
            let run: Vec<u8> = line.iter().copied().cycle().take(line.len() * n).collect();
            m.splice(at..at, run);
        }
        // Many digest parameters: past the parameter scan's step budget
        // (MAX_PARAM_STEPS), with the kept ones before, among or after.
        16 => {
            if let Some(line) = some_line(r, m) {
                let at = r.range(line.start, line.end);
                let n = r.range(10, 200);
                let mut run = Vec::new();
                for k in 0..n {
                    if r.one_in(40) {
                        let p = *r.pick(PARAMS);
                        run.extend_from_slice(p);
                    } else {
                        run.extend_from_slice(if k % 2 == 0 { b"x=\"y\"," } else { b" qop=auth," });
                    }
                }
                m.splice(at..at, run);
            }
        }
        // A value made long: bytes added inside a quoted value or a
        // Call-ID, to around HASHED_VALUE (64) and past it.
        17 => {
            let quotes: Vec<usize> = (0..len).filter(|i| m[*i] == b'"').collect();
            let call_id = m.windows(8).position(|w| w.eq_ignore_ascii_case(b"call-id:")).map(|i| i + 9);
            let at = match call_id {
                Some(c) if c <= len && (quotes.is_empty() || r.one_in(3)) => c,
                _ if !quotes.is_empty() => *r.pick(&quotes) + 1,
                _ => r.below(len + 1),
            };
            let n = *r.pick(&[1, 7, 8, 9, 63, 64, 100, 119, 120, 121, 127, 128, 129, 200, 600]);
            let fill = *r.pick(b"a0 @.;");
            m.splice(at..at, std::iter::repeat_n(fill, n));
        }
        // A number made longer or odd (CSeq, Content-Length, the URI).
        _ => {
            let digits: Vec<usize> = (0..len).filter(|i| m[*i].is_ascii_digit()).collect();
            if !digits.is_empty() {
                let i = *r.pick(&digits);
                let n = r.range(1, 12);
                let run: Vec<u8> = (0..n).map(|_| b'0' + r.below(10) as u8).collect();
                m.splice(i..i, run);
            }
        }
    }
}

/// Case `index`: a corpus message with one to four mutations.
fn mutated(seed: u64, index: usize) -> Vec<u8> {
    let mut r = case_rng(seed, index);
    // Half the time a message with digest credentials or a challenge, the
    // extraction's hardest part (most of the corpus is INVITEs).
    static DIGEST: LazyLock<Vec<&[u8]>> = LazyLock::new(|| {
        CORPUS.iter().map(|c| c.bytes).filter(|b| b.windows(7).any(|w| w == b"Digest ")).collect()
    });
    let mut m = if r.one_in(2) { r.pick(&DIGEST).to_vec() } else { r.pick(CORPUS).bytes.to_vec() };
    let n = r.range(1, 4);
    for _ in 0..n {
        let other = r.pick(CORPUS).bytes;
        mutate_once(&mut r, &mut m, other);
    }
    m.truncate(MAX_PAYLOAD);
    m
}

/// Case `index`: one in eight a TCP segment of two to nine messages (the
/// kernel parses each in turn), each a corpus message with at most one
/// mutation; the rest one message with several ([`mutated`]), carried at
/// random ([`Carrier::random`]).
fn case(seed: u64, index: usize) -> (Carrier, Vec<u8>) {
    let mut r = case_rng(seed ^ 1, index);
    let carrier = Carrier::random(&mut r);
    if !r.one_in(8) {
        return (carrier, mutated(seed, index));
    }
    let mut segment = Vec::new();
    for _ in 0..r.range(2, 9) {
        let mut m = r.pick(CORPUS).bytes.to_vec();
        if r.one_in(3) {
            let other = r.pick(CORPUS).bytes;
            mutate_once(&mut r, &mut m, other);
        }
        segment.extend_from_slice(&m);
    }
    segment.truncate(MAX_PAYLOAD);
    (Carrier { tcp: true, ..carrier }, segment)
}

/// How a payload is carried.
#[derive(Clone, Copy, Debug)]
struct Carrier {
    tcp: bool,
    v6: bool,
    vlan: bool,
    /// 32-bit words of IPv4 options.
    options: usize,
    /// IPv6 extension headers (hop-by-hop, destination options).
    ext: usize,
    /// The frame padded with zeros to Ethernet's minimum of 60 bytes (less
    /// the FCS), as a NIC delivers a short frame: bytes after the IP
    /// packet, not part of the payload.
    pad: bool,
}

impl Carrier {
    const UDP4: Self = Self { tcp: false, v6: false, vlan: false, options: 0, ext: 0, pad: false };

    /// Mostly UDP over IPv4; some TCP, IPv6, VLAN tags, IPv4 options and
    /// IPv6 extension headers, which move the payload's offset.
    fn random(r: &mut Rng) -> Self {
        let tcp = r.one_in(5);
        let v6 = r.one_in(5);
        Self {
            tcp,
            v6,
            vlan: r.one_in(8),
            options: if !v6 && r.one_in(8) { r.range(1, 10) } else { 0 },
            ext: if v6 && r.one_in(3) { r.range(1, 3) } else { 0 },
            pad: false,
        }
    }

    fn frame(self, src: IpAddr, payload: &[u8]) -> Vec<u8> {
        let dst = edge_for(src);
        let mut b = if self.tcp {
            FrameBuilder::tcp(src, dst, 40000, 5060)
        } else {
            FrameBuilder::udp(src, dst, 40000, 5060)
        };
        if self.vlan {
            b = b.vlan(0x8100);
        }
        if self.options > 0 {
            b = b.ipv4_options(self.options);
        }
        for k in 0..self.ext {
            b = b.ipv6_ext(if k == 0 { 0 } else { 60 });
        }
        let mut frame = b.payload(payload).build();
        if self.pad && frame.len() < 60 {
            frame.resize(60, 0);
        }
        frame
    }

    fn describe(self) -> String {
        let mut s = format!("{}/IPv{}", if self.tcp { "TCP" } else { "UDP" }, if self.v6 { 6 } else { 4 });
        if self.vlan {
            s += ", 802.1Q";
        }
        if self.options > 0 {
            s += &format!(", {} IPv4 option words", self.options);
        }
        if self.ext > 0 {
            s += &format!(", {} IPv6 extension headers", self.ext);
        }
        if self.pad {
            s += ", frame padded to 60 bytes";
        }
        s
    }
}

/// The fields of two summaries that differ, by name.
fn differing(a: &SipSummary, b: &SipSummary) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! field {
        ($($f:ident),*) => {
            $(if a.$f != b.$f { out.push(stringify!($f)); })*
        };
    }
    field!(
        kind,
        method,
        scheme,
        has_auth,
        status,
        cseq_method,
        sweep,
        number,
        cseq,
        stale,
        _pad8,
        _pad16,
        call_id,
        auth_nonce,
        challenge_nonce,
        username,
        body,
        content_length
    );
    out
}

/// The messages of a payload the kernel parses one after the other, as the
/// host reads them: `(offset, summary)`. Over UDP only the first (a
/// receiver discards what follows it, RFC 3261 18.3); over TCP each next
/// one from just past the previous one's body (its blank line and
/// Content-Length), up to [`MAX_MESSAGES`], while it starts inside the
/// window. Only the first is swept.
fn host_messages(window: &[u8], tcp: bool, sweep: bool) -> Vec<(usize, SipSummary)> {
    let mut out = Vec::new();
    let mut base = 0;
    loop {
        // The source is never challenged here (responses go to the edge's
        // address): a UDP request's headers are read only when it is swept.
        let s = parse_with(&window[base..], sweep && base == 0, tcp || sweep);
        out.push((base, s));
        let next = base as u64 + s.body as u64 + s.content_length as u64;
        if !(tcp && s.body != 0 && (out.len() as u32) < MAX_MESSAGES && next < window.len() as u64) {
            return out;
        }
        base = next as usize;
    }
}

/// What the kernel did with a payload, against what the host says.
#[derive(Debug)]
struct Outcome {
    kernel: ParseRun,
    /// The messages as the host reads them ([`host_messages`]).
    messages: Vec<(usize, SipSummary)>,
    /// Which of them SUMMARY must hold: the last one parsed. That is the
    /// last of the payload, unless one was dropped (a restricted source's),
    /// which ends the chain there: then whichever matches, if any.
    expected: usize,
    /// Bytes the kernel must have staged.
    window: usize,
}

impl Outcome {
    fn new(kernel: ParseRun, messages: Vec<(usize, SipSummary)>, window: usize, may_stop: bool) -> Self {
        let last = messages.len() - 1;
        let expected = match kernel.parsed {
            Parsed::Summary(k) if may_stop => messages.iter().position(|(_, h)| *h == k).unwrap_or(last),
            _ => last,
        };
        Self { kernel, messages, expected, window }
    }

    /// The summary the host says SUMMARY must hold.
    fn host(&self) -> SipSummary {
        self.messages[self.expected].1
    }

    /// Empty when they agree; otherwise what differs.
    fn disagreement(&self) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.window == 0 {
            // Nothing to stage: the parse stage must not run.
            if self.kernel.parsed != Parsed::NotReached {
                d.push("parse stage ran on an empty payload");
            }
            return d;
        }
        if self.kernel.staged_len.is_some_and(|n| n as usize != self.window) {
            d.push("staged length");
        }
        match self.kernel.parsed {
            Parsed::NotReached => d.push("parse stage not reached"),
            Parsed::Invalid(_) => d.push("SUMMARY is no summary"),
            Parsed::Summary(k) => d.extend(differing(&k, &self.host())),
        }
        d
    }

    /// Which message the host's summary is, for a report.
    fn which(&self) -> String {
        let (at, _) = self.messages[self.expected];
        format!("message {} of {} (at byte {at})", self.expected + 1, self.messages.len())
    }
}

/// What the compared messages exercised (host summaries), so that a run
/// that compares only trivial results shows.
#[derive(Default, Debug)]
struct Coverage {
    kinds: [usize; 5],
    methods: [usize; 8],
    challenges: usize,
    has_auth: usize,
    username: usize,
    auth_nonce: usize,
    challenge_nonce: usize,
    stale: usize,
    call_id: usize,
    cseq: usize,
    content_length: usize,
    body: usize,
    number: usize,
    full_window: usize,
    later_register: usize,
    later_invite: usize,
    headers_open: usize,
    /// Messages after the first of a TCP segment (parsed by the kernel's
    /// chain of tail calls).
    later_messages: usize,
    /// Payloads whose chain a drop ended before their last message.
    dropped_early: usize,
}

impl Coverage {
    fn add(&mut self, s: &SipSummary, window: usize) {
        use tollgate_common::sip::{kind, sweep};
        let n = |b: bool| b as usize;
        if let Some(k) = self.kinds.get_mut(s.kind as usize) {
            *k += 1;
        }
        if s.kind == kind::REQUEST
            && let Some(m) = self.methods.get_mut(s.method as usize)
        {
            *m += 1;
        }
        self.challenges += n(s.kind == kind::RESPONSE && matches!(s.status, 401 | 407));
        self.has_auth += n(s.has_auth);
        self.username += n(!s.username.is_empty());
        self.auth_nonce += n(s.auth_nonce != 0);
        self.challenge_nonce += n(s.challenge_nonce != 0);
        self.stale += n(s.stale);
        self.call_id += n(s.call_id != 0);
        self.cseq += n(s.cseq != 0);
        self.content_length += n(s.content_length != 0);
        self.body += n(s.body != 0);
        self.number += n(s.number.valid);
        self.full_window += n(window == SIP_WINDOW);
        self.later_register += n(s.sweep & sweep::LATER_REGISTER != 0);
        self.later_invite += n(s.sweep & sweep::LATER_INVITE != 0);
        self.headers_open += n(s.sweep & sweep::HEADERS_OPEN != 0);
    }
}

struct Differential {
    l: Loaded,
    /// The CPU this test's thread runs on, whose SUMMARY value is read.
    cpu: usize,
    coverage: Coverage,
    sweep: bool,
    /// Through the TC egress counter and its parse stage instead of XDP.
    egress: bool,
    src: IpAddr,
    compared: usize,
    reports: Vec<String>,
    /// The first disagreement's summaries, for the final assert_eq!.
    first: Option<(SipSummary, SipSummary)>,
}

impl Differential {
    fn new(sweep: bool) -> Self {
        let cpu = next_cpu();
        pin_to_cpu(cpu);
        let mut l = Loaded::new();
        let src = if sweep {
            // An auth-suspended source: its packets are swept whole.
            let until = monotonic_now_ns() + HOUR;
            for n in ["203.0.113.0/24", "2001:db8:1::/48"] {
                let net: IpNet = n.parse().expect("prefix");
                l.maps
                    .restrictions
                    .set(&net, Restriction { auth_until_ns: until, ..Default::default() })
                    .unwrap();
            }
            ATTACKER_V4
        } else {
            CUSTOMER_V4
        };
        Self {
            l,
            cpu,
            coverage: Coverage::default(),
            sweep,
            egress: false,
            src,
            compared: 0,
            reports: Vec::new(),
            first: None,
        }
    }

    fn source(&self, v6: bool) -> IpAddr {
        match (v6, self.src == ATTACKER_V4) {
            (false, _) => self.src,
            (true, true) => ATTACKER_V6,
            (true, false) => CUSTOMER_V6,
        }
    }

    fn run(&mut self, carrier: Carrier, payload: &[u8]) -> Outcome {
        let frame = carrier.frame(self.source(carrier.v6), payload);
        let kernel = if self.egress {
            self.l.parse_run_egress(self.cpu, &frame)
        } else {
            self.l.parse_run(self.cpu, &frame)
        };
        let window = payload.len().min(SIP_WINDOW);
        let messages = host_messages(&payload[..window], carrier.tcp, self.sweep);
        // Only the XDP program drops, and only a restricted source's.
        let may_stop = !self.egress && kernel.action == XDP_DROP;
        Outcome::new(kernel, messages, window, may_stop)
    }

    /// Every corpus message over UDP/IPv4, TCP and IPv6, then `cases`
    /// mutations from `seed`, each labelled `label` in reports.
    fn corpus_and_mutations(&mut self, label: &str, seed: u64, cases: usize) {
        for case in CORPUS {
            for carrier in
                [Carrier::UDP4, Carrier { tcp: true, ..Carrier::UDP4 }, Carrier { v6: true, ..Carrier::UDP4 }]
            {
                self.check(case.name, carrier, case.bytes);
            }
        }
        for i in 0..cases {
            let (carrier, payload) = case(seed, i);
            self.check(&format!("{label}mutation #{i} (seed {seed:#x})"), carrier, &payload);
        }
    }

    /// Compares one payload; prints and keeps a disagreement.
    fn check(&mut self, what: &str, carrier: Carrier, payload: &[u8]) {
        let out = self.run(carrier, payload);
        self.compared += 1;
        for (_, m) in &out.messages {
            self.coverage.add(m, out.window);
        }
        self.coverage.later_messages += out.messages.len() - 1;
        self.coverage.dropped_early += usize::from(out.expected + 1 < out.messages.len());
        let fields = out.disagreement();
        if fields.is_empty() || self.reports.len() >= MAX_REPORTED {
            return;
        }
        let small = self.shrink(carrier, payload, &fields);
        let small_out = self.run(carrier, &small);
        let report = format!(
            "DISAGREEMENT {n} ({mode}): {what} over {c}\n  fields: {fields:?}\n  payload ({len} bytes): \"{p}\"\n  \
             kernel: {k:?} (staged {s:?}, action {a})\n  host:   {h:?} ({hw})\n  \
             shrunk ({slen} bytes, same fields): \"{sp}\"\n  kernel: {sk:?}\n  host:   {sh:?} ({shw})",
            n = self.reports.len() + 1,
            mode = match (self.sweep, self.egress) {
                (true, _) => "sweep",
                (false, true) => "egress",
                (false, false) => "unrestricted",
            },
            c = carrier.describe(),
            len = payload.len(),
            p = payload.escape_ascii(),
            k = out.kernel.parsed,
            s = out.kernel.staged_len,
            a = out.kernel.action,
            h = out.host(),
            hw = out.which(),
            slen = small.len(),
            sp = small.escape_ascii(),
            sk = small_out.kernel.parsed,
            sh = small_out.host(),
            shw = small_out.which(),
        );
        eprintln!("{report}\n");
        if self.first.is_none()
            && let Parsed::Summary(k) = out.kernel.parsed
        {
            self.first = Some((k, out.host()));
        }
        self.reports.push(report);
    }

    /// A smaller payload on which the kernel and the host still disagree
    /// in the same fields: chunks removed, then bytes simplified, greedily.
    fn shrink(&mut self, carrier: Carrier, payload: &[u8], fields: &[&'static str]) -> Vec<u8> {
        let mut best = payload.to_vec();
        let same = |d: &mut Self, p: &[u8]| d.run(carrier, p).disagreement() == fields;
        let mut chunk = best.len().next_power_of_two();
        let mut tries = 0;
        while chunk >= 1 && tries < 4000 {
            let mut i = 0;
            let mut removed = false;
            while i < best.len() && tries < 4000 {
                let end = (i + chunk).min(best.len());
                let mut p = best.clone();
                p.drain(i..end);
                tries += 1;
                if same(self, &p) {
                    best = p;
                    removed = true;
                } else {
                    i += chunk;
                }
            }
            if !removed {
                chunk /= 2;
            }
        }
        // Letters and digits made plain ('a', '0') where that keeps it.
        for i in 0..best.len() {
            let plain = match best[i] {
                b'b'..=b'z' => b'a',
                b'1'..=b'9' => b'0',
                _ => continue,
            };
            let mut p = best.clone();
            p[i] = plain;
            if tries < 8000 && same(self, &p) {
                best = p;
            }
            tries += 1;
        }
        best
    }

    /// Fails with every disagreement collected, or if a run of the
    /// default size took longer than `budget`; returns what was exercised.
    fn finish(self, what: &str, started: Instant, budget: Option<Duration>) -> Coverage {
        let elapsed = started.elapsed();
        println!(
            "differential ({what}, CPU {}): {} packets compared in {:.1} s, {} disagreements",
            self.cpu,
            self.compared,
            elapsed.as_secs_f64(),
            self.reports.len()
        );
        println!("  exercised: {:?}", self.coverage);
        if !self.reports.is_empty() {
            eprintln!("{} disagreements:\n\n{}\n", self.reports.len(), self.reports.join("\n\n"));
            if let Some((kernel, host)) = self.first {
                assert_eq!(
                    kernel,
                    host,
                    "the first of {} disagreements (all printed above)",
                    self.reports.len()
                );
            }
            panic!("{} disagreements (printed above)", self.reports.len());
        }
        if let Some(budget) = budget {
            assert!(elapsed < budget, "took {elapsed:?}, over the {budget:?} budget");
        }
        self.coverage
    }
}

#[test]
fn kernel_and_host_parse_the_corpus_and_its_mutations_alike() {
    if !privileged("kernel_and_host_parse_the_corpus_and_its_mutations_alike") {
        return;
    }
    let started = Instant::now();
    let seed: u64 = env_or("TOLLGATE_DIFF_SEED", SEED);
    let cases: usize = env_or("TOLLGATE_DIFF_CASES", MUTATIONS);
    println!("differential: seed {seed:#x}, {cases} mutations (TOLLGATE_DIFF_SEED, TOLLGATE_DIFF_CASES)");
    let mut d = Differential::new(false);
    for case in CORPUS {
        for carrier in [
            Carrier::UDP4,
            Carrier { tcp: true, ..Carrier::UDP4 },
            Carrier { v6: true, ..Carrier::UDP4 },
            Carrier { tcp: true, v6: true, vlan: true, ext: 1, ..Carrier::UDP4 },
        ] {
            d.check(case.name, carrier, case.bytes);
        }
    }
    // The stale bytes a longer payload leaves in the scratch buffer must
    // not matter: every few cases, a window full of line ends, colons and
    // spaces goes first.
    let poison: Vec<u8> = b"\n:\r ,\"=a".iter().copied().cycle().take(SIP_WINDOW).collect();
    for i in 0..cases {
        let (carrier, payload) = case(seed, i);
        if i % 7 == 0 {
            d.run(Carrier::UDP4, &poison);
        }
        d.check(&format!("mutation #{i} (seed {seed:#x})"), carrier, &payload);
    }
    let c = d.finish("unrestricted source", started, (cases <= MUTATIONS).then_some(BUDGET));
    if cases >= MUTATIONS {
        // Not a comparison of trivial results: every kind of message and
        // every extracted value, many times over.
        let [_, requests, responses, keepalives, unparsed] = c.kinds;
        for (what, n, min) in [
            ("requests", requests, 1000),
            ("responses", responses, 500),
            ("keep-alives", keepalives, 20),
            ("unparsed", unparsed, 500),
            ("challenges", c.challenges, 200),
            ("credentials", c.has_auth, 500),
            ("usernames", c.username, 500),
            ("credential nonces", c.auth_nonce, 500),
            ("challenge nonces", c.challenge_nonce, 200),
            ("stale=true", c.stale, 5),
            ("Call-IDs", c.call_id, 1000),
            ("CSeqs", c.cseq, 1000),
            ("Content-Lengths", c.content_length, 500),
            ("header ends", c.body, 1000),
            ("numbers", c.number, 500),
            ("full windows", c.full_window, 200),
            ("later messages of a TCP segment", c.later_messages, 1000),
        ] {
            assert!(n >= min, "only {n} {what} compared (at least {min} expected)");
        }
    }
}

#[test]
fn kernel_and_host_sweep_a_restricted_sources_packets_alike() {
    if !privileged("kernel_and_host_sweep_a_restricted_sources_packets_alike") {
        return;
    }
    let started = Instant::now();
    let seed: u64 = env_or("TOLLGATE_DIFF_SEED", SEED) ^ 0x5eed;
    let cases: usize = env_or("TOLLGATE_DIFF_RESTRICTED_CASES", RESTRICTED_MUTATIONS);
    println!("differential, sweep: seed {seed:#x}, {cases} mutations");
    let mut d = Differential::new(true);
    d.corpus_and_mutations("sweep ", seed, cases);
    let c =
        d.finish("auth-suspended source, sweep", started, (cases <= RESTRICTED_MUTATIONS).then_some(BUDGET));
    if cases >= RESTRICTED_MUTATIONS {
        for (what, n, min) in [
            ("later REGISTERs", c.later_register, 3),
            ("later INVITEs", c.later_invite, 3),
            ("open headers", c.headers_open, 100),
            ("credentials", c.has_auth, 100),
        ] {
            assert!(n >= min, "only {n} {what} compared (at least {min} expected)");
        }
    }
}

/// The TC egress counter (`--egress-iface`) has its own parse stage, the
/// same code verified as another program: a few thousand mutations through
/// it too.
#[test]
fn kernel_and_host_parse_alike_on_egress() {
    if !privileged("kernel_and_host_parse_alike_on_egress") {
        return;
    }
    let started = Instant::now();
    let seed: u64 = env_or("TOLLGATE_DIFF_SEED", SEED) ^ 0xe9e55;
    let cases: usize = env_or("TOLLGATE_DIFF_EGRESS_CASES", EGRESS_MUTATIONS);
    println!("differential, egress: seed {seed:#x}, {cases} mutations");
    let mut d = Differential::new(false);
    d.egress = true;
    d.corpus_and_mutations("egress ", seed, cases);
    d.finish("TC egress", started, (cases <= EGRESS_MUTATIONS).then_some(BUDGET));
}

/// Short frames reach XDP padded to Ethernet's minimum (60 bytes without
/// the FCS) by the sender's NIC: a CRLF keep-alive over UDP/IPv4 (46 bytes)
/// or a bare TCP ACK (54 bytes) carries zeros after its IP packet. Those
/// bytes are not payload (IPv4's total length and UDP's length end before
/// them), and the receiver's IP layer trims them; the message must be read
/// as the host reads the payload, and a restricted source's keep-alives and
/// ACKs must not become "unreadable" (veth, which the other tests use,
/// never pads).
///
/// (Found by this test: the first program used to stage every byte of the
/// frame after the headers, so the kernel parsed the padding, and a
/// restricted source's keep-alives and bare ACKs were dropped as
/// `restricted_unreadable`.)
#[test]
fn ethernet_padding_is_not_payload() {
    if !privileged("ethernet_padding_is_not_payload") {
        return;
    }
    let started = Instant::now();
    let payloads: [&[u8]; 6] = [b"", b"\r\n", b"\r\n\r\n", b"\n", b"\r\n\r\n\r\n", b"OPTIONS"];
    let carriers = [
        Carrier { pad: true, ..Carrier::UDP4 },
        Carrier { pad: true, tcp: true, ..Carrier::UDP4 },
        Carrier { pad: true, vlan: true, ..Carrier::UDP4 },
    ];
    let mut dropped = Vec::new();
    let mut disagreements = 0;
    for sweep in [false, true] {
        let mut d = Differential::new(sweep);
        for carrier in carriers {
            for p in payloads {
                if p.is_empty() && !carrier.tcp {
                    continue;
                }
                d.check("a short message", carrier, p);
                // What a restricted source's padded frame gets, against the
                // same frame unpadded.
                let src = d.source(false);
                let padded = d.l.parse_run(d.cpu, &carrier.frame(src, p)).action;
                let plain = d.l.parse_run(d.cpu, &Carrier { pad: false, ..carrier }.frame(src, p)).action;
                if sweep && padded != plain {
                    dropped.push(format!(
                        "\"{}\" over {}: action {padded}, unpadded {plain}",
                        p.escape_ascii(),
                        carrier.describe()
                    ));
                }
            }
        }
        println!(
            "differential ({}): {} packets compared, {} disagreements",
            if sweep { "padded frames, sweep" } else { "padded frames" },
            d.compared,
            d.reports.len()
        );
        disagreements += d.reports.len();
    }
    if !dropped.is_empty() {
        eprintln!("a restricted source's padded frames, verdict changed:\n  {}", dropped.join("\n  "));
    }
    println!("in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!((disagreements, dropped.len()), (0, 0), "disagreements and changed verdicts (printed above)");
}
