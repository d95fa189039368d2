//! The admin API's two doors (DESIGN.md "The operator plane"): HTTPS with mutual TLS against
//! `[admin] client_ca` on `[admin] listen`, each certificate mapped to a role and labels by
//! `[[admin.identities]]`; and a Unix socket (mode 0600) at `[admin] socket` for the host's
//! operator, role admin. Both answer [`super::dispatch`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::{Caller, Ctx, Request};
use crate::config::{AdminConfig, Config};
use crate::error::{Error, Result};
use crate::policy::{PeerChain, rule_matches};
use crate::tls::{self, Anchors};

/// Largest request body: a CSR or a token request is a few KiB.
pub const MAX_BODY: usize = 256 * 1024;

/// Open connections at most, per door: operators and their scripts, not devices.
const MAX_CONNECTIONS: usize = 256;

/// Deadline for a request's headers, and idle keep-alive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS handshake deadline, as the EST listener's default.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running admin listeners.
pub struct AdminServer {
    /// The HTTPS listener's address, if there is one.
    pub addr: Option<SocketAddr>,
    /// The socket's path, if there is one.
    pub socket: Option<PathBuf>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AdminServer {
    /// Stops both doors and removes the socket file.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How a connection's requests are attributed.
enum Door {
    /// The socket: its peer's uid.
    Socket(String),
    /// HTTPS: the verified client chain, if one was presented.
    Tls(Option<Arc<PeerChain>>),
}

struct Shared {
    ctx: Ctx,
    config: AdminConfig,
    anchors: Option<Anchors>,
}

/// Opens the doors `config.admin` names.
pub async fn start(config: &Config, ctx: Ctx) -> Result<AdminServer> {
    if config.admin.metrics {
        super::metrics::install();
    }
    let admin = config.admin.clone();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let (mut addr, mut socket) = (None, None);
    let (tls_config, anchors) = match (&admin.listen, &admin.client_ca) {
        (Some(_), Some(ca)) => {
            let cas = tls::read_pem_certs(ca).map_err(|e| e.in_key("admin.client_ca"))?;
            let tls = tls::server_config(&config.server.tls_cert, &config.server.tls_key, &cas)?;
            (Some(tls), Anchors::new(&cas)?)
        }
        _ => (None, None),
    };
    let shared = Arc::new(Shared {
        ctx,
        config: admin.clone(),
        anchors,
    });
    if let (Some(listen), Some(tls_config)) = (admin.listen, tls_config) {
        let listener = TcpListener::bind(listen).await.map_err(|e| Error::Config {
            file: config.path.clone(),
            key: "admin.listen".into(),
            problem: format!("cannot listen on {listen}: {e}"),
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::info!(addr = %bound, "admin API (HTTPS, mutual TLS) and dashboard (/dashboard)");
        shared.ctx.dashboard.set_addr(bound);
        addr = Some(bound);
        tasks.push(tokio::spawn(tls_loop(
            listener,
            TlsAcceptor::from(tls_config),
            shared.clone(),
            stopped.clone(),
        )));
    }
    if let Some(path) = &admin.socket {
        let listener = bind_socket(path).map_err(|e| Error::Config {
            file: config.path.clone(),
            key: "admin.socket".into(),
            problem: format!("cannot listen on {}: {e}", path.display()),
        })?;
        tracing::info!(socket = %path.display(), "admin API (local socket, mode 0600)");
        socket = Some(path.clone());
        tasks.push(tokio::spawn(socket_loop(listener, shared, stopped)));
    }
    Ok(AdminServer {
        addr,
        socket,
        stop,
        tasks,
    })
}

/// Binds the socket under a temporary name, makes it 0600, then renames it into place, so the
/// path never exists with looser permissions. A file left by a killed server is replaced (the
/// ledger's lock already keeps two servers of one config apart).
fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

async fn tls_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped.changed() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(peer = %peer, error = %e, "admin TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let chain = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| PeerChain::new(c.to_vec()))
                .map(Arc::new);
            serve(TokioIo::new(tls), shared, Arc::new(Door::Tls(chain))).await;
        });
    }
}

async fn socket_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped.changed() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let who = match stream.peer_cred() {
            Ok(cred) => format!("socket:uid={}", cred.uid()),
            Err(_) => "socket:uid=?".to_string(),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve(TokioIo::new(stream), shared, Arc::new(Door::Socket(who))).await;
        });
    }
}

async fn serve<I>(io: I, shared: Arc<Shared>, door: Arc<Door>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| answer(shared.clone(), door.clone(), req));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    if let Err(e) = http.serve_connection(io, service).await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

/// Who is asking on `door`, or why nobody may (401: no certificate; 403: one no identity
/// names, or one that no longer verifies now).
fn caller(shared: &Shared, door: &Door) -> std::result::Result<Caller, (String, Error)> {
    match door {
        Door::Socket(who) => Ok(Caller::local(who.clone())),
        Door::Tls(None) => Err((
            "-".into(),
            Error::Unauthenticated(
                "present an admin client certificate (issued by [admin] client_ca)".into(),
            ),
        )),
        Door::Tls(Some(chain)) => {
            let presented = chain.display.clone();
            // Validity is checked on every request, not once per connection.
            if !shared
                .anchors
                .as_ref()
                .is_some_and(|a| a.verifies(&chain.certs))
            {
                return Err((
                    presented,
                    Error::Unauthenticated(
                        "the admin client certificate does not verify now (expired?)".into(),
                    ),
                ));
            }
            shared
                .config
                .identities
                .iter()
                .find(|i| rule_matches(&i.matcher, chain))
                .map(|i| Caller {
                    identity: format!("admin:{}", i.matcher),
                    role: i.role,
                    labels: i.labels.clone(),
                })
                .ok_or_else(|| {
                    (
                        presented.clone(),
                        Error::Forbidden(format!(
                            "the certificate {presented} (sha256 {}) matches no \
                             [[admin.identities]] entry",
                            chain.fingerprint
                        )),
                    )
                })
        }
    }
}

async fn answer(
    shared: Arc<Shared>,
    door: Arc<Door>,
    req: HttpRequest<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if let Some(resp) = answer_probe(&shared, &door, &method, req.uri().path()).await {
        return Ok(resp);
    }
    let path = req.uri().path();
    if path == "/dashboard" || path.starts_with("/dashboard/") {
        return Ok(answer_dashboard(shared, door, method, target, req).await);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let e = Error::PayloadTooLarge { limit: MAX_BODY };
            return Ok(json_response(
                413,
                &serde_json::json!({ "error": e.to_string() }),
            ));
        }
    };
    let (status, value) = tokio::task::spawn_blocking(move || {
        let body = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return (
                        400,
                        serde_json::json!({ "error": format!("the body is not JSON: {e}") }),
                    );
                }
            }
        };
        let request = match Request::from_target(&method, &target, body) {
            Ok(r) => r,
            Err(e) => return (400, serde_json::json!({ "error": e.to_string() })),
        };
        match caller(&shared, &door) {
            Ok(caller) => super::dispatch(&shared.ctx, &caller, &request),
            Err((presented, e)) => super::refuse(&shared.ctx, &presented, &request, &e),
        }
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "admin request task failed");
        (500, serde_json::json!({ "error": "internal error" }))
    });
    Ok(json_response(status, &value))
}

/// `/dashboard…` on the HTTPS door ([`super::dashboard`]); the socket has no browser.
async fn answer_dashboard(
    shared: Arc<Shared>,
    door: Arc<Door>,
    method: String,
    target: String,
    req: HttpRequest<Incoming>,
) -> Response<Full<Bytes>> {
    if let Door::Socket(_) = *door {
        return json_response(
            404,
            &serde_json::json!({ "error": "the dashboard is on the HTTPS admin listener" }),
        );
    }
    let header = |name: header::HeaderName| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let some = |v: String| (!v.is_empty()).then_some(v);
    let mut web = super::dashboard::WebRequest {
        method,
        target,
        cookie: some(header(header::COOKIE)),
        origin: some(header(header::ORIGIN)),
        host: some(header(header::HOST)),
        sec_fetch_site: some(header(header::HeaderName::from_static("sec-fetch-site"))),
        content_type: some(header(header::CONTENT_TYPE)),
        body: Vec::new(),
    };
    web.body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => {
            let e = Error::PayloadTooLarge { limit: MAX_BODY };
            return json_response(413, &serde_json::json!({ "error": e.to_string() }));
        }
    };
    let answered = tokio::task::spawn_blocking(move || {
        let cert = match &*door {
            Door::Tls(Some(_)) => Some(caller(&shared, &door)),
            _ => None,
        };
        super::dashboard::answer(&shared.ctx, cert, &web)
    })
    .await;
    let page = match answered {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "dashboard task failed");
            return json_response(500, &serde_json::json!({ "error": "internal error" }));
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(page.body)));
    *resp.status_mut() =
        StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    for (name, value) in super::dashboard::SECURITY_HEADERS {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    for (name, value) in page.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append(name, v);
        }
    }
    resp
}

/// The routes outside the JSON API: `GET /metrics` (Prometheus text format; role auditor or
/// above on the TLS door; 404 when `[admin] metrics = false`), `GET /healthz` and `GET /readyz`
/// (no client certificate needed, so a load balancer can probe them). `None` for every other
/// request.
async fn answer_probe(
    shared: &Arc<Shared>,
    door: &Arc<Door>,
    method: &str,
    path: &str,
) -> Option<Response<Full<Bytes>>> {
    let route = match path {
        "/metrics" | "/healthz" | "/readyz" => path.to_string(),
        _ => return None,
    };
    if method != "GET" {
        let mut resp = json_response(
            405,
            &serde_json::json!({ "error": format!("{route} answers GET only") }),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Some(resp);
    }
    let (shared, door) = (shared.clone(), door.clone());
    let answered = tokio::task::spawn_blocking(move || match route.as_str() {
        "/healthz" => Err(super::health::healthz()),
        "/readyz" => Err(super::health::readyz(&shared.ctx)),
        // Every identity has a role, auditor or above, and every role may read metrics.
        _ => match caller(&shared, &door) {
            Ok(_) if !shared.config.metrics => {
                let e = Error::MetricsOff;
                Err((
                    crate::est::status_for(e.kind()).as_u16(),
                    serde_json::json!({ "error": e.to_string() }),
                ))
            }
            Ok(_) => Ok(super::metrics::render(&shared.ctx)),
            Err((presented, e)) => Err(super::refuse(
                &shared.ctx,
                &presented,
                &Request::get("/metrics", Vec::new()),
                &e,
            )),
        },
    })
    .await;
    Some(match answered {
        Ok(Ok(text)) => {
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        Ok(Err((status, value))) => json_response(status, &value),
        Err(e) => {
            tracing::error!(error = %e, "admin probe task failed");
            json_response(500, &serde_json::json!({ "error": "internal error" }))
        }
    })
}

fn json_response(status: u16, value: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
