//! Re-key marking (issue 14 item 7): an operator marks a DAC; its renewal with the same key is
//! refused, with a new key it succeeds; `certs show` reports the mark; the mark is audited.
//! Real TLS on loopback (the DAC as the client certificate), then the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::process::Command;

use common::est::{ALL, Client, TestServer};
use common::{assert_success, subject};
use der::Decode;
use matter_est::profile::dev;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const ENROLL: &str = "/.well-known/est/dev/simpleenroll";
const REENROLL: &str = "/.well-known/est/dev/simplereenroll";

fn dac_of(server: &TestServer, reply: &common::est::Reply) -> Vec<u8> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    common::est::issued(
        &common::est::pkcs7_certs(&reply.body),
        &server.env.pai_der(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dac_marked_for_rekey_renews_only_with_a_new_key() {
    let mut server = TestServer::start(|t| t).await;
    let name = subject(Some("rekey-me"), Some("FFF1"), Some("8000"));
    let (pkcs8, _) = matter_est::signer::generate_p256().unwrap();
    let key = matter_est::signer::KeySigner::from_pkcs8(&pkcs8).unwrap();
    let csr = matter_est::csr::build(&name, &key).unwrap();
    let dac = dac_of(&server, &server.gateway().await.enroll(ENROLL, &csr).await);
    let serial = x509_cert::Certificate::from_der(&dac)
        .unwrap()
        .tbs_certificate()
        .serial_number()
        .as_bytes()
        .to_vec();

    server.ledger.mark_rekey(&serial, 1, "test").unwrap();
    assert!(
        server.ledger.mark_rekey(&serial, 2, "test").is_err(),
        "twice"
    );
    let identity = (
        vec![CertificateDer::from(dac.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.clone())),
    );
    let mut device = Client::connect(server.addr, server.client_config(Some(identity), ALL))
        .await
        .unwrap();
    // The same key again: refused.
    let r = device.enroll(REENROLL, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("re-key"), "{}", r.text());
    // A new key: renewed.
    let (new_csr, _) = common::csr(&name);
    let renewed = dac_of(&server, &device.enroll(REENROLL, &new_csr).await);
    assert_ne!(renewed, dac);
    server.stop().await;
    server.ledger.close();
    let env = std::mem::replace(&mut server.env, common::DevEnv::new(|t| t));
    drop(server);

    let hex = matter_est::asn1::hex(&serial).to_uppercase();
    let out = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["certs", "show", &hex, "--json", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .output()
        .unwrap();
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rekey"]["by"], "test");
    assert_eq!(v["lineage"].as_array().unwrap().len(), 2);
    let out = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args([
            "audit",
            "list",
            "--json",
            "--event",
            "rekey_marked",
            "--config",
        ])
        .arg(env.path(dev::files::CONFIG))
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    // The CLI marks the renewed DAC; a second time is refused.
    let renewed_hex = matter_est::asn1::hex(
        x509_cert::Certificate::from_der(&renewed)
            .unwrap()
            .tbs_certificate()
            .serial_number()
            .as_bytes(),
    );
    let rekey = || {
        Command::new(env!("CARGO_BIN_EXE_matter-est"))
            .args(["certs", "rekey", &renewed_hex, "--config"])
            .arg(env.path(dev::files::CONFIG))
            .output()
            .unwrap()
    };
    let out = rekey();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("marked for re-key"));
    let out = rekey();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already marked"));
}
