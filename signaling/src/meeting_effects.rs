//! What applying a meeting's rules asks of the world: messages to connections, commands to
//! the SFU, records for the audit log, and measurements for the service's histograms. The rules (`meeting_room.rs`) only describe them;
//! `Meetings::deliver` carries them out, under the meeting's lock so every connection sees the
//! meeting's changes in the order they happened.

use crate::audit_log::AuditEvent;
use serde_json::Value;
use sfu_proto::{Command, ParticipantId};

/// What a connection's task is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Text(String),
    /// Send a last `closing` message and close the WebSocket with this code.
    Close {
        code: u16,
        message: Value,
    },
}

#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// To each connection, in order.
    pub messages: Vec<(ParticipantId, Outbound)>,
    pub commands: Vec<Command>,
    /// Written after the effect (what was recorded before it is returned by the plan).
    pub audit: Vec<AuditEvent>,
    pub observations: Vec<Observation>,
}

/// A duration the rules saw pass, for an operator's histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// A person admitted after this long in the waiting room (or a drop-in queue).
    LobbyWait(std::time::Duration),
    /// From joining a visit — or being admitted to it from the waiting room — until media flows.
    JoinToMedia(std::time::Duration),
}

impl Observation {
    /// The histogram's name on `/metrics`.
    pub fn metric(&self) -> &'static str {
        match self {
            Observation::LobbyWait(_) => "signaling_lobby_wait_seconds",
            Observation::JoinToMedia(_) => "signaling_join_to_media_seconds",
        }
    }

    pub fn seconds(&self) -> f64 {
        match self {
            Observation::LobbyWait(d) | Observation::JoinToMedia(d) => d.as_secs_f64(),
        }
    }
}

impl Effects {
    pub fn send(&mut self, to: &ParticipantId, msg: &Value) {
        self.messages
            .push((to.clone(), Outbound::Text(msg.to_string())));
    }

    pub fn close(&mut self, to: &ParticipantId, close: Outbound) {
        self.messages.push((to.clone(), close));
    }

    pub fn command(&mut self, command: Command) {
        self.commands.push(command);
    }

    pub fn record(&mut self, event: AuditEvent) {
        self.audit.push(event);
    }

    pub fn observe(&mut self, observation: Observation) {
        self.observations.push(observation);
    }

    /// The messages one connection gets (for tests of the rules).
    #[cfg(test)]
    pub fn to(&self, id: &ParticipantId) -> Vec<&Outbound> {
        self.messages
            .iter()
            .filter(|(to, _)| to == id)
            .map(|(_, m)| m)
            .collect()
    }
}
