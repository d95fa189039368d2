//! est-client against servers other than matter-est (issue 12, items 11-13): what it sends must
//! be read by OpenSSL's base64 reader (libest); what it receives is a `SET OF` certificates in
//! any order (DER sorts it), maybe the DAC alone, maybe not the DAC asked for. The servers here
//! are stand-ins over real TLS (`fake`), signing with the development PAI; the independent
//! implementation is OpenSSL (`openssl base64 -d`, `openssl req -verify`, `openssl crl2pkcs7`).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: tests; shared helpers

#[path = "../../tests/common/mod.rs"]
mod common;
mod fake;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::DevEnv;
use fake::{Pki, assert_certifies, pem_certs};

/// `est-client enroll` of a new key and CSR for `id` (VID FFF1, PID 8000, a serialNumber) to
/// DIR/`id`.
fn enroll(env: &DevEnv, fake: &fake::Fake, id: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = fake::enroll(env, &fake.url(), id, &dir.join(id));
    cmd.args(["--serial-number", "SN-0042"]).args(extra);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A certs-only PKCS#7 made by OpenSSL (`openssl crl2pkcs7 -nocrl`), holding `certs` in this
/// order.
fn openssl_pkcs7(certs: &[&[u8]]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("certs.pem");
    let owned: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
    std::fs::write(&pem, est_client::wire::pem(&owned).unwrap()).unwrap();
    let out = Command::new("openssl")
        .args(["crl2pkcs7", "-nocrl", "-outform", "DER", "-certfile"])
        .arg(&pem)
        .output()
        .expect("openssl is installed");
    common::assert_success(&out);
    out.stdout
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

// Item 12: a certs-only PKCS#7 is a SET OF certificates, sorted by encoding in DER; the DAC is
// the certificate for the CSR's key, wherever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dac_is_found_by_its_key_wherever_the_server_puts_it() {
    let env = DevEnv::new(|t| t);
    let pki = Arc::new(Pki::new(&env));
    let p = pki.clone();
    let fake = fake::serve(&env, move |n, _, body| {
        let dac = p.dac(body);
        if n % 2 == 0 {
            // OpenSSL's encoder, the DAC last.
            fake::pkcs7(&openssl_pkcs7(&[&p.paa, &p.pai, &dac]))
        } else {
            // Sorted by encoding, as a DER SET OF.
            let mut set = [dac.as_slice(), &p.pai, &p.paa];
            set.sort();
            fake::certs_only(&set)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    for id in ["order-1", "order-2"] {
        let run = fake::run(enroll(&env, &fake, id, dir.path(), &[])).await;
        common::assert_success(&run);
        let prefix = dir.path().join(id);
        assert_certifies(
            &prefix.with_extension("dac.pem"),
            &prefix.with_extension("key.pem"),
        );
        // The chain in chain order, whatever the wire order.
        assert_eq!(
            pem_certs(&prefix.with_extension("chain.pem")),
            [pki.pai.clone(), pki.paa.clone()]
        );
    }

    // Gateway mode: every device's DAC for its own key.
    let out = dir.path().join("line");
    let ids = ["gw-1", "gw-2", "gw-3", "gw-4"];
    let run = fake::run(fake::gateway(&env, &fake.url(), &ids, &out)).await;
    common::assert_success(&run);
    for id in ids {
        assert_certifies(
            &out.join(format!("{id}.dac.pem")),
            &out.join(format!("{id}.key.pem")),
        );
    }
    assert_eq!(
        pem_certs(&out.join("chain.pem")),
        [pki.pai.clone(), pki.paa.clone()]
    );
}

// Item 13: a certificate that is not the Matter DAC asked for is an error, not a DAC file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_is_not_the_dac_asked_for_is_not_written() {
    let env = DevEnv::new(|t| t);
    let pki = Arc::new(Pki::new(&env));
    let p = pki.clone();
    // The answer depends on the device ID the CSR asks for.
    let fake = fake::serve(&env, move |_, _, body| {
        let req = matter_est::csr::parse(body).unwrap();
        let cn = req.ids.cn.clone().unwrap();
        let key = req.public_key;
        let cert = match cn.as_str() {
            "no-vid-pid" => p.sign(&common::subject(Some(&cn), None, None), &key),
            "other-pid" => p.sign(
                &common::subject(Some(&cn), Some("FFF1"), Some("8001")),
                &key,
            ),
            "other-cn" => p.sign(
                &common::subject(Some("someone"), Some("FFF1"), Some("8000")),
                &key,
            ),
            "other-key" => {
                let other = est_client::matter::generate_key().unwrap();
                let other = fake::csr_key(&csr_for(&other, &cn));
                p.sign(
                    &common::subject(Some(&cn), Some("FFF1"), Some("8000")),
                    &other,
                )
            }
            _ => p.dac(body),
        };
        fake::certs_only(&[&cert, &p.pai])
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    for (id, problem) in [
        (
            "no-vid-pid",
            "no VID (asked for FFF1), no PID (asked for 8000)",
        ),
        ("other-pid", "PID 8001, not 8000"),
        ("other-cn", "CN someone, not other-cn"),
    ] {
        let run = fake::run(enroll(&env, &fake, id, dir.path(), &[])).await;
        assert!(!run.status.success(), "{id}");
        let err = stderr(&run);
        assert!(
            err.contains("not the Matter DAC requested") && err.contains(problem),
            "{id}: {err}"
        );
        let prefix = dir.path().join(id);
        assert!(!prefix.with_extension("dac.pem").exists(), "{id}");
        assert!(!prefix.with_extension("chain.pem").exists(), "{id}");
        assert!(
            prefix.with_extension("key.pem").exists(),
            "{id}: the key is kept"
        );
    }
    // --accept-non-matter keeps such a certificate (a server that does not issue Matter DACs).
    let run = fake::run(enroll(
        &env,
        &fake,
        "no-vid-pid",
        dir.path(),
        &["--accept-non-matter"],
    ))
    .await;
    common::assert_success(&run);
    assert_certifies(
        &dir.path().join("no-vid-pid.dac.pem"),
        &dir.path().join("no-vid-pid.key.pem"),
    );
    // A certificate for another key is never kept, even then.
    for extra in [&[][..], &["--accept-non-matter"]] {
        let run = fake::run(enroll(&env, &fake, "other-key", dir.path(), extra)).await;
        assert!(!run.status.success());
        assert!(
            stderr(&run)
                .contains("none of the 2 certificates returned is for the CSR's public key"),
            "{}",
            stderr(&run)
        );
        assert!(!dir.path().join("other-key.dac.pem").exists());
    }

    // Gateway mode: the device fails alone, with its reason in the manifest.
    let out = dir.path().join("line");
    let run = fake::run(fake::gateway(
        &env,
        &fake.url(),
        &["good-1", "other-pid", "good-2"],
        &out,
    ))
    .await;
    assert!(!run.status.success());
    assert!(stderr(&run).contains("device other-pid: permanent: the server returned a certificate that is not the Matter DAC requested: PID 8001, not 8000"), "{}", stderr(&run));
    assert!(!out.join("other-pid.dac.pem").exists());
    let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let failed: Vec<serde_json::Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{manifest}");
    assert_eq!(failed[0]["device_id"], "other-pid");
    assert_eq!(failed[0]["failure"], "permanent");
    for id in ["good-1", "good-2"] {
        assert_certifies(
            &out.join(format!("{id}.dac.pem")),
            &out.join(format!("{id}.key.pem")),
        );
    }
}

/// A CSR for `cn` with VID FFF1 and PID 8000.
fn csr_for(key: &[u8], cn: &str) -> Vec<u8> {
    est_client::matter::csr(
        key,
        &est_client::matter::DeviceSubject {
            cn: Some(cn.into()),
            vid: Some("FFF1".into()),
            pid: Some("8000".into()),
            serial_number: None,
        },
    )
    .unwrap()
}

// Item 13: a server that sends the DAC alone (RFC 7030 §4.2.3's strict form): the chain comes
// from /cacerts, or est-client says it is missing; chain.pem is never written empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dac_alone_gets_its_chain_from_cacerts_or_none() {
    let env = DevEnv::new(|t| t);
    let pki = Arc::new(Pki::new(&env));
    for cacerts in [true, false] {
        let p = pki.clone();
        let fake = fake::serve(&env, move |_, path, body| {
            if path.ends_with("/cacerts") {
                if cacerts {
                    fake::certs_only(&[&p.paa, &p.pai])
                } else {
                    fake::status(404, "no such operation")
                }
            } else {
                fake::certs_only(&[&p.dac(body)])
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let id = if cacerts { "alone-1" } else { "alone-2" };
        let chain = dir.path().join(format!("{id}.chain.pem"));
        std::fs::write(&chain, "an older run's chain").unwrap();
        let run = fake::run(enroll(&env, &fake, id, dir.path(), &[])).await;
        common::assert_success(&run);
        assert_certifies(
            &dir.path().join(format!("{id}.dac.pem")),
            &dir.path().join(format!("{id}.key.pem")),
        );
        let out = dir.path().join("line");
        let ids = [format!("{id}-gw-1"), format!("{id}-gw-2")];
        let gw = fake::run(fake::gateway(&env, &fake.url(), &[&ids[0], &ids[1]], &out)).await;
        common::assert_success(&gw);
        if cacerts {
            assert_eq!(pem_certs(&chain), [pki.pai.clone(), pki.paa.clone()]);
            assert_eq!(
                pem_certs(&out.join("chain.pem")),
                [pki.pai.clone(), pki.paa.clone()]
            );
        } else {
            for (run, path) in [(&run, &chain), (&gw, &out.join("chain.pem"))] {
                assert!(!path.exists(), "{}", path.display());
                assert!(
                    stderr(run).contains(&format!(
                        "warning: {} not written, the chain is missing: server answered 404",
                        path.display()
                    )),
                    "{}",
                    stderr(run)
                );
            }
        }
    }
}
