//! The self-check: a certificate is re-parsed and held against every rule of MATTER.md before
//! it leaves (boulder's "lint before you sign, check before you return"). Each rule cites the
//! MATTER.md section, which follows the Matter Core spec §6.2.2 and the SDK's
//! `VerifyAttestationCertificateFormat`.
//!
//! A DAC that fails is an internal error and never leaves the process.

use der::{Decode, Encode, Tagged};
use x509_cert::certificate::Version;
use x509_cert::time::Time;

use super::cert::{self, Parsed};
use super::{MAX_CERT_BYTES, Pai};
use crate::asn1::{self, oid};
use crate::error::{Error, Result};
use crate::matter::{self, OID_CN, OID_PID, OID_VID, Pid, Vid};

/// Which CA certificate is being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaRole {
    Paa,
    Pai,
}

/// VID/PID read from a CA certificate.
#[derive(Clone, Copy, Debug)]
pub struct CaFacts {
    pub vid: Option<Vid>,
    pub pid: Option<Pid>,
}

/// keyUsage bits, numbered as in RFC 5280 §4.2.1.3.
const KU_DIGITAL_SIGNATURE: u16 = 1 << 0;
const KU_KEY_CERT_SIGN: u16 = 1 << 5;
const KU_CRL_SIGN: u16 = 1 << 6;

/// Checks a DAC we are about to return against every MATTER.md DAC rule, including its
/// signature by `pai`; `crl_dp` is the CRL distribution point URI the label puts into its DACs,
/// if any. Errors are [`Error::SelfCheck`].
pub fn dac(der: &[u8], pai: &Pai, now: i64, crl_dp: Option<&str>) -> Result<()> {
    dac_inner(der, pai, now, crl_dp).map_err(|e| match e {
        Error::SelfCheck(_) => e,
        other => Error::SelfCheck(other.to_string()),
    })
}

fn fail(rule: &str) -> Error {
    Error::SelfCheck(rule.to_string())
}

fn dac_inner(der: &[u8], pai: &Pai, now: i64, crl_dp: Option<&str>) -> Result<()> {
    let p = Parsed::from_der(der)?;
    every_certificate(der, &p)?;
    let tbs = p.cert.tbs_certificate();

    // MATTER.md "Every certificate": serial first content byte 0x01–0x7F.
    let serial = tbs.serial_number().as_bytes();
    if serial.is_empty() || !(0x01..=0x7f).contains(&serial[0]) {
        return Err(fail("serial must start with a byte in 0x01-0x7F"));
    }
    // MATTER.md "Every certificate": issuer = the PAI's subject bytes, verbatim.
    if p.issuer_der != pai.subject_der {
        return Err(fail("issuer is not the PAI subject verbatim"));
    }
    // MATTER.md "DAC": notBefore never before the PAI's; valid now; notAfter within the PAI's
    // unless it is 99991231235959Z.
    if p.not_before < pai.not_before {
        return Err(fail("notBefore precedes the PAI's notBefore"));
    }
    if p.not_before > now || (p.not_after < now) {
        return Err(fail("the DAC is not valid now"));
    }
    if p.not_after != asn1::NO_EXPIRY && p.not_after > pai.not_after {
        return Err(fail("notAfter exceeds the PAI's notAfter"));
    }

    // MATTER.md "VID and PID in the subject" and "DAC": CN, VID, PID, one UTF8String per RDN.
    let ids = matter::read_subject(tbs.subject())?;
    let order: Vec<_> = tbs
        .subject()
        .iter_rdn()
        .map(|rdn| {
            let atvs: Vec<_> = rdn.iter().collect();
            (atvs.len(), atvs.first().map(|a| (a.oid, a.value.tag())))
        })
        .collect();
    let expected = [OID_CN, OID_VID, OID_PID];
    if order.len() != 3
        || order
            .iter()
            .zip(expected)
            .any(|((n, first), want)| *n != 1 || *first != Some((want, der::Tag::Utf8String)))
    {
        return Err(fail("subject must be CN, VID, PID, one UTF8String per RDN"));
    }
    if ids.vid != Some(pai.vid) {
        return Err(fail("VID differs from the PAI's VID"));
    }
    match (ids.pid, pai.pid) {
        (None, _) => return Err(fail("the DAC has no PID")),
        (Some(d), Some(p)) if d != p => return Err(fail("PID differs from the PAI's PID")),
        _ => {}
    }
    if ids
        .cn
        .as_ref()
        .is_some_and(|cn| cn.chars().count() > matter::MAX_CN_CHARS)
    {
        return Err(fail("CN longer than 64 characters"));
    }

    // MATTER.md "DAC": exactly our four extensions, with these encodings, and a CRL
    // distribution point when the label puts one in (MATTER.md "Revocation").
    let exts = tbs.extensions().map(|e| e.len()).unwrap_or(0);
    if exts != 4 + usize::from(crl_dp.is_some()) {
        return Err(fail(
            "a DAC carries exactly BC, KU, SKID and AKID (and the label's CRL distribution point)",
        ));
    }
    if let Some(expected) = crl_dp {
        let uri = crl_distribution_point(&p)?;
        if uri != expected {
            return Err(fail("the CRL distribution point is not the label's URI"));
        }
        crate::profile::check_crl_distribution_point(&uri).map_err(|e| fail(&e))?;
    }
    let bc = p
        .extension(oid::BASIC_CONSTRAINTS)
        .ok_or_else(|| fail("no basicConstraints"))?;
    if basic_constraints(bc.extn_value.as_bytes())? != (false, None) {
        return Err(fail("basicConstraints must be cA FALSE without pathLen"));
    }
    let ku = p
        .extension(oid::KEY_USAGE)
        .ok_or_else(|| fail("no keyUsage"))?;
    if key_usage_bits(ku.extn_value.as_bytes())? != KU_DIGITAL_SIGNATURE {
        return Err(fail("keyUsage must be digitalSignature only"));
    }
    if p.skid().as_deref() != Some(&cert::key_id(&p.public_key)[..]) {
        return Err(fail(
            "subjectKeyIdentifier is not SHA-1 of the public key (RFC 5280 §4.2.1.2 (1))",
        ));
    }
    if authority_key_id(&p)? != pai.skid {
        return Err(fail("authorityKeyIdentifier is not the PAI's SKID"));
    }

    // Signed by the PAI.
    if !pai.key.verify(&p.tbs_der, p.signature()) {
        return Err(fail(
            "the signature does not verify with the PAI's public key",
        ));
    }
    Ok(())
}

/// Checks a PAA or PAI against MATTER.md "Every certificate", "PAI" and "PAA".
pub fn ca(p: &Parsed, role: CaRole) -> Result<CaFacts> {
    let bad = |rule: &str| Error::BadRequest(format!("{role:?} certificate: {rule}"));
    every_certificate(&p.cert.to_der().map_err(|e| bad(&e.to_string()))?, p)
        .map_err(|e| bad(&e.to_string()))?;
    let tbs = p.cert.tbs_certificate();
    let ids = matter::read_subject(tbs.subject()).map_err(|e| bad(&e.to_string()))?;
    match role {
        CaRole::Pai if ids.vid.is_none() => return Err(bad("a PAI must carry a VID")),
        CaRole::Paa if ids.pid.is_some() => return Err(bad("a PAA must not carry a PID")),
        _ => {}
    }
    let bc = p
        .extension(oid::BASIC_CONSTRAINTS)
        .ok_or_else(|| bad("no basicConstraints"))?;
    let (is_ca, path_len) = basic_constraints(bc.extn_value.as_bytes())?;
    let path_ok = match role {
        CaRole::Pai => path_len == Some(0),
        CaRole::Paa => path_len.is_none() || path_len == Some(1),
    };
    if !is_ca || !path_ok {
        return Err(bad(
            "basicConstraints must be cA TRUE with pathLen 0 (PAI) or absent/1 (PAA)",
        ));
    }
    let ku = p
        .extension(oid::KEY_USAGE)
        .ok_or_else(|| bad("no keyUsage"))?;
    let bits = key_usage_bits(ku.extn_value.as_bytes())?;
    let needed = KU_KEY_CERT_SIGN | KU_CRL_SIGN;
    if bits & needed != needed || bits & !(needed | KU_DIGITAL_SIGNATURE) != 0 {
        return Err(bad(
            "keyUsage must be keyCertSign + cRLSign (digitalSignature allowed), nothing else",
        ));
    }
    if role == CaRole::Pai {
        authority_key_id(p).map_err(|e| bad(&e.to_string()))?;
    }
    Ok(CaFacts {
        vid: ids.vid,
        pid: ids.pid,
    })
}

/// MATTER.md "Every certificate", the rules common to PAA, PAI and DAC.
fn every_certificate(der: &[u8], p: &Parsed) -> Result<()> {
    if der.len() > MAX_CERT_BYTES {
        return Err(fail("larger than 600 bytes"));
    }
    let tbs = p.cert.tbs_certificate();
    if tbs.version() != Version::V3 {
        return Err(fail("not X.509 v3"));
    }
    let alg_ok = |a: &spki::AlgorithmIdentifierOwned| {
        a.to_der().ok().as_deref() == Some(asn1::ECDSA_WITH_SHA256)
    };
    if !alg_ok(p.cert.signature_algorithm()) || !alg_ok(tbs.signature()) {
        return Err(fail(
            "signature algorithm must be ecdsa-with-SHA256, no parameters",
        ));
    }
    let spki = tbs
        .subject_public_key_info()
        .to_der()
        .map_err(|e| Error::SelfCheck(e.to_string()))?;
    if !spki.starts_with(asn1::P256_SPKI_PREFIX) || p.public_key[0] != 0x04 {
        return Err(fail("key must be id-ecPublicKey prime256v1, uncompressed"));
    }
    let serial = tbs.serial_number().as_bytes();
    if serial.is_empty() || serial.len() > 20 || serial[0] & 0x80 != 0 {
        return Err(fail("serial must be positive and at most 20 octets"));
    }
    // RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
    let v = tbs.validity();
    for t in [v.not_before, v.not_after] {
        let utc = matches!(t, Time::UtcTime(_));
        let before_2050 = cert::unix(t) < 2_524_608_000;
        if utc != before_2050 {
            return Err(fail("UTCTime through 2049, GeneralizedTime from 2050"));
        }
    }
    let exts = tbs.extensions().map(Vec::as_slice).unwrap_or_default();
    for e in exts {
        let known = [oid::BASIC_CONSTRAINTS, oid::KEY_USAGE];
        let id = e.extn_id.as_bytes();
        if e.critical && !known.contains(&id) {
            return Err(fail("an extension other than BC/KU is critical"));
        }
        if !e.critical && known.contains(&id) {
            return Err(fail("basicConstraints and keyUsage must be critical"));
        }
    }
    match p.skid() {
        Some(skid) if skid.len() == 20 => {}
        _ => return Err(fail("subjectKeyIdentifier must be present, 20 bytes")),
    }
    Ok(())
}

/// MATTER.md "Revocation": a non-critical cRLDistributionPoints holding one DistributionPoint
/// whose fullName is one URI, no reasons, no cRLIssuer. Returns the URI.
fn crl_distribution_point(p: &Parsed) -> Result<String> {
    use x509_cert::ext::pkix::crl::CrlDistributionPoints;
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    let ext = p
        .extension(oid::CRL_DISTRIBUTION_POINTS)
        .ok_or_else(|| fail("no CRL distribution point"))?;
    let bad = || fail("the CRL distribution point must be one DistributionPoint with one URI");
    if ext.critical {
        return Err(fail("the CRL distribution point must be non-critical"));
    }
    let dps = CrlDistributionPoints::from_der(ext.extn_value.as_bytes()).map_err(|_| bad())?;
    let [dp] = dps.0.as_slice() else {
        return Err(bad());
    };
    if dp.reasons.is_some() || dp.crl_issuer.is_some() {
        return Err(bad());
    }
    match &dp.distribution_point {
        Some(DistributionPointName::FullName(names)) => match names.as_slice() {
            [GeneralName::UniformResourceIdentifier(uri)] => Ok(uri.to_string()),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// authorityKeyIdentifier: keyIdentifier only, 20 bytes (MATTER.md "Every certificate").
fn authority_key_id(p: &Parsed) -> Result<Vec<u8>> {
    let ext = p
        .extension(oid::AUTHORITY_KEY_ID)
        .ok_or_else(|| fail("no authorityKeyIdentifier"))?;
    let v = ext.extn_value.as_bytes();
    // 30 16 80 14 <20 bytes>
    if v.len() == 24 && v[..4] == [0x30, 0x16, 0x80, 0x14] {
        Ok(v[4..].to_vec())
    } else {
        Err(fail(
            "authorityKeyIdentifier must hold only a 20-byte keyIdentifier",
        ))
    }
}

/// (cA, pathLen) of a DER basicConstraints value.
fn basic_constraints(value: &[u8]) -> Result<(bool, Option<u64>)> {
    #[derive(der::Sequence)]
    struct Bc {
        #[asn1(default = "Default::default")]
        ca: bool,
        path_len: Option<u64>,
    }
    let bc = Bc::from_der(value).map_err(|_| fail("basicConstraints is malformed"))?;
    Ok((bc.ca, bc.path_len))
}

/// keyUsage bits (bit 0 = digitalSignature), refusing a non-minimal encoding (MATTER.md: a
/// 9-bit encoding breaks the SDK's TLV conversion).
fn key_usage_bits(value: &[u8]) -> Result<u16> {
    let bad = || fail("keyUsage is not a minimally encoded BIT STRING");
    if value.len() < 4 || value[0] != 0x03 || usize::from(value[1]) != value.len() - 2 {
        return Err(bad());
    }
    let unused = value[2];
    let bytes = &value[3..];
    let last = *bytes.last().ok_or_else(bad)?;
    if bytes.len() > 2 || last == 0 || u32::from(unused) != last.trailing_zeros() {
        return Err(bad());
    }
    let mut bits = 0u16;
    for (i, b) in bytes.iter().enumerate() {
        for j in 0..8 {
            if b & (0x80 >> j) != 0 {
                bits |= 1 << (i * 8 + j);
            }
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_usage_minimal_only() {
        assert_eq!(
            key_usage_bits(&[3, 2, 7, 0x80]).ok(),
            Some(KU_DIGITAL_SIGNATURE)
        );
        assert_eq!(
            key_usage_bits(&[3, 2, 1, 6]).ok(),
            Some(KU_KEY_CERT_SIGN | KU_CRL_SIGN)
        );
        // 9-bit encoding of digitalSignature: refused.
        assert!(key_usage_bits(&[3, 3, 7, 0x80, 0x00]).is_err());
        assert!(key_usage_bits(&[3, 2, 0, 0x80]).is_err());
    }

    #[test]
    fn basic_constraints_forms() {
        assert_eq!(basic_constraints(&[0x30, 0]).ok(), Some((false, None)));
        assert_eq!(
            basic_constraints(&[0x30, 6, 1, 1, 0xff, 2, 1, 0]).ok(),
            Some((true, Some(0)))
        );
    }
}
