//! Issue 13: `/serverkeygen` (RFC 7030 §4.4) over real TLS: the server makes the key, issues the
//! DAC for the CSR's subject, and answers multipart/mixed with the key (PKCS#8, or CMS
//! EnvelopedData when the CSR asks for it encrypted) and the certificate, each part base64 with
//! its own Content-Transfer-Encoding. Off unless the label enables it; mutual TLS only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use common::est::{Reply, TestServer, issued, pkcs7_certs};
use common::{assert_matter_dac, subject};
use der::Decode;
use matter_est::asn1::{self, tag};
use matter_est::signer::{self, KeySigner, Signer};

const KEYGEN: &str = "/.well-known/est/dev/serverkeygen";

/// id-aa-asymmDecryptKeyID 1.2.840.113549.1.9.16.2.54
const ASYMM_DECRYPT_KEY_ID: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x02, 0x36,
];

fn b64(der: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
}

/// The parts of a multipart/mixed body: (headers, decoded body).
fn parts(reply: &Reply) -> Vec<(String, Vec<u8>)> {
    let ct = reply.header("content-type").unwrap();
    let boundary = ct.split("boundary=").nth(1).expect("a boundary");
    let text = reply.text();
    let mut out = Vec::new();
    for chunk in text.split(&format!("--{boundary}")).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let (head, body) = chunk.split_once("\r\n\r\n").expect("part headers");
        let data: String = body.split_whitespace().collect();
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap();
        out.push((head.to_string(), der));
    }
    out
}

/// A CSR for `cn`, with the AsymmetricDecryptKeyIdentifier `decrypt_to` if given; and its key.
fn keygen_csr(cn: &str, decrypt_to: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let (pkcs8, point) = signer::generate_p256().unwrap();
    let key = KeySigner::from_pkcs8(&pkcs8).unwrap();
    let attr = decrypt_to.map(|id| {
        let id = if id.is_empty() {
            matter_est::profile::cert::key_id(&point).to_vec()
        } else {
            id.to_vec()
        };
        asn1::tlv(
            tag::SEQUENCE,
            &[
                &asn1::tlv(tag::OID, &[ASYMM_DECRYPT_KEY_ID]),
                &asn1::tlv(tag::SET, &[&asn1::tlv(tag::OCTET_STRING, &[&id])]),
            ],
        )
    });
    let attrs: Vec<&[u8]> = attr.iter().map(Vec::as_slice).collect();
    let csr = matter_est::csr::build_with_attributes(
        &subject(Some(cn), Some("FFF1"), Some("8000")),
        &attrs,
        &key,
    )
    .unwrap();
    (csr, pkcs8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_makes_the_key_and_returns_it_with_the_dac() {
    let server = TestServer::start(|t| common::label_keys(t, "serverkeygen = true")).await;
    let mut gw = server.gateway().await;
    let (csr, csr_key) = keygen_csr("keygen-1", None);
    let r = gw.enroll(KEYGEN, &csr).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("multipart/mixed; boundary=est-serverkeygen-part")
    );
    let parts = parts(&r);
    assert_eq!(parts.len(), 2);
    for (head, _) in &parts {
        assert!(
            head.contains("\r\nContent-Transfer-Encoding: base64"),
            "{head}"
        );
    }
    assert!(parts[0].0.contains("Content-Type: application/pkcs8\r\n"));
    assert!(
        parts[1]
            .0
            .contains("Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n")
    );
    // The key is a P-256 PKCS#8 key, the DAC's, and not the CSR's.
    let key = KeySigner::from_pkcs8(&parts[0].1).unwrap();
    let pai = server.env.pai_der();
    let dac = issued(&pkcs7_certs(b64(&parts[1].1).as_bytes()), &pai);
    assert_matter_dac(&dac, &pai);
    let parsed = matter_est::profile::cert::Parsed::from_der(&dac).unwrap();
    assert_eq!(&parsed.public_key, key.public_key());
    assert_ne!(
        key.public_key(),
        KeySigner::from_pkcs8(&csr_key).unwrap().public_key()
    );
    // On record, marked as server-generated; the subject is the CSR's.
    let serial = parsed.cert.tbs_certificate().serial_number().as_bytes();
    let record = server.ledger.by_serial(serial).unwrap().unwrap();
    assert!(record.server_keygen);
    assert!(
        record.subject.starts_with("CN=keygen-1,"),
        "{}",
        record.subject
    );
    // An ordinary enrollment is not marked.
    let (csr, _) = keygen_csr("plain-1", None);
    let r = gw.enroll("/.well-known/est/dev/simpleenroll", &csr).await;
    let plain = issued(&pkcs7_certs(&r.body), &pai);
    let serial = x509_cert::Certificate::from_der(&plain)
        .unwrap()
        .tbs_certificate()
        .serial_number()
        .as_bytes()
        .to_vec();
    assert!(
        !server
            .ledger
            .by_serial(&serial)
            .unwrap()
            .unwrap()
            .server_keygen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_key_opens_with_the_csr_key_in_openssl() {
    let server = TestServer::start(|t| common::label_keys(t, "serverkeygen = true")).await;
    let mut gw = server.gateway().await;
    // The CSR asks for the key encrypted to its own key (named by the SHA-1 key identifier).
    let (csr, csr_key) = keygen_csr("keygen-sealed", Some(&[]));
    let r = gw.enroll(KEYGEN, &csr).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = parts(&r);
    assert!(
        parts[0]
            .0
            .contains("Content-Type: application/pkcs7-mime; smime-type=server-generated-key\r\n"),
        "{}",
        parts[0].0
    );
    // An independent CMS implementation opens it with the CSR's private key.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.p7"), &parts[0].1).unwrap();
    matter_est::profile::dev::write_key(dir.path(), "csr.key", &csr_key).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "cms", "-decrypt", "-inform", "DER", "-in", "key.p7", "-inkey", "csr.key", "-binary",
            "-out", "key.der",
        ])
        .output()
        .unwrap();
    common::assert_success(&out);
    let key = KeySigner::from_pkcs8(&std::fs::read(dir.path().join("key.der")).unwrap()).unwrap();
    let pai = server.env.pai_der();
    let dac = issued(&pkcs7_certs(b64(&parts[1].1).as_bytes()), &pai);
    let parsed = matter_est::profile::cert::Parsed::from_der(&dac).unwrap();
    assert_eq!(&parsed.public_key, key.public_key());

    // A key identifier the server does not know: 400, nothing issued.
    let before = server.ledger.count("dev").unwrap();
    let (csr, _) = keygen_csr("keygen-unknown", Some(&[7u8; 20]));
    let r = gw.enroll(KEYGEN, &csr).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("AsymmetricDecryptKeyIdentifier"),
        "{}",
        r.text()
    );
    assert_eq!(server.ledger.count("dev").unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverkeygen_is_off_unless_the_label_enables_it_and_needs_mutual_tls() {
    let server = TestServer::start(|t| t).await;
    let (csr, _) = keygen_csr("keygen-off", None);
    let r = server.gateway().await.enroll(KEYGEN, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("labels.dev.serverkeygen"), "{}", r.text());
    // Without a client certificate (a token holder): 401, even where it is on.
    let server = TestServer::start(|t| common::label_keys(t, "serverkeygen = true")).await;
    let (id, secret) =
        matter_est::policy::create_token(server.ledger.as_ref(), "dev", None).unwrap();
    let auth = format!("Basic {}", b64(format!("{id}:{secret}").as_bytes()));
    let r = server
        .anonymous()
        .await
        .request(
            "POST",
            KEYGEN,
            &[
                ("Content-Type", "application/pkcs10"),
                ("Authorization", &auth),
            ],
            b64(&csr).into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("mutual TLS"), "{}", r.text());
    assert_eq!(server.ledger.count("dev").unwrap(), 0);
}
