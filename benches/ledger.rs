//! The ledger alone: what a durable (fsync'd) commit costs, one at a time and with 32
//! concurrent writers sharing group commits. Run: `cargo bench --bench ledger`.
//!
//! With `LEDGER_SCALE=1`, also: does the commit latency grow with the ledger's size? Fills it to
//! 40,000, 200,000 and 1,000,000 records (group commits of 512) and at each size measures the
//! latency of group commits of 8, paced at ~2,500 records/s (the EST latency target's rate);
//! ~90 s, 1.2 GB in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: benchmark harness

use std::sync::Arc;
use std::time::{Duration, Instant};

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
        server_keygen: false,
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
    if std::env::var_os("LEDGER_SCALE").is_some() {
        scale();
    }
}

fn scale() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(RedbLedger::open(&dir.path().join("ledger.redb")).unwrap());
    let mut filled = 0u64;
    for target in [0u64, 40_000, 200_000, 1_000_000] {
        // Fill: 512 submissions at a time, so they share group commits.
        let start = Instant::now();
        while filled < target {
            let pend: Vec<_> = (0..512)
                .map(|k| ledger.submit(&record(10_000_000 + filled + k), &Admission::default()))
                .collect();
            for p in pend {
                p.wait().unwrap();
            }
            filled += 512;
        }
        let fill_s = start.elapsed().as_secs_f64();
        // Paced: 8 at a time, then 2.5 ms apart: ~2,500 records/s.
        let mut lats = Vec::new();
        let t0 = Instant::now();
        let mut i = 0u64;
        while t0.elapsed() < Duration::from_secs(3) {
            let pend: Vec<_> = (0..8)
                .map(|k| {
                    (
                        Instant::now(),
                        ledger.submit(
                            &record(1_000_000_000 + target * 10 + i + k),
                            &Admission::default(),
                        ),
                    )
                })
                .collect();
            for (t, p) in pend {
                p.wait().unwrap();
                lats.push(t.elapsed());
            }
            i += 8;
            std::thread::sleep(Duration::from_micros(2500));
        }
        lats.sort();
        let p = |q: f64| lats[((lats.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "{target:>8} records (filled in {fill_s:.1} s): commit p50 {:.2} ms p99 {:.2} ms, file {} MB",
            p(0.5),
            p(0.99),
            std::fs::metadata(dir.path().join("ledger.redb"))
                .unwrap()
                .len()
                / 1_000_000
        );
    }
}
