//! The `est-client` command line: cacerts, csrattrs, enroll, reenroll, renew, and gateway mode
//! for a production line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use der::{Decode, Encode};
use est_client::files::{self, io_err as file_err};
use est_client::matter::{self, DeviceSubject};
use est_client::wire::Issued;
use est_client::{Client, ClientConfig, Enrolled, Error, Result, wire};

mod gateway;

/// Help headings, in the order they are shown.
const SERVER: &str = "Server";
const AUTH: &str = "Client authentication";
const DEVICE: &str = "Device";
const OUTPUT: &str = "Output";

#[derive(Parser)]
#[command(name = "est-client", version, about = "EST client for Matter DACs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    conn: Conn,
    /// Keep a returned certificate that is not the Matter DAC asked for: one without a VID or
    /// PID, or whose CN, VID or PID differ from the CSR's (a server that does not issue Matter
    /// DACs). Without it such a certificate is an error and is not written. A certificate for
    /// another key than the CSR's is never accepted.
    #[arg(long, global = true, help_heading = SERVER, display_order = 90)]
    accept_non_matter: bool,
}

#[derive(Args)]
struct Conn {
    /// The EST server, e.g. https://est.example.com:8443
    #[arg(long, global = true, default_value = "https://localhost:8443", value_name = "URL",
          help_heading = SERVER, display_order = 80)]
    server: String,
    /// The server's label (RFC 7030 §3.2.2, /.well-known/est/LABEL/...), e.g. one PAI; none:
    /// the server's default label.
    #[arg(long, global = true, help_heading = SERVER, display_order = 81)]
    label: Option<String>,
    /// CA certificates (PEM) to trust for the server's TLS certificate; the only trust anchors
    /// used (never the system store). Required.
    #[arg(long, global = true, value_name = "FILE", help_heading = SERVER, display_order = 82)]
    cacert: Option<PathBuf>,
    /// How long to keep retrying a request the server holds (202 Retry-After), seconds.
    #[arg(long, global = true, default_value_t = 600, value_name = "SECONDS",
          help_heading = SERVER, display_order = 83)]
    max_wait: u64,
    /// Client certificate (PEM, leaf first) for mutual TLS: a gateway certificate, or the DAC
    /// being renewed (reenroll, renew).
    #[arg(long, global = true, value_name = "FILE", help_heading = AUTH, display_order = 84)]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert; refused when group or others may read it (chmod 600).
    #[arg(long, global = true, value_name = "FILE", help_heading = AUTH, display_order = 85)]
    key: Option<PathBuf>,
    /// HTTP Basic user (e.g. an enrollment token id); the password comes from the
    /// EST_PASSWORD environment variable, --password-file, or a prompt on the terminal, never
    /// the command line.
    #[arg(long, global = true, help_heading = AUTH, display_order = 86)]
    user: Option<String>,
    /// A file whose first line is the password of --user (keep it chmod 600).
    #[arg(long, global = true, value_name = "FILE", requires = "user", help_heading = AUTH,
          display_order = 87)]
    password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the CA certificates (PAI, PAA), in chain order.
    Cacerts {
        /// Write them to FILE (PEM, each certificate followed by its issuer: PAI, then PAA)
        /// instead of standard output.
        #[arg(long, value_name = "FILE", help_heading = OUTPUT)]
        out: Option<PathBuf>,
    },
    /// Show the CSR attributes the server asks for, OIDs with their names.
    Csrattrs,
    /// Enroll a device: a new P-256 key and Matter CSR (or --csr), then simpleenroll.
    Enroll {
        #[command(flatten)]
        device: DeviceArgs,
        /// Send this CSR (PEM or DER) instead of making a key and CSR.
        #[arg(long, value_name = "FILE", help_heading = DEVICE)]
        csr: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
    /// Ask the server to make the device's key (serverkeygen, RFC 7030 §4.4; the label must
    /// offer it, over mutual TLS): writes the key it returns and the DAC for it.
    Serverkeygen {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Re-enroll with the DAC given as --cert/--key: same subject, new key unless --keep-key.
    Reenroll {
        #[command(flatten)]
        renewal: Renewal,
    },
    /// Re-enroll only when the --cert DAC has used more than --threshold of its lifetime.
    Renew {
        /// Share of the lifetime after which to renew (0-1).
        #[arg(long, default_value_t = 0.7, help_heading = DEVICE)]
        threshold: f64,
        #[command(flatten)]
        renewal: Renewal,
    },
    /// Production-line gateway: enroll every device of a CSV over keep-alive connections.
    ///
    /// Each device's key, then its DAC, then its line in DIR/manifest.jsonl are made durable in
    /// that order; a rerun skips the devices done. Ctrl-C stops sending, lets the requests in
    /// flight finish and prints a summary.
    Gateway {
        /// One hardware ID per line (first CSV column; header `device_id` and `#` lines
        /// skipped); it becomes each device's CN and file names.
        #[arg(long, value_name = "CSV", help_heading = DEVICE)]
        devices: PathBuf,
        /// Vendor ID of every device, 4 uppercase hex digits.
        #[arg(long, value_parser = matter_id, help_heading = DEVICE)]
        vid: String,
        /// Product ID of every device, 4 uppercase hex digits.
        #[arg(long, value_parser = matter_id, help_heading = DEVICE)]
        pid: String,
        /// Output directory (created 0700): DIR/<device>.key.pem (0600), DIR/<device>.dac.pem,
        /// DIR/chain.pem and DIR/manifest.jsonl (0600) (flat: a directory per device costs the
        /// file system more). A key file left by an earlier run is used again only if it is
        /// ours: owned by this user, a regular file, mode 0600.
        #[arg(long, value_name = "DIR", help_heading = OUTPUT)]
        out: PathBuf,
        /// Keep-alive connections, each carrying one request at a time (HTTP/1.1 does not
        /// multiplex): the number of enrollments in flight.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..),
              help_heading = SERVER)]
        connections: u16,
    },
}

#[derive(Args)]
struct DeviceArgs {
    /// Vendor ID, 4 uppercase hex digits.
    #[arg(long, value_parser = matter_id, help_heading = DEVICE)]
    vid: Option<String>,
    /// Product ID, 4 uppercase hex digits.
    #[arg(long, value_parser = matter_id, help_heading = DEVICE)]
    pid: Option<String>,
    /// The device identity, written as the CN.
    #[arg(long, help_heading = DEVICE)]
    device_id: Option<String>,
    /// A hardware serial number, written as the serialNumber attribute.
    #[arg(long, help_heading = DEVICE)]
    serial_number: Option<String>,
}

impl DeviceArgs {
    /// The CSR subject these options name; one of --device-id and --serial-number is needed
    /// (`alternative` names another way, if the command has one).
    fn subject(&self, alternative: &str) -> Result<DeviceSubject> {
        if self.device_id.is_none() && self.serial_number.is_none() {
            return Err(Error::Usage(
                format!("give --device-id and/or --serial-number {alternative}")
                    .trim_end()
                    .to_string(),
            ));
        }
        Ok(DeviceSubject {
            cn: self.device_id.clone(),
            serial_number: self.serial_number.clone(),
            vid: self.vid.clone(),
            pid: self.pid.clone(),
        })
    }
}

/// Where enroll, reenroll and renew write.
#[derive(Args)]
struct Output {
    /// Output prefix: PREFIX.dac.pem, PREFIX.key.pem (0600), PREFIX.chain.pem (the issuers
    /// the server sent, else those from /cacerts); a missing directory is created 0700. An
    /// existing PREFIX.key.pem that est-client made is reused (a rerun gets the DAC on record).
    #[arg(long, value_name = "PREFIX", help_heading = OUTPUT)]
    out: PathBuf,
    #[command(flatten)]
    format: Format,
}

/// What reenroll and renew share.
#[derive(Args)]
struct Renewal {
    /// Keep the key of --key for the new DAC instead of making a new one.
    #[arg(long, help_heading = DEVICE)]
    keep_key: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(Args, Clone, Copy)]
struct Format {
    /// Write PEM (default).
    #[arg(long, conflicts_with = "der", help_heading = OUTPUT)]
    pem: bool,
    /// Write DER: PREFIX.dac.der, PREFIX.key.der, PREFIX.chain.der (PAI, PAA concatenated).
    #[arg(long, help_heading = OUTPUT)]
    der: bool,
}

/// A Matter VID or PID on the command line: checked before anything is made.
fn matter_id(v: &str) -> std::result::Result<String, String> {
    matter::check_id(v).map(|()| v.to_string())
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
            // A DER SET OF is sorted by encoding, not by chain: put it in chain order.
            let certs = wire::chain_order(&client(conn, None)?.cacerts().await?)?;
            let pem = wire::pem(&certs)?;
            match out {
                Some(path) => files::write_file(path, pem.as_bytes(), files::PUBLIC)?,
                None => print!("{pem}"),
            }
            eprintln!("{} CA certificates", certs.len());
        }
        Command::Csrattrs => match client(conn, None)?.csrattrs().await? {
            Some(der) => {
                for line in csrattrs_lines(&der) {
                    println!("{line}");
                }
            }
            None => println!("(the server asks for no particular attributes)"),
        },
        Command::Enroll {
            device,
            csr,
            output: Output { out, format },
        } => {
            let c = client(conn, None)?;
            let (csr_der, key) = match csr {
                Some(path) => (read_csr(path)?, None),
                None => {
                    // A key an earlier run made under this prefix is kept: its CSR may have
                    // been sent and its DAC recorded (a lost response), and only the same key
                    // and subject get that DAC back.
                    let (key, new) = match earlier_key(out, *format)? {
                        Some(key) => (key, false),
                        None => (matter::generate_key()?, true),
                    };
                    let subject = device.subject("(or --csr)")?;
                    (matter::csr(&key, &subject)?, new.then_some(key))
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
        Command::Serverkeygen {
            device,
            output: Output { out, format },
        } => {
            let c = client(conn, None)?;
            // A key of ours signs the CSR (proof of possession for the request); the DAC is for
            // the key the server makes.
            let subject = device.subject("")?;
            let csr_der = matter::csr(&matter::generate_key()?, &subject)?;
            let (key, issued) = c.serverkeygen(&csr_der).await?;
            if matter_only {
                matter::check_dac(&csr_der, &issued.certificate)?;
            }
            write_key(out, &key, *format)?;
            write_outputs(&c, out, &issued, *format).await?;
            println!("{}", describe(&issued.certificate));
        }
        Command::Reenroll { renewal } => {
            let issued = reenroll(conn, renewal, matter_only).await?;
            println!("{}", describe(&issued.certificate));
        }
        Command::Renew { threshold, renewal } => {
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
            let issued = reenroll(conn, renewal, matter_only).await?;
            println!("renewed: {}", describe(&issued.certificate));
        }
        Command::Gateway {
            devices,
            vid,
            pid,
            out,
            connections,
        } => {
            let job = gateway::Job {
                devices,
                label: conn.label.as_deref(),
                vid,
                pid,
                out,
                matter_only,
            };
            let clients = (0..*connections)
                .map(|_| client(conn, None))
                .collect::<Result<_>>()?;
            return gateway::run(&job, clients, &client(conn, None)?).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn reenroll(conn: &Conn, renewal: &Renewal, matter_only: bool) -> Result<Issued> {
    let Renewal {
        keep_key,
        output: Output { out, format },
    } = renewal;
    let format = *format;
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
    let key = if *keep_key {
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

/// The key at PREFIX.key.pem (or .key.der) that an earlier `enroll` made, if there is one. A
/// file there that we did not make, or that is no key, is refused, never replaced
/// ([`files::read_own_key`]).
fn earlier_key(prefix: &Path, format: Format) -> Result<Option<Vec<u8>>> {
    let path = with_suffix(prefix, if format.der { "key.der" } else { "key.pem" });
    let Some(bytes) = files::read_own_key(&path)? else {
        return Ok(None);
    };
    let key = if format.der {
        bytes
    } else {
        matter::parse_key(&bytes).map_err(|e| {
            Error::Usage(format!(
                "{} is not a private key ({e}): move it away or choose another --out",
                path.display()
            ))
        })?
    };
    matter::public_key_info(&key).map_err(|_| {
        Error::Usage(format!(
            "{} is not a P-256 private key: move it away or choose another --out",
            path.display()
        ))
    })?;
    eprintln!(
        "using the key an earlier run wrote to {} (a rerun gets the DAC on record)",
        path.display()
    );
    Ok(Some(key))
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

/// One line per element of a `CsrAttrs` (RFC 7030 §4.5.2: SEQUENCE OF AttrOrOID): an OID with
/// its name, or an attribute's type with its name and its values.
fn csrattrs_lines(der: &[u8]) -> Vec<String> {
    #[derive(der::Choice)]
    enum AttrOrOid {
        Oid(const_oid::ObjectIdentifier),
        Attribute(x509_cert::attr::Attribute),
    }
    let named = |oid: &const_oid::ObjectIdentifier| match oid_name(oid) {
        Some(name) => format!("{oid} {name}"),
        None => oid.to_string(),
    };
    Vec::<AttrOrOid>::from_der(der)
        .map(|v| {
            v.into_iter()
                .map(|a| match a {
                    AttrOrOid::Oid(o) => named(&o),
                    AttrOrOid::Attribute(a) => {
                        let values: Vec<String> = a
                            .values
                            .iter()
                            .map(|v| match v.decode_as::<const_oid::ObjectIdentifier>() {
                                Ok(o) => named(&o),
                                Err(_) => format!("({} bytes)", v.value().len()),
                            })
                            .collect();
                        format!("{} (attribute): {}", named(&a.oid), values.join(", "))
                    }
                })
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("unreadable CsrAttrs: {e}")])
}

/// The names of the OIDs a Matter EST server asks for in its CSR attributes.
fn oid_name(oid: &const_oid::ObjectIdentifier) -> Option<&'static str> {
    Some(match oid.to_string().as_str() {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.2.1" => "id-ecPublicKey",
        "1.2.840.10045.3.1.7" => "prime256v1",
        "1.3.6.1.4.1.37244.2.1" => "Matter VID attribute",
        "1.3.6.1.4.1.37244.2.2" => "Matter PID attribute",
        "2.5.4.3" => "commonName",
        "2.5.4.5" => "serialNumber",
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests

    use super::*;

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
                if !arg.is_positional() {
                    assert!(
                        arg.get_help_heading().is_some(),
                        "{path} --{id} is in no group"
                    );
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

    #[test]
    fn csr_attributes_are_named() {
        let lines = csrattrs_lines(&matter_est::est::wire::matter_csr_attrs());
        assert_eq!(
            lines,
            [
                "1.2.840.10045.4.3.2 ecdsa-with-SHA256",
                "1.2.840.10045.2.1 id-ecPublicKey (attribute): 1.2.840.10045.3.1.7 prime256v1",
                "1.3.6.1.4.1.37244.2.1 Matter VID attribute",
                "1.3.6.1.4.1.37244.2.2 Matter PID attribute",
            ]
        );
        // Others by their dotted OID; a value that is not an OID by its size.
        let other = [0x30, 0x05, 0x06, 0x03, 0x2a, 0x03, 0x04];
        assert_eq!(csrattrs_lines(&other), ["1.2.3.4"]);
    }
}
