//! The E.164 country-code table shipped in data/, for the kernel map and for
//! metric labels (ISO code, never a number).

use std::collections::BTreeMap;

use tollgate_common::number::{COUNTRY_TABLE, country_table};

#[derive(Clone, Debug)]
pub struct Countries(BTreeMap<u16, String>);

impl Countries {
    /// The table compiled into the binary (validated by unit tests).
    pub fn shipped() -> Self {
        Self(
            country_table(COUNTRY_TABLE)
                .map(|r| r.expect("the shipped table is valid"))
                .map(|(cc, label)| (cc, label.to_owned()))
                .collect(),
        )
    }

    pub fn codes(&self) -> Vec<u16> {
        self.0.keys().copied().collect()
    }

    /// The label (ISO 3166 code or tag) of an assigned code.
    pub fn label(&self, cc: u16) -> Option<&str> {
        self.0.get(&cc).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_loads() {
        let c = Countries::shipped();
        assert_eq!(c.label(232), Some("SL"));
        assert_eq!(c.label(81), Some("JP"));
        assert_eq!(c.label(0), None);
        assert!(c.codes().len() > 200);
    }
}
