//! Events from the SFU to signaling.

use crate::ids::{ParticipantId, RoomId, TrackId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: MediaKind,
    pub publisher: ParticipantId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// ICE consent freshness ran out: the browser vanished.
    ConsentTimeout,
    /// DTLS failed or the peer closed it.
    TransportClosed,
    /// Signaling removed the participant.
    Removed,
    /// The room was closed.
    RoomClosed,
}

/// Load of one SFU node, reported periodically so signaling can place rooms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub node_id: String,
    pub rooms: u32,
    pub participants: u32,
    pub packets_in_per_s: u64,
    pub packets_out_per_s: u64,
    pub dropped_per_s: u64,
    /// The node is stopping (SIGTERM): it keeps serving its rooms until they are empty, and
    /// takes no new ones.
    #[serde(default)]
    pub draining: bool,
    /// The node process's CPU, % of one core (all its threads), over the same window as the
    /// rates: the node's most recent, at least half a report interval long.
    #[serde(default)]
    pub cpu_percent: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The SFU's answer to the offer of [`crate::Command::AddParticipant`] or
    /// [`crate::Command::Offer`].
    Answer {
        participant: ParticipantId,
        answer_sdp: String,
    },
    /// An SFU-initiated renegotiation offer (tracks to receive changed).
    Offer {
        participant: ParticipantId,
        offer_sdp: String,
    },
    /// ICE and DTLS are up; media can flow.
    Connected {
        participant: ParticipantId,
        /// The media session ([`crate::Command::AddParticipant`]'s `session`).
        #[serde(default)]
        session: u32,
    },
    TrackPublished {
        room: RoomId,
        track: TrackInfo,
    },
    TrackUnpublished {
        room: RoomId,
        track: TrackInfo,
    },
    /// A subscriber's bandwidth estimate no longer carries a video track it receives (even
    /// its lowest layer): the SFU stopped sending it (`paused`), or sends it again.
    VideoPaused {
        /// The subscriber.
        participant: ParticipantId,
        track: TrackInfo,
        paused: bool,
    },
    /// What the SFU knows of a subscriber's link, asked for by [`crate::Command::ReportLink`].
    LinkReport {
        participant: ParticipantId,
        report: LinkReport,
    },
    /// Dynacast: the simulcast layers (by RID) of a publisher's track that no subscriber needs
    /// now — the publisher may stop encoding them (its uplink, its battery) — given in full at
    /// each change; empty: encode every layer again.
    LayersUnused {
        /// The publisher.
        participant: ParticipantId,
        /// The track's media line (`a=mid`) in the publisher's session.
        mid: String,
        rids: Vec<String>,
    },
    /// The loudest participant of a room changed (RFC 6464 audio levels).
    ActiveSpeaker {
        room: RoomId,
        participant: ParticipantId,
    },
    Disconnected {
        participant: ParticipantId,
        reason: DisconnectReason,
        /// The media session that ended ([`crate::Command::AddParticipant`]'s `session`).
        #[serde(default)]
        session: u32,
    },
    CommandFailed {
        /// The command's name (`add_participant`, `answer`, …).
        #[serde(default)]
        command: String,
        participant: Option<ParticipantId>,
        error: String,
        /// A refused `add_participant`'s media session ([`crate::Command::AddParticipant`]'s
        /// `session`): a late refusal of an earlier session must not undo a later one that
        /// runs. `None` for other commands (and from nodes before 2026-12-07).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u32>,
    },
    Load(LoadReport),
}

impl Event {
    /// `command` failed with `error`.
    pub fn command_failed(command: &crate::Command, error: impl Into<String>) -> Self {
        Event::CommandFailed {
            command: command.name().to_owned(),
            participant: command.participant().cloned(),
            error: error.into(),
            session: command.session(),
        }
    }

    /// The event's name on the wire, for logs (the event itself may carry SDP).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Answer { .. } => "answer",
            Event::Offer { .. } => "offer",
            Event::Connected { .. } => "connected",
            Event::TrackPublished { .. } => "track_published",
            Event::TrackUnpublished { .. } => "track_unpublished",
            Event::VideoPaused { .. } => "video_paused",
            Event::LinkReport { .. } => "link_report",
            Event::LayersUnused { .. } => "layers_unused",
            Event::ActiveSpeaker { .. } => "active_speaker",
            Event::Disconnected { .. } => "disconnected",
            Event::CommandFailed { .. } => "command_failed",
            Event::Load(_) => "load",
        }
    }
}

/// A subscriber's link as the SFU sees it: its bandwidth estimate and what it forwards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkReport {
    /// The downlink's estimate; `None` without transport-wide feedback (or with estimation
    /// off).
    pub estimate_bps: Option<u64>,
    /// What the allocation gave the subscriber's streams, and what they would take.
    pub allocated_bps: u64,
    pub desired_bps: u64,
    /// Loss the subscriber's feedback reports, 0–1.
    pub loss: f32,
    pub videos: Vec<VideoReport>,
}

/// One video the subscriber receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoReport {
    pub publisher: ParticipantId,
    /// The m-line it arrives on (`a=mid` of the SFU's offer).
    pub mid: String,
    /// The simulcast layer forwarded now and the one being switched to (0 = lowest); `None`
    /// before the first.
    pub layer: Option<u8>,
    pub target: Option<u8>,
    /// Layers the publisher sends.
    pub layers: u8,
    /// Paused for want of bandwidth.
    pub paused: bool,
    /// The highest VP8 temporal layer given when not all of them are (a lower frame rate for
    /// want of bandwidth); `None` when all are.
    pub temporal: Option<u8>,
}
