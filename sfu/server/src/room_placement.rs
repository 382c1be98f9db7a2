//! Which worker (or node) owns each room and participant, and routing of commands to it.
//! Shared by the in-process [`crate::SfuNode`] (targets are worker indices) and signaling's
//! gateway to standalone nodes (targets are node links).
//!
//! Placement changes with commands only, in the order they are sent: a participant stays placed
//! until signaling removes it, even after its media ended, so a late event of an old session can
//! never unplace a rejoined one. A refused add is the one exception (nothing was placed).

use sfu_proto::{Command, Event, HeldSession, ParticipantId, RoomId};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

#[derive(Debug)]
pub struct RoomPlacement<T> {
    rooms: HashMap<RoomId, T>,
    /// Each placed participant: its target, room and media session number.
    participants: HashMap<ParticipantId, (T, RoomId, u32)>,
    /// Placed participants whose media session has ended (reported disconnected): still
    /// placed, but no longer held.
    ended: HashSet<ParticipantId>,
}

impl<T> Default for RoomPlacement<T> {
    fn default() -> Self {
        Self {
            rooms: HashMap::new(),
            participants: HashMap::new(),
            ended: HashSet::new(),
        }
    }
}

impl<T: Copy + Eq + Hash> RoomPlacement<T> {
    /// Participants placed on `target`.
    pub fn count(&self, target: T) -> usize {
        self.participants
            .values()
            .filter(|(t, ..)| *t == target)
            .count()
    }

    /// The target that must execute `command`, placing a new room on `least_loaded` (called
    /// with this placement, so the choice can weigh [`Self::count`]). `None` when nothing owns
    /// the command's participant or room (or no target exists).
    pub fn route(
        &mut self,
        command: &Command,
        least_loaded: impl FnOnce(&Self) -> Option<T>,
    ) -> Option<T> {
        match command {
            Command::AddParticipant {
                room,
                participant,
                session,
                ..
            } => {
                let target = match self.rooms.get(room) {
                    Some(&t) => t,
                    None => {
                        let t = least_loaded(self)?;
                        self.rooms.insert(room.clone(), t);
                        t
                    }
                };
                self.participants
                    .insert(participant.clone(), (target, room.clone(), *session));
                self.ended.remove(participant);
                Some(target)
            }
            Command::CloseRoom { room } => {
                let target = self.rooms.remove(room);
                self.participants.retain(|_, (_, r, _)| r != room);
                let participants = &self.participants;
                self.ended.retain(|p| participants.contains_key(p));
                target
            }
            Command::RemoveParticipant { participant } => {
                let target = self.participants.get(participant).map(|(t, ..)| *t);
                self.release(participant);
                target
            }
            other => other
                .participant()
                .and_then(|id| self.participants.get(id).map(|(t, ..)| *t)),
        }
    }

    /// Undoes the placement of an add the SFU refused, and notes a media session that ended.
    pub fn observe(&mut self, event: &Event) {
        match event {
            // Only the session it placed: a refusal of an earlier one, arriving after a later
            // add was routed, must not unplace the session that runs (commands to it would
            // then go nowhere: a removal, a move to the lobby).
            Event::CommandFailed {
                command,
                participant: Some(participant),
                session,
                ..
            } if command == "add_participant"
                && session.is_none_or(|s| {
                    self.participants
                        .get(participant)
                        .is_some_and(|(_, _, placed)| *placed == s)
                }) =>
            {
                self.release(participant)
            }
            Event::Disconnected {
                participant,
                session,
                ..
            } if self
                .participants
                .get(participant)
                .is_some_and(|(_, _, s)| s == session) =>
            {
                self.ended.insert(participant.clone());
            }
            _ => {}
        }
    }

    /// The media sessions placed and not ended, by room and participant.
    pub fn held_sessions(&self) -> Vec<HeldSession> {
        let mut held: Vec<HeldSession> = self
            .participants
            .iter()
            .filter(|(p, _)| !self.ended.contains(*p))
            .map(|(p, (_, room, session))| HeldSession {
                room: room.clone(),
                participant: p.clone(),
                session: *session,
            })
            .collect();
        held.sort_by(|a, b| (&a.room, &a.participant).cmp(&(&b.room, &b.participant)));
        held
    }

    /// Places a session that `target` already runs (a node that kept it through a lost
    /// control link). Refused — `false` — when its room is placed on another target or the
    /// participant is placed already: one meeting is never on two targets.
    pub fn adopt(&mut self, target: T, held: &HeldSession) -> bool {
        if self.participants.contains_key(&held.participant)
            || self.rooms.get(&held.room).is_some_and(|t| *t != target)
        {
            return false;
        }
        self.rooms.insert(held.room.clone(), target);
        self.participants.insert(
            held.participant.clone(),
            (target, held.room.clone(), held.session),
        );
        true
    }

    /// Whether `event` speaks of a participant or room placed on another target than
    /// `target` (one node passing for another). What is placed nowhere here is not: another
    /// signaling replica's meeting, a session being taken over, an end trailing a removal.
    pub fn is_elsewhere(&self, target: T, event: &Event) -> bool {
        let participant = |p: &ParticipantId| self.target_of(p).is_some_and(|t| t != target);
        let room = |r: &RoomId| self.rooms.get(r).is_some_and(|t| *t != target);
        match event {
            Event::Answer { participant: p, .. }
            | Event::Offer { participant: p, .. }
            | Event::Connected { participant: p, .. }
            | Event::VideoPaused { participant: p, .. }
            | Event::LinkReport { participant: p, .. }
            | Event::LayersUnused { participant: p, .. }
            | Event::Disconnected { participant: p, .. }
            | Event::CommandFailed {
                participant: Some(p),
                ..
            } => participant(p),
            Event::TrackPublished { room: r, track }
            | Event::TrackUnpublished { room: r, track } => {
                room(r) || participant(&track.publisher)
            }
            Event::ActiveSpeaker {
                room: r,
                participant: p,
            } => room(r) || participant(p),
            Event::CommandFailed {
                participant: None, ..
            }
            | Event::Load(_) => false,
        }
    }

    /// Where `participant` is placed.
    pub fn target_of(&self, participant: &ParticipantId) -> Option<T> {
        self.participants.get(participant).map(|(t, ..)| *t)
    }

    /// Places `room` on `target` before anything of it is (its carried sessions run there).
    pub fn reserve_room(&mut self, room: &RoomId, target: T) {
        self.rooms.entry(room.clone()).or_insert(target);
    }

    /// Whether `participant` is placed with media session `session`.
    pub fn holds(&self, participant: &ParticipantId, session: u32) -> bool {
        self.participants
            .get(participant)
            .is_some_and(|(_, _, s)| *s == session)
    }

    /// Forgets a participant; an emptied room is forgotten too, to be placed afresh.
    pub fn release(&mut self, participant: &ParticipantId) {
        self.ended.remove(participant);
        if let Some((_, room, _)) = self.participants.remove(participant)
            && !self.participants.values().any(|(_, r, _)| *r == room)
        {
            self.rooms.remove(&room);
        }
    }

    /// Forgets everything on `target` (a node that went away); returns its participants with
    /// their media session numbers.
    pub fn drop_target(&mut self, target: T) -> Vec<(ParticipantId, u32)> {
        self.rooms.retain(|_, t| *t != target);
        let gone: Vec<(ParticipantId, u32)> = self
            .participants
            .iter()
            .filter(|(_, (t, ..))| *t == target)
            .map(|(id, (_, _, session))| (id.clone(), *session))
            .collect();
        for (id, _) in &gone {
            self.participants.remove(id);
            self.ended.remove(id);
        }
        gone
    }

    /// Forgets every room and participant; returns the rooms with their targets.
    pub fn drain_rooms(&mut self) -> Vec<(RoomId, T)> {
        self.participants.clear();
        self.ended.clear();
        self.rooms.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfu_proto::Permissions;

    fn add(room: &str, p: &str) -> Command {
        Command::AddParticipant {
            room: RoomId::from(room),
            participant: ParticipantId::from(p),
            offer_sdp: String::new(),
            permissions: Permissions::default(),
            session: 1,
        }
    }

    /// A refused add unplaces its own session only: the refusal of an earlier session that
    /// arrives after a later add was routed leaves the later one placed, so a removal still
    /// reaches it.
    #[test]
    fn a_late_refusal_of_an_earlier_session_leaves_the_later_one_placed() {
        let mut p = RoomPlacement::<usize>::default();
        let least = |_: &RoomPlacement<usize>| Some(0);
        let refused = |session| Event::CommandFailed {
            command: "add_participant".into(),
            participant: Some(ParticipantId::from("a")),
            error: "too many m-lines".into(),
            session: Some(session),
        };
        let with_session = |session| match add("r", "a") {
            Command::AddParticipant {
                room,
                participant,
                offer_sdp,
                permissions,
                ..
            } => Command::AddParticipant {
                room,
                participant,
                offer_sdp,
                permissions,
                session,
            },
            _ => unreachable!(),
        };
        p.route(&with_session(1), least);
        p.route(&with_session(2), least);
        p.observe(&refused(1));
        assert_eq!(p.target_of(&ParticipantId::from("a")), Some(0));
        let rm = Command::RemoveParticipant {
            participant: ParticipantId::from("a"),
        };
        assert_eq!(
            p.route(&rm, least),
            Some(0),
            "the removal reaches session 2"
        );
        p.route(&with_session(3), least);
        p.observe(&refused(3));
        assert_eq!(p.target_of(&ParticipantId::from("a")), None);
    }

    #[test]
    fn a_target_does_not_speak_for_what_is_placed_on_another() {
        let mut p = RoomPlacement::<usize>::default();
        p.route(&add("r1", "a"), |_| Some(0));
        p.route(&add("r2", "b"), |_| Some(1));
        let offer = |who: &str| Event::Offer {
            participant: ParticipantId::from(who),
            offer_sdp: String::new(),
        };
        assert!(!p.is_elsewhere(0, &offer("a")));
        assert!(p.is_elsewhere(1, &offer("a")), "another node's participant");
        // Placed nowhere here (another replica's meeting, a takeover under way): passed on.
        assert!(!p.is_elsewhere(0, &offer("nobody")));
        let gone = Event::Disconnected {
            participant: ParticipantId::from("a"),
            reason: sfu_proto::DisconnectReason::ConsentTimeout,
            session: 1,
        };
        assert!(!p.is_elsewhere(0, &gone) && p.is_elsewhere(1, &gone));
        p.route(
            &Command::RemoveParticipant {
                participant: ParticipantId::from("a"),
            },
            |_| None,
        );
        assert!(!p.is_elsewhere(0, &gone), "an end may trail the removal");
        let speaker = |room: &str, who: &str| Event::ActiveSpeaker {
            room: RoomId::from(room),
            participant: ParticipantId::from(who),
        };
        assert!(!p.is_elsewhere(1, &speaker("r2", "b")));
        assert!(
            p.is_elsewhere(0, &speaker("r2", "b")),
            "another node's room"
        );
    }

    #[test]
    fn rooms_stay_on_one_target_and_empty_rooms_are_placed_afresh() {
        let mut p = RoomPlacement::<usize>::default();
        let least = |p: &RoomPlacement<usize>| (0..2).min_by_key(|t| p.count(*t));
        assert_eq!(p.route(&add("r1", "a"), least), Some(0));
        assert_eq!(
            p.route(&add("r2", "b"), least),
            Some(1),
            "new room to the emptier target"
        );
        assert_eq!(
            p.route(&add("r1", "c"), least),
            Some(0),
            "same room, same target"
        );
        let rm = Command::RemoveParticipant {
            participant: ParticipantId::from("a"),
        };
        assert_eq!(p.route(&rm, least), Some(0));
        assert_eq!(p.count(0), 1);
        p.observe(&Event::CommandFailed {
            command: "add_participant".into(),
            participant: Some(ParticipantId::from("c")),
            error: "refused".into(),
            session: None,
        });
        assert_eq!(p.count(0), 0);
        // r1 is empty now: its next participant goes wherever is least loaded.
        assert_eq!(p.route(&add("r1", "d"), least), Some(0));
        assert_eq!(p.drop_target(1), vec![(ParticipantId::from("b"), 1)]);
        let answer = Command::Answer {
            participant: ParticipantId::from("b"),
            answer_sdp: String::new(),
        };
        assert_eq!(p.route(&answer, least), None);
    }

    /// What a node reports it still runs is what is placed and not ended; a session taken over
    /// from a node joins its room there, never a room placed on another target.
    #[test]
    fn held_sessions_leave_out_ended_ones_and_adoption_keeps_a_room_on_one_target() {
        let mut node = RoomPlacement::<usize>::default();
        let least = |_: &RoomPlacement<usize>| Some(0);
        node.route(&add("r1", "a"), least);
        node.route(&add("r1", "b"), least);
        node.route(&add("r2", "c"), least);
        // An ended session of another number is news of an old session: ignored.
        node.observe(&Event::Disconnected {
            participant: ParticipantId::from("a"),
            reason: sfu_proto::DisconnectReason::ConsentTimeout,
            session: 7,
        });
        node.observe(&Event::Disconnected {
            participant: ParticipantId::from("b"),
            reason: sfu_proto::DisconnectReason::ConsentTimeout,
            session: 1,
        });
        let held = node.held_sessions();
        let names: Vec<&str> = held.iter().map(|h| h.participant.0.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        // A new session of the ended participant is held again.
        node.route(&add("r1", "b"), least);
        assert_eq!(node.held_sessions().len(), 3);

        let mut signaling = RoomPlacement::<u64>::default();
        let elsewhere = |_: &RoomPlacement<u64>| Some(9);
        signaling.route(&add("r2", "x"), elsewhere);
        assert!(
            signaling.adopt(4, &held[0]),
            "r1 is free: adopted on node 4"
        );
        assert!(signaling.holds(&ParticipantId::from("a"), 1));
        assert!(
            !signaling.adopt(4, &held[1]),
            "r2 is placed on node 9 already"
        );
        assert!(!signaling.adopt(5, &held[0]), "a is placed already");
        assert_eq!(
            signaling.route(&add("r1", "z"), elsewhere),
            Some(4),
            "a newcomer joins the adopted room's node"
        );
    }
}
