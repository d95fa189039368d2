//! Issue 17: enrollment rate limits per client identity and per label, refused with 429 and
//! `Retry-After`, over real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use common::est::{Client, TestServer};
use common::{csr, subject};

const ENROLL: &str = "/.well-known/est/dev/simpleenroll";

async fn gateway_enroll(c: &mut Client, cn: &str) -> common::est::Reply {
    let (der, _) = csr(&subject(Some(cn), Some("FFF1"), Some("8000")));
    c.enroll(ENROLL, &der).await
}

async fn token_enroll(server: &TestServer, cn: &str) -> common::est::Reply {
    let (id, secret) =
        matter_est::policy::create_token(server.ledger.as_ref(), "dev", None).unwrap();
    let (der, _) = csr(&subject(Some(cn), Some("FFF1"), Some("8000")));
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    let auth = format!("Basic {}", b64(format!("{id}:{secret}").as_bytes()));
    server
        .anonymous()
        .await
        .request(
            "POST",
            ENROLL,
            &[
                ("Content-Type", "application/pkcs10"),
                ("Authorization", &auth),
            ],
            b64(&der).into_bytes(),
        )
        .await
        .unwrap()
}

fn retry_after(r: &common::est::Reply) -> u64 {
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("labels.dev.rate_limit"), "{}", r.text());
    r.header("retry-after").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_over_its_rate_gets_429_and_others_are_served() {
    let server =
        TestServer::start(|t| t + "\n[labels.dev.rate_limit]\nper_identity_per_sec = 2\n").await;
    let mut gw = server.gateway().await;
    assert_eq!(gateway_enroll(&mut gw, "rl-1").await.status, 200);
    assert_eq!(gateway_enroll(&mut gw, "rl-2").await.status, 200);
    let wait = retry_after(&gateway_enroll(&mut gw, "rl-3").await);
    assert_eq!(wait, 1);
    // Another identity (a device with its token) has its own bucket.
    assert_eq!(token_enroll(&server, "rl-token").await.status, 200);
    assert_eq!(
        server.ledger.count("dev").unwrap(),
        3,
        "nothing recorded for the 429"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(gateway_enroll(&mut gw, "rl-3").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_over_its_rate_gets_429_whoever_asks() {
    let server =
        TestServer::start(|t| t + "\n[labels.dev.rate_limit]\nper_label_per_sec = 2\n").await;
    let mut gw = server.gateway().await;
    assert_eq!(gateway_enroll(&mut gw, "lbl-1").await.status, 200);
    assert_eq!(token_enroll(&server, "lbl-2").await.status, 200);
    retry_after(&token_enroll(&server, "lbl-3").await);
    retry_after(&gateway_enroll(&mut gw, "lbl-4").await);
    assert_eq!(server.ledger.count("dev").unwrap(), 2);
}
