//! `token create|list|revoke`: one-time enrollment tokens with an expiry, an optional CN
//! binding, and a state (unused, spent by a serial, expired, revoked).

use std::path::PathBuf;

use clap::Subcommand;

use matter_est::config::Config;
use matter_est::policy::{self, TokenOptions};
use matter_est::store;
use matter_est::store::{TokenRecord, TokenState};
use matter_est::{Error, Result, asn1, matter};

/// `matter-est token …`.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create tokens; each secret is printed once and stored only as a SHA-256 hash.
    Create {
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
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
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
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
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
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
            config,
            label,
            pid,
            cn,
            expires_in,
            count,
            json,
        } => {
            let config = Config::load(&config)?;
            config.label(&label)?;
            let pid = pid.map(|p| matter::Pid::parse(&p)).transpose()?;
            if cn.is_some() && count != 1 {
                return Err(Error::BadRequest(
                    "--cn binds a token to one device: use it with --count 1".into(),
                ));
            }
            let secs = match expires_in {
                Some(text) => parse_duration(&text)?,
                None => config.token_expiry.as_secs(),
            };
            let opts = TokenOptions {
                pid,
                cn,
                expires_at: Some(asn1::now() + secs as i64),
            };
            let ledger = store::open(&config)?;
            if !json {
                println!("# token id (HTTP Basic user) and secret (password); shown only once");
            }
            let mut result = Ok(());
            for _ in 0..count {
                match policy::create_token_with(ledger.as_ref(), &label, &opts) {
                    Ok((id, secret)) if json => println!(
                        "{}",
                        serde_json::json!({
                            "id": id,
                            "secret": secret,
                            "label": label,
                            "expiresAt": opts.expires_at.map(asn1::format_time),
                        })
                    ),
                    Ok((id, secret)) => println!("{id} {secret}"),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            ledger.close();
            result
        }
        TokenCommand::List {
            config,
            label,
            state,
            json,
        } => {
            if let Some(s) = &state
                && !["unused", "spent", "expired", "revoked"].contains(&s.as_str())
            {
                return Err(Error::BadRequest(format!(
                    "--state {s:?}: expected unused, spent, expired or revoked"
                )));
            }
            let config = Config::load(&config)?;
            let ledger = store::open(&config)?;
            let tokens = ledger.tokens();
            ledger.close();
            let now = asn1::now();
            let mut tokens = tokens?;
            tokens.sort_by_key(|t| (t.created_at, t.id.clone()));
            if !json {
                println!(
                    "{:<16} {:<12} {:<6} {:<20} {:<20} {:<8} STATE",
                    "ID", "LABEL", "PID", "CREATED", "EXPIRES", "CN"
                );
            }
            for t in tokens.iter().filter(|t| {
                label.as_deref().is_none_or(|l| t.label == l)
                    && state.as_deref().is_none_or(|s| state_name(t, now).0 == s)
            }) {
                print_token(t, now, json);
            }
            Ok(())
        }
        TokenCommand::Revoke { config, id, json } => {
            let config = Config::load(&config)?;
            let ledger = store::open(&config)?;
            let result = ledger.revoke_token(&id, asn1::now(), &super::operator());
            ledger.close();
            let t = result?;
            if json {
                print_token(&t, asn1::now(), true);
            } else {
                println!("revoked token {} of label {}", t.id, t.label);
            }
            Ok(())
        }
    }
}

/// (state, spent-by serial) of a token.
fn state_name(t: &TokenRecord, now: i64) -> (&'static str, Option<String>) {
    match t.state(now) {
        TokenState::Unused => ("unused", None),
        TokenState::Spent(s) => ("spent", Some(asn1::hex(&s).to_uppercase())),
        TokenState::Expired => ("expired", None),
        TokenState::Revoked => ("revoked", None),
    }
}

fn print_token(t: &TokenRecord, now: i64, json: bool) {
    let (state, serial) = state_name(t, now);
    let pid = t.pid.map(|p| format!("{p:04X}"));
    let expires = t.expires_at.map(asn1::format_time);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "id": t.id,
                "label": t.label,
                "pid": pid,
                "cn": t.cn,
                "createdAt": asn1::format_time(t.created_at),
                "expiresAt": expires,
                "revokedAt": t.revoked_at.map(asn1::format_time),
                "state": state,
                "spentBy": serial,
            })
        );
    } else {
        let state = match serial {
            Some(s) => format!("spent by {s}"),
            None => state.to_string(),
        };
        println!(
            "{:<16} {:<12} {:<6} {:<20} {:<20} {:<8} {state}",
            t.id,
            t.label,
            pid.as_deref().unwrap_or("any"),
            asn1::format_time(t.created_at),
            expires.as_deref().unwrap_or("never"),
            t.cn.as_deref().unwrap_or("any"),
        );
    }
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
