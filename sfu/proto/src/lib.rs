//! The control protocol between the signaling service and SFU workers/nodes.
//!
//! Commands flow from signaling to the SFU, events flow back. The same serde types travel
//! in-process (single-node mode) and over QUIC (standalone `sfu` nodes), so the two
//! deployments cannot drift apart.

mod command;
mod event;
mod held_session;
mod ids;

pub use command::{Command, Permissions, VideoLayer};
pub use event::{
    DisconnectReason, Event, LinkReport, LoadReport, MediaKind, TrackInfo, VideoReport,
};
pub use held_session::HeldSession;
pub use ids::{ParticipantId, RoomId, TrackId};

/// A client offer refused because the SFU's own offer to that client is out (the two
/// crossed): the client answers the SFU's offer first, then offers again. Signaling tells the
/// client `offer_crossed`, not an error.
pub const OFFER_CROSSED: &str = "an SFU offer is outstanding; answer it first";

/// A client's `reject_offer` with no SFU offer out to it. Signaling tells the client
/// `no_offer_pending`.
pub const NO_OFFER_OUTSTANDING: &str = "no offer is outstanding";

/// A command refused at once because the worker holds too many waiting requests. Signaling
/// tells the client `sfu_refused`: send it again a moment later.
pub const BUSY: &str = "the SFU is busy; try again in a moment";

/// Version of the control protocol; a node with another version is refused at connect.
pub const PROTOCOL_VERSION: u32 = 2;

/// One message on a control connection, in either direction.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// First message of an SFU node after it dialled signaling.
    Hello {
        protocol_version: u32,
        node_id: String,
        /// UDP candidates of the node's workers, for operators' information.
        workers: u32,
        /// The media sessions the node runs now: none on a first link, those it kept through
        /// a lost link otherwise. Signaling takes over the ones it expects and ends the rest.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sessions: Vec<HeldSession>,
    },
    Command(Command),
    Event(Event),
    /// Signaling → node: which media sessions of `room` the node runs (a signaling replica
    /// taking a meeting over from another asks every node). Answered on the same link.
    ReportSessions {
        room: RoomId,
    },
    /// Node → signaling: the answer to [`ControlMessage::ReportSessions`].
    RoomSessions {
        room: RoomId,
        sessions: Vec<HeldSession>,
    },
}

/// Errors decoding a control message from its wire form. Only where and what kind of error:
/// serde_json's own message quotes the value it could not take, which may be an SDP.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "control message is not valid JSON for this protocol version ({kind} error at line {line}, column {column})"
    )]
    Json {
        kind: &'static str,
        line: usize,
        column: usize,
    },
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        DecodeError::Json {
            kind: match e.classify() {
                Category::Io => "I/O",
                Category::Syntax => "syntax",
                Category::Data => "data",
                Category::Eof => "end-of-input",
            },
            line: e.line(),
            column: e.column(),
        }
    }
}

impl ControlMessage {
    /// The message's kind, for logs (the message itself may carry SDP).
    pub fn kind(&self) -> &'static str {
        match self {
            ControlMessage::Hello { .. } => "hello",
            ControlMessage::Command(_) => "command",
            ControlMessage::Event(_) => "event",
            ControlMessage::ReportSessions { .. } => "report_sessions",
            ControlMessage::RoomSessions { .. } => "room_sessions",
        }
    }

    /// JSON encoding used on the QUIC control stream (one message per length-prefixed frame).
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these plain data types cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_through_the_wire_form() {
        let msg = ControlMessage::Command(Command::AddParticipant {
            room: RoomId::from("visit-1"),
            participant: ParticipantId::from("p-1"),
            offer_sdp: "v=0\r\n".into(),
            session: 1,
            permissions: Permissions {
                publish: true,
                subscribe: false,
            },
        });
        let back = ControlMessage::decode(&msg.encode()).expect("decodes");
        assert_eq!(msg, back);
    }

    #[test]
    fn a_decode_error_says_where_not_what_so_no_sdp_reaches_a_log() {
        let msg = ControlMessage::Command(Command::AddParticipant {
            room: RoomId::from("visit-1"),
            participant: ParticipantId::from("p-1"),
            offer_sdp: "v=0\r\n".into(),
            session: 1,
            permissions: Permissions::default(),
        });
        let wire = String::from_utf8(msg.encode()).unwrap();
        assert!(wire.contains("\"session\":1"), "{wire}");
        // A field of another version's shape, holding what an SDP holds.
        let other = wire.replace("\"session\":1", "\"session\":\"a=ice-pwd:s3cr3t\"");
        let e = ControlMessage::decode(other.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("data error"), "{e}");
    }

    #[test]
    fn garbage_is_refused_with_an_error() {
        assert!(ControlMessage::decode(b"{\"type\":\"nope\"}").is_err());
        assert!(ControlMessage::decode(b"\xff\x00").is_err());
    }
}
