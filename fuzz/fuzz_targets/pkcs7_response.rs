//! A response body as est-client receives it from any server: base64 and certs-only PKCS#7
//! decoding must refuse anything malformed with an error, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = est_client::wire::certs_only(data);
});
