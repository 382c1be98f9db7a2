//! Who is connected to which meeting, and delivery of SFU events to their WebSockets.

use serde_json::json;
use sfu_proto::{DisconnectReason, Event, ParticipantId};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone)]
pub struct Member {
    pub meeting: String,
    pub name: String,
    pub role: String,
    pub tx: UnboundedSender<String>,
}

/// Connections by participant. The lock is held only to copy out a sender or a member list,
/// never across an await or a send, so a busy meeting cannot stall a join.
#[derive(Debug, Default)]
pub struct Hub {
    members: Mutex<HashMap<ParticipantId, Member>>,
}

impl Hub {
    pub fn join(&self, id: ParticipantId, member: Member) -> Vec<(ParticipantId, Member)> {
        let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let others = m
            .iter()
            .filter(|(_, o)| o.meeting == member.meeting)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.insert(id, member);
        others
    }

    pub fn leave(&self, id: &ParticipantId) -> Option<Member> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    pub fn get(&self, id: &ParticipantId) -> Option<Member> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub fn in_meeting(&self, meeting: &str) -> Vec<(ParticipantId, Member)> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, m)| m.meeting == meeting)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn send_to(&self, id: &ParticipantId, msg: &serde_json::Value) {
        if let Some(m) = self.get(id) {
            let _ = m.tx.send(msg.to_string());
        }
    }

    pub fn broadcast(
        &self,
        meeting: &str,
        except: Option<&ParticipantId>,
        msg: &serde_json::Value,
    ) {
        let text = msg.to_string();
        for (id, m) in self.in_meeting(meeting) {
            if Some(&id) != except {
                let _ = m.tx.send(text.clone());
            }
        }
    }

    /// Turns an SFU event into client messages.
    pub fn deliver(&self, event: Event) {
        match event {
            Event::Answer {
                participant,
                answer_sdp,
            } => self.send_to(&participant, &json!({"type": "answer", "sdp": answer_sdp})),
            Event::Offer {
                participant,
                offer_sdp,
            } => self.send_to(&participant, &json!({"type": "offer", "sdp": offer_sdp})),
            Event::Connected { participant } => {
                self.send_to(&participant, &json!({"type": "media_connected"}))
            }
            Event::TrackPublished { room, track } => self.broadcast(
                room.as_str(),
                None,
                &json!({"type": "track_published", "publisher": track.publisher, "kind": track.kind, "track": track.id}),
            ),
            Event::TrackUnpublished { room, track } => self.broadcast(
                room.as_str(),
                None,
                &json!({"type": "track_unpublished", "publisher": track.publisher, "track": track.id}),
            ),
            Event::ActiveSpeaker { room, participant } => self.broadcast(
                room.as_str(),
                None,
                &json!({"type": "active_speaker", "participant": participant}),
            ),
            // Only a broken media path is news to the client (it reconnects); a removal was
            // asked for, and its reason travels on its own path.
            Event::Disconnected {
                participant,
                reason: reason @ (DisconnectReason::ConsentTimeout | DisconnectReason::TransportClosed),
            } => self.send_to(&participant, &json!({"type": "media_disconnected", "reason": reason})),
            Event::Disconnected { .. } => {}
            Event::CommandFailed {
                participant, error, ..
            } => {
                if let Some(p) = participant {
                    self.send_to(&p, &json!({"type": "error", "code": "sfu_refused", "message": error}));
                }
            }
            Event::Load(_) => {}
        }
    }
}
