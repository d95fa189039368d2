//! The `est-client` command line: cacerts, csrattrs, enroll, reenroll, renew, and gateway mode
//! for a production line.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use der::{Decode, Encode};
use est_client::files::{self, io_err as file_err};
use est_client::matter::{self, DeviceSubject};
use est_client::wire::Issued;
use est_client::{Client, ClientConfig, Enrolled, Error, Result, wire};
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(name = "est-client", version, about = "EST client for Matter DACs")]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Keep a returned certificate that is not the Matter DAC asked for: one without a VID or
    /// PID, or whose CN, VID or PID differ from the CSR's (a server that does not issue Matter
    /// DACs). Without it such a certificate is an error and is not written. A certificate for
    /// another key than the CSR's is never accepted.
    #[arg(long, global = true)]
    accept_non_matter: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Conn {
    /// The EST server, e.g. https://est.example.com:8443
    #[arg(long, global = true, default_value = "https://localhost:8443")]
    server: String,
    /// The server's label (RFC 7030 §3.2.2), e.g. one PAI.
    #[arg(long, global = true)]
    label: Option<String>,
    /// CA certificates (PEM) to trust for the server; the only trust anchors used.
    #[arg(long, global = true)]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM, leaf first) for mutual TLS.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Its private key (PEM); refused when group or others may read it (chmod 600).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// HTTP Basic user (e.g. an enrollment token id); the password comes from the
    /// EST_PASSWORD environment variable, --password-file, or a prompt on the terminal, never
    /// the command line.
    #[arg(long, global = true)]
    user: Option<String>,
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// How long to keep retrying a request the server holds (202 Retry-After), seconds.
    #[arg(long, global = true, default_value_t = 600)]
    max_wait: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the CA certificates (PAI, PAA).
    Cacerts {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show the CSR attributes the server asks for.
    Csrattrs,
    /// Enroll a device: a new P-256 key and Matter CSR (or --csr), then simpleenroll.
    Enroll {
        #[command(flatten)]
        device: DeviceArgs,
        /// Send this CSR (PEM or DER) instead of making a key and CSR.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Output prefix: PREFIX.dac.pem, PREFIX.key.pem (0600), PREFIX.chain.pem (the issuers
        /// the server sent, else those from /cacerts); a missing directory is created 0700.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        format: Format,
    },
    /// Re-enroll with the DAC given as --cert/--key: same subject, new key unless --keep-key.
    Reenroll {
        #[arg(long)]
        keep_key: bool,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        format: Format,
    },
    /// Re-enroll only when the --cert DAC has used more than --threshold of its lifetime.
    Renew {
        /// Share of the lifetime after which to renew (0-1).
        #[arg(long, default_value_t = 0.7)]
        threshold: f64,
        #[arg(long)]
        keep_key: bool,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        format: Format,
    },
    /// Production-line gateway: enroll every device of a CSV over keep-alive connections.
    Gateway {
        /// One hardware ID per line (first CSV column; header `device_id` and `#` lines skipped).
        #[arg(long)]
        devices: PathBuf,
        #[arg(long)]
        vid: String,
        #[arg(long)]
        pid: String,
        /// Output directory (created 0700): DIR/<device>.key.pem (0600), DIR/<device>.dac.pem,
        /// DIR/chain.pem and DIR/manifest.jsonl (0600) (flat: a directory per device costs the
        /// file system more). A key file left by an earlier run is used again only if it is
        /// ours: owned by this user, a regular file, mode 0600.
        #[arg(long)]
        out: PathBuf,
        /// Keep-alive connections, each carrying one request at a time (HTTP/1.1 does not
        /// multiplex): the number of enrollments in flight.
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
}

#[derive(Args)]
struct DeviceArgs {
    /// Vendor ID, 4 uppercase hex digits.
    #[arg(long)]
    vid: Option<String>,
    /// Product ID, 4 uppercase hex digits.
    #[arg(long)]
    pid: Option<String>,
    /// The device identity, written as the CN.
    #[arg(long)]
    device_id: Option<String>,
    /// A hardware serial number, written as the serialNumber attribute.
    #[arg(long)]
    serial_number: Option<String>,
}

#[derive(Args, Clone, Copy)]
struct Format {
    /// Write PEM (default).
    #[arg(long, conflicts_with = "der")]
    pem: bool,
    /// Write DER: PREFIX.dac.der, PREFIX.key.der, PREFIX.chain.der (PAI, PAA concatenated).
    #[arg(long)]
    der: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("est-client: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("est-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client(conn: &Conn, identity_override: Option<(&Path, &Path)>) -> Result<Client> {
    let cacert = conn.cacert.as_deref().ok_or_else(|| {
        Error::Usage("--cacert is required: the CA that issued the server's certificate".into())
    })?;
    let identity = identity_override.or(match (&conn.cert, &conn.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err(Error::Usage("--cert and --key go together".into())),
    });
    let mut config = ClientConfig::new(&conn.server, conn.label.as_deref(), cacert, identity)?;
    if let Some(user) = &conn.user {
        let password = match &conn.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| Error::File {
                    path: p.display().to_string(),
                    problem: e.to_string(),
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            None => match std::env::var("EST_PASSWORD") {
                Ok(p) => p,
                // Asked on the terminal without echo; never taken from the command line.
                Err(_) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    rpassword::prompt_password(format!("password for {user}: "))
                        .map_err(|e| Error::Usage(format!("could not read the password: {e}")))?
                }
                Err(_) => {
                    return Err(Error::Usage(
                        "--user needs the password in EST_PASSWORD, --password-file, or typed at the prompt of a terminal"
                            .into(),
                    ));
                }
            },
        };
        config.basic = Some((user.clone(), password));
    }
    Ok(Client::new(config))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let conn = &cli.conn;
    let matter_only = !cli.accept_non_matter;
    match &cli.command {
        Command::Cacerts { out } => {
            let certs = client(conn, None)?.cacerts().await?;
            let pem = wire::pem(&certs)?;
            match out {
                Some(path) => files::write_file(path, pem.as_bytes(), files::PUBLIC)?,
                None => print!("{pem}"),
            }
            eprintln!("{} CA certificates", certs.len());
        }
        Command::Csrattrs => match client(conn, None)?.csrattrs().await? {
            Some(der) => {
                for oid in csrattrs_oids(&der) {
                    println!("{oid}");
                }
            }
            None => println!("(the server asks for no particular attributes)"),
        },
        Command::Enroll {
            device,
            csr,
            out,
            format,
        } => {
            let c = client(conn, None)?;
            let (csr_der, key) = match csr {
                Some(path) => (read_csr(path)?, None),
                None => {
                    let key = matter::generate_key()?;
                    let subject = DeviceSubject {
                        cn: device.device_id.clone(),
                        serial_number: device.serial_number.clone(),
                        vid: device.vid.clone(),
                        pid: device.pid.clone(),
                    };
                    if subject.cn.is_none() && subject.serial_number.is_none() {
                        return Err(Error::Usage(
                            "give --device-id and/or --serial-number (or --csr)".into(),
                        ));
                    }
                    (matter::csr(&key, &subject)?, Some(key))
                }
            };
            // The key is on disk before the request: a lost response can be retried with it.
            if let Some(key) = &key {
                write_key(out, key, *format)?;
            }
            let issued = with_retry(conn.max_wait, || c.simpleenroll(&csr_der)).await?;
            if matter_only {
                matter::check_dac(&csr_der, &issued.certificate)?;
            }
            write_outputs(&c, out, &issued, *format).await?;
            println!("{}", describe(&issued.certificate));
        }
        Command::Reenroll {
            keep_key,
            out,
            format,
        } => {
            let issued = reenroll(conn, *keep_key, out, *format, matter_only).await?;
            println!("{}", describe(&issued.certificate));
        }
        Command::Renew {
            threshold,
            keep_key,
            out,
            format,
        } => {
            let cert_path = conn
                .cert
                .as_deref()
                .ok_or_else(|| Error::Usage("--cert (the DAC to renew) is required".into()))?;
            let (nb, na) = validity(&read_cert_der(cert_path)?)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let used = (now.saturating_sub(nb)) as f64 / (na.saturating_sub(nb)).max(1) as f64;
            if used < *threshold {
                println!(
                    "not renewing: {:.1} % of the lifetime used, below {:.0} %",
                    used * 100.0,
                    threshold * 100.0
                );
                return Ok(ExitCode::SUCCESS);
            }
            let issued = reenroll(conn, *keep_key, out, *format, matter_only).await?;
            println!("renewed: {}", describe(&issued.certificate));
        }
        Command::Gateway {
            devices,
            vid,
            pid,
            out,
            connections,
        } => {
            return gateway(conn, devices, (vid, pid), out, *connections, matter_only).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn reenroll(
    conn: &Conn,
    keep_key: bool,
    out: &Path,
    format: Format,
    matter_only: bool,
) -> Result<Issued> {
    let (cert, old_key) = match (&conn.cert, &conn.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            return Err(Error::Usage(
                "--cert and --key (the DAC being renewed and its key) are required".into(),
            ));
        }
    };
    let dac = read_cert_der(&cert)?;
    let subject = x509_cert::Certificate::from_der(&dac)
        .map_err(|e| Error::BadResponse(format!("{}: {e}", cert.display())))?
        .tbs_certificate()
        .subject()
        .to_der()
        .map_err(|e| Error::BadResponse(e.to_string()))?;
    let key = if keep_key {
        matter::read_key(&old_key)?
    } else {
        matter::generate_key()?
    };
    // RFC 7030 §4.2.2: the CSR subject is the renewed certificate's subject.
    let csr = matter::csr_for_name(&key, &subject)?;
    let c = client(conn, Some((&cert, &old_key)))?;
    write_key(out, &key, format)?;
    let issued = with_retry(conn.max_wait, || c.simplereenroll(&csr)).await?;
    if matter_only {
        matter::check_dac(&csr, &issued.certificate)?;
    }
    write_outputs(&c, out, &issued, format).await?;
    Ok(issued)
}

/// Retries a held (202) request until `max_wait` seconds have passed.
async fn with_retry<F, Fut>(max_wait: u64, mut op: F) -> Result<Issued>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Enrolled>>,
{
    let deadline = Instant::now() + Duration::from_secs(max_wait);
    loop {
        match op().await? {
            Enrolled::Issued(issued) => return Ok(issued),
            Enrolled::Pending { retry_after } => {
                if Instant::now() + retry_after > deadline {
                    return Err(Error::Status {
                        status: 202,
                        message: format!("still held by the server after {max_wait} s"),
                    });
                }
                eprintln!(
                    "held by the server; retrying in {} s",
                    retry_after.as_secs()
                );
                tokio::time::sleep(retry_after).await;
            }
        }
    }
}

/// Gateway mode: a pipeline of three stages, so that no stage waits for another's chunk.
/// 1. keys: one thread makes (or, on a rerun, reads) each device's key and CSR; a chunk of keys
///    is made durable with one `syncfs` before any of its CSRs is sent (a DAC must never exist
///    for a key we lost);
/// 2. enrollment: one task per keep-alive connection sends CSRs (network only);
/// 3. manifest: one blocking step per chunk writes the DAC files and makes them durable before
///    their manifest lines are appended, so a device in the manifest is complete on disk and a
///    rerun skips exactly those.
async fn gateway(
    conn: &Conn,
    devices: &Path,
    subject: (&str, &str),
    out: &Path,
    connections: usize,
    matter_only: bool,
) -> Result<ExitCode> {
    let ids = read_devices(devices)?;
    files::create_private_dir(out)?;
    let manifest_path = out.join("manifest.jsonl");
    let done = read_done(&manifest_path);
    let todo: Vec<String> = ids
        .into_iter()
        .filter(|id| !done.contains_key(id))
        .collect();
    let total = todo.len();
    let clients: Vec<Client> = (0..connections.max(1))
        .map(|_| client(conn, None))
        .collect::<Result<_>>()?;
    let manifest = files::open_private_append(&manifest_path)?;
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} devices  {per_sec}  ETA {eta}",
    ) {
        bar.set_style(style);
    }
    let start = Instant::now();

    let (csr_tx, csr_rx) = tokio::sync::mpsc::channel::<(String, Result<Vec<u8>>)>(2 * CHUNK);
    let (vid, pid) = (subject.0.to_string(), subject.1.to_string());
    let keys = {
        let out = out.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<()> {
            for chunk in todo.chunks(CHUNK) {
                let mut csrs = Vec::with_capacity(chunk.len());
                for id in chunk {
                    let csr = device_key(&out, id).and_then(|key| {
                        matter::csr(
                            &key,
                            &DeviceSubject {
                                cn: Some(id.clone()),
                                vid: Some(vid.clone()),
                                pid: Some(pid.clone()),
                                serial_number: None,
                            },
                        )
                    });
                    csrs.push((id.clone(), csr));
                }
                sync_dir(&out)?;
                for item in csrs {
                    if csr_tx.blocking_send(item).is_err() {
                        return Ok(()); // the enrollment stage stopped; its error is reported
                    }
                }
            }
            Ok(())
        })
    };

    let (done_tx, done_rx) = tokio::sync::mpsc::channel::<(String, Result<Issued>)>(2 * CHUNK);
    let csr_rx = Arc::new(tokio::sync::Mutex::new(csr_rx));
    let senders: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (csr_rx, done_tx) = (csr_rx.clone(), done_tx.clone());
            tokio::spawn(async move {
                loop {
                    let next = csr_rx.lock().await.recv().await;
                    let Some((id, csr)) = next else { break };
                    // A device whose key could not be made or read fails alone.
                    let result = match csr {
                        Ok(csr) => enroll_device(&client, &csr, matter_only).await,
                        Err(e) => Err(e),
                    };
                    if done_tx.send((id, result)).await.is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(done_tx);

    let (failed, chain) = finish_devices(out, done_rx, manifest, &manifest_path, &bar).await?;
    for s in senders {
        s.await.map_err(|e| Error::Usage(e.to_string()))?;
    }
    keys.await.map_err(|e| Error::Usage(e.to_string()))??;
    bar.finish_and_clear();
    if !chain.written
        && let Some(leaf) = chain.leaf
    {
        let issued = Issued {
            certificate: leaf,
            chain: Vec::new(),
        };
        // An older run's chain.pem stays: its devices' DACs need it.
        let path = out.join("chain.pem");
        write_chain(&client(conn, None)?, &issued, &path, false, path.exists()).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} devices enrolled, {failed} failed, {} already done ({:.0} devices/s); manifest {}",
        total - failed,
        done.len(),
        (total - failed) as f64 / secs.max(1e-9),
        manifest_path.display()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The gateway's `chain.pem`: written from the first response that carries a chain; when none
/// did (a server answering with the DAC alone), from `/cacerts` for `leaf` at the end.
#[derive(Default)]
struct ChainFile {
    written: bool,
    leaf: Option<Vec<u8>>,
}

/// The gateway's last stage, off the async threads: a chunk's DAC files written and made
/// durable (a chunk at a time, or after a short pause in the results), then their manifest
/// lines. Returns how many devices failed, and the state of `chain.pem`.
async fn finish_devices(
    out: &Path,
    mut results: tokio::sync::mpsc::Receiver<(String, Result<Issued>)>,
    manifest: std::fs::File,
    manifest_path: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(usize, ChainFile)> {
    let mut failed = 0;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut state = (manifest, ChainFile::default());
    loop {
        let next = tokio::time::timeout(FLUSH_AFTER, results.recv()).await;
        let closed = matches!(next, Ok(None));
        if let Ok(Some(result)) = next {
            chunk.push(result);
            if chunk.len() < CHUNK {
                continue;
            }
        }
        if !chunk.is_empty() {
            let (dir, path, work) = (
                out.to_path_buf(),
                manifest_path.to_path_buf(),
                std::mem::take(&mut chunk),
            );
            let done;
            (state, done) = tokio::task::spawn_blocking(move || {
                let (mut manifest, mut chain) = state;
                let done = write_chunk(&dir, work, &mut chain)?;
                let lines: String = done.iter().map(|(_, line)| format!("{line}\n")).collect();
                manifest
                    .write_all(lines.as_bytes())
                    .map_err(|e| file_err(&path, e))?;
                Ok::<_, Error>(((manifest, chain), done))
            })
            .await
            .map_err(|e| Error::Usage(e.to_string()))??;
            for (failure, _) in done {
                if let Some((id, e)) = failure {
                    failed += 1;
                    bar.suspend(|| eprintln!("device {id}: {e}"));
                }
                bar.inc(1);
            }
        }
        if closed {
            break;
        }
    }
    state.0.sync_all().map_err(|e| file_err(manifest_path, e))?;
    Ok((failed, state.1))
}

/// A device's manifest line, with its failure if it has one.
type ManifestLine = (Option<(String, Error)>, serde_json::Value);

/// One chunk of enrollment results: each DAC written to `<id>.dac.pem` (the chain, the same for
/// every device of a label, to `chain.pem` once), all made durable with one `syncfs`; then the
/// manifest line of each device.
fn write_chunk(
    out: &Path,
    chunk: Vec<(String, Result<Issued>)>,
    chain: &mut ChainFile,
) -> Result<Vec<ManifestLine>> {
    let mut done = Vec::with_capacity(chunk.len());
    for (id, result) in chunk {
        let written = result.and_then(|issued| {
            let dac_pem = wire::pem(std::slice::from_ref(&issued.certificate))?;
            let serial = x509_cert::Certificate::from_der(&issued.certificate)
                .map(|c| hex(c.tbs_certificate().serial_number().as_bytes()))
                .map_err(|e| Error::BadResponse(format!("the DAC does not parse: {e}")))?;
            files::write_new_file(
                &out.join(format!("{id}.dac.pem")),
                dac_pem.as_bytes(),
                files::PUBLIC,
            )?;
            if !chain.written && !issued.chain.is_empty() {
                files::write_file(
                    &out.join("chain.pem"),
                    wire::pem(&issued.chain)?.as_bytes(),
                    files::PUBLIC,
                )?;
                chain.written = true;
            }
            chain.leaf.get_or_insert(issued.certificate);
            Ok((serial, hex(&Sha256::digest(dac_pem.as_bytes()))))
        });
        done.push(match written {
            Ok((serial, sha)) => (
                None,
                serde_json::json!({
                    "device_id": id, "serial": serial, "dac_file": format!("{id}.dac.pem"),
                    "sha256": sha, "status": "ok"
                }),
            ),
            Err(e) => {
                let line = serde_json::json!({
                    "device_id": id, "status": "failed", "error": e.to_string()
                });
                (Some((id, e)), line)
            }
        });
    }
    sync_dir(out)?;
    Ok(done)
}

/// The device's key: the one a previous, interrupted run wrote (so a lost response is retried
/// with the same key and subject and gets the same DAC back), else a new one (not yet synced).
/// A key file that exists but cannot be read, or that we did not make (another owner, group or
/// other permissions, not a regular file: [`files::read_own_key`]), is the device's error,
/// never replaced: its CSR may have been sent. One that is read but is not PEM was torn by an
/// interrupted run before it was synced, so its CSR was never sent: it is replaced.
fn device_key(out: &Path, id: &str) -> Result<Vec<u8>> {
    let key_path = out.join(format!("{id}.key.pem"));
    if let Some(pem) = files::read_own_key(&key_path)?
        && let Ok(k) = matter::parse_key(&pem)
    {
        return Ok(k);
    }
    let k = matter::generate_key()?;
    files::write_new_file(&key_path, matter::key_pem(&k)?.as_bytes(), files::PRIVATE)?;
    Ok(k)
}

/// One device of the gateway: simpleenroll; the certificate for the device's key (held to the
/// Matter DAC rules unless `matter_only` is off) and its chain.
async fn enroll_device(client: &Client, csr: &[u8], matter_only: bool) -> Result<Issued> {
    match client.simpleenroll(csr).await? {
        Enrolled::Issued(issued) => {
            if matter_only {
                matter::check_dac(csr, &issued.certificate)?;
            }
            Ok(issued)
        }
        Enrolled::Pending { retry_after } => Err(Error::Status {
            status: 202,
            message: format!(
                "held by the server; rerun after {} s",
                retry_after.as_secs()
            ),
        }),
    }
}

/// Makes every file written under `dir` durable: one syncfs instead of an fsync per file.
fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| file_err(dir, e))?;
    rustix::fs::syncfs(&f).map_err(|e| file_err(dir, e.into()))
}

/// Devices per chunk of the gateway: one syncfs for the keys and one for the DACs per chunk.
const CHUNK: usize = 256;

/// The manifest stage syncs a partial chunk when no result came for this long, so the manifest
/// keeps up with a slow line.
const FLUSH_AFTER: Duration = Duration::from_millis(250);

fn read_done(manifest: &Path) -> HashMap<String, String> {
    let mut done = HashMap::new();
    if let Ok(f) = std::fs::File::open(manifest) {
        for line in std::io::BufReader::new(f)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["status"] == "ok"
                && let Some(id) = v["device_id"].as_str()
            {
                done.insert(
                    id.to_string(),
                    v["serial"].as_str().unwrap_or("").to_string(),
                );
            }
        }
    }
    done
}

fn read_devices(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.split(',').next().unwrap_or("").trim();
        if id.is_empty() || id.starts_with('#') || (n == 0 && id.eq_ignore_ascii_case("device_id"))
        {
            continue;
        }
        if id.len() > 64
            || id.starts_with('.')
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(Error::File {
                path: path.display().to_string(),
                problem: format!(
                    "line {}: {id:?}: a device ID is 1-64 of letters, digits, '.', '_', '-'",
                    n + 1
                ),
            });
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

fn write_key(prefix: &Path, key: &[u8], format: Format) -> Result<()> {
    create_out_dir(prefix)?;
    if format.der {
        files::write_file(&with_suffix(prefix, "key.der"), key, files::PRIVATE)
    } else {
        matter::write_key(&with_suffix(prefix, "key.pem"), key)
    }
}

/// PREFIX.dac.* and PREFIX.chain.* (see [`write_chain`]).
async fn write_outputs(c: &Client, prefix: &Path, issued: &Issued, format: Format) -> Result<()> {
    create_out_dir(prefix)?;
    let (dac, ext) = if format.der {
        (issued.certificate.clone(), "der")
    } else {
        let pem = wire::pem(std::slice::from_ref(&issued.certificate))?;
        (pem.into_bytes(), "pem")
    };
    files::write_file(
        &with_suffix(prefix, &format!("dac.{ext}")),
        &dac,
        files::PUBLIC,
    )?;
    let chain = with_suffix(prefix, &format!("chain.{ext}"));
    write_chain(c, issued, &chain, format.der, false).await
}

/// Writes the chain above `issued` to `path` (PEM, or DER certificates concatenated): the one
/// the server sent, else the issuers from `/cacerts`. When neither holds it, says so and writes
/// no chain file (never an empty one); an older file at `path` is removed unless `keep_older`.
async fn write_chain(
    c: &Client,
    issued: &Issued,
    path: &Path,
    der: bool,
    keep_older: bool,
) -> Result<()> {
    match c.chain_for(issued).await {
        Ok(chain) => {
            let bytes = if der {
                chain.concat()
            } else {
                wire::pem(&chain)?.into_bytes()
            };
            files::write_file(path, &bytes, files::PUBLIC)
        }
        Err(e) => {
            eprintln!(
                "est-client: warning: {} not written, the chain is missing: {e}",
                path.display()
            );
            if keep_older {
                return Ok(());
            }
            files::remove_if_present(path)
        }
    }
}

/// The directory of an output prefix, created 0700 if missing.
fn create_out_dir(prefix: &Path) -> Result<()> {
    match prefix.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => files::create_private_dir(dir),
        _ => Ok(()),
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn read_csr(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    match der::pem::decode_vec(&bytes) {
        Ok((_, der)) => Ok(der),
        Err(_) => Ok(bytes),
    }
}

fn read_cert_der(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    if bytes.starts_with(b"-----BEGIN") {
        let text = String::from_utf8_lossy(&bytes);
        let first = text
            .split_inclusive("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default();
        der::pem::decode_vec(first.trim().as_bytes())
            .map(|(_, d)| d)
            .map_err(|e| Error::File {
                path: path.display().to_string(),
                problem: format!("not a PEM certificate: {e}"),
            })
    } else {
        Ok(bytes)
    }
}

/// (notBefore, notAfter) in Unix seconds.
fn validity(der: &[u8]) -> Result<(u64, u64)> {
    let cert =
        x509_cert::Certificate::from_der(der).map_err(|e| Error::BadResponse(e.to_string()))?;
    let v = cert.tbs_certificate().validity();
    Ok((
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    ))
}

/// `DAC serial … subject CN=…,VID=…,PID=…` (Matter attribute names, in the DAC's order).
fn describe(der: &[u8]) -> String {
    let c = match x509_cert::Certificate::from_der(der) {
        Ok(c) => c,
        Err(e) => return format!("certificate ({e})"),
    };
    let subject: Vec<String> = c
        .tbs_certificate()
        .subject()
        .iter()
        .map(|a| {
            let name = match a.oid.to_string().as_str() {
                "2.5.4.3" => "CN".to_string(),
                "2.5.4.5" => "serialNumber".to_string(),
                "1.3.6.1.4.1.37244.2.1" => "VID".to_string(),
                "1.3.6.1.4.1.37244.2.2" => "PID".to_string(),
                other => other.to_string(),
            };
            format!("{name}={}", String::from_utf8_lossy(a.value.value()))
        })
        .collect();
    format!(
        "DAC serial {} subject {}",
        hex(c.tbs_certificate().serial_number().as_bytes()),
        subject.join(",")
    )
}

fn csrattrs_oids(der: &[u8]) -> Vec<String> {
    // CsrAttrs ::= SEQUENCE OF AttrOrOID; print each OID (and an attribute's type).
    #[derive(der::Choice)]
    enum AttrOrOid {
        Oid(const_oid::ObjectIdentifier),
        Attribute(x509_cert::attr::Attribute),
    }
    Vec::<AttrOrOid>::from_der(der)
        .map(|v| {
            v.into_iter()
                .map(|a| match a {
                    AttrOrOid::Oid(o) => o.to_string(),
                    AttrOrOid::Attribute(a) => format!("{} (attribute)", a.oid),
                })
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("unreadable CsrAttrs: {e}")])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
