//! Taking over the media sessions an SFU node kept through a restart of this service.
//!
//! When signaling stops it writes each participant's media session to the meeting store
//! ([`crate::carried_session`]); started again, it *expects* those sessions. A node that
//! comes back lists the sessions it kept (`hello.sessions`); an expected one is adopted, one
//! nobody expects is ended at once. A participant whose client came back *claims* its
//! session. What is left after [`TAKEOVER_WINDOW`] goes: an adopted session nobody claimed is
//! removed from its node, and an expected session no node reported is declared lost, so its
//! client (told `media_disconnected`) starts a new one. An expected session its own node did
//! not list when it linked is lost at once.
//!
//! Pure bookkeeping: the time is given, nothing is sent from here.

use sfu_proto::{Command, HeldSession, ParticipantId, RoomId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long expected sessions wait for their node, and adopted ones for their client: a
/// restart, the nodes' redial and the clients' reconnect backoff fit well within it.
pub const TAKEOVER_WINDOW: Duration = Duration::from_secs(30);

/// A media session the meeting store carried over from the previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedMedia {
    pub participant: ParticipantId,
    pub session: u32,
    /// The node it ran on, when known.
    pub node: Option<String>,
    pub room: RoomId,
}

#[derive(Debug)]
struct Expected {
    session: u32,
    /// The node it ran on, when known.
    node: Option<String>,
    room: RoomId,
    until: Instant,
    claimed: bool,
    /// The latest permissions signaling set meanwhile (the node gets them at adoption).
    permissions: Option<Command>,
}

/// What to do with a session a node reported.
#[derive(Debug, PartialEq)]
pub enum Adoption {
    /// Expected: place it on the node; send it these permissions set meanwhile, if any.
    Adopt(Option<Command>),
    /// Nobody expects it: the node ends it.
    End,
}

/// What is due at a tick.
#[derive(Debug, Default, PartialEq)]
pub struct Due {
    /// Expected sessions no node reported: lost (participant, session).
    pub lost: Vec<(ParticipantId, u32)>,
    /// Adopted sessions nobody claimed: to be removed.
    pub unclaimed: Vec<ParticipantId>,
}

#[derive(Debug, Default)]
pub struct SessionTakeover {
    expected: HashMap<ParticipantId, Expected>,
    /// Adopted, not claimed yet, with the deadline.
    unclaimed: HashMap<ParticipantId, (u32, Instant)>,
}

impl SessionTakeover {
    /// A session the store carried over, expected from a node until `now` + the window.
    pub fn expect(&mut self, carried: CarriedMedia, now: Instant) {
        self.expected.insert(
            carried.participant,
            Expected {
                session: carried.session,
                node: carried.node,
                room: carried.room,
                until: now + TAKEOVER_WINDOW,
                claimed: false,
                permissions: None,
            },
        );
    }

    /// Signaling removed the participant, or closed its room, before any node reported its
    /// session: nothing is expected of it any more, so the node's report ends it.
    pub fn withdraw(&mut self, command: &Command) -> bool {
        match command {
            Command::RemoveParticipant { participant } => {
                self.expected.remove(participant).is_some()
            }
            Command::CloseRoom { room } => {
                let before = self.expected.len();
                self.expected.retain(|_, e| e.room != *room);
                before != self.expected.len()
            }
            _ => false,
        }
    }

    /// A node reports `held`.
    pub fn reported(&mut self, held: &HeldSession, now: Instant) -> Adoption {
        match self.expected.get(&held.participant) {
            Some(e) if e.session == held.session => {}
            _ => return Adoption::End,
        }
        let Some(e) = self.expected.remove(&held.participant) else {
            return Adoption::End;
        };
        if !e.claimed {
            self.unclaimed.insert(
                held.participant.clone(),
                (held.session, now + TAKEOVER_WINDOW),
            );
        }
        Adoption::Adopt(e.permissions)
    }

    /// The node `room`'s carried sessions ran on, while any is still expected: where the room
    /// must go again (a newcomer placed elsewhere first would end them all).
    pub fn expected_node(&self, room: &RoomId) -> Option<&str> {
        self.expected
            .values()
            .filter(|e| e.room == *room)
            .find_map(|e| e.node.as_deref())
    }

    /// Node `node` listed its sessions — all of them when it linked (`room` none), or those
    /// of `room` when asked at a meeting's takeover — each passed to [`Self::reported`]
    /// first: the expected sessions it ran (of that room) and did not list are lost
    /// (participant, session).
    pub fn linked(&mut self, node: &str, room: Option<&RoomId>) -> Vec<(ParticipantId, u32)> {
        let mut lost = Vec::new();
        self.expected.retain(|p, e| {
            let keep = e.node.as_deref() != Some(node) || room.is_some_and(|r| *r != e.room);
            if !keep {
                lost.push((p.clone(), e.session));
            }
            keep
        });
        lost.sort();
        lost
    }

    /// An adopted session could not be placed after all (its room is on another node): it
    /// is neither expected nor waiting for a claim any more.
    pub fn forget(&mut self, participant: &ParticipantId) {
        self.expected.remove(participant);
        self.unclaimed.remove(participant);
    }

    /// The participant's client is back and takes session `session` over. `true` when the
    /// session is expected or adopted (its media goes on); `adopted` says whether a node
    /// holds it now.
    pub fn claim(&mut self, participant: &ParticipantId, session: u32, adopted: bool) -> bool {
        if let Some(e) = self.expected.get_mut(participant)
            && e.session == session
        {
            e.claimed = true;
            return true;
        }
        match self.unclaimed.get(participant) {
            Some((s, _)) if *s == session => {
                self.unclaimed.remove(participant);
                true
            }
            _ => adopted,
        }
    }

    /// Keeps the permissions set for an expected session no node holds yet. `false` when the
    /// participant's session is not expected.
    pub fn hold_permissions(&mut self, command: &Command) -> bool {
        let Command::SetPermissions { participant, .. } = command else {
            return false;
        };
        match self.expected.get_mut(participant) {
            Some(e) => {
                e.permissions = Some(command.clone());
                true
            }
            None => false,
        }
    }

    /// What the window has run out for.
    pub fn due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        self.expected.retain(|p, e| {
            let keep = now < e.until;
            if !keep {
                due.lost.push((p.clone(), e.session));
            }
            keep
        });
        self.unclaimed.retain(|p, (_, until)| {
            let keep = now < *until;
            if !keep {
                due.unclaimed.push(p.clone());
            }
            keep
        });
        due.lost.sort();
        due.unclaimed.sort();
        due
    }

    pub fn is_idle(&self) -> bool {
        self.expected.is_empty() && self.unclaimed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfu_proto::{Permissions, RoomId};

    fn carried(participant: ParticipantId, session: u32, node: Option<String>) -> CarriedMedia {
        CarriedMedia {
            participant,
            session,
            node,
            room: RoomId::from("visit-1"),
        }
    }

    fn held(p: &str, session: u32) -> HeldSession {
        HeldSession {
            room: RoomId::from("visit-1"),
            participant: ParticipantId::from(p),
            session,
        }
    }

    #[test]
    fn expected_sessions_are_adopted_and_others_ended() {
        let t0 = Instant::now();
        let mut t = SessionTakeover::default();
        t.expect(carried(ParticipantId::from("a"), 3, None), t0);
        assert_eq!(
            t.reported(&held("a", 2), t0),
            Adoption::End,
            "another session"
        );
        assert_eq!(t.reported(&held("b", 1), t0), Adoption::End, "not expected");
        assert_eq!(t.reported(&held("a", 3), t0), Adoption::Adopt(None));
        assert_eq!(
            t.reported(&held("a", 3), t0),
            Adoption::End,
            "adopted once only"
        );
    }

    #[test]
    fn a_claim_before_or_after_adoption_keeps_the_session_and_unclaimed_ones_go() {
        let t0 = Instant::now();
        let mut t = SessionTakeover::default();
        for p in ["early", "late", "never"] {
            t.expect(carried(ParticipantId::from(p), 1, None), t0);
        }
        assert!(t.claim(&ParticipantId::from("early"), 1, false));
        assert!(
            !t.claim(&ParticipantId::from("late"), 2, false),
            "another session number is not this one"
        );
        for p in ["early", "late", "never"] {
            assert!(matches!(t.reported(&held(p, 1), t0), Adoption::Adopt(_)));
        }
        assert!(t.claim(&ParticipantId::from("late"), 1, true));
        let due = t.due(t0 + TAKEOVER_WINDOW - Duration::from_millis(1));
        assert_eq!(due, Due::default(), "nothing before the window ends");
        let due = t.due(t0 + TAKEOVER_WINDOW);
        assert_eq!(due.unclaimed, vec![ParticipantId::from("never")]);
        assert!(due.lost.is_empty());
        assert!(t.is_idle());
    }

    #[test]
    fn a_session_no_node_reports_is_lost_and_permissions_set_meanwhile_reach_the_node() {
        let t0 = Instant::now();
        let mut t = SessionTakeover::default();
        t.expect(carried(ParticipantId::from("gone"), 4, None), t0);
        t.expect(carried(ParticipantId::from("back"), 2, None), t0);
        assert!(t.claim(&ParticipantId::from("gone"), 4, false));
        let to_lobby = Command::SetPermissions {
            participant: ParticipantId::from("back"),
            permissions: Permissions::default(),
        };
        assert!(t.hold_permissions(&to_lobby));
        assert!(!t.hold_permissions(&Command::SetPermissions {
            participant: ParticipantId::from("stranger"),
            permissions: Permissions::default(),
        }));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            t.reported(&held("back", 2), later),
            Adoption::Adopt(Some(to_lobby))
        );
        let due = t.due(t0 + TAKEOVER_WINDOW);
        assert_eq!(due.lost, vec![(ParticipantId::from("gone"), 4)]);
        assert!(
            due.unclaimed.is_empty(),
            "back's window runs from its adoption"
        );
        let due = t.due(later + TAKEOVER_WINDOW);
        assert_eq!(due.unclaimed, vec![ParticipantId::from("back")]);
    }

    #[test]
    fn a_node_that_links_without_a_session_it_ran_has_lost_it() {
        let t0 = Instant::now();
        let mut t = SessionTakeover::default();
        t.expect(
            carried(ParticipantId::from("a"), 1, Some("sfu-1".into())),
            t0,
        );
        t.expect(
            carried(ParticipantId::from("b"), 1, Some("sfu-1".into())),
            t0,
        );
        t.expect(
            carried(ParticipantId::from("c"), 1, Some("sfu-2".into())),
            t0,
        );
        assert!(matches!(t.reported(&held("a", 1), t0), Adoption::Adopt(_)));
        assert!(
            t.linked("sfu-1", Some(&RoomId::from("visit-2"))).is_empty(),
            "a list of another room's sessions says nothing of visit-1's"
        );
        assert_eq!(t.linked("sfu-1", None), vec![(ParticipantId::from("b"), 1)]);
        assert!(t.linked("sfu-1", None).is_empty(), "told once");
        assert_eq!(
            t.due(t0 + TAKEOVER_WINDOW).lost,
            vec![(ParticipantId::from("c"), 1)],
            "sfu-2 never linked"
        );
    }

    #[test]
    fn a_participant_removed_before_its_node_reports_has_its_session_ended() {
        let t0 = Instant::now();
        let mut t = SessionTakeover::default();
        t.expect(carried(ParticipantId::from("left"), 1, None), t0);
        t.expect(carried(ParticipantId::from("closed"), 1, None), t0);
        assert!(t.claim(&ParticipantId::from("left"), 1, false));
        assert!(t.withdraw(&Command::RemoveParticipant {
            participant: ParticipantId::from("left"),
        }));
        assert!(t.withdraw(&Command::CloseRoom {
            room: RoomId::from("visit-1"),
        }));
        assert_eq!(t.reported(&held("left", 1), t0), Adoption::End);
        assert_eq!(t.reported(&held("closed", 1), t0), Adoption::End);
        assert!(t.is_idle());
    }

    #[test]
    fn a_room_with_sessions_still_expected_is_held_for_their_node() {
        let t0 = Instant::now();
        let mut t = SessionTakeover::default();
        let room = RoomId::from("visit-1");
        assert_eq!(t.expected_node(&room), None);
        t.expect(
            carried(ParticipantId::from("a"), 1, Some("sfu-2".into())),
            t0,
        );
        assert_eq!(t.expected_node(&room), Some("sfu-2"));
        assert_eq!(t.expected_node(&RoomId::from("visit-2")), None);
        assert!(matches!(t.reported(&held("a", 1), t0), Adoption::Adopt(_)));
        assert_eq!(
            t.expected_node(&room),
            None,
            "adopted: placed there already"
        );
    }
}
