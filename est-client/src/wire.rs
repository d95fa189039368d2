//! Decoding what EST servers send (RFC 7030 §4, RFC 8951): base64 with or without wrapping
//! (libest: LF every 64 columns; globalsign/est: CRLF every 76; some: one line), with or without
//! `Content-Transfer-Encoding`, and certs-only CMS SignedData; and encoding what we send.

use base64::Engine;
use der::{Decode, Encode};
use x509_cert::Certificate;

use crate::{Error, Result};

/// Base64 line length of request bodies: what PEM and libest use. OpenSSL's base64 reader
/// (libest's server: "Invalid or corrupted pkcs10 request") needs line breaks (EST-WIRE.md
/// "Bodies").
const LINE: usize = 64;

/// A request body: base64 of `der` in lines of 64 columns, each ending in CRLF.
pub fn base64_lines(der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(text.len() + 2 * text.len().div_ceil(LINE));
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(LINE));
        out.push_str(line);
        out.push_str("\r\n");
        rest = tail;
    }
    out
}

/// What an enrollment returned, sorted out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate for the CSR's public key.
    pub certificate: Vec<u8>,
    /// Its issuers among the other certificates sent, nearest first (the PAI, then the PAA if
    /// sent); empty when the server sent the certificate alone (RFC 7030 §4.2.3's strict form).
    pub chain: Vec<Vec<u8>>,
}

/// Finds, among the certificates of an enroll response, the one issued for `csr_der`'s public key,
/// and the chain above it. A certs-only PKCS#7 holds a `SET OF` certificates, which DER sorts by
/// encoding (RFC 5652 §5.1, X.690 §11.6): the position of a certificate means nothing.
pub fn issued_for(certs: &[Vec<u8>], csr_der: &[u8]) -> Result<Issued> {
    let spki = x509_cert::request::CertReq::from_der(csr_der)
        .and_then(|csr| csr.info.public_key.to_der())
        .map_err(|e| Error::Usage(format!("the CSR does not parse: {e}")))?;
    let parsed = parse_all(certs)?;
    let (der, leaf) = parsed
        .iter()
        .find(|(_, c)| {
            c.tbs_certificate()
                .subject_public_key_info()
                .to_der()
                .is_ok_and(|k| k == spki)
        })
        .ok_or_else(|| {
            Error::BadResponse(format!(
                "none of the {} certificates returned is for the CSR's public key",
                certs.len()
            ))
        })?;
    Ok(Issued {
        certificate: der.clone(),
        chain: issuers(der, leaf, &parsed),
    })
}

/// The issuers of `leaf` found in `candidates`, nearest first, matched by name (the issuer of
/// each is the subject of the next); stops at a self-issued certificate.
pub fn chain_above(leaf: &[u8], candidates: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
    Ok(issuers(leaf, &parse(leaf)?, &parse_all(candidates)?))
}

/// Certificates in chain order, each followed by its issuer (a `/cacerts` answer: the PAI, then
/// the PAA). A certs-only PKCS#7 holds a DER-sorted `SET OF` (see [`issued_for`]), so the order
/// the server sent means nothing. Each certificate that issued none of the others starts a chain;
/// any left over (certificates that issue each other) follow in the order received.
pub fn chain_order(certs: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
    let parsed = parse_all(certs)?;
    let issues_another = |der: &[u8], cert: &Certificate| {
        parsed.iter().any(|(other, c)| {
            other.as_slice() != der
                && c.tbs_certificate().issuer() == cert.tbs_certificate().subject()
        })
    };
    let mut ordered: Vec<Vec<u8>> = Vec::with_capacity(certs.len());
    for (der, cert) in parsed.iter().filter(|(d, c)| !issues_another(d, c)) {
        for c in std::iter::once(der.clone()).chain(issuers(der, cert, &parsed)) {
            if !ordered.contains(&c) {
                ordered.push(c);
            }
        }
    }
    for (der, _) in parsed {
        if !ordered.contains(&der) {
            ordered.push(der);
        }
    }
    Ok(ordered)
}

fn issuers(
    leaf_der: &[u8],
    leaf: &Certificate,
    candidates: &[(Vec<u8>, Certificate)],
) -> Vec<Vec<u8>> {
    let mut current = leaf;
    let mut chain: Vec<Vec<u8>> = Vec::new();
    while current.tbs_certificate().issuer() != current.tbs_certificate().subject() {
        let issuer = candidates.iter().find(|(der, c)| {
            c.tbs_certificate().subject() == current.tbs_certificate().issuer()
                && der.as_slice() != leaf_der
                && !chain.contains(der)
        });
        let Some((der, cert)) = issuer else { break };
        chain.push(der.clone());
        current = cert;
    }
    chain
}

fn parse_all(certs: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Certificate)>> {
    certs
        .iter()
        .map(|der| parse(der).map(|c| (der.clone(), c)))
        .collect()
}

fn parse(der: &[u8]) -> Result<Certificate> {
    Certificate::from_der(der)
        .map_err(|e| Error::BadResponse(format!("a certificate does not parse: {e}")))
}

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

/// The certificates of a certs-only PKCS#7 / CMS SignedData body (RFC 5652 §5.1), as the raw
/// DER the server sent, in the order it sent them (which means nothing: see [`issued_for`]).
/// Walks the structure instead of decoding and re-encoding each certificate.
pub fn certs_only(body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let der = base64_body(body)?;
    let bad = |what: &str| Error::BadResponse(format!("not a certs-only PKCS#7: {what}"));
    // The element at the front of `input` with `tag`: its contents and its whole length.
    fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], usize)> {
        match tlv(input) {
            Some((t, contents, rest)) if t == tag => Ok((contents, input.len() - rest.len())),
            _ => Err(Error::BadResponse(format!(
                "not a certs-only PKCS#7: {what}"
            ))),
        }
    }
    // ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT ANY }
    let (ci, _) = expect(&der, 0x30, "no ContentInfo")?;
    let (oid, n) = expect(ci, 0x06, "no content type")?;
    if oid != SIGNED_DATA {
        return Err(bad("the content is not SignedData"));
    }
    let (explicit, _) = expect(&ci[n..], 0xa0, "no content")?;
    // SignedData ::= SEQUENCE { version, digestAlgorithms SET, encapContentInfo SEQUENCE,
    //                           certificates [0] IMPLICIT SET OF CertificateChoices OPTIONAL, ...}
    let (sd, _) = expect(explicit, 0x30, "no SignedData")?;
    let (_, a) = expect(sd, 0x02, "no version")?;
    let (_, b) = expect(&sd[a..], 0x31, "no digestAlgorithms")?;
    let (_, c) = expect(&sd[a + b..], 0x30, "no encapContentInfo")?;
    let (mut set, _) = expect(&sd[a + b + c..], 0xa0, "no certificates")?;
    let mut certs = Vec::new();
    while !set.is_empty() {
        let (tag, _, rest) = tlv(set).ok_or_else(|| bad("a malformed certificate"))?;
        // CertificateChoices: only `certificate` is a SEQUENCE; the others are tagged [0]-[3].
        if tag == 0x30 {
            certs.push(set[..set.len() - rest.len()].to_vec());
        }
        set = rest;
    }
    if certs.is_empty() {
        return Err(bad("no certificates"));
    }
    Ok(certs)
}

/// id-signedData, 1.2.840.113549.1.7.2, as DER contents.
const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];

/// One DER element at the front of `input`: (tag, contents, what follows). `None` when it is
/// truncated, uses the indefinite (BER) length or a length over 4 bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let bytes = rest.get(..n)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        }
        _ => return None,
    };
    let contents = rest.get(..len)?;
    Some((tag, contents, &rest[len..]))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests

    use super::*;

    fn body(certs: &[&[u8]]) -> Vec<u8> {
        matter_est::est::wire::certs_only(certs)
    }

    fn b64(der: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(der)
            .into_bytes()
    }

    #[test]
    fn request_bodies_are_lines_of_64_ending_in_crlf() {
        for n in [0, 1, 47, 48, 49, 233, 480] {
            let der: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let text = base64_lines(&der);
            assert!(text.is_empty() || text.ends_with("\r\n"), "{n}");
            let lines: Vec<&str> = text.split_terminator("\r\n").collect();
            assert!(lines.iter().all(|l| (1..=64).contains(&l.len())), "{n}");
            assert!(lines.iter().rev().skip(1).all(|l| l.len() == 64), "{n}");
            assert_eq!(base64_body(text.as_bytes()).unwrap(), der);
        }
    }

    #[test]
    fn certificates_come_back_raw_and_in_wire_order() {
        // Whatever order the encoder chose (DER sorts a SET OF): the order of the bytes.
        let (a, b) = (&[0x30, 0x03, 0x02, 0x01, 0x09][..], &[0x30, 0x01, 0x05][..]);
        let der = body(&[a, b]);
        let got = certs_only(&b64(&der)).unwrap();
        let at = |c: &[u8]| der.windows(c.len()).position(|w| w == c);
        assert_eq!(got.len(), 2);
        assert!(at(&got[0]) < at(&got[1]), "{got:02x?}");
        assert!(got.contains(&a.to_vec()) && got.contains(&b.to_vec()));
    }

    #[test]
    fn other_certificate_choices_are_skipped() {
        let cert = &[0x30, 0x01, 0x05][..];
        let attribute_cert = &[0xa2, 0x01, 0x05][..];
        assert_eq!(
            certs_only(&b64(&body(&[attribute_cert, cert]))).unwrap(),
            vec![cert.to_vec()]
        );
        let e = certs_only(&b64(&body(&[attribute_cert]))).unwrap_err();
        assert!(e.to_string().contains("no certificates"), "{e}");
    }

    #[test]
    fn malformed_bodies_are_refused_without_panicking() {
        let good = body(&[&[0x30, 0x03, 0x02, 0x01, 0x09]]);
        for n in 0..good.len() {
            assert!(certs_only(&b64(&good[..n])).is_err(), "truncated at {n}");
        }
        let mut enveloped = good.clone();
        enveloped[12] = 0x03; // id-envelopedData instead of id-signedData
        let e = certs_only(&b64(&enveloped)).unwrap_err();
        assert!(e.to_string().contains("not SignedData"), "{e}");
        let mut indefinite = good.clone();
        indefinite[1] = 0x80; // a BER indefinite length
        assert!(certs_only(&b64(&indefinite)).is_err());
        // Any byte changed to any value: an answer (either way), never a panic.
        for i in 0..good.len() {
            for v in [0x00, 0x01, 0x30, 0x7f, 0x80, 0x81, 0x84, 0x85, 0xa0, 0xff] {
                let mut bent = good.clone();
                bent[i] = v;
                let _ = certs_only(&b64(&bent));
            }
        }
    }
}
