//! A client certificate as the server wraps it for policy (`policy::PeerChain::new`): the leaf's
//! subject, commonName, subjectAltNames and validity. rustls has verified the chain before, so
//! this is a certificate an accepted CA signed; still its contents are the client's choice
//! (names, SAN types, dates). Must answer, never panic or hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cert = rustls_pki_types::CertificateDer::from(data.to_vec());
    let _ = matter_est::policy::PeerChain::new(vec![cert]);
});
