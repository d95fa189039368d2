//! The CRL listener: plain HTTP (MATTER.md "Revocation": the CRL is DER at the URL the vendor
//! registers on the DCL; a CRL is signed, so it needs no TLS, and RFC 5280 §4.2.1.13 relying
//! parties fetch CRLs over http). `GET` or `HEAD` of a label's `crl.url` path returns its
//! current CRL as `application/pkix-crl` (RFC 2585 §4.2); anything else is 404 or 405.
//!
//! It also reissues due CRLs ([`CrlService::refresh`]) every [`REFRESH_CHECK`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::CrlService;
use crate::asn1;
use crate::error::{Error, Result};

/// How often due CRLs are looked for. A minute: far below any sensible CRL period (the config
/// refuses one under 120 s), and a scan of the revoked index costs milliseconds.
pub const REFRESH_CHECK: Duration = Duration::from_secs(60);

/// Open connections at most. A CRL is fetched by revocation tooling a few times a day, not by
/// devices; 256 bounds what a scanner can hold open.
const MAX_CONNECTIONS: usize = 256;

/// Deadline for a request's headers, and idle keep-alive: as the EST listener's default
/// (`server.header_timeout_secs`), halved for a GET without a body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// The CRL media type (RFC 2585 §4.2).
pub const CT_CRL: &str = "application/pkix-crl";

/// The running CRL listener and refresh task.
pub struct Publisher {
    /// Where the listener is bound, if there is one.
    pub addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    /// Stops the listener and the refresh task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Issues the CRLs that are missing or due, then serves them on `listen` (if given) and keeps
/// them fresh.
pub async fn start(service: Arc<CrlService>, listen: Option<SocketAddr>) -> Result<Publisher> {
    refresh(&service).await;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(refresh_loop(service.clone(), stopped.clone()))];
    let mut addr = None;
    if let Some(listen) = listen {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(listen.to_string(), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::info!(addr = %bound, "CRL listener (plain HTTP)");
        addr = Some(bound);
        tasks.push(tokio::spawn(accept_loop(listener, service, stopped)));
    }
    Ok(Publisher { addr, stop, tasks })
}

async fn refresh(service: &Arc<CrlService>) {
    let s = service.clone();
    let done = tokio::task::spawn_blocking(move || s.refresh(asn1::now())).await;
    for (label, result) in done.unwrap_or_default() {
        if let Err(e) = result {
            tracing::error!(label = %label, error = %e, "CRL refresh failed; retrying later");
        }
    }
}

async fn refresh_loop(service: Arc<CrlService>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_CHECK) => refresh(&service).await,
            _ = stopped.changed() => return,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: Arc<CrlService>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped.changed() => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "CRL listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let service = service.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&service, peer, &req)) }
            });
            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

fn answer(
    service: &CrlService,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let (status, ct, body) = match (req.method(), service.by_path(path)) {
        (m, Some(crl)) if m == Method::GET || m == Method::HEAD => {
            let body = if m == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(crl.der.clone())
            };
            (StatusCode::OK, CT_CRL, body)
        }
        (_, Some(_)) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"use GET\n"),
        ),
        (_, None) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from(format!("no CRL is published at {path}\n")),
        ),
    };
    tracing::info!(peer = %peer, path, status = status.as_u16(), "CRL request");
    let len = match service.by_path(path) {
        Some(crl) if status == StatusCode::OK => crl.der.len(),
        _ => body.len(),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}
