//! `revoke` and `crl`: revocation and the label's CRL (MATTER.md "Revocation").

use std::path::PathBuf;

use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;

use matter_est::admin::Request;
use matter_est::{Error, Result, revocation};

use super::backend::{Target, call, text};

/// `matter-est revoke`.
#[derive(Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub target: Target,
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
    #[command(flatten)]
    pub target: Option<Target>,
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
        #[command(flatten)]
        target: Target,
        /// The label whose revocation point to print.
        #[arg(long)]
        label: String,
    },
}

/// Revokes one DAC and reissues its label's CRL.
pub fn revoke(args: RevokeArgs) -> Result<()> {
    let serial = args.serial.replace([':', ' '], "");
    let v = call(
        &args.target,
        Request::post(
            &format!("/v1/certs/{serial}/revoke"),
            json!({ "reason": args.reason }),
        ),
    )?;
    let crl = &v["crl"];
    if args.json {
        println!("{v}");
    } else {
        println!(
            "revoked DAC serial {} ({}) of label {}: {}",
            text(&v, "serial"),
            text(&v, "subject"),
            text(&v, "label"),
            text(&v, "reason")
        );
        if crl.is_null() {
            let label = text(&v, "label");
            println!(
                "label {label} publishes no CRL (no [labels.{label}.crl]); the revocation is in \
                 the ledger"
            );
        } else if let Some(e) = crl.get("error").and_then(|e| e.as_str()) {
            println!(
                "the CRL could not be reissued ({e}); `matter-est crl --new` or the running \
                 server's next refresh retries"
            );
        } else {
            println!(
                "CRL number {} issued with {} entries, next update {}",
                crl["number"],
                crl["entries"],
                text(crl, "nextUpdate")
            );
        }
    }
    match crl.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(Error::Signer(format!("the CRL could not be reissued: {e}"))),
        None => Ok(()),
    }
}

/// `crl --label L --out FILE` and `crl dcl-info`.
pub fn crl(args: CrlArgs) -> Result<()> {
    if let Some(CrlCommand::DclInfo { target, label }) = args.command {
        let info = call(
            &target,
            Request::get(&format!("/v1/labels/{label}/dcl-info"), Vec::new()),
        )?;
        let text =
            serde_json::to_string_pretty(&info).map_err(|e| Error::Internal(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    let missing = |what: &str| Error::BadRequest(format!("crl needs {what} (or: crl dcl-info)"));
    let target = args.target.ok_or_else(|| missing("--config FILE"))?;
    let label = args.label.ok_or_else(|| missing("--label L"))?;
    let out = args.out.ok_or_else(|| missing("--out FILE"))?;
    let path = format!("/v1/labels/{label}/crl");
    let crl = if args.new {
        call(&target, Request::post(&path, serde_json::Value::Null))?
    } else {
        call(&target, Request::get(&path, Vec::new()))?
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(text(&crl, "der"))
        .map_err(|e| Error::Internal(format!("the CRL came back undecodable: {e}")))?;
    revocation::write_atomically(&out, &der)?;
    if args.json {
        let mut v = crl.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("der");
            map.insert("out".into(), out.display().to_string().into());
        }
        println!("{v}");
    } else {
        println!(
            "CRL of label {label}: number {}, {} entries, this update {}, next update {} -> {} \
             ({} bytes, DER)",
            crl["number"],
            crl["entries"],
            text(&crl, "thisUpdate"),
            text(&crl, "nextUpdate"),
            out.display(),
            crl["bytes"]
        );
    }
    Ok(())
}
