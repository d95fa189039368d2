//! `certs list|show|stats|rekey`: the inventory of DACs on record, through the admin API
//! ([`super::backend`]): the same on the ledger or a running server.

use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use matter_est::Result;
use matter_est::admin::Request;

use super::backend::{Target, call, filters, list, text};

/// Records per page by default. 50 fills a terminal; `--limit` takes up to 10,000.
const DEFAULT_PAGE: usize = 50;

/// Output form of `certs list`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// `matter-est certs …`.
#[derive(Subcommand)]
pub enum CertsCommand {
    /// List DACs by issue time, filtered, one page at a time.
    List {
        #[command(flatten)]
        target: Target,
        /// Only DACs issued on this label.
        #[arg(long)]
        label: Option<String>,
        /// VID, 4 hex digits.
        #[arg(long)]
        vid: Option<String>,
        /// PID, 4 hex digits.
        #[arg(long)]
        pid: Option<String>,
        /// issued or revoked.
        #[arg(long)]
        status: Option<String>,
        /// Issued at or after: Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ.
        #[arg(long)]
        since: Option<String>,
        /// Issued before (same forms).
        #[arg(long)]
        until: Option<String>,
        /// Text in the subject, or hex digits in the serial.
        #[arg(long)]
        contains: Option<String>,
        /// Text in the requester (client:cn:…, token:…, dac:…, cli:…).
        #[arg(long)]
        requester: Option<String>,
        /// The page after this cursor (TIME:SEQ, the `next` a previous page printed).
        #[arg(long)]
        after: Option<String>,
        /// At most this many records per page (up to 10,000).
        #[arg(long, default_value_t = DEFAULT_PAGE)]
        limit: usize,
        /// Output form: table, csv or json.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One DAC: its PEM, who asked, status, and its renewal lineage.
    Show {
        #[command(flatten)]
        target: Target,
        /// The serial number, hex.
        serial: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mark a DAC for re-key: its next renewal (simplereenroll) must bring a new key.
    Rekey {
        #[command(flatten)]
        target: Target,
        /// The serial number, hex.
        serial: String,
    },
    /// Counts per label, PID, status and issue day.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `certs` subcommand.
pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::List {
            target,
            label,
            vid,
            pid,
            status,
            since,
            until,
            contains,
            requester,
            after,
            limit,
            format,
        } => {
            let mut query = vec![("limit".to_string(), limit.to_string())];
            query.extend(filters([
                ("label", label),
                ("vid", vid),
                ("pid", pid),
                ("status", status),
                ("since", since),
                ("until", until),
                ("contains", contains),
                ("requester", requester),
                ("after", after),
            ]));
            let page = call(&target, Request::get("/v1/certs", query))?;
            let records = list(&page, "records");
            match format {
                Format::Json => println!("{page}"),
                Format::Csv => {
                    println!("seq,serial,label,vid,pid,status,issued,requester,subject");
                    for r in records {
                        println!(
                            "{},{},{},{},{},{},{},{},{}",
                            r["seq"],
                            text(r, "serial"),
                            csv(text(r, "label")),
                            text(r, "vid"),
                            text(r, "pid"),
                            text(r, "status"),
                            text(r, "issued"),
                            csv(text(r, "requester")),
                            csv(text(r, "subject"))
                        );
                    }
                }
                Format::Table => {
                    println!(
                        "{:>8}  {:<32}  {:<12} {:<4} {:<4} {:<8} {:<20}  {:<24} SUBJECT",
                        "SEQ", "SERIAL", "LABEL", "VID", "PID", "STATUS", "ISSUED", "REQUESTER"
                    );
                    for r in records {
                        println!(
                            "{:>8}  {:<32}  {:<12} {:<4} {:<4} {:<8} {:<20}  {:<24} {}",
                            r["seq"],
                            text(r, "serial"),
                            text(r, "label"),
                            text(r, "vid"),
                            text(r, "pid"),
                            text(r, "status"),
                            text(r, "issued"),
                            text(r, "requester"),
                            text(r, "subject")
                        );
                    }
                }
            }
            if let (Some(next), false) = (
                page.get("next").and_then(Value::as_str),
                matches!(format, Format::Json),
            ) {
                eprintln!("more: add --after {next}");
            }
            Ok(())
        }
        CertsCommand::Show {
            target,
            serial,
            json,
        } => {
            let path = format!("/v1/certs/{}", serial.replace([':', ' '], ""));
            let v = call(&target, Request::get(&path, Vec::new()))?;
            if json {
                println!("{v}");
                return Ok(());
            }
            println!("serial:    {}", text(&v, "serial"));
            println!("subject:   {}", text(&v, "subject"));
            println!("label:     {}", text(&v, "label"));
            println!("issued:    {}", text(&v, "issued"));
            println!("requester: {}", text(&v, "requester"));
            match text(&v, "status") {
                "revoked" => println!(
                    "status:    revoked at {} ({})",
                    text(&v, "revokedAt"),
                    text(&v, "reason")
                ),
                s => println!("status:    {s}"),
            }
            if let Some(r) = v.get("rekey").filter(|r| !r.is_null()) {
                println!(
                    "re-key:    marked at {} by {} (the next renewal must bring a new key)",
                    text(r, "markedAt"),
                    text(r, "by")
                );
            }
            println!("lineage (oldest first):");
            for l in list(&v, "lineage") {
                let mark = if text(l, "serial") == text(&v, "serial") {
                    " <- this DAC"
                } else {
                    ""
                };
                println!(
                    "  {} {} {} {}{mark}",
                    text(l, "serial"),
                    text(l, "issued"),
                    text(l, "status"),
                    text(l, "requester"),
                );
            }
            print!("{}", text(&v, "pem"));
            Ok(())
        }
        CertsCommand::Rekey { target, serial } => {
            let path = format!("/v1/certs/{}/rekey", serial.replace([':', ' '], ""));
            let r = call(&target, Request::post(&path, Value::Null))?;
            println!(
                "DAC serial {} ({}) is marked for re-key: its next renewal must bring a new key",
                text(&r, "serial"),
                text(&r, "subject")
            );
            Ok(())
        }
        CertsCommand::Stats { target, json } => {
            let stats = call(&target, Request::get("/v1/certs/stats", Vec::new()))?;
            if json {
                println!("{stats}");
                return Ok(());
            }
            for (what, field) in [
                ("label", "by_label"),
                ("PID", "by_pid"),
                ("status", "by_status"),
                ("day", "by_day"),
            ] {
                println!("by {what}:");
                if let Some(counts) = stats.get(field).and_then(Value::as_object) {
                    for (k, n) in counts {
                        println!("  {k:<24} {n}");
                    }
                }
            }
            println!("total: {}", stats["total"]);
            Ok(())
        }
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or line break.
fn csv(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
