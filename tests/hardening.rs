//! Issue 12, "harden the spine", over real TLS on loopback: who may renew what, retries that
//! always recover, CN rules before signing, validity per request, client rules by name type,
//! chain constraints webpki leaves out, and one peer's connection cap.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::time::{Duration, Instant};

use common::est::{ALL, Client, Reply, TestServer, identity_from_files, issued, pkcs7_certs};
use common::{assert_matter_dac, subject};
use der::Decode;
use matter_est::asn1::{self, oid, tag};
use matter_est::profile::cert::{self, CertFields, key_usage};
use matter_est::profile::dev;
use matter_est::signer::{self, KeySigner};
use matter_est::store::{Admission, DacRecord, Status};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const ENROLL: &str = "/.well-known/est/dev/simpleenroll";
const REENROLL: &str = "/.well-known/est/dev/simplereenroll";

fn b64(der: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
}

/// The DAC of a 200 response, checked against MATTER.md and found on record.
fn dac_of(server: &TestServer, r: &Reply) -> Vec<u8> {
    assert_eq!(r.status, 200, "{}", r.text());
    let pai = server.env.pai_der();
    let dac = issued(&pkcs7_certs(&r.body), &pai);
    assert_matter_dac(&dac, &pai);
    assert!(
        server.ledger.by_serial(&serial_of(&dac)).unwrap().is_some(),
        "on record"
    );
    dac
}

fn serial_of(der: &[u8]) -> Vec<u8> {
    x509_cert::Certificate::from_der(der)
        .unwrap()
        .tbs_certificate()
        .serial_number()
        .as_bytes()
        .to_vec()
}

/// A device key (PKCS#8) and its CSR for `cn`/PID.
fn device(cn: Option<&str>, pid: &str) -> (Vec<u8>, Vec<u8>) {
    let (pkcs8, _) = signer::generate_p256().unwrap();
    let key = KeySigner::from_pkcs8(&pkcs8).unwrap();
    let der = matter_est::csr::build(&subject(cn, Some("FFF1"), Some(pid)), &key).unwrap();
    (pkcs8, der)
}

/// Puts `der`, a DAC for `keep` (VID FFF1, PID 8000) made outside the server, on record as
/// `label`'s, as the server would have.
fn put_on_record(
    server: &TestServer,
    label: &matter_est::issuance::Label,
    keep: &matter_est::profile::DacSubject,
    der: &[u8],
) {
    let record = DacRecord {
        serial: serial_of(der),
        label: label.config.name.clone(),
        issuer_key: label.pai.skid.clone(),
        subject: keep.to_string(),
        subject_der: keep.to_der(),
        vid: 0xFFF1,
        pid: 0x8000,
        requester: "test".into(),
        issued_at: asn1::now(),
        der: der.to_vec(),
        status: Status::Issued,
        renews: None,
        server_keygen: false,
    };
    server
        .ledger
        .commit(&record, &Admission::default())
        .unwrap();
}

/// A CSR for `cn`/PID with the key `pkcs8`.
fn csr_with(pkcs8: &[u8], cn: &str, pid: &str) -> Vec<u8> {
    let key = KeySigner::from_pkcs8(pkcs8).unwrap();
    matter_est::csr::build(&subject(Some(cn), Some("FFF1"), Some(pid)), &key).unwrap()
}

async fn as_identity(server: &TestServer, chain: Vec<Vec<u8>>, pkcs8: &[u8]) -> Client {
    let identity = (
        chain.into_iter().map(CertificateDer::from).collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec())),
    );
    Client::connect(server.addr, server.client_config(Some(identity), ALL))
        .await
        .unwrap()
}

/// A second label `name` on the development PAI, with `keys` added to it.
fn with_label(config: String, name: &str, keys: &str) -> String {
    format!(
        "{config}\n[labels.{name}]\npai = \"pki/pai.pem\"\nchain = [\"pki/paa.pem\"]\n\
         client_cas = [\"clients/ca.pem\"]\n{keys}\n[labels.{name}.signer]\nfile = \"pki/pai.key\"\n\n\
         [[labels.{name}.clients]]\nmatch = \"cn:gw-line-1\"\n"
    )
}

async fn token_post(c: &mut Client, path: &str, id: &str, secret: &str, der: &[u8]) -> Reply {
    let auth = format!("Basic {}", b64(format!("{id}:{secret}").as_bytes()));
    c.request(
        "POST",
        path,
        &[
            ("Content-Type", "application/pkcs10"),
            ("Authorization", &auth),
        ],
        b64(der).into_bytes(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_belongs_to_the_label_that_issued_the_dac_and_its_current_policy() {
    let server =
        TestServer::start(|t| with_label(t, "narrow", "pids = [\"8001\"]\ncn_prefix = \"n-\""))
            .await;
    let (key, der) = device(Some("lamp-1"), "8000");
    let dac = dac_of(&server, &server.gateway().await.enroll(ENROLL, &der).await);

    // The same DAC on another label that shares the PAI: refused, nothing recorded there.
    let mut c = as_identity(&server, vec![dac.clone()], &key).await;
    let r = c
        .enroll(
            "/.well-known/est/narrow/simplereenroll",
            &csr_with(&key, "lamp-1", "8000"),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("issued on label \"dev\""), "{}", r.text());
    assert_eq!(server.ledger.count("narrow").unwrap(), 0);

    // A DAC on record under `narrow` for PID 8000, which its policy no longer allows (the
    // operator narrowed the list after it was issued): its renewal is refused before signing.
    let label =
        matter_est::issuance::load_label(server.env.config().label("narrow").unwrap()).unwrap();
    let (old_key, point) = signer::generate_p256().unwrap();
    let serial = matter_est::profile::random_serial().unwrap();
    let keep = matter_est::profile::DacSubject {
        cn: "lamp-2".into(),
        vid: matter_est::matter::Vid::new(0xFFF1).unwrap(),
        pid: matter_est::matter::Pid::new(0x8000).unwrap(),
    };
    let old = label
        .profile
        .build(
            &label.pai,
            &keep,
            &serial,
            &point,
            label.signer.as_ref(),
            asn1::now(),
        )
        .unwrap();
    put_on_record(&server, &label, &keep, &old.der);
    let mut c = as_identity(&server, vec![old.der.clone()], &old_key).await;
    let r = c
        .enroll(
            "/.well-known/est/narrow/simplereenroll",
            &csr_with(&old_key, "lamp-2", "8000"),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text()
            .contains("PID 8000 is not allowed on label \"narrow\""),
        "{}",
        r.text()
    );
    assert_eq!(server.ledger.count("narrow").unwrap(), 1, "nothing new");

    // On its own label the first DAC renews.
    let mut c = as_identity(&server, vec![dac], &key).await;
    dac_of(
        &server,
        &c.enroll(REENROLL, &csr_with(&key, "lamp-1", "8000")).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_of_one_lineage_are_rate_limited_from_its_previous_renewal() {
    let server = TestServer::start(|t| {
        common::label_keys(t, "quota = 3") + "\n[labels.dev.renewal]\nmin_interval_secs = 3\n"
    })
    .await;
    let (key0, der) = device(Some("renewer"), "8000");
    let dac0 = dac_of(&server, &server.gateway().await.enroll(ENROLL, &der).await);
    // A lineage's first renewal is never held back.
    let (key1, _) = signer::generate_p256().unwrap();
    let mut c = as_identity(&server, vec![dac0], &key0).await;
    let dac1 = dac_of(
        &server,
        &c.enroll(REENROLL, &csr_with(&key1, "renewer", "8000"))
            .await,
    );
    // The second, right after: 429 with Retry-After, nothing signed or recorded.
    let mut c = as_identity(&server, vec![dac1.clone()], &key1).await;
    let (key2, _) = signer::generate_p256().unwrap();
    let r = c
        .enroll(REENROLL, &csr_with(&key2, "renewer", "8000"))
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&wait), "Retry-After {wait}");
    assert!(
        r.text().contains("renewal.min_interval_secs"),
        "{}",
        r.text()
    );
    assert_eq!(server.ledger.count("dev").unwrap(), 2);
    // Once the interval has passed, it renews.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)).await;
    dac_of(
        &server,
        &c.enroll(REENROLL, &csr_with(&key2, "renewer", "8000"))
            .await,
    );
    // Renewals count against the quota by default: 3 of 3 used now.
    let (_, der) = device(Some("one-too-many"), "8000");
    assert_eq!(
        server.gateway().await.enroll(ENROLL, &der).await.status,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_outside_the_quota_when_the_label_says_so() {
    let server = TestServer::start(|t| {
        common::label_keys(t, "quota = 1")
            + "\n[labels.dev.renewal]\ncounts_against_quota = false\n"
    })
    .await;
    let (key, der) = device(Some("kept"), "8000");
    let dac = dac_of(&server, &server.gateway().await.enroll(ENROLL, &der).await);
    let mut c = as_identity(&server, vec![dac], &key).await;
    dac_of(
        &server,
        &c.enroll(REENROLL, &csr_with(&key, "kept", "8000")).await,
    );
    assert_eq!(
        server.ledger.count("dev").unwrap(),
        1,
        "the renewal is not counted"
    );
    let (_, der) = device(Some("new-device"), "8000");
    let r = server.gateway().await.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("quota"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_enrollment_gets_the_dac_on_record_for_every_credential() {
    let server = TestServer::start(|t| common::label_keys(t, "quota = 4")).await;

    // A one-time token, spent, then the same CSR with the same token: the DAC on record.
    let (id, secret) =
        matter_est::policy::create_token(server.ledger.as_ref(), "dev", None).unwrap();
    let (tkey, tder) = device(Some("tok-device"), "8000");
    let mut anon = server.anonymous().await;
    let first = dac_of(
        &server,
        &token_post(&mut anon, ENROLL, &id, &secret, &tder).await,
    );
    let again = dac_of(
        &server,
        &token_post(&mut anon, ENROLL, &id, &secret, &tder).await,
    );
    assert_eq!(first, again);
    // Only the same key and subject qualify.
    let r = token_post(
        &mut anon,
        ENROLL,
        &id,
        &secret,
        &csr_with(&tkey, "other", "8000"),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("already used"), "{}", r.text());
    let (_, new_key) = device(Some("tok-device"), "8000");
    let r = token_post(&mut anon, ENROLL, &id, &secret, &new_key).await;
    assert_eq!(r.status, 401, "{}", r.text());

    // A renewal retried with the same CSR: the renewed DAC on record, not "renew with the
    // newest DAC"; another CSR from the old DAC stays refused.
    let mut c = as_identity(&server, vec![first.clone()], &tkey).await;
    let (nkey, _) = signer::generate_p256().unwrap();
    let renew_csr = csr_with(&nkey, "tok-device", "8000");
    let renewed = dac_of(&server, &c.enroll(REENROLL, &renew_csr).await);
    let mut c = as_identity(&server, vec![first.clone()], &tkey).await;
    assert_eq!(
        dac_of(&server, &c.enroll(REENROLL, &renew_csr).await),
        renewed
    );
    let r = c
        .enroll(REENROLL, &csr_with(&tkey, "tok-device", "8000"))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("renew with the newest DAC"),
        "{}",
        r.text()
    );

    // A CSR without a CN (the server names the device): the same CSR again gets the same DAC.
    let (_, no_cn) = device(None, "8000");
    let mut gw = server.gateway().await;
    let a = dac_of(&server, &gw.enroll(ENROLL, &no_cn).await);
    assert_eq!(dac_of(&server, &gw.enroll(ENROLL, &no_cn).await), a);

    // The quota is full (4 of 4): every recorded enrollment can still be delivered, a new one
    // is refused.
    let (_, last) = device(Some("last-slot"), "8000");
    let last_dac = dac_of(&server, &gw.enroll(ENROLL, &last).await);
    assert_eq!(server.ledger.count("dev").unwrap(), 4);
    assert_eq!(dac_of(&server, &gw.enroll(ENROLL, &last).await), last_dac);
    assert_eq!(dac_of(&server, &gw.enroll(ENROLL, &no_cn).await), a);
    let (_, over) = device(Some("over-quota"), "8000");
    let r = gw.enroll(ENROLL, &over).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("quota"), "{}", r.text());
    assert_eq!(server.ledger.count("dev").unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cn_rules_and_legacy_tags_are_refused_before_signing() {
    let server = TestServer::start(|t| t).await;
    let mut gw = server.gateway().await;
    let cases = [
        ("", "may not be empty"),
        ("lamp\u{7}", "control character U+0007"),
        ("lamp\u{202E}gnp.exe", "U+202E"),
        ("lamp\u{200B}1", "U+200B"),
    ];
    for (cn, rule) in cases {
        let (_, der) = device(Some(cn), "8000");
        let r = gw.enroll(ENROLL, &der).await;
        assert_eq!(r.status, 400, "{cn:?}: {}", r.text());
        assert!(r.text().contains(rule), "{cn:?}: {}", r.text());
    }
    // A legacy tag that contradicts the VID the DAC would carry (the PAI's, since the CSR has
    // no VID attribute): 400 before signing, not a 500 from the self-check.
    let (pkcs8, _) = signer::generate_p256().unwrap();
    let key = KeySigner::from_pkcs8(&pkcs8).unwrap();
    let der =
        matter_est::csr::build(&subject(Some("lamp Mvid:FFF2"), None, Some("8000")), &key).unwrap();
    let r = gw.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("Mvid:FFF2 but the DAC's VID is FFF1"),
        "{}",
        r.text()
    );
    // The same for the PID: the CSR's PID attribute says 8000, its CN says Mpid:8001.
    let der =
        matter_est::csr::build(&subject(Some("lamp Mpid:8001"), None, Some("8000")), &key).unwrap();
    let r = gw.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("Mpid:8001"), "{}", r.text());
    assert_eq!(server.ledger.count("dev").unwrap(), 0);
}

/// The development client CA: its subject, key id and signer.
struct ClientCa {
    subject: Vec<u8>,
    point: [u8; 65],
    signer: KeySigner,
}

impl ClientCa {
    fn dev(server: &TestServer) -> Self {
        let pem = std::fs::read_to_string(server.env.path(dev::files::CLIENT_CA_KEY)).unwrap();
        let (_, pkcs8) = der::pem::decode_vec(pem.as_bytes()).unwrap();
        let ca = cert::Parsed::from_der(
            &matter_est::issuance::read_cert(&server.env.path(dev::files::CLIENT_CA_CERT)).unwrap(),
        )
        .unwrap();
        Self {
            subject: ca.subject_der,
            point: ca.public_key,
            signer: KeySigner::from_pkcs8(&pkcs8).unwrap(),
        }
    }

    /// A self-signed CA with the given pathLenConstraint.
    fn new_with(cn: &str, path_len: Option<Option<u8>>) -> (Self, Vec<u8>) {
        let (pkcs8, point) = signer::generate_p256().unwrap();
        let ca = Self {
            subject: dev::name(&[(oid::COMMON_NAME, cn)]),
            point,
            signer: KeySigner::from_pkcs8(&pkcs8).unwrap(),
        };
        let der = ca.issue(
            &ca.subject.clone(),
            &point,
            asn1::now() + 3600,
            vec![
                cert::basic_constraints_ext(path_len),
                cert::key_usage_ext(key_usage::SIGN_AND_CERT_SIGN),
            ],
        );
        (ca, der)
    }

    fn issue(
        &self,
        subject: &[u8],
        point: &[u8; 65],
        not_after: i64,
        mut extensions: Vec<Vec<u8>>,
    ) -> Vec<u8> {
        extensions.push(cert::subject_key_id_ext(&cert::key_id(point)));
        extensions.push(cert::authority_key_id_ext(&cert::key_id(&self.point)));
        cert::build_and_sign(
            &CertFields {
                serial: &matter_est::profile::random_serial().unwrap(),
                issuer: &self.subject,
                not_before: asn1::now() - 60,
                not_after,
                subject,
                public_key: point,
                extensions: &extensions,
            },
            &self.signer,
        )
        .unwrap()
    }

    /// A gateway certificate for `cn` with `sans` (GeneralName DER), keyUsage `ku`; returns its
    /// DER and key.
    fn gateway(&self, cn: &str, sans: &[Vec<u8>], ku: &[u8], not_after: i64) -> (Vec<u8>, Vec<u8>) {
        let (pkcs8, point) = signer::generate_p256().unwrap();
        let mut exts = vec![cert::basic_constraints_ext(None), cert::key_usage_ext(ku)];
        exts.push(asn1::extension(
            oid::EXT_KEY_USAGE,
            false,
            &asn1::tlv(
                tag::SEQUENCE,
                &[&asn1::tlv(tag::OID, &[oid::KP_CLIENT_AUTH])],
            ),
        ));
        if !sans.is_empty() {
            let refs: Vec<&[u8]> = sans.iter().map(Vec::as_slice).collect();
            exts.push(asn1::extension(
                oid::SUBJECT_ALT_NAME,
                false,
                &asn1::tlv(tag::SEQUENCE, &refs),
            ));
        }
        let der = self.issue(
            &dev::name(&[(oid::COMMON_NAME, cn)]),
            &point,
            not_after,
            exts,
        );
        (der, pkcs8)
    }

    /// A CA named `subject` (DER) with a fresh key: an impostor when the name is taken.
    fn with_subject(subject: Vec<u8>) -> Self {
        let (pkcs8, point) = signer::generate_p256().unwrap();
        Self {
            subject,
            point,
            signer: KeySigner::from_pkcs8(&pkcs8).unwrap(),
        }
    }

    /// An intermediate CA under this one, with keyUsage `ku`.
    fn intermediate(&self, cn: &str, ku: &[u8]) -> (Self, Vec<u8>) {
        let sub = Self::with_subject(dev::name(&[(oid::COMMON_NAME, cn)]));
        let point = sub.point;
        let der = self.issue(
            &sub.subject.clone(),
            &point,
            asn1::now() + 3600,
            vec![
                cert::basic_constraints_ext(Some(None)),
                cert::key_usage_ext(ku),
            ],
        );
        (sub, der)
    }
}

fn dns(name: &str) -> Vec<u8> {
    asn1::tlv(0x82, &[name.as_bytes()])
}
fn uri(name: &str) -> Vec<u8> {
    asn1::tlv(0x86, &[name.as_bytes()])
}
fn email(name: &str) -> Vec<u8> {
    asn1::tlv(0x81, &[name.as_bytes()])
}
fn ip(octets: &[u8]) -> Vec<u8> {
    asn1::tlv(0x87, &[octets])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_validity_is_checked_per_request() {
    let server = TestServer::start(|t| t).await;
    let ca = ClientCa::dev(&server);
    let expires = asn1::now() + 3;
    let (gw, key) = ca.gateway(
        dev::DEV_GATEWAY_CN,
        &[],
        key_usage::DIGITAL_SIGNATURE,
        expires,
    );
    // One client configuration, so that a second connection resumes the first one's TLS
    // session (rustls keeps tickets per configuration).
    let config = server.client_config(
        Some((
            vec![CertificateDer::from(gw)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )),
        ALL,
    );
    let mut c = Client::connect(server.addr, config.clone()).await.unwrap();
    let (_, der) = device(Some("before-expiry"), "8000");
    dac_of(&server, &c.enroll(ENROLL, &der).await);
    // The certificate expires while the keep-alive connection stays open.
    while asn1::now() <= expires {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, der) = device(Some("after-expiry"), "8000");
    let r = c.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("expired at"), "{}", r.text());
    // A resumed session does not bring the expired certificate back to life.
    let mut resumed = Client::connect(server.addr, config).await.unwrap();
    let r = resumed.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("expired at"), "{}", r.text());
    assert_eq!(server.ledger.count("dev").unwrap(), 1);
}

/// Item 3, the DAC case: a DAC with a finite validity that expires during a keep-alive
/// connection stops authorising its renewal from that moment, and a resumed session does not
/// revive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dac_validity_is_checked_per_request() {
    let server = TestServer::start(|t| t).await;
    // A DAC of label dev that expires in 4 s (no profile issues one that short: validity is
    // in days), signed by the PAI's key and put on record as the server would have.
    let label =
        matter_est::issuance::load_label(server.env.config().label("dev").unwrap()).unwrap();
    let (key, point) = signer::generate_p256().unwrap();
    let keep = matter_est::profile::DacSubject {
        cn: "short-lived".into(),
        vid: matter_est::matter::Vid::new(0xFFF1).unwrap(),
        pid: matter_est::matter::Pid::new(0x8000).unwrap(),
    };
    let expires = asn1::now() + 4;
    let serial = matter_est::profile::random_serial().unwrap();
    let der = cert::build_and_sign(
        &CertFields {
            serial: &serial,
            issuer: &label.pai.subject_der,
            not_before: asn1::now() - 60,
            not_after: expires,
            subject: &keep.to_der(),
            public_key: &point,
            extensions: &[
                cert::basic_constraints_ext(None),
                cert::key_usage_ext(key_usage::DIGITAL_SIGNATURE),
                cert::subject_key_id_ext(&cert::key_id(&point)),
                cert::authority_key_id_ext(&label.pai.skid),
            ],
        },
        label.signer.as_ref(),
    )
    .unwrap();
    put_on_record(&server, &label, &keep, &der);
    let config = server.client_config(
        Some((
            vec![CertificateDer::from(der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
        )),
        ALL,
    );
    // Before it expires, it authorises its renewal (to a new key: the same key and subject
    // would be answered with the DAC on record).
    let mut c = Client::connect(server.addr, config.clone()).await.unwrap();
    let (new_key, _) = signer::generate_p256().unwrap();
    dac_of(
        &server,
        &c.enroll(REENROLL, &csr_with(&new_key, "short-lived", "8000"))
            .await,
    );
    let (later_key, _) = signer::generate_p256().unwrap();
    let csr = csr_with(&later_key, "short-lived", "8000");
    // It expires while the keep-alive connection stays open.
    while asn1::now() <= expires {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.enroll(REENROLL, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("expired at"), "{}", r.text());
    let mut resumed = Client::connect(server.addr, config).await.unwrap();
    let r = resumed.enroll(REENROLL, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("expired at"), "{}", r.text());
    assert_eq!(
        server.ledger.count("dev").unwrap(),
        2,
        "nothing after the expiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rules_match_the_name_type_they_say() {
    let server = TestServer::start(|t| {
        t.replace(
            "[[labels.dev.clients]]\nmatch = \"cn:gw-line-1\"\npids = \"any\"",
            "[[labels.dev.clients]]\nmatch = \"san:gw.factory.example\"\npids = [\"8001\"]\n\
             [[labels.dev.clients]]\nmatch = \"uri:urn:factory:gw-2\"\npids = [\"8002\"]\n\
             [[labels.dev.clients]]\nmatch = \"email:line3@Factory.Example\"\npids = [\"8003\"]\n\
             [[labels.dev.clients]]\nmatch = \"ip:192.0.2.7\"\npids = [\"8004\"]",
        )
    })
    .await;
    let ca = ClientCa::dev(&server);
    let later = asn1::now() + 3600;
    let ds = key_usage::DIGITAL_SIGNATURE;
    let cases: [(Vec<u8>, &str); 4] = [
        (dns("GW.factory.example"), "8001"),
        (uri("urn:factory:gw-2"), "8002"),
        (email("line3@factory.example"), "8003"),
        (ip(&[192, 0, 2, 7]), "8004"),
    ];
    for (i, (san, pid)) in cases.into_iter().enumerate() {
        let (cert, key) = ca.gateway(&format!("gw-{i}"), &[san], ds, later);
        let mut c = as_identity(&server, vec![cert], &key).await;
        let (_, der) = device(Some(&format!("typed-{i}")), pid);
        dac_of(&server, &c.enroll(ENROLL, &der).await);
    }
    // A URI (or an email address) whose text equals the `san:` rule's is not a dNSName.
    for san in [uri("gw.factory.example"), email("gw.factory.example")] {
        let (cert, key) = ca.gateway("gw-wrong-type", &[san], ds, later);
        let mut c = as_identity(&server, vec![cert], &key).await;
        let (_, der) = device(Some("wrong-type"), "8001");
        let r = c.enroll(ENROLL, &der).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("matches no client rule"), "{}", r.text());
    }
    assert_eq!(server.ledger.count("dev").unwrap(), 4);
}

/// Whether the server refuses `chain` for an enrollment: at the handshake or with 403.
async fn refused(server: &TestServer, chain: Vec<Vec<u8>>, key: &[u8], cn: &str) -> bool {
    let identity = (
        chain.into_iter().map(CertificateDer::from).collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
    );
    let Ok(mut c) = Client::connect(server.addr, server.client_config(Some(identity), ALL)).await
    else {
        return true;
    };
    let (_, der) = device(Some(cn), "8000");
    match c
        .request(
            "POST",
            ENROLL,
            &[("Content-Type", "application/pkcs10")],
            b64(&der).into_bytes(),
        )
        .await
    {
        Ok(r) if r.status == 200 => false,
        Ok(r) => {
            assert_eq!(r.status, 403, "{}", r.text());
            assert!(
                r.text().contains("not issued by a CA trusted"),
                "{}",
                r.text()
            );
            true
        }
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chains_honour_key_usage_and_the_anchors_path_length() {
    // Two more anchors: one allowing no intermediate below it (pathLen 0), one allowing one.
    let (strict, strict_der) = ClientCa::new_with("strict anchor", Some(Some(0)));
    let (open, open_der) = ClientCa::new_with("open anchor", Some(Some(1)));
    let env = common::DevEnv::new(|t| {
        t.replace("127.0.0.1:8443", "127.0.0.1:0").replace(
            "client_cas = [\"clients/ca.pem\"]",
            "client_cas = [\"clients/ca.pem\", \"clients/more.pem\"]",
        )
    });
    let pem: String = [strict_der, open_der]
        .iter()
        .map(|d| der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, d).unwrap())
        .collect();
    std::fs::write(env.path("clients/more.pem"), pem).unwrap();
    let server = TestServer::start_env(env).await;
    let later = asn1::now() + 3600;
    let ds = key_usage::DIGITAL_SIGNATURE;
    let gw = dev::DEV_GATEWAY_CN;

    // One intermediate (with keyCertSign) under the anchor that allows one: accepted.
    let (mid, mid_der) = open.intermediate("open intermediate", key_usage::CERT_SIGN);
    let (leaf, key) = mid.gateway(gw, &[], ds, later);
    assert!(!refused(&server, vec![leaf, mid_der], &key, "chain-ok").await);
    // The same under the anchor whose pathLenConstraint is 0: refused.
    let (mid, mid_der) = strict.intermediate("strict intermediate", key_usage::CERT_SIGN);
    let (leaf, key) = mid.gateway(gw, &[], ds, later);
    assert!(refused(&server, vec![leaf, mid_der], &key, "too-deep").await);
    // An intermediate whose keyUsage lacks keyCertSign: refused.
    let (mid, mid_der) = open.intermediate("signing-only intermediate", ds);
    let (leaf, key) = mid.gateway(gw, &[], ds, later);
    assert!(refused(&server, vec![leaf, mid_der], &key, "no-cert-sign").await);
    // A leaf whose keyUsage lacks digitalSignature: refused.
    let (leaf, key) = ClientCa::dev(&server).gateway(gw, &[], key_usage::CERT_SIGN, later);
    assert!(refused(&server, vec![leaf], &key, "no-digital-signature").await);

    // Impostors that share a name with a certificate on the real path cannot shorten it: the
    // checks run on the path webpki verified, not on one chained by names.
    // Two intermediates under the anchor that allows one, with an impostor of the lower one
    // (named as if the anchor issued it, signed by another key) presented first.
    let (mid1, mid1_der) = open.intermediate("open mid 1", key_usage::CERT_SIGN);
    let (mid2, mid2_der) = mid1.intermediate("open mid 2", key_usage::CERT_SIGN);
    let (leaf, key) = mid2.gateway(gw, &[], ds, later);
    assert!(
        refused(
            &server,
            vec![leaf.clone(), mid2_der.clone(), mid1_der.clone()],
            &key,
            "two-deep"
        )
        .await
    );
    let impostor = ClientCa::with_subject(open.subject.clone()).issue(
        &mid2.subject,
        &mid2.point,
        later,
        vec![
            cert::basic_constraints_ext(Some(None)),
            cert::key_usage_ext(key_usage::CERT_SIGN),
        ],
    );
    assert!(
        refused(
            &server,
            vec![leaf, impostor, mid2_der, mid1_der],
            &key,
            "impostor-shortcut"
        )
        .await
    );
    // An intermediate without keyCertSign, with an impostor (with keyCertSign) of it first.
    let (mid, mid_der) = open.intermediate("signing-only again", ds);
    let (leaf, key) = mid.gateway(gw, &[], ds, later);
    let impostor = ClientCa::with_subject(open.subject.clone()).issue(
        &mid.subject,
        &mid.point,
        later,
        vec![
            cert::basic_constraints_ext(Some(None)),
            cert::key_usage_ext(key_usage::CERT_SIGN),
        ],
    );
    assert!(refused(&server, vec![leaf, impostor, mid_der], &key, "impostor-ku").await);
    assert_eq!(server.ledger.count("dev").unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_connection_slot() {
    let server = TestServer::start(|t| {
        common::server_keys(
            t,
            "max_connections = 20\nmax_connections_per_peer = 8\nhandshake_timeout_secs = 3",
        )
    })
    .await;
    // 25 idle TCP connections from 127.0.0.1: 8 are held (until the handshake deadline), the
    // rest are closed at once.
    let mut idle = Vec::new();
    for _ in 0..25 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let mut closed = 0;
    for s in &mut idle {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 17, "closed at once, of 25");
    // Another peer address connects and enrolls at once.
    let start = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (c, k) = identity_from_files(
        &server.env.path(dev::files::GATEWAY_CERT),
        &server.env.path(dev::files::GATEWAY_KEY),
    );
    let mut other = Client::over(tcp, server.client_config(Some((c, k)), ALL))
        .await
        .unwrap();
    let (_, der) = device(Some("other-peer"), "8000");
    dac_of(&server, &other.enroll(ENROLL, &der).await);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "served after {:?}",
        start.elapsed()
    );
    // The held idle connections never started TLS: closed at the handshake deadline.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for s in &mut idle {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        .expect("closed, not hanging");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
}

/// `server.max_new_connections_per_peer_per_sec`: a peer opening connections faster than its
/// rate, past its burst (`max_connections_per_peer`), has them closed before TLS; another peer
/// is served at once, and the first one again once its bucket refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_flood_handshakes() {
    let server = TestServer::start(|t| {
        common::server_keys(
            t,
            "max_connections_per_peer = 4\nmax_new_connections_per_peer_per_sec = 2",
        )
    })
    .await;
    let anon = server.client_config(None, ALL);
    let handshake = |from: &'static str| {
        let anon = anon.clone();
        let addr = server.addr;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let tcp = socket.connect(addr).await.unwrap();
            matches!(
                tokio::time::timeout(Duration::from_secs(2), Client::over(tcp, anon)).await,
                Ok(Ok(_))
            )
        }
    };
    // 12 handshakes one after another from 127.0.0.1 (each connection closed before the next).
    let start = Instant::now();
    let mut done = 0;
    for _ in 0..12 {
        if handshake("127.0.0.1").await {
            done += 1;
        }
    }
    let allowed = 4 + (2.0 * start.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        (4..=allowed).contains(&done),
        "{done} of 12 handshakes completed in {:?}; the burst is 4, the rate 2/s",
        start.elapsed()
    );
    // Another peer address is served at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (c, k) = identity_from_files(
        &server.env.path(dev::files::GATEWAY_CERT),
        &server.env.path(dev::files::GATEWAY_KEY),
    );
    let mut other = Client::over(tcp, server.client_config(Some((c, k)), ALL))
        .await
        .unwrap();
    let (_, der) = device(Some("not-flooding"), "8000");
    dac_of(&server, &other.enroll(ENROLL, &der).await);
    // The flooding peer's bucket refills at 2/s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(handshake("127.0.0.1").await, "refilled after a second");
}

/// pyca/cryptography's PKCS#7 reader parses strict DER and warns (and says it will refuse) when
/// a `SET OF` is not sorted; with warnings as errors it is the independent check that the enroll
/// and cacerts responses are DER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_der_for_a_strict_pkcs7_parser() {
    let server = TestServer::start(|t| t).await;
    let mut gw = server.gateway().await;
    let mut bodies = Vec::new();
    for i in 0..6 {
        let (_, der) = device(Some(&format!("strict-der-{i}")), "8000");
        let r = gw.enroll(ENROLL, &der).await;
        assert_eq!(r.status, 200, "{}", r.text());
        bodies.push(r.body);
    }
    bodies.push(gw.get("/.well-known/est/dev/cacerts").await.body);
    let mut files = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let text: String = String::from_utf8_lossy(body).split_whitespace().collect();
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).unwrap();
        let path = server.env.path(&format!("response-{i}.p7b"));
        std::fs::write(&path, der).unwrap();
        files.push(path);
    }
    let out = std::process::Command::new("python3")
        .args([
            "-W",
            "error",
            "-c",
            "import sys\n\
             from cryptography.hazmat.primitives.serialization import pkcs7\n\
             for f in sys.argv[1:]:\n    \
                 with open(f, 'rb') as fh:\n        \
                     certs = pkcs7.load_der_pkcs7_certificates(fh.read())\n    \
                 assert len(certs) == 2, (f, len(certs))\n\
             print('ok', len(sys.argv) - 1)",
        ])
        .args(&files)
        .output()
        .unwrap();
    common::assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 7");
}

/// A reload (SIGHUP) that removes a client CA stops its gateways at once, on connections they
/// already hold too: a connection's cached chain verification belongs to the policy it was made
/// under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_a_client_ca_stops_its_open_connections() {
    let server = TestServer::start(|t| t).await;
    let mut gw = server.gateway().await;
    let (_, der) = device(Some("before-ca-swap"), "8000");
    dac_of(&server, &gw.enroll(ENROLL, &der).await);
    let (_, other) = ClientCa::new_with("another gateway CA", Some(None));
    std::fs::write(
        server.env.path("clients/other.pem"),
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &other).unwrap(),
    )
    .unwrap();
    let path = server.env.path(dev::files::CONFIG);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("clients/ca.pem", "clients/other.pem")).unwrap();
    let config = server.env.config();
    let labels = matter_est::issuance::Issuer::load(&config).unwrap();
    server
        .running
        .as_ref()
        .unwrap()
        .reload(&config, labels)
        .unwrap();
    let (_, der) = device(Some("after-ca-swap"), "8000");
    let r = gw.enroll(ENROLL, &der).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("not issued by a CA trusted"),
        "{}",
        r.text()
    );
    assert_eq!(server.ledger.count("dev").unwrap(), 1);
}
