//! EST bodies and media types (RFC 7030 §4, RFC 8951; EST-WIRE.md "Bodies" and "Content
//! types").

use base64::Engine;

use crate::asn1::{self, tag};

/// `/cacerts` (RFC 7030 §4.1.3).
pub const CT_CACERTS: &str = "application/pkcs7-mime";
/// `/simpleenroll`, `/simplereenroll` (RFC 7030 §4.2.3); clients compare it byte for byte.
pub const CT_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
/// `/csrattrs` (RFC 7030 §4.5.2).
pub const CT_CSRATTRS: &str = "application/csrattrs";
/// `/serverkeygen` (RFC 7030 §4.4.2): the key and the certificate as two parts. The boundary
/// has '-', which base64 never does, so it cannot occur in a part.
pub const CT_SERVERKEYGEN: &str = "multipart/mixed; boundary=est-serverkeygen-part";
const BOUNDARY: &str = "est-serverkeygen-part";
/// The key part: PKCS#8 (RFC 7030 §4.4.2).
pub const CT_PKCS8: &str = "application/pkcs8";
/// The key part when encrypted (RFC 7030 §4.4.2): CMS EnvelopedData.
pub const CT_SERVER_GENERATED_KEY: &str = "application/pkcs7-mime; smime-type=server-generated-key";
/// Error bodies.
pub const CT_TEXT: &str = "text/plain; charset=utf-8";

/// Base64 line length of response bodies: OpenSSL's reader (libest's client) truncates or drops
/// long single lines; 64 is what PEM and libest's server use.
const LINE: usize = 64;

/// True for `application/pkcs10`, with any parameters and letter case (RFC 7030 §4.2.1).
pub fn is_pkcs10(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/pkcs10"))
}

/// Base64 of `der`, wrapped at 64 columns with CRLF (EST-WIRE.md: wrapped, CRLF safest).
pub fn base64_wrapped(der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(text.len() + text.len() / LINE * 2 + 2);
    for chunk in text.as_bytes().chunks(LINE) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// The `/serverkeygen` body: the key part (`key`: content type and DER) and the certs-only
/// part, each base64 with its own `Content-Transfer-Encoding: base64` (EST-WIRE.md: libest's
/// client requires it on parts), CRLF line ends (RFC 2046 §5.1.1).
pub fn serverkeygen_body(key: &(&str, Vec<u8>), certs_only: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for (content_type, der) in [(key.0, key.1.as_slice()), (CT_CERTS_ONLY, certs_only)] {
        out.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ));
        out.push_str(&base64_wrapped(der));
    }
    out.push_str(&format!("--{BOUNDARY}--\r\n"));
    out.into_bytes()
}

/// A certs-only CMS SignedData (RFC 5652 §5, RFC 7030 §4.1.3 "degenerate"): no signers, no
/// content. `CertificateSet` is a `SET OF`, so DER (X.690 §11.6) puts the certificates in
/// ascending order of their encodings, whatever order they are given in: clients find the issued
/// certificate by its public key, never by position (DESIGN.md "Decisions already taken").
pub fn certs_only(certs: &[&[u8]]) -> Vec<u8> {
    // id-signedData 1.2.840.113549.1.7.2 and id-data 1.2.840.113549.1.7.1
    const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    let mut sorted = certs.to_vec();
    sorted.sort_by(|a, b| der_set_order(a, b));
    let certificates = asn1::tlv(0xa0, &sorted); // [0] IMPLICIT CertificateSet
    let signed_data = asn1::tlv(
        tag::SEQUENCE,
        &[
            &[tag::INTEGER, 1, 1],                                       // version 1
            &[tag::SET, 0],                                              // digestAlgorithms
            &asn1::tlv(tag::SEQUENCE, &[&asn1::tlv(tag::OID, &[DATA])]), // encapContentInfo
            &certificates,
            &[tag::SET, 0], // signerInfos
        ],
    );
    asn1::tlv(
        tag::SEQUENCE,
        &[
            &asn1::tlv(tag::OID, &[SIGNED_DATA]),
            &asn1::tlv(0xa0, &[&signed_data]),
        ],
    )
}

/// X.690 §11.6: SET OF elements compare as octet strings, the shorter padded at its end with
/// zero octets.
fn der_set_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    let padded = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| padded(a, i).cmp(&padded(b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// The CSR attributes a Matter DAC CSR needs (RFC 7030 §4.5.2, encoded per RFC 8951 §4):
/// ecdsa-with-SHA256; id-ecPublicKey with prime256v1; the Matter VID and PID subject
/// attributes.
pub fn matter_csr_attrs() -> Vec<u8> {
    const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let ec_attr = asn1::tlv(
        tag::SEQUENCE,
        &[
            &asn1::tlv(tag::OID, &[EC_PUBLIC_KEY]),
            &asn1::tlv(tag::SET, &[&asn1::tlv(tag::OID, &[PRIME256V1])]),
        ],
    );
    asn1::tlv(
        tag::SEQUENCE,
        &[
            &asn1::tlv(tag::OID, &[ECDSA_SHA256]),
            &ec_attr,
            &asn1::tlv(tag::OID, &[asn1::oid::MATTER_VID]),
            &asn1::tlv(tag::OID, &[asn1::oid::MATTER_PID]),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_matching() {
        assert!(is_pkcs10("application/pkcs10"));
        assert!(is_pkcs10("Application/PKCS10; charset=binary"));
        assert!(!is_pkcs10("application/pkcs7-mime"));
        assert!(!is_pkcs10("text/plain"));
    }

    #[test]
    fn certificate_sets_are_sorted_as_der_requires() {
        let big = [0x30, 0x82, 0x01, 0x02];
        let small = [0x30, 0x81, 0xff];
        let short = [0x30, 0x82, 0x01];
        let out = certs_only(&[&big, &small]);
        assert_eq!(out, certs_only(&[&small, &big]));
        let at = |needle: &[u8]| out.windows(needle.len()).position(|w| w == needle);
        assert!(at(&small) < at(&big), "0x81 sorts before 0x82");
        // Padding: [30 82 01] is [30 82 01 00], which sorts before [30 82 01 02].
        assert_eq!(
            der_set_order(&short, &big),
            std::cmp::Ordering::Less,
            "shorter padded with zeros"
        );
    }

    #[test]
    fn wrapped_at_64_with_crlf() {
        let out = base64_wrapped(&[0u8; 200]);
        assert!(out.split("\r\n").all(|l| l.len() <= 64));
        assert!(out.ends_with("\r\n"));
    }
}
