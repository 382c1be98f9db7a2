//! The SFU state machine of one worker: every room, participant, track and subscription the
//! worker owns, driven by datagrams, commands and time.
//!
//! Run loop contract (the I/O layer's side): feed each received datagram to
//! [`Sfu::handle_datagram`], commands to [`Sfu::handle_command`], call [`Sfu::handle_timeout`]
//! when [`Sfu::poll_timeout`] passes, send what each call left in the [`TransmitBatch`], and drain
//! [`Sfu::poll_event`].

use crate::codec::CodecParams;
use crate::counters::Counters;
use crate::local_description::{
    self, EXT_AUDIO_LEVEL, EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TRANSPORT_CC, LineContent,
    LineSpec, SdpKind, SendSource, TransportSpec,
};
use crate::participant::{ExtIds, LineRole, MediaLine, Participant};
use crate::peer_transport::{CloseCause, PeerTransport, TransportConfig, TransportEvent};
use crate::remote_description::{MAX_SIMULCAST_LAYERS, RemoteDescription, SdpError};
use crate::rtcp_writer::{self, ReportBlock};
use crate::rtp_header::{HeaderWriter, PacketClass, RtpHeader, classify};
use crate::srtp_context::{SRTCP_TRAILER_LEN, SRTP_TAG_LEN};
use crate::subscription::{OutStreamIds, Subscription};
use crate::track::Track;
use crate::transmit_batch::{SLOT_SIZE, TransmitBatch};
use crate::twcc_feedback::TwccRecorder;
use rustc_hash::FxHashMap;
use sfu_proto::{
    Command, DisconnectReason, Event, MediaKind, ParticipantId, Permissions, RoomId, TrackId,
    TrackInfo, VideoLayer,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Tunables of the forwarding core.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    pub transport: TransportConfig,
    /// Packets kept per video track for retransmission.
    pub nack_cache_slots: usize,
    /// Retransmissions of one packet to subscribers, at most.
    pub max_resends_per_packet: u8,
    /// NACKs toward a publisher: spacing and tries per lost packet.
    pub nack_interval: Duration,
    pub nack_max_tries: u8,
    /// Keyframe requests toward a publisher, at most one per this interval per track.
    pub keyframe_throttle: Duration,
    pub report_interval: Duration,
    /// Transport-wide congestion feedback to publishers, this often.
    pub twcc_interval: Duration,
    pub tick: Duration,
    pub speaker_interval: Duration,
}

impl SfuConfig {
    pub fn new(transport: TransportConfig) -> Self {
        Self {
            transport,
            nack_cache_slots: 512,
            max_resends_per_packet: 3,
            nack_interval: Duration::from_millis(30),
            nack_max_tries: 6,
            keyframe_throttle: Duration::from_millis(500),
            report_interval: Duration::from_secs(1),
            twcc_interval: Duration::from_millis(50),
            tick: Duration::from_millis(10),
            speaker_interval: Duration::from_millis(300),
        }
    }
}

#[derive(Debug, Default)]
struct Room {
    participants: Vec<usize>,
    speaker: Option<usize>,
}

/// m-lines one participant's session may hold (its own and the SFU's together).
const MAX_LINES_PER_PARTICIPANT: usize = 64;
/// Tracks one participant may publish; further sending m-lines are answered inactive.
const MAX_AUDIO_TRACKS: usize = 2;
const MAX_VIDEO_TRACKS: usize = 4;
/// An SFU offer not answered within this long is sent again (the browser may have failed it).
/// How often simulcast subscriptions re-choose their layer.
const LAYER_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Receiver-reported loss (of 256) at which, in two reports running, a simulcast subscriber is
/// moved a layer down; and at or below which, in every report for `LOSS_RECOVERY`, it may go a
/// layer up again.
const LOSS_DOWNGRADE: u8 = 26;
const LOSS_CLEAR: u8 = 5;
const LOSS_RECOVERY: Duration = Duration::from_secs(8);
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// RTCP sender SSRCs tracked for replay per participant (a browser uses one per stream).
const MAX_RTCP_SENDERS: usize = 32;

/// Source addresses remembered per participant for routing STUN responses.
const MAX_STUN_ADDRS_PER_PARTICIPANT: usize = 16;

/// Decides which of a participant's datagrams matter; keeps ufrag parsing out of the hot path.
fn stun_username_ufrag(datagram: &[u8]) -> Option<&str> {
    // RFC 5389: 20-byte header, then TLV attributes; USERNAME is 0x0006 ("ours:theirs").
    if datagram.len() < 20 || datagram[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let mut pos = 20;
    while pos + 4 <= datagram.len() {
        let typ = u16::from_be_bytes([datagram[pos], datagram[pos + 1]]);
        let len = u16::from_be_bytes([datagram[pos + 2], datagram[pos + 3]]) as usize;
        let value = datagram.get(pos + 4..pos + 4 + len)?;
        if typ == 0x0006 {
            let s = std::str::from_utf8(value).ok()?;
            return s.split(':').next();
        }
        pos += 4 + len.div_ceil(4) * 4;
    }
    None
}

pub struct Sfu {
    config: SfuConfig,
    rooms: HashMap<RoomId, Room>,
    participants: Vec<Option<Participant>>,
    free_participants: Vec<usize>,
    tracks: Vec<Option<Track>>,
    free_tracks: Vec<usize>,
    by_id: FxHashMap<ParticipantId, usize>,
    by_ufrag: FxHashMap<String, usize>,
    /// Looked up for every datagram: a fast hash. Keys are only inserted for addresses ICE
    /// verified (or, for STUN routing, that presented a valid ufrag), so flooding cannot
    /// target collisions.
    by_addr: FxHashMap<SocketAddr, usize>,
    by_stun_addr: FxHashMap<SocketAddr, usize>,
    events: VecDeque<Event>,
    pub counters: Counters,
    next_tick: Option<Instant>,
    next_layer_check: Option<Instant>,
    next_report: Option<Instant>,
    next_twcc: Option<Instant>,
    next_speaker: Option<Instant>,
    /// The latest `now` seen, for bookkeeping in paths that take no time argument.
    clock: Option<Instant>,
    nack_scratch: Vec<u16>,
    rtcp_scratch: Vec<u8>,
    ssrc_seed: u32,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("rooms", &self.rooms.len())
            .field("participants", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl Sfu {
    pub fn new(config: SfuConfig) -> Self {
        Self {
            config,
            rooms: HashMap::new(),
            participants: Vec::new(),
            free_participants: Vec::new(),
            tracks: Vec::new(),
            free_tracks: Vec::new(),
            by_id: FxHashMap::default(),
            by_ufrag: FxHashMap::default(),
            by_addr: FxHashMap::default(),
            by_stun_addr: FxHashMap::default(),
            events: VecDeque::new(),
            counters: Counters::default(),
            next_tick: None,
            next_layer_check: None,
            next_report: None,
            next_twcc: None,
            next_speaker: None,
            clock: None,
            nack_scratch: Vec::with_capacity(64),
            rtcp_scratch: vec![0; SLOT_SIZE],
            // xorshift never leaves zero.
            ssrc_seed: rand::random::<u32>() | 1,
        }
    }

    pub fn config(&self) -> &SfuConfig {
        &self.config
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn participant_count(&self) -> usize {
        self.by_id.len()
    }

    pub fn has_participant(&self, id: &ParticipantId) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.by_id.is_empty() {
            return None;
        }
        self.next_tick
    }

    fn new_ssrc(&mut self) -> u32 {
        // xorshift: distinct, non-zero, unpredictable enough for SSRCs (not a secret).
        let mut x = self.ssrc_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.ssrc_seed = x;
        x.max(2)
    }

    // ----- commands -----------------------------------------------------------------------

    pub fn handle_command(&mut self, now: Instant, command: Command, out: &mut TransmitBatch) {
        self.clock = Some(now);
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.config.tick);
        }
        let participant = command.participant().cloned();
        let name = command.name();
        let result = match command {
            Command::AddParticipant {
                room,
                participant,
                offer_sdp,
                permissions,
            } => self.add_participant(now, room, participant, &offer_sdp, permissions),
            Command::Answer {
                participant,
                answer_sdp,
            } => self.apply_answer(now, &participant, &answer_sdp, out),
            Command::Offer {
                participant,
                offer_sdp,
            } => self.apply_client_offer(now, &participant, &offer_sdp),
            Command::SetPermissions {
                participant,
                permissions,
            } => self.set_permissions(now, &participant, permissions, out),
            Command::RemoveParticipant { participant } => {
                if let Some(&idx) = self.by_id.get(&participant) {
                    self.remove_participant(now, idx, DisconnectReason::Removed, out);
                }
                Ok(())
            }
            Command::CloseRoom { room } => {
                let members = self.room_members(&room);
                for idx in members {
                    self.remove_participant(now, idx, DisconnectReason::RoomClosed, out);
                }
                self.rooms.remove(&room);
                Ok(())
            }
            Command::RequestKeyframe { participant } => {
                if let Some(&idx) = self.by_id.get(&participant) {
                    self.request_keyframes_for(now, idx, out);
                }
                Ok(())
            }
            Command::SetPreferredLayer {
                participant,
                mid,
                layer,
            } => self.lookup(&participant).map(|idx| {
                let p = self.participant_mut(idx);
                if mid.is_none() {
                    // Also for subscriptions made later (a publisher who joins or reconnects).
                    p.preferred_layer = layer;
                }
                for sub in &mut p.subscriptions {
                    if mid.as_ref().is_none_or(|m| *m == sub.mid) {
                        sub.preferred = layer;
                    }
                }
                self.select_layers(now, Some(idx), out);
            }),
        };
        if let Err(error) = result {
            self.events.push_back(Event::CommandFailed {
                command: name.to_owned(),
                participant,
                error,
            });
        }
    }

    fn lookup(&self, id: &ParticipantId) -> Result<usize, String> {
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| format!("unknown participant {id}"))
    }

    /// The participants of a room (a copy: callers change the room while walking it).
    fn room_members(&self, room: &RoomId) -> Vec<usize> {
        self.rooms
            .get(room)
            .map(|r| r.participants.clone())
            .unwrap_or_default()
    }

    fn participant(&self, idx: usize) -> &Participant {
        self.participants[idx]
            .as_ref()
            .expect("live participant index")
    }

    fn participant_mut(&mut self, idx: usize) -> &mut Participant {
        self.participants[idx]
            .as_mut()
            .expect("live participant index")
    }

    fn track(&self, idx: usize) -> &Track {
        self.tracks[idx].as_ref().expect("live track index")
    }

    fn add_participant(
        &mut self,
        now: Instant,
        room: RoomId,
        id: ParticipantId,
        offer_sdp: &str,
        permissions: Permissions,
    ) -> Result<(), String> {
        if self.by_id.contains_key(&id) {
            return Err(format!("participant {id} already exists"));
        }
        let offer = RemoteDescription::parse(offer_sdp).map_err(|e: SdpError| e.to_string())?;
        if offer.media.len() > MAX_LINES_PER_PARTICIPANT {
            return Err(format!(
                "an offer may hold at most {MAX_LINES_PER_PARTICIPANT} m-lines"
            ));
        }
        let transport = PeerTransport::new(
            now,
            self.config.transport.clone(),
            &offer.ice_ufrag,
            &offer.ice_pwd,
            &offer.fingerprint,
        )
        .map_err(|e| e.to_string())?;
        let ufrag = transport.local_ufrag().to_owned();
        let participant = Participant {
            id: id.clone(),
            room: room.clone(),
            transport,
            outbound: None,
            inbound: None,
            remote: None,
            permissions,
            lines: Vec::new(),
            ext: ExtIds::default(),
            offered_extmaps: Vec::new(),
            published: Vec::new(),
            subscriptions: Vec::new(),
            srtcp_index: 0,
            srtcp_replay: HashMap::new(),
            awaiting_answer: false,
            offer_sent_at: None,
            renegotiation_pending: false,
            sdp_session_id: u64::from(self.new_ssrc()) << 16,
            sdp_version: 1,
            next_mid: 0,
            stun_addrs: Vec::new(),
            twcc: TwccRecorder::new(now),
            twcc_out_seq: 0,
            preferred_layer: VideoLayer::High,
        };
        let idx = match self.free_participants.pop() {
            Some(i) => {
                self.participants[i] = Some(participant);
                i
            }
            None => {
                self.participants.push(Some(participant));
                self.participants.len() - 1
            }
        };
        self.by_id.insert(id, idx);
        self.by_ufrag.insert(ufrag, idx);
        self.rooms.entry(room).or_default().participants.push(idx);

        let new_tracks = self.negotiate_offer(idx, &offer);
        self.answer(idx);
        self.on_tracks_published(idx, &new_tracks);
        // The newcomer receives what the room already publishes.
        self.subscribe_to_room(idx);
        Ok(())
    }

    /// Applies a client offer's m-lines: new sending lines become published tracks.
    fn negotiate_offer(&mut self, idx: usize, offer: &RemoteDescription) -> Vec<usize> {
        let mut new_tracks = Vec::new();
        {
            let p = self.participant_mut(idx);
            for (id, uri) in offer.media.iter().flat_map(|m| m.extmaps.iter()) {
                if !p.offered_extmaps.iter().any(|(_, u)| u == uri) {
                    p.offered_extmaps.push((*id, uri.clone()));
                }
            }
            p.ext.audio_level = p.extmap_id(EXT_AUDIO_LEVEL);
            p.ext.mid = p.extmap_id(EXT_MID);
            p.ext.transport_cc = p.extmap_id(EXT_TRANSPORT_CC);
            p.ext.rid = p.extmap_id(EXT_RID);
            p.ext.repaired_rid = p.extmap_id(EXT_REPAIRED_RID);
        }
        for m in &offer.media {
            if let Some(li) = self
                .participant(idx)
                .lines
                .iter()
                .position(|l| l.mid == m.mid)
            {
                new_tracks.extend(self.renegotiate_line(idx, li, m));
                continue;
            }
            let codec = m.kind.and_then(|k| CodecParams::choose(k, &m.codecs));
            let published_of = |kind: MediaKind| {
                self.participant(idx)
                    .published
                    .iter()
                    .filter(|&&t| self.tracks[t].as_ref().is_some_and(|t| t.kind == kind))
                    .count()
            };
            let room_for = |kind: MediaKind| match kind {
                MediaKind::Audio => published_of(kind) < MAX_AUDIO_TRACKS,
                MediaKind::Video => published_of(kind) < MAX_VIDEO_TRACKS,
            };
            let role = match (m.kind, codec, m.rejected) {
                (Some(kind), Some(codec), false) if m.publishes() && room_for(kind) => {
                    let t = self.publish_line(idx, m, kind, codec);
                    new_tracks.push(t);
                    LineRole::Publish { track: t }
                }
                (Some(kind), Some(codec), false) => LineRole::Idle { kind, codec },
                (None, _, false) if m.is_data_channel => LineRole::Data,
                _ => LineRole::Rejected {
                    media: if m.kind.is_some() {
                        match m.kind {
                            Some(MediaKind::Audio) => "audio".into(),
                            _ => "video".into(),
                        }
                    } else {
                        "application".into()
                    },
                    proto: vec!["UDP".into(), "DTLS".into(), "SCTP".into()],
                    formats: vec!["webrtc-datachannel".into()],
                },
            };
            let p = self.participant_mut(idx);
            if let Ok(n) = m.mid.parse::<u32>() {
                p.next_mid = p.next_mid.max(n + 1);
            }
            p.lines.push(MediaLine {
                mid: m.mid.clone(),
                role,
            });
        }
        new_tracks
    }

    /// A new track published on m-line `m`.
    fn publish_line(
        &mut self,
        idx: usize,
        m: &crate::remote_description::RemoteMedia,
        kind: MediaKind,
        codec: CodecParams,
    ) -> usize {
        let pid = self.participant(idx).id.clone();
        // Simulcast needs the MID and RID header extensions to tell the layers apart; without
        // them the answer accepts one stream.
        let ext = self.participant(idx).ext;
        let rids: &[String] = if ext.mid.is_some() && ext.rid.is_some() {
            &m.rids
        } else {
            &[]
        };
        let mut track = Track::new(
            TrackId(format!("{}/{}", pid, m.mid)),
            kind,
            idx,
            m.mid.clone(),
            codec,
            rids,
            self.config.nack_cache_slots,
        );
        // Simulcast layers are bound by their RIDs as packets arrive.
        if !track.is_simulcast()
            && let Some(ssrc) = m.ssrcs.first()
        {
            let clock = track.codec.clock_rate;
            track.layers[0].bind_ssrc(*ssrc, clock);
            if let Some((_, rtx)) = m.rtx_ssrcs.iter().find(|(p, _)| p == ssrc) {
                track.layers[0].bind_rtx_ssrc(*rtx, clock);
            }
        }
        let t = match self.free_tracks.pop() {
            Some(i) => {
                self.tracks[i] = Some(track);
                i
            }
            None => {
                self.tracks.push(Some(track));
                self.tracks.len() - 1
            }
        };
        self.participant_mut(idx).published.push(t);
        t
    }

    /// A known m-line in a client's new offer. A line the client stopped (port 0) or no longer
    /// sends on ends its track (a screen share that ended); an idle line that sends again
    /// publishes a new one, room permitting. Returns a newly published track.
    fn renegotiate_line(
        &mut self,
        idx: usize,
        li: usize,
        m: &crate::remote_description::RemoteMedia,
    ) -> Option<usize> {
        let stops = !m.publishes();
        let role = self.participant(idx).lines[li].role.clone();
        let (kind, codec) = match role {
            LineRole::Publish { track } if stops => {
                let t = self.track(track);
                let (kind, codec) = (t.kind, t.codec.clone());
                self.unpublish_track(idx, track);
                (kind, codec)
            }
            LineRole::Idle { kind, codec } if m.rejected => (kind, codec),
            LineRole::Idle { kind, codec } if m.publishes() => {
                let limit = match kind {
                    MediaKind::Audio => MAX_AUDIO_TRACKS,
                    MediaKind::Video => MAX_VIDEO_TRACKS,
                };
                let published = self
                    .participant(idx)
                    .published
                    .iter()
                    .filter(|&&t| self.tracks[t].as_ref().is_some_and(|t| t.kind == kind))
                    .count();
                if published >= limit {
                    return None;
                }
                let t = self.publish_line(idx, m, kind, codec);
                self.participant_mut(idx).lines[li].role = LineRole::Publish { track: t };
                return Some(t);
            }
            _ => return None,
        };
        self.participant_mut(idx).lines[li].role = if m.rejected {
            LineRole::Rejected {
                media: match kind {
                    MediaKind::Audio => "audio".into(),
                    MediaKind::Video => "video".into(),
                },
                proto: vec!["UDP".into(), "TLS".into(), "RTP".into(), "SAVPF".into()],
                formats: vec![codec.payload_type.to_string()],
            }
        } else {
            LineRole::Idle { kind, codec }
        };
        None
    }

    /// Ends one published track: its subscribers' m-lines go inactive by renegotiation.
    fn unpublish_track(&mut self, publisher: usize, t: usize) {
        if self.participant(publisher).permissions.publish {
            self.announce_tracks(publisher, &[t], false);
        }
        self.participant_mut(publisher)
            .published
            .retain(|&x| x != t);
        let Some(track) = self.tracks[t].take() else {
            return;
        };
        self.free_tracks.push(t);
        let mut affected = Vec::new();
        self.end_subscriptions(track.subscribers, &mut affected);
        for sp in affected {
            self.renegotiate(sp);
        }
    }

    /// Marks these subscriptions inactive (their m-lines stop at the next renegotiation) and
    /// notes each subscriber once in `affected`.
    fn end_subscriptions(&mut self, subscriptions: Vec<(usize, usize)>, affected: &mut Vec<usize>) {
        for (sp, ss) in subscriptions {
            if let Some(sub) = self.participants[sp].as_mut() {
                sub.subscriptions[ss].active = false;
                if !affected.contains(&sp) {
                    affected.push(sp);
                }
            }
        }
    }

    fn line_specs(&self, idx: usize) -> Vec<LineSpec> {
        let p = self.participant(idx);
        p.lines
            .iter()
            .map(|line| {
                let content = match &line.role {
                    LineRole::Publish { track } => {
                        let t = self.track(*track);
                        let mut extmaps = Vec::new();
                        if let Some(id) = p.ext.mid {
                            extmaps.push((id, EXT_MID));
                        }
                        if let Some(id) = p.ext.transport_cc {
                            extmaps.push((id, EXT_TRANSPORT_CC));
                        }
                        if t.kind == MediaKind::Audio
                            && let Some(id) = p.ext.audio_level
                        {
                            extmaps.push((id, EXT_AUDIO_LEVEL));
                        }
                        let simulcast_rids: Vec<String> = if t.is_simulcast() {
                            extmaps.extend(p.ext.rid.map(|id| (id, EXT_RID)));
                            extmaps.extend(p.ext.repaired_rid.map(|id| (id, EXT_REPAIRED_RID)));
                            t.layers.iter().filter_map(|l| l.rid.clone()).collect()
                        } else {
                            Vec::new()
                        };
                        LineContent::Media {
                            kind: t.kind,
                            codec: t.codec.clone(),
                            direction: "recvonly",
                            extmaps,
                            send: None,
                            simulcast_rids,
                        }
                    }
                    LineRole::Subscribe { subscription } => {
                        let s = &p.subscriptions[*subscription];
                        let t = self.tracks[s.track].as_ref();
                        let publisher = t.and_then(|t| self.participants[t.publisher].as_ref());
                        match (t, publisher) {
                            (Some(t), Some(publisher)) if s.active => {
                                // Only ids the subscriber's browser already uses: a BUNDLE
                                // maps one id to one extension across every m-line.
                                let mut extmaps = Vec::new();
                                if t.kind == MediaKind::Audio
                                    && let Some(id) = p.ext.audio_level
                                {
                                    extmaps.push((id, EXT_AUDIO_LEVEL));
                                }
                                if let Some(id) = p.ext.transport_cc {
                                    extmaps.push((id, EXT_TRANSPORT_CC));
                                }
                                let mut codec = t.codec.clone();
                                codec.rtx_payload_type = s.rtx_payload_type;
                                LineContent::Media {
                                    kind: t.kind,
                                    codec,
                                    direction: "sendonly",
                                    extmaps,
                                    send: Some(SendSource {
                                        ssrc: s.ssrc,
                                        rtx_ssrc: Some(s.rtx_ssrc),
                                        stream_id: publisher.id.to_string(),
                                        track_id: t.id.to_string().replace('/', "-"),
                                    }),
                                    simulcast_rids: Vec::new(),
                                }
                            }
                            _ => LineContent::Rejected {
                                media: if s.kind == MediaKind::Video {
                                    "video".into()
                                } else {
                                    "audio".into()
                                },
                                proto: vec![
                                    "UDP".into(),
                                    "TLS".into(),
                                    "RTP".into(),
                                    "SAVPF".into(),
                                ],
                                formats: vec![s.payload_type.to_string()],
                            },
                        }
                    }
                    LineRole::Idle { kind: k, codec } => LineContent::Media {
                        kind: *k,
                        codec: codec.clone(),
                        direction: "inactive",
                        extmaps: Vec::new(),
                        send: None,
                        simulcast_rids: Vec::new(),
                    },
                    LineRole::Data => LineContent::Data,
                    LineRole::Rejected {
                        media,
                        proto,
                        formats,
                    } => LineContent::Rejected {
                        media: media.clone(),
                        proto: proto.clone(),
                        formats: formats.clone(),
                    },
                };
                LineSpec {
                    mid: line.mid.clone(),
                    content,
                }
            })
            .collect()
    }

    fn write_sdp(&mut self, idx: usize, kind: SdpKind) -> String {
        let lines = self.line_specs(idx);
        let candidate = self.config.transport.advertised_addr;
        let p = self.participants[idx]
            .as_mut()
            .expect("live participant index");
        p.sdp_version += 1;
        let t = TransportSpec {
            ice_ufrag: p.transport.local_ufrag(),
            ice_pwd: p.transport.local_pwd(),
            fingerprint: p.transport.fingerprint(),
            candidate,
        };
        local_description::write(kind, p.sdp_session_id, p.sdp_version, &t, &lines)
    }

    fn answer(&mut self, idx: usize) {
        let sdp = self.write_sdp(idx, SdpKind::Answer);
        let participant = self.participant(idx).id.clone();
        self.events.push_back(Event::Answer {
            participant,
            answer_sdp: sdp,
        });
    }

    /// Sends an SFU offer now, or as soon as the outstanding one is answered.
    fn renegotiate(&mut self, idx: usize) {
        let clock = self.clock;
        let p = self.participant_mut(idx);
        if p.awaiting_answer {
            p.renegotiation_pending = true;
            return;
        }
        p.awaiting_answer = true;
        p.renegotiation_pending = false;
        p.offer_sent_at = clock;
        for s in &mut p.subscriptions {
            s.offered = true;
        }
        let sdp = self.write_sdp(idx, SdpKind::Offer);
        let participant = self.participant(idx).id.clone();
        self.events.push_back(Event::Offer {
            participant,
            offer_sdp: sdp,
        });
    }

    fn apply_answer(
        &mut self,
        now: Instant,
        id: &ParticipantId,
        sdp: &str,
        out: &mut TransmitBatch,
    ) -> Result<(), String> {
        let idx = self.lookup(id)?;
        if !self.participant(idx).awaiting_answer {
            return Err("no offer is outstanding".into());
        }
        let answer = match RemoteDescription::parse(sdp) {
            Ok(a) => a,
            // The offer failed on the client's side: it stays outstanding and is sent again
            // when it times out.
            Err(e) => return Err(e.to_string()),
        };
        let p = self.participant_mut(idx);
        for m in &answer.media {
            let Some(LineRole::Subscribe { subscription }) = p
                .lines
                .iter()
                .find(|l| l.mid == m.mid)
                .map(|l| l.role.clone())
            else {
                continue;
            };
            let s = &mut p.subscriptions[subscription];
            if m.rejected {
                // A subscriber that refused an m-line gets nothing on it; an inactive one is
                // now stopped on both sides and may be recycled.
                if !s.active {
                    s.closed = true;
                }
                s.active = false;
            } else if let Some(rtx) = s.rtx_payload_type
                && !m.codecs.iter().any(|c| c.payload_type == rtx)
            {
                // No RTX in the answer: no retransmissions (see `retransmit`).
                s.rtx_payload_type = None;
            }
        }
        p.awaiting_answer = false;
        p.offer_sent_at = None;
        // Only lines the answer accepted: a late answer to an earlier offer does not cover
        // subscriptions added since.
        let mut newly = Vec::new();
        for (i, s) in p.subscriptions.iter_mut().enumerate() {
            let accepted = answer.media.iter().any(|m| m.mid == s.mid && !m.rejected);
            if s.offered && !s.negotiated && accepted {
                s.negotiated = true;
                newly.push(i);
            }
        }
        // Subscribers' decoders start with a keyframe.
        for s in newly {
            self.keyframe_for(now, idx, s, out);
        }
        let p = self.participant_mut(idx);
        if p.renegotiation_pending {
            self.renegotiate(idx);
        }
        Ok(())
    }

    fn apply_client_offer(
        &mut self,
        _now: Instant,
        id: &ParticipantId,
        sdp: &str,
    ) -> Result<(), String> {
        let idx = self.lookup(id)?;
        if self.participant(idx).awaiting_answer {
            // Glare: the SFU's offer is outstanding; the client retries after answering it.
            return Err("an SFU offer is outstanding; answer it first".into());
        }
        let offer = RemoteDescription::parse(sdp).map_err(|e| e.to_string())?;
        let p = self.participant(idx);
        let new_lines = offer
            .media
            .iter()
            .filter(|m| !p.lines.iter().any(|l| l.mid == m.mid))
            .count();
        if p.lines.len() + new_lines > MAX_LINES_PER_PARTICIPANT {
            return Err(format!(
                "a session may hold at most {MAX_LINES_PER_PARTICIPANT} m-lines"
            ));
        }
        let new_tracks = self.negotiate_offer(idx, &offer);
        self.answer(idx);
        self.on_tracks_published(idx, &new_tracks);
        Ok(())
    }

    fn on_tracks_published(&mut self, publisher: usize, tracks: &[usize]) {
        if tracks.is_empty() {
            return;
        }
        if self.participant(publisher).permissions.publish {
            self.announce_tracks(publisher, tracks, true);
        }
        self.offer_tracks_to_room(publisher, tracks);
    }

    /// Tells signaling that `tracks` of `publisher` became visible to the room (or stopped
    /// being). Only tracks the room may receive are news: a waiting participant's are not.
    fn announce_tracks(&mut self, publisher: usize, tracks: &[usize], published: bool) {
        let room = self.participant(publisher).room.clone();
        let pid = self.participant(publisher).id.clone();
        for &t in tracks {
            let Some(track) = self.tracks[t].as_ref() else {
                continue;
            };
            let info = TrackInfo {
                id: track.id.clone(),
                kind: track.kind,
                publisher: pid.clone(),
            };
            self.events.push_back(if published {
                Event::TrackPublished {
                    room: room.clone(),
                    track: info,
                }
            } else {
                Event::TrackUnpublished {
                    room: room.clone(),
                    track: info,
                }
            });
        }
    }

    /// Subscribes the publisher's room to `tracks`, unless the publisher may not publish: nobody
    /// is even offered a waiting participant's tracks (an m-line would reveal they are there).
    fn offer_tracks_to_room(&mut self, publisher: usize, tracks: &[usize]) {
        if tracks.is_empty() || !self.participant(publisher).permissions.publish {
            return;
        }
        let room = self.participant(publisher).room.clone();
        let members = self.room_members(&room);
        for m in members {
            if m == publisher || !self.participant(m).permissions.subscribe {
                continue;
            }
            let mut added = false;
            for &t in tracks {
                added |= self.subscribe(m, t);
            }
            if added {
                self.renegotiate(m);
            }
        }
    }

    /// Withdraws the publisher's tracks from everyone who receives them.
    fn withdraw_tracks(&mut self, publisher: usize) {
        let published = self.participant(publisher).published.clone();
        let mut affected = Vec::new();
        for t in published {
            let Some(track) = self.tracks[t].as_mut() else {
                continue;
            };
            let subscriptions = std::mem::take(&mut track.subscribers);
            self.end_subscriptions(subscriptions, &mut affected);
        }
        for sp in affected {
            self.renegotiate(sp);
        }
    }

    /// Subscribes `idx` to every track of the others in its room it does not yet receive.
    fn subscribe_to_room(&mut self, idx: usize) {
        if !self.participant(idx).permissions.subscribe {
            return;
        }
        let room = self.participant(idx).room.clone();
        let members = self.room_members(&room);
        let mut added = false;
        for m in members {
            if m == idx || !self.participant(m).permissions.publish {
                continue;
            }
            let published = self.participant(m).published.clone();
            for t in published {
                added |= self.subscribe(idx, t);
            }
        }
        if added {
            self.renegotiate(idx);
        }
    }

    fn subscribe(&mut self, subscriber: usize, track: usize) -> bool {
        let p = self.participant(subscriber);
        if p.subscriptions.iter().any(|s| s.track == track && s.active) {
            return false;
        }
        let kind = self.track(track).kind;
        // A stopped m-line of the same kind, stopped on both sides, is taken again (JSEP
        // m-section recycling, under a new mid): people who reconnect again and again do not
        // use up the session's lines.
        let recycled = p.lines.iter().enumerate().find_map(|(li, l)| match l.role {
            LineRole::Subscribe { subscription: s }
                if p.subscriptions[s].closed && p.subscriptions[s].kind == kind =>
            {
                Some((li, s))
            }
            _ => None,
        });
        // The cap bounds the SDP.
        if recycled.is_none() && p.lines.len() >= MAX_LINES_PER_PARTICIPANT {
            self.counters.subscriptions_refused += 1;
            return false;
        }
        let ssrc = self.new_ssrc();
        let rtx_ssrc = self.new_ssrc();
        let seed = self.new_ssrc();
        let (pt, rtx_pt, kind) = {
            let t = self.track(track);
            let rtx = match t.kind {
                MediaKind::Video => Some(t.codec.subscriber_rtx_payload_type()),
                MediaKind::Audio => None,
            };
            (t.codec.payload_type, rtx, t.kind)
        };
        let p = self.participant_mut(subscriber);
        p.ext.transport_cc = p.ensure_extmap_id(EXT_TRANSPORT_CC);
        if kind == MediaKind::Audio {
            p.ext.audio_level = p.ensure_extmap_id(EXT_AUDIO_LEVEL);
        }
        let mid = loop {
            let candidate = p.next_mid.to_string();
            p.next_mid += 1;
            if !p.lines.iter().any(|l| l.mid == candidate) {
                break candidate;
            }
        };
        let ids = OutStreamIds {
            ssrc,
            rtx_ssrc,
            payload_type: pt,
            rtx_payload_type: rtx_pt,
        };
        let mut subscription = Subscription::new(track, kind, mid.clone(), ids, seed);
        subscription.preferred = self.participant(subscriber).preferred_layer;
        if let (Some(t), Some(now)) = (self.tracks[track].as_ref(), self.clock) {
            subscription.target_layer =
                t.choose_layer(subscription.layer_limit(t.layers.len()), now);
        }
        let s = match recycled {
            Some((li, s)) => {
                // The old subscription's slot is reused: no track may still point at it.
                let old_track = self.participant(subscriber).subscriptions[s].track;
                if let Some(t) = self.tracks[old_track].as_mut() {
                    t.subscribers.retain(|&(p, x)| !(p == subscriber && x == s));
                }
                let p = self.participant_mut(subscriber);
                p.subscriptions[s] = subscription;
                p.lines[li] = MediaLine {
                    mid,
                    role: LineRole::Subscribe { subscription: s },
                };
                self.counters.lines_recycled += 1;
                s
            }
            None => {
                let p = self.participant_mut(subscriber);
                let s = p.subscriptions.len();
                p.subscriptions.push(subscription);
                p.lines.push(MediaLine {
                    mid,
                    role: LineRole::Subscribe { subscription: s },
                });
                s
            }
        };
        if let Some(t) = self.tracks[track].as_mut() {
            t.subscribers.push((subscriber, s));
        }
        true
    }

    fn unsubscribe_all(&mut self, subscriber: usize) -> bool {
        let mut changed = false;
        let subs: Vec<(usize, usize)> = self
            .participant(subscriber)
            .subscriptions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active)
            .map(|(i, s)| (i, s.track))
            .collect();
        for (i, t) in subs {
            self.participant_mut(subscriber).subscriptions[i].active = false;
            if let Some(track) = self.tracks[t].as_mut() {
                track
                    .subscribers
                    .retain(|&(p, s)| !(p == subscriber && s == i));
            }
            changed = true;
        }
        changed
    }

    fn set_permissions(
        &mut self,
        now: Instant,
        id: &ParticipantId,
        permissions: Permissions,
        out: &mut TransmitBatch,
    ) -> Result<(), String> {
        let idx = self.lookup(id)?;
        let before = std::mem::replace(&mut self.participant_mut(idx).permissions, permissions);
        if before.subscribe && !permissions.subscribe && self.unsubscribe_all(idx) {
            self.renegotiate(idx);
        }
        if !before.subscribe && permissions.subscribe {
            self.subscribe_to_room(idx);
        }
        if !before.publish && permissions.publish {
            // Admitted: the room is offered this participant's tracks (keyframes are asked for
            // as each subscriber answers).
            let published = self.participant(idx).published.clone();
            self.announce_tracks(idx, &published, true);
            self.offer_tracks_to_room(idx, &published);
            for t in published {
                self.request_track_keyframes(now, t, out);
            }
        }
        if before.publish && !permissions.publish {
            let published = self.participant(idx).published.clone();
            self.announce_tracks(idx, &published, false);
            self.withdraw_tracks(idx);
        }
        Ok(())
    }

    fn remove_participant(
        &mut self,
        now: Instant,
        idx: usize,
        reason: DisconnectReason,
        out: &mut TransmitBatch,
    ) {
        let Some(mut p) = self.participants[idx].take() else {
            return;
        };
        p.transport.shutdown(now);
        while let Some((dest, datagram)) = p.transport.poll_transmit() {
            out.push(dest, &datagram);
        }
        self.by_id.remove(&p.id);
        self.by_ufrag.remove(p.transport.local_ufrag());
        // Only entries that still point at this participant (another may have the address now).
        if let Some(addr) = p.remote
            && self.by_addr.get(&addr) == Some(&idx)
        {
            self.by_addr.remove(&addr);
        }
        for addr in &p.stun_addrs {
            if self.by_stun_addr.get(addr) == Some(&idx) {
                self.by_stun_addr.remove(addr);
            }
        }
        // Its subscriptions leave the tracks they read from.
        for (i, s) in p.subscriptions.iter().enumerate() {
            if let Some(t) = self.tracks[s.track].as_mut() {
                t.subscribers.retain(|&(sp, ss)| !(sp == idx && ss == i));
            }
        }
        // Its tracks leave every subscriber.
        let room_id = p.room.clone();
        let mut affected = Vec::new();
        for &t in &p.published {
            if let Some(track) = self.tracks[t].take() {
                self.free_tracks.push(t);
                self.end_subscriptions(track.subscribers, &mut affected);
                // A waiting participant's tracks were never announced.
                if p.permissions.publish {
                    self.events.push_back(Event::TrackUnpublished {
                        room: room_id.clone(),
                        track: TrackInfo {
                            id: track.id,
                            kind: track.kind,
                            publisher: p.id.clone(),
                        },
                    });
                }
            }
        }
        // Only now, with every track of the leaver gone, describe the subscribers' new state.
        for sp in affected {
            if self.participants[sp].is_some() {
                self.renegotiate(sp);
            }
        }
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.participants.retain(|&m| m != idx);
            if room.speaker == Some(idx) {
                room.speaker = None;
            }
            if room.participants.is_empty() {
                self.rooms.remove(&room_id);
            }
        }
        self.free_participants.push(idx);
        self.events.push_back(Event::Disconnected {
            participant: p.id,
            reason,
        });
    }

    // ----- datagrams ----------------------------------------------------------------------

    /// One received datagram. `buf` is the worker's receive buffer and is decrypted in place.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        out: &mut TransmitBatch,
    ) {
        self.clock = Some(now);
        self.counters.packets_in += 1;
        self.counters.bytes_in += buf.len() as u64;
        match classify(buf) {
            PacketClass::Stun => self.handle_stun(now, from, buf, out),
            PacketClass::Dtls => match self.by_addr.get(&from) {
                Some(&idx) => self.handle_dtls(now, idx, buf, out),
                None => self.counters.dropped_unknown_source += 1,
            },
            PacketClass::Rtp => match self.by_addr.get(&from) {
                Some(&idx) => self.handle_rtp(now, idx, buf, out),
                None => self.counters.dropped_unknown_source += 1,
            },
            PacketClass::Rtcp => match self.by_addr.get(&from) {
                Some(&idx) => self.handle_rtcp(now, idx, buf, out),
                None => self.counters.dropped_unknown_source += 1,
            },
            PacketClass::Unknown => self.counters.dropped_malformed += 1,
        }
    }

    fn handle_stun(&mut self, now: Instant, from: SocketAddr, buf: &[u8], out: &mut TransmitBatch) {
        // Requests name the participant by ufrag; responses (to the agent's own checks) carry
        // no USERNAME and are matched by the address a request came from.
        let idx = match stun_username_ufrag(buf) {
            Some(ufrag) => self.by_ufrag.get(ufrag).copied(),
            None => self.by_stun_addr.get(&from).copied(),
        };
        let Some(idx) = idx else {
            self.counters.dropped_unknown_source += 1;
            return;
        };
        // Bounded: a participant has a handful of candidates; a flood of checks from new ports
        // (before their integrity is verified) must not grow the table.
        if self.participant(idx).stun_addrs.len() < MAX_STUN_ADDRS_PER_PARTICIPANT
            && let std::collections::hash_map::Entry::Vacant(e) = self.by_stun_addr.entry(from)
        {
            e.insert(idx);
            self.participant_mut(idx).stun_addrs.push(from);
        }
        self.participant_mut(idx)
            .transport
            .handle_stun(now, from, buf);
        self.drive_transport(now, idx, out);
    }

    fn handle_dtls(&mut self, now: Instant, idx: usize, buf: &[u8], out: &mut TransmitBatch) {
        if !self.participant_mut(idx).transport.handle_dtls(now, buf) {
            self.counters.dropped_malformed += 1;
        }
        self.drive_transport(now, idx, out);
        self.relay_data_messages(now, idx, out);
    }

    /// Sends what a transport queued and applies its events.
    fn drive_transport(&mut self, now: Instant, idx: usize, out: &mut TransmitBatch) {
        let mut closed = None;
        let mut secured = false;
        {
            let Some(p) = self.participants[idx].as_mut() else {
                return;
            };
            while let Some((dest, datagram)) = p.transport.poll_transmit() {
                out.push(dest, &datagram);
            }
            while let Some(event) = p.transport.poll_event() {
                match event {
                    TransportEvent::RemoteAddress(addr) => {
                        if let Some(old) = p.remote.replace(addr)
                            && self.by_addr.get(&old) == Some(&idx)
                        {
                            self.by_addr.remove(&old);
                        }
                        self.by_addr.insert(addr, idx);
                    }
                    TransportEvent::Secured { outbound, inbound } => {
                        p.outbound = Some(outbound);
                        p.inbound = Some(inbound);
                        secured = true;
                    }
                    TransportEvent::Closed(cause) => closed = Some(cause),
                }
            }
        }
        if secured {
            let p = self.participant_mut(idx);
            let participant = p.id.clone();
            self.events.push_back(Event::Connected { participant });
            self.request_keyframes_for(now, idx, out);
        }
        if let Some(cause) = closed {
            let reason = match cause {
                CloseCause::ConsentTimeout => DisconnectReason::ConsentTimeout,
                CloseCause::DtlsClosed | CloseCause::DtlsFailed => {
                    DisconnectReason::TransportClosed
                }
            };
            self.remove_participant(now, idx, reason, out);
        }
    }

    /// Messages a participant sent on its data channels go to the channels of the same label
    /// of everyone else in the room, under the same permissions as media.
    fn relay_data_messages(&mut self, now: Instant, idx: usize, out: &mut TransmitBatch) {
        loop {
            let Some(p) = self.participants[idx].as_mut() else {
                return;
            };
            self.counters.data_messages_dropped += p.transport.take_data_drops();
            let Some(msg) = p.transport.poll_data_message() else {
                return;
            };
            self.counters.data_messages_in += 1;
            if !p.permissions.publish {
                self.counters.dropped_blocked += 1;
                continue;
            }
            let room = p.room.clone();
            let members = self.room_members(&room);
            for m in members {
                if m == idx {
                    continue;
                }
                let Some(r) = self.participants[m].as_mut() else {
                    continue;
                };
                let sent = r.permissions.subscribe
                    && r.transport
                        .send_data(now, &msg.label, msg.binary, &msg.data);
                self.counters.data_messages_dropped += r.transport.take_data_drops();
                if sent {
                    self.counters.data_messages_out += 1;
                    self.drive_transport(now, m, out);
                }
            }
        }
    }

    fn handle_rtp(&mut self, now: Instant, idx: usize, buf: &mut [u8], out: &mut TransmitBatch) {
        let Some(p) = self.participants[idx].as_mut() else {
            return;
        };
        let Some(inbound_ctx) = p.inbound.as_deref() else {
            self.counters.dropped_not_ready += 1;
            return;
        };
        let Ok(header) = RtpHeader::parse(buf) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        // Which track, which of its layers, and which of the layer's streams (media or RTX).
        let mut found = None;
        for &t in &p.published {
            if let Some((layer, rtx)) = self.tracks[t]
                .as_ref()
                .and_then(|tr| tr.layer_of(header.ssrc))
            {
                found = Some((t, layer, rtx));
                break;
            }
        }
        // Set when this packet's MID (and RID) binds a new SSRC: undone unless the packet
        // authenticates, so a forged packet cannot claim a track.
        let mut bound_here = false;
        if found.is_none() {
            // An SSRC the SDP did not announce: bind it through the MID and RID extensions.
            if let Some(mid) = p.ext.mid.and_then(|id| header.extension_value(buf, id)) {
                for &t in &p.published {
                    if let Some(track) = self.tracks[t].as_mut()
                        && track.mid.as_bytes() == mid
                    {
                        let is_rtx = Some(header.payload_type) == track.codec.rtx_payload_type;
                        let rid_ext = if is_rtx {
                            p.ext.repaired_rid
                        } else {
                            p.ext.rid
                        };
                        let rid = rid_ext.and_then(|id| header.extension_value(buf, id));
                        let clock = track.codec.clock_rate;
                        if let Some(l) = track.layer_by_rid(rid) {
                            let layer = &mut track.layers[l];
                            if is_rtx && layer.rtx_ssrc.is_none() {
                                layer.bind_rtx_ssrc(header.ssrc, clock);
                                found = Some((t, l, true));
                                bound_here = true;
                            } else if !is_rtx && layer.ssrc.is_none() {
                                layer.bind_ssrc(header.ssrc, clock);
                                found = Some((t, l, false));
                                bound_here = true;
                            }
                        }
                        break;
                    }
                }
            }
        }
        let Some((t, l, is_rtx)) = found else {
            self.counters.dropped_unknown_ssrc += 1;
            return;
        };
        let Some(track) = self.tracks[t].as_mut() else {
            return;
        };
        let layer = &mut track.layers[l];
        let stream = if is_rtx {
            layer.rtx_inbound.as_mut()
        } else {
            layer.inbound.as_mut()
        };
        let Some(stream) = stream else {
            self.counters.dropped_unknown_ssrc += 1;
            return;
        };
        let ext = stream.extend(header.sequence_number);
        if stream.is_replay(ext) {
            self.counters.dropped_replay += 1;
            return;
        }
        let Ok(plain_len) = inbound_ctx.open_rtp(
            buf,
            header.header_len,
            header.ssrc,
            (ext >> 16) as u32,
            header.sequence_number,
        ) else {
            self.counters.dropped_auth += 1;
            if bound_here {
                layer.unbind(is_rtx);
            }
            return;
        };
        stream.record(now, ext, header.timestamp);
        if let Some(v) = p
            .ext
            .transport_cc
            .and_then(|id| header.extension_value(buf, id))
            && v.len() >= 2
        {
            p.twcc.record(u16::from_be_bytes([v[0], v[1]]), now);
        }
        let Ok((mut start, end)) = header.payload_range(plain_len, buf) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if !p.permissions.publish {
            // The waiting room: nothing leaves a participant who may not publish.
            self.counters.dropped_blocked += 1;
            return;
        }
        let media_ext = if is_rtx {
            if end < start + 2 {
                // Padding-only RTX (bandwidth probing) carries nothing to forward.
                return;
            }
            let osn = u16::from_be_bytes([buf[start], buf[start + 1]]);
            start += 2;
            let Some(media) = layer.inbound.as_mut() else {
                return;
            };
            let media_ext = media.extend(osn);
            if media.is_replay(media_ext) {
                self.counters.duplicate_repairs += 1;
                return;
            }
            media.record(now, media_ext, header.timestamp);
            self.counters.repairs_received += 1;
            media_ext
        } else {
            if start == end {
                return;
            }
            layer.last_packet_at = Some(now);
            ext
        };
        let audio_level = match (track.kind, p.ext.audio_level) {
            (MediaKind::Audio, Some(id)) => header
                .extension_value(buf, id)
                .and_then(|v| v.first().copied()),
            _ => None,
        };
        if let Some(level) = audio_level {
            let l = (level & 0x7f) as f32;
            track.audio_level = track.audio_level * 0.8 + l * 0.2;
        }
        let payload = &buf[start..end];
        let layer = &mut track.layers[l];
        layer.cache.insert(
            media_ext,
            header.timestamp,
            header.marker,
            audio_level,
            payload,
        );
        // A simulcast subscriber changes layer only where a picture can start.
        // Not at a repair: a late copy of an old keyframe would start the layer in the past.
        let simulcast = track.is_simulcast();
        let keyframe = simulcast && !is_rtx && track.format.starts_keyframe(payload);
        // Forward: rewrite and seal once per subscriber.
        let track = self.tracks[t].as_ref().expect("track");
        for &(s, sub_idx) in &track.subscribers {
            let Some(sub) = self.participants[s].as_mut() else {
                continue;
            };
            if !sub.permissions.subscribe {
                continue;
            }
            let (Some(ctx), Some(dest)) = (sub.outbound.as_deref(), sub.remote) else {
                continue;
            };
            let audio_ext = sub.ext.audio_level;
            let twcc_ext = sub.ext.transport_cc;
            let twcc_seq = sub.twcc_out_seq;
            let subscription = &mut sub.subscriptions[sub_idx];
            if !subscription.active || !subscription.negotiated {
                continue;
            }
            if subscription.layer != Some(l) {
                if simulcast && !(keyframe && subscription.target_layer == l) {
                    continue;
                }
                let out_ts = layer_switch_timestamp(track, subscription, l, header.timestamp, now);
                subscription.start_layer(l, media_ext, header.timestamp, out_ts);
                if simulcast {
                    self.counters.layer_switches += 1;
                }
            }
            let Some((out_ext, out_ts)) = subscription.map(now, media_ext, header.timestamp) else {
                continue;
            };
            let slot = out.slot();
            if payload.len() + 64 + SRTP_TAG_LEN > slot.len() {
                self.counters.dropped_malformed += 1;
                break;
            }
            let mut w = HeaderWriter::new(
                slot,
                header.marker,
                subscription.payload_type,
                out_ext as u16,
                out_ts,
                subscription.ssrc,
            );
            if let (Some(level), Some(id)) = (audio_level, audio_ext) {
                w.extension(id, &[level]);
            }
            if let Some(id) = twcc_ext {
                w.extension(id, &twcc_seq.to_be_bytes());
            }
            let hlen = w.finish();
            slot[hlen..hlen + payload.len()].copy_from_slice(payload);
            let len = hlen + payload.len();
            match ctx.seal_rtp(
                slot,
                len,
                hlen,
                subscription.ssrc,
                (out_ext >> 16) as u32,
                out_ext as u16,
            ) {
                Ok(n) => {
                    if twcc_ext.is_some() {
                        sub.twcc_out_seq = twcc_seq.wrapping_add(1);
                    }
                    let subscription = &mut sub.subscriptions[sub_idx];
                    subscription.packets = subscription.packets.wrapping_add(1);
                    subscription.octets = subscription.octets.wrapping_add(payload.len() as u32);
                    out.commit(dest, n);
                    self.counters.packets_out += 1;
                    self.counters.bytes_out += n as u64;
                }
                Err(_) => self.counters.seal_failures += 1,
            }
        }
    }

    fn handle_rtcp(&mut self, now: Instant, idx: usize, buf: &mut [u8], out: &mut TransmitBatch) {
        let Some(p) = self.participants[idx].as_mut() else {
            return;
        };
        let Some(ctx) = p.inbound.as_deref() else {
            self.counters.dropped_not_ready += 1;
            return;
        };
        // The index sits in the clear trailer: a replay is refused before any crypto.
        let Some(index) = crate::srtp_context::srtcp_index(buf) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        // Each sender SSRC counts its own SRTCP index (RFC 3711 §3.4).
        let sender_ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if p.srtcp_replay
            .get(&sender_ssrc)
            .is_some_and(|w| w.is_replay(index as u64))
        {
            self.counters.dropped_replay += 1;
            return;
        }
        let Ok((len, _)) = ctx.open_rtcp(buf) else {
            self.counters.dropped_auth += 1;
            return;
        };
        // Windows are made only for authenticated senders, and a session has a few.
        if p.srtcp_replay.len() < MAX_RTCP_SENDERS || p.srtcp_replay.contains_key(&sender_ssrc) {
            p.srtcp_replay
                .entry(sender_ssrc)
                .or_default()
                .accept(index as u64);
        }
        self.counters.rtcp_in += 1;
        let mut slice = &buf[..len];
        let Ok(packets) = rtc_rtcp::packet::unmarshal(&mut slice) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        use rtc_rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtc_rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtc_rtcp::receiver_report::ReceiverReport;
        use rtc_rtcp::sender_report::SenderReport;
        use rtc_rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        for packet in &packets {
            let any = packet.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.keyframe_for_subscription(now, idx, pli.media_ssrc, out);
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                for entry in &fir.fir {
                    self.keyframe_for_subscription(now, idx, entry.ssrc, out);
                }
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.retransmit(idx, nack, out);
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                self.relay_sender_report(now, idx, sr, out);
                for r in &sr.reports {
                    self.apply_loss_report(now, idx, r.ssrc, r.fraction_lost);
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for r in &rr.reports {
                    self.apply_loss_report(now, idx, r.ssrc, r.fraction_lost);
                }
            }
        }
    }

    fn keyframe_for_subscription(
        &mut self,
        now: Instant,
        idx: usize,
        media_ssrc: u32,
        out: &mut TransmitBatch,
    ) {
        let found = self
            .participant(idx)
            .subscriptions
            .iter()
            .position(|s| s.ssrc == media_ssrc && s.active);
        if let Some(s) = found {
            self.counters.keyframe_requests_in += 1;
            self.keyframe_for(now, idx, s, out);
        }
    }

    /// Asks the publishers of everything `idx` receives for a keyframe (throttled per layer).
    fn request_keyframes_for(&mut self, now: Instant, idx: usize, out: &mut TransmitBatch) {
        for s in 0..self.participant(idx).subscriptions.len() {
            if self.participant(idx).subscriptions[s].active {
                self.keyframe_for(now, idx, s, out);
            }
        }
    }

    /// A keyframe for subscription `s` of participant `idx`: of the layer it forwards, or of
    /// the one it is switching to.
    fn keyframe_for(&mut self, now: Instant, idx: usize, s: usize, out: &mut TransmitBatch) {
        let subscription = &self.participant(idx).subscriptions[s];
        let t = subscription.track;
        let Some(track) = self.tracks[t].as_ref() else {
            return;
        };
        let layer = subscription.target_layer.min(track.layers.len() - 1);
        self.request_keyframe(now, t, layer, out);
    }

    /// Keyframes of every layer of track `t` that a subscriber forwards or switches to.
    fn request_track_keyframes(&mut self, now: Instant, t: usize, out: &mut TransmitBatch) {
        let Some(track) = self.tracks[t].as_ref() else {
            return;
        };
        let top = track.layers.len() - 1;
        let mut wanted = 0u8;
        for &(sp, si) in &track.subscribers {
            if let Some(sub) = self.participants[sp].as_ref() {
                wanted |= 1 << sub.subscriptions[si].target_layer.min(top);
            }
        }
        if !track.is_simulcast() {
            wanted = 1;
        }
        for layer in 0..=top {
            if wanted & (1 << layer) != 0 {
                self.request_keyframe(now, t, layer, out);
            }
        }
    }

    /// Sends a PLI for one layer of a track to its publisher unless one went out within the
    /// throttle interval.
    fn request_keyframe(&mut self, now: Instant, t: usize, layer: usize, out: &mut TransmitBatch) {
        let throttle = self.config.keyframe_throttle;
        let Some(track) = self.tracks[t].as_mut() else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        let publisher = track.publisher;
        let Some(layer) = track.layers.get_mut(layer) else {
            return;
        };
        let Some(ssrc) = layer.ssrc else {
            return;
        };
        if layer
            .last_keyframe_request
            .is_some_and(|last| now < last + throttle)
        {
            self.counters.keyframe_requests_throttled += 1;
            layer.keyframe_pending = true;
            return;
        }
        layer.last_keyframe_request = Some(now);
        layer.keyframe_pending = false;
        let n = rtcp_writer::pli(&mut self.rtcp_scratch, ssrc);
        if self.send_rtcp(publisher, n, out) {
            self.counters.keyframe_requests_out += 1;
        }
    }

    /// Seals `rtcp_scratch[..len]` for participant `idx` and queues it.
    fn send_rtcp(&mut self, idx: usize, len: usize, out: &mut TransmitBatch) -> bool {
        let Some(p) = self.participants[idx].as_mut() else {
            return false;
        };
        let index = p.next_srtcp_index();
        let Some((ctx, dest)) = p.sendable() else {
            return false;
        };
        if len + SRTCP_TRAILER_LEN > SLOT_SIZE {
            return false;
        }
        let slot = out.slot();
        slot[..len].copy_from_slice(&self.rtcp_scratch[..len]);
        match ctx.seal_rtcp(slot, len, index) {
            Ok(n) => {
                out.commit(dest, n);
                self.counters.rtcp_out += 1;
                true
            }
            Err(_) => false,
        }
    }

    fn retransmit(
        &mut self,
        idx: usize,
        nack: &rtc_rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack,
        out: &mut TransmitBatch,
    ) {
        let max = self.config.max_resends_per_packet;
        let Some(sub) = self.participants[idx].as_mut() else {
            return;
        };
        let Some(s) = sub
            .subscriptions
            .iter()
            .position(|s| s.ssrc == nack.media_ssrc && s.active)
        else {
            return;
        };
        let (Some(ctx), Some(dest)) = (sub.outbound.as_deref(), sub.remote) else {
            return;
        };
        let twcc_ext = sub.ext.transport_cc;
        let subscription = &mut sub.subscriptions[s];
        // Only as RTX: resending on the media SSRC would seal a different header under the same
        // SRTP nonce as the original (RFC 7714 forbids nonce reuse).
        let Some(rtx_pt) = subscription.rtx_payload_type else {
            self.counters.nacks_unrepairable += nack
                .nacks
                .iter()
                .map(|p| p.packet_list().len() as u64)
                .sum::<u64>();
            return;
        };
        // Repairs come from the layer being forwarded; NACKs from before a switch map to none.
        let Some(layer) = subscription.layer else {
            return;
        };
        let Some(track) = self.tracks[subscription.track].as_mut() else {
            return;
        };
        let cache = &mut track.layers[layer].cache;
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                self.counters.nacks_in += 1;
                let Some(in_ext) = subscription.unmap(seq) else {
                    continue;
                };
                let Some((meta, payload)) = cache.take_for_resend(in_ext, max) else {
                    self.counters.nacks_unrepairable += 1;
                    continue;
                };
                let out_ext = (in_ext as i64 + subscription.seq_delta.unwrap_or(0)) as u64;
                let out_ts = meta.timestamp.wrapping_add(subscription.ts_delta);
                let slot = out.slot();
                subscription.rtx_ext_seq += 1;
                let (ssrc, seq_ext, pt) = (subscription.rtx_ssrc, subscription.rtx_ext_seq, rtx_pt);
                let mut w = HeaderWriter::new(slot, meta.marker, pt, seq_ext as u16, out_ts, ssrc);
                if let Some(id) = twcc_ext {
                    w.extension(id, &sub.twcc_out_seq.to_be_bytes());
                    sub.twcc_out_seq = sub.twcc_out_seq.wrapping_add(1);
                }
                let hlen = w.finish();
                // RTX payload: the original sequence number, then the original payload.
                slot[hlen..hlen + 2].copy_from_slice(&(out_ext as u16).to_be_bytes());
                let mut len = hlen + 2;
                slot[len..len + payload.len()].copy_from_slice(payload);
                len += payload.len();
                if let Ok(n) = ctx.seal_rtp(
                    slot,
                    len,
                    hlen,
                    ssrc,
                    (seq_ext >> 16) as u32,
                    seq_ext as u16,
                ) {
                    out.commit(dest, n);
                    self.counters.retransmissions_out += 1;
                    self.counters.packets_out += 1;
                    self.counters.bytes_out += n as u64;
                }
            }
        }
    }

    /// Publisher SRs are translated per subscriber so lip sync survives the rewrite.
    fn relay_sender_report(
        &mut self,
        now: Instant,
        idx: usize,
        sr: &rtc_rtcp::sender_report::SenderReport,
        out: &mut TransmitBatch,
    ) {
        if !self.participant(idx).permissions.publish {
            return;
        }
        let published = self.participant(idx).published.clone();
        let Some((t, l)) = published.into_iter().find_map(|t| {
            let (l, rtx) = self.tracks[t].as_ref()?.layer_of(sr.ssrc)?;
            (!rtx).then_some((t, l))
        }) else {
            return;
        };
        let subscribers = {
            let track = self.tracks[t].as_mut().expect("track");
            let layer = &mut track.layers[l];
            layer.sender_report = Some((sr.ntp_time, sr.rtp_time));
            if let Some(inb) = layer.inbound.as_mut() {
                inb.last_sr = Some(((sr.ntp_time >> 16) as u32, now));
            }
            track.subscribers.clone()
        };
        for (s, sub_idx) in subscribers {
            let Some(sub) = self.participants[s].as_ref() else {
                continue;
            };
            // Only the forwarded layer's report describes what the subscriber receives.
            let subscription = &sub.subscriptions[sub_idx];
            if subscription.layer != Some(l) || !subscription.active {
                continue;
            }
            let n = rtcp_writer::sender_report(
                &mut self.rtcp_scratch,
                subscription.ssrc,
                sr.ntp_time,
                sr.rtp_time.wrapping_add(subscription.ts_delta),
                subscription.packets,
                subscription.octets,
            );
            self.send_rtcp(s, n, out);
        }
    }

    // ----- time ---------------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant, out: &mut TransmitBatch) {
        if self.next_tick.is_some_and(|t| now < t) {
            return;
        }
        self.next_tick = Some(now + self.config.tick);
        self.clock = Some(now);
        // SFU offers the browser never answered (it may have failed to apply one).
        for idx in 0..self.participants.len() {
            let overdue = self.participants[idx].as_ref().is_some_and(|p| {
                p.awaiting_answer && p.offer_sent_at.is_some_and(|t| now >= t + OFFER_TIMEOUT)
            });
            if overdue {
                let p = self.participant_mut(idx);
                p.awaiting_answer = false;
                self.renegotiate(idx);
            }
        }
        // Keyframe requests held back by the throttle.
        for t in 0..self.tracks.len() {
            let layers = self.tracks[t]
                .as_ref()
                .map_or(0, |track| track.layers.len());
            for l in 0..layers {
                let due = self.tracks[t].as_ref().is_some_and(|track| {
                    let layer = &track.layers[l];
                    layer.keyframe_pending
                        && layer
                            .last_keyframe_request
                            .is_none_or(|last| now >= last + self.config.keyframe_throttle)
                });
                if due {
                    self.request_keyframe(now, t, l, out);
                }
            }
        }
        // Transports: ICE consent, DTLS retransmission.
        for idx in 0..self.participants.len() {
            let due = match self.participants[idx].as_mut() {
                Some(p) => p.transport.poll_timeout().is_some_and(|t| t <= now),
                None => false,
            };
            if due {
                self.participant_mut(idx).transport.handle_timeout(now);
                self.drive_transport(now, idx, out);
            }
        }
        // NACKs and keyframe requests toward publishers.
        for (t, l) in
            (0..self.tracks.len()).flat_map(|t| (0..MAX_SIMULCAST_LAYERS).map(move |l| (t, l)))
        {
            let mut needs_keyframe = false;
            let (publisher, ssrc) = {
                let Some(track) = self.tracks[t].as_mut() else {
                    continue;
                };
                let kind = track.kind;
                let publisher = track.publisher;
                let Some(inbound) = track.layers.get_mut(l).and_then(|l| l.inbound.as_mut()) else {
                    continue;
                };
                self.nack_scratch.clear();
                if kind == MediaKind::Video {
                    inbound.due_nacks(
                        now,
                        self.config.nack_interval,
                        self.config.nack_max_tries,
                        &mut self.nack_scratch,
                    );
                }
                if inbound.needs_keyframe {
                    inbound.needs_keyframe = false;
                    needs_keyframe = true;
                }
                (publisher, inbound.ssrc)
            };
            if !self.nack_scratch.is_empty() {
                let n = rtcp_writer::nack(&mut self.rtcp_scratch, ssrc, &self.nack_scratch);
                if n > 0 && self.send_rtcp(publisher, n, out) {
                    self.counters.nacks_out += self.nack_scratch.len() as u64;
                }
            }
            if needs_keyframe {
                self.request_keyframe(now, t, l, out);
            }
        }
        if self.next_twcc.is_none_or(|t| now >= t) {
            self.next_twcc = Some(now + self.config.twcc_interval);
            self.send_twcc_feedback(out);
        }
        if self.next_report.is_none_or(|t| now >= t) {
            self.next_report = Some(now + self.config.report_interval);
            self.send_receiver_reports(now, out);
        }
        if self.next_layer_check.is_none_or(|t| now >= t) {
            self.next_layer_check = Some(now + LAYER_CHECK_INTERVAL);
            self.select_layers(now, None, out);
        }
        if self.next_speaker.is_none_or(|t| now >= t) {
            self.next_speaker = Some(now + self.config.speaker_interval);
            self.update_speakers();
        }
    }

    /// Transport-wide feedback to every publisher whose packets arrived since the last one.
    fn send_twcc_feedback(&mut self, out: &mut TransmitBatch) {
        for idx in 0..self.participants.len() {
            let media_ssrc = {
                let Some(p) = self.participants[idx].as_ref() else {
                    continue;
                };
                if !p.twcc.has_pending() {
                    continue;
                }
                p.published
                    .iter()
                    .find_map(|&t| self.tracks[t].as_ref().and_then(Track::any_ssrc))
                    .unwrap_or(0)
            };
            // A long silence may leave more than one message's worth.
            for _ in 0..4 {
                let Some(p) = self.participants[idx].as_mut() else {
                    break;
                };
                let Some(n) = p.twcc.write_feedback(
                    &mut self.rtcp_scratch,
                    rtcp_writer::SFU_RTCP_SSRC,
                    media_ssrc,
                ) else {
                    break;
                };
                if self.send_rtcp(idx, n, out) {
                    self.counters.twcc_feedback_out += 1;
                }
            }
        }
    }

    fn send_receiver_reports(&mut self, now: Instant, out: &mut TransmitBatch) {
        for (t, l) in
            (0..self.tracks.len()).flat_map(|t| (0..MAX_SIMULCAST_LAYERS).map(move |l| (t, l)))
        {
            let Some(track) = self.tracks[t].as_mut() else {
                continue;
            };
            let publisher = track.publisher;
            let Some(inbound) = track.layers.get_mut(l).and_then(|l| l.inbound.as_mut()) else {
                continue;
            };
            let Some(highest) = inbound.highest() else {
                continue;
            };
            let (fraction_lost, total_lost) = inbound.report_loss();
            let (last_sr, dlsr) = match inbound.last_sr {
                Some((mid, at)) => {
                    let d = now.duration_since(at);
                    (mid, (d.as_secs_f64() * 65536.0) as u32)
                }
                None => (0, 0),
            };
            let block = ReportBlock {
                ssrc: inbound.ssrc,
                fraction_lost,
                total_lost,
                highest_ext_seq: highest as u32,
                jitter: inbound.jitter(),
                last_sr,
                delay_since_last_sr: dlsr,
            };
            let n = rtcp_writer::receiver_report(&mut self.rtcp_scratch, &block);
            self.send_rtcp(publisher, n, out);
        }
    }

    /// Re-chooses the layer of every simulcast subscription (of one participant, or of all):
    /// the highest its subscriber wants, its link carries and its publisher sends. A change,
    /// or a switch still waiting for its keyframe, asks for a keyframe of the new layer.
    fn select_layers(&mut self, now: Instant, only: Option<usize>, out: &mut TransmitBatch) {
        let participants = match only {
            Some(idx) => idx..idx + 1,
            None => 0..self.participants.len(),
        };
        for idx in participants {
            let count = self.participants[idx]
                .as_ref()
                .map_or(0, |p| p.subscriptions.len());
            for s in 0..count {
                let sub = &self.participant(idx).subscriptions[s];
                if !sub.active || !sub.negotiated {
                    continue;
                }
                let Some(track) = self.tracks[sub.track].as_ref() else {
                    continue;
                };
                if !track.is_simulcast() {
                    continue;
                }
                let want = track.choose_layer(sub.layer_limit(track.layers.len()), now);
                let t = sub.track;
                let behind = sub.layer != Some(want);
                self.participant_mut(idx).subscriptions[s].target_layer = want;
                if behind {
                    self.request_keyframe(now, t, want, out);
                }
            }
        }
    }

    /// A subscriber's report on a simulcast stream: sustained loss lowers its layer limit one
    /// step below what it receives; a clean link raises it a step at a time.
    fn apply_loss_report(&mut self, now: Instant, idx: usize, ssrc: u32, fraction_lost: u8) {
        let Some(p) = self.participants[idx].as_mut() else {
            return;
        };
        let Some(sub) = p
            .subscriptions
            .iter_mut()
            .find(|s| s.ssrc == ssrc && s.active)
        else {
            return;
        };
        let Some(track) = self.tracks[sub.track].as_ref() else {
            return;
        };
        let (Some(current), true) = (sub.layer, track.is_simulcast()) else {
            return;
        };
        let top = track.layers.len() - 1;
        if fraction_lost > LOSS_CLEAR {
            sub.clean_since = None;
        } else if sub.clean_since.is_none() {
            sub.clean_since = Some(now);
        }
        if fraction_lost >= LOSS_DOWNGRADE {
            sub.lossy_reports = sub.lossy_reports.saturating_add(1);
            // Sustained: two reports in a row (about two seconds), not one bad burst.
            if sub.lossy_reports >= 2 && current > 0 && sub.loss_cap > current - 1 {
                sub.loss_cap = current - 1;
                self.counters.layer_loss_downgrades += 1;
            }
        } else {
            sub.lossy_reports = 0;
        }
        // Up a step after a clean stretch, and the next step after another one.
        if sub.loss_cap < top
            && let Some(since) = sub.clean_since
            && now >= since + LOSS_RECOVERY
        {
            sub.loss_cap += 1;
            sub.clean_since = Some(now);
            if sub.loss_cap >= top {
                sub.loss_cap = usize::MAX;
            }
        }
    }

    /// Loudest smoothed audio level per room; an event when it changes hands.
    fn update_speakers(&mut self) {
        const SPEAKING_BELOW_DBOV: f32 = 60.0;
        let mut changes = Vec::new();
        for (room_id, room) in &mut self.rooms {
            let mut best: Option<(usize, f32)> = None;
            for &m in &room.participants {
                let Some(p) = self.participants[m].as_ref() else {
                    continue;
                };
                if !p.permissions.publish {
                    continue;
                }
                for &t in &p.published {
                    if let Some(track) = self.tracks[t].as_ref()
                        && track.kind == MediaKind::Audio
                        && track.audio_level < SPEAKING_BELOW_DBOV
                        && best.is_none_or(|(_, l)| track.audio_level < l)
                    {
                        best = Some((m, track.audio_level));
                    }
                }
            }
            if let Some((m, _)) = best
                && room.speaker != Some(m)
            {
                room.speaker = Some(m);
                if let Some(p) = self.participants[m].as_ref() {
                    changes.push((room_id.clone(), p.id.clone()));
                }
            }
        }
        for (room, participant) in changes {
            self.events
                .push_back(Event::ActiveSpeaker { room, participant });
        }
    }
}

/// The outgoing timestamp for the first packet of `to` on a subscription switching layers:
/// the packet's capture time on the old layer's clock when both layers' sender reports say it
/// (lip sync survives), else the last sent timestamp advanced by the time since it was sent.
fn layer_switch_timestamp(
    track: &Track,
    subscription: &Subscription,
    to: usize,
    in_ts: u32,
    now: Instant,
) -> u32 {
    let (Some(from), Some(sent_at)) = (subscription.layer, subscription.last_out_at) else {
        // The stream's first packet: its timestamp is the stream's random origin.
        return 0;
    };
    let clock = track.codec.clock_rate;
    let elapsed = now.saturating_duration_since(sent_at).as_secs_f64() * clock as f64;
    let by_arrival = subscription
        .last_out_ts
        .wrapping_add((elapsed as u32).max(1));
    if let Some(on_from) = track.timestamp_on_layer(to, in_ts, from) {
        let out = on_from.wrapping_add(subscription.ts_delta);
        let ahead = out.wrapping_sub(subscription.last_out_ts) as i32;
        let off_arrival = out.wrapping_sub(by_arrival) as i32;
        // Reports half a second away from what the arrival times say are stale or wrong.
        if off_arrival.unsigned_abs() < clock / 2 {
            // The same capture instant as the last frame sent (a switch within one frame)
            // still needs a later timestamp: a decoder takes an equal one for the same frame.
            return if ahead > 0 {
                out
            } else {
                subscription.last_out_ts.wrapping_add(1)
            };
        }
    }
    by_arrival
}
