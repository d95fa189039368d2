//! `token create|list|revoke`: one-time enrollment tokens with an expiry, an optional CN
//! binding, and a state (unused, spent by a serial, expired, revoked). Through the admin API
//! ([`super::backend`]): the same on the ledger or a running server.

use clap::Subcommand;
use serde_json::{Value, json};

use matter_est::admin::Request;
use matter_est::{Error, Result};

use super::backend::{Target, call, filters, list, text};

/// `matter-est token …`.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create tokens; each secret is printed once and stored only as a SHA-256 hash.
    Create {
        #[command(flatten)]
        target: Target,
        /// The label the tokens enroll on.
        #[arg(long)]
        label: String,
        /// Bind the token to one PID.
        #[arg(long)]
        pid: Option<String>,
        /// Bind the token to one device CN: it obtains a DAC with this CN only.
        #[arg(long)]
        cn: Option<String>,
        /// Valid for this long: seconds, or a number with s, m, h or d (default: the config's
        /// tokens.expires_in_secs, 7 days unless set).
        #[arg(long)]
        expires_in: Option<String>,
        /// How many tokens to make.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// One JSON object per token.
        #[arg(long)]
        json: bool,
    },
    /// List tokens and their state: unused, spent (by which DAC serial), expired, revoked.
    List {
        #[command(flatten)]
        target: Target,
        /// Only tokens of this label.
        #[arg(long)]
        label: Option<String>,
        /// Only tokens in this state: unused, spent, expired or revoked.
        #[arg(long)]
        state: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an unspent token: it gets 401 from then on.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// The token id (tok-…).
        #[arg(long)]
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `token` subcommand.
pub fn run(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create {
            target,
            label,
            pid,
            cn,
            expires_in,
            count,
            json,
        } => {
            let secs = expires_in.as_deref().map(parse_duration).transpose()?;
            let created = call(
                &target,
                Request::post(
                    "/v1/tokens",
                    json!({
                        "label": label,
                        "pid": pid,
                        "cn": cn,
                        "count": count,
                        "expiresInSecs": secs,
                    }),
                ),
            )?;
            if !json {
                println!("# token id (HTTP Basic user) and secret (password); shown only once");
            }
            for t in list(&created, "tokens") {
                if json {
                    println!("{t}");
                } else {
                    println!("{} {}", text(t, "id"), text(t, "secret"));
                }
            }
            Ok(())
        }
        TokenCommand::List {
            target,
            label,
            state,
            json,
        } => {
            let query = filters([("label", label), ("state", state)]);
            let tokens = call(&target, Request::get("/v1/tokens", query))?;
            if !json {
                println!(
                    "{:<16} {:<12} {:<6} {:<20} {:<20} {:<8} STATE",
                    "ID", "LABEL", "PID", "CREATED", "EXPIRES", "CN"
                );
            }
            for t in list(&tokens, "tokens") {
                print_token(t, json);
            }
            Ok(())
        }
        TokenCommand::Revoke { target, id, json } => {
            let path = format!("/v1/tokens/{id}/revoke");
            let t = call(&target, Request::post(&path, Value::Null))?;
            if json {
                print_token(&t, true);
            } else {
                println!(
                    "revoked token {} of label {}",
                    text(&t, "id"),
                    text(&t, "label")
                );
            }
            Ok(())
        }
    }
}

fn print_token(t: &Value, json: bool) {
    if json {
        println!("{t}");
        return;
    }
    let state = match text(t, "spentBy") {
        "" => text(t, "state").to_string(),
        serial => format!("spent by {serial}"),
    };
    let or = |field: &str, default: &'static str| match text(t, field) {
        "" => default,
        v => v,
    };
    println!(
        "{:<16} {:<12} {:<6} {:<20} {:<20} {:<8} {state}",
        text(t, "id"),
        text(t, "label"),
        or("pid", "any"),
        text(t, "createdAt"),
        or("expiresAt", "never"),
        or("cn", "any"),
    );
}

/// `3600`, `90s`, `30m`, `12h`, `7d` → seconds (at least 1).
fn parse_duration(text: &str) -> Result<u64> {
    let bad = || {
        Error::BadRequest(format!(
            "--expires-in {text:?}: expected seconds, or a number with s, m, h or d (e.g. 12h)"
        ))
    };
    let t = text.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(bad()),
        Some(s) => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600").ok(), Some(3600));
        assert_eq!(parse_duration("30m").ok(), Some(1800));
        assert_eq!(parse_duration("7d").ok(), Some(604_800));
        for bad in ["0", "x", "5w", "-1h", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
