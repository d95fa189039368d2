//! `dashboard login`: a one-time login link to the dashboard (`POST /v1/dashboard/login`),
//! through the running server's socket or `--server`. docs/operations.md "Dashboard".

use clap::Subcommand;
use serde_json::{Value, json};

use matter_est::Result;
use matter_est::admin::Request;

use super::backend::{Backend, Target};

/// `matter-est dashboard …`.
#[derive(Subcommand)]
pub enum DashboardCommand {
    /// Print a one-time login link (good for 5 minutes) for a browser: it opens a session with
    /// your role and labels, or the narrower ones given.
    Login {
        #[command(flatten)]
        target: Target,
        /// The session's role: auditor, operator or admin (at most your own; default yours).
        #[arg(long)]
        role: Option<String>,
        /// A label the session may see (repeat for several; default: yours).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long the session lasts once the link is used, in seconds (60 to 86400).
        #[arg(long, default_value_t = 28_800)]
        session_secs: u64,
        /// Print the API's JSON answer instead of the link.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: DashboardCommand) -> Result<()> {
    match command {
        DashboardCommand::Login {
            target,
            role,
            labels,
            session_secs,
            json,
        } => {
            let mut body = json!({ "sessionSecs": session_secs });
            if let Some(r) = role {
                body["role"] = Value::String(r);
            }
            if !labels.is_empty() {
                body["labels"] = json!(labels);
            }
            // The link is minted in the running server's memory: through its socket on either
            // backend.
            let v =
                Backend::open_server(&target)?.call(Request::post("/v1/dashboard/login", body))?;
            if json {
                println!("{v}");
            } else {
                println!("{}", v["url"].as_str().unwrap_or_default());
                eprintln!(
                    "one use, until {}; session: role {}, {} s",
                    v["expiresAt"].as_str().unwrap_or_default(),
                    v["role"].as_str().unwrap_or_default(),
                    v["sessionSecs"]
                );
            }
            Ok(())
        }
    }
}
