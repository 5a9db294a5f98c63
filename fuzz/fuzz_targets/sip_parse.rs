//! The SIP parser and number classifier on arbitrary bytes: no panic, and
//! the invariants the kernel's counting relies on hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_common::{
    corpus::{TableCodes, japan},
    number::{class, classify},
    sip::{self, MAX_DIGITS, kind},
};

static CODES: std::sync::LazyLock<TableCodes> = std::sync::LazyLock::new(TableCodes::shipped);

fuzz_target!(|data: &[u8]| {
    let s = sip::parse(data);
    assert!(s.kind <= kind::UNPARSED);
    if s.kind == kind::RESPONSE {
        assert!((100..700).contains(&s.status));
        assert_ne!(s.cseq_method, sip::method::NONE);
    }
    if s.number.valid {
        assert!(s.number.len > 0 && s.number.len as usize <= MAX_DIGITS);
    }
    let c = classify(&s.number, &japan(), &*CODES);
    assert!((c.class as usize) < class::COUNT);
    assert!(c.cc < 1000);
    if c.class != class::INTERNATIONAL {
        assert_eq!(c.cc, 0);
    }
});
