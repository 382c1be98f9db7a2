//! The PDL audit log: every access event of a meeting, appended as one JSON line, each line
//! carrying the SHA-256 of the previous line and of itself, and fsynced before the event takes
//! effect. `verify` names the first line that was edited, removed or reordered; `extract` prints
//! a patient's log extract (which care units and staff took part in their meetings, and when).
//!
//! Lines hold pseudonymous ids, HSA-ids of staff and care unit ids only: never a personal
//! identity number, SDP, chat text or media.

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// The network source of an anonymous request (token refusals): an IPv4 address or an
    /// IPv6 /64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How many events this line stands for (token refusals summarised per source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A summary's count by refusal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<std::collections::BTreeMap<String, u64>>,
    /// Of a summary's count, how many were answered 429 (the source past its budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited: Option<u64>,
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
}

struct Tail {
    file: File,
    last_hash: String,
    seq: u64,
}

pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
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
fn line_hash(fields: &Map<String, Value>) -> String {
    let mut without = fields.clone();
    without.remove("hash");
    let canonical = serde_json::to_string(&without).unwrap_or_default();
    hex(digest(&SHA256, canonical.as_bytes()).as_ref())
}

impl AuditLog {
    /// Opens (or creates) the log; an existing log is verified first so the chain continues
    /// from a sound tail.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let (seq, last_hash) = if path.exists() {
            let report = verify(path)?;
            (report.lines as u64, report.last_hash)
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            (0, GENESIS.to_owned())
        };
        let file = crate::private_file::open_append(path).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            tail: Mutex::new(Tail {
                file,
                last_hash,
                seq,
            }),
        })
    }

    /// Appends one event and fsyncs it. Blocking: call it off the async threads.
    pub fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut fields = match serde_json::to_value(event) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        fields.insert("seq".into(), Value::from(tail.seq + 1));
        fields.insert(
            "ts".into(),
            Value::from(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        fields.insert("prev".into(), Value::from(tail.last_hash.clone()));
        let hash = line_hash(&fields);
        fields.insert("hash".into(), Value::from(hash.clone()));
        let mut line = serde_json::to_string(&fields).unwrap_or_default();
        line.push('\n');
        tail.file.write_all(line.as_bytes()).map_err(io)?;
        tail.file.sync_data().map_err(io)?;
        tail.seq += 1;
        tail.last_hash = hash;
        Ok(())
    }
}

/// What `verify` found in a sound log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub lines: usize,
    pub last_hash: String,
}

/// Checks the chain: every line's own hash, its link to the line before, and its sequence
/// number. Fails naming the first line that does not hold.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_owned(),
        source,
    })?;
    let corrupt = |line: usize, reason: String| AuditError::Corrupt {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut prev = GENESIS.to_owned();
    let mut n = 0usize;
    for (i, raw) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let raw = raw.map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        let fields: Map<String, Value> = serde_json::from_str(&raw)
            .map_err(|e| corrupt(line_no, format!("not a JSON object ({e})")))?;
        let recorded = fields.get("hash").and_then(Value::as_str).unwrap_or("");
        if line_hash(&fields) != recorded {
            return Err(corrupt(
                line_no,
                "the line was edited (its hash does not match)".into(),
            ));
        }
        let seq = fields.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if seq != line_no as u64 {
            return Err(corrupt(
                line_no,
                format!(
                    "sequence number {seq} where {line_no} belongs: a line before it was removed or lines were reordered"
                ),
            ));
        }
        if fields.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(corrupt(
                line_no,
                "does not follow the line before it: a line was removed, inserted or reordered"
                    .into(),
            ));
        }
        prev = recorded.to_owned();
        n = line_no;
    }
    Ok(VerifyReport {
        lines: n,
        last_hash: prev,
    })
}

/// One meeting in a patient's extract.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeetingExtract {
    pub meeting: String,
    pub first: String,
    pub last: String,
    /// (HSA-id, care unit) of staff who took part or acted in the meeting.
    pub staff: Vec<(String, String)>,
    pub units: Vec<String>,
}

/// The patient's log extract: every meeting `subject` joined, with the staff and care units
/// that took part in it and when. The log is verified first.
pub fn extract(path: &Path, subject: &str) -> Result<Vec<MeetingExtract>, AuditError> {
    verify(path)?;
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_owned(),
        source,
    })?;
    let events: Vec<(String, AuditEvent)> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let v: Value = serde_json::from_str(&l).ok()?;
            let ts = v.get("ts")?.as_str()?.to_owned();
            Some((ts, serde_json::from_value(v).ok()?))
        })
        .collect();
    let mut meetings: Vec<MeetingExtract> = Vec::new();
    for (_, e) in &events {
        if e.subject.as_deref() == Some(subject)
            && let Some(m) = &e.meeting
            && !meetings.iter().any(|x| &x.meeting == m)
        {
            meetings.push(MeetingExtract {
                meeting: m.clone(),
                ..Default::default()
            });
        }
    }
    for ex in &mut meetings {
        for (ts, e) in events
            .iter()
            .filter(|(_, e)| e.meeting.as_deref() == Some(ex.meeting.as_str()))
        {
            if ex.first.is_empty() {
                ex.first = ts.clone();
            }
            ex.last = ts.clone();
            let pairs = [(&e.hsa, &e.unit), (&e.actor_hsa, &e.actor_unit)];
            for (hsa, unit) in pairs {
                if let Some(hsa) = hsa {
                    let entry = (hsa.clone(), unit.clone().unwrap_or_default());
                    if !ex.staff.contains(&entry) {
                        ex.staff.push(entry);
                    }
                }
                if let Some(unit) = unit
                    && !ex.units.contains(unit)
                {
                    ex.units.push(unit.clone());
                }
            }
        }
    }
    Ok(meetings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "audit-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn visit(log: &AuditLog) {
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
        visit(&AuditLog::open(&path).unwrap());
        assert_eq!(verify(&path).unwrap().lines, 5);
        visit(&AuditLog::open(&path).unwrap());
        assert_eq!(verify(&path).unwrap().lines, 10);
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

    #[test]
    fn the_extract_names_the_staff_and_unit_of_the_patients_meetings() {
        let path = temp("audit.jsonl");
        visit(&AuditLog::open(&path).unwrap());
        let ex = extract(&path, "pat-9").unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].meeting, "m1");
        assert_eq!(
            ex[0].staff,
            vec![("SE2321000016-ABCD".to_owned(), "unit-7".to_owned())]
        );
        assert!(!ex[0].first.is_empty() && ex[0].first <= ex[0].last);
        assert!(extract(&path, "nobody").unwrap().is_empty());
    }
}
