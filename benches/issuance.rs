//! Benchmark of the whole issuance path: CSR parse + verify, subject policy, build, sign,
//! self-check, and the ledger commit. Run with `cargo bench --bench issuance`; prints DACs/s.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: benchmark harness

use std::sync::Arc;
use std::time::Instant;

use matter_est::asn1::{self, oid};
use matter_est::config::Config;
use matter_est::issuance::{IssueOptions, Issuer, load_label};
use matter_est::profile::{self, dev};
use matter_est::signer::{self, KeySigner};
use matter_est::store::redb::RedbLedger;

fn csrs(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let (pkcs8, _) = signer::generate_p256().unwrap();
            let key = KeySigner::from_pkcs8(&pkcs8).unwrap();
            let cn = format!("bench-{tag}-{i}");
            let name = dev::name(&[
                (oid::COMMON_NAME, &cn),
                (oid::MATTER_VID, "FFF1"),
                (oid::MATTER_PID, "8000"),
            ]);
            matter_est::csr::build(&name, &key).unwrap()
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    dev::init(dir.path(), false).unwrap();
    let config = Config::load(&dir.path().join(dev::files::CONFIG)).unwrap();
    let label = load_label(config.label("dev").unwrap()).unwrap();
    let n = 4000;

    // 1. Without the ledger: parse + verify, policy, build, sign, self-check; one core.
    let bodies = csrs(n, "a");
    let start = Instant::now();
    for body in &bodies {
        let req = matter_est::csr::parse(body).unwrap();
        let serial = profile::random_serial().unwrap();
        let subject = label
            .profile
            .subject(&label.pai, &req.ids, &req.public_key)
            .unwrap();
        label
            .profile
            .build(
                &label.pai,
                &subject,
                &serial,
                &req.public_key,
                label.signer.as_ref(),
                asn1::now(),
            )
            .unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "issuance without ledger, 1 thread:   {:>8.0} DACs/s ({:.1} µs/DAC)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );

    // Where the time goes, per stage (same CSRs again, parse only / verify only).
    let start = Instant::now();
    for body in &bodies {
        matter_est::csr::parse(body).unwrap();
    }
    let parse = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let req = matter_est::csr::parse(&bodies[0]).unwrap();
    let serial = profile::random_serial().unwrap();
    let subject = label
        .profile
        .subject(&label.pai, &req.ids, &req.public_key)
        .unwrap();
    let dac = label
        .profile
        .build(
            &label.pai,
            &subject,
            &serial,
            &req.public_key,
            label.signer.as_ref(),
            asn1::now(),
        )
        .unwrap();
    let start = Instant::now();
    for _ in 0..n {
        profile::check::dac(&dac.der, &label.pai, asn1::now(), None).unwrap();
    }
    let check = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let start = Instant::now();
    for _ in 0..n {
        label.signer.sign(&dac.der[..300]).unwrap();
    }
    let sign = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "  stages: CSR parse + verify {parse:.1} µs, self-check {check:.1} µs, sign {sign:.1} µs"
    );
    // The self-check's signature verification: tables for the PAI key against ring's general
    // verification (signer::fixed_key explains why).
    let p = profile::cert::Parsed::from_der(&dac.der).unwrap();
    let time_verify = |verify: &dyn Fn() -> bool| {
        let start = Instant::now();
        for _ in 0..n {
            assert!(verify());
        }
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let fixed = time_verify(&|| label.pai.key.verify(&p.tbs_der, p.signature()));
    let general =
        time_verify(&|| signer::verify(label.pai.public_key(), &p.tbs_der, p.signature()));
    println!("  DAC signature verification: PAI key tables {fixed:.1} µs, ring {general:.1} µs");

    let ledger = Arc::new(RedbLedger::open(config.store.redb_path().unwrap()).unwrap());
    let issuer = Arc::new(Issuer::new(&config, ledger.clone()).unwrap());
    let opts = IssueOptions {
        requester: "bench".into(),
        ..Default::default()
    };

    // 2. With the fsync'd ledger commit, one request at a time (one fsync per DAC).
    let m = 500;
    let bodies = csrs(m, "b");
    let start = Instant::now();
    for body in &bodies {
        let req = matter_est::csr::parse(body).unwrap();
        issuer.issue("dev", &req, &opts).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "issuance with ledger, 1 thread:      {:>8.0} DACs/s ({:.1} µs/DAC, one fsync each)",
        m as f64 / secs,
        secs * 1e6 / m as f64
    );

    // 3. With the ledger, 32 concurrent requesters: group commit shares fsyncs.
    let threads = 32;
    let per = 250;
    let sets: Vec<Vec<Vec<u8>>> = (0..threads).map(|t| csrs(per, &format!("c{t}"))).collect();
    let start = Instant::now();
    let handles: Vec<_> = sets
        .into_iter()
        .map(|set| {
            let issuer = issuer.clone();
            let opts = opts.clone();
            std::thread::spawn(move || {
                for body in &set {
                    let req = matter_est::csr::parse(body).unwrap();
                    issuer.issue("dev", &req, &opts).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total = threads * per;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "issuance with ledger, {threads} threads:    {:>8.0} DACs/s on {} cores (group commit)",
        total as f64 / secs,
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    );
}
