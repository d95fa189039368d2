//! The `matter-est` command line: parse arguments, load the config, run one subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use matter_est::config::Config;
use matter_est::issuance::{IssueOptions, Issuer};
use matter_est::profile::dev;
use matter_est::store::redb::RedbLedger;
use matter_est::{Error, Result, asn1, csr};

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
    }
}
