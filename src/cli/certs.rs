//! `certs list|show|stats`: the inventory of DACs on record.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

use matter_est::config::Config;
use matter_est::store;
use matter_est::store::{CertQuery, DacRecord, Ledger, Position, Status};
use matter_est::{Error, Result, asn1};

use super::audit::parse_time;

/// Records per page by default. 50 fills a terminal; `--limit` takes up to [`MAX_PAGE`].
const DEFAULT_PAGE: usize = 50;
/// Largest page: 10,000 records (~10 MB of JSON with PEM-less rows) per ledger read.
const MAX_PAGE: usize = 10_000;
/// Records read per step by `certs stats`.
const STATS_STEP: usize = 10_000;

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
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
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
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
        /// The serial number, hex.
        serial: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mark a DAC for re-key: its next renewal (simplereenroll) must bring a new key.
    Rekey {
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
        /// The serial number, hex.
        serial: String,
    },
    /// Counts per label, PID, status and issue day.
    Stats {
        /// The configuration file (config/example.toml documents every key).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `certs` subcommand.
pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::List {
            config,
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
            if limit == 0 || limit > MAX_PAGE {
                return Err(Error::BadRequest(format!(
                    "--limit {limit}: 1 to {MAX_PAGE}"
                )));
            }
            let hex16 = |v: Option<String>, what: &str| {
                v.map(|t| {
                    u16::from_str_radix(&t, 16).map_err(|_| {
                        Error::BadRequest(format!("--{what} {t:?}: expected 4 hex digits"))
                    })
                })
                .transpose()
            };
            let revoked = match status.as_deref() {
                None => None,
                Some("issued") => Some(false),
                Some("revoked") => Some(true),
                Some(s) => {
                    return Err(Error::BadRequest(format!(
                        "--status {s:?}: expected issued or revoked"
                    )));
                }
            };
            let query = CertQuery {
                label,
                vid: hex16(vid, "vid")?,
                pid: hex16(pid, "pid")?,
                revoked,
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                contains,
                requester,
                after: after
                    .map(|a| {
                        Position::parse(&a).ok_or_else(|| {
                            Error::BadRequest(format!(
                                "--after {a:?}: expected TIME:SEQ, as a previous page printed"
                            ))
                        })
                    })
                    .transpose()?,
                limit,
            };
            let ledger = open(&config)?;
            let page = ledger.list_page(&query);
            ledger.close();
            let page = page?;
            match format {
                Format::Json => {
                    let records: Vec<_> = page.records.iter().map(|(s, r)| row(*s, r)).collect();
                    println!(
                        "{}",
                        serde_json::json!({
                            "records": records,
                            "next": page.next.map(|n| n.to_string()),
                        })
                    );
                }
                Format::Csv => {
                    println!("seq,serial,label,vid,pid,status,issued,requester,subject");
                    for (seq, r) in &page.records {
                        println!(
                            "{seq},{},{},{:04X},{:04X},{},{},{},{}",
                            serial(r),
                            csv(&r.label),
                            r.vid,
                            r.pid,
                            status_name(r),
                            asn1::format_time(r.issued_at),
                            csv(&r.requester),
                            csv(&r.subject)
                        );
                    }
                }
                Format::Table => {
                    println!(
                        "{:>8}  {:<32}  {:<12} {:<4} {:<4} {:<8} {:<20}  {:<24} SUBJECT",
                        "SEQ", "SERIAL", "LABEL", "VID", "PID", "STATUS", "ISSUED", "REQUESTER"
                    );
                    for (seq, r) in &page.records {
                        println!(
                            "{seq:>8}  {:<32}  {:<12} {:04X} {:04X} {:<8} {:<20}  {:<24} {}",
                            serial(r),
                            r.label,
                            r.vid,
                            r.pid,
                            status_name(r),
                            asn1::format_time(r.issued_at),
                            r.requester,
                            r.subject
                        );
                    }
                }
            }
            if let (Some(next), false) = (page.next, matches!(format, Format::Json)) {
                eprintln!("more: add --after {next}");
            }
            Ok(())
        }
        CertsCommand::Show {
            config,
            serial: text,
            json,
        } => {
            let wanted = parse_serial(&text)?;
            let ledger = open(&config)?;
            let result = show(ledger.as_ref(), &wanted)
                .and_then(|(r, l)| Ok((ledger.rekey_mark(&r.serial)?, r, l)));
            ledger.close();
            let (rekey, record, lineage) = result?;
            let rekey = rekey
                .map(|(at, by)| serde_json::json!({ "markedAt": asn1::format_time(at), "by": by }));
            let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &record.der)
                .map_err(|e| Error::Internal(e.to_string()))?;
            let lineage: Vec<serde_json::Value> = lineage
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "serial": serial(r),
                        "issued": asn1::format_time(r.issued_at),
                        "status": status_name(r),
                        "requester": r.requester,
                    })
                })
                .collect();
            if json {
                let mut v = row(0, &record);
                if let Some(map) = v.as_object_mut() {
                    map.remove("seq");
                    map.insert("pem".into(), pem.into());
                    map.insert("lineage".into(), lineage.into());
                    map.insert("rekey".into(), rekey.unwrap_or_default());
                }
                println!("{v}");
            } else {
                println!("serial:    {}", serial(&record));
                println!("subject:   {}", record.subject);
                println!("label:     {}", record.label);
                println!("issued:    {}", asn1::format_time(record.issued_at));
                println!("requester: {}", record.requester);
                match &record.status {
                    Status::Issued => println!("status:    issued"),
                    Status::Revoked { at, reason } => println!(
                        "status:    revoked at {} ({reason})",
                        asn1::format_time(*at)
                    ),
                }
                if let Some(r) = &rekey {
                    println!(
                        "re-key:    marked at {} by {} (the next renewal must bring a new key)",
                        r["markedAt"].as_str().unwrap_or_default(),
                        r["by"].as_str().unwrap_or_default()
                    );
                }
                println!("lineage (oldest first):");
                for l in &lineage {
                    let mark = if l["serial"] == serial(&record).as_str() {
                        " <- this DAC"
                    } else {
                        ""
                    };
                    println!(
                        "  {} {} {} {}{mark}",
                        l["serial"].as_str().unwrap_or_default(),
                        l["issued"].as_str().unwrap_or_default(),
                        l["status"].as_str().unwrap_or_default(),
                        l["requester"].as_str().unwrap_or_default(),
                    );
                }
                print!("{pem}");
            }
            Ok(())
        }
        CertsCommand::Rekey {
            config,
            serial: text,
        } => {
            let wanted = parse_serial(&text)?;
            let ledger = open(&config)?;
            let result = ledger.mark_rekey(&wanted, asn1::now(), &super::operator());
            ledger.close();
            let r = result?;
            println!(
                "DAC serial {} ({}) is marked for re-key: its next renewal must bring a new key",
                serial(&r),
                r.subject
            );
            Ok(())
        }
        CertsCommand::Stats { config, json } => {
            let ledger = open(&config)?;
            let result = stats(ledger.as_ref());
            ledger.close();
            let stats = result?;
            if json {
                println!("{}", serde_json::to_string(&stats).unwrap_or_default());
            } else {
                for (what, counts) in [
                    ("label", &stats.by_label),
                    ("PID", &stats.by_pid),
                    ("status", &stats.by_status),
                    ("day", &stats.by_day),
                ] {
                    println!("by {what}:");
                    for (k, n) in counts {
                        println!("  {k:<24} {n}");
                    }
                }
                println!("total: {}", stats.total);
            }
            Ok(())
        }
    }
}

/// Counts for `certs stats`.
#[derive(serde::Serialize, Default)]
struct Stats {
    total: u64,
    by_label: BTreeMap<String, u64>,
    by_pid: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    by_day: BTreeMap<String, u64>,
}

/// One pass over the ledger, a page at a time.
fn stats(ledger: &dyn Ledger) -> Result<Stats> {
    let mut s = Stats::default();
    let mut after = None;
    loop {
        let page = ledger.list_page(&CertQuery {
            after,
            limit: STATS_STEP,
            ..CertQuery::default()
        })?;
        for (_, r) in &page.records {
            s.total += 1;
            *s.by_label.entry(r.label.clone()).or_default() += 1;
            *s.by_pid.entry(format!("{:04X}", r.pid)).or_default() += 1;
            *s.by_status.entry(status_name(r).into()).or_default() += 1;
            let day = asn1::format_time(r.issued_at)[..10].to_string();
            *s.by_day.entry(day).or_default() += 1;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(s),
        }
    }
}

/// The record with `serial` and its renewal lineage, oldest first: back through `renews`, and
/// forward from the subject's current holder back to it.
fn show(ledger: &dyn Ledger, serial_bytes: &[u8]) -> Result<(DacRecord, Vec<DacRecord>)> {
    let record = ledger.by_serial(serial_bytes)?.ok_or_else(|| {
        Error::NotFound(format!(
            "no DAC with serial {} is on record",
            asn1::hex(serial_bytes).to_uppercase()
        ))
    })?;
    let mut older = Vec::new();
    let mut at = record.renews.clone();
    while let Some(s) = at {
        let Some(r) = ledger.by_serial(&s)? else {
            break;
        };
        at = r.renews.clone();
        older.push(r);
    }
    older.reverse();
    let mut newer = Vec::new();
    if let Some(holder) = ledger.by_subject(&record.issuer_key, &record.subject_der)?
        && holder.serial != record.serial
    {
        let mut cur = Some(holder);
        let mut reached = false;
        while let Some(r) = cur.take() {
            if r.serial == record.serial {
                reached = true;
                break;
            }
            cur = match &r.renews {
                Some(s) => ledger.by_serial(s)?,
                None => None,
            };
            newer.push(r);
        }
        // Not in this lineage (the subject was taken over another way): show none.
        if !reached {
            newer.clear();
        }
        newer.reverse();
    }
    let mut lineage = older;
    lineage.push(record.clone());
    lineage.extend(newer);
    Ok((record, lineage))
}

fn parse_serial(text: &str) -> Result<Vec<u8>> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    asn1::unhex(&digits)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Error::BadRequest(format!("serial {text:?}: expected hex digits")))
}

fn row(seq: u64, r: &DacRecord) -> serde_json::Value {
    serde_json::json!({
        "seq": seq,
        "serial": serial(r),
        "label": r.label,
        "vid": format!("{:04X}", r.vid),
        "pid": format!("{:04X}", r.pid),
        "subject": r.subject,
        "status": status_name(r),
        "revokedAt": match &r.status {
            Status::Revoked { at, .. } => Some(asn1::format_time(*at)),
            Status::Issued => None,
        },
        "reason": match &r.status {
            Status::Revoked { reason, .. } => Some(reason.clone()),
            Status::Issued => None,
        },
        "issued": asn1::format_time(r.issued_at),
        "requester": r.requester,
        "renews": r.renews.as_ref().map(|s| asn1::hex(s).to_uppercase()),
    })
}

fn serial(r: &DacRecord) -> String {
    asn1::hex(&r.serial).to_uppercase()
}

fn status_name(r: &DacRecord) -> &'static str {
    match r.status {
        Status::Issued => "issued",
        Status::Revoked { .. } => "revoked",
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

fn open(config: &std::path::Path) -> Result<std::sync::Arc<dyn Ledger>> {
    store::open(&Config::load(config)?)
}
