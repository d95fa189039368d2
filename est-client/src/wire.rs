//! Decoding what EST servers send (RFC 7030 §4, RFC 8951): base64 with or without wrapping
//! (libest: LF every 64 columns; globalsign/est: CRLF every 76; some: one line), with or without
//! `Content-Transfer-Encoding`, and certs-only CMS SignedData.

use base64::Engine;
use der::{Decode, Encode};

use crate::{Error, Result};

/// The bytes of a base64 body, whatever its wrapping; a DER body (a server that forgot the
/// base64) is taken as is.
pub fn base64_body(body: &[u8]) -> Result<Vec<u8>> {
    if body.len() > 2 && body[0] == 0x30 && body[1] & 0x80 != 0 {
        return Ok(body.to_vec());
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| Error::BadResponse(format!("the body is not base64: {e}")))
}

/// The certificates of a certs-only PKCS#7 / CMS SignedData body, in the order they appear on
/// the wire (the issued certificate first, for enroll responses).
pub fn certs_only(body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let der = base64_body(body)?;
    let bad =
        |e: &dyn std::fmt::Display| Error::BadResponse(format!("not a certs-only PKCS#7: {e}"));
    let ci = cms::content_info::ContentInfo::from_der(&der).map_err(|e| bad(&e))?;
    if ci.content_type != const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2") {
        return Err(bad(&"the content is not SignedData"));
    }
    let sd: cms::signed_data::SignedData = ci.content.decode_as().map_err(|e| bad(&e))?;
    let mut certs = Vec::new();
    for choice in sd.certificates.map(|c| c.0.into_vec()).unwrap_or_default() {
        if let cms::cert::CertificateChoices::Certificate(c) = choice {
            certs.push(c.to_der().map_err(|e| bad(&e))?);
        }
    }
    if certs.is_empty() {
        return Err(bad(&"no certificates"));
    }
    // DER decoding sorts a SET OF; recover the order in which the server sent them.
    certs.sort_by_key(|c| der.windows(c.len()).position(|w| w == c.as_slice()));
    Ok(certs)
}

/// PEM of certificates, concatenated.
pub fn pem(certs: &[Vec<u8>]) -> Result<String> {
    certs
        .iter()
        .map(|c| {
            der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, c)
                .map_err(|e| Error::BadResponse(e.to_string()))
        })
        .collect()
}
