//! A stand-in EST server over real TLS on loopback, for answers matter-est does not give: held
//! requests (202), certificates in another order, the DAC alone, certificates that are not the
//! DAC asked for. It signs with the development PAI, so what it returns chains like a real DAC.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // reason: test helpers; not every test file uses every helper

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use matter_est::issuance::{IssueOptions, Issuer};
use matter_est::profile::{cert, dev};

use crate::common::DevEnv;

pub type Response = hyper::Response<Full<Bytes>>;

/// The requests a stand-in server received, in order: (path, body).
pub type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A running stand-in server.
pub struct Fake {
    pub port: u16,
    pub requests: Requests,
}

impl Fake {
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The bodies of the requests to `op` (e.g. "simpleenroll").
    pub fn bodies(&self, op: &str) -> Vec<Vec<u8>> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path.ends_with(&format!("/{op}")))
            .map(|(_, body)| body.clone())
            .collect()
    }
}

/// Serves `answer(n, path, body)` to the n-th request (from 0), on a thread that may block, with
/// the development TLS server certificate.
pub async fn serve(
    env: &DevEnv,
    answer: impl Fn(usize, &str, &[u8]) -> Response + Send + Sync + 'static,
) -> Fake {
    let tls = matter_est::tls::server_config(
        &env.path(dev::files::SERVER_CERT),
        &env.path(dev::files::SERVER_KEY),
        &[],
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Requests::default();
    let answer = Arc::new(answer);
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen, answer) = (acceptor.clone(), seen.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (seen, answer) = (seen.clone(), answer.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes().to_vec();
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push((path.clone(), body.clone()));
                            seen.len() - 1
                        };
                        let resp = tokio::task::spawn_blocking(move || answer(n, &path, &body))
                            .await
                            .unwrap();
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Fake { port, requests }
}

/// 200 with a certs-only PKCS#7 of `certs` in the order given (matter-est's encoder).
pub fn certs_only(certs: &[&[u8]]) -> Response {
    pkcs7(&matter_est::est::wire::certs_only(certs))
}

/// 200 with `der` (a certs-only PKCS#7) as the body, base64 wrapped.
pub fn pkcs7(der: &[u8]) -> Response {
    hyper::Response::builder()
        .status(200)
        .header(
            "Content-Type",
            "application/pkcs7-mime; smime-type=certs-only",
        )
        .header("Content-Transfer-Encoding", "base64")
        .body(Full::new(Bytes::from(
            matter_est::est::wire::base64_wrapped(der),
        )))
        .unwrap()
}

/// 202: held for approval, ask again after `secs`.
pub fn held(secs: u64) -> Response {
    hyper::Response::builder()
        .status(202)
        .header("Retry-After", secs.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A status with a text body.
pub fn status(code: u16, text: &str) -> Response {
    hyper::Response::builder()
        .status(code)
        .body(Full::new(Bytes::from(text.to_string())))
        .unwrap()
}

/// The development PKI's issuing side: real DACs, and certificates a DAC profile would refuse.
pub struct Pki {
    issuer: Issuer,
    pub pai: Vec<u8>,
    pub paa: Vec<u8>,
}

impl Pki {
    pub fn new(env: &DevEnv) -> Self {
        let (issuer, _) = env.issuer();
        Self {
            issuer,
            pai: env.pai_der(),
            paa: matter_est::issuance::read_cert(&env.path(dev::files::PAA_CERT)).unwrap(),
        }
    }

    /// A DAC for the CSR body, issued by matter-est's issuance on the label "dev".
    pub fn dac(&self, csr_body: &[u8]) -> Vec<u8> {
        let req = matter_est::csr::parse(csr_body).unwrap();
        self.issuer
            .issue("dev", &req, &IssueOptions::default())
            .unwrap()
            .dac
            .der
    }

    /// A certificate the PAI signs for `subject` (a DER Name) and `public_key`, without the DAC
    /// profile's rules.
    pub fn sign(&self, subject: &[u8], public_key: &[u8; 65]) -> Vec<u8> {
        let label = self.issuer.label("dev").unwrap();
        let now = matter_est::asn1::now();
        cert::build_and_sign(
            &cert::CertFields {
                serial: &matter_est::profile::random_serial().unwrap(),
                issuer: &label.pai.subject_der,
                not_before: now - 3600,
                not_after: matter_est::asn1::NO_EXPIRY,
                subject,
                public_key,
                extensions: &[
                    cert::basic_constraints_ext(None),
                    cert::key_usage_ext(cert::key_usage::DIGITAL_SIGNATURE),
                ],
            },
            label.signer.as_ref(),
        )
        .unwrap()
    }

    /// A certificate for the CSR body's own subject and key, signed by the PAI (a renewal: the
    /// ledger would refuse a second DAC for the subject through [`Pki::dac`]).
    pub fn same_subject(&self, csr_body: &[u8]) -> Vec<u8> {
        let req = matter_est::csr::parse(csr_body).unwrap();
        self.sign(&der::Encode::to_der(&req.subject).unwrap(), &req.public_key)
    }
}

/// The public key of a CSR body.
pub fn csr_key(csr_body: &[u8]) -> [u8; 65] {
    matter_est::csr::parse(csr_body).unwrap().public_key
}

/// Asserts that the PEM certificate at `cert` certifies the PKCS#8 PEM key at `key`, and returns
/// the certificate.
pub fn assert_certifies(cert: &Path, key: &Path) -> x509_cert::Certificate {
    let pem = std::fs::read(cert).unwrap();
    let (_, der) = der::pem::decode_vec(&pem).unwrap();
    let parsed: x509_cert::Certificate = der::Decode::from_der(&der).unwrap();
    let (_, pkcs8) = der::pem::decode_vec(&std::fs::read(key).unwrap()).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    assert_eq!(
        ring::signature::KeyPair::public_key(&pair).as_ref(),
        parsed
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes(),
        "{} certifies the key in {}",
        cert.display(),
        key.display()
    );
    parsed
}

/// The PEM certificates of a file, as DER.
pub fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(path).unwrap();
    x509_cert::Certificate::load_pem_chain(&text)
        .unwrap()
        .iter()
        .map(|c| der::Encode::to_der(c).unwrap())
        .collect()
}

/// The permission bits of a file.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `est-client` (the real binary) pointed at `url`, trusting the development TLS CA.
pub fn est_client(env: &DevEnv, url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_est-client"));
    cmd.args(["--server", url, "--cacert"])
        .arg(env.path(dev::files::TLS_CA_CERT));
    cmd
}

/// `est-client enroll` against `url`: a new key and CSR for `id` (VID FFF1, PID 8000), written
/// to the prefix `out`.
pub fn enroll(env: &DevEnv, url: &str, id: &str, out: &Path) -> std::process::Command {
    let mut cmd = est_client(env, url);
    cmd.args([
        "enroll",
        "--vid",
        "FFF1",
        "--pid",
        "8000",
        "--device-id",
        id,
    ])
    .arg("--out")
    .arg(out);
    cmd
}

/// `est-client gateway` against `url` for the devices `ids` (VID FFF1, PID 8000), to the
/// directory `out`; the device list is written next to the nearest existing directory above it.
pub fn gateway(env: &DevEnv, url: &str, ids: &[&str], out: &Path) -> std::process::Command {
    let above = out.ancestors().find(|d| d.is_dir()).unwrap();
    let name = out.file_name().unwrap().to_string_lossy();
    let devices = above.join(format!("{name}.csv"));
    std::fs::write(&devices, ids.join("\n")).unwrap();
    let mut cmd = est_client(env, url);
    cmd.args(["gateway", "--vid", "FFF1", "--pid", "8000", "--devices"])
        .arg(devices)
        .arg("--out")
        .arg(out);
    cmd
}

/// Runs a command to its end, off the test's async threads.
pub async fn run(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}
