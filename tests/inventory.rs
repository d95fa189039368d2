//! The inventory (issue 14 item 4): on a ledger of 100,000 DACs, every `certs list` filter
//! returns exactly the matching records, page after page; the CLI prints table, CSV and JSON,
//! `certs show` the lineage, `certs stats` the counts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::sync::Arc;

use common::{DevEnv, assert_success};
use matter_est::revocation::RevocationReason;
use matter_est::store::redb::RedbLedger;
use matter_est::store::{Admission, CertQuery, DacRecord, Ledger, Status};
use serve::cli;

const N: u64 = 100_000;
const THREADS: u64 = 16;
/// Issue times: one record a second from here.
const T0: i64 = 1_800_000_000;

fn record(i: u64) -> DacRecord {
    let mut serial = [0u8; 16];
    serial[..8].copy_from_slice(&(0x0100_0000_0000_0000 + i).to_be_bytes());
    serial[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    DacRecord {
        serial: serial.to_vec(),
        label: ["dev", "other", "third"][(i % 3) as usize].into(),
        issuer_key: vec![7; 20],
        subject: format!("CN=device-{i:06},VID=FFF1,PID={:04X}", 0x8000 + i % 4),
        subject_der: format!("subject-{i:040}").into_bytes(),
        vid: if i.is_multiple_of(10) { 0xfff2 } else { 0xfff1 },
        pid: 0x8000 + (i % 4) as u16,
        requester: format!("client:cn:gw-line-{}", i % 7),
        issued_at: T0 + i as i64,
        der: vec![0x30, 0x00],
        status: Status::Issued,
        renews: None,
        server_keygen: false,
    }
}

fn parallel(n: u64, f: impl Fn(u64) + Send + Sync + 'static) {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in (t..n).step_by(THREADS as usize) {
                    f(i);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Every page of `query`, followed through its cursors.
fn all_pages(ledger: &RedbLedger, mut query: CertQuery) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let page = ledger.list_page(&query).unwrap();
        assert!(page.records.len() <= query.limit);
        seen.extend(
            page.records
                .iter()
                .map(|(_, r)| r.issued_at as u64 - T0 as u64),
        );
        match page.next {
            Some(n) => query.after = Some(n),
            None => return seen,
        }
    }
}

#[test]
fn filters_return_exactly_the_matching_records_of_100000() {
    let env = DevEnv::new(|t| t);
    let config = env.config();
    let ledger = Arc::new(RedbLedger::open(config.store.redb_path().unwrap()).unwrap());
    let l = ledger.clone();
    // Records are committed concurrently, so the issue order (sequence numbers) is only
    // roughly the i order: the queries are compared as sets of i.
    parallel(N, move |i| {
        l.commit(&record(i), &Admission::default()).unwrap();
    });
    let l = ledger.clone();
    parallel(500, move |k| {
        let i = k * 197;
        l.revoke(&record(i).serial, RevocationReason::Superseded, T0, "test")
            .unwrap();
    });
    // A renewal lineage: 5 -> renewal -> renewal.
    let mut a = record(N);
    a.subject_der = record(5).subject_der;
    a.renews = Some(record(5).serial);
    ledger.commit(&a, &Admission::default()).unwrap();
    let mut b = record(N + 1);
    b.subject_der = record(5).subject_der;
    b.renews = Some(a.serial.clone());
    ledger.commit(&b, &Admission::default()).unwrap();

    let mut all: Vec<DacRecord> = (0..N).map(record).collect();
    for k in 0..500 {
        all[(k * 197) as usize].status = Status::Revoked {
            at: T0,
            reason: "superseded".into(),
        };
    }
    all.push(a.clone());
    all.push(b.clone());
    let queries = [
        CertQuery {
            label: Some("other".into()),
            ..Default::default()
        },
        CertQuery {
            label: Some("dev".into()),
            pid: Some(0x8002),
            vid: Some(0xfff1),
            ..Default::default()
        },
        CertQuery {
            revoked: Some(true),
            ..Default::default()
        },
        CertQuery {
            label: Some("third".into()),
            revoked: Some(false),
            since: Some(T0 + 50_000),
            until: Some(T0 + 50_500),
            ..Default::default()
        },
        CertQuery {
            contains: Some("device-0123".into()),
            ..Default::default()
        },
        CertQuery {
            contains: Some("0100000000000309".into()),
            ..Default::default()
        },
        CertQuery {
            requester: Some("gw-line-3".into()),
            vid: Some(0xfff2),
            ..Default::default()
        },
        CertQuery {
            since: Some(T0 + 99_990),
            ..Default::default()
        },
    ];
    for mut q in queries {
        let mut want: Vec<u64> = all
            .iter()
            .filter(|r| q.matches(r))
            .map(|r| r.issued_at as u64 - T0 as u64)
            .collect();
        want.sort_unstable();
        assert!(!want.is_empty(), "{q:?} matches something");
        q.limit = 997;
        let mut got = all_pages(&ledger, q.clone());
        got.sort_unstable();
        assert_eq!(got, want, "{q:?}");
    }
    ledger.close();
    drop(ledger);

    // The CLI over the same ledger: JSON with a cursor, CSV, table.
    let out = cli(
        &env,
        &[
            "certs", "list", "--label", "dev", "--pid", "8001", "--limit", "3", "--format", "json",
        ],
    );
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|r| r["label"] == "dev" && r["pid"] == "8001")
    );
    let next = v["next"].as_str().unwrap().to_string();
    let out = cli(
        &env,
        &[
            "certs", "list", "--label", "dev", "--pid", "8001", "--limit", "3", "--after", &next,
            "--format", "csv",
        ],
    );
    assert_success(&out);
    let csv = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "seq,serial,label,vid,pid,status,issued,requester,subject"
    );
    assert_eq!(rows.len(), 4);
    assert!(
        rows[1..]
            .iter()
            .all(|r| r.contains(",dev,FFF") && r.contains(",8001,"))
    );
    assert!(
        rows[1..].iter().all(|r| r.contains("\"CN=device-")),
        "subjects quoted: {csv}"
    );
    let out = cli(
        &env,
        &["certs", "list", "--status", "revoked", "--limit", "2"],
    );
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("more: add --after"));
    let out = cli(&env, &["certs", "list", "--status", "lost"]);
    assert!(!out.status.success());

    // show: the lineage from the middle DAC, oldest first.
    let serial = matter_est::asn1::hex(&a.serial).to_uppercase();
    let out = cli(&env, &["certs", "show", &serial, "--json"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lineage: Vec<&str> = v["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["serial"].as_str().unwrap())
        .collect();
    let hex = |r: &DacRecord| matter_est::asn1::hex(&r.serial).to_uppercase();
    assert_eq!(lineage, [hex(&record(5)), hex(&a), hex(&b)]);
    assert_eq!(v["requester"], a.requester.as_str());
    let out = cli(&env, &["certs", "show", "0102"]);
    assert!(!out.status.success());

    // stats.
    let out = cli(&env, &["certs", "stats", "--json"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], N + 2);
    assert_eq!(v["by_status"]["revoked"], 500);
    let others = all.iter().filter(|r| r.label == "other").count();
    assert_eq!(v["by_label"]["other"], others as u64);
}
