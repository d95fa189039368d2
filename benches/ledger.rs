//! The ledger alone: what a durable (fsync'd) commit costs, one at a time and with 32
//! concurrent writers sharing group commits. Run: `cargo bench --bench ledger`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: benchmark harness

use std::sync::Arc;
use std::time::Instant;

use matter_est::store::redb::RedbLedger;
use matter_est::store::{Admission, DacRecord, Ledger, Status};

fn record(i: u64) -> DacRecord {
    let mut serial = [0u8; 16];
    serial[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    serial[0] = serial[0] % 0x7f + 1;
    serial[15] = i as u8;
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
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(RedbLedger::open(&dir.path().join("ledger.redb")).unwrap());
    let n = 500u64;
    let start = Instant::now();
    for i in 0..n {
        ledger.commit(&record(i), &Admission::default()).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "1 writer:    {:>6.0} commits/s ({:.0} µs each, one fsync each)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );

    let (threads, per) = (32u64, 1000u64);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    ledger
                        .commit(&record(1_000_000 * (t + 1) + i), &Admission::default())
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "32 writers:  {:>6.0} commits/s (group commit)",
        (threads * per) as f64 / secs
    );
}
