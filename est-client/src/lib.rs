//! est-client: a reference EST (RFC 7030) client for Matter device makers.
//!
//! [`Client`] talks to any EST server over TLS 1.3/1.2 with explicit trust anchors (never the
//! system store, never "accept any"), an optional client certificate and optional HTTP Basic
//! credentials, on one keep-alive connection that is re-opened when the server closes it.
//! [`wire`] encodes what we send and decodes what real servers send; [`matter`] makes Matter DAC
//! keys and CSRs and checks the DAC returned; [`files`] keeps est-client's own files private.

pub mod files;
pub mod matter;
pub mod wire;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

/// Everything that can go wrong, named so a person knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "TLS with {server} failed: {reason} (is --cacert the CA that issued the server's certificate?)"
    )]
    Tls { server: String, reason: String },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("401 Unauthorized: {0}")]
    Unauthorized(String),
    #[error("403 Forbidden: {0}")]
    Forbidden(String),
    #[error("server answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("bad response: {0}")]
    BadResponse(String),
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error(
        "the server returned a certificate that is not the Matter DAC requested: {problem} (serial {serial}; --accept-non-matter keeps such a certificate)"
    )]
    NotMatter { serial: String, problem: String },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// Whether the same request, sent again unchanged, may succeed: the server was not reached or
    /// the connection was lost ([`Error::is_network`]), or the server answered that it cannot
    /// serve it now: a 5xx, 408 Request Timeout, 429 Too Many Requests (RFC 9110 §15.5.9, RFC 6585
    /// §4), or 202, the request held for approval (RFC 7030 §4.2.3). Anything else is permanent:
    /// the server refused the request itself (400, 401, 403 and the other 4xx) and will refuse it
    /// again, or something on this side must change first (a file, a certificate that is not the
    /// DAC asked for).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => matches!(status, 202 | 408 | 429 | 500..=599),
            e => e.is_network(),
        }
    }

    /// No HTTP answer: the server could not be reached, TLS failed, or the connection was lost.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Tls { .. } | Error::Http(_)
        )
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an enrollment returned.
#[derive(Debug)]
pub enum Enrolled {
    /// The certificate issued for the CSR's key, found by that key, and its chain.
    Issued(wire::Issued),
    /// 202: the server holds the request (manual approval); ask again after this long
    /// (RFC 7030 §4.2.3).
    Pending { retry_after: Duration },
}

/// How to reach and trust a server.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:port`; a path prefix is not used (EST paths are well-known).
    pub server: String,
    /// An optional label (RFC 7030 §3.2.2).
    pub label: Option<String>,
    pub tls: Arc<rustls::ClientConfig>,
    /// HTTP Basic user and password.
    pub basic: Option<(String, String)>,
}

impl ClientConfig {
    /// Trusts exactly the CA certificates in `cacert` (PEM); presents `identity` if given.
    pub fn new(
        server: &str,
        label: Option<&str>,
        cacert: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self> {
        let file_err = |path: &Path, problem: String| Error::File {
            path: path.display().to_string(),
            problem,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(cacert)
            .map_err(|e| file_err(cacert, e.to_string()))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| file_err(cacert, e.to_string()))?;
        if certs.is_empty() {
            return Err(file_err(cacert, "holds no PEM certificate".into()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| file_err(cacert, format!("not a usable trust anchor: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Usage(e.to_string()))?
        .with_root_certificates(roots);
        let tls = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file_err(cert, e.to_string()))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| file_err(cert, e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(&files::read_private(key)?)
                    .map_err(|e| file_err(key, format!("not a PEM private key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| file_err(cert, format!("certificate and key do not fit: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        let server = server.trim_end_matches('/').to_string();
        if !server.starts_with("https://") {
            return Err(Error::Usage(format!(
                "--server must be an https:// URL, not {server:?}"
            )));
        }
        Ok(Self {
            server,
            label: label.map(str::to_string),
            tls: Arc::new(tls),
            basic: None,
        })
    }

    fn host_port(&self) -> Result<(String, u16)> {
        let rest = self.server.trim_start_matches("https://");
        let rest = rest.split('/').next().unwrap_or(rest);
        if let Some(v6) = rest.strip_prefix('[') {
            let (host, port) = v6
                .split_once(']')
                .ok_or_else(|| Error::Usage(format!("bad server URL {}", self.server)))?;
            let port = port.trim_start_matches(':').parse().unwrap_or(443);
            return Ok((host.to_string(), port));
        }
        match rest.rsplit_once(':') {
            Some((h, p)) => Ok((
                h.to_string(),
                p.parse()
                    .map_err(|_| Error::Usage(format!("bad port in {}", self.server)))?,
            )),
            None => Ok((rest.to_string(), 443)),
        }
    }
}

/// An EST client holding one keep-alive connection.
pub struct Client {
    config: ClientConfig,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

/// A raw HTTP answer.
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<u64>,
    body: Vec<u8>,
}

impl Client {
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            conn: Mutex::new(None),
        }
    }

    fn path(&self, op: &str) -> String {
        match &self.config.label {
            Some(l) => format!("/.well-known/est/{l}/{op}"),
            None => format!("/.well-known/est/{op}"),
        }
    }

    /// `GET /cacerts`: the CA certificates (RFC 7030 §4.1).
    pub async fn cacerts(&self) -> Result<Vec<Vec<u8>>> {
        let a = self.send("GET", &self.path("cacerts"), None).await?;
        self.expect_ok(&a)?;
        wire::certs_only(&a.body)
    }

    /// `GET /csrattrs`: the DER `CsrAttrs`, or `None` when the server has none (204).
    pub async fn csrattrs(&self) -> Result<Option<Vec<u8>>> {
        let a = self.send("GET", &self.path("csrattrs"), None).await?;
        if a.status == 204 || a.status == 404 {
            return Ok(None);
        }
        self.expect_ok(&a)?;
        wire::base64_body(&a.body).map(Some)
    }

    /// `POST /simpleenroll` with a DER CSR (RFC 7030 §4.2.1).
    pub async fn simpleenroll(&self, csr_der: &[u8]) -> Result<Enrolled> {
        self.enroll("simpleenroll", csr_der).await
    }

    /// `POST /simplereenroll` with a DER CSR; the client certificate must be the one renewed.
    pub async fn simplereenroll(&self, csr_der: &[u8]) -> Result<Enrolled> {
        self.enroll("simplereenroll", csr_der).await
    }

    async fn enroll(&self, op: &str, csr_der: &[u8]) -> Result<Enrolled> {
        let body = wire::base64_lines(csr_der);
        let a = self.send("POST", &self.path(op), Some(body)).await?;
        if a.status == 202 {
            return Ok(Enrolled::Pending {
                retry_after: Duration::from_secs(a.retry_after.unwrap_or(60)),
            });
        }
        self.expect_ok(&a)?;
        if !a
            .content_type
            .to_ascii_lowercase()
            .starts_with("application/pkcs7-mime")
        {
            return Err(Error::BadResponse(format!(
                "Content-Type {:?}, expected application/pkcs7-mime",
                a.content_type
            )));
        }
        let certs = wire::certs_only(&a.body)?;
        wire::issued_for(&certs, csr_der).map(Enrolled::Issued)
    }

    /// The chain above an issued certificate: the one the server sent with it, else its issuers
    /// among the `/cacerts` certificates (a server may answer an enrollment with the certificate
    /// alone, RFC 7030 §4.2.3); an error when neither holds its issuer.
    pub async fn chain_for(&self, issued: &wire::Issued) -> Result<Vec<Vec<u8>>> {
        if !issued.chain.is_empty() {
            return Ok(issued.chain.clone());
        }
        let chain = wire::chain_above(&issued.certificate, &self.cacerts().await?)?;
        if chain.is_empty() {
            return Err(Error::BadResponse(
                "the server sent the certificate alone and /cacerts holds none of its issuers"
                    .into(),
            ));
        }
        Ok(chain)
    }

    fn expect_ok(&self, a: &Answer) -> Result<()> {
        let message = || String::from_utf8_lossy(&a.body).trim().to_string();
        match a.status {
            200 => Ok(()),
            401 => Err(Error::Unauthorized(message())),
            403 => Err(Error::Forbidden(message())),
            s => Err(Error::Status {
                status: s,
                message: message(),
            }),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<String>) -> Result<Answer> {
        let mut guard = self.conn.lock().await;
        // One retry on a fresh connection if the kept one was closed by the server.
        for attempt in 0..2 {
            let mut send = match guard.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            if send.ready().await.is_err() {
                if attempt == 0 {
                    continue;
                }
                return Err(Error::Http("the connection closed".into()));
            }
            let (host, _) = self.config.host_port()?;
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("Host", host);
            if body.is_some() {
                req = req
                    .header("Content-Type", "application/pkcs10")
                    .header("Content-Transfer-Encoding", "base64");
            }
            if let Some((user, pass)) = &self.config.basic {
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                req = req.header("Authorization", format!("Basic {token}"));
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| Error::Http(e.to_string()))?;
            let resp = match send.send_request(req).await {
                Ok(r) => r,
                Err(e) if attempt == 0 && (e.is_canceled() || e.is_closed()) => continue,
                Err(e) => return Err(Error::Http(e.to_string())),
            };
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type = header("content-type").unwrap_or_default();
            let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
            let close = header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Http(e.to_string()))?
                .to_bytes()
                .to_vec();
            if !close {
                *guard = Some(send);
            }
            return Ok(Answer {
                status,
                content_type,
                retry_after,
                body,
            });
        }
        Err(Error::Http("the connection closed".into()))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let (host, port) = self.config.host_port()?;
        let addr = format!("{host}:{port}");
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| Error::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.clone())
            .map_err(|e| Error::Usage(format!("bad server name {host}: {e}")))?;
        let tls = TlsConnector::from(self.config.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Tls {
                server: addr.clone(),
                reason: e.to_string(),
            })?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        tokio::spawn(conn);
        Ok(send)
    }
}
