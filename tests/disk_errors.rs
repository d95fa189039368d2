//! Issue 17 item 6: disk full and disk errors. A real `matter-est serve` process with its ledger
//! on a small file system that fills up (a tmpfs, and ext4 in an image on a loop device), and
//! with injected EIO (the danger switch
//! `MATTER_EST_DANGER_INJECT_LEDGER_EIO_WHILE`: this machine has no device-mapper `error`
//! target). While the ledger cannot write, every enrollment gets 503 with `Retry-After` and
//! nothing is issued; once the disk is back, the same process issues again, a client retrying
//! its CSR gets a DAC, and `certs list` / `audit verify` (through the running server's socket)
//! show every DAC a client received, once, and an unbroken audit chain.
//!
//! Mounting needs root (CI runs `scripts/test` as root). Where mounting is impossible the test
//! fails and says so; it never passes without having filled a disk.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::est::{ALL, Client, client_config, identity_from_files, issued, pkcs7_certs};
use common::{DevEnv, csr, subject};
use matter_est::profile::dev;
use serve::{Server, cli, serial_of, serials_on_record};

/// Enrollments sent at most while waiting for the full disk to refuse one. The tmpfs is small
/// (the ledger file starts near 1 MiB and grows a few KiB per DAC), so a few hundred suffice;
/// the bound keeps a broken test from running on.
const MAX_FILL_ENROLLMENTS: usize = 3_000;
/// How long the test waits for the server to recover once the disk is back: the ledger's
/// longest reopen backoff (5 s) and margin.
const RECOVERY: Duration = Duration::from_secs(30);
/// The danger switch (`store::redb::DANGER_FAULT_ENV`).
const FAULT_ENV: &str = "MATTER_EST_DANGER_INJECT_LEDGER_EIO_WHILE";

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` (`mount -t tmpfs -o size=…`).
    fn tmpfs(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        mount(
            at,
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at),
        )
    }

    /// An ext4 file system of `mib` MiB in an image file, mounted through a loop device (the
    /// journal and delayed allocation of a real disk's file system).
    fn ext4(image: &Path, at: &Path, mib: u64) -> Self {
        std::fs::create_dir_all(at).unwrap();
        std::fs::File::create(image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mkfs.ext4: {e}; install e2fsprogs"));
        assert!(
            out.status.success(),
            "mkfs.ext4: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        mount(
            at,
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(image)
                .arg(at),
        )
    }
}

/// Runs `cmd` (a mount) and fails the test, saying why, when it cannot.
fn mount(at: &Path, cmd: &mut Command) -> Mount {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run mount: {e}; this test needs mount(8) and root"));
    assert!(
        out.status.success(),
        "cannot mount a file system at {} ({}): this test fills a real small file system and \
         needs root (CAP_SYS_ADMIN, loop devices), as scripts/test has in CI; it does not pass \
         without it",
        at.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Mount(at.to_path_buf())
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: a server that is still stopping may hold the socket.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The configuration with the ledger at `ledger`.
fn env_with_ledger(ledger: &Path) -> DevEnv {
    DevEnv::new(|t| {
        t.replace("127.0.0.1:8443", "127.0.0.1:0").replace(
            "ledger = \"ledger.redb\"",
            &format!("ledger = \"{}\"", ledger.display()),
        )
    })
}

fn gateway(env: &DevEnv) -> Arc<rustls::ClientConfig> {
    client_config(
        &env.path(dev::files::TLS_CA_CERT),
        Some(identity_from_files(
            &env.path(dev::files::GATEWAY_CERT),
            &env.path(dev::files::GATEWAY_KEY),
        )),
        ALL,
    )
}

const ENROLL: &str = "/.well-known/est/dev/simpleenroll";

fn device_csr(name: &str) -> Vec<u8> {
    csr(&subject(Some(name), Some("FFF1"), Some("8000"))).0
}

/// A 503 as item 6 wants it: with `Retry-After`, saying the ledger is unavailable.
fn assert_unavailable(reply: &common::est::Reply, what: &str) {
    assert_eq!(reply.status, 503, "{what}: {}", reply.text());
    let retry: u64 = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: 503 without Retry-After"))
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{what}: Retry-After {retry}");
    assert!(reply.text().contains("ledger"), "{what}: {}", reply.text());
}

/// Sends `csr` again until it is issued, for at most [`RECOVERY`]; the DAC and how long it took.
async fn retry_until_issued(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    csr: &[u8],
    pai: &[u8],
) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < RECOVERY,
            "the server did not issue again within {RECOVERY:?} after the disk came back"
        );
        // A fresh connection each time, as a client that was told to come back later.
        let mut c = Client::connect(addr, tls.clone()).await.unwrap();
        let r = c.enroll(ENROLL, csr).await;
        match r.status {
            200 => return (issued(&pkcs7_certs(&r.body), pai), start.elapsed()),
            503 => {
                assert_unavailable(&r, "while recovering");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            s => panic!("while recovering: {s} {}", r.text()),
        }
    }
}

/// `n` enrollments on one connection (devices `PREFIX-i`), every one issued: the DACs.
async fn enroll_ok(
    addr: std::net::SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    pai: &[u8],
    prefix: &str,
    n: usize,
) -> Vec<Vec<u8>> {
    let mut c = Client::connect(addr, tls.clone()).await.unwrap();
    let mut dacs = Vec::new();
    for i in 0..n {
        let r = c
            .enroll(ENROLL, &device_csr(&format!("{prefix}-{i}")))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        dacs.push(issued(&pkcs7_certs(&r.body), pai));
    }
    dacs
}

/// Once the fault has cleared: the refused device's retry is issued, then three new devices
/// are; their DACs join `received`. How long the retry took.
async fn recover(
    addr: std::net::SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    pai: &[u8],
    refused: &[u8],
    received: &mut Vec<Vec<u8>>,
) -> Duration {
    let (dac, recovered_in) = retry_until_issued(addr, tls.clone(), refused, pai).await;
    received.push(dac);
    received.extend(enroll_ok(addr, tls, pai, "after", 3).await);
    recovered_in
}

/// Exactly the DACs clients received are on record, each once, and the audit chain is whole:
/// how many.
fn exactly_received(env: &DevEnv, received: &[Vec<u8>]) -> usize {
    let on_record = ledger_checks(env);
    let got: BTreeSet<String> = received.iter().map(|d| serial_of(d)).collect();
    assert_eq!(got.len(), received.len());
    assert_eq!(
        on_record, got,
        "on record must be exactly what clients received"
    );
    on_record.len()
}

/// Every serial on record, checking none appears twice, and that `audit verify` passes.
fn ledger_checks(env: &DevEnv) -> BTreeSet<String> {
    let serials = serials_on_record(env);
    let unique: BTreeSet<String> = serials.iter().cloned().collect();
    assert_eq!(unique.len(), serials.len(), "a serial on record twice");
    let verify = cli(env, &["audit", "verify"]);
    common::assert_success(&verify);
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("audit chain OK"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    unique
}

#[test]
fn a_full_tmpfs_gets_503_and_the_server_recovers_when_space_is_freed() {
    let scratch = tempfile::tempdir().unwrap();
    let mount = Mount::tmpfs(&scratch.path().join("disk"), "4m");
    fill_and_recover("tmpfs", &mount);
}

#[test]
fn a_full_ext4_gets_503_and_the_server_recovers_when_space_is_freed() {
    let scratch = tempfile::tempdir().unwrap();
    let mount = Mount::ext4(
        &scratch.path().join("ext4.img"),
        &scratch.path().join("disk"),
        16,
    );
    fill_and_recover("ext4", &mount);
}

/// Enrolls on a ledger on `mount`, fills the file system, checks the refusals, frees the space
/// and checks the same process issues again with the ledger intact.
fn fill_and_recover(kind: &str, mount: &Mount) {
    let env = env_with_ledger(&mount.0.join("ledger.redb"));
    let server = Server::start(&env, &[]);
    let (addr, tls, pai) = (server.addr, gateway(&env), env.pai_der());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut received = rt.block_on(enroll_ok(addr, &tls, &pai, "before", 5));

    // Fill the file system, then enroll new devices until the ledger cannot grow.
    let mut filler = std::fs::File::create(mount.0.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 16 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    let _ = filler.sync_all();
    let free_after_fill = free_bytes(&mount.0);
    let (refused_csr, sent) = rt.block_on(async {
        let mut c = Client::connect(addr, tls.clone()).await.unwrap();
        for i in 0..MAX_FILL_ENROLLMENTS {
            let der = device_csr(&format!("full-{i:05}"));
            let r = c.enroll(ENROLL, &der).await;
            match r.status {
                200 => received.push(issued(&pkcs7_certs(&r.body), &pai)),
                503 => {
                    assert_unavailable(&r, "disk full");
                    return (der, i + 1);
                }
                s => panic!("enrollment {i} on a full disk: {s} {}", r.text()),
            }
        }
        panic!("{MAX_FILL_ENROLLMENTS} enrollments and the full disk never refused one");
    });
    let issued_while_filling = received.len() - 5;

    // While it stays full: 503 (or, when a reopened ledger finds room in pages its failed
    // commit left allocated, a DAC that is on record), never 500. A refused device is not
    // retried: the check against the ledger below shows nothing was issued for it.
    let mut refused_while_full = 1;
    rt.block_on(async {
        for i in 0..5 {
            let mut c = Client::connect(addr, tls.clone()).await.unwrap();
            let r = c
                .enroll(ENROLL, &device_csr(&format!("still-full-{i}")))
                .await;
            if r.status == 200 {
                received.push(issued(&pkcs7_certs(&r.body), &pai));
            } else {
                assert_unavailable(&r, "disk still full");
                refused_while_full += 1;
            }
        }
    });

    // Space back: the same process issues again; the refused device's retry gets its DAC.
    drop(filler);
    std::fs::remove_file(mount.0.join("filler")).unwrap();
    let recovered_in = rt.block_on(recover(addr, &tls, &pai, &refused_csr, &mut received));
    let on_record = exactly_received(&env, &received);
    println!(
        "disk full ({kind}): {free_after_fill} bytes free after filling, {issued_while_filling} DACs \
         issued before the first 503 (enrollment {sent}), {refused_while_full} of 6 refused \
         while full, recovered {recovered_in:?} after space \
         was freed; {} DACs on record",
        on_record
    );
    drop(server);
}

#[test]
fn injected_eio_gets_503_and_the_server_recovers_when_the_error_clears() {
    let scratch = tempfile::tempdir().unwrap();
    let env = env_with_ledger(&scratch.path().join("ledger.redb"));
    let trigger = scratch.path().join("eio");
    let server = Server::start(&env, &[(FAULT_ENV, &trigger)]);
    let (addr, tls, pai) = (server.addr, gateway(&env), env.pai_der());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut received = rt.block_on(enroll_ok(addr, &tls, &pai, "before", 5));

    // The disk starts failing: every write (and fsync) gets EIO.
    std::fs::write(&trigger, b"").unwrap();
    let refused = device_csr("eio-0");
    rt.block_on(async {
        let mut c = Client::connect(addr, tls.clone()).await.unwrap();
        let r = c.enroll(ENROLL, &refused).await;
        assert_unavailable(&r, "EIO");
        // Later requests while it lasts: 503 too (the ledger is being reopened), never 500.
        for i in 1..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut c = Client::connect(addr, tls.clone()).await.unwrap();
            let r = c.enroll(ENROLL, &device_csr(&format!("eio-{i}"))).await;
            assert_unavailable(&r, "EIO persists");
        }
    });
    // The operator's commands say so too, without hanging.
    let out = cli(&env, &["certs", "list", "--format", "json"]);
    assert!(
        !out.status.success(),
        "certs list while the ledger is out of service"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unavailable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The error clears: the same process reopens its ledger and issues again.
    std::fs::remove_file(&trigger).unwrap();
    let recovered_in = rt.block_on(recover(addr, &tls, &pai, &refused, &mut received));
    let on_record = exactly_received(&env, &received);
    println!(
        "EIO: recovered {recovered_in:?} after the error cleared; {} DACs on record",
        on_record
    );
    drop(server);
}

/// A read that fails with EIO (the danger switch's `reads`: the ledger's reads fail, its writes
/// pass): 503 with `Retry-After`, never 500; the server reopens its ledger and issues again once
/// the disk reads again.
#[test]
fn injected_read_eio_gets_503_and_the_ledger_is_reopened() {
    let scratch = tempfile::tempdir().unwrap();
    let env = env_with_ledger(&scratch.path().join("ledger.redb"));
    let trigger = scratch.path().join("eio");
    let server = Server::start(&env, &[(FAULT_ENV, &trigger)]);
    let (addr, tls, pai) = (server.addr, gateway(&env), env.pai_der());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut received = rt.block_on(enroll_ok(addr, &tls, &pai, "before", 3));

    std::fs::write(&trigger, b"reads").unwrap();
    let refused = device_csr("read-eio-0");
    rt.block_on(async {
        let mut c = Client::connect(addr, tls.clone()).await.unwrap();
        let r = c.enroll(ENROLL, &refused).await;
        assert_unavailable(&r, "read EIO");
        for i in 1..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut c = Client::connect(addr, tls.clone()).await.unwrap();
            let r = c
                .enroll(ENROLL, &device_csr(&format!("read-eio-{i}")))
                .await;
            assert_unavailable(&r, "read EIO persists");
        }
    });
    assert_eq!(server.logged("ledger reopened after an I/O error"), 0);

    std::fs::remove_file(&trigger).unwrap();
    let recovered_in = rt.block_on(recover(addr, &tls, &pai, &refused, &mut received));
    assert_eq!(
        server.logged("ledger reopened after an I/O error"),
        1,
        "the read error had the ledger reopened"
    );
    let on_record = exactly_received(&env, &received);
    println!(
        "read EIO: recovered {recovered_in:?} after the error cleared; {on_record} DACs on record"
    );
    drop(server);
}

/// Free bytes of the file system at `path` (`df`).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// One gateway's outcome: (device, DAC) for each device, and the 503s it retried.
type GatewayRun = (Vec<(usize, Vec<u8>)>, usize);

/// Devices of [`eio_under_load_loses_and_duplicates_nothing`].
const LOAD_DEVICES: usize = 600;
/// Its concurrent gateway connections.
const LOAD_CLIENTS: usize = 8;

#[test]
fn eio_under_load_loses_and_duplicates_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let env = env_with_ledger(&scratch.path().join("ledger.redb"));
    let trigger = scratch.path().join("eio");
    let server = Server::start(&env, &[(FAULT_ENV, &trigger)]);
    let (addr, tls, pai) = (server.addr, gateway(&env), env.pai_der());
    let csrs: Vec<Vec<u8>> = (0..LOAD_DEVICES)
        .map(|i| device_csr(&format!("load-{i:04}")))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The disk fails for 150 ms of every 400 ms while the gateways enroll.
    let toggler = {
        let (trigger, stop) = (trigger.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut cycles = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                std::fs::write(&trigger, b"").unwrap();
                std::thread::sleep(Duration::from_millis(150));
                std::fs::remove_file(&trigger).unwrap();
                cycles += 1;
            }
            cycles
        })
    };
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Each gateway enrolls its devices in turn; a device refused with 503 is sent again (the
    // same CSR, a new connection) after a short pause, until it gets its DAC.
    let results: Vec<GatewayRun> = rt.block_on(async {
        let tasks: Vec<_> = (0..LOAD_CLIENTS)
            .map(|n| {
                let jobs: Vec<(usize, Vec<u8>)> = csrs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % LOAD_CLIENTS == n)
                    .map(|(i, c)| (i, c.clone()))
                    .collect();
                let (tls, pai) = (tls.clone(), pai.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut refused = 0;
                    let mut c = Client::connect(addr, tls.clone()).await.unwrap();
                    for (i, der) in jobs {
                        loop {
                            assert!(started.elapsed() < Duration::from_secs(180), "too slow");
                            let r = c.enroll(ENROLL, &der).await;
                            match r.status {
                                200 => {
                                    got.push((i, issued(&pkcs7_certs(&r.body), &pai)));
                                    break;
                                }
                                503 => {
                                    assert_unavailable(&r, "EIO under load");
                                    refused += 1;
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    c = Client::connect(addr, tls.clone()).await.unwrap();
                                }
                                s => panic!("device {i}: {s} {}", r.text()),
                            }
                        }
                    }
                    (got, refused)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let cycles = toggler.join().unwrap();
    let _ = std::fs::remove_file(&trigger);
    let refused: usize = results.iter().map(|(_, r)| r).sum();
    let received: Vec<(usize, Vec<u8>)> = results.into_iter().flat_map(|(g, _)| g).collect();
    assert_eq!(received.len(), LOAD_DEVICES, "every device got its DAC");
    assert!(refused > 0, "the disk never failed during the run");

    // The ledger must be back in service for the checks: wait out a last reopen.
    let start = Instant::now();
    let on_record = loop {
        let out = cli(&env, &["certs", "stats", "--json"]);
        if out.status.success() {
            break ledger_checks(&env);
        }
        assert!(start.elapsed() < RECOVERY, "the ledger did not come back");
        std::thread::sleep(Duration::from_millis(200));
    };
    let got: BTreeSet<String> = received.iter().map(|(_, d)| serial_of(d)).collect();
    assert_eq!(got.len(), LOAD_DEVICES, "no DAC received twice");
    assert_eq!(
        on_record, got,
        "on record must be exactly what clients received"
    );
    println!(
        "EIO under load: {LOAD_DEVICES} devices over {LOAD_CLIENTS} connections, {cycles} EIO \
         windows, {refused} 503s retried, all {LOAD_DEVICES} DACs on record once, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(server);
}
