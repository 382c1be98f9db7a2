//! A patient's log extract (PDL: who in care took part while the patient was in a video
//! meeting), read from the verified audit log.

use crate::audit_chain::{chain_files, verify_chain};
use crate::audit_checkpoint::CheckpointVerifier;
use crate::audit_log::{AuditError, AuditEvent};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

/// One stay of the patient, in their extract.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeetingExtract {
    /// The meeting, or the meetings in the order the patient was in them (a drop-in queue,
    /// then the private visit a clinician took them into: `queue → visit`).
    pub meeting: String,
    /// When the patient's first connection of this stay was recorded, and their last ended.
    pub first: String,
    pub last: String,
    /// (HSA-id, care unit) of staff who were in a meeting with the patient, or acted in one
    /// of the patient's meetings meanwhile.
    pub staff: Vec<(String, String)>,
    pub units: Vec<String>,
}

/// Connections of one person that follow each other closer than this are one stay (a phone
/// that lost its network and came back), not two.
const SAME_STAY: Duration = Duration::from_secs(5 * 60);

/// What a drop-in take's `admit` line says of where the patient went.
const TAKEN_TO: &str = "drop_in_take to ";

/// One connection, by line index: from its `join` to the line that ended it (its `leave`; the
/// service's next start, which had lost it; or the log's end), and the meetings it was in
/// meanwhile — from the line each began (a drop-in take moves a connection from the queue to
/// a private visit).
struct Presence {
    subject: Option<String>,
    hsa: Option<String>,
    unit: Option<String>,
    /// (meeting, first line in it), in order.
    meetings: Vec<(String, usize)>,
    to: usize,
}

impl Presence {
    fn from(&self) -> usize {
        self.meetings[0].1
    }

    /// (meeting, from, to) of each part of the connection.
    fn spans(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.meetings.iter().enumerate().map(|(k, (m, from))| {
            let to = self
                .meetings
                .get(k + 1)
                .map_or(self.to, |(_, next)| next.saturating_sub(1).max(*from));
            (m.as_str(), *from, to)
        })
    }

    fn moved_to(&mut self, meeting: &str, at: usize) {
        if self.meetings.last().is_some_and(|(m, _)| m != meeting) {
            self.meetings.push((meeting.to_owned(), at));
        }
    }
}

/// A drop-in take as the extract follows it: the queue, the visit's entry it made in the
/// presences it moved, and their keys.
struct Take {
    queue: String,
    entered: (String, usize),
    moved: Vec<String>,
}

/// Every connection's presence. A connection is its `participant`, unique to it wherever it
/// goes (lines written without one pair by meeting and subject).
fn presences(events: &[(String, AuditEvent)]) -> Vec<Presence> {
    let mut open: HashMap<String, Presence> = HashMap::new();
    let mut done = Vec::new();
    // Drop-in takes by the patient's connection: the queue, and the connections moved with
    // the line that entered the visit — undone if the take was recorded but not carried out
    // (`admit_not_applied` in the queue: another clinician took the patient first).
    let mut takes: HashMap<String, Take> = HashMap::new();
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
        let key = match &e.participant {
            Some(p) => p.clone(),
            None => format!("{meeting}\u{0}{}", e.subject.as_deref().unwrap_or_default()),
        };
        match e.event.as_str() {
            "join" => {
                let p = Presence {
                    subject: e.subject.clone(),
                    hsa: e.hsa.clone(),
                    unit: e.unit.clone(),
                    meetings: vec![(meeting.clone(), i)],
                    to: i,
                };
                if let Some(mut before) = open.insert(key, p) {
                    before.to = i;
                    done.push(before);
                }
            }
            // (A connection the same person's next one took the place of ends with
            // `replaced`, not a `leave`: left open, it ran to the log's end and took in the
            // staff of every later meeting there.)
            "leave" | "replaced" => {
                if let Some(mut p) = open.remove(&key) {
                    p.moved_to(meeting, i);
                    p.to = i;
                    done.push(p);
                }
            }
            "admit_not_applied" => {
                let undone = takes.remove(&key).filter(|t| t.queue == *meeting);
                if let Some(Take { entered, moved, .. }) = undone {
                    for k in moved {
                        if let Some(p) = open.get_mut(&k)
                            && p.meetings.last() == Some(&entered)
                        {
                            p.meetings.pop();
                        }
                    }
                }
            }
            _ => {
                let taken_to = taken_to(e);
                let mut moved = Vec::new();
                if let Some(p) = open.get_mut(&key) {
                    p.moved_to(meeting, i);
                    if let Some(to) = taken_to {
                        p.moved_to(to, i + 1);
                        moved.push(key.clone());
                    }
                }
                // The clinician who took the patient goes with them (the line names them by
                // HSA-id only): their connection in the queue is now in the visit.
                if let (Some(to), Some(actor)) = (taken_to, &e.actor_hsa) {
                    for (k, q) in open.iter_mut().filter(|(_, q)| {
                        q.hsa.as_ref() == Some(actor)
                            && q.meetings.last().is_some_and(|(m, _)| m == meeting)
                    }) {
                        q.moved_to(to, i + 1);
                        moved.push(k.clone());
                    }
                }
                if let Some(to) = taken_to {
                    let entered = (to.to_owned(), i + 1);
                    let queue = meeting.clone();
                    takes.insert(
                        key,
                        Take {
                            queue,
                            entered,
                            moved,
                        },
                    );
                }
            }
        }
    }
    let last = events.len().saturating_sub(1);
    done.extend(open.into_values().map(|mut p| {
        p.to = last;
        p
    }));
    done.sort_by_key(|p| (p.from(), p.to));
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
    let events = patients_lines(subject, |each| each_line(path, each))?;
    Ok(stays(&events, subject, SAME_STAY))
}

/// The lines an extract for `subject` needs, read twice through `lines` (which hands each
/// line's time and event to its argument, in order), keeping only what the patient's meetings
/// need: a region's log of years does not fit in memory (and the extract runs beside the
/// service, within its limit).
fn patients_lines<E>(
    subject: &str,
    mut lines: impl FnMut(&mut dyn FnMut(String, AuditEvent)) -> Result<(), E>,
) -> Result<Vec<(String, AuditEvent)>, E> {
    // First the meetings the patient was in — a drop-in take's line names the visit they
    // were taken to, and the clinician who took them (by HSA-id) went too — and the queue
    // each private visit among them was taken from: whoever came into the visit with a take
    // began in that queue.
    let mut meetings: HashSet<String> = HashSet::new();
    let mut hsa_ids: HashSet<String> = HashSet::new();
    let mut taken_from: HashMap<String, String> = HashMap::new();
    lines(&mut |_, e| {
        if e.subject.as_deref() == Some(subject) {
            meetings.extend(e.meeting.clone());
            meetings.extend(taken_to(&e).map(str::to_owned));
            hsa_ids.extend(e.hsa.clone());
        }
        if let (Some(to), Some(queue)) = (taken_to(&e), &e.meeting) {
            if e.actor_hsa.as_ref().is_some_and(|a| hsa_ids.contains(a)) && meetings.contains(queue)
            {
                meetings.insert(to.to_owned());
            }
            taken_from.insert(to.to_owned(), queue.clone());
        }
    })?;
    let queues: Vec<String> = meetings
        .iter()
        .filter_map(|m| taken_from.get(m).cloned())
        .collect();
    meetings.extend(queues);
    drop(taken_from);
    // …then their lines, and the service's starts (which end every connection open before)
    // with the line before each, and the log's last line: where connections still open end.
    let mut events: Vec<(String, AuditEvent)> = Vec::new();
    let mut last = None;
    lines(&mut |ts, e| {
        let start = e.event == "audit_opened";
        if start || e.meeting.as_ref().is_some_and(|m| meetings.contains(m)) {
            if start {
                events.extend(last.take());
            }
            events.push((ts, e));
            last = None;
        } else {
            last = Some((ts, e));
        }
    })?;
    events.extend(last);
    Ok(events)
}

/// Calls `each` with every line's time and event, in order, across the log's files.
fn each_line(path: &Path, each: &mut dyn FnMut(String, AuditEvent)) -> Result<(), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    for file in chain_files(path).map_err(io)? {
        for line in BufReader::new(File::open(&file).map_err(io)?).lines() {
            let line = line.map_err(io)?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let Some(ts) = v.get("ts").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if let Ok(e) = serde_json::from_value(v) {
                each(ts, e);
            }
        }
    }
    Ok(())
}

/// The private visit a drop-in take's line says the patient was taken to.
fn taken_to(e: &AuditEvent) -> Option<&str> {
    e.code.as_deref().and_then(|c| c.strip_prefix(TAKEN_TO))
}

/// The extract from the log's lines (time, event), in order.
fn stays(
    events: &[(String, AuditEvent)],
    subject: &str,
    same_stay: Duration,
) -> Vec<MeetingExtract> {
    let presences = presences(events);
    let at = |i: usize| humantime::parse_rfc3339(&events[i].0).ok();
    // The patient's stays: their connections, joined where one follows another within
    // `same_stay` (each keeps its own meetings and times).
    // (Only connections to a meeting in common: two visits an hour apart are two stays.)
    let mut stays: Vec<Vec<&Presence>> = Vec::new();
    for p in presences
        .iter()
        .filter(|p| p.subject.as_deref() == Some(subject))
    {
        let shares = |q: &&Presence| q.spans().any(|(m, ..)| p.spans().any(|(pm, ..)| pm == m));
        let near = stays
            .iter_mut()
            .rev()
            .find(|stay| stay.iter().any(&shares))
            .filter(|stay| {
                stay.iter().any(|q| p.from() <= q.to)
                    || stay.iter().map(|q| q.to).max().is_some_and(|end| {
                        matches!((at(end), at(p.from())), (Some(a), Some(b))
                            if b.duration_since(a).unwrap_or_default() <= same_stay)
                    })
            });
        match near {
            Some(stay) => stay.push(p),
            None => stays.push(vec![p]),
        }
    }
    stays.sort_by_key(|stay| stay.iter().map(|p| p.from()).min());
    let mut out = Vec::new();
    for stay in stays {
        let spans: Vec<(&str, usize, usize)> = stay.iter().flat_map(|p| p.spans()).collect();
        let (from, to) = (
            spans.iter().map(|s| s.1).min().unwrap_or_default(),
            spans.iter().map(|s| s.2).max().unwrap_or_default(),
        );
        let mut meetings: Vec<&str> = Vec::new();
        for (m, ..) in &spans {
            if !meetings.contains(m) {
                meetings.push(m);
            }
        }
        let mut ex = MeetingExtract {
            meeting: meetings.join(" → "),
            first: events[from].0.clone(),
            last: events[to].0.clone(),
            ..Default::default()
        };
        let mut add = |hsa: &Option<String>, unit: &Option<String>| {
            if let Some(hsa) = hsa {
                let unit = unit.clone().unwrap_or_default();
                // A line that names the person without their unit adds nothing to one that
                // names both.
                let same = |(h, u): &&mut (String, String)| {
                    h == hsa && (*u == unit || u.is_empty() || unit.is_empty())
                };
                match ex.staff.iter_mut().find(|e| same(e)) {
                    Some(known) if known.1.is_empty() => known.1 = unit,
                    Some(_) => {}
                    None => ex.staff.push((hsa.clone(), unit)),
                }
            }
            if let Some(unit) = unit
                && !ex.units.contains(unit)
            {
                ex.units.push(unit.clone());
            }
        };
        // Where the patient was at line `i`.
        let with_patient = |meeting: &str, i: usize| {
            spans
                .iter()
                .any(|(m, a, b)| *m == meeting && (*a..=*b).contains(&i))
        };
        // Staff in a meeting while the patient was in it…
        for p in &presences {
            let shared = p.spans().any(|(m, a, b)| {
                spans
                    .iter()
                    .any(|(pm, pa, pb)| *pm == m && a <= *pb && *pa <= b)
            });
            if shared {
                add(&p.hsa, &p.unit);
            }
        }
        // …and staff who acted in one of the patient's meetings while the patient was in it
        // (admitted them, invited a consultant, shared a photo, …).
        for (i, (_, e)) in events.iter().enumerate().take(to + 1).skip(from) {
            if e.meeting.as_deref().is_some_and(|m| with_patient(m, i)) {
                add(&e.hsa, &e.unit);
                add(&e.actor_hsa, &e.actor_unit);
            }
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

    /// `l` as done by staff member `actor` (their HSA-id and unit).
    fn by(actor: &str, mut l: (String, AuditEvent)) -> (String, AuditEvent) {
        l.1.actor_hsa = Some(format!("SE2321000016-{actor}"));
        l.1.actor_unit = Some(format!("unit-{actor}"));
        l
    }

    /// A drop-in take moves the patient and the clinician from the queue into a private visit
    /// under an id of its own (its lines name it): the stay names the queue and the visit, the
    /// clinician who took them and a consultant invited into the visit — and not a clinician
    /// who came to the queue once the patient had left it.
    #[test]
    fn a_drop_in_take_follows_the_patient_into_the_private_visit() {
        let in_visit = |mut l: (String, AuditEvent)| {
            l.1.meeting = Some("queue-v1".into());
            l
        };
        let mut take = by("A", line("1T09:10:00.000", "admit", "pat-1", "p1"));
        take.1.code = Some(format!("{TAKEN_TO}queue-v1"));
        let mut invite = in_visit(line("1T09:15:00.000", "consultant_invited", "", ""));
        invite.1.subject = None;
        invite.1.hsa = Some("SE2321000016-K".into());
        invite.1.actor_hsa = Some("SE2321000016-A".into());
        let events = vec![
            line("1T09:00:00.000", "join", "staff-A", "ca"),
            line("1T09:05:00.000", "join", "pat-1", "p1"),
            take,
            line("1T09:12:00.000", "join", "staff-B", "cb"),
            invite,
            in_visit(line("1T09:16:00.000", "join", "staff-K", "ck")),
            in_visit(line("1T09:30:00.000", "leave", "pat-1", "p1")),
            in_visit(line("1T09:30:01.000", "leave", "staff-K", "ck")),
            in_visit(line("1T09:31:00.000", "leave", "staff-A", "ca")),
            line("1T11:00:00.000", "leave", "staff-B", "cb"),
        ];
        let ex = stays(&events, "pat-1", SAME_STAY);
        assert_eq!(ex.len(), 1, "{ex:?}");
        assert_eq!(ex[0].meeting, "queue → queue-v1");
        // Another patient who waits in the queue while the clinician is in the private visit:
        // the clinician was with them only before the take, and that is all it says.
        let mut later = events.clone();
        later.insert(3, line("1T09:11:00.000", "join", "pat-2", "p2"));
        later.push(line("1T11:30:00.000", "leave", "pat-2", "p2"));
        let ex2 = stays(&later, "pat-2", SAME_STAY);
        let staff2: Vec<&str> = ex2[0].staff.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(staff2, ["SE2321000016-B"], "{ex2:?}");
        assert_eq!(
            (ex[0].first.as_str(), ex[0].last.as_str()),
            ("2026-12-01T09:05:00.000Z", "2026-12-01T09:30:00.000Z")
        );
        let staff: Vec<&str> = ex[0].staff.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(staff, ["SE2321000016-A", "SE2321000016-K"]);
    }

    /// The extract reads only the lines of the patient's meetings (and the service's starts):
    /// for every person in a log of a drop-in day, a restart, other visits interleaved and a
    /// connection still open at the end, it says exactly what it says from every line.
    #[test]
    fn the_lines_of_the_patients_meetings_give_the_same_extract_as_every_line() {
        let at = |meeting: &str, mut l: (String, AuditEvent)| {
            l.1.meeting = Some(meeting.into());
            l
        };
        let mut take = by("A", line("1T09:10:00.000", "admit", "pat-1", "p1"));
        take.1.code = Some(format!("{TAKEN_TO}queue-v1"));
        let mut take2 = by("B", line("1T09:40:00.000", "admit", "pat-2", "p2"));
        take2.1.code = Some(format!("{TAKEN_TO}queue-v2"));
        let restart = (
            "2026-12-01T10:00:00.000Z".to_owned(),
            AuditEvent {
                event: "audit_opened".into(),
                ..Default::default()
            },
        );
        let all = vec![
            line("1T09:00:00.000", "join", "staff-A", "ca"),
            at("visit-9", line("1T09:01:00.000", "join", "staff-Z", "cz")),
            line("1T09:05:00.000", "join", "pat-1", "p1"),
            at("visit-9", line("1T09:06:00.000", "join", "pat-9", "p9")),
            take,
            line("1T09:11:00.000", "join", "pat-2", "p2"),
            line("1T09:12:00.000", "join", "staff-B", "cb"),
            at("queue-v1", line("1T09:16:00.000", "join", "staff-K", "ck")),
            at(
                "visit-9",
                by("Z", line("1T09:17:00.000", "admit", "pat-9", "p9")),
            ),
            at("queue-v1", line("1T09:30:00.000", "leave", "pat-1", "p1")),
            take2,
            at("queue-v2", line("1T09:50:00.000", "leave", "pat-2", "p2")),
            at("visit-9", line("1T09:55:00.000", "leave", "pat-9", "p9")),
            // A restart ends the rest: the clinician who took pat-1 (in the visit with the
            // consultant, and no line there since the take), the consultant, staff-B, staff-Z.
            restart,
            at("visit-2", line("1T10:20:30.000", "join", "staff-C", "cc")),
            at("visit-2", line("1T10:21:00.000", "join", "pat-1", "p3")),
            at("visit-9", line("1T10:22:00.000", "join", "pat-9", "p4")),
            at("visit-2", line("1T10:40:00.000", "leave", "staff-C", "cc")),
            at("visit-9", line("1T10:45:00.000", "join", "staff-Z", "cz2")),
        ];
        for who in ["pat-1", "pat-2", "pat-9", "staff-A", "staff-K", "nobody"] {
            let kept = patients_lines(who, |each| {
                for (ts, e) in all.clone() {
                    each(ts, e);
                }
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(
                stays(&kept, who, SAME_STAY),
                stays(&all, who, SAME_STAY),
                "{who}"
            );
            if who == "pat-2" {
                assert!(
                    kept.len() < all.len() / 2 + 3,
                    "{} of {}",
                    kept.len(),
                    all.len()
                );
            }
        }
        // (And what it says is what a person would expect: pat-1's two stays.)
        let ex = stays(&all, "pat-1", SAME_STAY);
        let got: Vec<&str> = ex.iter().map(|e| e.meeting.as_str()).collect();
        assert_eq!(got, ["queue → queue-v1", "visit-2"]);
    }

    /// Two clinicians take the first in the queue at once: both takes are recorded, one is
    /// carried out, the other is recorded as not applied. The patient's stay names the visit
    /// they went to, not the one never opened; and the clinician whose take failed is still in
    /// the queue, named in the next patient's stay.
    #[test]
    fn a_take_recorded_but_not_carried_out_moves_nobody() {
        let at = |meeting: &str, mut l: (String, AuditEvent)| {
            l.1.meeting = Some(meeting.into());
            l
        };
        let take = |actor: &str, ts: &str, who: &str, p: &str, to: &str| {
            let mut t = by(actor, line(ts, "admit", who, p));
            t.1.code = Some(format!("{TAKEN_TO}{to}"));
            t
        };
        let mut failed = by("B", line("1T09:10:00.100", "admit_not_applied", "", "p1"));
        failed.1.subject = None;
        failed.1.code = Some("not_waiting".into());
        let events = vec![
            line("1T09:00:00.000", "join", "staff-A", "ca"),
            line("1T09:01:00.000", "join", "staff-B", "cb"),
            line("1T09:05:00.000", "join", "pat-1", "p1"),
            take("A", "1T09:10:00.000", "pat-1", "p1", "queue-v1"),
            take("B", "1T09:10:00.050", "pat-1", "p1", "queue-v9"),
            failed,
            line("1T09:20:00.000", "join", "pat-2", "p2"),
            at("queue-v1", line("1T09:30:00.000", "leave", "pat-1", "p1")),
            at("queue-v1", line("1T09:30:01.000", "leave", "staff-A", "ca")),
            line("1T09:40:00.000", "leave", "pat-2", "p2"),
            line("1T09:41:00.000", "leave", "staff-B", "cb"),
        ];
        let ex = stays(&events, "pat-1", SAME_STAY);
        assert_eq!(ex.len(), 1, "{ex:?}");
        assert_eq!(ex[0].meeting, "queue → queue-v1");
        let ex2 = stays(&events, "pat-2", SAME_STAY);
        let staff2: Vec<&str> = ex2[0].staff.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(staff2, ["SE2321000016-B"], "{ex2:?}");
    }

    /// Two visits of different meetings a minute apart are two stays, each with its own staff
    /// and times; a reconnect to the same one within the gap is one.
    #[test]
    fn different_meetings_are_different_stays_however_close() {
        let elsewhere = |mut l: (String, AuditEvent)| {
            l.1.meeting = Some("visit-2".into());
            l
        };
        let events = vec![
            line("1T09:00:00.000", "join", "staff-A", "ca"),
            line("1T09:01:00.000", "join", "pat-1", "p1"),
            line("1T09:20:00.000", "leave", "pat-1", "p1"),
            line("1T09:21:00.000", "leave", "staff-A", "ca"),
            elsewhere(line("1T09:20:30.000", "join", "staff-C", "cc")),
            elsewhere(line("1T09:21:00.000", "join", "pat-1", "p2")),
            elsewhere(line("1T09:40:00.000", "leave", "pat-1", "p2")),
            elsewhere(line("1T09:40:01.000", "leave", "staff-C", "cc")),
        ];
        let ex = stays(&events, "pat-1", SAME_STAY);
        let got: Vec<(&str, Vec<&str>)> = ex
            .iter()
            .map(|e| {
                (
                    e.meeting.as_str(),
                    e.staff.iter().map(|(h, _)| h.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("queue", vec!["SE2321000016-A"]),
                ("visit-2", vec!["SE2321000016-C"])
            ]
        );
    }

    /// A drop-in queue open under one id on two days: each of the patient's stays names the
    /// staff who were there meanwhile, not those who served others before or after.
    #[test]
    fn each_stay_names_only_the_staff_in_the_meeting_meanwhile() {
        let admit = by("E", line("1T09:10:00.000", "admit", "pat-1", "p1"));
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

    /// A connection the same person's next one replaced ends with `replaced`: the stay ends
    /// with the next connection's `leave`, and staff who join the meeting afterwards are not
    /// in it (left open, the replaced connection ran to the log's end).
    #[test]
    fn a_replaced_connection_ends_where_it_was_replaced() {
        let mut replaced = line("1T10:01:00.000", "replaced", "pat", "p-1");
        replaced.1.code = Some("by p-2".into());
        let events = vec![
            line("1T10:00:00.000", "join", "pat", "p-1"),
            replaced,
            line("1T10:01:00.000", "join", "pat", "p-2"),
            line("1T10:10:00.000", "leave", "pat", "p-2"),
            line("1T15:00:00.000", "join", "staff-Z", "c-9"),
            line("1T15:30:00.000", "leave", "staff-Z", "c-9"),
        ];
        let ex = stays(&events, "pat", SAME_STAY);
        assert_eq!(ex.len(), 1, "{ex:?}");
        assert!(ex[0].staff.is_empty(), "{ex:?}");
        assert_eq!(ex[0].last, "2026-12-01T10:10:00.000Z");
    }
}
