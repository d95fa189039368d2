//! est-client against servers other than matter-est (issue 12): what it sends must be read by
//! OpenSSL's base64 reader (libest). The servers here are stand-ins over real TLS (`fake`),
//! signing with the development PAI; the independent implementation is OpenSSL
//! (`openssl base64 -d`, `openssl req -verify`).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: tests; shared helpers

#[path = "../../tests/common/mod.rs"]
mod common;
mod fake;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::DevEnv;
use fake::Pki;

/// `est-client enroll` of a new key and CSR for `id` (VID FFF1, PID 8000, a serialNumber) to
/// DIR/`id`.
fn enroll(env: &DevEnv, fake: &fake::Fake, id: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = fake::enroll(env, &fake.url(), id, &dir.join(id));
    cmd.args(["--serial-number", "SN-0042"]).args(extra);
    cmd
}

// Item 11: libest's server answers "400 Invalid or corrupted pkcs10 request" to a body on one
// long line, as OpenSSL's base64 reader needs line breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_wrapped_so_openssl_reads_them() {
    let env = DevEnv::new(|t| t);
    let pki = Arc::new(Pki::new(&env));
    let p = pki.clone();
    let fake = fake::serve(&env, move |_, path, body| {
        let issued = if path.ends_with("/simplereenroll") {
            p.same_subject(body)
        } else {
            p.dac(body)
        };
        fake::certs_only(&[&issued, &p.pai])
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let run = fake::run(enroll(&env, &fake, "wrap-1", dir.path(), &[])).await;
    common::assert_success(&run);
    let mut renew = fake::est_client(&env, &fake.url());
    renew
        .arg("reenroll")
        .arg("--cert")
        .arg(dir.path().join("wrap-1.dac.pem"))
        .arg("--key")
        .arg(dir.path().join("wrap-1.key.pem"))
        .arg("--out")
        .arg(dir.path().join("wrap-1-renewed"));
    common::assert_success(&fake::run(renew).await);

    let bodies = [fake.bodies("simpleenroll"), fake.bodies("simplereenroll")].concat();
    assert_eq!(bodies.len(), 2);
    for (i, body) in bodies.iter().enumerate() {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with("\r\n"), "{text:?}");
        let lines: Vec<&str> = text.trim_end_matches("\r\n").split("\r\n").collect();
        assert!(lines.len() > 1, "{text:?}");
        assert!(
            lines
                .iter()
                .all(|l| (1..=64).contains(&l.len()) && !l.contains('\n'))
        );
        // OpenSSL's reader, as libest's server uses it, then OpenSSL's CSR check.
        let (b64, der) = (
            dir.path().join(format!("body{i}")),
            dir.path().join("csr.der"),
        );
        std::fs::write(&b64, body).unwrap();
        let decode = Command::new("openssl")
            .args(["base64", "-d", "-in"])
            .arg(&b64)
            .arg("-out")
            .arg(&der)
            .output()
            .unwrap();
        common::assert_success(&decode);
        let verify = Command::new("openssl")
            .args(["req", "-inform", "DER", "-noout", "-verify", "-in"])
            .arg(&der)
            .output()
            .unwrap();
        common::assert_success(&verify);
        assert!(
            String::from_utf8_lossy(&[verify.stdout, verify.stderr].concat()).contains("verify OK")
        );
    }
}
