//! `audit verify` and `audit list`: the hash-chained audit log in the ledger
//! (`store::audit`).

use std::path::PathBuf;

use clap::Subcommand;

use matter_est::config::Config;
use matter_est::store;
use matter_est::store::Ledger;
use matter_est::store::audit::{AuditRecord, Head};
use matter_est::{Error, Result, asn1};

/// Records read per ledger read while listing.
const PAGE: usize = 4096;

/// `matter-est audit …`.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain; name the first missing, altered or cut-off record.
    Verify {
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
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
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
        /// From this time on: Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ.
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// Only records about this label.
        #[arg(long)]
        label: Option<String>,
        /// Event name: enrollment_granted, enrollment_refused, token_created, token_spent,
        /// revocation, crl_issued, config_loaded.
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
        AuditCommand::Verify { config, head, json } => {
            let head = head
                .map(|h| {
                    Head::parse(&h).ok_or_else(|| {
                        Error::BadRequest(format!(
                            "--head {h:?}: expected SEQ:HASH (64 hex digits), as the log's \
                             \"audit head\" lines print it"
                        ))
                    })
                })
                .transpose()?;
            let ledger = open(&config)?;
            let outcome = ledger.audit_verify(head);
            ledger.close();
            match outcome? {
                Ok((count, end)) => {
                    let end = end.map(|h| h.to_string());
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({ "ok": true, "records": count, "head": end })
                        );
                    } else {
                        println!(
                            "audit chain OK: {count} records, head {}",
                            end.as_deref().unwrap_or("- (empty)")
                        );
                    }
                    Ok(())
                }
                Err(broken) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({ "ok": false, "broken_at": broken.seq,
                                "problem": broken.problem })
                        );
                    }
                    Err(Error::BadRequest(format!(
                        "audit chain broken at record {}: {}",
                        broken.seq, broken.problem
                    )))
                }
            }
        }
        AuditCommand::List {
            config,
            since,
            until,
            label,
            event,
            identity,
            limit,
            json,
        } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            let until = until.as_deref().map(parse_time).transpose()?;
            let ledger = open(&config)?;
            let keep = |r: &AuditRecord| {
                since.is_none_or(|t| r.time >= t)
                    && until.is_none_or(|t| r.time < t)
                    && label.as_deref().is_none_or(|l| r.event.label() == Some(l))
                    && event.as_deref().is_none_or(|e| r.event.name() == e)
                    && identity
                        .as_deref()
                        .is_none_or(|i| r.event.identity().is_some_and(|id| id.contains(i)))
            };
            let mut from = 0;
            let mut shown = 0;
            let result = loop {
                let page = match ledger.audit_records(from, PAGE) {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                let Some(last) = page.last() else {
                    break Ok(());
                };
                from = last.seq + 1;
                for r in page.iter().filter(|r| keep(r)) {
                    if shown == limit {
                        break;
                    }
                    print_record(r, json);
                    shown += 1;
                }
                if shown == limit {
                    break Ok(());
                }
            };
            ledger.close();
            result
        }
    }
}

fn print_record(r: &AuditRecord, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let mut details = serde_json::to_value(&r.event).unwrap_or_default();
    if let Some(map) = details.as_object_mut() {
        map.remove("event");
    }
    println!(
        "{:>8} {} {:<20} {}",
        r.seq,
        asn1::format_time(r.time),
        r.event.name(),
        details
    );
}

/// Unix seconds, `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(text: &str) -> Result<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    let bad = || {
        Error::BadRequest(format!(
            "time {text:?}: expected Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"
        ))
    };
    let (date, clock) = match text.split_once('T') {
        Some((d, c)) => (d, c.strip_suffix('Z').ok_or_else(bad)?),
        None => (text, "00:00:00"),
    };
    let num = |s: Option<&str>| s.and_then(|v| v.parse::<i64>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next())?, num(d.next())?, num(d.next())?);
    let mut c = clock.split(':');
    let (h, mi, s) = (num(c.next())?, num(c.next())?, num(c.next())?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil (the inverse of asn1::civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + h * 3600 + mi * 60 + s)
}

fn open(config: &std::path::Path) -> Result<std::sync::Arc<dyn Ledger>> {
    let config = Config::load(config)?;
    store::open(&config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("0").ok(), Some(0));
        assert_eq!(parse_time("1970-01-02").ok(), Some(86_400));
        let t = 1_800_000_123;
        assert_eq!(parse_time(&asn1::format_time(t)).ok(), Some(t));
        assert!(parse_time("2026-13-01").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
