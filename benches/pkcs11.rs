//! The PKCS#11 signer on SoftHSM2 next to the file signer, in one run: SoftHSM2's raw `C_Sign`
//! rate (cryptoki directly, one session per thread), the signer seam's rate (pooled sessions,
//! SHA-256 in software, DER encoding), and the issuance rate through each signer (without and
//! with the fsync'd ledger). Run with `cargo bench --bench pkcs11`; needs SoftHSM2 (scripts/test
//! installs it). The run re-executes itself with `SOFTHSM2_CONF` naming a fresh token directory
//! (tests/common/hsm.rs explains why).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: benchmark harness

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::DevEnv;
use common::hsm::{self, Hsm};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use matter_est::asn1::oid;
use matter_est::issuance::IssueOptions;
use matter_est::profile::dev;
use matter_est::signer::{self, KeySigner};

const TOKEN: &str = "bench-token";
/// Signatures per thread in the raw and seam measurements (~1 s each here: windows shorter
/// than that swung by 2x on this shared 2-core machine).
const RAW_SIGNS: usize = 5000;
/// CSRs per thread through issuance without the ledger.
const PREPARE_PER_THREAD: usize = 2000;
/// Requesters and CSRs each through issuance with the ledger (as benches/issuance.rs: 32).
const LEDGER_THREADS: usize = 32;
const LEDGER_PER_THREAD: usize = 150;
/// Each figure is the best of this many runs (other work on the machine only slows a run).
const RUNS: usize = 3;
/// Set in the re-executed run: the SoftHSM2 directory.
const CHILD_DIR: &str = "MATTER_EST_BENCH_SOFTHSM_DIR";

fn main() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        let tmp = tempfile::tempdir().unwrap();
        let conf = hsm::make_softhsm_dir(tmp.path(), &[TOKEN]);
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env("SOFTHSM2_CONF", conf)
            .env(CHILD_DIR, tmp.path())
            .status()
            .unwrap();
        assert!(status.success());
        return;
    };
    let hsm = Hsm {
        dir: dir.into(),
        module: hsm::module(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("SoftHSM2 {} on {cores} cores", hsm.module.display());

    let file_env = DevEnv::new(|t| t);
    let hsm_env = DevEnv::new_in(|dir, text| {
        hsm.adopt_dev_pki(dir, TOKEN, &text)
            .replace("sessions = 4", &format!("sessions = {}", 2 * cores))
    });

    // 1. Raw C_Sign over a SHA-256 digest: cryptoki, one session per thread.
    let ctx = Pkcs11::new(&hsm.module).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let raw = |threads: usize, per: usize| {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let slot = ctx
                        .get_slots_with_token()
                        .unwrap()
                        .into_iter()
                        .find(|s| ctx.get_token_info(*s).unwrap().label() == TOKEN)
                        .unwrap();
                    let session = ctx.open_ro_session(slot).unwrap();
                    let pin = AuthPin::from(hsm::USER_PIN.to_string());
                    let _ = session.login(UserType::User, Some(&pin));
                    let key = session
                        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                        .unwrap()[0];
                    for _ in 0..per {
                        session.sign(&Mechanism::Ecdsa, key, &[7u8; 32]).unwrap();
                    }
                });
            }
        });
        (threads * per) as f64 / start.elapsed().as_secs_f64()
    };
    raw(1, 500); // warm-up: SoftHSM2 loads and decrypts the key object on first use
    let raw1 = best(|| raw(1, RAW_SIGNS));
    let raw_n = best(|| raw(cores, RAW_SIGNS));
    println!("raw C_Sign (CKM_ECDSA), 1 thread:            {raw1:>8.0} signatures/s");
    println!("raw C_Sign (CKM_ECDSA), {cores} threads:           {raw_n:>8.0} signatures/s");

    // 2. The signer seam: SHA-256 + pooled session + C_Sign + DER.
    let (file_issuer, _file_ledger) = file_env.issuer();
    let (hsm_issuer, _hsm_ledger) = hsm_env.issuer();
    let (file_issuer, hsm_issuer) = (Arc::new(file_issuer), Arc::new(hsm_issuer));
    for (name, issuer) in [("file", &file_issuer), ("PKCS#11", &hsm_issuer)] {
        let signer = issuer.label("dev").unwrap().signer.clone();
        let rate = best(|| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..cores {
                    let signer = signer.clone();
                    s.spawn(move || {
                        for i in 0..RAW_SIGNS {
                            signer.sign(&(i as u64).to_be_bytes()).unwrap();
                        }
                    });
                }
            });
            (cores * RAW_SIGNS) as f64 / start.elapsed().as_secs_f64()
        });
        println!("Signer::sign, {name:>7} signer, {cores} threads:  {rate:>8.0} signatures/s");
    }

    // 3. Issuance without the ledger (CSR parse + verify, policy, build, sign, self-check), one
    // thread per core, then with the fsync'd ledger from 32 requesters (group commit).
    let opts = IssueOptions {
        requester: "bench".into(),
        ..Default::default()
    };
    let mut rates = Vec::new();
    for (name, issuer) in [("file", &file_issuer), ("PKCS#11", &hsm_issuer)] {
        let mut round = 0;
        let prepare = best(|| {
            round += 1;
            let sets: Vec<Vec<Vec<u8>>> = (0..cores)
                .map(|t| csrs(PREPARE_PER_THREAD, &format!("{name}-a{round}-{t}")))
                .collect();
            let start = Instant::now();
            std::thread::scope(|s| {
                for set in &sets {
                    let (issuer, opts) = (issuer.clone(), opts.clone());
                    s.spawn(move || {
                        for body in set {
                            let req = matter_est::csr::parse(body).unwrap();
                            issuer
                                .prepare_with("dev", &req, &opts, |_, _| Ok(()))
                                .unwrap();
                        }
                    });
                }
            });
            (cores * PREPARE_PER_THREAD) as f64 / start.elapsed().as_secs_f64()
        });
        let mut round = 0;
        let issue = best(|| {
            round += 1;
            let sets: Vec<Vec<Vec<u8>>> = (0..LEDGER_THREADS)
                .map(|t| csrs(LEDGER_PER_THREAD, &format!("{name}-b{round}-{t}")))
                .collect();
            let start = Instant::now();
            std::thread::scope(|s| {
                for set in &sets {
                    let (issuer, opts) = (issuer.clone(), opts.clone());
                    s.spawn(move || {
                        for body in set {
                            let req = matter_est::csr::parse(body).unwrap();
                            issuer.issue("dev", &req, &opts).unwrap();
                        }
                    });
                }
            });
            (LEDGER_THREADS * LEDGER_PER_THREAD) as f64 / start.elapsed().as_secs_f64()
        });
        println!(
            "issuance, {name:>7} signer: without ledger {prepare:>6.0} DACs/s ({cores} threads), \
             with ledger {issue:>6.0} DACs/s ({LEDGER_THREADS} threads)"
        );
        rates.push((prepare, issue));
    }
    let (file, pkcs11) = (rates[0], rates[1]);
    println!(
        "PKCS#11 issuance with ledger: {:.0}% of the raw C_Sign rate on {cores} threads, {:.0}% of the file signer's",
        100.0 * pkcs11.1 / raw_n,
        100.0 * pkcs11.1 / file.1
    );
}

/// The best of [`RUNS`] measurements of a rate.
fn best(mut measure: impl FnMut() -> f64) -> f64 {
    (0..RUNS).map(|_| measure()).fold(0.0, f64::max)
}

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
