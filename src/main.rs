//! The `matter-est` command line: parse arguments, load the config, run one subcommand.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use matter_est::config::Config;
use matter_est::issuance::{IssueOptions, Issuer};
use matter_est::profile::dev;
use matter_est::store::redb::RedbLedger;
use matter_est::{Error, Result, asn1, batch, csr, matter, revocation, server, signer};

#[derive(Parser)]
#[command(
    name = "matter-est",
    version,
    about = "EST server issuing Matter DACs from a PAI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a development PKI (PAA, PAI for VID FFF1, TLS and gateway certificates) and a
    /// config pointing at it.
    InitDev {
        /// Directory to create it in.
        #[arg(long, default_value = "matter-est-dev")]
        dir: PathBuf,
        /// Replace existing keys and certificates.
        #[arg(long)]
        force: bool,
    },
    /// Issue one DAC offline from a CSR, through the same checks as the server.
    Issue {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        label: Option<String>,
        /// The CSR: DER, base64 or PEM.
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the DAC.
        #[arg(long)]
        out: PathBuf,
        /// Write PEM instead of DER.
        #[arg(long)]
        pem: bool,
    },
    /// Run the EST server. Without --config: the embedded default (development PKI and ledger
    /// under ./matter-est-dev/, created on first start, on 127.0.0.1:8443).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object per log line.
        #[arg(long)]
        log_json: bool,
        /// Serve a PAI with a test VID (FFF1–FFF4) although the config does not say
        /// `danger_development_pki = true`.
        #[arg(long)]
        danger_allow_development_pki: bool,
    },
    /// One-time enrollment tokens for devices (HTTP Basic: user = token id, password = secret).
    Token {
        #[command(subcommand)]
        command: cli::tokens::TokenCommand,
    },
    /// Make keys and DACs ahead of time for a production line without a network.
    Batch {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        label: String,
        /// The PID of every DAC in the batch.
        #[arg(long)]
        pid: String,
        /// How many devices (CN = the label's cn_prefix + serial).
        #[arg(long, conflicts_with = "devices", required_unless_present = "devices")]
        count: Option<u64>,
        /// One hardware ID per line (CSV; the first column); each becomes the DAC's CN.
        #[arg(long)]
        devices: Option<PathBuf>,
        /// Output directory (created 0700; an interrupted batch here is resumed).
        #[arg(long)]
        out: PathBuf,
        /// Encrypt each private key with the passphrase in this environment variable.
        #[arg(long)]
        encrypt_passphrase_env: Option<String>,
        /// Encrypt each private key to the line's P-256 certificate or public key (PEM) as CMS
        /// (`openssl cms -decrypt -inkey line.key` reads it).
        #[arg(long, conflicts_with = "encrypt_passphrase_env")]
        encrypt_to: Option<PathBuf>,
        /// Also write the finished batch as one archive, OUT.tar.
        #[arg(long)]
        archive: bool,
    },
    /// Revoke a DAC (RFC 5280 reason name) and reissue its label's CRL.
    Revoke(cli::ops::RevokeArgs),
    /// Write a label's CRL (DER), or print its DCL revocation point (`crl dcl-info`).
    Crl(cli::ops::CrlArgs),
    /// The DACs on record: list (filtered, paginated), show one, count.
    Certs {
        #[command(subcommand)]
        command: cli::certs::CertsCommand,
    },
    /// The hash-chained audit log in the ledger: verify it, list it.
    Audit {
        #[command(subcommand)]
        command: cli::audit::AuditCommand,
    },
    /// Make a Matter CSR (P-256 key, CN/VID/PID subject) with our own code, to try `issue`.
    SampleCsr {
        /// Where to write the CSR (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Where to write its private key (PKCS#8 PEM, mode 0600); default OUT with `.key`.
        #[arg(long)]
        key_out: Option<PathBuf>,
        #[arg(long, default_value = "sample-device-0001")]
        cn: String,
        #[arg(long, default_value = "FFF1")]
        vid: String,
        #[arg(long, default_value = "8000")]
        pid: String,
    },
}

/// Threads for the CPU part of issuance (CSR verification, signing, self-check). They never wait
/// for the ledger's fsync (that is awaited asynchronously), so a few per core keep every core
/// busy; more would only add context switches and allocator arenas.
fn issuing_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// Where `serve` without --config keeps the embedded default.
const EMBEDDED_DIR: &str = "matter-est-dev";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("matter-est: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::InitDev { dir, force } => {
            let made = dev::init(&dir, force)?;
            if made.created {
                println!("created the development PKI in {}", made.dir.display());
            } else {
                println!(
                    "the development PKI in {} exists; kept it (use --force to replace it)",
                    made.dir.display()
                );
            }
            println!("config: {}", made.config.display());
            Ok(())
        }
        Command::Issue {
            config,
            label,
            csr: csr_path,
            out,
            pem,
        } => {
            let config = Config::load(&config)?;
            let label = label.unwrap_or_else(|| config.default_label.clone());
            config.label(&label)?;
            let body = std::fs::read(&csr_path).map_err(|e| Error::io(&csr_path, e))?;
            let req = csr::parse(&body)?;
            let ledger = Arc::new(RedbLedger::open(&config.ledger)?);
            let issuer = Issuer::new(&config, ledger.clone())?;
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let issued = issuer.issue(
                &label,
                &req,
                &IssueOptions {
                    requester: format!("cli:{user}"),
                    ..Default::default()
                },
            )?;
            let bytes = if pem {
                der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &issued.dac.der)
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .into_bytes()
            } else {
                issued.dac.der.clone()
            };
            std::fs::write(&out, bytes).map_err(|e| Error::io(&out, e))?;
            ledger.close();
            println!(
                "issued DAC serial {} subject {} -> {}",
                asn1::hex(&issued.dac.serial),
                issued.dac.subject,
                out.display()
            );
            Ok(())
        }
        Command::Serve {
            config,
            log_json,
            danger_allow_development_pki,
        } => serve(config, log_json, danger_allow_development_pki),
        Command::Token { command } => cli::tokens::run(command),
        Command::Batch {
            config,
            label,
            pid,
            count,
            devices,
            out,
            encrypt_passphrase_env,
            encrypt_to,
            archive,
        } => {
            let config = Config::load(&config)?;
            config.label(&label)?;
            let pid = matter::Pid::parse(&pid)?;
            let ledger = Arc::new(RedbLedger::open(&config.ledger)?);
            let issuer = Issuer::new(&config, ledger.clone())?;
            let devices = match (count, devices) {
                (_, Some(path)) => batch::Devices::List(path),
                (Some(n), None) => batch::Devices::Count(n),
                (None, None) => {
                    return Err(Error::BadRequest("give --count N or --devices FILE".into()));
                }
            };
            let start = std::time::Instant::now();
            let report = batch::run(
                &issuer,
                &batch::BatchOptions {
                    label,
                    pid,
                    devices,
                    out: out.clone(),
                    passphrase_env: encrypt_passphrase_env,
                    encrypt_to,
                    progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                    archive,
                },
            )?;
            drop(issuer);
            ledger.close();
            let secs = start.elapsed().as_secs_f64();
            for (id, reason) in &report.failures {
                eprintln!("device {id}: {reason}");
            }
            let s = &report.summary;
            println!(
                "batch {}: label {} VID {} PID {}: {} of {} devices ({} made now at {:.0}/s, {} recovered), serials {} .. {}, keys {}",
                s.status,
                s.label,
                s.vid,
                s.pid,
                s.count,
                s.requested,
                report.made,
                report.made as f64 / secs.max(1e-9),
                report.recovered,
                s.first_serial.as_deref().unwrap_or("-"),
                s.last_serial.as_deref().unwrap_or("-"),
                s.key_encryption,
            );
            println!("output: {}", out.display());
            if report.failures.is_empty() {
                Ok(())
            } else {
                Err(Error::BadRequest(format!(
                    "{} devices failed; rerun the same command to retry them",
                    report.failures.len()
                )))
            }
        }
        Command::Revoke(args) => cli::ops::revoke(args),
        Command::Crl(args) => cli::ops::crl(args),
        Command::Audit { command } => cli::audit::run(command),
        Command::Certs { command } => cli::certs::run(command),
        Command::SampleCsr {
            out,
            key_out,
            cn,
            vid,
            pid,
        } => {
            let vid = matter::Vid::parse(&vid)?;
            let pid = matter::Pid::parse(&pid)?;
            let name = dev::name(&[
                (asn1::oid::COMMON_NAME, &cn),
                (asn1::oid::MATTER_VID, &vid.to_string()),
                (asn1::oid::MATTER_PID, &pid.to_string()),
            ]);
            let (pkcs8, _) = signer::generate_p256()?;
            let key = signer::KeySigner::from_pkcs8(&pkcs8)?;
            let csr = csr::build(&name, &key)?;
            let key_out = key_out.unwrap_or_else(|| out.with_extension("key"));
            let dir = key_out.parent().unwrap_or(std::path::Path::new("."));
            let file = key_out
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("sample.key");
            dev::write_key(dir, file, &pkcs8)?;
            let pem =
                der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &csr)
                    .map_err(|e| Error::Internal(e.to_string()))?;
            std::fs::write(&out, pem).map_err(|e| Error::io(&out, e))?;
            println!("wrote CSR {} and key {}", out.display(), key_out.display());
            Ok(())
        }
    }
}

fn serve(config: Option<PathBuf>, log_json: bool, danger_dev: bool) -> Result<()> {
    let _logs = init_logs(log_json);
    let embedded = config.is_none();
    let config_path = match config {
        Some(path) => path,
        None => dev::init(std::path::Path::new(EMBEDDED_DIR), false)?.config,
    };
    let config = Config::load(&config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(issuing_threads())
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let ledger = Arc::new(RedbLedger::open(&config.ledger)?);
    let issuer = Arc::new(Issuer::new(&config, ledger.clone())?);
    cli::serve::config_loaded(ledger.as_ref(), &config.path)?;
    let test_vid = issuer
        .labels()
        .find(|l| (0xfff1..=0xfff4).contains(&l.pai.vid.value()));
    if let Some(label) = test_vid
        && !config.danger_development_pki
        && !danger_dev
    {
        return Err(Error::Config {
            file: config.path.clone(),
            key: format!("labels.{}.pai", label.config.name),
            problem: format!(
                "the PAI has test VID {}: development material; set danger_development_pki = true \
                 or pass --danger-allow-development-pki if that is intended",
                label.pai.vid
            ),
        });
    }
    runtime.block_on(async {
        let crls = Arc::new(revocation::CrlService::new(issuer.clone())?);
        let running = server::start(&config, issuer).await?;
        let publisher = revocation::publish::start(crls, config.crl_listen).await?;
        let heads = cli::serve::log_audit_heads(ledger.clone());
        let crl_addr = publisher
            .addr
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::info!(addr = %running.addr, crl = %crl_addr, config = %config.path.display(),
            "matter-est serving");
        if embedded {
            print_try_it(&running.addr, &config.default_label);
        }
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        running.shutdown().await;
        publisher.shutdown().await;
        heads.abort();
        Ok::<(), Error>(())
    })?;
    ledger.close();
    cli::serve::log_audit_head(ledger.as_ref());
    tracing::info!("ledger closed");
    Ok(())
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
    let d = EMBEDDED_DIR;
    let port = addr.port();
    println!(
        r#"
matter-est is serving the embedded default (development PKI, test VID FFF1) on https://localhost:{port}/
Try it from another terminal:

  # the CA certificates (PAI, PAA)
  curl -s --cacert {d}/tls/ca.pem https://localhost:{port}/.well-known/est/cacerts | openssl base64 -d | openssl pkcs7 -inform DER -print_certs

  # a device key and a Matter CSR (VID FFF1 and PID 8000 in the CN's Matter legacy form, which
  # openssl's -subj can write), then enroll as the development gateway
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key -out device.csr \
      -subj "/CN=device-0001 Mvid:FFF1 Mpid:8000"
  curl -s --cacert {d}/tls/ca.pem --cert {d}/clients/gateway.pem --key {d}/clients/gateway.key \
      -H "Content-Type: application/pkcs10" --data-binary @device.csr \
      https://localhost:{port}/.well-known/est/{label}/simpleenroll | openssl base64 -d | openssl pkcs7 -inform DER -print_certs > dac-chain.pem

  # or with the bundled client (a new key and Matter CSR made for you; writes device-0002.*.pem)
  cargo run --release -p est-client -- enroll --server https://localhost:{port} --label {label} --cacert {d}/tls/ca.pem \
      --cert {d}/clients/gateway.pem --key {d}/clients/gateway.key --vid FFF1 --pid 8000 --device-id device-0002 --out device-0002

"#
    );
}
