//! Why a DAC was revoked: the CRLReason codes of RFC 5280 §5.3.1 that apply to an end-entity
//! certificate we issued.

use std::fmt;

use crate::error::{Error, Result};

/// RFC 5280 §5.3.1 CRLReason, the subset an operator may give for a DAC. Left out, with the
/// reason each is refused (see [`RevocationReason::parse`]): cACompromise and aACompromise name
/// a CA's or attribute authority's compromise, not a device's; certificateHold is a temporary
/// state that this server does not undo; removeFromCRL belongs to delta CRLs only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

/// Every accepted reason, for messages and help texts.
pub const REASON_NAMES: &str = "unspecified, keyCompromise, affiliationChanged, superseded, \
     cessationOfOperation, privilegeWithdrawn";

impl RevocationReason {
    const ALL: [RevocationReason; 6] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The RFC 5280 ASN.1 name (`keyCompromise`).
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }

    /// The CRLReason ENUMERATED value (RFC 5280 §5.3.1).
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::PrivilegeWithdrawn => 9,
        }
    }

    /// The reason with this CRLReason value, if it is one we accept.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Parses an RFC 5280 reason name. Case and `-`/`_` are ignored (`key-compromise` works),
    /// so a shell user need not remember the camel case.
    pub fn parse(text: &str) -> Result<Self> {
        let fold = |s: &str| {
            s.chars()
                .filter(|c| *c != '-' && *c != '_')
                .collect::<String>()
                .to_ascii_lowercase()
        };
        let wanted = fold(text);
        if let Some(r) = Self::ALL.into_iter().find(|r| fold(r.name()) == wanted) {
            return Ok(r);
        }
        let why = match wanted.as_str() {
            "cacompromise" | "aacompromise" => {
                "it names the compromise of a CA or attribute authority, not of a device"
            }
            "certificatehold" => "a hold is temporary and this server does not lift one",
            "removefromcrl" => "it is used in delta CRLs only",
            _ => "it is not an RFC 5280 §5.3.1 reason name",
        };
        Err(Error::BadRequest(format!(
            "revocation reason {text:?} is refused: {why}; use one of {REASON_NAMES}"
        )))
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_codes_and_refusals() {
        for r in RevocationReason::ALL {
            assert_eq!(RevocationReason::parse(r.name()).ok(), Some(r));
            assert_eq!(RevocationReason::from_code(r.code()), Some(r));
        }
        assert_eq!(
            RevocationReason::parse("key-compromise").ok(),
            Some(RevocationReason::KeyCompromise)
        );
        for bad in ["certificateHold", "cACompromise", "removeFromCRL", "stolen"] {
            let msg = RevocationReason::parse(bad).expect_err(bad).to_string();
            assert!(msg.contains("keyCompromise"), "{msg}");
        }
        assert_eq!(RevocationReason::from_code(6), None);
    }
}
