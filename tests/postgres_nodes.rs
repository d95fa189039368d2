//! Several `matter-est serve` processes on one PostgreSQL ledger (issue 16): the ledger's rules
//! hold across nodes under concurrent load, and the database going down mid-load loses or
//! doubles nothing (503 with Retry-After meanwhile, then the same requests succeed).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use der::Decode;
use matter_est::profile::dev;

use common::est::{self, Client, Reply};
use common::pg::{self, PgServer};
use common::{DevEnv, csr, label_keys, subject};

/// One `serve` process; killed when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &std::path::Path) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,matter_est=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["fields"]["message"] == "matter-est serving")
        .and_then(|v| v["fields"]["addr"].as_str().map(str::to_string))
        .expect("the node started")
        .parse()
        .unwrap();
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Node { child, addr }
}

/// A development PKI whose ledger is database `db`, and two node configs on it (each its own
/// admin socket; everything else on free ports).
fn two_node_env(server: &PgServer, extra_label_keys: &str) -> (DevEnv, [std::path::PathBuf; 2]) {
    let db = server.create_database();
    let env = DevEnv::new_in(|dir, text| {
        let text = text.replace("127.0.0.1:8443", "127.0.0.1:0");
        pg::adopt_to(label_keys(text, extra_label_keys), dir, server.port, &db)
    });
    let one = env.path(dev::files::CONFIG);
    let text = std::fs::read_to_string(&one).unwrap();
    let two = env.path("node2.toml");
    std::fs::write(&two, text.replace("admin.sock", "admin2.sock")).unwrap();
    (env, [one, two])
}

fn tls(env: &DevEnv) -> (Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>) {
    let ca = env.path(dev::files::TLS_CA_CERT);
    let gw = est::identity_from_files(
        &env.path(dev::files::GATEWAY_CERT),
        &env.path(dev::files::GATEWAY_KEY),
    );
    (
        est::client_config(&ca, Some(gw), est::ALL),
        est::client_config(&ca, None, est::ALL),
    )
}

/// One enrollment on a new connection; `None` if the connection failed.
async fn enroll(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    der: Vec<u8>,
    token: Option<(String, String)>,
) -> Option<Reply> {
    let mut client = Client::connect(addr, tls).await.ok()?;
    let mut headers = vec![("Content-Type", "application/pkcs10".to_string())];
    if let Some((id, secret)) = token {
        headers.push((
            "Authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
            ),
        ));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    client
        .request(
            "POST",
            "/.well-known/est/dev/simpleenroll",
            &headers,
            base64::engine::general_purpose::STANDARD
                .encode(&der)
                .into_bytes(),
        )
        .await
        .ok()
}

fn serial_of(dac: &[u8]) -> Vec<u8> {
    x509_cert::Certificate::from_der(dac)
        .unwrap()
        .tbs_certificate()
        .serial_number()
        .as_bytes()
        .to_vec()
}

fn statuses(replies: &[Option<Reply>]) -> Vec<u16> {
    replies
        .iter()
        .map(|r| r.as_ref().map_or(0, |r| r.status))
        .collect()
}

/// Signatures made by the node whose admin socket is `socket` (the signer histogram's count).
fn signatures(socket: &std::path::Path) -> u64 {
    common::metrics_text(socket)
        .lines()
        .filter(|l| l.starts_with("matter_est_signer_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Issue 16: a gateway over mutual TLS (no rate limit, automatic approval) has no ledger read
/// before signing; the commit finds a repeat itself. A client that lost its response and asks
/// again on a full quota gets the DAC on record (a new DAC is signed, found to repeat, and
/// neither recorded nor counted), while a new subject is refused by the quota at the commit.
#[test]
fn a_lost_response_retry_on_a_full_quota_gets_its_dac_from_the_commit() {
    let server = PgServer::start();
    let (env, configs) = two_node_env(&server, "quota = 2");
    let node = start(&configs[0]);
    let (gw, _) = tls(&env);
    let pai = env.pai_der();
    let socket = env.path("admin.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (first, _) = csr(&subject(Some("lost-1"), Some("FFF1"), Some("8000")));
    let (second, _) = csr(&subject(Some("lost-2"), Some("FFF1"), Some("8000")));
    let (third, _) = csr(&subject(Some("lost-3"), Some("FFF1"), Some("8000")));
    let dac = |r: &Reply| est::issued(&est::pkcs7_certs(&r.body), &pai);
    rt.block_on(async {
        let a = enroll(node.addr, gw.clone(), first.clone(), None)
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        let b = enroll(node.addr, gw.clone(), second, None).await.unwrap();
        assert_eq!(b.status, 200, "{}", b.text());
        let signed = signatures(&socket);
        assert!(signed >= 2, "{signed}");

        // The quota is full. The first CSR again: its DAC on record, found by the commit (a
        // signature was made for it: no pre-read answered it).
        let again = enroll(node.addr, gw.clone(), first, None).await.unwrap();
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(dac(&again), dac(&a));
        assert_eq!(signatures(&socket), signed + 1);

        // A new subject on the full quota: refused by the commit's quota rule.
        let c = enroll(node.addr, gw.clone(), third, None).await.unwrap();
        assert_eq!(c.status, 403, "{}", c.text());
        assert!(c.text().contains("quota of 2"), "{}", c.text());
    });
    drop(node);
    let ledger = matter_est::store::open(&env.config()).unwrap();
    assert_eq!(ledger.count("dev").unwrap(), 2);
    let page = ledger
        .list_page(&matter_est::store::CertQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.records.len(), 2, "nothing else recorded");
    ledger.close();
}

#[test]
fn two_nodes_enforce_quota_subject_and_token_together() {
    let server = PgServer::start();
    let (env, configs) = two_node_env(&server, "quota = 15");
    let nodes = [start(&configs[0]), start(&configs[1])];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let (gw, anon) = tls(&env);
    let pai = env.pai_der();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // 5 of the 15 used, then 200 concurrent enrollments split across the nodes for the last 10.
    rt.block_on(async {
        for i in 0..5 {
            let (der, _) = csr(&subject(
                Some(&format!("pre-{i}")),
                Some("FFF1"),
                Some("8000"),
            ));
            let r = enroll(addrs[i % 2], gw.clone(), der, None).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    });
    let replies: Vec<Option<Reply>> = rt.block_on(async {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (der, _) = csr(&subject(
                    Some(&format!("last-{i}")),
                    Some("FFF1"),
                    Some("8000"),
                ));
                tokio::spawn(enroll(addrs[i % 2], gw.clone(), der, None))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let codes = statuses(&replies);
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 10, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == 403).count(),
        190,
        "{codes:?}"
    );
    for r in replies.iter().flatten().filter(|r| r.status == 403) {
        assert!(r.text().contains("quota of 15"), "{}", r.text());
    }
    let config = env.config();
    let ledger = matter_est::store::open(&config).unwrap();
    assert_eq!(ledger.count("dev").unwrap(), 15);
    for r in replies.iter().flatten().filter(|r| r.status == 200) {
        let dac = est::issued(&est::pkcs7_certs(&r.body), &pai);
        let on_record = ledger.by_serial(&serial_of(&dac)).unwrap().unwrap();
        assert_eq!(on_record.der, dac);
    }
    ledger.close();
    drop(ledger);

    // Quota raised (a second database and the same PKI would do too): one subject, 50 keys at
    // once on both nodes: one DAC.
    drop(nodes);
    let (env, configs) = two_node_env(&server, "");
    let nodes = [start(&configs[0]), start(&configs[1])];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let (gw, anon2) = tls(&env);
    let _ = anon;
    let replies: Vec<Option<Reply>> = rt.block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (der, _) = csr(&subject(Some("the-one"), Some("FFF1"), Some("8000")));
                tokio::spawn(enroll(addrs[i % 2], gw.clone(), der, None))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let codes = statuses(&replies);
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 403).count(), 49, "{codes:?}");

    // One token presented on both nodes at once, five times over: one DAC each.
    let config = env.config();
    let ledger = matter_est::store::open(&config).unwrap();
    let tokens: Vec<(String, String)> = (0..5)
        .map(|_| matter_est::policy::create_token(ledger.as_ref(), "dev", None).unwrap())
        .collect();
    let replies: Vec<Option<Reply>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (t, token) in tokens.iter().enumerate() {
            for (node, addr) in addrs.iter().enumerate() {
                let (der, _) = csr(&subject(
                    Some(&format!("tok-{t}-{node}")),
                    Some("FFF1"),
                    Some("8000"),
                ));
                tasks.push(tokio::spawn(enroll(
                    *addr,
                    anon2.clone(),
                    der,
                    Some(token.clone()),
                )));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let codes = statuses(&replies);
    for pair in codes.chunks(2) {
        let mut pair = pair.to_vec();
        pair.sort();
        assert_eq!(pair, [200, 401], "{codes:?}");
    }
    let spent: Vec<_> = ledger
        .tokens()
        .unwrap()
        .into_iter()
        .filter(|t| t.spent_by.is_some())
        .collect();
    assert_eq!(spent.len(), 5);
    // 1 + 5 DACs, and one audit chain for both nodes that verifies.
    assert_eq!(ledger.count("dev").unwrap(), 6);
    let (records, _) = ledger.audit_verify(None).unwrap().expect("intact");
    assert!(records >= 6 + 5 + 5, "{records}");

    // Operator commands on PostgreSQL run beside both servers, on the database directly.
    let out = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["audit", "verify", "--config"])
        .arg(&configs[1])
        .output()
        .unwrap();
    common::assert_success(&out);
    let out = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["certs", "list", "--format", "json", "--config"])
        .arg(&configs[0])
        .output()
        .unwrap();
    common::assert_success(&out);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["records"].as_array().map(Vec::len),
        Some(6),
        "{listed}"
    );

    // The admin API answers the same on either node: a DAC revoked through node 2's socket is
    // revoked on node 1's; a backup is refused on PostgreSQL with the reason.
    let api = |node: usize, method: &str, path: &str, body: &str| {
        let socket = env.path(if node == 0 {
            "admin.sock"
        } else {
            "admin2.sock"
        });
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&socket)
            .args(["-X", method, "-H", "Content-Type: application/json"])
            .args(if body.is_empty() {
                vec![]
            } else {
                vec!["--data", body]
            })
            .arg(format!("http://localhost{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (json, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse::<u16>().unwrap(),
            serde_json::from_str::<serde_json::Value>(json).unwrap_or_default(),
        )
    };
    let serial = listed["records"][0]["serial"].as_str().unwrap().to_string();
    let (code, v) = api(
        1,
        "POST",
        &format!("/v1/certs/{serial}/revoke"),
        r#"{"reason":"keyCompromise"}"#,
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = api(0, "GET", &format!("/v1/certs/{serial}"), "");
    assert_eq!(code, 200, "{v}");
    assert!(v.to_string().contains("keyCompromise"), "{v}");
    let (code, v) = api(0, "GET", "/v1/certs/stats", "");
    assert_eq!(code, 200, "{v}");
    let (code, v) = api(1, "GET", "/v1/audit/verify", "");
    assert_eq!(code, 200, "{v}");
    let (code, v) = api(
        0,
        "POST",
        "/v1/ledger/backup",
        r#"{"out":"/tmp/never.redb"}"#,
    );
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("pg_dump"), "{v}");
    drop(nodes);
}

#[test]
fn the_database_down_mid_load_loses_and_doubles_nothing() {
    let server = PgServer::start();
    let (env, configs) = two_node_env(&server, "");
    let nodes = [start(&configs[0]), start(&configs[1])];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let (gw, _) = tls(&env);
    let pai = env.pai_der();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // 8 clients, each enrolling its devices in turn on one node; a device refused with 503 is
    // tried again (same CSR) until it gets its DAC.
    let stop_after = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let gw = gw.clone();
            let addr = addrs[c % 2];
            let done = stop_after.clone();
            rt.spawn(async move {
                let mut got = Vec::new();
                let mut unavailable = 0;
                for d in 0..25 {
                    let (der, _) = csr(&subject(
                        Some(&format!("c{c}-d{d}")),
                        Some("FFF1"),
                        Some("8000"),
                    ));
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
                    loop {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "c{c}-d{d} never enrolled"
                        );
                        match enroll(addr, gw.clone(), der.clone(), None).await {
                            Some(r) if r.status == 200 => {
                                got.push(r.body);
                                break;
                            }
                            Some(r) if r.status == 503 => {
                                assert!(r.header("retry-after").is_some(), "{r:?}");
                                unavailable += 1;
                                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            }
                            Some(r) => panic!("c{c}-d{d}: {} {}", r.status, r.text()),
                            None => panic!("c{c}-d{d}: the node went away"),
                        }
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                (got, unavailable)
            })
        })
        .collect();
    // Down once a quarter of the devices are in, for three seconds.
    while stop_after.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.stop_now();
    std::thread::sleep(std::time::Duration::from_secs(3));
    server.start_again();
    let mut dacs = Vec::new();
    let mut refused = 0;
    for c in clients {
        let (got, unavailable) = rt.block_on(c).unwrap();
        dacs.extend(got);
        refused += unavailable;
    }
    assert_eq!(dacs.len(), 200);
    assert!(refused > 0, "the outage was seen by no client");
    // Every DAC a client received is on record, no serial twice, nothing on record that no
    // client received.
    let config = env.config();
    let ledger = matter_est::store::open(&config).unwrap();
    let mut serials = HashSet::new();
    for body in &dacs {
        let dac = est::issued(&est::pkcs7_certs(body), &pai);
        let serial = serial_of(&dac);
        assert!(serials.insert(serial.clone()), "serial twice");
        assert_eq!(ledger.by_serial(&serial).unwrap().unwrap().der, dac);
    }
    assert_eq!(ledger.count("dev").unwrap(), 200);
    assert_eq!(ledger.list(0, 1000).unwrap().len(), 200);
    assert!(ledger.audit_verify(None).unwrap().is_ok());
    drop(nodes);
}
