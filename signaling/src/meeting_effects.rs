//! What applying a meeting's rules asks of the world: messages to connections, commands to
//! the SFU, and records for the audit log. The rules (`meeting_room.rs`) only describe them;
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
