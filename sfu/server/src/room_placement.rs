//! Which worker (or node) owns each room and participant, and routing of commands to it.
//! Shared by the in-process [`crate::SfuNode`] (targets are worker indices) and signaling's
//! gateway to standalone nodes (targets are node links).
//!
//! Placement changes with commands only, in the order they are sent: a participant stays placed
//! until signaling removes it, even after its media ended, so a late event of an old session can
//! never unplace a rejoined one. A refused add is the one exception (nothing was placed).

use sfu_proto::{Command, Event, ParticipantId, RoomId};
use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub struct RoomPlacement<T> {
    rooms: HashMap<RoomId, T>,
    /// Each placed participant: its target, room and media session number.
    participants: HashMap<ParticipantId, (T, RoomId, u32)>,
}

impl<T> Default for RoomPlacement<T> {
    fn default() -> Self {
        Self {
            rooms: HashMap::new(),
            participants: HashMap::new(),
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
                Some(target)
            }
            Command::CloseRoom { room } => {
                let target = self.rooms.remove(room);
                self.participants.retain(|_, (_, r, _)| r != room);
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

    /// Undoes the placement of an add the SFU refused.
    pub fn observe(&mut self, event: &Event) {
        if let Event::CommandFailed {
            command,
            participant: Some(participant),
            ..
        } = event
            && command == "add_participant"
        {
            self.release(participant);
        }
    }

    /// Forgets a participant; an emptied room is forgotten too, to be placed afresh.
    pub fn release(&mut self, participant: &ParticipantId) {
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
        }
        gone
    }

    /// Forgets every room and participant; returns the rooms with their targets.
    pub fn drain_rooms(&mut self) -> Vec<(RoomId, T)> {
        self.participants.clear();
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
}
