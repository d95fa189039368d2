//! `matter-est serve`: the accept loop over TLS, with the limits of `[server]` and graceful
//! shutdown (stop accepting, finish requests in flight).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::est::{self, App, Conn};
use crate::issuance::{Issuer, Labels};
use crate::policy::{PeerChain, Policy};
use crate::tls;

/// How long shutdown waits for requests in flight before dropping them: longer than the
/// request deadline's default (30 s) would be pointless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest HTTP/1 read buffer per connection: headers of an EST request are a few hundred
/// bytes; 16 KiB (hyper's default is ~400 KiB) keeps 1,000 idle keep-alive connections small.
const MAX_HTTP_BUF: usize = 16 * 1024;

/// A server accepting connections.
pub struct Running {
    pub addr: SocketAddr,
    current: Arc<Current>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

/// What a reload replaces: the application (labels, policy) and the TLS configuration. A
/// connection takes the TLS configuration current when it is accepted and each request the
/// application current when it arrives, so a reload drops no connection.
struct Current {
    app: std::sync::RwLock<Arc<App>>,
    tls: std::sync::RwLock<Arc<rustls::ServerConfig>>,
}

impl Current {
    fn app(&self) -> Arc<App> {
        match self.app.read() {
            Ok(app) => app.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn tls(&self) -> Arc<rustls::ServerConfig> {
        match self.tls.read() {
            Ok(tls) => tls.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Running {
    /// The application serving requests now.
    pub fn app(&self) -> Arc<App> {
        self.current.app()
    }

    /// A function returning the issuer serving at the time it is called (for the admin API,
    /// which must follow reloads).
    pub fn current_issuer(&self) -> Box<dyn Fn() -> Arc<Issuer> + Send + Sync> {
        let current = self.current.clone();
        Box::new(move || current.app().issuer.clone())
    }

    /// Reloads the labels (loaded from `config` by [`Issuer::load`]), policy and TLS
    /// certificates from `config` (SIGHUP) on the same
    /// ledger, without dropping a connection. All or nothing: a configuration that does not
    /// load leaves the running one in place. `server.listen`, the ledger path and the
    /// `[server]` limits take effect at the next start; a change to them is logged.
    pub fn reload(&self, config: &Config, labels: Labels) -> Result<()> {
        let old = self.current.app();
        let issuer = Arc::new(labels.with_ledger(old.issuer.ledger().clone()));
        let tls = tls_config(config, &issuer)?;
        if config.server.limits != old.limits {
            tracing::warn!("the [server] limits changed: they take effect at the next start");
        }
        let app = Arc::new(App::new(
            issuer,
            config.default_label.clone(),
            old.limits.clone(),
        )?);
        if let Ok(mut current) = self.current.tls.write() {
            *current = tls;
        }
        if let Ok(mut current) = self.current.app.write() {
            *current = app;
        }
        Ok(())
    }

    /// Stops accepting, lets requests in flight finish (up to 30 s), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// The TLS server configuration of `config`, trusting every client anchor of `issuer`'s labels.
fn tls_config(config: &Config, issuer: &Issuer) -> Result<Arc<rustls::ServerConfig>> {
    let anchors = Policy::all_anchors(issuer)?;
    tls::server_config(&config.server.tls_cert, &config.server.tls_key, &anchors).map_err(|e| {
        let key = match &e {
            Error::Io { path, .. } if *path == config.server.tls_cert => "server.tls_cert",
            _ => "server.tls_key",
        };
        e.in_key(key)
    })
}

/// Starts serving `issuer` (loaded from `config`) on `config.server.listen`.
pub async fn start(config: &Config, issuer: Arc<Issuer>) -> Result<Running> {
    let tls_config = tls_config(config, &issuer)?;
    let app = Arc::new(App::new(
        issuer,
        config.default_label.clone(),
        config.server.limits.clone(),
    )?);
    let listener = TcpListener::bind(config.server.listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another process listens there: stop it, or change server.listen (or pass \
                 serve --listen ADDR)"
        } else {
            ""
        };
        Error::Config {
            file: config.path.clone(),
            key: "server.listen".into(),
            problem: format!("cannot listen on {}: {e}{hint}", config.server.listen),
        }
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let (stop, stopped) = watch::channel(false);
    let limits = app.limits.clone();
    let current = Arc::new(Current {
        app: std::sync::RwLock::new(app),
        tls: std::sync::RwLock::new(tls_config),
    });
    let done = tokio::spawn(accept_loop(listener, current.clone(), limits, stopped));
    Ok(Running {
        addr,
        current,
        stop,
        done,
    })
}

async fn accept_loop(
    listener: TcpListener,
    current: Arc<Current>,
    limits: crate::config::Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = PeerSlots::new(limits.max_connections_per_peer);
    let mut rates = PeerRates::new(
        limits.max_new_connections_per_peer_per_sec,
        limits.max_connections_per_peer,
    );
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.title_case_headers(true)
        .writev(false)
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HTTP_BUF);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped.changed() => break,
        };
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let Some(peer_slot) = peers.take(addr.ip()) else {
            // Closed at once, so that one address holding its cap of idle connections leaves
            // every other slot to other peers.
            tracing::debug!(peer = %addr, cap = limits.max_connections_per_peer,
                "connection closed: the peer address has server.max_connections_per_peer open");
            continue;
        };
        if !rates.allow(addr.ip()) {
            // Closed before TLS: a handshake flood from one address costs the server an accept
            // and a close, not a key exchange and a signature each.
            tracing::debug!(peer = %addr, rate = limits.max_new_connections_per_peer_per_sec,
                "connection closed: the peer address opens more than \
                 server.max_new_connections_per_peer_per_sec");
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(current.tls());
        let current = current.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        let handshake = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permits = (permit, peer_slot);
            let _open = crate::admin::metrics::OpenConnection::open();
            // A connection that never completes TLS (idle, or slow on purpose) is closed at the
            // handshake deadline.
            let (accepted, refused_chain) = tls::REFUSED_CHAIN
                .scope(std::cell::RefCell::new(None), async {
                    let accepted = tokio::time::timeout(handshake, acceptor.accept(tcp)).await;
                    (accepted, tls::REFUSED_CHAIN.with(|c| c.borrow_mut().take()))
                })
                .await;
            let tls = match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics::counter!(
                        crate::admin::metrics::TLS_HANDSHAKE_FAILURES,
                        "reason" => crate::admin::metrics::handshake_reason(&e),
                    )
                    .increment(1);
                    tracing::info!(
                        peer = %addr,
                        error = %e,
                        presented = refused_chain.as_deref().unwrap_or("-"),
                        "TLS handshake failed"
                    );
                    return;
                }
                Err(_) => {
                    metrics::counter!(
                        crate::admin::metrics::TLS_HANDSHAKE_FAILURES,
                        "reason" => "timeout",
                    )
                    .increment(1);
                    tracing::info!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| PeerChain::new(c.to_vec()));
            let conn = Arc::new(Conn { addr, peer });
            let service = service_fn(move |req| est::handle(current.app(), conn.clone(), req));
            if let Err(e) = watcher
                .watch(http.serve_connection(TokioIo::new(HeaderCaseFix::new(tls)), service))
                .await
            {
                tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the drain timeout were dropped");
    }
}

/// The peer a connection counts against: an IPv4-mapped IPv6 address counts as its IPv4
/// address, and an IPv6 address as its /64 (one client holds a whole /64, RFC 6177).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// New connections per second per peer ([`peer_key`]),
/// `server.max_new_connections_per_peer_per_sec`: a token bucket per peer holding up to
/// `burst` (`max_connections_per_peer`, so that a peer may open all its connections at once),
/// refilled at `rate` a second. Owned by the accept loop.
struct PeerRates {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, std::time::Instant)>,
}

/// Buckets kept before the full ones (peers quiet long enough) are forgotten.
const MAX_RATE_BUCKETS: usize = 4096;

impl PeerRates {
    fn new(rate: u32, burst: usize) -> Self {
        Self {
            rate: f64::from(rate),
            burst: burst as f64,
            buckets: HashMap::new(),
        }
    }

    /// Whether `ip` may open a connection now (taking one token if so).
    fn allow(&mut self, ip: IpAddr) -> bool {
        let now = std::time::Instant::now();
        let (rate, burst) = (self.rate, self.burst);
        let refill = |tokens: f64, at: std::time::Instant| {
            (tokens + now.duration_since(at).as_secs_f64() * rate).min(burst)
        };
        if self.buckets.len() >= MAX_RATE_BUCKETS {
            self.buckets.retain(|_, (t, at)| refill(*t, *at) < burst);
        }
        let (tokens, at) = self.buckets.entry(peer_key(ip)).or_insert((burst, now));
        *tokens = refill(*tokens, *at);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Open connections per peer address (`server.max_connections_per_peer`).
struct PeerSlots {
    cap: usize,
    open: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection of a peer address; dropping it frees the slot.
struct PeerSlot {
    ip: IpAddr,
    open: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerSlots {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            open: Arc::default(),
        }
    }

    /// A slot for `ip` ([`peer_key`]), or `None` when it has `cap` connections open.
    fn take(&self, ip: IpAddr) -> Option<PeerSlot> {
        let ip = peer_key(ip);
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Writes `WWW-Authenticate` with the case EST-WIRE.md requires.
///
/// hyper's `title_case_headers` writes `Www-Authenticate`, and its per-header case map is
/// crate-private, but libest's client finds the challenge with a case-sensitive
/// `strncmp(name, "WWW-Authenticate", 16)` and never sends its password without it. This
/// wrapper rewrites exactly that header name (same length, so framing is unchanged) in what
/// hyper writes; hyper writes a response head in one buffer.
pub struct HeaderCaseFix<T> {
    inner: T,
}

impl<T> HeaderCaseFix<T> {
    pub fn new(inner: T) -> Self {
        Self { inner }
    }
}

const TITLE_CASED: &[u8] = b"\r\nWww-Authenticate: ";
const WIRE_CASED: &[u8] = b"\r\nWWW-Authenticate: ";

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HeaderCaseFix<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HeaderCaseFix<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // Only a 401 carries the challenge, and hyper writes a response head at the start of a
        // write: other responses pass through unscanned.
        let at = if buf.starts_with(b"HTTP/1.1 401 ") {
            buf.windows(TITLE_CASED.len())
                .position(|w| w == TITLE_CASED)
        } else {
            None
        };
        match at {
            Some(at) => {
                let mut fixed = buf.to_vec();
                fixed[at..at + WIRE_CASED.len()].copy_from_slice(WIRE_CASED);
                std::pin::Pin::new(&mut self.inner).poll_write(cx, &fixed)
            }
            None => std::pin::Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
