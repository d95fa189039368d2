//! CRL generation for a label with 100,000 revoked DACs (issue 14 "Speed"): the revoked-index
//! scan in the ledger, then building, signing (file signer) and self-checking the CRL. Prints
//! the time of each and the CRL's size. Run: `cargo bench --bench crl` (~1 min: filling and
//! revoking 100,000 records takes most of it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: benchmark harness

use std::sync::Arc;
use std::time::Instant;

use matter_est::config::Config;
use matter_est::issuance::load_label;
use matter_est::profile::dev;
use matter_est::revocation::RevocationReason;
use matter_est::revocation::crl::{self, CrlContent};
use matter_est::store::redb::RedbLedger;
use matter_est::store::{Admission, DacRecord, Ledger, Status};

const REVOKED: u64 = 100_000;
const THREADS: u64 = 32;

fn record(i: u64) -> DacRecord {
    let mut serial = [0u8; 16];
    serial[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    serial[0] = serial[0] % 0x7f + 1;
    serial[8..].copy_from_slice(&i.to_be_bytes());
    DacRecord {
        serial: serial.to_vec(),
        label: "dev".into(),
        issuer_key: vec![7; 20],
        subject: format!("CN=dev-{i},VID=FFF1,PID=8000"),
        subject_der: format!("subject-{i:040}").into_bytes(),
        vid: 0xfff1,
        pid: 0x8000,
        requester: "client:cn:gw-line-1".into(),
        issued_at: 1,
        der: vec![0x42; 480],
        status: Status::Issued,
        renews: None,
        server_keygen: false,
    }
}

/// Runs `f(i)` for i in 0..REVOKED on THREADS threads (so the ledger's group commit applies).
fn parallel(f: impl Fn(u64) + Send + Sync + 'static) {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in (t..REVOKED).step_by(THREADS as usize) {
                    f(i);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let made = dev::init(dir.path(), false).unwrap();
    let config = Config::load(&made.config).unwrap();
    let label = load_label(config.label("dev").unwrap()).unwrap();
    let ledger = Arc::new(RedbLedger::open(&dir.path().join("bench.redb")).unwrap());

    let start = Instant::now();
    let l = ledger.clone();
    parallel(move |i| {
        l.commit(&record(i), &Admission::default()).unwrap();
    });
    let l = ledger.clone();
    parallel(move |i| {
        l.revoke(
            &record(i).serial,
            RevocationReason::KeyCompromise,
            1_800_000_000,
            "bench",
        )
        .unwrap();
    });
    println!(
        "setup: {REVOKED} DACs recorded and revoked in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    for round in 0..3 {
        let start = Instant::now();
        let entries = ledger.revoked("dev").unwrap();
        let scanned = start.elapsed();
        let content = CrlContent {
            number: round + 1,
            this_update: 1_800_000_000,
            next_update: 1_800_604_800,
            entries: &entries,
        };
        let start = Instant::now();
        let der = crl::build(&label.pai, label.signer.as_ref(), &content).unwrap();
        let built = start.elapsed();
        assert_eq!(entries.len() as u64, REVOKED);
        println!(
            "CRL with {} entries: index scan {:.0} ms, build + sign + self-check {:.0} ms, \
             {} bytes ({:.1} MB, {:.1} bytes/entry)",
            entries.len(),
            scanned.as_secs_f64() * 1e3,
            built.as_secs_f64() * 1e3,
            der.len(),
            der.len() as f64 / 1e6,
            der.len() as f64 / entries.len() as f64
        );
    }
}
