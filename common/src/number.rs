//! Classification of dialled numbers: emergency, domestic, international
//! (with its E.164 country code), or unknown. Only the class and the country
//! code ever leave this module; the digits are dropped.

use crate::sip::{Number, pow10};

/// A short digit string, e.g. an access prefix or an emergency number, as
/// its value and digit count (so "00" and "0" differ).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Digits {
    pub value: u64,
    pub len: u8,
    pub _reserved: [u8; 7],
}

impl Digits {
    pub const MAX: usize = 7;

    /// From ASCII digits; `None` if empty, too long or not all digits.
    pub fn new(s: &[u8]) -> Option<Self> {
        if s.is_empty() || s.len() > Self::MAX || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = s.iter().fold(0u64, |v, d| v * 10 + (d - b'0') as u64);
        Some(Self { value, len: s.len() as u8, _reserved: [0; 7] })
    }

    /// Whether `n` starts with these digits (an empty `Digits` never matches).
    #[inline(always)]
    fn prefixes(&self, n: &Number) -> bool {
        self.len != 0 && self.len <= n.len && n.leading(self.len) == self.value
    }

    /// Whether `n` is exactly these digits.
    #[inline(always)]
    fn equals(&self, n: &Number) -> bool {
        self.len != 0 && self.len == n.len && n.value == self.value
    }
}

pub const MAX_INTL_PREFIXES: usize = 4;
pub const MAX_EMERGENCY_NUMBERS: usize = 8;

/// How numbers are dialled in the carrier's country. Filled by the agent from
/// its flags; element 0 of the NUMBER_PLAN map in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NumberPlan {
    /// The carrier's own E.164 country code (81 for Japan).
    pub home_cc: u16,
    pub _reserved: [u8; 6],
    /// International access prefixes other than '+' ("00", "010", "011").
    pub intl_prefixes: [Digits; MAX_INTL_PREFIXES],
    /// National trunk prefix ("0").
    pub trunk_prefix: Digits,
    /// Emergency short numbers; never restricted by anything tollgate does.
    pub emergency: [Digits; MAX_EMERGENCY_NUMBERS],
}

/// Number classes. `u8` constants because they cross into BPF maps.
pub mod class {
    /// Not a number (a user name, a feature code) or a local short number.
    pub const UNKNOWN: u8 = 0;
    pub const EMERGENCY: u8 = 1;
    pub const DOMESTIC: u8 = 2;
    pub const INTERNATIONAL: u8 = 3;
    pub const COUNT: usize = 4;

    pub const NAMES: [&str; COUNT] = ["unknown", "emergency", "domestic", "international"];
}

/// Country codes are 1 to 3 digits, so an array of this size indexes them.
pub const COUNTRY_CODE_SLOTS: u32 = 1000;
/// Country code of an international number whose code is not assigned.
pub const UNASSIGNED_CC: u16 = 0;

/// Which E.164 country codes are assigned.
pub trait CountryCodes {
    fn is_assigned(&self, cc: u16) -> bool;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    pub class: u8,
    /// The E.164 country code of an international number, else 0.
    pub cc: u16,
}

impl Classification {
    const UNKNOWN: Self = Self { class: class::UNKNOWN, cc: 0 };
    const DOMESTIC: Self = Self { class: class::DOMESTIC, cc: 0 };
}

/// The country code at the start of `n` after `skip` digits: E.164 codes are
/// prefix-free, so at most one of the 1-, 2- and 3-digit candidates is
/// assigned.
#[inline(always)]
fn country_code<C: CountryCodes + ?Sized>(n: &Number, skip: u8, codes: &C) -> u16 {
    let avail = n.len.saturating_sub(skip);
    let rest = n.trailing_after(skip);
    let mut k = 1u8;
    while k <= 3 {
        if k > avail {
            break;
        }
        let cc = rest.checked_div(pow10(avail - k)).unwrap_or(0) as u16;
        if codes.is_assigned(cc) {
            return cc;
        }
        k += 1;
    }
    UNASSIGNED_CC
}

#[inline(always)]
pub fn classify<C: CountryCodes + ?Sized>(n: &Number, plan: &NumberPlan, codes: &C) -> Classification {
    if !n.valid || n.len == 0 {
        return Classification::UNKNOWN;
    }
    if !n.plus {
        let mut e = 0;
        while e < MAX_EMERGENCY_NUMBERS {
            if plan.emergency[e].equals(n) {
                return Classification { class: class::EMERGENCY, cc: 0 };
            }
            e += 1;
        }
    }
    // Where the country code starts, if the number is in international form.
    let mut skip = if n.plus { Some(0) } else { None };
    if skip.is_none() {
        // The longest matching access prefix wins ("010" over "0").
        let mut best = 0u8;
        let mut p = 0;
        while p < MAX_INTL_PREFIXES {
            let prefix = &plan.intl_prefixes[p];
            if prefix.prefixes(n) && prefix.len > best {
                best = prefix.len;
            }
            p += 1;
        }
        if best > 0 {
            skip = Some(best);
        }
    }
    match skip {
        Some(skip) => {
            let cc = country_code(n, skip, codes);
            if cc == plan.home_cc && cc != UNASSIGNED_CC {
                Classification::DOMESTIC
            } else {
                Classification { class: class::INTERNATIONAL, cc }
            }
        }
        None if plan.trunk_prefix.prefixes(n) => Classification::DOMESTIC,
        None => Classification::UNKNOWN,
    }
}

/// Parses the repository's `data/e164-country-codes.csv`: `(code, label)`
/// for every data line; comments and blank lines are skipped.
pub fn country_table(text: &str) -> impl Iterator<Item = Result<(u16, &str), &str>> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|line| {
        let mut fields = line.splitn(3, ',');
        let code = fields.next().and_then(|c| c.parse::<u16>().ok()).filter(|c| *c > 0 && *c < 1000);
        let label = fields.next().filter(|l| !l.is_empty());
        match (code, label) {
            (Some(c), Some(l)) => Ok((c, l)),
            _ => Err(line),
        }
    })
}

/// The table shipped with tollgate.
pub const COUNTRY_TABLE: &str = include_str!("../../data/e164-country-codes.csv");
