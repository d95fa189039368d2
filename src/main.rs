//! The `matter-est` command line: parse arguments, load the config, run one subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use matter_est::config::Config;
use matter_est::issuance::{IssueOptions, Issuer};
use matter_est::profile::dev;
use matter_est::store::redb::RedbLedger;
use matter_est::{Error, Result, asn1, csr, matter, signer};

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
