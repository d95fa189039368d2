//! `pending list|approve|reject`: enrollments held for manual approval (RFC 7030 §4.2.3,
//! `approval`). Through the admin API ([`super::backend`]): the same on the ledger or a running
//! server.

use clap::Subcommand;
use serde_json::{Value, json};

use matter_est::Result;
use matter_est::admin::Request;

use super::backend::{Target, call, filters, list, text};

/// `matter-est pending …`.
#[derive(Subcommand)]
pub enum PendingCommand {
    /// List held enrollments: id, label, subject, who asked, state (waiting, approved,
    /// rejected, expired).
    List {
        #[command(flatten)]
        target: Target,
        /// Only requests of this label.
        #[arg(long)]
        label: Option<String>,
        /// Only requests in this state: waiting, approved, rejected or expired.
        #[arg(long)]
        state: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held enrollment: the client's next retry with the same CSR gets its DAC
    /// (signed then, through the label's policy, quota and signer).
    Approve {
        #[command(flatten)]
        target: Target,
        /// The request id (32 hex digits, from `pending list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reject a held enrollment: the client's next retry gets 403 with the reason.
    Reject {
        #[command(flatten)]
        target: Target,
        /// The request id (32 hex digits, from `pending list`).
        id: String,
        /// Why (the client is told; at most 500 characters).
        #[arg(long)]
        reason: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `pending` subcommand.
pub fn run(command: PendingCommand) -> Result<()> {
    match command {
        PendingCommand::List {
            target,
            label,
            state,
            json,
        } => {
            let query = filters([("label", label), ("state", state)]);
            let held = call(&target, Request::get("/v1/pending", query))?;
            if !json {
                println!(
                    "{:<32} {:<12} {:<9} {:<20} {:<20} {:<28} SUBJECT",
                    "ID", "LABEL", "STATE", "REQUESTED", "EXPIRES", "REQUESTER"
                );
            }
            for h in list(&held, "requests") {
                print_held(h, json);
            }
            Ok(())
        }
        PendingCommand::Approve { target, id, json } => {
            decide(&target, &id, "approve", Value::Null, json)
        }
        PendingCommand::Reject {
            target,
            id,
            reason,
            json,
        } => decide(&target, &id, "reject", json!({ "reason": reason }), json),
    }
}

fn decide(target: &Target, id: &str, verb: &str, body: Value, json: bool) -> Result<()> {
    let h = call(
        target,
        Request::post(&format!("/v1/pending/{id}/{verb}"), body),
    )?;
    if json {
        println!("{h}");
    } else {
        println!(
            "{} request {} of label {} ({})",
            text(&h, "state"),
            text(&h, "id"),
            text(&h, "label"),
            text(&h, "subject")
        );
    }
    Ok(())
}

fn print_held(h: &Value, json: bool) {
    if json {
        println!("{h}");
        return;
    }
    let state = match text(h, "reason") {
        "" => text(h, "state").to_string(),
        reason => format!("{}: {reason}", text(h, "state")),
    };
    println!(
        "{:<32} {:<12} {:<9} {:<20} {:<20} {:<28} {}",
        text(h, "id"),
        text(h, "label"),
        state,
        text(h, "requestedAt"),
        text(h, "expiresAt"),
        text(h, "requester"),
        text(h, "subject"),
    );
}
