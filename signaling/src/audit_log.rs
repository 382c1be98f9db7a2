//! The PDL audit log: every access event of a meeting, appended as one JSON line, each line
//! carrying the SHA-256 of the previous line and of itself, and fsynced before the event takes
//! effect. Signed checkpoints (audit_checkpoint.rs) every so many lines and seconds, at each
//! day's rotation and at a clean stop make a rewritten chain or a cut-off tail show; a copy of
//! every line goes off the host as it is written (audit_sink.rs). The chain continues across
//! the daily files (`audit.jsonl`, rotated to `audit.2026-12-01.jsonl`). A crash that tore the
//! last line is recovered at start: the torn bytes are dropped (no complete line is lost; the
//! access they described never took effect, as its write never returned) and the recovery is
//! itself a line. A patient's log extract is read from it by audit_extract.rs.
//!
//! Lines hold pseudonymous ids, HSA-ids of staff and care unit ids only: never a personal
//! identity number, SDP, chat text or media.

use crate::audit_chain::{ChainReport, chain_files, read_lines, verify_chain, verify_file};
use crate::audit_checkpoint::{
    CheckpointFacts, CheckpointSigner, REASON_CLOSE, REASON_INTERVAL, REASON_LINES, REASON_OPEN,
    REASON_ROTATE,
};
use crate::audit_sink::{AuditSink, Delivery, SinkConfig};
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Lines accepted by the off-host sink while the file could not be written, waiting to be
/// written to the file; past this, accesses are refused.
const MAX_BEHIND: usize = 10_000;

/// One access event. Optional fields are left out of the line when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// What happened: `join`, `token_refused`, `leave`, `lobby_enter`, `admit`, …
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meeting: Option<String>,
    /// The participant's pseudonymous id (`sub` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Staff HSA-id and care unit of the participant (clinicians).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsa: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The acting clinician, for actions taken on someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_hsa: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_unit: Option<String>,
    /// The system on the meetings API that made the call (`[[api.clients]]` name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_client: Option<String>,
    /// A refusal's code (`token_expired`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The connection the event concerns (ties join and leave together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// What a refused request asked for that was not the requester's: another participant's
    /// id (a resume key of theirs), a photo's id, a connection named as the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The network source of an anonymous request (token refusals): an IPv4 address or an
    /// IPv6 /64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Who a photo was shared with (their subjects); never the photo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
    /// How many events this line stands for (token refusals summarised per source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A summary's count by refusal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<std::collections::BTreeMap<String, u64>>,
    /// Of a summary's count, how many were answered 429 (the source past its budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited: Option<u64>,
    /// How many sources a summary of `source: "other"` stands for (past the sources with
    /// lines of their own in an interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path} line {line}: {reason}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "audit log {path}: the file cannot be written ({file}) and the off-host copy did not take the line"
    )]
    Unrecorded { path: PathBuf, file: String },
    #[error(
        "audit log {path}: the off-host copy {reason}; compare them with `signaling audit verify --sink` before starting (move the file aside to start a new chain in a new stream)"
    )]
    CopyDisagrees { path: PathBuf, reason: String },
    #[error(
        "audit log {path}: the off-host copy could not be read to its end at start ({reason}); nothing was written, and the start must be tried again once it can"
    )]
    CopyUnreadable { path: PathBuf, reason: String },
    #[error("audit log {path}: closed (the service is stopping)")]
    Closed { path: PathBuf },
    #[error(transparent)]
    Sink(#[from] crate::audit_sink::SinkError),
}

/// How often checkpoints are signed, and where the copy goes.
#[derive(Debug, Default)]
pub struct AuditOptions {
    pub signer: Option<CheckpointSigner>,
    /// A checkpoint after this many lines (default 100)…
    pub checkpoint_lines: u64,
    /// …and once lines have waited this long (default 60 s; `checkpoint_if_due`).
    pub checkpoint_every: Duration,
    pub sink: Option<SinkConfig>,
}

struct Tail {
    file: File,
    /// The file's length after its last complete line.
    len: u64,
    /// A failed write could not be cut back: nothing more is written until it can be.
    torn: bool,
    last_hash: String,
    seq: u64,
    /// Lines since the last checkpoint.
    unsigned: u64,
    /// When the oldest of those was written.
    unsigned_since: Option<SystemTime>,
    /// The UTC day the current file is for.
    day: jiff::civil::Date,
    /// Lines the off-host copy took while the file could not be written.
    behind: VecDeque<String>,
    /// The closing checkpoint is written: nothing follows.
    closed: bool,
}

pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
    signer: Option<CheckpointSigner>,
    checkpoint_lines: u64,
    checkpoint_every: Duration,
    sink: Option<AuditSink>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of a line: SHA-256 of its JSON without the `hash` field (keys sorted).
pub(crate) fn line_hash(fields: &Map<String, Value>) -> String {
    let mut without = fields.clone();
    without.remove("hash");
    let canonical = serde_json::to_string(&without).unwrap_or_default();
    hex(digest(&SHA256, canonical.as_bytes()).as_ref())
}

fn utc_day(t: SystemTime) -> jiff::civil::Date {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_zoned(jiff::tz::TimeZone::UTC).date())
        .unwrap_or_default()
}

fn day_of_ts(ts: &str) -> Option<jiff::civil::Date> {
    ts.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date())
}

/// What opening found: how the last run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LastRun {
    New,
    Closed,
    /// The log does not end with a closing checkpoint (a crash, a kill, or lines removed).
    Unclosed,
}

/// Drops a torn last line (bytes after the last newline that are not a complete line).
/// Returns how many bytes were dropped; a complete line that only lost its newline gets it.
fn recover_torn_tail(path: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if keep == bytes.len() {
        return Ok(0);
    }
    let tail = &bytes[keep..];
    let complete = serde_json::from_slice::<Map<String, Value>>(tail)
        .ok()
        .is_some_and(|f| f.get("hash").and_then(Value::as_str) == Some(&line_hash(&f)));
    if complete {
        file.seek(std::io::SeekFrom::End(0))?;
        file.write_all(b"\n")?;
        file.sync_data()?;
        return Ok(0);
    }
    file.set_len(keep as u64)?;
    file.sync_data()?;
    Ok(tail.len() as u64)
}

/// Lines from the copy that continue the chain at `report`'s end, checked link by link.
/// Where the chain stands for lines the copy holds past the file's end: each must continue it.
struct ChainEnd {
    /// The file's last line when the start began (named in refusals).
    file_end: u64,
    seq: u64,
    prev: String,
    awaiting_open: bool,
}

impl ChainEnd {
    fn of(report: &ChainReport) -> Self {
        Self {
            file_end: report.last_seq,
            seq: report.last_seq,
            prev: report.last_hash.clone(),
            awaiting_open: report.awaiting_open,
        }
    }
}

/// Checks that `lines` continue the chain from `end`, which then stands past them.
fn continuing_lines(
    path: &Path,
    end: &mut ChainEnd,
    lines: &[(u64, String)],
) -> Result<(), AuditError> {
    for (q, raw) in lines {
        let disagrees = |reason: String| AuditError::CopyDisagrees {
            path: path.to_owned(),
            reason,
        };
        let fields: Map<String, Value> = serde_json::from_str(raw)
            .map_err(|_| disagrees(format!("holds an unreadable line {q}")))?;
        let hash = fields.get("hash").and_then(Value::as_str).unwrap_or("");
        // After a clean stop only the next start's first lines follow the closing checkpoint
        // (written once every line before it was in the file): the copy cannot legitimately
        // hold more there.
        let event = fields.get("event").and_then(Value::as_str).unwrap_or("");
        let code = fields.get("code").and_then(Value::as_str).unwrap_or("");
        end.awaiting_open = crate::audit_chain::after_line(end.awaiting_open, event, code)
            .ok_or_else(|| {
                disagrees(format!(
                    "holds line {q} ({event:?}) after the service's closing checkpoint, where only \
                 its next start's first lines belong: it was added to the copy"
                ))
            })?;
        let ok = *q == end.seq + 1
            && fields.get("seq").and_then(Value::as_u64) == Some(*q)
            && fields.get("prev").and_then(Value::as_str) == Some(end.prev.as_str())
            && line_hash(&fields) == hash;
        if !ok {
            return Err(disagrees(format!(
                "holds lines past the file's end (line {}) that do not continue its chain \
                 (from line {q})",
                end.file_end
            )));
        }
        end.seq = *q;
        end.prev = hash.to_owned();
    }
    Ok(())
}

/// The last lines of the file held against the off-host copy at start.
const COMPARED_AT_OPEN: u64 = 1000;

/// Fails unless the copy's `lines` (those it holds past line `after`) are, byte for byte, the
/// file's lines of their numbers, with none missing from `after + 1` on: the copy is written in
/// order, so a gap below its last line is a trimmed copy.
fn same_as_file(path: &Path, after: u64, lines: &[(u64, String)]) -> Result<(), AuditError> {
    let (Some((from, _)), Some((to, _))) = (lines.first(), lines.last()) else {
        return Ok(());
    };
    if let Some(gap) = (after + 1..=*to)
        .zip(lines.iter())
        .find(|(want, (q, _))| want != q)
        .map(|(want, _)| want)
    {
        return Err(AuditError::CopyDisagrees {
            path: path.to_owned(),
            reason: format!(
                "lacks line {gap} though it holds line {to}: lines were removed from it \
                 (XADD's trimming options can do that)"
            ),
        });
    }
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let file: std::collections::HashMap<u64, String> = read_lines(path, *from, *to, lines.len())
        .map_err(io)?
        .into_iter()
        .collect();
    for (q, line) in lines {
        if file.get(q) != Some(line) {
            return Err(AuditError::CopyDisagrees {
                path: path.to_owned(),
                reason: format!(
                    "holds another line {q} than the file: a line the service wrote was \
                     edited or removed on this host while it was stopped"
                ),
            });
        }
    }
    Ok(())
}

/// Writes the copy's `lines` past the file's end (checked to continue its chain from `end`)
/// to `file`; returns how many.
fn restore_from_copy(
    path: &Path,
    file: &mut std::fs::File,
    end: &mut ChainEnd,
    lines: &[(u64, String)],
) -> Result<u64, AuditError> {
    continuing_lines(path, end, lines)?;
    let mut bytes = Vec::new();
    for (_, l) in lines {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    file.write_all(&bytes)
        .and_then(|()| file.sync_data())
        .map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(lines.len() as u64)
}

/// At start: holds the copy's lines past `after` against the file, and writes back those past
/// its end (lines the file lost — taken by the copy while the file was unwritable, before a
/// crash — or the whole history, the file lost with its volume). A page at a time, in two
/// passes: every line is checked before any is written, and neither the copy nor the file is
/// ever held in memory whole. Returns how many lines were written; none when Redis cannot be
/// reached now (the shipper compares them once it is), and an error when it stops answering
/// midway: the service must not write lines under numbers the copy may already hold.
fn take_back_from_copy(
    path: &Path,
    file: &mut std::fs::File,
    report: &ChainReport,
    after: u64,
    config: &SinkConfig,
) -> Result<u64, AuditError> {
    let unreadable = |reason: String| AuditError::CopyUnreadable {
        path: path.to_owned(),
        reason,
    };
    let Some(mut copy) = AuditSink::read_after(config, after)? else {
        return Ok(0);
    };
    let mut compared_through = after;
    let mut end = ChainEnd::of(report);
    loop {
        let mut lines = copy.next_page().map_err(|e| unreadable(e.to_string()))?;
        if lines.is_empty() {
            break;
        }
        let beyond = lines.split_off(lines.partition_point(|(q, _)| *q <= report.last_seq));
        same_as_file(path, compared_through, &lines)?;
        if let Some((q, _)) = lines.last() {
            compared_through = *q;
        }
        continuing_lines(path, &mut end, &beyond)?;
    }
    let through = end.seq;
    if through == report.last_seq {
        return Ok(0);
    }
    // Every line checked: written back, each checked again as it is read a second time.
    let mut copy = AuditSink::read_after(config, report.last_seq)?
        .ok_or_else(|| unreadable("unreachable for the second reading".into()))?;
    let mut end = ChainEnd::of(report);
    let mut written = 0;
    while end.seq < through {
        let mut lines = copy.next_page().map_err(|e| unreadable(e.to_string()))?;
        if lines.is_empty() {
            return Err(unreadable(format!("it ended before line {through}")));
        }
        lines.truncate(lines.partition_point(|(q, _)| *q <= through));
        written += restore_from_copy(path, file, &mut end, &lines)?;
    }
    Ok(written)
}

impl AuditLog {
    /// Opens (or creates) the log without signing or a copy (tools and tests).
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_with(path, AuditOptions::default())
    }

    /// Opens (or creates) the log. The current file is checked first — hashes, links and its
    /// checkpoints' signatures — so the chain continues from a sound tail and the service
    /// never signs over lines it did not write; a torn last line is dropped; lines the copy
    /// holds past the file's end (taken while the file could not be written, then lost with
    /// the process) are written back; the opening is recorded (and whether the last run ended
    /// cleanly) and signed at once.
    pub fn open_with(path: &Path, options: AuditOptions) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let torn = if path.exists() {
            recover_torn_tail(path).map_err(io)?
        } else {
            0
        };
        let verifier = options.signer.as_ref().map(CheckpointSigner::verifier);
        // Where the chain stands: the newest file with a line in it (the current one, or
        // after a rotation cut short the newest rotated one).
        let newest = chain_files(path)
            .map_err(io)?
            .into_iter()
            .rev()
            .find(|f| std::fs::metadata(f).map(|m| m.len() > 0).unwrap_or(false));
        let mut report = match &newest {
            Some(file) => verify_file(file, verifier.as_ref())?,
            None => ChainReport {
                last_hash: GENESIS.to_owned(),
                ..Default::default()
            },
        };
        let mut file = crate::private_file::open_append(path).map_err(io)?;
        let mut restored = 0u64;
        // The lines no checkpoint covers yet (at most the last 1,000) are held against the
        // copy: whoever edited them on the host while the service was down cannot edit the
        // copy too, and the opening checkpoint would otherwise sign over the edit.
        let unsigned_from = report
            .signed_through
            .unwrap_or(0)
            .max(report.last_seq.saturating_sub(COMPARED_AT_OPEN));
        if let Some(config) = &options.sink {
            restored = take_back_from_copy(path, &mut file, &report, unsigned_from, config)?;
            if restored > 0 {
                report = verify_file(path, verifier.as_ref())?;
            }
        }
        let last_run = if report.lines == 0 {
            LastRun::New
        } else if report.closed {
            LastRun::Closed
        } else {
            LastRun::Unclosed
        };
        let len = file.metadata().map_err(io)?.len();
        let now = SystemTime::now();
        let day = if newest.as_deref() == Some(path) || restored > 0 {
            day_of_ts(&report.last_ts).unwrap_or_else(|| utc_day(now))
        } else {
            utc_day(now)
        };
        let sink = options
            .sink
            .map(|config| AuditSink::start(config, path.to_owned(), report.last_seq))
            .transpose()?;
        let log = Self {
            path: path.to_owned(),
            tail: Mutex::new(Tail {
                file,
                len,
                torn: false,
                last_hash: report.last_hash.clone(),
                seq: report.last_seq,
                unsigned: report.last_seq - report.signed_through.unwrap_or(report.last_seq),
                unsigned_since: None,
                day,
                behind: VecDeque::new(),
                closed: false,
            }),
            signer: options.signer,
            checkpoint_lines: if options.checkpoint_lines == 0 {
                100
            } else {
                options.checkpoint_lines
            },
            checkpoint_every: if options.checkpoint_every.is_zero() {
                Duration::from_secs(60)
            } else {
                options.checkpoint_every
            },
            sink,
        };
        if torn > 0 {
            tracing::warn!(bytes = torn, "audit log: a torn last line was dropped");
            log.append(&AuditEvent {
                event: "audit_recovered".into(),
                code: Some("torn_line_dropped".into()),
                count: Some(torn),
                ..Default::default()
            })?;
        }
        if restored > 0 {
            tracing::warn!(
                lines = restored,
                "audit log: lines only the off-host copy held were written back"
            );
            log.append(&AuditEvent {
                event: "audit_recovered".into(),
                code: Some("restored_from_copy".into()),
                count: Some(restored),
                ..Default::default()
            })?;
        }
        log.append(&AuditEvent {
            event: "audit_opened".into(),
            code: Some(
                match last_run {
                    LastRun::New => "new",
                    LastRun::Closed => "after_clean_stop",
                    LastRun::Unclosed => "after_unclean_stop",
                }
                .into(),
            ),
            ..Default::default()
        })?;
        // (Unsigned without a key, as the closing one is: a chain's runs are marked alike.)
        {
            let mut tail = log.lock();
            log.checkpoint(&mut tail, REASON_OPEN, SystemTime::now())?;
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one event and fsyncs it. Blocking: call it off the async threads. Fails — and
    /// the access must not happen — when neither the file nor the off-host copy took it.
    pub fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let fields = match serde_json::to_value(event) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut tail = self.lock();
        if tail.closed {
            return Err(AuditError::Closed {
                path: self.path.clone(),
            });
        }
        let now = SystemTime::now();
        if utc_day(now) != tail.day {
            self.rotate(&mut tail, now);
        }
        self.write_line(&mut tail, fields, now)?;
        if self.signer.is_some() && tail.unsigned >= self.checkpoint_lines {
            // The event is recorded; a checkpoint that fails is tried again with the next.
            let _ = self.checkpoint(&mut tail, REASON_LINES, now);
        }
        Ok(())
    }

    /// Signs a checkpoint if lines have waited longer than the interval (call every second
    /// or so).
    pub fn checkpoint_if_due(&self) {
        let mut tail = self.lock();
        let now = SystemTime::now();
        let due = tail.unsigned_since.is_some_and(|since| {
            now.duration_since(since).unwrap_or_default() >= self.checkpoint_every
        });
        if due && !tail.closed && self.signer.is_some() {
            let _ = self.checkpoint(&mut tail, REASON_INTERVAL, now);
        }
    }

    /// The service stops: lines still waiting for the file are written, then a closing
    /// checkpoint, so a log that ends otherwise shows a crash or a removed tail; the copy is
    /// given `wait` to catch up. Nothing is appended after it.
    pub fn close(&self, wait: Duration) -> Result<(), AuditError> {
        let closed = {
            let mut tail = self.lock();
            if tail.closed {
                return Ok(());
            }
            if !tail.behind.is_empty() {
                let _ = self.write_file(&mut tail, "");
            }
            let closed = self.checkpoint(&mut tail, REASON_CLOSE, SystemTime::now());
            tail.closed = true;
            closed
        };
        if let Some(sink) = &self.sink
            && !sink.finish(wait)
        {
            tracing::warn!(
                "audit sink: lines not yet copied at stop; they follow from the file at the next start"
            );
        }
        closed
    }

    pub fn sink(&self) -> Option<&AuditSink> {
        self.sink.as_ref()
    }

    fn checkpoint(&self, tail: &mut Tail, reason: &str, now: SystemTime) -> Result<(), AuditError> {
        let mut fields = Map::new();
        fields.insert("event".into(), Value::from("checkpoint"));
        fields.insert("code".into(), Value::from(reason));
        if let Some(signer) = &self.signer {
            // Signed over what the line will hold: its seq, the hash before it, reason, time,
            // and the longest run of lines before the next.
            let seq = tail.seq + 1;
            let ts = timestamp(now);
            let sig = signer.sign(&CheckpointFacts {
                seq,
                prev: &tail.last_hash,
                reason,
                ts: &ts,
                every: self.checkpoint_lines,
            });
            fields.insert("key".into(), Value::from(signer.key_id()));
            fields.insert("sig".into(), Value::from(sig));
            fields.insert("ts".into(), Value::from(ts));
            fields.insert("every".into(), Value::from(self.checkpoint_lines));
        }
        self.write_line(tail, fields, now)?;
        tail.unsigned = 0;
        tail.unsigned_since = None;
        metrics::counter!("signaling_audit_checkpoints_total", "reason" => reason.to_owned())
            .increment(1);
        Ok(())
    }

    /// Closes the day's file with a checkpoint and moves it aside; the chain goes on in a new
    /// current file. A failure leaves the current file in use until the next day.
    fn rotate(&self, tail: &mut Tail, now: SystemTime) {
        let day = std::mem::replace(&mut tail.day, utc_day(now));
        if tail.len == 0 || !tail.behind.is_empty() || tail.torn {
            return;
        }
        if self.checkpoint(tail, REASON_ROTATE, now).is_err() || !tail.behind.is_empty() {
            return;
        }
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("audit");
        let ext = self
            .path
            .extension()
            .and_then(|s| s.to_str())
            .unwrap_or("jsonl");
        let mut target = self.path.with_file_name(format!("{stem}.{day}.{ext}"));
        let mut n = 2;
        while target.exists() {
            target = self.path.with_file_name(format!("{stem}.{day}-{n}.{ext}"));
            n += 1;
        }
        if let Err(e) = std::fs::rename(&self.path, &target) {
            tracing::error!(error = %e, "audit log rotation failed; the current file stays in use until tomorrow");
            return;
        }
        match crate::private_file::open_append(&self.path) {
            Ok(file) => {
                tail.file = file;
                tail.len = 0;
            }
            Err(e) => {
                // Lines go on into the same file, under its old name.
                tracing::error!(error = %e, "audit log: a new file could not be made");
                let _ = std::fs::rename(&target, &self.path);
                return;
            }
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
    }

    /// Adds seq, time and chain hashes to `fields` and records the line: in the file, or —
    /// when the file cannot be written — in the off-host copy, to be written to the file
    /// when it can.
    fn write_line(
        &self,
        tail: &mut Tail,
        mut fields: Map<String, Value>,
        now: SystemTime,
    ) -> Result<(), AuditError> {
        let seq = tail.seq + 1;
        fields.insert("seq".into(), Value::from(seq));
        if !fields.contains_key("ts") {
            fields.insert("ts".into(), Value::from(timestamp(now)));
        }
        fields.insert("prev".into(), Value::from(tail.last_hash.clone()));
        let hash = line_hash(&fields);
        fields.insert("hash".into(), Value::from(hash.clone()));
        let mut line = serde_json::to_string(&fields).unwrap_or_default();
        line.push('\n');
        let mut outcome = Ok(());
        match self.write_file(tail, &line) {
            Ok(()) => {
                if let Some(sink) = &self.sink {
                    sink.offer(seq, line.trim_end());
                }
            }
            Err(e) => {
                metrics::counter!("signaling_audit_file_failures_total").increment(1);
                let delivery = if tail.behind.len() < MAX_BEHIND
                    && let Some(sink) = &self.sink
                {
                    sink.deliver_now(seq, line.trim_end())
                } else {
                    Delivery::NotStored
                };
                let unrecorded = AuditError::Unrecorded {
                    path: self.path.clone(),
                    file: e.to_string(),
                };
                match delivery {
                    Delivery::Stored => {
                        tracing::error!(error = %e, waiting = tail.behind.len() + 1, "audit file unwritable; line kept by the off-host copy");
                    }
                    Delivery::NotStored => {
                        tracing::error!(error = %e, "audit line not recorded: file and off-host copy unavailable");
                        return Err(unrecorded);
                    }
                    Delivery::Unknown => {
                        // Redis may hold it: it stays in the chain (so its number is never
                        // given to another line), yet the access is refused — at worst the
                        // log shows an access that was then refused, never the reverse.
                        tracing::error!(error = %e, "audit line may not be recorded: access refused");
                        outcome = Err(unrecorded);
                    }
                }
                tail.behind.push_back(line);
            }
        }
        tail.seq = seq;
        tail.last_hash = hash;
        tail.unsigned += 1;
        tail.unsigned_since.get_or_insert(now);
        outcome
    }

    /// Writes the lines waiting from a failure, then `line`, and fsyncs. On failure the file
    /// is cut back to its last complete line.
    fn write_file(&self, tail: &mut Tail, line: &str) -> std::io::Result<()> {
        if tail.torn {
            tail.file.set_len(tail.len)?;
            tail.torn = false;
        }
        let mut bytes = Vec::new();
        for waiting in &tail.behind {
            bytes.extend_from_slice(waiting.as_bytes());
        }
        bytes.extend_from_slice(line.as_bytes());
        let written = tail
            .file
            .write_all(&bytes)
            .and_then(|()| tail.file.sync_data());
        match written {
            Ok(()) => {
                tail.len += bytes.len() as u64;
                tail.behind.clear();
                Ok(())
            }
            Err(e) => {
                if tail.file.set_len(tail.len).is_err() {
                    tail.torn = true;
                }
                Err(e)
            }
        }
    }
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Checks the chain in every file (see `audit_chain::verify_chain`).
pub fn verify(path: &Path) -> Result<ChainReport, AuditError> {
    verify_chain(path, None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit_extract::extract;

    pub(crate) fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "audit-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    pub(crate) fn visit(log: &AuditLog) {
        let clinician = AuditEvent {
            meeting: Some("m1".into()),
            subject: Some("staff-1".into()),
            role: Some("clinician".into()),
            hsa: Some("SE2321000016-ABCD".into()),
            unit: Some("unit-7".into()),
            ..Default::default()
        };
        let patient = AuditEvent {
            meeting: Some("m1".into()),
            subject: Some("pat-9".into()),
            role: Some("patient".into()),
            ..Default::default()
        };
        for (event, who) in [
            ("join", &clinician),
            ("join", &patient),
            ("leave", &patient),
            ("leave", &clinician),
        ] {
            log.append(&AuditEvent {
                event: event.into(),
                ..who.clone()
            })
            .unwrap();
        }
        log.append(&AuditEvent {
            event: "token_refused".into(),
            code: Some("token_expired".into()),
            ..Default::default()
        })
        .unwrap();
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn failing_line(path: &Path) -> usize {
        match verify(path) {
            Err(AuditError::Corrupt { line, .. }) => line,
            other => panic!("expected a corrupt log, got {other:?}"),
        }
    }

    #[test]
    fn a_sound_log_verifies_and_reopening_continues_the_chain() {
        let path = temp("audit.jsonl");
        // Each opening is recorded too (its line and its checkpoint).
        visit(&AuditLog::open(&path).unwrap());
        assert_eq!(verify(&path).unwrap().lines, 7);
        visit(&AuditLog::open(&path).unwrap());
        assert_eq!(verify(&path).unwrap().lines, 14);
    }

    #[test]
    fn editing_deleting_or_swapping_any_line_is_caught_at_that_line() {
        let path = temp("audit.jsonl");
        visit(&AuditLog::open(&path).unwrap());
        let good = lines(&path);
        for i in 0..good.len() {
            // Edit: change one value.
            let mut edited = good.clone();
            edited[i] = edited[i].replacen("\"event\":\"", "\"event\":\"x", 1);
            write(&path, &edited);
            assert_eq!(failing_line(&path), i + 1, "edit of line {}", i + 1);
            // Delete.
            let mut deleted = good.clone();
            deleted.remove(i);
            write(&path, &deleted);
            if i + 1 < good.len() {
                assert_eq!(failing_line(&path), i + 1, "deletion of line {}", i + 1);
            }
            // Swap with the next line.
            if i + 1 < good.len() {
                let mut swapped = good.clone();
                swapped.swap(i, i + 1);
                write(&path, &swapped);
                assert_eq!(
                    failing_line(&path),
                    i + 1,
                    "swap of lines {} and {}",
                    i + 1,
                    i + 2
                );
            }
        }
        write(&path, &good);
        assert!(verify(&path).is_ok());
    }

    pub(crate) fn signed(
        path: &Path,
        dir_key: &Path,
    ) -> (AuditLog, crate::audit_checkpoint::CheckpointVerifier) {
        let signer = CheckpointSigner::load_or_create(dir_key).unwrap();
        let verifier =
            crate::audit_checkpoint::CheckpointVerifier::parse(&signer.public_key()).unwrap();
        let log = AuditLog::open_with(
            path,
            AuditOptions {
                signer: Some(signer),
                checkpoint_lines: 3,
                ..Default::default()
            },
        )
        .unwrap();
        (log, verifier)
    }

    /// Rewrites line `index` (0-based) with `edit` and recomputes every hash from it on, as
    /// someone holding the file would.
    fn rewrite(path: &Path, index: usize, edit: impl Fn(&mut Map<String, Value>)) {
        let mut prev = None::<String>;
        let out: Vec<String> = lines(path)
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut f: Map<String, Value> = serde_json::from_str(l).unwrap();
                if i == index {
                    edit(&mut f);
                }
                if i >= index {
                    if let Some(p) = &prev {
                        f.insert("prev".into(), Value::from(p.clone()));
                    }
                    let h = line_hash(&f);
                    f.insert("hash".into(), Value::from(h));
                }
                prev = f.get("hash").and_then(Value::as_str).map(str::to_owned);
                serde_json::to_string(&f).unwrap()
            })
            .collect();
        write(path, &out);
    }

    #[test]
    fn a_rewritten_chain_passes_the_hashes_but_not_the_signatures() {
        let path = temp("audit.jsonl");
        let (log, verifier) = signed(&path, &path.with_file_name("k"));
        visit(&log);
        log.close(Duration::from_secs(1)).unwrap();
        drop(log);
        let report = verify_chain(&path, Some(&verifier)).unwrap();
        assert!(report.closed && report.checkpoints >= 2, "{report:?}");
        assert_eq!(report.signed_through, Some(report.last_seq));

        // The patient's join becomes someone else's, every later hash recomputed.
        let good = lines(&path);
        let join = good.iter().position(|l| l.contains("pat-9")).unwrap();
        rewrite(&path, join, |f| {
            f.insert("subject".into(), Value::from("pat-other"));
        });
        assert!(verify_chain(&path, None).is_ok(), "the hashes alone hold");
        let first_checkpoint_after = lines(&path)
            .iter()
            .enumerate()
            .skip(join)
            .find(|(_, l)| l.contains("\"checkpoint\""))
            .unwrap()
            .0;
        match verify_chain(&path, Some(&verifier)) {
            Err(AuditError::Corrupt { line, reason, .. }) => {
                assert_eq!(line, first_checkpoint_after + 1, "{reason}");
                assert!(reason.contains("signature"), "{reason}");
            }
            other => panic!("the rewrite went unseen: {other:?}"),
        }
        // Another key's checkpoints are named as such.
        write(&path, &good);
        let stranger = CheckpointSigner::generate(&path.with_file_name("k2")).unwrap();
        let wrong =
            crate::audit_checkpoint::CheckpointVerifier::parse(&stranger.public_key()).unwrap();
        assert!(matches!(
            verify_chain(&path, Some(&wrong)),
            Err(AuditError::Corrupt { reason, .. }) if reason.contains("not the given public key")
        ));
    }

    #[test]
    fn a_removed_tail_no_longer_ends_with_the_closing_checkpoint() {
        let path = temp("audit.jsonl");
        let (log, verifier) = signed(&path, &path.with_file_name("k"));
        visit(&log);
        visit(&log);
        log.close(Duration::from_secs(1)).unwrap();
        drop(log);
        let good = lines(&path);
        // Cut back to an earlier checkpoint, and turn it into a "close" one: the signature
        // covers the reason, so that is caught; left as it is, the log is not closed.
        let cut = good
            .iter()
            .rposition(|l| l.contains("\"code\":\"lines\""))
            .unwrap();
        write(&path, &good[..=cut]);
        let report = verify_chain(&path, Some(&verifier)).unwrap();
        assert!(!report.closed);
        assert!(report.last_seq < good.len() as u64);
        rewrite(&path, cut, |f| {
            f.insert("code".into(), Value::from("close"));
        });
        assert!(verify_chain(&path, Some(&verifier)).is_err());
    }

    #[test]
    fn a_torn_last_line_is_dropped_keeping_every_complete_line_and_recorded() {
        let path = temp("audit.jsonl");
        visit(&AuditLog::open(&path).unwrap());
        let before = lines(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"event\":\"join\",\"meeting\":\"m1\",\"se");
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).is_err());
        let log = AuditLog::open(&path).unwrap();
        drop(log);
        let after = lines(&path);
        assert_eq!(&after[..before.len()], &before[..], "no complete line lost");
        assert!(after[before.len()].contains("\"audit_recovered\""));
        assert!(after[before.len()].contains("\"torn_line_dropped\""));
        assert!(after[before.len() + 1].contains("after_unclean_stop"));
        assert!(verify(&path).is_ok());

        // A complete last line that only lost its newline is kept.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        drop(AuditLog::open(&path).unwrap());
        let again = lines(&path);
        assert_eq!(&again[..after.len()], &after[..]);
        assert!(!again[after.len()].contains("audit_recovered"));
    }

    #[test]
    fn a_new_day_rotates_the_file_and_the_chain_goes_on_across_files() {
        let path = temp("audit.jsonl");
        let (log, verifier) = signed(&path, &path.with_file_name("k"));
        visit(&log);
        let yesterday = log.lock().day.yesterday().unwrap();
        log.lock().day = yesterday;
        visit(&log);
        log.close(Duration::from_secs(1)).unwrap();
        drop(log);
        let rotated = path.with_file_name(format!("audit.{yesterday}.jsonl"));
        let old = lines(&rotated);
        assert!(old.last().unwrap().contains("\"rotate\""), "{old:?}");
        assert_eq!(
            chain_files(&path).unwrap(),
            vec![rotated.clone(), path.clone()]
        );
        let report = verify_chain(&path, Some(&verifier)).unwrap();
        assert_eq!((report.files, report.first_seq), (2, 1));
        assert!(report.closed);
        assert_eq!(extract(&path, "pat-9", &verifier).unwrap().len(), 1);
        // The current file alone does not pass for the whole chain.
        std::fs::remove_file(&rotated).unwrap();
        assert!(matches!(
            verify_chain(&path, Some(&verifier)),
            Err(AuditError::Corrupt { reason, .. }) if reason.contains("were removed")
        ));
    }

    #[test]
    fn a_line_neither_the_file_nor_a_copy_can_take_is_refused_and_leaves_no_trace() {
        let path = temp("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        visit(&log);
        let real = std::mem::replace(
            &mut log.lock().file,
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        );
        let refused = log.append(&AuditEvent {
            event: "join".into(),
            ..Default::default()
        });
        assert!(
            matches!(refused, Err(AuditError::Unrecorded { .. })),
            "{refused:?}"
        );
        log.lock().file = real;
        visit(&log);
        drop(log);
        let report = verify(&path).unwrap();
        assert_eq!(report.lines, 12);
    }

    /// Rebuilds the chain from `keep`ed lines as someone holding the file would: numbers and
    /// hashes made consistent again.
    fn rechain(path: &Path, keep: impl Fn(usize, &mut Map<String, Value>) -> bool) {
        let mut prev = GENESIS.to_owned();
        let mut seq = 0u64;
        let mut out = Vec::new();
        for (i, l) in lines(path).iter().enumerate() {
            let mut f: Map<String, Value> = serde_json::from_str(l).unwrap();
            if !keep(i, &mut f) {
                continue;
            }
            seq += 1;
            f.insert("seq".into(), Value::from(seq));
            f.insert("prev".into(), Value::from(prev.clone()));
            let h = line_hash(&f);
            f.insert("hash".into(), Value::from(h.clone()));
            prev = h;
            out.push(serde_json::to_string(&f).unwrap());
        }
        write(path, &out);
    }

    /// The service, started with the key over the log at `path`, refuses to open it and
    /// leaves the file as it was: it signs nothing over what it did not write.
    fn refused_at_start_writing_nothing(path: &Path, key: &Path) {
        let before = std::fs::read(path).unwrap();
        let reopened = AuditLog::open_with(
            path,
            AuditOptions {
                signer: Some(CheckpointSigner::load(key).unwrap()),
                checkpoint_lines: 3,
                ..Default::default()
            },
        );
        assert!(reopened.is_err(), "the service must not sign over it");
        assert_eq!(std::fs::read(path).unwrap(), before, "and writes nothing");
    }

    #[test]
    fn checkpoints_removed_to_hide_a_rewrite_are_missed_and_the_service_signs_nothing_over_it() {
        let path = temp("audit.jsonl");
        let key = path.with_file_name("k");
        let (log, verifier) = signed(&path, &key);
        for _ in 0..3 {
            visit(&log);
        }
        drop(log);
        let first_checkpoint = lines(&path)
            .iter()
            .position(|l| l.contains("\"checkpoint\""))
            .unwrap();
        rechain(&path, |i, f| {
            if i > first_checkpoint && f.get("event") == Some(&Value::from("checkpoint")) {
                return false;
            }
            if f.get("subject") == Some(&Value::from("pat-9")) {
                f.insert("subject".into(), Value::from("pat-other"));
            }
            true
        });
        assert!(
            verify_chain(&path, None).is_err(),
            "without the key: the run is too long too"
        );
        match verify_chain(&path, Some(&verifier)) {
            Err(AuditError::Corrupt { reason, .. }) => {
                assert!(reason.contains("checkpoints were removed"), "{reason}")
            }
            other => panic!("the rewrite went unseen: {other:?}"),
        }
        refused_at_start_writing_nothing(&path, &key);
    }

    /// A line chained onto the file after a clean stop (hashes and all), as whoever holds the
    /// host, or the append-only copy, could add one: the next start must not sign over it.
    #[test]
    fn lines_added_after_the_closing_checkpoint_are_caught_and_never_signed_over() {
        let path = temp("audit.jsonl");
        let key = path.with_file_name("k");
        let (log, verifier) = signed(&path, &key);
        visit(&log);
        log.close(Duration::from_secs(1)).unwrap();
        drop(log);
        let report = verify_chain(&path, Some(&verifier)).unwrap();
        assert!(report.closed);
        let forged = |event: &str| {
            let mut f = Map::new();
            f.insert("event".into(), Value::from(event));
            f.insert("meeting".into(), Value::from("m1"));
            f.insert("subject".into(), Value::from("staff-2"));
            f.insert("seq".into(), Value::from(report.last_seq + 1));
            f.insert("ts".into(), Value::from(report.last_ts.clone()));
            f.insert("prev".into(), Value::from(report.last_hash.clone()));
            let h = line_hash(&f);
            f.insert("hash".into(), Value::from(h));
            serde_json::to_string(&f).unwrap()
        };
        // The copy's lines are refused before anything is written back.
        let copy = [(report.last_seq + 1, forged("admit"))];
        assert!(matches!(
            continuing_lines(&path, &mut ChainEnd::of(&report), &copy),
            Err(AuditError::CopyDisagrees { reason, .. }) if reason.contains("closing checkpoint")
        ));
        // What a start writes first may follow the close (a crash right after the copy took
        // the opening line).
        assert!(
            continuing_lines(
                &path,
                &mut ChainEnd::of(&report),
                &[(report.last_seq + 1, forged("audit_opened"))]
            )
            .is_ok()
        );
        let mut all = lines(&path);
        all.push(forged("admit"));
        write(&path, &all);
        // (A line that a start writes first does not open the way for others after it.)
        let copy = [
            (report.last_seq + 1, forged("audit_opened")),
            (report.last_seq + 2, {
                let opened: Map<String, Value> =
                    serde_json::from_str(&forged("audit_opened")).unwrap();
                let mut f = Map::new();
                f.insert("event".into(), Value::from("admit"));
                f.insert("seq".into(), Value::from(report.last_seq + 2));
                f.insert("prev".into(), opened["hash"].clone());
                let h = line_hash(&f);
                f.insert("hash".into(), Value::from(h));
                serde_json::to_string(&f).unwrap()
            }),
        ];
        assert!(matches!(
            continuing_lines(&path, &mut ChainEnd::of(&report), &copy),
            Err(AuditError::CopyDisagrees { reason, .. }) if reason.contains("closing checkpoint")
        ));
        match verify_chain(&path, Some(&verifier)) {
            Err(AuditError::Corrupt { reason, line, .. }) => {
                assert!(reason.contains("closing checkpoint"), "{reason}");
                assert_eq!(line, all.len());
            }
            other => panic!("the added line went unseen: {other:?}"),
        }
        refused_at_start_writing_nothing(&path, &key);
    }

    /// The whole log rewritten with every checkpoint left out (hashes recomputed from the
    /// first line on): nothing to check a signature of, so it is the missing checkpoints that
    /// give it away — and no extract is given from it.
    #[test]
    fn a_log_rewritten_without_any_checkpoint_fails_with_the_key() {
        let path = temp("audit.jsonl");
        let (log, verifier) = signed(&path, &path.with_file_name("k"));
        visit(&log);
        visit(&log);
        drop(log);
        rechain(&path, |_, f| {
            if f.get("event") == Some(&Value::from("checkpoint")) {
                return false;
            }
            if f.get("subject") == Some(&Value::from("pat-9")) {
                f.insert("subject".into(), Value::from("pat-other"));
            }
            true
        });
        assert!(verify_chain(&path, None).is_ok(), "the hashes alone hold");
        match verify_chain(&path, Some(&verifier)) {
            Err(AuditError::Corrupt { reason, line, .. }) => {
                assert!(reason.contains("no checkpoint"), "{reason}");
                assert_eq!(line, 5);
            }
            other => panic!("the rewrite went unseen: {other:?}"),
        }
        assert!(extract(&path, "pat-other", &verifier).is_err());
    }

    #[test]
    fn lines_from_the_copy_are_taken_back_only_when_they_continue_the_chain() {
        let path = temp("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        visit(&log);
        drop(log);
        let all = lines(&path);
        let keep = all.len() - 2;
        write(&path, &all[..keep]);
        let report = verify(&path).unwrap();
        let copy: Vec<(u64, String)> = all[keep..]
            .iter()
            .enumerate()
            .map(|(i, l)| ((keep + i + 1) as u64, l.clone()))
            .collect();
        assert!(continuing_lines(&path, &mut ChainEnd::of(&report), &copy).is_ok());
        assert!(
            continuing_lines(&path, &mut ChainEnd::of(&report), &copy[1..]).is_err(),
            "a gap"
        );
        let mut other = copy.clone();
        other[0].1 = other[0].1.replace("\"leave\"", "\"join\"");
        assert!(
            continuing_lines(&path, &mut ChainEnd::of(&report), &other).is_err(),
            "an edit"
        );
    }
}
