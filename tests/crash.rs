//! Issue 17: the crash harness. `matter-est serve` (a real process, on the embedded ledger, and
//! again on a PostgreSQL ledger in the child of `on_postgres`) is killed with SIGKILL at random moments while gateways and token-holding devices enroll, and
//! restarted on the same ledger, again and again. Afterwards: every DAC any client received is on
//! record, no serial appears twice, the quota was not overrun, no token was spent twice, and
//! every client that retried (the same CSR, as after a lost response) got its DAC, the same one
//! if it had received it before.
//!
//! `cargo test --test crash` runs 20 kills; `CRASH_KILLS=200 cargo test --release --test crash --
//! --nocapture` a long run. Bounded in count and time, loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::est::{ALL, Client, client_config, identity_from_files, issued, pkcs7_certs};
use common::{DevEnv, csr, subject};
use matter_est::profile::dev;

/// Devices in the run: half enrolled by gateways, half with a one-time token each.
const DEVICES: usize = 600;
/// Concurrent client connections.
const CLIENTS: usize = 16;
/// The whole harness gives up after this (it normally takes well under a minute).
const DEADLINE: Duration = Duration::from_secs(600);

/// One enrollment to send: the device's index, its CSR and its token, if it has one.
type Job = (usize, Vec<u8>, Option<(String, String)>);

struct Device {
    cn: String,
    csr: Vec<u8>,
    token: Option<(String, String)>,
    /// The DAC it received, if any (DER).
    dac: Option<Vec<u8>>,
}

fn start(env: &DevEnv) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_matter-est"))
        .args(["serve", "--log-json", "--config"])
        .arg(env.path(dev::files::CONFIG))
        .env("RUST_LOG", "warn,matter_est=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["fields"]["message"] == "matter-est serving")
        .and_then(|v| v["fields"]["addr"].as_str().map(str::to_string))
        .expect("the server started")
        .parse()
        .unwrap();
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (child, addr)
}

/// One client's work: enroll its devices in turn until the server goes away.
async fn enroll_some(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    anon: Arc<rustls::ClientConfig>,
    jobs: Vec<Job>,
) -> Vec<(usize, Vec<u8>)> {
    let mut got = Vec::new();
    let (Ok(mut gw), Ok(mut plain)) = (
        Client::connect(addr, tls).await,
        Client::connect(addr, anon).await,
    ) else {
        return got;
    };
    for (i, der, token) in jobs {
        let body = base64::engine::general_purpose::STANDARD
            .encode(&der)
            .into_bytes();
        let reply = match &token {
            None => {
                gw.request(
                    "POST",
                    "/.well-known/est/dev/simpleenroll",
                    &[("Content-Type", "application/pkcs10")],
                    body,
                )
                .await
            }
            Some((id, secret)) => {
                let auth = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
                );
                plain
                    .request(
                        "POST",
                        "/.well-known/est/dev/simpleenroll",
                        &[
                            ("Content-Type", "application/pkcs10"),
                            ("Authorization", &auth),
                        ],
                        body,
                    )
                    .await
            }
        };
        match reply {
            Ok(r) if r.status == 200 => got.push((i, r.body)),
            Ok(r) => panic!("device {i}: {} {}", r.status, r.text()),
            // The server was killed: the rest waits for the next round.
            Err(_) => break,
        }
    }
    got
}

/// The same harness with the ledger on a real PostgreSQL server (tests/common/pg.rs): the server
/// process dies with transactions open; the database must keep only what was committed.
#[test]
fn on_postgres() {
    common::pg::rerun_on_postgres("on_postgres", &[]);
}

#[test]
fn killed_at_random_the_server_loses_and_duplicates_nothing() {
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let env = DevEnv::new(|t| {
        common::label_keys(
            t.replace("127.0.0.1:8443", "127.0.0.1:0"),
            &format!("quota = {DEVICES}"),
        )
    });
    // Half the devices get a one-time token each (minted before the server holds the ledger).
    let mut devices: Vec<Device> = {
        let (_issuer, ledger) = env.issuer();
        (0..DEVICES)
            .map(|i| {
                let cn = format!("crash-{i:04}");
                let (der, _) = csr(&subject(Some(&cn), Some("FFF1"), Some("8000")));
                let token = (i % 2 == 1).then(|| {
                    matter_est::policy::create_token(ledger.as_ref(), "dev", None).unwrap()
                });
                Device {
                    cn,
                    csr: der,
                    token,
                    dac: None,
                }
            })
            .collect()
    };
    let pai = env.pai_der();
    let tls_ca = env.path(dev::files::TLS_CA_CERT);
    let gateway = client_config(
        &tls_ca,
        Some(identity_from_files(
            &env.path(dev::files::GATEWAY_CERT),
            &env.path(dev::files::GATEWAY_KEY),
        )),
        ALL,
    );
    let anon = client_config(&tls_ca, None, ALL);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let mut rng = ring::rand::SystemRandom::new();
    let mut received = 0usize;
    let mut repeats_checked = 0usize;
    let mut round = 0usize;
    // Rounds: every device (done or not) is sent again in each round, so that retries of
    // devices whose DAC was received are checked too; all but the last end with SIGKILL.
    loop {
        assert!(started.elapsed() < DEADLINE, "the harness took too long");
        let last = round == kills;
        let (mut child, addr) = start(&env);
        let order: Vec<usize> = {
            // Devices not done first, then a sample of done ones (their retries).
            let mut pending: Vec<usize> =
                (0..DEVICES).filter(|&i| devices[i].dac.is_none()).collect();
            pending.extend((0..DEVICES).filter(|&i| devices[i].dac.is_some()).take(40));
            pending
        };
        let mut per_client: Vec<Vec<Job>> = vec![Vec::new(); CLIENTS];
        for (n, &i) in order.iter().enumerate() {
            per_client[n % CLIENTS].push((i, devices[i].csr.clone(), devices[i].token.clone()));
        }
        let killer = (!last).then(|| {
            let pid = child.id();
            let delay = 100 + u64::from(random_byte(&mut rng)) * 2; // 100-610 ms
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .unwrap();
            })
        });
        let results: Vec<Vec<(usize, Vec<u8>)>> = runtime.block_on(async {
            let tasks: Vec<_> = per_client
                .into_iter()
                .map(|jobs| tokio::spawn(enroll_some(addr, gateway.clone(), anon.clone(), jobs)))
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.unwrap());
            }
            all
        });
        if let Some(k) = killer {
            k.join().unwrap();
        } else {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
        }
        child.wait().unwrap();
        for (i, body) in results.into_iter().flatten() {
            let dac = issued(&pkcs7_certs(&body), &pai);
            match &devices[i].dac {
                // A retry of a device that had its DAC: the same DAC.
                Some(before) => {
                    assert_eq!(*before, dac, "{}: a retry got another DAC", devices[i].cn);
                    repeats_checked += 1;
                }
                None => {
                    devices[i].dac = Some(dac);
                    received += 1;
                }
            }
        }
        if last {
            break;
        }
        round += 1;
    }

    // Every device got its DAC in the end, and everything received is on record, once.
    let (_issuer, ledger) = env.issuer();
    let on_record = ledger.list(0, DEVICES * 2).unwrap();
    let serials: BTreeSet<_> = on_record.iter().map(|r| r.serial.clone()).collect();
    assert_eq!(serials.len(), on_record.len(), "no serial twice");
    assert_eq!(
        on_record.len(),
        DEVICES,
        "one DAC per device, quota not overrun"
    );
    assert_eq!(ledger.count("dev").unwrap(), DEVICES as u64);
    let by_der: BTreeMap<_, _> = on_record.iter().map(|r| (r.der.clone(), r)).collect();
    for d in &devices {
        let dac = d
            .dac
            .as_ref()
            .unwrap_or_else(|| panic!("{} never got its DAC", d.cn));
        let record = by_der
            .get(dac)
            .unwrap_or_else(|| panic!("{}: the DAC it received is not on record", d.cn));
        assert!(record.subject.contains(&d.cn));
        if let Some((id, secret)) = &d.token {
            let hash: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
                <sha2::Sha256 as sha2::Digest>::new(),
                secret.as_bytes(),
            ))
            .into();
            let token = ledger.token(&hash).unwrap().unwrap();
            assert_eq!(&token.id, id);
            assert_eq!(
                token.spent_by.as_ref(),
                Some(&record.serial),
                "spent once, by it"
            );
        }
    }
    println!(
        "crash harness: {kills} SIGKILLs, {DEVICES} devices ({} with tokens), {received} DACs \
         received, {repeats_checked} retries of received DACs answered with the same DAC, \
         {:.1} s",
        DEVICES / 2,
        started.elapsed().as_secs_f64()
    );
}

fn random_byte(rng: &mut ring::rand::SystemRandom) -> u8 {
    let mut b = [0u8; 1];
    ring::rand::SecureRandom::fill(rng, &mut b).unwrap();
    b[0]
}
