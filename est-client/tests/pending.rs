//! A server that holds a request (202 + Retry-After, RFC 7030 §4.2.3): the library reports it as
//! `Enrolled::Pending`, the CLI waits and retries up to its bound. matter-est never answers 202,
//! so this server is a small stand-in over real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: tests; shared helpers

#[path = "../../tests/common/mod.rs"]
mod common;
mod fake;

use std::sync::Arc;

use matter_est::profile::dev;

/// Serves `holds` 202s, then a DAC for the CSR with the PAI; returns the port.
async fn holding_server(env: &common::DevEnv, holds: usize, pki: &Arc<fake::Pki>) -> u16 {
    let pki = pki.clone();
    let fake = fake::serve(env, move |n, _, body| {
        if n < holds {
            fake::held(1)
        } else {
            fake::certs_only(&[&pki.dac(body), &pki.pai])
        }
    })
    .await;
    fake.port
}

fn enroll_cmd(
    env: &common::DevEnv,
    port: u16,
    max_wait: &str,
    out: &std::path::Path,
) -> std::process::Command {
    let url = format!("https://localhost:{port}");
    let mut cmd = fake::enroll(env, &url, "held-1", out);
    cmd.args(["--max-wait", max_wait]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_typed_and_retried() {
    let env = common::DevEnv::new(|t| t);
    let pki = Arc::new(fake::Pki::new(&env));

    // The library: a typed Pending with the server's Retry-After.
    let port = holding_server(&env, 1, &pki).await;
    let cfg = est_client::ClientConfig::new(
        &format!("https://localhost:{port}"),
        None,
        &env.path(dev::files::TLS_CA_CERT),
        None,
    )
    .unwrap();
    let client = est_client::Client::new(cfg);
    let csr = est_client::matter::csr(
        &est_client::matter::generate_key().unwrap(),
        &est_client::matter::DeviceSubject {
            cn: Some("held-lib".into()),
            vid: Some("FFF1".into()),
            pid: Some("8000".into()),
            serial_number: None,
        },
    )
    .unwrap();
    match client.simpleenroll(&csr).await.unwrap() {
        est_client::Enrolled::Pending { retry_after } => assert_eq!(retry_after.as_secs(), 1),
        other => panic!("expected Pending, got {other:?}"),
    }
    assert!(
        matches!(client.simpleenroll(&csr).await.unwrap(), est_client::Enrolled::Issued(i) if i.chain == [pki.pai.clone()])
    );

    // The CLI waits and retries: held twice, then served.
    let port = holding_server(&env, 2, &pki).await;
    let out = env.path("held");
    let run = fake::run(enroll_cmd(&env, port, "10", &out)).await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("held by the server; retrying in 1 s"));
    assert!(env.path("held.dac.pem").exists());

    // ... up to its bound.
    let port = holding_server(&env, usize::MAX, &pki).await;
    let run = fake::run(enroll_cmd(&env, port, "0", &env.path("never"))).await;
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("still held by the server"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
