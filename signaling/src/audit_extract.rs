//! A patient's log extract (PDL: who in care took part while the patient was in a video
//! meeting), read from the verified audit log.

use crate::audit_chain::{chain_files, verify_chain};
use crate::audit_checkpoint::CheckpointVerifier;
use crate::audit_log::{AuditError, AuditEvent};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

/// One stay of the patient in a meeting, in their extract.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeetingExtract {
    pub meeting: String,
    /// When the patient's first connection of this stay was recorded, and their last ended.
    pub first: String,
    pub last: String,
    /// (HSA-id, care unit) of staff who were in the meeting while the patient was, or acted
    /// in it meanwhile.
    pub staff: Vec<(String, String)>,
    pub units: Vec<String>,
}

/// Connections of one person that follow each other closer than this are one stay (a phone
/// that lost its network and came back), not two.
const SAME_STAY: Duration = Duration::from_secs(5 * 60);

/// One connection's time in a meeting, by line index: from its `join` to the line that ended
/// it (its `leave`; the service's next start, which had lost it; or the log's end).
struct Presence {
    meeting: String,
    subject: Option<String>,
    hsa: Option<String>,
    unit: Option<String>,
    from: usize,
    to: usize,
}

/// Every connection's presence, in the order of the lines. A connection is its `participant`
/// (lines written without one pair by meeting and subject).
fn presences(events: &[(String, AuditEvent)]) -> Vec<Presence> {
    let mut open: HashMap<(String, String), Presence> = HashMap::new();
    let mut done = Vec::new();
    for (i, (_, e)) in events.iter().enumerate() {
        if e.event == "audit_opened" {
            // A start: whatever the previous run had open ended with it.
            done.extend(open.drain().map(|(_, mut p)| {
                p.to = i.saturating_sub(1);
                p
            }));
            continue;
        }
        let Some(meeting) = &e.meeting else { continue };
        let key = (
            meeting.clone(),
            e.participant
                .clone()
                .or_else(|| e.subject.clone())
                .unwrap_or_default(),
        );
        match e.event.as_str() {
            "join" => {
                let p = Presence {
                    meeting: meeting.clone(),
                    subject: e.subject.clone(),
                    hsa: e.hsa.clone(),
                    unit: e.unit.clone(),
                    from: i,
                    to: i,
                };
                if let Some(mut before) = open.insert(key, p) {
                    before.to = i;
                    done.push(before);
                }
            }
            "leave" => {
                if let Some(mut p) = open.remove(&key) {
                    p.to = i;
                    done.push(p);
                }
            }
            _ => {}
        }
    }
    let last = events.len().saturating_sub(1);
    done.extend(open.into_values().map(|mut p| {
        p.to = last;
        p
    }));
    done.sort_by_key(|p| (p.from, p.to));
    done
}

/// The patient's log extract: each stay of `subject` in a meeting — its time, and the staff
/// and care units in the meeting meanwhile. Staff who were in the same meeting only at other
/// times (a drop-in queue serves many patients in a day, and may open under one id each day)
/// are not in it. The log is verified first, its checkpoints' signatures too: an extract from
/// a rewritten log would be the rewriter's.
pub fn extract(
    path: &Path,
    subject: &str,
    verifier: &CheckpointVerifier,
) -> Result<Vec<MeetingExtract>, AuditError> {
    verify_chain(path, Some(verifier))?;
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let mut events: Vec<(String, AuditEvent)> = Vec::new();
    for file in chain_files(path).map_err(io)? {
        let file = File::open(&file).map_err(io)?;
        events.extend(
            BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let v: Value = serde_json::from_str(&l).ok()?;
                    let ts = v.get("ts")?.as_str()?.to_owned();
                    Some((ts, serde_json::from_value(v).ok()?))
                }),
        );
    }
    Ok(stays(&events, subject, SAME_STAY))
}

/// The extract from the log's lines (time, event), in order.
fn stays(
    events: &[(String, AuditEvent)],
    subject: &str,
    same_stay: Duration,
) -> Vec<MeetingExtract> {
    let presences = presences(events);
    let at = |i: usize| humantime::parse_rfc3339(&events[i].0).ok();
    // The patient's stays: their connections to one meeting, joined where one follows another
    // within `same_stay`.
    let mut stays: Vec<(String, usize, usize)> = Vec::new();
    for p in presences
        .iter()
        .filter(|p| p.subject.as_deref() == Some(subject))
    {
        let near = stays.iter_mut().rev().find(|(m, _, _)| *m == p.meeting);
        match near {
            Some(stay)
                if p.from <= stay.2
                    || matches!((at(stay.2), at(p.from)), (Some(a), Some(b))
                        if b.duration_since(a).unwrap_or_default() <= same_stay) =>
            {
                stay.2 = stay.2.max(p.to);
            }
            _ => stays.push((p.meeting.clone(), p.from, p.to)),
        }
    }
    let mut out = Vec::new();
    for (meeting, from, to) in stays {
        let mut ex = MeetingExtract {
            meeting: meeting.clone(),
            first: events[from].0.clone(),
            last: events[to].0.clone(),
            ..Default::default()
        };
        let mut add = |hsa: &Option<String>, unit: &Option<String>| {
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
        };
        // Staff in the meeting at any time of the stay…
        for p in presences
            .iter()
            .filter(|p| p.meeting == meeting && p.from <= to && from <= p.to)
        {
            add(&p.hsa, &p.unit);
        }
        // …and staff who acted in it meanwhile (admitted, denied, shared a photo, …).
        for (_, e) in events[from..=to]
            .iter()
            .filter(|(_, e)| e.meeting.as_deref() == Some(meeting.as_str()))
        {
            add(&e.hsa, &e.unit);
            add(&e.actor_hsa, &e.actor_unit);
        }
        out.push(ex);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit_log::tests::{signed, temp, visit};

    #[test]
    fn the_extract_names_the_staff_and_unit_of_the_patients_meetings() {
        let path = temp("audit.jsonl");
        let (log, verifier) = signed(&path, &path.with_file_name("k"));
        visit(&log);
        drop(log);
        let extract = |path: &Path, sub: &str| extract(path, sub, &verifier);
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

    fn line(ts: &str, event: &str, who: &str, participant: &str) -> (String, AuditEvent) {
        let staff = who.strip_prefix("staff-");
        let e = AuditEvent {
            event: event.into(),
            meeting: Some("queue".into()),
            subject: Some(who.into()),
            participant: (!participant.is_empty()).then(|| participant.into()),
            hsa: staff.map(|s| format!("SE2321000016-{s}")),
            unit: staff.map(|s| format!("unit-{s}")),
            ..Default::default()
        };
        (format!("2026-12-0{ts}Z"), e)
    }

    /// A drop-in queue open under one id on two days: each of the patient's stays names the
    /// staff who were there meanwhile, not those who served others before or after.
    #[test]
    fn each_stay_names_only_the_staff_in_the_meeting_meanwhile() {
        let mut admit = line("1T09:10:00.000", "admit", "pat-1", "p1");
        admit.1.actor_hsa = Some("SE2321000016-E".into());
        admit.1.actor_unit = Some("unit-E".into());
        let events = vec![
            line("1T09:00:00.000", "join", "staff-A", "ca"),
            line("1T09:05:00.000", "join", "pat-1", "p1"),
            admit,
            line("1T09:20:00.000", "leave", "pat-1", "p1"),
            line("1T09:30:00.000", "join", "staff-B", "cb"),
            line("1T09:31:00.000", "join", "pat-2", "p2"),
            line("1T09:40:00.000", "leave", "pat-2", "p2"),
            line("1T09:40:00.500", "leave", "staff-B", "cb"),
            line("1T09:41:00.000", "leave", "staff-A", "ca"),
            // Joined and never left: the service stopped without a word.
            line("1T16:00:00.000", "join", "staff-C", "cc"),
            (
                "2026-12-02T08:00:00.000Z".into(),
                AuditEvent {
                    event: "audit_opened".into(),
                    ..Default::default()
                },
            ),
            line("2T10:00:00.000", "join", "staff-D", "cd"),
            line("2T10:01:00.000", "join", "pat-1", "p3"),
            line("2T10:02:00.000", "leave", "pat-1", "p3"),
            // The same patient back within a minute: the same stay.
            line("2T10:03:00.000", "join", "pat-1", "p4"),
            line("2T10:20:00.000", "leave", "pat-1", "p4"),
            line("2T10:30:00.000", "leave", "staff-D", "cd"),
        ];
        let staff = |ex: &MeetingExtract| -> Vec<String> {
            ex.staff.iter().map(|(hsa, _)| hsa.clone()).collect()
        };
        let pat1 = stays(&events, "pat-1", SAME_STAY);
        assert_eq!(pat1.len(), 2, "{pat1:?}");
        assert_eq!(
            (pat1[0].first.as_str(), pat1[0].last.as_str()),
            ("2026-12-01T09:05:00.000Z", "2026-12-01T09:20:00.000Z")
        );
        assert_eq!(
            staff(&pat1[0]),
            ["SE2321000016-A", "SE2321000016-E"],
            "the clinician there and the one who admitted"
        );
        assert_eq!(pat1[0].units, ["unit-A", "unit-E"]);
        assert_eq!(
            (pat1[1].first.as_str(), pat1[1].last.as_str()),
            ("2026-12-02T10:01:00.000Z", "2026-12-02T10:20:00.000Z")
        );
        assert_eq!(staff(&pat1[1]), ["SE2321000016-D"]);
        // The second patient's stay: both clinicians were there.
        let pat2 = stays(&events, "pat-2", SAME_STAY);
        assert_eq!(pat2.len(), 1);
        assert_eq!(staff(&pat2[0]), ["SE2321000016-A", "SE2321000016-B"]);
        // Connections apart by more than the stay's gap are stays of their own.
        assert_eq!(stays(&events, "pat-1", Duration::ZERO).len(), 3);
    }
}
