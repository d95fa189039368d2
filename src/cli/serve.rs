//! `serve`: the server's start (the embedded default when no config is given), its logs, reload
//! on SIGHUP, a clean stop on SIGINT/SIGTERM; and what it adds to the audit log: the config it
//! loaded, and the chain's head written to the log at intervals and on shutdown (what
//! `audit verify --head` checks a ledger against).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use matter_est::config::Config;
use matter_est::issuance::Issuer;
use matter_est::profile::dev;
use matter_est::store::Ledger;
use matter_est::store::audit::AuditEvent;
use matter_est::{Error, Result, asn1, revocation, server, store};

/// How often the audit head is written to the log. Five minutes: a cut tail can hide at most
/// the records of the last interval from `audit verify --head`, and the log gains 12 lines an
/// hour.
pub const AUDIT_HEAD_INTERVAL: Duration = Duration::from_secs(300);

/// Audits the config file `serve` started with (its SHA-256).
pub fn config_loaded(ledger: &dyn Ledger, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    ledger.audit(AuditEvent::ConfigLoaded {
        path: path.display().to_string(),
        sha256: asn1::hex(&Sha256::digest(&bytes)),
    });
    Ok(())
}

/// Logs the audit head now.
pub fn log_audit_head(ledger: &dyn Ledger) {
    match ledger.audit_head() {
        Ok(Some(head)) => tracing::info!(head = %head, "audit head"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "audit head unreadable"),
    }
}

/// Logs the audit head every [`AUDIT_HEAD_INTERVAL`] (on the runtime; abort it to stop).
pub fn log_audit_heads(ledger: Arc<dyn Ledger>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(AUDIT_HEAD_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            log_audit_head(ledger.as_ref());
        }
    })
}

/// Removes settled held requests past `[approval] held_retention_secs` now and every
/// [`matter_est::approval::PRUNE_INTERVAL`] (on the runtime; abort it to stop).
pub fn prune_held_requests(
    ledger: Arc<dyn Ledger>,
    retention: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(matter_est::approval::PRUNE_INTERVAL);
        loop {
            tick.tick().await;
            let ledger = ledger.clone();
            let now = asn1::now();
            let pruned = tokio::task::spawn_blocking(move || {
                matter_est::approval::prune(ledger.as_ref(), retention, now)
            })
            .await
            .map_err(|e| Error::Internal(e.to_string()))
            .and_then(|pruned| pruned);
            match pruned {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    retention_secs = retention.as_secs(),
                    "settled held requests removed ([approval] held_retention_secs)"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "held requests not pruned; next try in an hour")
                }
            }
        }
    })
}

/// Threads for the CPU part of issuance (CSR verification, signing, self-check). They never wait
/// for the ledger's fsync (that is awaited asynchronously), so a few per core keep every core
/// busy; more would only add context switches and allocator arenas.
fn issuing_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// Where `serve` without --config keeps the embedded default.
const EMBEDDED_DIR: &str = "matter-est-dev";

pub fn serve(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    log_json: bool,
    danger_dev: bool,
) -> Result<()> {
    let _logs = init_logs(log_json);
    let embedded = config.is_none();
    let config_path = match config {
        Some(path) => path,
        None => dev::init(std::path::Path::new(EMBEDDED_DIR), false)?.config,
    };
    let mut config = Config::load(&config_path)?;
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(issuing_threads())
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    // Before anything is counted (GET /metrics on the admin listener). With `[admin] metrics =
    // false` no recorder is installed: the macros on the request path then record nothing.
    if config.admin.metrics {
        matter_est::admin::metrics::install();
    } else {
        tracing::info!(
            "metrics off ([admin] metrics = false): nothing is counted and GET /metrics answers \
             404; set [admin] metrics = true and restart to turn them on"
        );
    }
    // Labels first: a refused configuration opens (and creates) nothing.
    let labels = Issuer::load(&config)?;
    labels.refuse_development_pki(&config, danger_dev)?;
    let ledger = store::open(&config)?;
    let issuer = Arc::new(labels.with_ledger(ledger.clone()));
    config_loaded(ledger.as_ref(), &config.path)?;
    runtime.block_on(async {
        let crls = Arc::new(revocation::CrlService::new(issuer.clone())?);
        let running = server::start(&config, issuer).await?;
        let publisher = revocation::publish::start(crls.clone(), config.crl_listen).await?;
        let admin_ctx = matter_est::admin::Ctx::serving(
            Arc::new(config.clone()),
            ledger.clone(),
            running.current_issuer(),
            crls,
        );
        let admin = matter_est::admin::listener::start(&config, admin_ctx).await?;
        let heads = log_audit_heads(ledger.clone());
        let pruning = prune_held_requests(ledger.clone(), config.held_retention);
        let crl_addr = publisher
            .addr
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        let admin_addr = admin
            .addr
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::info!(
            addr = %running.addr,
            crl = %crl_addr,
            admin = %admin_addr,
            config = %config.path.display(),
            ledger = %config.store.describe(),
            "matter-est serving"
        );
        log_labels(&running, &config.default_label);
        if embedded {
            print_try_it(&running.addr, &config.default_label);
        }
        // SIGHUP reloads the configuration (TLS certificates, labels, policy) without dropping
        // a connection; SIGINT or SIGTERM stops.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Error::Internal(format!("SIGHUP handler: {e}")))?;
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = hangup.recv() => {
                    let reloaded = Config::load(&config_path).and_then(|mut new| {
                        new.server.listen = config.server.listen;
                        if new.store != config.store {
                            tracing::warn!("the ledger ([store], ledger) changed: it takes effect at the next start");
                        }
                        if new.admin.metrics != config.admin.metrics {
                            tracing::warn!("[admin] metrics changed: it takes effect at the next start");
                        }
                        let labels = Issuer::load(&new)?;
                        labels.refuse_development_pki(&new, danger_dev)?;
                        running.reload(&new, labels)
                    });
                    match reloaded {
                        Ok(()) => {
                            tracing::info!(config = %config_path.display(), "configuration reloaded");
                            log_labels(&running, &config.default_label);
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "reload refused; still serving the previous configuration"
                        ),
                    }
                }
            }
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        running.shutdown().await;
        publisher.shutdown().await;
        admin.shutdown().await;
        heads.abort();
        pruning.abort();
        Ok::<(), Error>(())
    })?;
    ledger.close();
    log_audit_head(ledger.as_ref());
    tracing::info!("ledger closed");
    Ok(())
}

/// One `label served` line per label: what the server serves.
fn log_labels(running: &server::Running, default_label: &str) {
    for label in running.app().issuer.labels() {
        let pids = label.config.pids.to_string();
        tracing::info!(
            label = %label.config.name,
            default = label.config.name == default_label,
            pai = %label.pai.subject,
            vid = %label.pai.vid,
            pids = %pids,
            quota = label.config.quota.map_or("none".to_string(), |q| q.to_string()),
            "label served"
        );
    }
}

/// Log lines buffered for the log thread: over a second of requests at full rate. (The
/// default, 128,000, preallocates ~4 MiB.)
const LOG_BUFFER_LINES: usize = 8192;

/// The log thread writes whatever lines are queued with one `write` and flushes when the queue
/// is empty (tracing-appender's worker), instead of one `write` per line (stdout is
/// line-buffered): a busy server queues several lines per wake-up.
const LOG_WRITE_BYTES: usize = 64 * 1024;

/// rustls warns on every ClientHello whose SNI is an IP address (RFC 6066 §3 forbids it, and
/// libest's client sends one on every connection), which is the client's quirk, not the
/// operator's problem: that module logs at error and above unless `RUST_LOG` names rustls.
const QUIET_RUSTLS_SNI: &str = "rustls::msgs::handshake=error";

/// The log filter: `RUST_LOG` (default `info`), with [`QUIET_RUSTLS_SNI`] unless it names
/// rustls itself.
fn log_directives(rust_log: Option<&str>) -> String {
    let base = rust_log.filter(|v| !v.trim().is_empty()).unwrap_or("info");
    if base.contains("rustls") {
        base.to_string()
    } else {
        format!("{base},{QUIET_RUSTLS_SNI}")
    }
}

/// Logs to stdout from a thread of their own, so that a slow stdout (a pipe to a busy journald)
/// never stalls the async threads. Not lossy: a full buffer slows requests down rather than
/// dropping their lines. The guard flushes what is buffered when it is dropped.
fn init_logs(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::new(log_directives(
        std::env::var("RUST_LOG").ok().as_deref(),
    ));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(
            LOG_WRITE_BYTES,
            std::io::stdout(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn print_try_it(addr: &std::net::SocketAddr, label: &str) {
    // Absolute, so the commands work from any directory (and write nothing into this one).
    let d = std::env::current_dir()
        .map(|cwd| cwd.join(EMBEDDED_DIR))
        .unwrap_or_else(|_| EMBEDDED_DIR.into());
    let d = d.display();
    let port = addr.port();
    // The client built beside this binary (`cargo build --release --workspace` makes both),
    // wherever this is run from; else an installed one on the PATH; else how to build it.
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("est-client")))
        .filter(|p| p.exists());
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("est-client").is_file())
    });
    let (client, build) = match beside {
        Some(p) => (p.display().to_string(), String::new()),
        None if on_path => ("est-client".to_string(), String::new()),
        None => (
            "est-client".to_string(),
            "\n  #   (not built yet: `cargo build --release -p est-client` in the repository, then \
             use target/release/est-client)"
                .to_string(),
        ),
    };
    println!(
        r#"
matter-est is serving the embedded default (development PKI, test VID FFF1) on https://localhost:{port}/
Try it from another terminal, in a scratch directory (mkdir -p /tmp/try && cd /tmp/try):

  # the CA certificates (PAI, PAA)
  curl -s --cacert {d}/tls/ca.pem https://localhost:{port}/.well-known/est/cacerts | openssl base64 -d | openssl pkcs7 -inform DER -print_certs

  # a device key and a Matter CSR (VID FFF1 and PID 8000 in the CN's Matter legacy form, which
  # openssl's -subj can write), then enroll as the development gateway
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key -out device.csr \
      -subj "/CN=device-0001 Mvid:FFF1 Mpid:8000"
  curl -s --cacert {d}/tls/ca.pem --cert {d}/clients/gateway.pem --key {d}/clients/gateway.key \
      -H "Content-Type: application/pkcs10" --data-binary @device.csr \
      https://localhost:{port}/.well-known/est/{label}/simpleenroll | openssl base64 -d | openssl pkcs7 -inform DER -print_certs > dac-chain.pem

  # or with the bundled client (a new key and Matter CSR made for you; writes device-0002.*.pem){build}
  {client} enroll --server https://localhost:{port} --label {label} --cacert {d}/tls/ca.pem \
      --cert {d}/clients/gateway.pem --key {d}/clients/gateway.key --vid FFF1 --pid 8000 --device-id device-0002 --out device-0002

"#
    );
}
