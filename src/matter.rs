//! Matter identifiers: VID and PID, and how verifiers read them from a subject.
//!
//! One place for Matter Core §6.2.2.2 (VID/PID encoding) as the Matter SDK applies it
//! (`ExtractVIDPIDFromX509Cert`): the attribute form, the legacy `Mvid:`/`Mpid:` CN form, and the
//! trap that a malformed CN tag fails the whole attestation even when attributes are present.

use std::fmt;

use const_oid::ObjectIdentifier;
use der::{Tag, Tagged};
use x509_cert::name::Name;

use crate::error::{Error, Result};

/// Matter VID attribute, 1.3.6.1.4.1.37244.2.1.
pub const OID_VID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.37244.2.1");
/// Matter PID attribute, 1.3.6.1.4.1.37244.2.2.
pub const OID_PID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.37244.2.2");
/// id-at-commonName.
pub const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Longest CN a DAC carries, and the span in which verifiers look for legacy tags
/// (MATTER.md "DAC": CN ≤ 64 characters).
pub const MAX_CN_CHARS: usize = 64;

/// A Vendor ID: non-zero, written as exactly 4 uppercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vid(u16);

/// A Product ID: non-zero, written as exactly 4 uppercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(u16);

macro_rules! matter_id {
    ($ty:ident, $name:literal) => {
        impl $ty {
            /// Parses the Matter text form: exactly 4 uppercase hex digits, not 0000
            /// (Matter Core §6.2.2.2).
            pub fn parse(text: &str) -> Result<Self> {
                let bad = |problem| Error::BadId {
                    which: $name,
                    value: text.to_string(),
                    problem,
                };
                if text.len() != 4 {
                    return Err(bad("must be exactly 4 hex digits"));
                }
                if text.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Err(bad("hex digits must be uppercase"));
                }
                if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("must be exactly 4 hex digits"));
                }
                let value = u16::from_str_radix(text, 16).map_err(|_| bad("not hex"))?;
                Self::new(value).ok_or_else(|| bad("0000 is not a valid value"))
            }

            /// A non-zero value.
            pub fn new(value: u16) -> Option<Self> {
                (value != 0).then_some(Self(value))
            }

            /// The numeric value.
            pub fn value(self) -> u16 {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:04X}", self.0)
            }
        }
    };
}
matter_id!(Vid, "VID");
matter_id!(Pid, "PID");

/// What a Matter verifier reads from a subject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectIds {
    /// The commonName, if any.
    pub cn: Option<String>,
    /// VID from the attribute, else from the CN's legacy `Mvid:` tag.
    pub vid: Option<Vid>,
    /// PID from the attribute, else from the CN's legacy `Mpid:` tag.
    pub pid: Option<Pid>,
    /// Whether VID/PID came from the legacy CN form.
    pub legacy: bool,
    /// OIDs of attributes other than CN, VID and PID.
    pub others: Vec<ObjectIdentifier>,
}

/// Reads VID, PID and CN from a subject as the Matter SDK does, refusing everything that would
/// make a verifier fail: duplicate attributes, malformed values, malformed CN tags, and CN tags
/// that contradict the attributes.
pub fn read_subject(name: &Name) -> Result<SubjectIds> {
    let mut ids = SubjectIds::default();
    let mut cn_seen = false;
    for atv in name.iter() {
        if atv.oid == OID_VID || atv.oid == OID_PID {
            let which = if atv.oid == OID_VID { "VID" } else { "PID" };
            let text = directory_string(&atv.value).ok_or(Error::BadId {
                which,
                value: format!("{:?}", atv.value.tag()),
                problem: "must be a UTF8String or PrintableString",
            })?;
            if atv.oid == OID_VID {
                if ids.vid.is_some() {
                    return Err(Error::DuplicateId("VID"));
                }
                ids.vid = Some(Vid::parse(text)?);
            } else {
                if ids.pid.is_some() {
                    return Err(Error::DuplicateId("PID"));
                }
                ids.pid = Some(Pid::parse(text)?);
            }
        } else if atv.oid == OID_CN {
            if cn_seen {
                return Err(Error::BadRequest(
                    "the subject carries more than one CN".into(),
                ));
            }
            cn_seen = true;
            let text = directory_string(&atv.value).ok_or_else(|| {
                Error::BadRequest("the CN must be a UTF8String or PrintableString".into())
            })?;
            ids.cn = Some(text.to_string());
        } else {
            ids.others.push(atv.oid);
        }
    }
    if let Some(cn) = ids.cn.clone() {
        let (legacy_vid, legacy_pid) = read_legacy_cn(&cn)?;
        // MATTER.md: "never emit a CN whose tag conflicts with the attributes".
        let conflict = |which: &str| {
            Error::BadRequest(format!(
                "the CN {cn:?} carries a {which} that contradicts the {which} attribute"
            ))
        };
        if let (Some(a), Some(l)) = (ids.vid, legacy_vid)
            && a != l
        {
            return Err(conflict("VID"));
        }
        if let (Some(a), Some(l)) = (ids.pid, legacy_pid)
            && a != l
        {
            return Err(conflict("PID"));
        }
        // Legacy values are used only when neither attribute is present (MATTER.md).
        if ids.vid.is_none() && ids.pid.is_none() && (legacy_vid.is_some() || legacy_pid.is_some())
        {
            ids.vid = legacy_vid;
            ids.pid = legacy_pid;
            ids.legacy = true;
        }
    }
    Ok(ids)
}

/// The legacy CN form `Mvid:XXXX` / `Mpid:XXXX` (case-sensitive). Every occurrence of a tag must
/// be followed by 4 uppercase hex digits, or the SDK fails the attestation.
pub fn read_legacy_cn(cn: &str) -> Result<(Option<Vid>, Option<Pid>)> {
    fn tag_values(cn: &str, tag: &'static str) -> Result<Option<u16>> {
        let mut found: Option<u16> = None;
        for (at, _) in cn.match_indices(tag) {
            let digits = cn.get(at + tag.len()..at + tag.len() + 4);
            let value = digits
                .filter(|d| {
                    d.bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                })
                .and_then(|d| u16::from_str_radix(d, 16).ok())
                .ok_or_else(|| Error::BadLegacyTag {
                    cn: cn.to_string(),
                    tag,
                })?;
            if found.is_some_and(|f| f != value) {
                return Err(Error::BadRequest(format!(
                    "the CN {cn:?} carries two different {tag} values"
                )));
            }
            found = Some(value);
        }
        Ok(found)
    }
    let vid = tag_values(cn, "Mvid:")?
        .map(|v| {
            Vid::new(v).ok_or(Error::BadId {
                which: "VID",
                value: "0000".into(),
                problem: "0000 is not a valid value",
            })
        })
        .transpose()?;
    let pid = tag_values(cn, "Mpid:")?
        .map(|v| {
            Pid::new(v).ok_or(Error::BadId {
                which: "PID",
                value: "0000".into(),
                problem: "0000 is not a valid value",
            })
        })
        .transpose()?;
    Ok((vid, pid))
}

/// The one rule for a DAC CN, wherever it comes from (a CSR, a batch device ID, a generated
/// name): 1 to 64 characters (MATTER.md "DAC"), printable, and nothing that makes it display
/// differently from what it is. Control characters (Unicode Cc) and format characters (Cf:
/// bidi overrides, zero-width spaces and joiners, the BOM, soft hyphens) are refused (Unicode
/// TR #36 §2, "Visual Security Issues"): an operator reading the ledger or a DCL listing must
/// see the name a device carries.
pub fn check_cn(cn: &str) -> Result<()> {
    let bad = |rule: String| Error::BadCn {
        cn: cn.escape_debug().to_string(),
        rule,
    };
    if cn.is_empty() {
        return Err(bad(
            "a CN may not be empty (omit the CN to have one made from the label's cn_prefix)"
                .into(),
        ));
    }
    let len = cn.chars().count();
    if len > MAX_CN_CHARS {
        return Err(Error::CnTooLong { len });
    }
    if let Some(c) = cn.chars().find(|c| c.is_control()) {
        return Err(bad(format!(
            "it contains the control character U+{:04X}; a CN is printable text",
            u32::from(c)
        )));
    }
    if let Some(c) = cn.chars().find(|c| matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err(bad(format!(
            "it contains the line or paragraph separator U+{:04X}; a CN is one line",
            u32::from(c)
        )));
    }
    if let Some(c) = cn.chars().find(|c| is_format_char(*c)) {
        return Err(bad(format!(
            "it contains U+{:04X}, an invisible Unicode format character (bidi override, \
             zero-width character or similar) that makes a name display as something else",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Unicode General Category Cf (format characters), Unicode 15.1 (`DerivedGeneralCategory.txt`).
fn is_format_char(c: char) -> bool {
    const CF: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = u32::from(c);
    CF.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// The text of a UTF8String or PrintableString value.
fn directory_string(value: &der::Any) -> Option<&str> {
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString => std::str::from_utf8(value.value()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly() {
        assert_eq!(Vid::parse("FFF1").map(|v| v.value()).ok(), Some(0xfff1));
        assert!(
            matches!(Vid::parse("fff1"), Err(Error::BadId { problem, .. }) if problem.contains("uppercase"))
        );
        assert!(matches!(Pid::parse("800"), Err(Error::BadId { .. })));
        assert!(matches!(Pid::parse("80000"), Err(Error::BadId { .. })));
        assert!(
            matches!(Pid::parse("0000"), Err(Error::BadId { problem, .. }) if problem.contains("0000"))
        );
        assert!(matches!(Pid::parse("80G0"), Err(Error::BadId { .. })));
        assert_eq!(
            Pid::parse("8000").map(|p| p.to_string()).ok(),
            Some("8000".into())
        );
    }

    #[test]
    fn cn_rule() {
        assert!(check_cn("line1-device-0001").is_ok());
        assert!(
            check_cn("Gerät Küche 1").is_ok(),
            "non-ASCII letters are fine"
        );
        for (cn, needle) in [
            ("", "empty"),
            ("dev\u{7}bell", "control character U+0007"),
            ("dev\nline", "control character U+000A"),
            ("dev\u{202E}1fdp", "U+202E"),
            ("dev\u{200B}1", "U+200B"),
            ("\u{FEFF}dev", "U+FEFF"),
            ("dev\u{2066}x", "U+2066"),
            ("dev\u{2028}x", "U+2028"),
        ] {
            let msg = check_cn(cn).expect_err(cn).to_string();
            assert!(msg.contains(needle), "{cn:?}: {msg}");
        }
        assert!(matches!(
            check_cn(&"x".repeat(65)),
            Err(Error::CnTooLong { len: 65 })
        ));
    }

    #[test]
    fn legacy_cn_form() {
        let (v, p) = read_legacy_cn("Dev Mvid:FFF1 Mpid:8000").expect("valid");
        assert_eq!(v, Vid::new(0xfff1));
        assert_eq!(p, Pid::new(0x8000));
        assert!(matches!(
            read_legacy_cn("x Mvid:fff1"),
            Err(Error::BadLegacyTag { tag: "Mvid:", .. })
        ));
        assert!(matches!(
            read_legacy_cn("x Mpid:80"),
            Err(Error::BadLegacyTag { tag: "Mpid:", .. })
        ));
        assert_eq!(read_legacy_cn("plain").expect("ok"), (None, None));
    }
}
