//! A real server on loopback and a real TLS + HTTP/1.1 client for the EST tests.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use matter_est::profile::dev;
use matter_est::server::{self, Running};
use matter_est::store::Ledger;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::DevEnv;

pub struct TestServer {
    pub env: DevEnv,
    pub ledger: Arc<dyn Ledger>,
    pub running: Option<Running>,
    pub addr: SocketAddr,
}

impl TestServer {
    /// Starts `matter-est serve` on 127.0.0.1:<free port> over a fresh development PKI, the
    /// config edited by `edit`.
    pub async fn start(edit: impl FnOnce(String) -> String) -> Self {
        Self::start_env(DevEnv::new(edit)).await
    }

    /// Starts the server over `env` (its config's listen address is moved to a free port).
    pub async fn start_env(env: DevEnv) -> Self {
        let path = env.path(dev::files::CONFIG);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("127.0.0.1:8443", "127.0.0.1:0")).unwrap();
        let config = env.config();
        let ledger = matter_est::store::open(&config).unwrap();
        let issuer = Arc::new(matter_est::issuance::Issuer::new(&config, ledger.clone()).unwrap());
        let running = server::start(&config, issuer).await.unwrap();
        let addr = running.addr;
        Self {
            env,
            ledger,
            running: Some(running),
            addr,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// A client trusting the dev TLS CA, with an optional client identity.
    pub fn client_config(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        client_config(&self.env.path(dev::files::TLS_CA_CERT), identity, versions)
    }

    pub fn gateway_identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        identity_from_files(
            &self.env.path(dev::files::GATEWAY_CERT),
            &self.env.path(dev::files::GATEWAY_KEY),
        )
    }

    pub async fn gateway(&self) -> Client {
        Client::connect(
            self.addr,
            self.client_config(Some(self.gateway_identity()), ALL),
        )
        .await
        .unwrap()
    }

    pub async fn anonymous(&self) -> Client {
        Client::connect(self.addr, self.client_config(None, ALL))
            .await
            .unwrap()
    }
}

/// A rustls client configuration trusting the CA certificates in `ca_pem`.
pub fn client_config(
    ca_pem: &std::path::Path,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

pub const ALL: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub fn identity_from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    (chain, PrivateKeyDer::from_pem_file(key).unwrap())
}

/// One keep-alive HTTP/1.1 connection over TLS.
pub struct Client {
    send: SendRequest<Full<Bytes>>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        Self::over(TcpStream::connect(addr).await?, config).await
    }

    /// TLS and HTTP/1.1 over an already connected socket (e.g. bound to another source
    /// address).
    pub async fn over(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let tls = TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Self { send })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> hyper::Result<Reply> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("Host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send.ready().await?;
        let resp = self
            .send
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[], Vec::new()).await.unwrap()
    }

    /// POST a DER CSR as EST requires: base64, application/pkcs10.
    pub async fn enroll(&mut self, path: &str, csr_der: &[u8]) -> Reply {
        let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, csr_der);
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/pkcs10")],
            body.into_bytes(),
        )
        .await
        .unwrap()
    }
}

/// The certificates of a base64 certs-only PKCS#7 body, parsed with the `cms` crate (an
/// implementation independent of ours), in the order they appear on the wire.
pub fn pkcs7_certs(body: &[u8]) -> Vec<Vec<u8>> {
    use der::{Decode, Encode};
    let text: String = String::from_utf8_lossy(body).split_whitespace().collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).unwrap();
    let ci = cms::content_info::ContentInfo::from_der(&der).unwrap();
    assert_eq!(
        ci.content_type,
        const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2")
    );
    let sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
    assert!(sd.signer_infos.0.is_empty(), "certs-only: no signers");
    let set: Vec<Vec<u8>> = sd
        .certificates
        .unwrap()
        .0
        .iter()
        .map(|c| match c {
            cms::cert::CertificateChoices::Certificate(c) => c.to_der().unwrap(),
            _ => panic!("not a certificate"),
        })
        .collect();
    // `der` sorts SET OF on decode; recover the wire order from positions in the body.
    let mut ordered = set;
    ordered.sort_by_key(|c| der.windows(c.len()).position(|w| w == c.as_slice()));
    // DER (X.690 §11.6): the wire order of a SET OF is ascending by encoding.
    assert!(
        ordered.windows(2).all(|w| w[0] <= w[1]),
        "the certificate SET OF is not sorted as DER requires"
    );
    ordered
}

/// The certificate of `certs` that is not `pai` (the issued DAC): found by content, never by
/// position, since a DER SET OF is sorted by encoding.
pub fn issued(certs: &[Vec<u8>], pai: &[u8]) -> Vec<u8> {
    assert!(certs.iter().any(|c| c == pai), "the PAI is in the response");
    certs
        .iter()
        .find(|c| c.as_slice() != pai)
        .expect("a DAC besides the PAI")
        .clone()
}
