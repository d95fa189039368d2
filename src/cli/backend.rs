//! Where an operator command runs (DESIGN.md "One command, either way"): through a running
//! server's admin socket when there is one, on the ledger directly when nothing holds it, or
//! through a remote server's admin API (`--server URL` with an admin certificate). Each way
//! answers the same [`admin::dispatch`](matter_est::admin::dispatch), so the output is the same.

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use matter_est::admin::{self, Caller, Ctx, Request};
use matter_est::config::Config;
use matter_est::issuance::Issuer;
use matter_est::{Error, Result, store, tls};

/// How long the CLI waits for a server's answer: a backup of a large ledger takes a while.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Which ledger or server an operator command works on.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Ledger or server")]
pub struct Target {
    /// The configuration file (config/example.toml documents every key). When its server runs,
    /// the command goes through the server's admin socket ([admin] socket).
    #[arg(long, required_unless_present = "server")]
    pub config: Option<PathBuf>,
    /// A running server's admin API (https://HOST:PORT) instead; needs --admin-cert,
    /// --admin-key and --admin-ca.
    #[arg(long, requires_all = ["admin_cert", "admin_key", "admin_ca"])]
    pub server: Option<String>,
    /// With --server: the admin client certificate (PEM, chain leaf first).
    #[arg(long)]
    pub admin_cert: Option<PathBuf>,
    /// With --server: its private key (PEM, mode 0600).
    #[arg(long)]
    pub admin_key: Option<PathBuf>,
    /// With --server: the CA certificate(s) of the server's TLS certificate (PEM).
    #[arg(long)]
    pub admin_ca: Option<PathBuf>,
}

/// An open way to the API.
pub enum Backend {
    /// In process, on the ledger.
    Local { ctx: Ctx, caller: Caller },
    /// The running server's Unix socket.
    Socket(PathBuf),
    /// A server's HTTPS admin listener.
    Remote {
        host: String,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
    },
}

impl Backend {
    /// Opens the way `target` names, for a command that reads or changes records.
    pub fn open(target: &Target) -> Result<Self> {
        Self::open_with(target, None)
    }

    /// As [`Backend::open`], for a command that signs (`issue`, `batch`): on the ledger, the
    /// labels are loaded and checked before the ledger is opened (a refused configuration
    /// opens nothing); `danger_dev` accepts a development PAI (`--danger-allow-development-pki`;
    /// a running server decided that at its start).
    pub fn open_signing(target: &Target, danger_dev: bool) -> Result<Self> {
        Self::open_with(target, Some(danger_dev))
    }

    /// Opens a running server's way (its admin socket, or `--server`), never the ledger: for a
    /// command whose answer lives in that server's memory (`dashboard login`: the link is
    /// good on that server's listener only). The same on either backend; on PostgreSQL, where
    /// the other commands open the database, this one still goes through the socket.
    pub fn open_server(target: &Target) -> Result<Self> {
        let config = match local_config(target)? {
            Err(remote) => return Ok(remote),
            Ok(config) => config,
        };
        match &config.admin.socket {
            Some(socket) if UnixStream::connect(socket).is_ok() => {
                Ok(Backend::Socket(socket.clone()))
            }
            socket => Err(Error::BadRequest(format!(
                "this asks a running `matter-est serve`, and none answers on its admin socket \
                 ({}): start serve with this config (or give --server URL), then ask again",
                socket
                    .as_ref()
                    .map_or("[admin] socket is off".into(), |s| s.display().to_string())
            ))),
        }
    }

    fn open_with(target: &Target, signing: Option<bool>) -> Result<Self> {
        let config = match local_config(target)? {
            Err(remote) => return Ok(remote),
            Ok(config) => config,
        };
        // The embedded ledger is one process's file: while `serve` holds it, through its
        // socket. PostgreSQL is shared: always on the database directly (DESIGN.md "One
        // command, either way"), so no server needs stopping and none needs to be running.
        let shared = matches!(config.store, matter_est::config::StoreConfig::Postgres(_));
        if !shared
            && let Some(socket) = &config.admin.socket
            && UnixStream::connect(socket).is_ok()
        {
            return Ok(Backend::Socket(socket.clone()));
        }
        let labels = match signing {
            Some(danger_dev) => {
                let labels = Issuer::load(&config)?;
                labels.refuse_development_pki(&config, danger_dev)?;
                Some(labels)
            }
            None => None,
        };
        let ledger = store::open(&config).map_err(|e| match (&e, &config.admin.socket) {
            (Error::Ledger(m), None) if m.contains("in use") => Error::Ledger(format!(
                "{m}; or set [admin] socket so that commands go through the running server"
            )),
            _ => e,
        })?;
        let ctx = Ctx::local(Arc::new(config), ledger, labels, signing.unwrap_or(false));
        Ok(Backend::Local {
            ctx,
            caller: Caller::local(super::operator()),
        })
    }

    /// Sends `req`; the JSON answer, or the API's refusal as an [`Error::Api`].
    pub fn call(&self, req: Request) -> Result<Value> {
        let (status, value) = match self {
            Backend::Local { ctx, caller } => admin::dispatch(ctx, caller, &req),
            Backend::Socket(path) => {
                let stream = UnixStream::connect(path).map_err(|e| Error::io(path, e))?;
                stream
                    .set_read_timeout(Some(ANSWER_TIMEOUT))
                    .map_err(|e| Error::io(path, e))?;
                exchange(stream, "localhost", &req)?
            }
            Backend::Remote { host, port, tls } => {
                let tcp = TcpStream::connect((host.as_str(), *port))
                    .map_err(|e| Error::io(format!("{host}:{port}"), e))?;
                tcp.set_read_timeout(Some(ANSWER_TIMEOUT))
                    .map_err(|e| Error::io(format!("{host}:{port}"), e))?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| Error::BadRequest(format!("--server host {host:?}: {e}")))?;
                let conn = rustls::ClientConnection::new(tls.clone(), name)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                exchange(rustls::StreamOwned::new(conn, tcp), host, &req)?
            }
        };
        if status == 200 {
            Ok(value)
        } else {
            Err(Error::Api {
                status,
                message: value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the server gave no reason")
                    .to_string(),
            })
        }
    }

    /// Releases the ledger, when this is the one holding it.
    pub fn close(self) {
        if let Backend::Local { ctx, .. } = self {
            ctx.ledger().close();
        }
    }
}

/// One request on the backend `target` names, closed after.
pub fn call(target: &Target, req: Request) -> Result<Value> {
    let backend = Backend::open(target)?;
    let result = backend.call(req);
    backend.close();
    result
}

/// The query of a listing: the filters given, by name.
pub fn filters<const N: usize>(given: [(&str, Option<String>); N]) -> Vec<(String, String)> {
    given
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect()
}

/// The array `field` of `v` (empty when missing).
pub fn list<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The string `field` of `v` ("" when missing or null).
pub fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// `--server URL`: the remote server (`Err`, nothing to load); else the `--config` file, loaded.
fn local_config(target: &Target) -> Result<std::result::Result<Config, Backend>> {
    if let Some(url) = &target.server {
        return remote(url, target).map(Err);
    }
    let path = target
        .config
        .as_deref()
        .ok_or_else(|| Error::BadRequest("give --config FILE or --server URL".into()))?;
    Config::load(path).map(Ok)
}

/// `--server https://HOST:PORT` with the admin certificate and the server's CA.
fn remote(url: &str, target: &Target) -> Result<Backend> {
    let bad = || Error::BadRequest(format!("--server {url:?}: expected https://HOST:PORT"));
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let need = |p: &Option<PathBuf>, what: &str| {
        p.clone()
            .ok_or_else(|| Error::BadRequest(format!("--server needs {what}")))
    };
    let cert = need(&target.admin_cert, "--admin-cert")?;
    let key = need(&target.admin_key, "--admin-key")?;
    let ca = need(&target.admin_ca, "--admin-ca")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::read_pem_certs(&ca)? {
        roots
            .add(c)
            .map_err(|e| Error::io(&ca, format!("not a CA certificate: {e}")))?;
    }
    matter_est::signer::file::check_private_mode(&key)?;
    let chain = tls::read_pem_certs(&cert)?;
    let key_der = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&key)
            .map_err(|e| Error::io(&key, format!("not a PEM private key: {e}")))?
    };
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| Error::io(&key, format!("does not fit {}: {e}", cert.display())))?;
    Ok(Backend::Remote {
        host,
        port,
        tls: Arc::new(config),
    })
}

/// One HTTP/1.1 request and its answer on `stream` (`Connection: close`; the admin listeners
/// answer with a Content-Length, and the end of the stream ends the body).
fn exchange<S: std::io::Read + std::io::Write>(
    mut stream: S,
    host: &str,
    req: &Request,
) -> Result<(u16, Value)> {
    let body = if req.body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&req.body).map_err(|e| Error::Internal(e.to_string()))?
    };
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        req.method,
        req.target(),
        body.len()
    );
    let io = |e: std::io::Error| Error::io("the admin API", e);
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(&body).map_err(io)?;
    stream.flush().map_err(io)?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(io(e)),
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::Internal("the admin API's answer has no header end".into()))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Internal(format!("the admin API answered {head:?}")))?;
    let value = serde_json::from_slice(&answer[split + 4..]).unwrap_or(Value::Null);
    Ok((status, value))
}

/// A batch's DACs from the running server (`matter-est batch` while `serve` runs, or with
/// `--server`): `GET /v1/labels` and `POST /v1/labels/{label}/issue`.
impl matter_est::batch::remote::Enroll for Backend {
    fn label(&self, label: &str, pid: matter_est::matter::Pid) -> Result<matter_est::batch::Facts> {
        use base64::Engine as _;
        let all = self.call(Request::get("/v1/labels", Vec::new()))?;
        let info = all["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["label"] == label)
            .ok_or_else(|| Error::UnknownLabel(label.to_string()))?;
        let text = |f: &str| info[f].as_str().unwrap_or_default().to_string();
        let pids = text("pids");
        if pids != "any" && !pids.split(',').any(|p| p == pid.to_string()) {
            return Err(Error::Forbidden(format!(
                "PID {pid} is not allowed on label {label:?} (it issues PIDs {pids})"
            )));
        }
        let chain = info["chain"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                base64::engine::general_purpose::STANDARD
                    .decode(c.as_str().unwrap_or_default())
                    .map_err(|e| Error::Internal(format!("the server's chain: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(matter_est::batch::Facts::remote(
            text("vid"),
            text("cnPrefix"),
            chain,
            info["quota"].as_u64(),
            info["issued"].as_u64().unwrap_or_default(),
        ))
    }

    fn issue(&self, label: &str, csr: &[u8]) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let issued = self.call(Request::post(
            &format!("/v1/labels/{label}/issue"),
            serde_json::json!({ "csr": b64.encode(csr) }),
        ))?;
        b64.decode(issued["der"].as_str().unwrap_or_default())
            .map_err(|e| Error::Internal(format!("the DAC came back undecodable: {e}")))
    }
}
