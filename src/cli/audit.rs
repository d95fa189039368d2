//! `audit verify` and `audit list`: the hash-chained audit log in the ledger
//! (`store::audit`).

use clap::Subcommand;
use serde_json::Value;

use matter_est::admin::Request;
use matter_est::{Error, Result, asn1};

use super::backend::{Target, call, filters, list};

/// `matter-est audit …`.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain; name the first missing, altered or cut-off record.
    Verify {
        #[command(flatten)]
        target: Target,
        /// A head the chain must reach, as written to the server's log ("audit head" lines):
        /// SEQ:HASH. Catches a cut tail or an altered last record.
        #[arg(long)]
        head: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print audit records, oldest first, filtered.
    List {
        #[command(flatten)]
        target: Target,
        /// From this time on: Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ.
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// Only records about this label.
        #[arg(long)]
        label: Option<String>,
        /// Event name: enrollment_granted, enrollment_refused, enrollment_held,
        /// request_approved, request_rejected, token_created, token_spent, revocation,
        /// crl_issued, config_loaded.
        #[arg(long)]
        event: Option<String>,
        /// Records whose identity contains this text.
        #[arg(long)]
        identity: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `audit` subcommand.
pub fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Verify { target, head, json } => {
            let query = head.map(|h| ("head".to_string(), h)).into_iter().collect();
            let v = call(&target, Request::get("/v1/audit/verify", query))?;
            if json {
                println!("{v}");
            }
            if v["ok"] == true {
                if !json {
                    println!(
                        "audit chain OK: {} records, head {}",
                        v["records"],
                        v["head"].as_str().unwrap_or("- (empty)")
                    );
                }
                Ok(())
            } else {
                Err(Error::BadRequest(format!(
                    "audit chain broken at record {}: {}",
                    v["broken_at"],
                    v["problem"].as_str().unwrap_or_default()
                )))
            }
        }
        AuditCommand::List {
            target,
            since,
            until,
            label,
            event,
            identity,
            limit,
            json,
        } => {
            let mut query = vec![("limit".to_string(), limit.to_string())];
            query.extend(filters([
                ("since", since),
                ("until", until),
                ("label", label),
                ("event", event),
                ("identity", identity),
            ]));
            let v = call(&target, Request::get("/v1/audit", query))?;
            for r in list(&v, "records") {
                print_record(r, json);
            }
            Ok(())
        }
    }
}

fn print_record(r: &Value, json: bool) {
    if json {
        println!("{r}");
        return;
    }
    let mut details = r.clone();
    let Some(map) = details.as_object_mut() else {
        return;
    };
    let seq = map.remove("seq").unwrap_or_default();
    let time = map
        .remove("time")
        .and_then(|t| t.as_i64())
        .unwrap_or_default();
    let event = map.remove("event").unwrap_or_default();
    map.remove("prev");
    println!(
        "{seq:>8} {} {:<20} {details}",
        asn1::format_time(time),
        event.as_str().unwrap_or_default(),
    );
}
