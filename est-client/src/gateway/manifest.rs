//! The gateway's `manifest.jsonl`: one JSON line per device, in its final state.
//!
//! `{"device_id", "status": "ok", "serial", "dac_file", "sha256"}` for a device whose DAC file
//! was durable before its line was written; `{"device_id", "status": "failed", "failure":
//! "permanent" | "retryable", "error"}` for one that failed ([`failure_kind`]). A device not
//! attempted yet has no line. During a run, lines are appended; a rerun skips the devices whose
//! line says `ok` and retries the others. [`compact`] keeps one line per device (its last), and
//! runs before a run appends and after it ends, so a manifest holds one line per device except
//! while a run writes it, or after a run was killed (`kill -9`) before it could compact.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use est_client::{Error, Result, files};

/// The manifest's file name in the output directory.
pub const FILE: &str = "manifest.jsonl";

/// The line of a device whose DAC file `dac_file` (SHA-256 `sha256`) is durable.
pub fn ok_line(id: &str, serial: &str, dac_file: &str, sha256: &str) -> serde_json::Value {
    serde_json::json!({
        "device_id": id, "serial": serial, "dac_file": dac_file, "sha256": sha256,
        "status": "ok"
    })
}

/// The line of a device that failed with `e`.
pub fn failed_line(id: &str, e: &Error) -> serde_json::Value {
    serde_json::json!({
        "device_id": id, "status": "failed", "failure": failure_kind(e), "error": e.to_string()
    })
}

/// `retryable` when the same request may succeed on a rerun, else `permanent` (the server will
/// refuse it again, or something must change first): [`Error::is_retryable`].
pub fn failure_kind(e: &Error) -> &'static str {
    if e.is_retryable() {
        "retryable"
    } else {
        "permanent"
    }
}

/// What [`compact`] found.
#[derive(Debug, Default)]
pub struct Compacted {
    /// The devices whose line says `ok`.
    pub done: HashSet<String>,
    /// Lines dropped: earlier states of a device, and lines that do not parse (one torn by a
    /// crash while it was appended: its device is retried, with its key, and gets its DAC back).
    pub dropped: usize,
}

/// Rewrites the manifest at `path` with one line per device, in the order of those lines: the
/// device's last line, except that a device once `ok` stays `ok`. The rewrite is atomic (a
/// temporary file, fsync, rename: [`files::write_file`]), mode 0600, and only made when a line
/// is dropped. A missing manifest is an empty one.
pub fn compact(path: &Path) -> Result<Compacted> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Compacted::default()),
        Err(e) => return Err(files::io_err(path, e)),
    };
    #[derive(serde::Deserialize)]
    struct Head {
        device_id: String,
        status: String,
    }
    let mut kept: Vec<Option<&str>> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut result = Compacted::default();
    for line in text.lines() {
        let Ok(head) = serde_json::from_str::<Head>(line) else {
            result.dropped += 1;
            continue;
        };
        let ok = head.status == "ok";
        if let Some(&i) = at.get(&head.device_id) {
            result.dropped += 1;
            if result.done.contains(&head.device_id) {
                continue;
            }
            kept[i] = None;
        }
        if ok {
            result.done.insert(head.device_id.clone());
        }
        at.insert(head.device_id, kept.len());
        kept.push(Some(line));
    }
    if result.dropped > 0 {
        let lines: String = kept
            .into_iter()
            .flatten()
            .map(|l| format!("{l}\n"))
            .collect();
        files::write_file(path, lines.as_bytes(), files::PRIVATE)?;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests

    use super::*;

    fn line(id: &str, status: &str) -> String {
        format!("{{\"device_id\":\"{id}\",\"status\":\"{status}\"}}\n")
    }

    #[test]
    fn one_line_per_device_its_last_and_ok_stays_ok() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let text = [
            line("a", "failed"),
            line("b", "ok"),
            line("c", "failed"),
            line("a", "ok"),
            line("b", "failed"),
            line("c", "failed"),
            "{\"device_id\":\"d\",\"sta".to_string(),
        ]
        .concat();
        std::fs::write(&path, text).unwrap();
        let c = compact(&path).unwrap();
        assert_eq!(c.dropped, 4);
        let mut done: Vec<_> = c.done.into_iter().collect();
        done.sort();
        assert_eq!(done, ["a", "b"]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            [line("b", "ok"), line("a", "ok"), line("c", "failed")].concat()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Compact already: left alone.
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(compact(&path).unwrap().dropped, 0);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
        assert_eq!(compact(&dir.path().join("none")).unwrap().dropped, 0);
    }

    #[test]
    fn failures_are_permanent_unless_a_rerun_may_succeed() {
        let status = |status| Error::Status {
            status,
            message: String::new(),
        };
        for e in [
            Error::Connect {
                addr: "x".into(),
                reason: "refused".into(),
            },
            Error::Http("the connection closed".into()),
            status(202),
            status(429),
            status(500),
            status(503),
        ] {
            assert_eq!(failure_kind(&e), "retryable", "{e}");
        }
        for e in [
            Error::Forbidden("subject already issued".into()),
            Error::Unauthorized("no client certificate".into()),
            status(400),
            status(404),
            Error::BadResponse("x".into()),
            Error::File {
                path: "k".into(),
                problem: "refused".into(),
            },
        ] {
            assert_eq!(failure_kind(&e), "permanent", "{e}");
        }
    }
}
