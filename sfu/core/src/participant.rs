//! A participant: one WebRTC session (one browser tab) in one room.

use crate::arena::TrackIdx;
use crate::codec::CodecParams;
use crate::downlink::Downlink;
use crate::peer_transport::PeerTransport;
use crate::remote_description::RemoteCodec;
use crate::replay_window::ReplayWindow;
use crate::srtp_context::SrtpContext;
use crate::ssrc_routes::SsrcRoutes;
use crate::subscription::Subscription;
use crate::token_bucket::{RelayBudget, TokenBucket};
use crate::twcc_feedback::TwccRecorder;
use sfu_proto::{MediaKind, ParticipantId, Permissions, RoomId, VideoLayer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Header extension ids as negotiated with this participant (0 = not negotiated).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtIds {
    pub audio_level: Option<u8>,
    pub mid: Option<u8>,
    pub transport_cc: Option<u8>,
    /// RFC 8852 simulcast stream ids (RID) on media and RTX packets.
    pub rid: Option<u8>,
    pub repaired_rid: Option<u8>,
}

#[derive(Debug, Clone)]
pub enum LineRole {
    /// The participant publishes on this m-line.
    Publish { track: TrackIdx },
    /// The SFU sends a subscription on this m-line.
    Subscribe { subscription: usize },
    /// An audio/video m-line the participant offered to receive on; the SFU fills subscriptions
    /// through its own offers, so this one stays inactive.
    Idle { kind: MediaKind, codec: CodecParams },
    /// The data channels (SCTP over DTLS).
    Data,
    /// Not carried (unknown media, no codec, a stopped line): rejected with port 0, echoing
    /// what was offered.
    Rejected {
        media: String,
        proto: Vec<String>,
        formats: Vec<String>,
        rtpmap: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct MediaLine {
    pub mid: String,
    pub role: LineRole,
    /// The header extensions (URIs) the client's offer put on this m-line: an answer may use
    /// no others on it (Firefox offers transport-cc on video only and refuses an answer that
    /// adds it to audio). Empty on lines the SFU offered.
    pub offered_extensions: Vec<String>,
}

#[derive(Debug)]
pub struct Participant {
    pub id: ParticipantId,
    /// Signaling's number for this media session (echoed in its connect/disconnect events).
    pub session: u32,
    pub room: RoomId,
    pub transport: PeerTransport,
    pub outbound: Option<Box<SrtpContext>>,
    pub inbound: Option<Box<SrtpContext>>,
    pub remote: Option<SocketAddr>,
    pub permissions: Permissions,
    pub lines: Vec<MediaLine>,
    pub ext: ExtIds,
    /// What it may still have relayed on data channels (messages and bytes a second).
    pub data_budget: RelayBudget,
    /// What its audio may still have forwarded — all its audio tracks together (two may be
    /// published, a microphone and a shared screen's sound, and a line toggled off and on
    /// publishes a new track): audio goes ahead of video and outside the pacer.
    pub audio_budget: RelayBudget,
    /// Connectivity checks of its client the SFU may still handle (each costs two HMACs, an
    /// answer, and maybe a check of ours, to whatever source it claims), under its current
    /// ICE credentials…
    pub stun_budget: TokenBucket,
    /// …and under the ones before its last ICE restart: a flood of unsigned checks naming the
    /// old ufrag (which travelled in the clear on the network the phone left) must not use up
    /// what the restart's checks from the new network need.
    pub stun_budget_before_restart: TokenBucket,
    /// When its last ICE restart gave its checks a new budget.
    pub stun_budget_renewed_at: Option<Instant>,
    /// Sequence numbers its NACKs may still have looked up.
    pub nack_budget: TokenBucket,
    /// RTCP datagrams it may still have read, and statuses of its transport-wide feedback.
    pub rtcp_budget: TokenBucket,
    pub feedback_budget: TokenBucket,
    /// Extension ids the participant's browser uses, by URI, so SFU offers reuse them.
    pub offered_extmaps: Vec<(u8, String)>,
    /// The formats the participant's offers numbered (every codec of every m-line, one per
    /// payload type), so that the SFU numbers a format as the browser does and gives no
    /// format a number the browser gave another (`Sfu::subscriber_payload_types`).
    pub offered_formats: Vec<RemoteCodec>,
    pub published: Vec<TrackIdx>,
    /// Which published track and layer each SSRC it sends belongs to, as found.
    pub ssrc_routes: SsrcRoutes,
    pub subscriptions: Vec<Subscription>,
    pub srtcp_index: u32,
    /// SRTCP indices received per sender SSRC, so a replayed NACK or PLI is refused; with
    /// when each sender was last heard (the longest quiet gives way to a new one).
    pub srtcp_replay: HashMap<u32, (ReplayWindow, Instant)>,
    pub awaiting_answer: bool,
    /// When the outstanding SFU offer went out (re-sent after a timeout).
    pub offer_sent_at: Option<Instant>,
    pub renegotiation_pending: bool,
    pub sdp_session_id: u64,
    pub sdp_version: u64,
    pub next_mid: u32,
    /// Offers sent for the change now outstanding (reset by an answer).
    pub offer_attempts: u8,
    /// The local ICE ufrags checks are routed by: the current one and, after an ICE restart,
    /// the one before (the browser checks with it until it applies the answer).
    pub ufrags: Vec<String>,
    /// The session's own ICE checks, the last few (`MAX_ROUTED_PROBES`): where each went and
    /// its transaction id. Their answers carry no USERNAME and are routed by transaction id
    /// (`Sfu::by_probe_txn`); the address finds the session a DTLS flight that outran the
    /// answer belongs to (`Sfu::by_probe_addr`).
    pub probes: Vec<(SocketAddr, [u8; 12])>,
    /// Arrival times of this participant's packets, for its bandwidth estimator.
    pub twcc: TwccRecorder,
    /// Our transport-wide sequence number on packets sent to this participant.
    pub twcc_out_seq: u16,
    /// The path toward this participant: send history, bandwidth estimate, probes.
    pub downlink: Downlink,
    /// On the SFU's pacing list (packets in its pacer or a probe in flight).
    pub pacing_listed: bool,
    /// The simulcast layer this participant wants of video by default (new subscriptions
    /// start with it).
    pub preferred_layer: VideoLayer,
    /// The client's first DTLS flight, when it came from the address it nominated last
    /// before that address answered our check (its ClientHello leaves as soon as its own
    /// check is answered, and usually outruns the answer to ours): the address, and the
    /// handshake datagrams in arrival order (`MAX_EARLY_DTLS` of them, `MAX_EARLY_DTLS_BYTES`
    /// in all; a flight of large key shares takes two). Read once that address is proven,
    /// dropped if another one is; only until the session is secured.
    pub early_dtls: Option<(SocketAddr, Vec<Box<[u8]>>)>,
}

/// The largest SRTCP index (31 bits).
const SRTCP_INDEX_MAX: u32 = 0x7fff_ffff;

/// `next`, and moves it on; `None` once past [`SRTCP_INDEX_MAX`] (never wraps).
fn take_srtcp_index(next: &mut u32) -> Option<u32> {
    let i = *next;
    if i > SRTCP_INDEX_MAX {
        return None;
    }
    *next = i + 1;
    Some(i)
}

impl Participant {
    pub fn sendable(&self) -> Option<(&SrtpContext, SocketAddr)> {
        Some((self.outbound.as_deref()?, self.remote?))
    }

    /// Next SRTCP index for an RTCP packet sent to this participant; `None` once all 2^31
    /// are used. The index is the AES-GCM nonce's counter under a key that does not change:
    /// wrapping would seal two packets under one nonce (RFC 7714), so no more RTCP is sent
    /// (its client starts a new session when it misses what it is owed).
    pub fn next_srtcp_index(&mut self) -> Option<u32> {
        take_srtcp_index(&mut self.srtcp_index)
    }

    /// The id this participant uses for `uri`, or a free one the SFU assigns in its next offer
    /// (for a participant whose own offer did not mention the extension).
    pub fn ensure_extmap_id(&mut self, uri: &str) -> Option<u8> {
        if let Some(id) = self.extmap_id(uri) {
            return Some(id);
        }
        let id = (1..=14u8).find(|id| !self.offered_extmaps.iter().any(|(i, _)| i == id))?;
        self.offered_extmaps.push((id, uri.to_owned()));
        Some(id)
    }

    pub fn extmap_id(&self, uri: &str) -> Option<u8> {
        self.offered_extmaps
            .iter()
            .find(|(_, u)| u == uri)
            .map(|(id, _)| *id)
    }
}

/// Adds an extension a client's offer maps (`a=extmap:<id> <uri>`) to those it is known to use.
/// An id keeps the URI it was first given, and a URI its first id (RFC 8285: in a BUNDLE
/// session an id means one extension, and a renegotiation does not remap it), so what is kept
/// stays at one entry per id, 255 at most, however many offers name new URIs.
pub fn remember_extmap(known: &mut Vec<(u8, String)>, id: u8, uri: &str) {
    if !known.iter().any(|(i, u)| *i == id || u == uri) {
        known.push((id, uri.to_owned()));
    }
}

/// Adds a format a client's offer numbered to those it is known to use; a payload type keeps
/// the format it was first given (at most one entry per payload type).
pub fn remember_format(known: &mut Vec<RemoteCodec>, codec: &RemoteCodec) {
    if !known.iter().any(|c| c.payload_type == codec.payload_type) {
        known.push(codec.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::{SRTCP_INDEX_MAX, remember_extmap, take_srtcp_index};

    /// The last index is used once; after it none, rather than index 0 again under the same
    /// key (one AES-GCM nonce for two packets).
    #[test]
    fn srtcp_indices_end_rather_than_wrap() {
        let mut next = SRTCP_INDEX_MAX - 1;
        assert_eq!(take_srtcp_index(&mut next), Some(SRTCP_INDEX_MAX - 1));
        assert_eq!(take_srtcp_index(&mut next), Some(SRTCP_INDEX_MAX));
        assert_eq!(take_srtcp_index(&mut next), None);
        assert_eq!(take_srtcp_index(&mut next), None);
    }

    #[test]
    fn offers_naming_new_extensions_on_known_ids_add_nothing() {
        let mut known = Vec::new();
        remember_extmap(&mut known, 4, "urn:ietf:params:rtp-hdrext:sdes:mid");
        remember_extmap(&mut known, 5, "urn:ietf:params:rtp-hdrext:ssrc-audio-level");
        // A hostile client's renegotiations: every id, thousands of URIs never seen before.
        for n in 0..20_000u32 {
            remember_extmap(&mut known, (n % 256) as u8, &format!("urn:x-{n:08}"));
        }
        assert_eq!(known.len(), 256, "one entry per id");
        assert!(known.contains(&(4, "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned())));
        assert!(known.contains(&(5, "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_owned())));
        // Nor does a known URI move to another id.
        remember_extmap(&mut known, 9, "urn:ietf:params:rtp-hdrext:sdes:mid");
        assert_eq!(known.iter().filter(|(_, u)| u.ends_with(":mid")).count(), 1);
    }
}
