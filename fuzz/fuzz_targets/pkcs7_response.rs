//! A response body as est-client receives it from any server, followed the way the client
//! follows it: base64 (any wrapping) or DER (`/csrattrs`), certs-only PKCS#7 (`/cacerts`,
//! `/simpleenroll`), then each certificate parsed to find the one for our CSR and the chain
//! above it, `/cacerts` put in chain order, and PEM out. Must refuse anything malformed with an error, never panic or hang.
#![no_main]

use std::sync::LazyLock;

use p256::pkcs8::EncodePrivateKey;

/// The CSR the client sent, for `issued_for` to look for: made from the fixed key
/// `examples/fuzz_seeds.rs` issues its seed DAC for, so the corpus holds a response that
/// matches it.
static CSR: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let secret = p256::SecretKey::from_slice(&[FIXED_SCALAR; 32]).expect("scalar in range");
    let pkcs8 = secret.to_pkcs8_der().expect("PKCS#8");
    let key = matter_est::signer::KeySigner::from_pkcs8(pkcs8.as_bytes()).expect("P-256 key");
    let subject = matter_est::profile::dev::name(&[
        (matter_est::asn1::oid::COMMON_NAME, "dev-fuzz"),
        (matter_est::asn1::oid::MATTER_PID, "8000"),
    ]);
    matter_est::csr::build(&subject, &key).expect("CSR")
});

/// Every byte of the fuzzing key's scalar (not a secret: fuzzing input).
const FIXED_SCALAR: u8 = 0x17;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = est_client::wire::base64_body(data);
    let Ok(certs) = est_client::wire::certs_only(data) else {
        return;
    };
    let _ = est_client::wire::issued_for(&certs, &CSR);
    if let Some(first) = certs.first() {
        let _ = est_client::wire::chain_above(first, &certs);
    }
    // `/cacerts`: put in chain order.
    let _ = est_client::wire::chain_order(&certs);
    let _ = est_client::wire::pem(&certs);
});
