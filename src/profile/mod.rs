//! The Matter DAC profile (Matter Core §6.2.2, MATTER.md): a DAC is built from the label's
//! policy and the PAI, never from the CSR's requested extensions. From the request come only
//! the public key (re-encoded uncompressed) and the subject's CN/VID/PID, checked here.
//!
//! `profile` knows nothing of HTTP or of who asked.

pub mod cert;
pub mod check;
pub mod dev;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use crate::asn1::{self, oid, tag};
use crate::error::{Error, Result};
use crate::matter::{self, Pid, SubjectIds, Vid};
use crate::signer::Signer;
use crate::signer::fixed_key::FixedKeyVerifier;
use cert::{CertFields, Parsed};

/// Length of our serial numbers: 16 bytes, a 6-byte time prefix and 80 random bits (MATTER.md:
/// positive, at most 20 octets; at least 64 random bits per CA/B BR §7.1).
pub const SERIAL_LEN: usize = 16;

/// How far notBefore is backdated, to tolerate commissioner clocks that lag ours (MATTER.md
/// "DAC": backdate slightly, never before the PAI's notBefore).
pub const BACKDATE_SECS: i64 = 3600;

/// Largest certificate a Matter device can hold (Matter Core §6.2.2: 600-byte buffer).
pub const MAX_CERT_BYTES: usize = 600;

/// Longest URI of a DAC's CRL distribution point (MATTER.md "Revocation": optional; if present,
/// one http(s) URI of at most 100 characters, the Matter SDK's limit).
pub const MAX_CRL_DP_URI_CHARS: usize = 100;

/// MATTER.md "Revocation": may `uri` be a DAC's CRL distribution point? The one place of this
/// rule: config load refuses such a label, and the self-check holds every DAC to it.
pub fn check_crl_distribution_point(uri: &str) -> std::result::Result<(), String> {
    let n = uri.chars().count();
    if n > MAX_CRL_DP_URI_CHARS {
        return Err(format!(
            "{uri:?} is {n} characters; a DAC's CRL distribution point is at most \
             {MAX_CRL_DP_URI_CHARS} (the Matter SDK's limit)"
        ));
    }
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(format!(
            "{uri:?}: a DAC's CRL distribution point is http or https"
        ));
    }
    if !uri.is_ascii() || uri.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{uri:?}: a URI is printable ASCII without spaces (IA5String)"
        ));
    }
    Ok(())
}

/// Which PIDs a label may issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidPolicy {
    /// Any PID (the PAI may still restrict it).
    Any,
    /// Only these.
    Only(BTreeSet<Pid>),
}

impl fmt::Display for PidPolicy {
    /// `any`, or the PIDs comma-separated (`8000,8001`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidPolicy::Any => f.write_str("any"),
            PidPolicy::Only(set) => {
                let pids: Vec<String> = set.iter().map(ToString::to_string).collect();
                f.write_str(&pids.join(","))
            }
        }
    }
}

/// How long a DAC is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// notAfter = 99991231235959Z (MATTER.md: the default; a DAC that expires stops
    /// commissioning).
    NoExpiry,
    /// This many days, and never past the PAI's notAfter.
    Days(u32),
}

/// What to do with subject attributes other than CN, VID and PID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtherAttributes {
    Drop,
    Refuse,
}

/// The per-label DAC policy.
#[derive(Clone, Debug)]
pub struct DacProfile {
    pub label: String,
    pub pids: PidPolicy,
    pub validity: Validity,
    /// Prefix of the CN we make when the CSR has none (followed by 32 hex digits of the key's
    /// identifier, see [`DacProfile::generated_cn`]).
    pub cn_prefix: String,
    pub other_attributes: OtherAttributes,
    /// The CRL distribution point URI put into each new DAC, if the label asks for one (checked
    /// by [`check_crl_distribution_point`] at config load).
    pub crl_distribution_point: Option<String>,
}

/// A PAI, parsed and held to MATTER.md's PAI rules at load.
#[derive(Clone, Debug)]
pub struct Pai {
    pub der: Vec<u8>,
    /// The subject as text, for logs and messages.
    pub subject: String,
    pub subject_der: Vec<u8>,
    pub skid: Vec<u8>,
    pub vid: Vid,
    pub pid: Option<Pid>,
    pub not_before: i64,
    pub not_after: i64,
    /// The PAI's key, with the tables that make verifying DACs by it fast.
    pub key: Arc<FixedKeyVerifier>,
}

impl Pai {
    /// Parses a PAI certificate and checks it against MATTER.md "PAI".
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let parsed = Parsed::from_der(der)?;
        let facts = check::ca(&parsed, check::CaRole::Pai)?;
        let vid = facts
            .vid
            .ok_or_else(|| Error::BadRequest("the PAI has no VID".into()))?;
        Ok(Self {
            der: der.to_vec(),
            subject: parsed.cert.tbs_certificate().subject().to_string(),
            skid: parsed.skid().unwrap_or_default(),
            subject_der: parsed.subject_der,
            vid,
            pid: facts.pid,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            key: Arc::new(FixedKeyVerifier::new(&parsed.public_key).ok_or_else(|| {
                Error::BadRequest("the PAI's public key is not a P-256 point".into())
            })?),
        })
    }

    /// The PAI's SEC1 uncompressed public key.
    pub fn public_key(&self) -> &[u8; 65] {
        self.key.public_key()
    }
}

/// The subject of a DAC: CN, VID, PID, one UTF8String each in its own RDN, in that order
/// (MATTER.md "VID and PID in the subject").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DacSubject {
    pub cn: String,
    pub vid: Vid,
    pub pid: Pid,
}

impl DacSubject {
    /// The Name's DER.
    pub fn to_der(&self) -> Vec<u8> {
        asn1::tlv(
            tag::SEQUENCE,
            &[
                &asn1::rdn_utf8(oid::COMMON_NAME, &self.cn),
                &asn1::rdn_utf8(oid::MATTER_VID, &self.vid.to_string()),
                &asn1::rdn_utf8(oid::MATTER_PID, &self.pid.to_string()),
            ],
        )
    }
}

impl fmt::Display for DacSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CN={},VID={},PID={}", self.cn, self.vid, self.pid)
    }
}

/// A DAC that passed the self-check.
#[derive(Clone, Debug)]
pub struct Dac {
    pub der: Vec<u8>,
    pub serial: Vec<u8>,
    pub subject: DacSubject,
    pub not_before: i64,
    pub not_after: i64,
}

impl DacProfile {
    /// Decides the DAC subject from the CSR's identifiers, the PAI and this label's policy.
    /// `public_key` names the device when the CSR carries no CN.
    pub fn subject(
        &self,
        pai: &Pai,
        ids: &SubjectIds,
        public_key: &[u8; 65],
    ) -> Result<DacSubject> {
        if self.other_attributes == OtherAttributes::Refuse
            && let Some(other) = ids.others.first()
        {
            return Err(Error::SubjectAttributeRefused {
                oid: crate::csr::oid_name(other),
                label: self.label.clone(),
            });
        }
        // MATTER.md "DAC": VID == PAI VID.
        let vid = match ids.vid {
            Some(v) if v != pai.vid => {
                return Err(Error::VidMismatch {
                    vid: v.to_string(),
                    pai_vid: pai.vid.to_string(),
                    label: self.label.clone(),
                });
            }
            _ => pai.vid,
        };
        // MATTER.md "CSRs": without a PID, take the PAI's, else the label's single product.
        let pid = match (ids.pid, pai.pid, &self.pids) {
            (Some(p), _, _) => p,
            (None, Some(p), _) => p,
            (None, None, PidPolicy::Only(set)) if set.len() == 1 => *set
                .iter()
                .next()
                .ok_or_else(|| Error::Internal("empty set".into()))?,
            _ => {
                return Err(Error::MissingPid {
                    label: self.label.clone(),
                });
            }
        };
        self.check_pid(pai, pid)?;
        let cn = match &ids.cn {
            Some(cn) => cn.clone(),
            None => self.generated_cn(public_key),
        };
        matter::check_cn(&cn)?;
        // MATTER.md "VID and PID in the subject": verifiers read a legacy Mvid:/Mpid: tag in the
        // CN even when the attributes are present; one that contradicts the VID/PID decided here
        // fails the attestation, so it is refused before anything is signed.
        let (tag_vid, tag_pid) = matter::read_legacy_cn(&cn)?;
        let conflict = |tag, tagged: String, which, decided: String| Error::BadCn {
            cn: cn.escape_debug().to_string(),
            rule: format!(
                "it carries {tag}{tagged} but the DAC's {which} is {decided}; Matter verifiers \
                 read both and fail the attestation when they differ"
            ),
        };
        if let Some(t) = tag_vid.filter(|t| *t != vid) {
            return Err(conflict("Mvid:", t.to_string(), "VID", vid.to_string()));
        }
        if let Some(t) = tag_pid.filter(|t| *t != pid) {
            return Err(conflict("Mpid:", t.to_string(), "PID", pid.to_string()));
        }
        Ok(DacSubject { cn, vid, pid })
    }

    /// The CN of a DAC whose CSR names none: the label's prefix and the first 16 bytes of the
    /// key's SHA-1 identifier (RFC 5280 §4.2.1.2 method 1, as its SKID) in hex. Made from the key,
    /// not the serial, so the same CSR sent again asks for the same subject and gets the DAC on
    /// record (a retry after a lost response), and a new key gets a new name.
    pub fn generated_cn(&self, public_key: &[u8; 65]) -> String {
        let id = cert::key_id(public_key);
        format!("{}{}", self.cn_prefix, asn1::hex(&id[..16]).to_uppercase())
    }

    /// MATTER.md "DAC": if the PAI has a PID, PID == PAI PID; and the label's allow-list.
    pub fn check_pid(&self, pai: &Pai, pid: Pid) -> Result<()> {
        if let Some(only) = pai.pid
            && only != pid
        {
            return Err(Error::PidNotAllowed {
                pid: pid.to_string(),
                label: self.label.clone(),
                reason: format!(": its PAI signs only PID {only}"),
            });
        }
        if let PidPolicy::Only(set) = &self.pids
            && !set.contains(&pid)
        {
            let allowed: Vec<String> = set.iter().map(Pid::to_string).collect();
            return Err(Error::PidNotAllowed {
                pid: pid.to_string(),
                label: self.label.clone(),
                reason: format!(" (allowed: {})", allowed.join(", ")),
            });
        }
        Ok(())
    }

    /// Builds, signs and self-checks a DAC for `subject` and `public_key`.
    pub fn build(
        &self,
        pai: &Pai,
        subject: &DacSubject,
        serial: &[u8],
        public_key: &[u8; 65],
        signer: &dyn Signer,
        now: i64,
    ) -> Result<Dac> {
        let not_before = (now - BACKDATE_SECS).max(pai.not_before);
        let not_after = match self.validity {
            Validity::NoExpiry => asn1::NO_EXPIRY,
            Validity::Days(days) => (now + i64::from(days) * 86_400).min(pai.not_after),
        };
        let skid = cert::key_id(public_key);
        let mut extensions = vec![
            cert::basic_constraints_ext(None),
            cert::key_usage_ext(cert::key_usage::DIGITAL_SIGNATURE),
            cert::subject_key_id_ext(&skid),
            cert::authority_key_id_ext(&pai.skid),
        ];
        // MATTER.md "Revocation": optional, one http(s) URI; the SDK tolerates it.
        if let Some(uri) = &self.crl_distribution_point {
            extensions.push(cert::crl_distribution_points_ext(uri));
        }
        let subject_der = subject.to_der();
        let der = cert::build_and_sign(
            &CertFields {
                serial,
                issuer: &pai.subject_der,
                not_before,
                not_after,
                subject: &subject_der,
                public_key,
                extensions: &extensions,
            },
            signer,
        )?;
        if der.len() > MAX_CERT_BYTES {
            return Err(Error::DacTooLarge { size: der.len() });
        }
        check::dac(&der, pai, now, self.crl_distribution_point.as_deref())?;
        Ok(Dac {
            der,
            serial: serial.to_vec(),
            subject: subject.clone(),
            not_before,
            not_after,
        })
    }
}

/// A fresh serial: the issuance time in milliseconds (6 bytes, big-endian) then 10 random bytes.
/// MATTER.md "Every certificate": positive with no 0x00 pad, so the first byte is kept in
/// 0x01–0x7F (the time's first byte is 0x01 from 2004 to 2039). The time prefix makes serials
/// ascend, so the ledger's serial index appends instead of rewriting a random page per DAC; a
/// clock stepped back costs only that locality, since uniqueness rests on the 80 random bits and
/// the ledger's check at commit. The time adds nothing a DAC does not already show (notBefore).
pub fn random_serial() -> Result<[u8; SERIAL_LEN]> {
    let mut serial = [0u8; SERIAL_LEN];
    SystemRandom::new()
        .fill(&mut serial[6..])
        .map_err(|_| Error::Internal("the system random generator failed".into()))?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    serial[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    serial[0] = serial[0].clamp(1, 0x7f);
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_ascending_and_random() {
        let a = random_serial().expect("serial");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = random_serial().expect("serial");
        let c = random_serial().expect("serial");
        for s in [a, b, c] {
            assert!((0x01..=0x7f).contains(&s[0]), "first byte {:#04x}", s[0]);
        }
        // Later issuance sorts later (the time prefix) ...
        assert!(a < b && a < c, "{a:02x?} then {b:02x?}");
        // ... and the 80 bits after it are fresh each time.
        assert_ne!(b[6..], c[6..]);
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let mut prefix = [0u8; 8];
        prefix[2..].copy_from_slice(&c[..6]);
        assert!(ms.abs_diff(u64::from_be_bytes(prefix)) < 60_000);
    }
}
