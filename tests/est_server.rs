//! The EST server over real TLS on loopback (issue 3): every operation, every EST-WIRE.md rule,
//! the policy, and the limits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::sync::Arc;

use common::est::{ALL, Client, TestServer, identity_from_files, pkcs7_certs};
use common::{assert_matter_dac, csr, subject};
use matter_est::profile::dev;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENROLL: &str = "/.well-known/est/dev/simpleenroll";

fn b64(der: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
}

/// Every DAC a test receives passes the MATTER.md rules and is in the ledger.
fn check_enrolled(server: &TestServer, reply: &common::est::Reply) -> Vec<u8> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/pkcs7-mime; smime-type=certs-only")
    );
    let certs = pkcs7_certs(&reply.body);
    assert_eq!(certs.len(), 2, "the DAC and the PAI");
    let pai = server.env.pai_der();
    let dac_der = common::est::issued(&certs, &pai);
    assert_matter_dac(&dac_der, &pai);
    let dac = x509_cert::Certificate::from_der(&dac_der).unwrap();
    let record = server
        .ledger
        .by_serial(dac.tbs_certificate().serial_number().as_bytes())
        .unwrap()
        .expect("the DAC is on record");
    assert_eq!(record.der, dac_der);
    dac_der
}
use der::Decode;

/// This file's tests again with the ledger on PostgreSQL (tests/common/pg.rs).
#[test]
fn on_postgres() {
    common::pg::rerun_on_postgres("on_postgres", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacerts_without_client_certificate() {
    let server = TestServer::start(|t| t).await;
    let mut c = server.anonymous().await;
    for path in ["/.well-known/est/cacerts", "/.well-known/est/dev/cacerts"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/pkcs7-mime"));
        assert_eq!(r.header("content-transfer-encoding"), Some("base64"));
        let mut certs = pkcs7_certs(&r.body);
        let mut expected = vec![
            server.env.pai_der(),
            matter_est::issuance::read_cert(&server.env.path(dev::files::PAA_CERT)).unwrap(),
        ];
        certs.sort();
        expected.sort();
        assert_eq!(certs, expected, "the PAI and the PAA");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrattrs_advertise_the_matter_csr() {
    let server = TestServer::start(|t| t).await;
    let r = server
        .anonymous()
        .await
        .get("/.well-known/est/csrattrs")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/csrattrs"));
    let text: String = r.text().split_whitespace().collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).unwrap();
    // CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID (RFC 7030 §4.5.2)
    #[derive(der::Choice, Debug)]
    enum AttrOrOid {
        Oid(const_oid::ObjectIdentifier),
        Attribute(x509_cert::attr::Attribute),
    }
    let attrs: Vec<AttrOrOid> = Vec::from_der(&der).unwrap();
    let oids: Vec<String> = attrs
        .iter()
        .map(|a| match a {
            AttrOrOid::Oid(o) => o.to_string(),
            AttrOrOid::Attribute(a) => format!(
                "{}={}",
                a.oid,
                a.values
                    .get(0)
                    .unwrap()
                    .decode_as::<const_oid::ObjectIdentifier>()
                    .unwrap()
            ),
        })
        .collect();
    assert_eq!(
        oids,
        [
            "1.2.840.10045.4.3.2",
            "1.2.840.10045.2.1=1.2.840.10045.3.1.7",
            "1.3.6.1.4.1.37244.2.1",
            "1.3.6.1.4.1.37244.2.2"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simpleenroll_over_keep_alive_with_every_body_form() {
    let server = TestServer::start(|t| t).await;
    let mut c = server.gateway().await;
    type Encode = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    let forms: Vec<(Encode, Option<&str>)> = vec![
        (Box::new(|d| b64(d).into_bytes()), Some("base64")),
        (Box::new(|d| b64(d).into_bytes()), None),
        (
            Box::new(|d| {
                b64(d)
                    .as_bytes()
                    .chunks(64)
                    .flat_map(|l| [l, b"\r\n"].concat())
                    .collect()
            }),
            None,
        ),
        (
            Box::new(|d| {
                b64(d)
                    .as_bytes()
                    .chunks(76)
                    .flat_map(|l| [l, b"\n"].concat())
                    .collect()
            }),
            Some("base64"),
        ),
        (
            Box::new(|d| {
                format!(
                    "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
                    b64(d)
                )
                .into_bytes()
            }),
            None,
        ),
    ];
    for (i, (encode, cte)) in forms.iter().enumerate() {
        let (der, _) = csr(&subject(
            Some(&format!("form-{i}")),
            Some("FFF1"),
            Some("8000"),
        ));
        let mut headers = vec![("Content-Type", "application/pkcs10")];
        if let Some(cte) = cte {
            headers.push(("Content-Transfer-Encoding", cte));
        }
        let r = c
            .request("POST", ENROLL, &headers, encode(&der))
            .await
            .unwrap();
        check_enrolled(&server, &r);
        assert_eq!(r.header("content-transfer-encoding"), Some("base64"));
        // EST-WIRE.md: wrapped base64 output, CRLF, at most 64 columns.
        let text = r.text();
        assert!(
            text.contains("\r\n") && text.split("\r\n").all(|l| l.len() <= 64),
            "{text}"
        );
    }
    // The unlabeled path serves the default label; parameters and case in Content-Type.
    let (der, _) = csr(&subject(Some("unlabeled"), None, Some("8000")));
    let r = c
        .request(
            "POST",
            "/.well-known/est/simpleenroll",
            &[("Content-Type", "Application/PKCS10; charset=binary")],
            b64(&der).into_bytes(),
        )
        .await
        .unwrap();
    check_enrolled(&server, &r);
}

/// Reads a raw HTTP/1.1 response (head and body) from a TLS stream.
async fn raw_exchange(server: &TestServer, identity: bool, request: &str) -> String {
    let config = server.client_config(identity.then(|| server.gateway_identity()), ALL);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_framing_title_case_content_length_no_chunking() {
    let server = TestServer::start(|t| t).await;
    let (der, _) = csr(&subject(Some("raw"), Some("FFF1"), Some("8000")));
    let body = b64(&der);
    let req = format!(
        "POST {ENROLL} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = raw_exchange(&server, true, &req).await;
    let head = raw.split("\r\n\r\n").next().unwrap();
    let lines: Vec<&str> = head.lines().collect();
    assert_eq!(lines[0], "HTTP/1.1 200 OK");
    assert!(
        lines[1].starts_with("Content-Type: application/pkcs7-mime; smime-type=certs-only"),
        "{head}"
    );
    assert!(lines[2].starts_with("Content-Length: "), "{head}");
    assert!(
        head.contains("\r\nContent-Transfer-Encoding: base64"),
        "{head}"
    );
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert!(lines.len() <= 16, "libest reads 16 headers");

    // 401 with the exact challenge header libest looks for.
    let req = format!(
        "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = raw_exchange(&server, false, &req).await;
    assert!(raw.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{raw}");
    assert!(
        raw.contains("\r\nWWW-Authenticate: Basic realm=\"matter-est\"\r\n"),
        "{raw}"
    );
    assert!(
        raw.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
        "{raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_403_404_405_413_415() {
    let server = TestServer::start(|t| {
        t.replace(
            "match = \"cn:gw-line-1\"\npids = \"any\"",
            "match = \"cn:gw-line-1\"\npids = [\"8000\"]",
        )
    })
    .await;
    let mut c = server.gateway().await;
    // 403: a gateway allowed PID 8000 cannot get 8001; the message names the rule.
    let (der, _) = csr(&subject(Some("p8001"), Some("FFF1"), Some("8001")));
    let r = c.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text().trim(),
        "PID 8001 is not allowed for client cn:gw-line-1 on label \"dev\""
    );
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    // 404: unknown label, unknown operation, outside EST.
    for path in [
        "/.well-known/est/nope/simpleenroll",
        "/.well-known/est/dev/enroll",
        "/index.html",
    ] {
        assert_eq!(c.get(path).await.status, 404, "{path}");
    }
    // 405 with Allow.
    let r = c.get(ENROLL).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = c
        .request("POST", "/.well-known/est/cacerts", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    // 415: wrong media type.
    let r = c
        .request(
            "POST",
            ENROLL,
            &[("Content-Type", "text/plain")],
            b64(&der).into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 415, "{}", r.text());
    // 400: not a CSR.
    let r = c
        .request(
            "POST",
            ENROLL,
            &[("Content-Type", "application/pkcs10")],
            b"bm90IGEgY3Ny".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not a PKCS#10 CSR"), "{}", r.text());
    // The connection still serves after all of that (keep-alive).
    let (der, _) = csr(&subject(Some("after"), Some("FFF1"), Some("8000")));
    check_enrolled(&server, &c.enroll(ENROLL, &der).await);
    // 413: over the cap, declared (answered before the body is read) or streamed (chunked).
    let declared = format!(
        "POST {ENROLL} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\nContent-Length: 70000\r\n\r\n"
    );
    let raw = raw_exchange(&server, true, &declared).await;
    assert!(
        raw.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{raw}"
    );
    let chunk = "A".repeat(8000);
    let mut streamed = format!(
        "POST {ENROLL} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for _ in 0..9 {
        streamed.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    streamed.push_str("0\r\n\r\n");
    let raw = raw_exchange(&server, true, &streamed).await;
    assert!(
        raw.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{raw}"
    );
    assert_eq!(
        server.ledger.count("dev").unwrap(),
        1,
        "nothing else was issued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_both_accepted() {
    let server = TestServer::start(|t| t).await;
    for (i, v) in [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .enumerate()
    {
        let config = server.client_config(Some(server.gateway_identity()), &[v]);
        let mut c = Client::connect(server.addr, config).await.unwrap();
        let (der, _) = csr(&subject(
            Some(&format!("tls-{i}")),
            Some("FFF1"),
            Some("8000"),
        ));
        check_enrolled(&server, &c.enroll(ENROLL, &der).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_from_an_untrusted_ca_is_refused() {
    let server = TestServer::start(|t| t).await;
    let other = tempfile::tempdir().unwrap();
    dev::init(other.path(), false).unwrap();
    let identity = identity_from_files(
        &other.path().join(dev::files::GATEWAY_CERT),
        &other.path().join(dev::files::GATEWAY_KEY),
    );
    let config = server.client_config(Some(identity), ALL);
    let (der, _) = csr(&subject(Some("rogue"), Some("FFF1"), Some("8000")));
    let refused = match Client::connect(server.addr, config).await {
        Err(_) => true, // the handshake fails: unknown CA
        Ok(mut c) => match c
            .request(
                "POST",
                ENROLL,
                &[("Content-Type", "application/pkcs10")],
                b64(&der).into_bytes(),
            )
            .await
        {
            Err(_) => true,
            Ok(r) => r.status == 403 || r.status == 401,
        },
    };
    assert!(refused);
    assert_eq!(server.ledger.count("dev").unwrap(), 0);
}

async fn post(c: &mut Client, auth: String, der: Vec<u8>) -> common::est::Reply {
    let body = b64(&der).into_bytes();
    c.request(
        "POST",
        ENROLL,
        &[
            ("Content-Type", "application/pkcs10"),
            ("Authorization", &auth),
        ],
        body,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_tokens_over_http_basic() {
    let server = TestServer::start(|t| t).await;
    let (id, secret) =
        matter_est::policy::create_token(server.ledger.as_ref(), "dev", None).unwrap();
    let auth = format!("Basic {}", b64(format!("{id}:{secret}").as_bytes()));
    let mut c = server.anonymous().await;
    let (der, _) = csr(&subject(Some("tok-1"), Some("FFF1"), Some("8000")));
    check_enrolled(&server, &post(&mut c, auth.clone(), der).await);
    // Spent.
    let (der, _) = csr(&subject(Some("tok-2"), Some("FFF1"), Some("8000")));
    let r = post(&mut c, auth.clone(), der).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("already used"), "{}", r.text());
    // Wrong secret.
    let bad = format!("Basic {}", b64(format!("{id}:nope").as_bytes()));
    let (der, _) = csr(&subject(Some("tok-3"), Some("FFF1"), Some("8000")));
    assert_eq!(post(&mut c, bad, der).await.status, 401);
    // Bound to PID 8001: a CSR for 8000 is refused and the token stays unspent.
    let pid = matter_est::matter::Pid::parse("8001").unwrap();
    let (id, secret) =
        matter_est::policy::create_token(server.ledger.as_ref(), "dev", Some(pid)).unwrap();
    let auth = format!("Basic {}", b64(format!("{id}:{secret}").as_bytes()));
    let (der, _) = csr(&subject(Some("tok-4"), Some("FFF1"), Some("8000")));
    let r = post(&mut c, auth.clone(), der).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let (der, _) = csr(&subject(Some("tok-4"), Some("FFF1"), Some("8001")));
    check_enrolled(&server, &post(&mut c, auth, der).await);
    assert_eq!(server.ledger.count("dev").unwrap(), 2);
}

/// Enrolls a device through the gateway; returns its DAC and key as a TLS identity.
async fn enroll_device(server: &TestServer, cn: &str) -> (Vec<u8>, Vec<u8>) {
    let (pkcs8, _) = matter_est::signer::generate_p256().unwrap();
    let key = matter_est::signer::KeySigner::from_pkcs8(&pkcs8).unwrap();
    let der = matter_est::csr::build(&subject(Some(cn), Some("FFF1"), Some("8000")), &key).unwrap();
    let r = server.gateway().await.enroll(ENROLL, &der).await;
    (check_enrolled(server, &r), pkcs8)
}

async fn as_device(server: &TestServer, dac: &[u8], pkcs8: &[u8]) -> Client {
    let identity = (
        vec![CertificateDer::from(dac.to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec())),
    );
    Client::connect(server.addr, server.client_config(Some(identity), ALL))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplereenroll_renews_the_presented_dac() {
    let server = TestServer::start(|t| t).await;
    let reenroll = "/.well-known/est/dev/simplereenroll";
    let (dac, key) = enroll_device(&server, "renew-me").await;
    let mut device = as_device(&server, &dac, &key).await;
    // Re-key with the same subject: a new DAC, linked to the old one.
    let (der, _) = csr(&subject(Some("renew-me"), Some("FFF1"), Some("8000")));
    let r = device.enroll(reenroll, &der).await;
    let renewed = check_enrolled(&server, &r);
    assert_ne!(renewed, dac);
    let old_serial = x509_cert::Certificate::from_der(&dac)
        .unwrap()
        .tbs_certificate()
        .serial_number()
        .as_bytes()
        .to_vec();
    let new_serial = x509_cert::Certificate::from_der(&renewed)
        .unwrap()
        .tbs_certificate()
        .serial_number()
        .as_bytes()
        .to_vec();
    assert_eq!(
        server
            .ledger
            .by_serial(&new_serial)
            .unwrap()
            .unwrap()
            .renews,
        Some(old_serial.clone())
    );
    // The old DAC cannot renew a second time: the renewed one holds the subject now.
    let (der, _) = csr(&subject(Some("renew-me"), Some("FFF1"), Some("8000")));
    let r = device.enroll(reenroll, &der).await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("already renewed by serial"),
        "{}",
        r.text()
    );
    // Another subject: refused.
    let (dac3, key3) = enroll_device(&server, "keeps-its-name").await;
    let (der, _) = csr(&subject(Some("someone-else"), Some("FFF1"), Some("8000")));
    let r = as_device(&server, &dac3, &key3)
        .await
        .enroll(reenroll, &der)
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("must equal the renewed DAC's subject"),
        "{}",
        r.text()
    );
    // Without a client certificate: 401.
    let r = server.anonymous().await.enroll(reenroll, &der).await;
    assert_eq!(r.status, 401);
    // A gateway certificate is not a DAC of the PAI.
    let r = server.gateway().await.enroll(reenroll, &der).await;
    assert_eq!(r.status, 403);
    // Revoked: refused.
    let (dac2, key2) = enroll_device(&server, "revoked").await;
    let serial2 = x509_cert::Certificate::from_der(&dac2)
        .unwrap()
        .tbs_certificate()
        .serial_number()
        .as_bytes()
        .to_vec();
    server
        .ledger
        .revoke(
            &serial2,
            matter_est::revocation::RevocationReason::KeyCompromise,
            0,
            "test",
        )
        .unwrap();
    let (der, _) = csr(&subject(Some("revoked"), Some("FFF1"), Some("8000")));
    let r = as_device(&server, &dac2, &key2)
        .await
        .enroll(reenroll, &der)
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("revoked"), "{}", r.text());
    // Unknown: a DAC signed by the PAI but not in our ledger.
    let label =
        matter_est::issuance::load_label(server.env.config().label("dev").unwrap()).unwrap();
    let (pkcs8, point) = matter_est::signer::generate_p256().unwrap();
    let serial = matter_est::profile::random_serial().unwrap();
    let subj = label
        .profile
        .subject(
            &label.pai,
            &matter_est::matter::read_subject(&"CN=ghost".parse().unwrap())
                .map(|mut ids| {
                    ids.pid = matter_est::matter::Pid::new(0x8000);
                    ids
                })
                .unwrap(),
            &point,
        )
        .unwrap();
    let ghost = label
        .profile
        .build(
            &label.pai,
            &subj,
            &serial,
            &point,
            label.signer.as_ref(),
            matter_est::asn1::now(),
        )
        .unwrap();
    let (der, _) = csr(&subject(Some("ghost"), Some("FFF1"), Some("8000")));
    let r = as_device(&server, &ghost.der, &pkcs8)
        .await
        .enroll(reenroll, &der)
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("not in this server's ledger"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_uniqueness_hold_under_50_concurrent_requests() {
    let server = Arc::new(TestServer::start(|t| common::label_keys(t, "quota = 10")).await);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let (der, _) = csr(&subject(
                Some(&format!("q-{i}")),
                Some("FFF1"),
                Some("8000"),
            ));
            server.gateway().await.enroll(ENROLL, &der).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            403 => assert!(r.text().contains("quota of 10"), "{}", r.text()),
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(server.ledger.count("dev").unwrap(), 10);

    // The same subject from 20 concurrent requests: exactly one DAC.
    let server = Arc::new(TestServer::start(|t| t).await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let (der, _) = csr(&subject(Some("twin"), Some("FFF1"), Some("8000")));
            server.gateway().await.enroll(ENROLL, &der).await.status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(server.ledger.count("dev").unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_still_served() {
    let server = TestServer::start(|t| {
        common::server_keys(t, "handshake_timeout_secs = 1\nheader_timeout_secs = 1")
    })
    .await;
    // A TCP client that never starts TLS.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A TLS client that never sends a request.
    let config = server.client_config(None, ALL);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut idle = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    // Meanwhile others are served.
    let (der, _) = csr(&subject(Some("served"), Some("FFF1"), Some("8000")));
    check_enrolled(&server, &server.gateway().await.enroll(ENROLL, &der).await);
    let mut buf = [0u8; 64];
    let cut = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
        "handshake timeout closes the connection"
    );
    let cut = tokio::time::timeout(std::time::Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(Ok(0)) | Ok(Err(_)) | Ok(Ok(_))),
        "header timeout ends the connection"
    );
    let again = tokio::time::timeout(std::time::Duration::from_secs(1), idle.read(&mut buf)).await;
    assert!(
        matches!(again, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_stops_accepting() {
    let mut server = TestServer::start(|t| t).await;
    let mut c = server.anonymous().await;
    assert_eq!(c.get("/.well-known/est/cacerts").await.status, 200);
    server.stop().await;
    assert!(
        Client::connect(server.addr, server.client_config(None, ALL))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dac_only_label_returns_the_dac_alone() {
    // RFC 7030 §4.2.3's strict form, per label.
    let server = TestServer::start(|t| common::label_keys(t, "dac_only = true")).await;
    let (der, _) = csr(&subject(Some("strict"), Some("FFF1"), Some("8000")));
    let r = server.gateway().await.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let certs = pkcs7_certs(&r.body);
    assert_eq!(certs.len(), 1);
    assert_matter_dac(&certs[0], &server.env.pai_der());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenroll_with_the_sdk_placeholder_subject_keeps_the_old_subject() {
    let server =
        TestServer::start(|t| common::label_keys(t, "reenroll_placeholder_subject = true")).await;
    let (dac, key) = enroll_device(&server, "sdk-device").await;
    let ou_csa = dev::name(&[(&[0x55, 0x04, 0x0b], "CSA")]);
    let (der, _) = csr(&ou_csa);
    let r = as_device(&server, &dac, &key)
        .await
        .enroll("/.well-known/est/dev/simplereenroll", &der)
        .await;
    let renewed = check_enrolled(&server, &r);
    let subject = |d: &[u8]| {
        use der::Encode;
        x509_cert::Certificate::from_der(d)
            .unwrap()
            .tbs_certificate()
            .subject()
            .to_der()
            .unwrap()
    };
    assert_eq!(subject(&renewed), subject(&dac));
}

/// A renewal issues a DAC, so it counts against the label's quota (config/example.toml).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_counts_against_the_quota() {
    let server = TestServer::start(|t| common::label_keys(t, "quota = 2")).await;
    let (dac, key) = enroll_device(&server, "quota-renew").await;
    let (der, _) = csr(&subject(Some("quota-renew"), Some("FFF1"), Some("8000")));
    let r = as_device(&server, &dac, &key)
        .await
        .enroll("/.well-known/est/dev/simplereenroll", &der)
        .await;
    check_enrolled(&server, &r);
    assert_eq!(server.ledger.count("dev").unwrap(), 2);
    let (der, _) = csr(&subject(Some("one-too-many"), Some("FFF1"), Some("8000")));
    let r = server.gateway().await.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("quota of 2"), "{}", r.text());
    assert_eq!(server.ledger.count("dev").unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let server = TestServer::start(|t| common::server_keys(t, "max_connections = 2")).await;
    let mut first = server.anonymous().await;
    let mut second = server.anonymous().await;
    assert_eq!(first.get("/.well-known/est/cacerts").await.status, 200);
    assert_eq!(second.get("/.well-known/est/cacerts").await.status, 200);
    // A third connection is not served while two are open...
    let config = server.client_config(None, ALL);
    let third = tokio::time::timeout(
        std::time::Duration::from_millis(800),
        Client::connect(server.addr, config.clone()),
    )
    .await;
    assert!(
        third.is_err(),
        "a third connection was accepted over max_connections = 2"
    );
    // ...and is once one closes.
    drop(first);
    let mut third = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        Client::connect(server.addr, config),
    )
    .await
    .expect("served after a slot freed")
    .unwrap();
    assert_eq!(third.get("/.well-known/est/cacerts").await.status, 200);
    assert_eq!(second.get("/.well-known/est/cacerts").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_after_the_request_deadline() {
    let server = TestServer::start(|t| common::server_keys(t, "request_timeout_secs = 1")).await;
    let config = server.client_config(Some(server.gateway_identity()), ALL);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    // Headers promise 500 bytes; 10 arrive, then nothing.
    let head = format!(
        "POST {ENROLL} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\nContent-Length: 500\r\n\r\nMIIBxxxxxx"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("answered within the deadline")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    // Others are still served.
    let (der, _) = csr(&subject(Some("after-408"), Some("FFF1"), Some("8000")));
    check_enrolled(&server, &server.gateway().await.enroll(ENROLL, &der).await);
}

/// Every test above again, the PAI key in a SoftHSM2 token and signed through the PKCS#11 signer
/// (STYLE.md "a small signer seam": the same tests over both signers).
#[test]
fn the_same_tests_over_the_pkcs11_signer() {
    common::hsm::rerun_over_pkcs11("the_same_tests_over_the_pkcs11_signer", &[]);
}
