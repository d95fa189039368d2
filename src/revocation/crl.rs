//! The CRL of one label (RFC 5280 §5), in the form the Matter SDK's revocation tooling accepts
//! (MATTER.md "Revocation"): DER, v2, ecdsa-with-SHA256, signed by the PAI through the label's
//! signer, issuer = the PAI's subject bytes verbatim, authorityKeyIdentifier = the PAI's SKID,
//! a cRLNumber, one entry per revoked DAC with its date and reason.
//!
//! Built with the same small DER writer as the certificates; read back with `x509-cert` and
//! checked before it is published (as every DAC is).

use der::{Decode, Encode};
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::CrlReason;

use crate::asn1::{self, oid, tag};
use crate::error::{Error, Result};
use crate::profile::Pai;
use crate::profile::cert;
use crate::signer::Signer;
use crate::store::RevokedEntry;

use super::RevocationReason;

/// What one CRL says.
pub struct CrlContent<'a> {
    pub number: u64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: &'a [RevokedEntry],
}

/// Builds and signs the CRL of `pai` with `signer`, then reads it back and checks it
/// ([`check`]); a CRL that fails is never returned.
pub fn build(pai: &Pai, signer: &dyn Signer, content: &CrlContent<'_>) -> Result<Vec<u8>> {
    let tbs = tbs(pai, content);
    let signature = signer.sign(&tbs)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);
    let der = asn1::tlv(
        tag::SEQUENCE,
        &[
            &tbs,
            asn1::ECDSA_WITH_SHA256,
            &asn1::tlv(tag::BIT_STRING, &[&bits]),
        ],
    );
    check(&der, pai, content)?;
    Ok(der)
}

/// TBSCertList (RFC 5280 §5.1.2).
fn tbs(pai: &Pai, c: &CrlContent<'_>) -> Vec<u8> {
    // RFC 5280 §5.1.2.1: v2 (INTEGER 1), required because the CRL has extensions.
    let version = asn1::tlv(tag::INTEGER, &[&[1]]);
    // §5.1.2.6: revokedCertificates is absent, not empty, when nothing is revoked.
    let mut revoked = Vec::new();
    if !c.entries.is_empty() {
        // ~60 bytes per entry: INTEGER(16) + UTCTime + reasonCode.
        let mut list = Vec::with_capacity(c.entries.len() * 64);
        for e in c.entries {
            list.extend_from_slice(&entry(e));
        }
        revoked = asn1::tlv(tag::SEQUENCE, &[&list]);
    }
    let extensions = asn1::tlv(
        tag::SEQUENCE,
        &[
            // §5.2.1 authorityKeyIdentifier, keyIdentifier only = the PAI's SKID (MATTER.md:
            // the CRL's AKID equals the signer's SKID).
            &cert::authority_key_id_ext(&pai.skid),
            // §5.2.3 cRLNumber, non-critical, monotonically increasing.
            &asn1::extension(
                oid::CRL_NUMBER,
                false,
                &asn1::unsigned_integer(&c.number.to_be_bytes()),
            ),
        ],
    );
    asn1::tlv(
        tag::SEQUENCE,
        &[
            &version,
            asn1::ECDSA_WITH_SHA256,
            // §5.1.2.3 / MATTER.md "Every certificate": the PAI's subject bytes, verbatim.
            &pai.subject_der,
            // §5.1.2.4–5: UTCTime through 2049, GeneralizedTime from 2050.
            &asn1::time(c.this_update),
            &asn1::time(c.next_update),
            &revoked,
            &asn1::tlv(0xa0, &[&extensions]),
        ],
    )
}

/// One revokedCertificates entry: the serial as issued, the date, and the reason code unless it
/// is unspecified (RFC 5280 §5.3.1: "the reason code CRL entry extension SHOULD be absent
/// instead of using the unspecified (0) reasonCode value").
fn entry(e: &RevokedEntry) -> Vec<u8> {
    let serial = asn1::unsigned_integer(&e.serial);
    let date = asn1::time(e.at);
    if e.reason == RevocationReason::Unspecified {
        return asn1::tlv(tag::SEQUENCE, &[&serial, &date]);
    }
    let reason = asn1::extension(
        oid::CRL_REASON,
        false,
        &asn1::tlv(tag::ENUMERATED, &[&[e.reason.code()]]),
    );
    asn1::tlv(
        tag::SEQUENCE,
        &[&serial, &date, &asn1::tlv(tag::SEQUENCE, &[&reason])],
    )
}

/// Reads a CRL back and holds it against MATTER.md "Revocation" and what it should say.
pub fn check(der: &[u8], pai: &Pai, c: &CrlContent<'_>) -> Result<()> {
    let fail = |rule: &str| Error::SelfCheck(format!("CRL: {rule}"));
    let crl = <CertificateList>::from_der(der).map_err(|e| fail(&e.to_string()))?;
    let tbs = &crl.tbs_cert_list;
    if tbs.version != x509_cert::Version::V2 {
        return Err(fail("not v2"));
    }
    let alg_ok = |a: &spki::AlgorithmIdentifierOwned| {
        a.to_der().ok().as_deref() == Some(asn1::ECDSA_WITH_SHA256)
    };
    if !alg_ok(&crl.signature_algorithm) || !alg_ok(&tbs.signature) {
        return Err(fail("signature algorithm is not ecdsa-with-SHA256"));
    }
    if tbs.issuer.to_der().ok().as_deref() != Some(pai.subject_der.as_slice()) {
        return Err(fail("issuer is not the PAI's subject"));
    }
    if cert::unix(tbs.this_update) != c.this_update
        || tbs.next_update.map(cert::unix) != Some(c.next_update)
        || c.next_update <= c.this_update
    {
        return Err(fail("thisUpdate/nextUpdate are not the intended ones"));
    }
    let exts = tbs.crl_extensions.as_deref().unwrap_or_default();
    let ext = |id: &[u8]| exts.iter().find(|e| e.extn_id.as_bytes() == id);
    let akid = ext(oid::AUTHORITY_KEY_ID).ok_or_else(|| fail("no authorityKeyIdentifier"))?;
    let v = akid.extn_value.as_bytes();
    if akid.critical || v.len() != 24 || v[..4] != [0x30, 0x16, 0x80, 0x14] || v[4..] != pai.skid {
        return Err(fail("authorityKeyIdentifier is not the PAI's SKID alone"));
    }
    let number = ext(oid::CRL_NUMBER).ok_or_else(|| fail("no cRLNumber"))?;
    let n = der::asn1::Uint::from_der(number.extn_value.as_bytes())
        .map_err(|_| fail("cRLNumber is not an INTEGER"))?;
    let mut be = [0u8; 8];
    let bytes = n.as_bytes();
    if number.critical || bytes.len() > 8 {
        return Err(fail("cRLNumber must be non-critical and fit 8 bytes"));
    }
    be[8 - bytes.len()..].copy_from_slice(bytes);
    if u64::from_be_bytes(be) != c.number {
        return Err(fail("cRLNumber is not the intended one"));
    }
    let listed = tbs.revoked_certificates.as_deref().unwrap_or_default();
    if listed.len() != c.entries.len() {
        return Err(fail("the number of entries differs from the revoked DACs"));
    }
    for (got, want) in listed.iter().zip(c.entries) {
        // MATTER.md "Revocation": serials are compared as bytes, never re-encoded.
        if got.serial_number.as_bytes() != want.serial.as_slice()
            || cert::unix(got.revocation_date) != want.at
        {
            return Err(fail("an entry's serial or date differs from the ledger"));
        }
        let reason = got
            .crl_entry_extensions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.extn_id.as_bytes() == oid::CRL_REASON)
            .map(|e| CrlReason::from_der(e.extn_value.as_bytes()).map(|r| r as u8))
            .transpose()
            .map_err(|_| fail("an entry's reasonCode is malformed"))?
            .unwrap_or(0);
        if reason != want.reason.code() {
            return Err(fail("an entry's reason differs from the ledger"));
        }
    }
    let tbs_der = asn1::signed_part(der).map_err(|e| fail(&e.to_string()))?;
    let sig = crl
        .signature
        .as_bytes()
        .ok_or_else(|| fail("signature has unused bits"))?;
    if !pai.key.verify(tbs_der, sig) {
        return Err(fail("the signature does not verify with the PAI's key"));
    }
    Ok(())
}
