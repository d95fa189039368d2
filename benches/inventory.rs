//! `certs list` on a 1,000,000-record ledger (issue 14 "Speed": one page in under 50 ms). Fills
//! a ledger in a temporary directory (~1 GB, a minute or two), then times pages: the first, a
//! label's, label + PID, from a date, one deep in through the cursor, and a filter no index
//! serves. Then the dashboard's overview (issue 15 item 3: under 200 ms on 1,000,000 records):
//! its data gathered from the ledger's counters and bounded windows, and the page rendered, for
//! an identity of every label and one of a single label. Run: `cargo bench --bench inventory`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: benchmark harness

use std::sync::Arc;
use std::time::Instant;

use matter_est::admin::Caller;
use matter_est::admin::dashboard::{html, render_overview, summary};
use matter_est::config::AdminRole;
use matter_est::store::redb::RedbLedger;
use matter_est::store::{Admission, CertQuery, DacRecord, Ledger, Status};

const N: u64 = 1_000_000;
const THREADS: u64 = 32;
const T0: i64 = 1_800_000_000;
const PAGE: usize = 50;

fn record(i: u64) -> DacRecord {
    let mut serial = [0u8; 16];
    serial[..8].copy_from_slice(&(0x0100_0000_0000_0000 + i).to_be_bytes());
    serial[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    DacRecord {
        serial: serial.to_vec(),
        label: format!("label-{}", i % 10),
        issuer_key: vec![7; 20],
        subject: format!("CN=device-{i:07},VID=FFF1,PID={:04X}", 0x8000 + i % 16),
        subject_der: format!("subject-{i:040}").into_bytes(),
        vid: 0xfff1,
        pid: 0x8000 + (i % 16) as u16,
        requester: format!("client:cn:gw-line-{}", i % 7),
        issued_at: T0 + (i / 10) as i64,
        der: vec![0x42; 480],
        status: Status::Issued,
        renews: None,
        server_keygen: false,
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(RedbLedger::open(&dir.path().join("ledger.redb")).unwrap());
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                for i in (t..N).step_by(THREADS as usize) {
                    l.commit(&record(i), &Admission::default()).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    println!(
        "filled {N} records in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let cases: Vec<(&str, CertQuery)> = vec![
        ("first page, no filter", CertQuery::default()),
        (
            "label-3",
            CertQuery {
                label: Some("label-3".into()),
                ..Default::default()
            },
        ),
        (
            "label-3 + PID 8003",
            CertQuery {
                label: Some("label-3".into()),
                pid: Some(0x8003),
                ..Default::default()
            },
        ),
        (
            "issued since T0+90,000 s",
            CertQuery {
                since: Some(T0 + 90_000),
                ..Default::default()
            },
        ),
        (
            "label-7, cursor 90% of the way in",
            CertQuery {
                label: Some("label-7".into()),
                after: Some(matter_est::store::Position {
                    time: T0 + 90_000,
                    seq: 0,
                }),
                ..Default::default()
            },
        ),
        (
            "label-7 since T0+50,000 s, requester gw-line-2",
            CertQuery {
                label: Some("label-7".into()),
                since: Some(T0 + 50_000),
                requester: Some("gw-line-2".into()),
                ..Default::default()
            },
        ),
        (
            "subject contains device-0999999 (no index: a scan)",
            CertQuery {
                contains: Some("device-0999999".into()),
                ..Default::default()
            },
        ),
    ];
    for (name, mut q) in cases {
        q.limit = PAGE;
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..5 {
            let start = Instant::now();
            let page = ledger.list_page(&q).unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e3);
            n = page.records.len();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<52} {n:>3} records: median {:>8.2} ms (min {:.2}, max {:.2})",
            times[2], times[0], times[4]
        );
    }

    let labels: Vec<(String, Option<u64>)> = (0..10)
        .map(|l| (format!("label-{l}"), Some(200_000)))
        .collect();
    let callers = [
        (
            "dashboard overview, every label",
            Caller::local("bench".into()),
        ),
        (
            "dashboard overview, label-3 only",
            Caller {
                identity: "bench".into(),
                role: AdminRole::Operator,
                labels: Some(["label-3".to_string()].into()),
            },
        ),
    ];
    for (name, caller) in callers {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let start = Instant::now();
            let now = matter_est::asn1::now();
            let sum = summary::gather(ledger.as_ref(), &labels, &caller, now).unwrap();
            let page = html::page("Overview", &caller, "csrf", &render_overview(&sum, &caller));
            times.push(start.elapsed().as_secs_f64() * 1e3);
            bytes = page.len();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<52} {bytes:>6} bytes: median {:>8.2} ms (min {:.2}, max {:.2})",
            times[2], times[0], times[4]
        );
    }
}
