//! DICOM UIDs (PS3.5 §9): validation, and generation under a root.
//!
//! Validation matters beyond conformance: UIDs become file names in the
//! store, so a value that is not a UID must never reach the file system.

use crate::error::{Error, Result};

/// The root for UUID-derived UIDs (PS3.5 §B.2).
pub const UUID_ROOT: &str = "2.25";

/// Check that `value` is a valid UID: 1 to 64 characters, dot-separated
/// numeric components, no empty component, no leading zero.
pub fn validate(value: &str) -> Result<()> {
    let fail = |reason| {
        Err(Error::InvalidUid {
            value: value.chars().take(80).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("empty");
    }
    if value.len() > 64 {
        return fail("longer than 64 characters");
    }
    for component in value.split('.') {
        if component.is_empty() {
            return fail("empty component");
        }
        if !component.bytes().all(|b| b.is_ascii_digit()) {
            return fail("component with a character other than 0-9");
        }
        if component.len() > 1 && component.starts_with('0') {
            return fail("component with a leading zero");
        }
    }
    Ok(())
}

/// Makes new, globally unique UIDs under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidGenerator {
    root: String,
}

impl Default for UidGenerator {
    fn default() -> Self {
        Self {
            root: UUID_ROOT.to_string(),
        }
    }
}

impl UidGenerator {
    /// A generator under `root`, which must be a valid UID short enough to
    /// leave room for at least 20 digits of randomness.
    pub fn new(root: &str) -> Result<Self> {
        validate(root)?;
        if root.len() > 43 {
            return Err(Error::InvalidUid {
                value: root.to_string(),
                reason: "root longer than 43 characters leaves too little room for uniqueness",
            });
        }
        Ok(Self {
            root: root.to_string(),
        })
    }

    /// The root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// A new UID: the root followed by the decimal value of a random UUID
    /// (truncated to fit 64 characters for roots other than 2.25).
    pub fn generate(&self) -> String {
        self.under_root(uuid::Uuid::new_v4().as_u128())
    }

    /// The UID that `name` always gives under this root: the root followed
    /// by the decimal value of the name-based (SHA-1, version 5) UUID of
    /// `name` in the OID namespace (PS3.5 B.2), so that the same name gives
    /// the same UID on every run and restart, and different names different
    /// UIDs. For identifiers that must stay the same across jobs, such as
    /// the series Vigie's results of one study and model version go into.
    pub fn derive(&self, name: &str) -> String {
        self.under_root(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).as_u128())
    }

    fn under_root(&self, value: u128) -> String {
        let room = 64 - self.root.len() - 1;
        let digits = value.to_string();
        let digits = if digits.len() > room {
            let trimmed = digits[digits.len() - room..].trim_start_matches('0');
            if trimmed.is_empty() {
                "0".to_string()
            } else {
                trimmed.to_string()
            }
        } else {
            digits
        };
        format!("{}.{}", self.root, digits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_values_that_could_escape_a_directory() {
        for bad in [
            "",
            "..",
            "1..2",
            "1.2/3",
            "../etc",
            "1.02",
            "1.2.",
            "a.b",
            &"1".repeat(65),
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["1.2.840.10008.5.1.4.1.1.4", "2.25.0", "0", "1.0.3"] {
            assert!(validate(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn generated_uids_are_valid_and_distinct() {
        for root in [
            "2.25",
            "1.2.826.0.1.3680043.10.999",
            "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16",
        ] {
            let generator = UidGenerator::new(root).expect("valid root");
            let a = generator.generate();
            let b = generator.generate();
            assert_ne!(a, b);
            for uid in [a, b] {
                validate(&uid).expect("generated UID is valid");
                assert!(uid.starts_with(root));
            }
        }
        assert!(UidGenerator::new("1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20").is_err());
    }

    #[test]
    fn derived_uids_are_valid_stable_and_distinct_per_name() {
        for root in ["2.25", "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16"] {
            let generator = UidGenerator::new(root).expect("valid root");
            let a = generator.derive("study 1.2.3 / SR / model 1.0");
            assert_eq!(a, generator.derive("study 1.2.3 / SR / model 1.0"));
            assert_ne!(a, generator.derive("study 1.2.3 / SR / model 1.1"));
            validate(&a).expect("derived UID is valid");
            assert!(a.starts_with(&format!("{root}.")));
        }
    }
}
