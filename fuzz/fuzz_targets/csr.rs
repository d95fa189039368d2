//! A request body as the EST server receives it (`/simpleenroll`, `/simplereenroll`,
//! `/serverkeygen`): body decoding (DER, base64 with any wrapping, PEM) and CSR parsing must
//! refuse anything malformed with an error, never panic or hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = matter_est::csr::parse(data);
});
