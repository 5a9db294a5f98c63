//! Real-looking SIP messages (tests/fixtures/sip) with what tollgate must
//! make of them. One table serves the host unit tests, the
//! BPF_PROG_TEST_RUN corpus test against the loaded program, and the fuzzer's
//! seeds (std only).

use crate::{
    number::{Digits, MAX_EMERGENCY_NUMBERS, MAX_INTL_PREFIXES, NumberPlan, class},
    sip::{kind, method},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub kind: u8,
    pub method: u8,
    pub has_auth: bool,
    pub status: u16,
    pub cseq_method: u8,
    pub class: u8,
    pub cc: u16,
}

const fn base(kind: u8) -> Expect {
    Expect {
        kind,
        method: method::NONE,
        has_auth: false,
        status: 0,
        cseq_method: method::NONE,
        class: class::UNKNOWN,
        cc: 0,
    }
}
/// A request. Its CSeq is read only with credentials (see `authed`), whose
/// answer is paired, and in an INVITE, which is counted as one call
/// attempt by Call-ID and CSeq.
const fn req(method: u8) -> Expect {
    let cseq_method = if method == method::INVITE { method::INVITE } else { method::NONE };
    Expect { method, cseq_method, ..base(kind::REQUEST) }
}
/// The same with credentials: its CSeq names its method.
const fn authed(e: Expect) -> Expect {
    Expect { has_auth: true, cseq_method: e.method, ..e }
}
const fn invite(class: u8, cc: u16) -> Expect {
    Expect { class, cc, ..req(method::INVITE) }
}
const fn register(has_auth: bool) -> Expect {
    if has_auth { authed(req(method::REGISTER)) } else { req(method::REGISTER) }
}
const fn resp(status: u16, cseq_method: u8) -> Expect {
    Expect { status, cseq_method, ..base(kind::RESPONSE) }
}

pub struct Case {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub expect: Expect,
}

macro_rules! case {
    ($file:literal, $expect:expr) => {
        Case {
            name: $file,
            bytes: include_bytes!(concat!("../../tests/fixtures/sip/", $file)),
            expect: $expect,
        }
    };
}

use class::{DOMESTIC, EMERGENCY, INTERNATIONAL, UNKNOWN};

pub const CORPUS: &[Case] = &[
    case!("register-noauth.sip", register(false)),
    case!("register-auth.sip", register(true)),
    case!("register-proxy-auth.sip", register(true)),
    case!("register-auth-lowercase.sip", register(true)),
    case!("register-crlf-prefixed.sip", register(false)),
    case!("svcrack-register.sip", register(true)),
    case!("register-truncated.sip", base(kind::UNPARSED)),
    case!("register-auth-beyond-window.sip", base(kind::UNPARSED)),
    case!("401-register.sip", resp(401, method::REGISTER)),
    case!("407-register.sip", resp(407, method::REGISTER)),
    case!("403-register.sip", resp(403, method::REGISTER)),
    case!("200-register.sip", resp(200, method::REGISTER)),
    case!("401-register-cseq-lowercase.sip", resp(401, method::REGISTER)),
    case!("401-invite.sip", resp(401, method::INVITE)),
    case!("100-invite.sip", resp(100, method::INVITE)),
    case!("200-options.sip", resp(200, method::OPTIONS)),
    case!("401-register-truncated-before-cseq.sip", base(kind::UNPARSED)),
    case!("response-bad-status.sip", base(kind::UNPARSED)),
    case!("invite-intl-plus-232.sip", invite(INTERNATIONAL, 232)),
    case!("invite-intl-010-232.sip", invite(INTERNATIONAL, 232)),
    case!("invite-intl-00-232.sip", invite(INTERNATIONAL, 232)),
    case!("invite-intl-tel-44.sip", invite(INTERNATIONAL, 44)),
    case!("invite-intl-visual-1876.sip", invite(INTERNATIONAL, 1)),
    case!("invite-intl-882.sip", invite(INTERNATIONAL, 882)),
    case!("invite-intl-unassigned.sip", invite(INTERNATIONAL, 0)),
    case!("invite-intl-sips.sip", invite(INTERNATIONAL, 232)),
    case!("invite-intl-phone-context.sip", invite(INTERNATIONAL, 232)),
    case!("invite-with-auth.sip", authed(invite(INTERNATIONAL, 232))),
    case!("invite-domestic-trunk.sip", invite(DOMESTIC, 0)),
    case!("invite-domestic-plus81.sip", invite(DOMESTIC, 0)),
    case!("invite-domestic-010-81.sip", invite(DOMESTIC, 0)),
    case!("invite-emergency-110.sip", invite(EMERGENCY, 0)),
    case!("invite-emergency-119.sip", invite(EMERGENCY, 0)),
    case!("invite-emergency-112.sip", invite(EMERGENCY, 0)),
    case!("invite-username.sip", invite(UNKNOWN, 0)),
    case!("invite-feature-code.sip", invite(UNKNOWN, 0)),
    case!("invite-local-extension.sip", invite(UNKNOWN, 0)),
    case!("invite-no-user.sip", invite(UNKNOWN, 0)),
    // ACK and CANCEL are never challenged: read to their start line only.
    case!("ack.sip", req(method::ACK)),
    case!("bye.sip", req(method::BYE)),
    case!("cancel.sip", req(method::CANCEL)),
    case!("options-keepalive.sip", req(method::OPTIONS)),
    case!("svmap-options.sip", req(method::OPTIONS)),
    case!("subscribe.sip", req(method::OTHER)),
    case!("keepalive-crlf.sip", base(kind::KEEPALIVE)),
    case!("keepalive-single-crlf.sip", base(kind::KEEPALIVE)),
    case!("garbage.sip", base(kind::UNPARSED)),
    case!("http-get.sip", base(kind::UNPARSED)),
    case!("tcp-continuation.sip", base(kind::UNPARSED)),
];

/// The bytes of the corpus message `name` (a file in tests/fixtures/sip).
///
/// # Panics
///
/// If the corpus has no such message: a test's typo, to fail loudly.
pub fn fixture(name: &str) -> &'static [u8] {
    CORPUS.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no corpus message {name}")).bytes
}

/// The plan the corpus is written for: Japan, the product's default.
pub fn japan() -> NumberPlan {
    let mut plan = NumberPlan { home_cc: 81, ..NumberPlan::default() };
    let intl: [&[u8]; 2] = [b"00", b"010"];
    for (slot, p) in plan.intl_prefixes.iter_mut().zip(intl).take(MAX_INTL_PREFIXES) {
        *slot = Digits::new(p).expect("valid");
    }
    plan.trunk_prefix = Digits::new(b"0").expect("valid");
    let emergency: [&[u8]; 5] = [b"110", b"118", b"119", b"112", b"911"];
    for (slot, e) in plan.emergency.iter_mut().zip(emergency).take(MAX_EMERGENCY_NUMBERS) {
        *slot = Digits::new(e).expect("valid");
    }
    plan
}

/// The shipped country table as a lookup, for host-side classification.
pub struct TableCodes(std::collections::BTreeSet<u16>);

impl TableCodes {
    pub fn shipped() -> Self {
        Self(
            crate::number::country_table(crate::number::COUNTRY_TABLE)
                .map(|r| r.expect("valid table").0)
                .collect(),
        )
    }
}

impl crate::number::CountryCodes for TableCodes {
    fn is_assigned(&self, cc: u16) -> bool {
        self.0.contains(&cc)
    }
}

/// What the host-side parser and classifier make of `bytes`.
pub fn evaluate(bytes: &[u8], plan: &NumberPlan, codes: &TableCodes) -> Expect {
    let s = crate::sip::parse(bytes);
    let c = crate::number::classify(&s.number, plan, codes);
    let invite = s.kind == kind::REQUEST && s.method == method::INVITE;
    Expect {
        kind: s.kind,
        method: s.method,
        has_auth: s.has_auth,
        status: s.status,
        cseq_method: s.cseq_method,
        class: if invite { c.class } else { class::UNKNOWN },
        cc: if invite { c.cc } else { 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parser_matches_the_corpus() {
        let (plan, codes) = (japan(), TableCodes::shipped());
        for case in CORPUS {
            assert_eq!(evaluate(case.bytes, &plan, &codes), case.expect, "{}", case.name);
        }
        assert!(CORPUS.len() >= 40);
    }

    #[test]
    fn every_fixture_file_is_in_the_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sip");
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let name = entry.expect("entry").file_name().into_string().expect("utf-8");
            assert!(CORPUS.iter().any(|c| c.name == name), "{name} has no expectation");
        }
    }

    #[test]
    fn the_shipped_table_is_prefix_free_and_has_the_codes_fraud_targets() {
        let codes: std::vec::Vec<u16> = crate::number::country_table(crate::number::COUNTRY_TABLE)
            .map(|r| r.expect("valid line").0)
            .collect();
        for a in &codes {
            for b in &codes {
                let (sa, sb) = (std::format!("{a}"), std::format!("{b}"));
                assert!(a == b || !sb.starts_with(&sa), "{a} is a prefix of {b}");
            }
        }
        for cc in [1, 7, 20, 44, 81, 232, 882, 883] {
            assert!(codes.contains(&cc), "{cc}");
        }
    }
}
