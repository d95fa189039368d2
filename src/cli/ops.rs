//! `revoke` and `crl`: revocation and the label's CRL (MATTER.md "Revocation").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};

use matter_est::config::Config;
use matter_est::issuance::Issuer;
use matter_est::revocation::{self, CrlService, RevocationReason};
use matter_est::store::{self, Ledger};
use matter_est::{Error, Result, asn1};

/// `matter-est revoke`.
#[derive(Args)]
pub struct RevokeArgs {
    /// The configuration file (config/example.toml documents every key).
    #[arg(long)]
    pub config: PathBuf,
    /// The DAC's serial number in hex, as `certs list` and the server's log show it (colons
    /// allowed).
    #[arg(long)]
    pub serial: String,
    /// Why, as an RFC 5280 reason name: unspecified, keyCompromise, affiliationChanged,
    /// superseded, cessationOfOperation or privilegeWithdrawn.
    #[arg(long)]
    pub reason: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `matter-est crl`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CrlArgs {
    #[command(subcommand)]
    pub command: Option<CrlCommand>,
    /// The configuration file (config/example.toml documents every key).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The label whose CRL to write.
    #[arg(long)]
    pub label: Option<String>,
    /// Where to write the label's current CRL (DER).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Issue a new CRL even if the current one is not due.
    #[arg(long)]
    pub new: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `matter-est crl …` subcommands.
#[derive(Subcommand)]
pub enum CrlCommand {
    /// Print the label's DCL revocation point fields (JSON, with `dataURL`), ready for
    /// `dcld tx pki add-revocation-point`.
    DclInfo {
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
        /// The label whose revocation point to print.
        #[arg(long)]
        label: String,
    },
}

/// Revokes one DAC and reissues its label's CRL.
pub fn revoke(args: RevokeArgs) -> Result<()> {
    let serial = parse_serial(&args.serial)?;
    let reason = RevocationReason::parse(&args.reason)?;
    let (ledger, service) = open(&args.config)?;
    let result = service.revoke(&serial, reason, asn1::now(), &super::operator());
    drop(service);
    ledger.close();
    let revoked = result?;
    let r = &revoked.record;
    let crl = match &revoked.crl {
        None => serde_json::Value::Null,
        Some(Ok(crl)) => serde_json::json!({
            "number": crl.number,
            "entries": crl.entries,
            "nextUpdate": asn1::format_time(crl.next_update),
        }),
        Some(Err(e)) => serde_json::json!({ "error": e.to_string() }),
    };
    if args.json {
        let v = serde_json::json!({
            "serial": asn1::hex(&r.serial).to_uppercase(),
            "label": r.label,
            "subject": r.subject,
            "reason": reason.name(),
            "crl": crl,
        });
        println!("{v}");
    } else {
        println!(
            "revoked DAC serial {} ({}) of label {}: {reason}",
            asn1::hex(&r.serial).to_uppercase(),
            r.subject,
            r.label
        );
        match &revoked.crl {
            None => println!(
                "label {} publishes no CRL (no [labels.{}.crl]); the revocation is in the ledger",
                r.label, r.label
            ),
            Some(Ok(crl)) => println!(
                "CRL number {} issued with {} entries, next update {}",
                crl.number,
                crl.entries,
                asn1::format_time(crl.next_update)
            ),
            Some(Err(e)) => println!(
                "the CRL could not be reissued ({e}); `matter-est crl --new` or the running \
                 server's next refresh retries"
            ),
        }
    }
    match revoked.crl {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// `crl --label L --out FILE` and `crl dcl-info`.
pub fn crl(args: CrlArgs) -> Result<()> {
    if let Some(CrlCommand::DclInfo { config, label }) = args.command {
        let config = Config::load(&config)?;
        let lc = config.label(&label)?;
        let label = matter_est::issuance::load_label(lc)?;
        let info = revocation::dcl_info(&label)?;
        let text =
            serde_json::to_string_pretty(&info).map_err(|e| Error::Internal(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    let missing = |what: &str| Error::BadRequest(format!("crl needs {what} (or: crl dcl-info)"));
    let config = args.config.ok_or_else(|| missing("--config FILE"))?;
    let label = args.label.ok_or_else(|| missing("--label L"))?;
    let out = args.out.ok_or_else(|| missing("--out FILE"))?;
    let (ledger, service) = open(&config)?;
    let now = asn1::now();
    let result = if args.new {
        service.issue(&label, now)
    } else {
        service.current_or_issue(&label, now)
    };
    drop(service);
    ledger.close();
    let crl = result?;
    revocation::write_atomically(&out, &crl.der)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "label": label,
                "number": crl.number,
                "entries": crl.entries,
                "thisUpdate": asn1::format_time(crl.this_update),
                "nextUpdate": asn1::format_time(crl.next_update),
                "bytes": crl.der.len(),
                "out": out.display().to_string(),
            })
        );
    } else {
        println!(
            "CRL of label {label}: number {}, {} entries, this update {}, next update {} -> {} ({} bytes, DER)",
            crl.number,
            crl.entries,
            asn1::format_time(crl.this_update),
            asn1::format_time(crl.next_update),
            out.display(),
            crl.der.len()
        );
    }
    Ok(())
}

/// A serial number typed by an operator: hex digits, either case, colons or spaces allowed.
fn parse_serial(text: &str) -> Result<Vec<u8>> {
    let digits: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    match asn1::unhex(&digits) {
        Some(bytes) if !bytes.is_empty() && bytes.len() <= 20 => Ok(bytes),
        _ => Err(Error::BadRequest(format!(
            "serial {text:?}: expected the DAC's serial number as hex (an even number of hex \
             digits, at most 20 bytes)"
        ))),
    }
}

fn open(config: &Path) -> Result<(Arc<dyn Ledger>, CrlService)> {
    let config = Config::load(config)?;
    let ledger = store::open(&config)?;
    let issuer = Arc::new(Issuer::new(&config, ledger.clone())?);
    Ok((ledger, CrlService::new(issuer)?))
}
