//! Resuming a connection's participant on a new WebSocket (a phone that changed networks: its
//! old socket died with the old address). Each connection holds a secret resume key, told to
//! the client only. When the socket drops without a `leave`, the participant is *parked* for
//! [`RESUME_WINDOW`]: still in the meeting, its SFU media session untouched, messages to it
//! queued. A new WebSocket with a valid token of the same subject and the key takes the
//! participant over — same id, same media session, the queued messages delivered — so the
//! client restarts ICE in place instead of building a new peer connection, and nobody else
//! sees it leave and join. A key is good for one resume; the resumed connection gets a new one.
//! If the old socket is still open (the server has not yet noticed it died), the new one
//! takes over from it.

use crate::message_budget::MessageBudget;
use crate::outbox::OutboxReceiver;
use sfu_proto::ParticipantId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a dropped connection's participant waits for its client to come back.
pub const RESUME_WINDOW: Duration = Duration::from_secs(20);

/// How long a takeover waits for the old connection to let go.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// A participant between two WebSockets.
#[derive(Debug)]
pub struct Parked {
    pub id: ParticipantId,
    /// Messages to the participant, including those queued while it was parked.
    pub outbox: OutboxReceiver,
    /// The SDP budget carries over: a resume is not a way to a fresh one.
    pub sdp_budget: MessageBudget,
}

/// Asks a live connection to stop and hand its participant over.
pub type Takeover = tokio::sync::mpsc::Sender<oneshot::Sender<Parked>>;

#[derive(Debug)]
enum Slot {
    Live(Takeover),
    Parked(Parked),
}

#[derive(Debug)]
struct Entry {
    sub: String,
    meeting: String,
    participant: ParticipantId,
    slot: Slot,
}

impl Entry {
    fn new(sub: &str, meeting: &str, participant: &ParticipantId, slot: Slot) -> Self {
        Self {
            sub: sub.to_owned(),
            meeting: meeting.to_owned(),
            participant: participant.clone(),
            slot,
        }
    }
}

/// A key held now, and whose participant it resumes (what a restart carries over).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldKey {
    pub key: String,
    pub sub: String,
    pub meeting: String,
    pub participant: ParticipantId,
}

/// What [`ResumeSlots::take`] found.
#[derive(Debug)]
pub enum Resumable {
    Parked(Parked),
    /// The old connection (of this participant) is still open: ask it to let go.
    Live(Takeover, ParticipantId),
}

#[derive(Debug, Default)]
pub struct ResumeSlots {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ResumeSlots {
    /// A new unguessable key (128 random bits).
    pub fn new_key() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `sub` in `meeting`, participant `participant`, is live under `key`.
    pub fn live(
        &self,
        key: &str,
        sub: &str,
        meeting: &str,
        participant: &ParticipantId,
        takeover: Takeover,
    ) {
        let entry = Entry::new(sub, meeting, participant, Slot::Live(takeover));
        self.entries().insert(key.to_owned(), entry);
    }

    /// Every key held now, live and parked.
    pub fn held(&self) -> Vec<HeldKey> {
        let mut held: Vec<HeldKey> = self
            .entries()
            .iter()
            .map(|(key, e)| HeldKey {
                key: key.clone(),
                sub: e.sub.clone(),
                meeting: e.meeting.clone(),
                participant: e.participant.clone(),
            })
            .collect();
        held.sort_by(|a, b| a.participant.cmp(&b.participant));
        held
    }

    /// The connection of `sub` in `meeting` under `key` dropped: its participant waits to be
    /// taken.
    pub fn park(&self, key: &str, sub: &str, meeting: &str, parked: Parked) {
        let id = parked.id.clone();
        let entry = Entry::new(sub, meeting, &id, Slot::Parked(parked));
        self.entries().insert(key.to_owned(), entry);
    }

    /// A live connection's key taken for a new connection that never started: the key is
    /// the old connection's again — unless it has parked meanwhile (its own entry stands).
    pub fn live_again(
        &self,
        key: &str,
        sub: &str,
        meeting: &str,
        participant: &ParticipantId,
        takeover: Takeover,
    ) {
        // (A connection that ended for good meanwhile has nobody to hand over.)
        if takeover.is_closed() {
            return;
        }
        let entry = Entry::new(sub, meeting, participant, Slot::Live(takeover));
        self.entries().entry(key.to_owned()).or_insert(entry);
    }

    /// Takes the participant under `key` for a new connection of `sub` to `meeting`; `None`
    /// for an unknown or spent key or another subject's or meeting's (the key is not spent).
    pub fn take(&self, key: &str, sub: &str, meeting: &str) -> Option<Resumable> {
        let mut entries = self.entries();
        let e = entries.get(key)?;
        if e.sub != sub || e.meeting != meeting {
            return None;
        }
        let e = entries.remove(key)?;
        Some(match e.slot {
            Slot::Live(t) => Resumable::Live(t, e.participant),
            Slot::Parked(p) => Resumable::Parked(p),
        })
    }

    /// The participant `key` is held for, if that is a subject other than `sub` (a key
    /// presented with another person's token: someone else's session asked for, and refused).
    pub fn held_by_another(&self, key: &str, sub: &str) -> Option<ParticipantId> {
        self.entries()
            .get(key)
            .filter(|e| e.sub != sub)
            .map(|e| e.participant.clone())
    }

    /// The window ran out: the participant, if nobody took it (it then leaves).
    pub fn expire(&self, key: &str) -> Option<Parked> {
        let mut entries = self.entries();
        if !matches!(
            entries.get(key),
            Some(Entry {
                slot: Slot::Parked(_),
                ..
            })
        ) {
            return None;
        }
        match entries.remove(key)?.slot {
            Slot::Parked(p) => Some(p),
            Slot::Live(_) => None,
        }
    }

    /// The connection under `key` ended for good (a leave, a close by the server).
    pub fn forget(&self, key: &str) {
        self.entries().remove(key);
    }

    /// The service is stopping: the participants parked now (no connection of theirs is open
    /// to write their end), no longer waiting here — their resume windows end with the
    /// process, and write nothing more.
    pub fn take_parked(&self) -> Vec<ParticipantId> {
        let mut entries = self.entries();
        let keys: Vec<String> = entries
            .iter()
            .filter(|(_, e)| matches!(e.slot, Slot::Parked(_)))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter()
            .filter_map(|k| entries.remove(k))
            .map(|e| e.participant)
            .collect()
    }

    /// Participants parked now.
    pub fn parked(&self) -> usize {
        self.entries()
            .values()
            .filter(|e| matches!(e.slot, Slot::Parked(_)))
            .count()
    }

    /// Keys held (live and parked).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(id: &str) -> Parked {
        let (_tx, outbox) = crate::outbox::outbox(1024);
        Parked {
            id: ParticipantId(id.into()),
            outbox,
            sdp_budget: MessageBudget::sdp(),
        }
    }

    #[test]
    fn a_parked_participant_is_taken_once_by_its_own_subject_in_its_meeting() {
        let slots = ResumeSlots::default();
        let (t, _r) = tokio::sync::mpsc::channel(1);
        slots.live("k", "anna", "m1", &ParticipantId::from("p-1"), t);
        assert!(
            slots.expire("k").is_none(),
            "a live connection does not expire"
        );
        slots.park("k", "anna", "m1", parked("p-1"));
        let held: Vec<(String, String)> = slots
            .held()
            .into_iter()
            .map(|h| (h.key, h.participant.0))
            .collect();
        assert_eq!(held, [("k".to_owned(), "p-1".to_owned())]);
        assert!(slots.take("k", "bertil", "m1").is_none(), "another subject");
        assert_eq!(
            slots.held_by_another("k", "bertil"),
            Some(ParticipantId::from("p-1"))
        );
        assert_eq!(slots.held_by_another("k", "anna"), None);
        assert_eq!(slots.held_by_another("x", "bertil"), None, "no such key");
        assert!(slots.take("k", "anna", "m2").is_none(), "another meeting");
        assert!(slots.take("x", "anna", "m1").is_none(), "another key");
        match slots.take("k", "anna", "m1") {
            Some(Resumable::Parked(p)) => assert_eq!(p.id.0, "p-1"),
            other => panic!("{other:?}"),
        }
        assert!(slots.take("k", "anna", "m1").is_none(), "spent");
        assert!(slots.is_empty());
    }

    #[test]
    fn a_live_connection_is_asked_to_let_go_and_an_untaken_one_expires() {
        let slots = ResumeSlots::default();
        let (t, _r) = tokio::sync::mpsc::channel(1);
        slots.live("k", "anna", "m1", &ParticipantId::from("p-1"), t);
        assert!(matches!(
            slots.take("k", "anna", "m1"),
            Some(Resumable::Live(_, id)) if id.0 == "p-1"
        ));
        let (t, _r) = tokio::sync::mpsc::channel(1);
        slots.live("j", "anna", "m1", &ParticipantId::from("p-1"), t);
        slots.park("j", "anna", "m1", parked("p-2"));
        assert_eq!(slots.expire("j").map(|p| p.id.0), Some("p-2".into()));
        assert!(slots.take("j", "anna", "m1").is_none());
        assert_ne!(ResumeSlots::new_key(), ResumeSlots::new_key());
    }

    #[test]
    fn a_live_key_given_back_does_not_undo_a_park_made_meanwhile() {
        let slots = ResumeSlots::default();
        let id = ParticipantId::from("p-1");
        let (t, _r) = tokio::sync::mpsc::channel(1);
        slots.live("k", "anna", "m1", &id, t.clone());
        let Some(Resumable::Live(taken, _)) = slots.take("k", "anna", "m1") else {
            panic!("live");
        };
        // The new connection never started: the key works again.
        slots.live_again("k", "anna", "m1", &id, taken);
        let Some(Resumable::Live(taken, _)) = slots.take("k", "anna", "m1") else {
            panic!("live again");
        };
        // Meanwhile the old connection dropped and parked under its key: that stands.
        slots.park("k", "anna", "m1", parked("p-1"));
        slots.live_again("k", "anna", "m1", &id, taken);
        assert!(matches!(
            slots.take("k", "anna", "m1"),
            Some(Resumable::Parked(p)) if p.id.0 == "p-1"
        ));
    }
}
