//! Commands from signaling to the SFU.

use crate::ids::{ParticipantId, RoomId};
use serde::{Deserialize, Serialize};

/// What a participant may do with media. The SFU enforces it on the packet path: a participant
/// without `publish` has nothing forwarded from it, one without `subscribe` receives nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Permissions {
    pub publish: bool,
    pub subscribe: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Add a participant to a room (created on first use) with the client's SDP offer.
    /// Answered by [`crate::Event::Answer`] or [`crate::Event::CommandFailed`].
    AddParticipant {
        room: RoomId,
        participant: ParticipantId,
        offer_sdp: String,
        permissions: Permissions,
        /// Signaling's number for this media session of the participant (a restart makes a
        /// new one under the same id). [`crate::Event::Connected`] and
        /// [`crate::Event::Disconnected`] carry it back, so a late event about a replaced
        /// session is told apart from one about the current session.
        #[serde(default)]
        session: u32,
    },
    /// The client's answer to an SFU offer ([`crate::Event::Offer`]).
    Answer {
        participant: ParticipantId,
        answer_sdp: String,
    },
    /// The client declines the SFU's outstanding offer (it cannot apply it). The SFU gives the
    /// offer up at once, as after it went unanswered, and reports it with
    /// [`crate::Event::CommandFailed`] (`sfu_offer`): the client's way on is a new media session.
    RejectOffer { participant: ParticipantId },
    /// A client-initiated renegotiation (a new track to publish, e.g. screen share).
    Offer {
        participant: ParticipantId,
        offer_sdp: String,
    },
    /// Change what a participant may do; takes effect on the next packet.
    SetPermissions {
        participant: ParticipantId,
        permissions: Permissions,
    },
    /// Disconnect a participant (leave, removal, device switch).
    RemoveParticipant { participant: ParticipantId },
    /// Disconnect everyone in a room and forget it.
    CloseRoom { room: RoomId },
    /// Ask a subscriber's source for a keyframe (e.g. after the UI re-shows a video).
    RequestKeyframe { participant: ParticipantId },
    /// The highest simulcast layer a subscriber wants of the video it receives on one of its
    /// m-lines (`mid`, as in the SFU's offer), or of all its video now and later (`None`): a
    /// small tile or a data-saving phone asks for less. The SFU may send less still when the
    /// layer is not being published or the subscriber's link loses packets.
    SetPreferredLayer {
        participant: ParticipantId,
        mid: Option<String>,
        layer: VideoLayer,
    },
    /// Report what the SFU knows of a subscriber's link (its client's diagnostics view).
    /// Answered by [`crate::Event::LinkReport`].
    ReportLink { participant: ParticipantId },
}

/// A simulcast layer, named by quality rather than index: publishers send two or three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoLayer {
    Low,
    Medium,
    High,
}

impl VideoLayer {
    /// The highest layer index this allows when a track has `layers` layers (lowest first).
    pub fn max_index(self, layers: usize) -> usize {
        let top = layers.saturating_sub(1);
        match self {
            VideoLayer::Low => 0,
            VideoLayer::Medium => 1.min(top),
            VideoLayer::High => top,
        }
    }
}

impl Command {
    /// The command's name, as in its serialized `cmd` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Command::AddParticipant { .. } => "add_participant",
            Command::Answer { .. } => "answer",
            Command::RejectOffer { .. } => "reject_offer",
            Command::Offer { .. } => "offer",
            Command::SetPermissions { .. } => "set_permissions",
            Command::RemoveParticipant { .. } => "remove_participant",
            Command::CloseRoom { .. } => "close_room",
            Command::RequestKeyframe { .. } => "request_keyframe",
            Command::SetPreferredLayer { .. } => "set_preferred_layer",
            Command::ReportLink { .. } => "report_link",
        }
    }

    /// Whether a client's message caused this command (an SDP offer or answer, a layer or
    /// keyframe request), as opposed to signaling's own decisions (permissions, removals,
    /// closing a room). Clients can send many; the SFU bounds how many wait, and refuses the
    /// rest, while signaling's decisions are never dropped.
    pub fn is_client_request(&self) -> bool {
        matches!(
            self,
            Command::AddParticipant { .. }
                | Command::Answer { .. }
                | Command::RejectOffer { .. }
                | Command::Offer { .. }
                | Command::RequestKeyframe { .. }
                | Command::SetPreferredLayer { .. }
                | Command::ReportLink { .. }
        )
    }

    /// The media session an `add_participant` starts.
    pub fn session(&self) -> Option<u32> {
        match self {
            Command::AddParticipant { session, .. } => Some(*session),
            _ => None,
        }
    }

    /// The participant this command is about, if any (used to route to the owning worker).
    pub fn participant(&self) -> Option<&ParticipantId> {
        match self {
            Command::AddParticipant { participant, .. }
            | Command::Answer { participant, .. }
            | Command::RejectOffer { participant }
            | Command::Offer { participant, .. }
            | Command::SetPermissions { participant, .. }
            | Command::RemoveParticipant { participant }
            | Command::RequestKeyframe { participant }
            | Command::ReportLink { participant }
            | Command::SetPreferredLayer { participant, .. } => Some(participant),
            Command::CloseRoom { .. } => None,
        }
    }
}
