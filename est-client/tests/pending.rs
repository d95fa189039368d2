//! A server that holds a request (202 + Retry-After, RFC 7030 §4.2.3): the library reports it as
//! `Enrolled::Pending`, the CLI waits and retries up to its bound. matter-est never answers 202,
//! so this server is a small stand-in over real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // reason: tests; shared helpers

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use matter_est::profile::dev;

/// Serves `holds` 202s, then the certs-only body of `certs`; returns the port.
async fn holding_server(env: &common::DevEnv, holds: usize, certs: Vec<Vec<u8>>) -> u16 {
    let tls = matter_est::tls::server_config(
        &env.path(dev::files::SERVER_CERT),
        &env.path(dev::files::SERVER_KEY),
        &[],
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let refs: Vec<&[u8]> = certs.iter().map(Vec::as_slice).collect();
    let body = Bytes::from(matter_est::est::wire::base64_wrapped(
        &matter_est::est::wire::certs_only(&refs),
    ));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen, body) = (acceptor.clone(), seen.clone(), body.clone());
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let svc = service_fn(move |_req| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    let resp = if n < holds {
                        hyper::Response::builder()
                            .status(202)
                            .header("Retry-After", "1")
                            .body(Full::new(Bytes::new()))
                    } else {
                        hyper::Response::builder()
                            .status(200)
                            .header(
                                "Content-Type",
                                "application/pkcs7-mime; smime-type=certs-only",
                            )
                            .body(Full::new(body.clone()))
                    };
                    async move { resp }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

fn enroll_cmd(
    env: &common::DevEnv,
    port: u16,
    max_wait: &str,
    out: &std::path::Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_est-client"));
    cmd.args([
        "enroll",
        "--server",
        &format!("https://localhost:{port}"),
        "--cacert",
    ])
    .arg(env.path(dev::files::TLS_CA_CERT))
    .args([
        "--vid",
        "FFF1",
        "--pid",
        "8000",
        "--device-id",
        "held-1",
        "--max-wait",
        max_wait,
        "--out",
    ])
    .arg(out);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_typed_and_retried() {
    let env = common::DevEnv::new(|t| t);
    let certs = vec![
        env.pai_der(),
        matter_est::issuance::read_cert(&env.path(dev::files::PAA_CERT)).unwrap(),
    ];

    // The library: a typed Pending with the server's Retry-After.
    let port = holding_server(&env, 1, certs.clone()).await;
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
        &Default::default(),
    )
    .unwrap();
    match client.simpleenroll(&csr).await.unwrap() {
        est_client::Enrolled::Pending { retry_after } => assert_eq!(retry_after.as_secs(), 1),
        other => panic!("expected Pending, got {other:?}"),
    }
    assert!(
        matches!(client.simpleenroll(&csr).await.unwrap(), est_client::Enrolled::Certificates(c) if c == certs)
    );

    // The CLI waits and retries: held twice, then served.
    let port = holding_server(&env, 2, certs.clone()).await;
    let out = env.path("held");
    let run = tokio::task::spawn_blocking({
        let mut cmd = enroll_cmd(&env, port, "10", &out);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("held by the server; retrying in 1 s"));
    assert!(env.path("held.dac.pem").exists());

    // ... up to its bound.
    let port = holding_server(&env, usize::MAX, certs).await;
    let run = tokio::task::spawn_blocking({
        let mut cmd = enroll_cmd(&env, port, "0", &env.path("never"));
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("still held by the server"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
