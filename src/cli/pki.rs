//! `matter-est tls …` and `matter-est clients …`: the non-Matter certificates a deployment needs
//! (certs/README.md), made with the keys in files (0600).

use std::path::PathBuf;

use clap::Subcommand;

use matter_est::Result;
use matter_est::pki::{self, Ca};

#[derive(Subcommand)]
pub enum TlsCommand {
    /// Make a CA for the EST listener's TLS certificate: DIR/ca.pem and DIR/ca.key (0600).
    /// Clients (gateways, est-client --cacert) trust ca.pem.
    Ca {
        /// The directory to write into (created if missing; existing files are never replaced).
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "matter-est TLS CA")]
        cn: String,
        /// Validity in days.
        #[arg(long, default_value_t = pki::CA_DAYS)]
        days: u32,
    },
    /// Issue the server's TLS certificate (serverAuth) from a CA: DIR/NAME.pem and NAME.key.
    /// Point server.tls_cert and server.tls_key at them.
    ServerCert {
        #[command(flatten)]
        ca: CaFiles,
        /// A DNS name or IP address clients connect to (repeat for more); the first DNS name is
        /// also the subject CN.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[command(flatten)]
        out: OutFiles,
    },
}

#[derive(Subcommand)]
pub enum ClientsCommand {
    /// Make a CA for client certificates (gateways, operators): DIR/ca.pem and DIR/ca.key
    /// (0600). List ca.pem in a label's client_cas.
    Ca {
        /// The directory to write into (created if missing; existing files are never replaced).
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "matter-est gateway CA")]
        cn: String,
        /// Validity in days.
        #[arg(long, default_value_t = pki::CA_DAYS)]
        days: u32,
    },
    /// Issue a client certificate (clientAuth) from a CA: DIR/NAME.pem and NAME.key. A
    /// label's clients rule names it by `cn:CN`, `san:`/`uri:`/`email:`/`ip:` or `sha256:`.
    Issue {
        #[command(flatten)]
        ca: CaFiles,
        /// The subject common name (e.g. the gateway's name, gw-line-2).
        #[arg(long)]
        cn: String,
        /// A subjectAltName: a DNS name, an IP address, uri:URI or email:ADDRESS (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[command(flatten)]
        out: OutFiles,
    },
}

/// The issuing CA's files.
#[derive(clap::Args)]
pub struct CaFiles {
    /// The CA certificate (PEM or DER).
    #[arg(long)]
    ca_cert: PathBuf,
    /// The CA key (PKCS#8 PEM, mode 0600).
    #[arg(long)]
    ca_key: PathBuf,
}

/// Where an issued certificate and key go.
#[derive(clap::Args)]
pub struct OutFiles {
    /// The directory to write into (created if missing; existing files are never replaced).
    #[arg(long)]
    out: PathBuf,
    /// The files' base name: NAME.pem and NAME.key.
    #[arg(long = "file-name")]
    file_name: String,
    /// Validity in days.
    #[arg(long, default_value_t = pki::LEAF_DAYS)]
    days: u32,
}

pub fn run_tls(command: TlsCommand) -> Result<()> {
    match command {
        TlsCommand::Ca { out, cn, days } => make_ca(&out, &cn, days),
        TlsCommand::ServerCert { ca, names, out } => {
            let ca = Ca::load(&ca.ca_cert, &ca.ca_key)?;
            let names: Vec<_> = names.iter().map(|n| pki::parse_alt_name(n)).collect();
            let (cert, key) = ca.issue_server(&names, out.days)?;
            written(&out, &cert, &key)
        }
    }
}

pub fn run_clients(command: ClientsCommand) -> Result<()> {
    match command {
        ClientsCommand::Ca { out, cn, days } => make_ca(&out, &cn, days),
        ClientsCommand::Issue { ca, cn, sans, out } => {
            let ca = Ca::load(&ca.ca_cert, &ca.ca_key)?;
            let sans: Vec<_> = sans.iter().map(|n| pki::parse_alt_name(n)).collect();
            let (cert, key) = ca.issue_client(&cn, &sans, out.days)?;
            written(&out, &cert, &key)
        }
    }
}

fn make_ca(out: &std::path::Path, cn: &str, days: u32) -> Result<()> {
    let (ca, key) = Ca::create(cn, days)?;
    pki::write_pair(out, "ca", &ca.cert, &key)?;
    println!(
        "wrote {} and {} (0600)",
        out.join("ca.pem").display(),
        out.join("ca.key").display()
    );
    Ok(())
}

fn written(out: &OutFiles, cert: &[u8], key: &[u8]) -> Result<()> {
    pki::write_pair(&out.out, &out.file_name, cert, key)?;
    println!(
        "wrote {} and {} (0600)",
        out.out.join(format!("{}.pem", out.file_name)).display(),
        out.out.join(format!("{}.key", out.file_name)).display()
    );
    Ok(())
}
