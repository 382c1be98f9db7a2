//! Reading the audit chain back: the files it spans (the current file and those rotated out of
//! it, one per day), checking every link and checkpoint, and fetching lines by sequence number
//! for the off-host sink to catch up from.

use crate::audit_checkpoint::{
    CheckpointFacts, CheckpointVerifier, REASON_CLOSE, REASON_OPEN, REASON_ROTATE,
};
use crate::audit_log::{AuditError, GENESIS, line_hash};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The files of the chain whose current file is `current`, oldest first: the rotated ones
/// (`audit.2026-12-01.jsonl` beside `audit.jsonl`), ordered by the sequence number of their
/// first line, then the current one if it exists.
pub fn chain_files(current: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(chain_files_from(current)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// [`chain_files`] with each file's first sequence number (`u64::MAX` for an empty one).
fn chain_files_from(current: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match current.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let stem = current
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("audit");
    let ext = current.extension().and_then(|s| s.to_str()).unwrap_or("");
    let name = current.file_name().and_then(|s| s.to_str()).unwrap_or("");
    let mut files = Vec::new();
    if dir.exists() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(n) = path.file_name().and_then(|s| s.to_str()) else {
                continue;
            };
            if n != name
                && n.starts_with(&format!("{stem}."))
                && n.ends_with(&format!(".{ext}"))
                && path.is_file()
            {
                files.push((first_seq(&path).unwrap_or(u64::MAX), path));
            }
        }
    }
    files.sort();
    if current.exists() {
        files.push((first_seq(current).unwrap_or(u64::MAX), current.to_owned()));
    }
    Ok(files)
}

fn first_seq(path: &Path) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    let mut line = String::new();
    BufReader::new(file).read_line(&mut line).ok()?;
    let v: Value = serde_json::from_str(&line).ok()?;
    v.get("seq")?.as_u64()
}

/// Lines with sequence numbers in `from..=to`, in order, as written, at most `limit` of them;
/// files that end before `from` are not read.
pub fn read_lines(
    current: &Path,
    from: u64,
    to: u64,
    limit: usize,
) -> std::io::Result<Vec<(u64, String)>> {
    let files = chain_files_from(current)?;
    let mut out = Vec::new();
    for (i, (_, path)) in files.iter().enumerate() {
        // The next file starts at or before `from`: nothing wanted here.
        if files.get(i + 1).is_some_and(|(next, _)| *next <= from) {
            continue;
        }
        for raw in BufReader::new(std::fs::File::open(path)?).lines() {
            let raw = raw?;
            let Some(seq) = serde_json::from_str::<Value>(&raw)
                .ok()
                .and_then(|v| v.get("seq").and_then(Value::as_u64))
            else {
                continue;
            };
            if seq > to || out.len() >= limit {
                return Ok(out);
            }
            if seq >= from {
                out.push((seq, raw));
            }
        }
    }
    Ok(out)
}

/// Every line of the chain's files in order, with its sequence number, read as it is asked
/// for (lines without one are passed over).
pub fn chain_lines(
    current: &Path,
) -> std::io::Result<impl Iterator<Item = std::io::Result<(u64, String)>>> {
    let files = chain_files(current)?;
    let lines = files.into_iter().flat_map(|path| {
        let opened = std::fs::File::open(&path).map(|f| BufReader::new(f).lines());
        let (lines, failed) = match opened {
            Ok(lines) => (Some(lines), None),
            Err(e) => (None, Some(Err(e))),
        };
        failed.into_iter().chain(lines.into_iter().flatten())
    });
    Ok(lines.filter_map(|raw| match raw {
        Ok(raw) => {
            let seq = serde_json::from_str::<Value>(&raw)
                .ok()
                .and_then(|v| v.get("seq").and_then(Value::as_u64))?;
            Some(Ok((seq, raw)))
        }
        Err(e) => Some(Err(e)),
    }))
}

/// What a sound chain holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub files: usize,
    pub lines: u64,
    /// The first line's sequence number (above 1 when older files were removed).
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    pub last_ts: String,
    pub checkpoints: u64,
    /// The last checkpoint (signature checked when a public key was given): every line up to
    /// it is covered.
    pub signed_through: Option<u64>,
    /// Whether the last line is the service's closing checkpoint.
    pub closed: bool,
    /// A closing checkpoint and no run's own checkpoint since: only a start's first lines
    /// may come next ([`after_line`]).
    pub awaiting_open: bool,
    /// The `every` of the last checkpoint: the longest run of lines it allows before the next.
    pub every: Option<u64>,
}

/// Whether a closing checkpoint still awaits the next run's opening checkpoint after a line
/// with `event` (and `code`), given whether it did before; `None` when the line may not come
/// there. The service writes nothing after its `close`; its next start writes what it found
/// (`audit_recovered`), a day's `rotate` checkpoint when the day changed meanwhile, its
/// `audit_opened` and its `open` checkpoint. Anything else there was added while it was
/// stopped (and the next start would have signed over it).
pub fn after_line(awaiting_open: bool, event: &str, code: &str) -> Option<bool> {
    let checkpoint = event == "checkpoint";
    let start_line = matches!(event, "audit_recovered" | "audit_opened")
        || (checkpoint && matches!(code, REASON_ROTATE | REASON_OPEN));
    if awaiting_open && !start_line {
        return None;
    }
    Some(match (checkpoint, code) {
        (true, REASON_CLOSE) => true,
        (true, REASON_ROTATE) | (false, _) => awaiting_open,
        (true, _) => false,
    })
}

/// Lines the service may write past `every` before its next checkpoint: after a crash, the
/// recovery and opening lines come before the `open` checkpoint.
const RUN_SLACK: u64 = 3;

/// Checks one file of the chain, continuing `report`.
fn check_file(
    path: &Path,
    report: &mut ChainReport,
    verifier: Option<&CheckpointVerifier>,
    whole_chain: bool,
) -> Result<(), AuditError> {
    let file = std::fs::File::open(path).map_err(|source| AuditError::Io {
        path: path.to_owned(),
        source,
    })?;
    let corrupt = |line: usize, reason: String| AuditError::Corrupt {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut reader = BufReader::new(file);
    let mut line_no = 0usize;
    let mut raw = String::new();
    loop {
        raw.clear();
        let n = reader
            .read_line(&mut raw)
            .map_err(|source| AuditError::Io {
                path: path.to_owned(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        let torn = !raw.ends_with('\n');
        let fields: Map<String, Value> = match serde_json::from_str(raw.trim_end_matches('\n')) {
            Ok(f) => f,
            Err(_) if torn => {
                return Err(corrupt(
                    line_no,
                    "torn last line (the service stopped while writing it); the service \
                     drops it, keeping every complete line, and records that when it starts"
                        .into(),
                ));
            }
            Err(e) => return Err(corrupt(line_no, format!("not a JSON object ({e})"))),
        };
        let recorded = fields.get("hash").and_then(Value::as_str).unwrap_or("");
        if line_hash(&fields) != recorded {
            return Err(corrupt(
                line_no,
                "the line was edited (its hash does not match)".into(),
            ));
        }
        let seq = fields.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let prev = fields.get("prev").and_then(Value::as_str).unwrap_or("");
        if report.lines == 0 {
            // The whole chain starts at line 1 after the genesis hash; one file of it (the
            // service continuing its current file) anywhere.
            if whole_chain && (seq != 1 || prev != GENESIS) {
                return Err(corrupt(
                    line_no,
                    format!(
                        "the chain starts at line {seq}: lines before it (or the files holding \
                         them) were removed"
                    ),
                ));
            }
            if seq == 0 {
                return Err(corrupt(line_no, "no sequence number".into()));
            }
            report.first_seq = seq;
        } else {
            if seq != report.last_seq + 1 {
                return Err(corrupt(
                    line_no,
                    format!(
                        "sequence number {seq} where {} belongs: a line before it was removed \
                         or lines were reordered",
                        report.last_seq + 1
                    ),
                ));
            }
            if prev != report.last_hash {
                return Err(corrupt(
                    line_no,
                    "does not follow the line before it: a line was removed, inserted or \
                     reordered"
                        .into(),
                ));
            }
        }
        let event = fields.get("event").and_then(Value::as_str).unwrap_or("");
        let is_checkpoint = event == "checkpoint";
        let reason = fields.get("code").and_then(Value::as_str).unwrap_or("");
        let ts = fields.get("ts").and_then(Value::as_str).unwrap_or("");
        let Some(awaiting_open) = after_line(report.awaiting_open, event, reason) else {
            return Err(corrupt(
                line_no,
                format!(
                    "a {event:?} line follows the service's closing checkpoint before its next \
                     start's opening checkpoint, where only that start's first lines belong: \
                     lines were added while the service was stopped"
                ),
            ));
        };
        report.awaiting_open = awaiting_open;
        // The service signs its first checkpoint right after its first opening line: a chain
        // checked with the key whose first lines go on without one was not written by it, or
        // had every checkpoint removed (and could have been rewritten whole).
        if whole_chain
            && verifier.is_some()
            && report.checkpoints == 0
            && !is_checkpoint
            && seq > 1 + RUN_SLACK
        {
            return Err(corrupt(
                line_no,
                format!(
                    "line {seq} and no checkpoint before it, where the service signs one after \
                     its first lines: the log was not signed from its start, or its \
                     checkpoints were removed and the lines may have been rewritten"
                ),
            ));
        }
        if is_checkpoint {
            let every = fields.get("every").and_then(Value::as_u64).unwrap_or(0);
            if let Some(verifier) = verifier {
                let key = fields.get("key").and_then(Value::as_str).unwrap_or("");
                if key != verifier.key_id() {
                    return Err(corrupt(
                        line_no,
                        format!(
                            "checkpoint signed with key {key:?}, not the given public key \
                             ({})",
                            verifier.key_id()
                        ),
                    ));
                }
                let sig = fields.get("sig").and_then(Value::as_str).unwrap_or("");
                let facts = CheckpointFacts {
                    seq,
                    prev,
                    reason,
                    ts,
                    every,
                };
                if !verifier.verifies(&facts, sig) {
                    return Err(corrupt(
                        line_no,
                        "checkpoint signature does not hold: a line before it was rewritten \
                         (with the hashes after it recomputed) or the checkpoint was forged"
                            .into(),
                    ));
                }
            }
            report.checkpoints += 1;
            report.signed_through = Some(seq);
            report.every = (every > 0).then_some(every);
        } else if let (Some(every), Some(signed)) = (report.every, report.signed_through)
            && seq - signed > every + RUN_SLACK
        {
            return Err(corrupt(
                line_no,
                format!(
                    "{} lines follow the checkpoint at line {signed} without another, and the \
                     service signs one at least every {every}: checkpoints were removed and \
                     the lines after line {signed} may have been rewritten",
                    seq - signed
                ),
            ));
        }
        report.closed = is_checkpoint && reason == REASON_CLOSE;
        report.lines += 1;
        report.last_seq = seq;
        report.last_hash = recorded.to_owned();
        report.last_ts = ts.to_owned();
    }
}

/// Checks the whole chain: every line's own hash, its link to the line before (across
/// files), its sequence number, and — with a public key — every checkpoint's signature.
/// Fails naming the file and line that does not hold.
pub fn verify_chain(
    current: &Path,
    verifier: Option<&CheckpointVerifier>,
) -> Result<ChainReport, AuditError> {
    let files = chain_files(current).map_err(|source| AuditError::Io {
        path: current.to_owned(),
        source,
    })?;
    if files.is_empty() {
        return Err(AuditError::Io {
            path: current.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no audit log here"),
        });
    }
    let mut report = ChainReport {
        last_hash: GENESIS.to_owned(),
        ..Default::default()
    };
    for path in &files {
        check_file(path, &mut report, verifier, true)?;
    }
    report.files = files.len();
    Ok(report)
}

/// Checks one file on its own (the chain continues from its first line), its checkpoints
/// with `verifier` when given.
pub fn verify_file(
    path: &Path,
    verifier: Option<&CheckpointVerifier>,
) -> Result<ChainReport, AuditError> {
    let mut report = ChainReport {
        last_hash: GENESIS.to_owned(),
        ..Default::default()
    };
    check_file(path, &mut report, verifier, false)?;
    report.files = 1;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_close_only_the_next_starts_first_lines_come_until_its_opening() {
        let close = ("checkpoint", REASON_CLOSE);
        // A restart on a later day: the start's first line rotates the file first.
        let across_midnight = [
            ("join", ""),
            close,
            ("checkpoint", REASON_ROTATE),
            ("audit_recovered", "torn_line_dropped"),
            ("audit_opened", "after_clean_stop"),
            ("checkpoint", REASON_OPEN),
            ("join", ""),
            ("checkpoint", "lines"),
        ];
        let mut awaiting = false;
        for (event, code) in across_midnight {
            awaiting = after_line(awaiting, event, code).expect(event);
        }
        assert!(!awaiting);
        // A start that crashed before its opening checkpoint, then the next start.
        let mut awaiting = false;
        for (event, code) in [
            close,
            ("audit_opened", ""),
            ("audit_opened", ""),
            ("checkpoint", REASON_OPEN),
        ] {
            awaiting = after_line(awaiting, event, code).expect(event);
        }
        assert!(!awaiting);
        // Lines added after a close, even behind a start's first line, are refused.
        for added in [
            vec![close, ("admit", "")],
            vec![close, ("audit_opened", ""), ("admit", "")],
            vec![close, ("checkpoint", REASON_ROTATE), ("join", "")],
            vec![close, ("checkpoint", "lines")],
            vec![close, ("audit_recovered", ""), ("checkpoint", "interval")],
        ] {
            let mut awaiting = false;
            let refused =
                added
                    .iter()
                    .position(|(event, code)| match after_line(awaiting, event, code) {
                        Some(a) => {
                            awaiting = a;
                            false
                        }
                        None => true,
                    });
            assert_eq!(refused, Some(added.len() - 1), "{added:?}");
        }
    }
}
