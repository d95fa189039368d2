//! Encrypting a secret to a production line's P-256 public key as CMS EnvelopedData (RFC 5652
//! §6) with ephemeral-static ECDH key agreement (RFC 5753 §3.1: dhSinglePass-stdDH-sha256kdf,
//! AES-256 key wrap, AES-256-CBC content), which `openssl cms -decrypt -inkey line.key` reads.
//!
//! `batch --encrypt-to` seals each device's PKCS#8 key this way (one ECDH per key, no shared
//! secret to keep, so an interrupted batch resumes without one).

use aes_kw::AesKw;
use cbc::cipher::{BlockModeEncrypt, KeyInit, KeyIvInit, block_padding::Pkcs7};
use der::{Decode, Encode};
use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::asn1::{self, tag};
use crate::error::{Error, Result};

/// id-envelopedData 1.2.840.113549.1.7.3
const ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
/// id-data 1.2.840.113549.1.7.1
const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// dhSinglePass-stdDH-sha256kdf-scheme 1.3.132.1.11.1 (RFC 5753 §7.1.4)
const ECDH_SHA256_KDF: &[u8] = &[0x2b, 0x81, 0x04, 0x01, 0x0b, 0x01];
/// id-aes256-wrap 2.16.840.1.101.3.4.1.45
const AES256_WRAP: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2d];
/// aes256-CBC 2.16.840.1.101.3.4.1.42
const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
/// id-ecPublicKey 1.2.840.10045.2.1
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// Who can decrypt: a P-256 public key and how the message names it.
#[derive(Clone, Debug)]
pub struct Recipient {
    point: Vec<u8>,
    /// A DER `KeyAgreeRecipientIdentifier`.
    rid: Vec<u8>,
}

impl Recipient {
    /// From a PEM file holding the line's certificate (named by issuer and serial) or its
    /// public key (named by subject key identifier, SHA-1 of the key).
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let (label, der) = der::pem::decode_vec(text.trim().as_bytes())
            .map_err(|e| Error::io(path, format!("not PEM: {e}")))?;
        let bad = |what: &str| {
            Error::io(
                path,
                format!("{what}; expected a P-256 certificate or public key"),
            )
        };
        match label {
            "CERTIFICATE" => {
                let cert =
                    x509_cert::Certificate::from_der(&der).map_err(|_| bad("not a certificate"))?;
                let tbs = cert.tbs_certificate();
                let point = p256_point(
                    &tbs.subject_public_key_info()
                        .to_der()
                        .map_err(|_| bad("bad key"))?,
                )
                .ok_or_else(|| bad("the certificate key is not P-256"))?;
                let ias = asn1::tlv(
                    tag::SEQUENCE,
                    &[
                        &tbs.issuer().to_der().map_err(|_| bad("bad issuer"))?,
                        &tbs.serial_number()
                            .to_der()
                            .map_err(|_| bad("bad serial"))?,
                    ],
                );
                Ok(Self { point, rid: ias })
            }
            "PUBLIC KEY" => {
                let point = p256_point(&der).ok_or_else(|| bad("not a P-256 public key"))?;
                let point: [u8; 65] = point
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("not a P-256 public key"))?;
                Ok(Self::from_point(
                    &point,
                    &crate::profile::cert::key_id(&point),
                ))
            }
            other => Err(bad(&format!("PEM label {other}"))),
        }
    }
}

impl Recipient {
    /// A P-256 public key (SEC1 uncompressed point) named by the key identifier `key_id`
    /// (RecipientKeyIdentifier: what the recipient asked to be addressed by).
    pub fn from_point(point: &[u8; 65], key_id: &[u8]) -> Self {
        // rKeyId [0] IMPLICIT RecipientKeyIdentifier { subjectKeyIdentifier }
        let rid = asn1::tlv(0xa0, &[&asn1::tlv(tag::OCTET_STRING, &[key_id])]);
        Self {
            point: point.to_vec(),
            rid,
        }
    }
}

/// The uncompressed point of a P-256 SubjectPublicKeyInfo.
fn p256_point(spki: &[u8]) -> Option<Vec<u8>> {
    (spki.len() == 91 && spki.starts_with(asn1::P256_SPKI_PREFIX))
        .then(|| spki[asn1::P256_SPKI_PREFIX.len()..].to_vec())
}

/// `plaintext` encrypted to `recipient`: a DER ContentInfo holding EnvelopedData.
pub fn seal(plaintext: &[u8], recipient: &Recipient) -> Result<Vec<u8>> {
    let rng = SystemRandom::new();
    let fail = |what: &str| Error::Internal(format!("CMS envelope: {what}"));
    let mut cek = [0u8; 32];
    let mut iv = [0u8; 16];
    rng.fill(&mut cek).map_err(|_| fail("random"))?;
    rng.fill(&mut iv).map_err(|_| fail("random"))?;

    // RFC 5753 §3.1.2: ephemeral-static ECDH, X9.63 KDF with SHA-256 over ECC-CMS-SharedInfo.
    let ephemeral = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| fail("keygen"))?;
    let ephemeral_point = ephemeral.compute_public_key().map_err(|_| fail("keygen"))?;
    let wrap_alg = asn1::tlv(tag::SEQUENCE, &[&asn1::tlv(tag::OID, &[AES256_WRAP])]);
    let shared_info = asn1::tlv(
        tag::SEQUENCE,
        &[
            &wrap_alg,
            // suppPubInfo [2]: the key-encryption key length in bits, 256.
            &asn1::tlv(
                0xa2,
                &[&asn1::tlv(tag::OCTET_STRING, &[&256u32.to_be_bytes()])],
            ),
        ],
    );
    let kek: [u8; 32] = agreement::agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&ECDH_P256, &recipient.point),
        |z| {
            let mut h = Sha256::new();
            h.update(z);
            h.update(1u32.to_be_bytes());
            h.update(&shared_info);
            h.finalize().into()
        },
    )
    .map_err(|_| fail("the recipient key is not a valid P-256 point"))?;
    let mut wrapped = [0u8; 40];
    AesKw::<aes::Aes256>::new(&kek.into())
        .wrap_key(&cek, &mut wrapped)
        .map_err(|_| fail("key wrap"))?;

    let originator_key = asn1::tlv(
        0xa1, // originatorKey [1] IMPLICIT OriginatorPublicKey
        &[
            &asn1::tlv(tag::SEQUENCE, &[&asn1::tlv(tag::OID, &[EC_PUBLIC_KEY])]),
            &asn1::tlv(tag::BIT_STRING, &[&[0], ephemeral_point.as_ref()]),
        ],
    );
    let kari = asn1::tlv(
        0xa1, // kari [1] IMPLICIT KeyAgreeRecipientInfo
        &[
            &[tag::INTEGER, 1, 3],
            &asn1::tlv(0xa0, &[&originator_key]), // originator [0] EXPLICIT
            &asn1::tlv(
                tag::SEQUENCE,
                &[&asn1::tlv(tag::OID, &[ECDH_SHA256_KDF]), &wrap_alg],
            ),
            &asn1::tlv(
                tag::SEQUENCE,
                &[&asn1::tlv(
                    tag::SEQUENCE,
                    &[&recipient.rid, &asn1::tlv(tag::OCTET_STRING, &[&wrapped])],
                )],
            ),
        ],
    );
    let ciphertext = cbc::Encryptor::<aes::Aes256>::new_from_slices(&cek, &iv)
        .map_err(|_| fail("cipher"))?
        .encrypt_padded_vec::<Pkcs7>(plaintext);
    let encrypted_content_info = asn1::tlv(
        tag::SEQUENCE,
        &[
            &asn1::tlv(tag::OID, &[DATA]),
            &asn1::tlv(
                tag::SEQUENCE,
                &[
                    &asn1::tlv(tag::OID, &[AES256_CBC]),
                    &asn1::tlv(tag::OCTET_STRING, &[&iv]),
                ],
            ),
            &asn1::tlv(0x80, &[&ciphertext]), // [0] IMPLICIT OCTET STRING
        ],
    );
    let enveloped = asn1::tlv(
        tag::SEQUENCE,
        &[
            &[tag::INTEGER, 1, 2], // RFC 5652 §6.1: version 2 with a kari recipient
            &asn1::tlv(tag::SET, &[&kari]),
            &encrypted_content_info,
        ],
    );
    Ok(asn1::tlv(
        tag::SEQUENCE,
        &[
            &asn1::tlv(tag::OID, &[ENVELOPED_DATA]),
            &asn1::tlv(0xa0, &[&enveloped]),
        ],
    ))
}
