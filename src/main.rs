//! The `matter-est` command line: parse arguments, load the config, run one subcommand.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use cli::pki::{ClientsCommand, TlsCommand};

use matter_est::config::Config;
use matter_est::profile::dev;
use matter_est::{Error, Result, asn1, batch, csr, matter, signer, store};

use cli::pai::{self as pai_cli, PaiCommand};

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
        /// Generate the PAI key inside a SoftHSM2 token made under DIR (softhsm/), and sign
        /// through PKCS#11; run `serve` with SOFTHSM2_CONF=DIR/softhsm/softhsm2.conf.
        #[arg(long)]
        hsm: bool,
        /// With --hsm: SoftHSM2's PKCS#11 module (default: where Debian/Ubuntu install it).
        #[arg(long, requires = "hsm")]
        module: Option<PathBuf>,
    },
    /// The PAI key in a PKCS#11 token.
    Pai {
        #[command(subcommand)]
        command: PaiCommand,
    },
    /// Issue one DAC offline from a CSR, through the same checks as the server.
    Issue {
        #[command(flatten)]
        target: cli::backend::Target,
        /// The label to issue on (default: the config's default_label).
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
        /// Sign with a PAI that has a test VID (FFF1–FFF4) although the config does not say
        /// `danger_development_pki = true`.
        #[arg(long, help_heading = "Danger")]
        danger_allow_development_pki: bool,
    },
    /// Run the EST server. Without --config: the embedded default (development PKI and ledger
    /// under ./matter-est-dev/, created on first start, on 127.0.0.1:8443).
    Serve {
        /// The configuration file (see config/example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen on this address instead of the config's server.listen (e.g. 0.0.0.0:8443).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// One JSON object per log line.
        #[arg(long)]
        log_json: bool,
        /// Serve a PAI with a test VID (FFF1–FFF4) although the config does not say
        /// `danger_development_pki = true`.
        #[arg(long, help_heading = "Danger")]
        danger_allow_development_pki: bool,
    },
    /// One-time enrollment tokens for devices (HTTP Basic: user = token id, password = secret).
    Token {
        #[command(subcommand)]
        command: cli::tokens::TokenCommand,
    },
    /// Make keys and DACs ahead of time for a production line without a network.
    #[command(group(clap::ArgGroup::new("which_devices").required(true).multiple(false)))]
    Batch {
        #[command(flatten)]
        target: cli::backend::Target,
        /// The label (PAI and policy) to issue on.
        #[arg(long)]
        label: String,
        /// The PID of every DAC in the batch.
        #[arg(long)]
        pid: String,
        /// How many devices (CN = the label's cn_prefix + serial).
        #[arg(long, group = "which_devices")]
        count: Option<u64>,
        /// One hardware ID per line (CSV; the first column); each becomes the DAC's CN.
        #[arg(long, group = "which_devices")]
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
        /// Sign with a PAI that has a test VID (FFF1–FFF4) although the config does not say
        /// `danger_development_pki = true`.
        #[arg(long, help_heading = "Danger")]
        danger_allow_development_pki: bool,
    },
    /// The EST listener's TLS certificate and its CA (certs/README.md).
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Client CAs and client certificates for gateways and operators (certs/README.md).
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// The ledger: backups.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Print a shell completion script (e.g. `matter-est completions bash >
    /// /etc/bash_completion.d/matter-est`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (matter-est.1 and one per subcommand) into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long, default_value = "man")]
        out: PathBuf,
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
    /// Enrollments held for manual approval (labels.NAME.approval = "manual"): list, approve,
    /// reject.
    Pending {
        #[command(subcommand)]
        command: cli::pending::PendingCommand,
    },
    /// The dashboard on the admin HTTPS listener: mint a one-time login link for a browser.
    Dashboard {
        #[command(subcommand)]
        command: cli::dashboard::DashboardCommand,
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
        /// The subject commonName (the device's identity).
        #[arg(long, default_value = "sample-device-0001")]
        cn: String,
        /// The Matter Vendor ID (4 uppercase hex digits).
        #[arg(long, default_value = "FFF1")]
        vid: String,
        /// The Matter Product ID (4 uppercase hex digits).
        #[arg(long, default_value = "8000")]
        pid: String,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Write a consistent copy of the ledger (one snapshot, all tables) to a new file, while
    /// the server runs (through its socket) or not.
    Backup {
        #[command(flatten)]
        target: cli::backend::Target,
        /// The backup file to create (never overwritten); with --server, a path on the
        /// server's host.
        #[arg(long)]
        out: PathBuf,
    },
    /// Copy the whole ledger (every DAC, token, re-key mark, CRL, count and the audit chain)
    /// from the ledger one configuration names to the empty ledger another names — redb to
    /// PostgreSQL or back — then verify the copy by counts and a digest over every record.
    /// Stop the servers of both first: records written meanwhile would not be copied.
    Migrate {
        /// The configuration whose ledger is copied.
        #[arg(long)]
        from: PathBuf,
        /// The configuration whose (empty) ledger receives the copy.
        #[arg(long)]
        to: PathBuf,
    },
}

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
        Command::InitDev {
            dir,
            force,
            hsm,
            module,
        } => {
            let made = if hsm {
                let module = match module {
                    Some(m) => m,
                    None => signer::pkcs11::SOFTHSM_MODULES
                        .iter()
                        .map(PathBuf::from)
                        .find(|p| p.exists())
                        .ok_or_else(|| {
                            Error::BadRequest(
                                "SoftHSM2 is not installed (apt-get install softhsm2), or give \
                                 its module with --module"
                                    .into(),
                            )
                        })?,
                };
                let mut keygen = |files: &dev::HsmFiles| pai_cli::hsm_keygen(&module, files);
                dev::init_with(
                    &dir,
                    force,
                    Some(dev::HsmKeygen {
                        module: &module,
                        keygen: &mut keygen,
                    }),
                )?
            } else {
                dev::init(&dir, force)?
            };
            if made.created {
                println!("created the development PKI in {}", made.dir.display());
            } else {
                println!(
                    "the development PKI in {} exists; kept it (use --force to replace it)",
                    made.dir.display()
                );
            }
            println!("config: {}", made.config.display());
            if hsm {
                let conf = dir.join(dev::files::SOFTHSM_CONF);
                let conf = conf.canonicalize().unwrap_or(conf);
                println!(
                    "the PAI key is in SoftHSM2 token {:?}; serve with:\n  SOFTHSM2_CONF={} matter-est serve --config {}",
                    dev::DEV_TOKEN,
                    conf.display(),
                    made.config.display()
                );
            }
            Ok(())
        }
        Command::Pai { command } => pai_cli::run(command),
        Command::Issue {
            target,
            label,
            csr: csr_path,
            out,
            pem,
            danger_allow_development_pki,
        } => {
            let body = std::fs::read(&csr_path).map_err(|e| Error::io(&csr_path, e))?;
            // Checked here, so that a bad file is named before anything is opened; sent as DER.
            let (der_csr, _) = csr::decode_body(&body)?;
            csr::parse_der(&der_csr)?;
            let backend =
                cli::backend::Backend::open_signing(&target, danger_allow_development_pki)?;
            let label = match label {
                Some(l) => l,
                None => match &target.config {
                    Some(c) => Config::load(c)?.default_label,
                    None => {
                        return Err(Error::BadRequest(
                            "with --server, name the label (--label)".into(),
                        ));
                    }
                },
            };
            let csr_b64 =
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der_csr);
            let result = backend.call(matter_est::admin::Request::post(
                &format!("/v1/labels/{label}/issue"),
                serde_json::json!({ "csr": csr_b64 }),
            ));
            backend.close();
            let issued = result?;
            let der = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                issued["der"].as_str().unwrap_or_default(),
            )
            .map_err(|e| Error::Internal(format!("the DAC came back undecodable: {e}")))?;
            let bytes = if pem {
                der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &der)
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .into_bytes()
            } else {
                der
            };
            std::fs::write(&out, bytes).map_err(|e| Error::io(&out, e))?;
            let what = if issued["repeat"] == true {
                "the DAC on record for this key and subject (nothing new issued): serial"
            } else {
                "issued DAC serial"
            };
            println!(
                "{what} {} subject {} -> {}",
                issued["serial"].as_str().unwrap_or_default().to_lowercase(),
                issued["subject"].as_str().unwrap_or_default(),
                out.display()
            );
            Ok(())
        }
        Command::Serve {
            config,
            listen,
            log_json,
            danger_allow_development_pki,
        } => cli::serve::serve(config, listen, log_json, danger_allow_development_pki),
        Command::Token { command } => cli::tokens::run(command),
        Command::Batch {
            target,
            label,
            pid,
            count,
            devices,
            out,
            encrypt_passphrase_env,
            encrypt_to,
            archive,
            danger_allow_development_pki,
        } => {
            let pid = matter::Pid::parse(&pid)?;
            let devices = match (count, devices) {
                (_, Some(path)) => batch::Devices::List(path),
                (Some(n), None) => batch::Devices::Count(n),
                (None, None) => {
                    return Err(Error::BadRequest(
                        "give --count N (devices named by the label's cn_prefix) or --devices \
                         FILE.csv (one hardware ID per line)"
                            .into(),
                    ));
                }
            };
            let backend =
                cli::backend::Backend::open_signing(&target, danger_allow_development_pki)?;
            let issuer = match &backend {
                cli::backend::Backend::Local { ctx, .. } => Some(ctx.issuer()?),
                _ => None,
            };
            let engine = match &issuer {
                // The ledger is this process's: sign here and commit in groups.
                Some(issuer) => batch::Engine::Local(issuer),
                // A running server holds it: one CSR per device through its admin API.
                None => batch::Engine::Remote(&backend),
            };
            // Ctrl-C or SIGTERM: stop starting devices, finish and record those under way.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let signal = stop_on_signal(stop.clone())?;
            let start = std::time::Instant::now();
            let report = batch::run_with(
                &engine,
                &batch::BatchOptions {
                    label,
                    pid,
                    devices,
                    out: out.clone(),
                    passphrase_env: encrypt_passphrase_env,
                    encrypt_to,
                    progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                    archive,
                    stop: Some(stop.clone()),
                },
            );
            let stopped_by = signal.stopped_by();
            // The issuer holds the ledger too: release it before the ledger closes.
            drop(issuer);
            backend.close();
            let report = report?;
            let secs = start.elapsed().as_secs_f64();
            for f in &report.failures {
                let kind = if f.permanent {
                    "permanent"
                } else {
                    "retryable"
                };
                eprintln!("device {}: {kind}: {}", f.device_id, f.reason);
            }
            let s = &report.summary;
            let permanent = report.failures.iter().filter(|f| f.permanent).count();
            let retryable = report.failures.len() - permanent;
            let not_attempted = s
                .requested
                .saturating_sub(s.count)
                .saturating_sub(report.failures.len() as u64);
            // One line, in the form of `est-client gateway`'s summary.
            let status = match (stopped_by, s.status.as_str()) {
                (Some(_), "partial") => "stopped",
                (_, status) => status,
            };
            println!(
                "batch {}: label {} VID {} PID {}: {} of {} devices ({} made now at {:.0}/s, {} \
                 recovered), {} failed ({permanent} permanent, {retryable} retryable), \
                 {not_attempted} not attempted, in {secs:.1} s; serials {} .. {}, keys {}; \
                 manifest {} is durable",
                status,
                s.label,
                s.vid,
                s.pid,
                s.count,
                s.requested,
                report.made,
                report.made as f64 / secs.max(1e-9),
                report.recovered,
                report.failures.len(),
                s.first_serial.as_deref().unwrap_or("-"),
                s.last_serial.as_deref().unwrap_or("-"),
                s.key_encryption,
                out.join("manifest.jsonl").display(),
            );
            println!("output: {}", out.display());
            if let Some((name, exit)) = stopped_by
                && status == "stopped"
            {
                // Everything above is durable and the ledger is closed.
                eprintln!(
                    "matter-est: stopped by {name}: the devices in the manifest are on record \
                     and their files complete; rerun the same command to continue"
                );
                std::process::exit(exit);
            }
            match (permanent, retryable) {
                (0, 0) => Ok(()),
                (p, 0) => Err(Error::BadRequest(format!(
                    "{p} devices failed permanently (a rerun will not fix them): change or \
                     remove them in the device list"
                ))),
                (p, r) => Err(Error::BadRequest(format!(
                    "{r} devices failed and may succeed on a rerun of the same command; {p} \
                     failed permanently"
                ))),
            }
        }
        Command::Ledger {
            command: LedgerCommand::Migrate { from, to },
        } => {
            let (source, target) = (Config::load(&from)?, Config::load(&to)?);
            if source.store == target.store {
                return Err(Error::BadRequest(format!(
                    "--from and --to name the same ledger ({})",
                    source.store.describe()
                )));
            }
            let from_ledger = store::open_store(&source.store)?;
            let to_ledger = store::open_store(&target.store)?;
            let copied = store::migrate::migrate(from_ledger.as_ref(), to_ledger.as_ref());
            from_ledger.close();
            to_ledger.close();
            let s = copied?;
            println!(
                "copied {} to {}: {} DACs, {} subjects, {} quota counts, {} tokens, {} re-key \
                 marks, {} cRLNumbers, {} CRLs, {} audit records, {} held requests; verified: digest {}",
                source.store.describe(),
                target.store.describe(),
                s.dacs,
                s.holders,
                s.counts,
                s.tokens,
                s.rekeys,
                s.crl_numbers,
                s.crls,
                s.audit,
                s.held,
                s.digest
            );
            Ok(())
        }
        Command::Ledger {
            command: LedgerCommand::Backup { target, out },
        } => {
            // The server writes the file when it runs: give it an absolute path.
            let out = if out.is_absolute() || target.server.is_some() {
                out
            } else {
                std::env::current_dir()
                    .map_err(|e| Error::io(".", e))?
                    .join(out)
            };
            let v = cli::backend::call(
                &target,
                matter_est::admin::Request::post(
                    "/v1/ledger/backup",
                    serde_json::json!({ "out": out.display().to_string() }),
                ),
            )?;
            println!(
                "backed up {} ({} DACs) to {}",
                v["ledger"].as_str().unwrap_or_default(),
                v["records"],
                v["out"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        Command::Tls { command } => cli::pki::run_tls(command),
        Command::Clients { command } => cli::pki::run_clients(command),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "matter-est",
                &mut script,
            );
            // A closed pipe (`| head`) is the reader's choice, not an error.
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(Error::io("standard output", e))
                }
                _ => Ok(()),
            }
        }
        Command::Man { out } => {
            std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &out)
                .map_err(|e| Error::io(&out, e))?;
            println!("wrote the manual pages to {}", out.display());
            Ok(())
        }
        Command::Revoke(args) => cli::ops::revoke(args),
        Command::Crl(args) => cli::ops::crl(args),
        Command::Audit { command } => cli::audit::run(command),
        Command::Pending { command } => cli::pending::run(command),
        Command::Certs { command } => cli::certs::run(command),
        Command::Dashboard { command } => cli::dashboard::run(command),
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

/// Which signal stopped a long command, once one did.
struct SignalWatch(Arc<std::sync::OnceLock<(&'static str, i32)>>);

impl SignalWatch {
    /// The signal's name and the exit code it calls for (130 for SIGINT, 143 for SIGTERM).
    fn stopped_by(&self) -> Option<(&'static str, i32)> {
        self.0.get().copied()
    }
}

/// From now on, SIGINT (Ctrl-C) and SIGTERM set `stop` instead of killing the process, so that
/// a long command stops cleanly; returns once the handlers are in place.
fn stop_on_signal(stop: Arc<std::sync::atomic::AtomicBool>) -> Result<SignalWatch> {
    use tokio::signal::unix::{SignalKind, signal};
    let seen = Arc::new(std::sync::OnceLock::new());
    let watch = SignalWatch(seen.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        runtime.block_on(async move {
            let (mut int, mut term) = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(i), Ok(t)) => (i, t),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let got = tokio::select! {
                _ = int.recv() => ("SIGINT", 130),
                _ = term.recv() => ("SIGTERM", 143),
            };
            let _ = seen.set(got);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            eprintln!("matter-est: {}: finishing the devices under way", got.0);
        });
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(watch),
        Ok(Err(e)) => Err(Error::Internal(format!("signal handlers: {e}"))),
        Err(_) => Err(Error::Internal("signal handlers: thread ended".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18: `--help` of every command documents every option.
    #[test]
    fn every_option_has_help_text() {
        fn check(cmd: &clap::Command, path: &str) {
            let path = format!("{path} {}", cmd.get_name());
            assert!(cmd.get_about().is_some(), "{path} has no description");
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} --{id} has no help text");
                // Grouped: where the command works, and danger switches, each under a heading.
                let heading = arg.get_help_heading();
                if id.starts_with("danger_") {
                    assert_eq!(heading, Some("Danger"), "{path} --{id}");
                }
                if ["config", "server", "admin_cert", "admin_key", "admin_ca"].contains(&id)
                    && cmd.get_arguments().any(|a| a.get_id() == "server")
                {
                    assert_eq!(heading, Some("Ledger or server"), "{path} --{id}");
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, &path);
            }
        }
        let cli = <Cli as clap::CommandFactory>::command();
        cli.clone().debug_assert();
        check(&cli, "");
    }
}
