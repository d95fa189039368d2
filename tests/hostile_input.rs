//! What strangers send, on stable Rust: thousands of mutations of a valid CSR body in each
//! accepted form must each be refused with an error or parsed, never panic (the coverage-guided
//! targets in fuzz/ explore further, also on stable: `scripts/fuzz`, docs/fuzzing.md; an input
//! they find that crashes becomes a test here).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use ring::rand::{SecureRandom, SystemRandom};

#[test]
fn mutated_csr_bodies_never_panic() {
    let (der, _) = common::csr(&common::subject(Some("fuzz"), Some("FFF1"), Some("8000")));
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
    let pem =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
    let rng = SystemRandom::new();
    let mut accepted = 0;
    for seed in [der.clone(), b64.into_bytes(), pem.into_bytes()] {
        for _ in 0..3000 {
            let mut body = seed.clone();
            let mut r = [0u8; 8];
            rng.fill(&mut r).unwrap();
            let at = usize::from(u16::from_be_bytes([r[0], r[1]])) % body.len();
            match r[2] % 4 {
                0 => body[at] ^= 1 << (r[3] % 8),
                1 => body[at] = r[4],
                2 => body.truncate(at),
                _ => body.insert(at, r[5]),
            }
            if matter_est::csr::parse(&body).is_ok() {
                accepted += 1;
            }
        }
    }
    // A mutation may land in base64 padding or whitespace and still be the same CSR; almost all
    // must be refused (signature, structure).
    assert!(accepted < 1000, "{accepted} mutated CSRs accepted");
}
