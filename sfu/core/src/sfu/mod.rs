//! The SFU state machine of one worker: every room, participant, track and subscription the
//! worker owns, driven by datagrams, commands and time.
//!
//! Run loop contract (the I/O layer's side): name a received batch to [`Sfu::prefetch_batch`]
//! (optional: it only asks for cache lines), feed each datagram to [`Sfu::handle_datagram`],
//! commands to [`Sfu::handle_command`], call [`Sfu::handle_timeout`] when [`Sfu::poll_timeout`]
//! passes, send what each call left in the [`TransmitBatch`], and drain [`Sfu::poll_event`].

use crate::arena::{Arena, ParticipantIdx, TrackIdx};
use crate::counters::Counters;
use crate::deadline_queue::DeadlineQueue;
use crate::participant::Participant;
use crate::peer_transport::TransportConfig;
use crate::track::Track;
use crate::transmit_batch::{SLOT_SIZE, TransmitBatch};
use rustc_hash::FxHashMap;
use sfu_proto::{Command, DisconnectReason, Event, ParticipantId, RoomId};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod access;
mod batch_prefetch;
mod connectivity;
mod dynacast;
mod egress;
mod feedback;
mod ingress;
mod layers;
mod negotiation;
mod registry;
mod speakers;
mod timers;

pub use dynacast::DYNACAST_HOLD;

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
    /// Choose subscribers' layers by their bandwidth estimate (transport-wide feedback, with
    /// probing); `false` keeps the older selection by receiver-reported loss alone (for
    /// comparison).
    pub bandwidth_estimation: bool,
    /// The estimate a subscriber starts with, before its feedback says otherwise.
    pub start_bitrate_bps: u64,
    /// Below this estimate a subscriber gets audio only (its video pauses, with an event),
    /// whatever its video would cost.
    pub video_floor_bps: u64,
    /// Tell publishers to stop encoding simulcast layers nobody needs (and to encode them
    /// again when someone does).
    pub dynacast: bool,
    /// Pace video to a subscriber whose estimate binds (with `bandwidth_estimation`).
    pub pacing: bool,
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
            bandwidth_estimation: true,
            start_bitrate_bps: 1_500_000,
            video_floor_bps: 100_000,
            dynacast: true,
            pacing: true,
        }
    }
}

/// One participant's downlink as the bandwidth estimation sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DownlinkStats {
    /// What may be sent to it, bits per second.
    pub estimate_bps: u64,
    /// What it received lately, as its feedback says.
    pub acked_bps: Option<u64>,
    /// What its subscriptions were given, and what they would take unconstrained.
    pub allocated_bps: u64,
    pub desired_bps: u64,
    /// Loss its feedback reported over the last half second (0–1).
    pub loss_fraction: f64,
}

#[derive(Debug, Default)]
struct Room {
    participants: Vec<ParticipantIdx>,
    speaker: Option<ParticipantIdx>,
}

/// m-lines one participant's session may hold (its own and the SFU's together).
pub const MAX_LINES_PER_PARTICIPANT: usize = 64;
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
/// Offers sent for one change before the SFU gives up on the client answering (it reports
/// `CommandFailed` for `offer`; the client is expected to start a new session).
const MAX_OFFER_ATTEMPTS: u8 = 3;

/// A session's own ICE checks remembered for routing their answers (a few retries to each of
/// a few addresses).
const MAX_ROUTED_PROBES: usize = 8;
/// Sessions remembered per checked address (a forged nomination makes the SFU check an
/// address for a session it is not; it takes one session, with a token, per slot).
const MAX_SESSIONS_PER_PROBED_ADDR: usize = 4;
/// DTLS handshake datagrams kept per session while their address is proven, and their
/// bytes in all: a ClientHello is one datagram of a few hundred bytes, or two with large
/// (post-quantum) key shares.
const MAX_EARLY_DTLS: usize = 4;
const MAX_EARLY_DTLS_BYTES: usize = 4096;

/// RTCP sender SSRCs tracked for replay per participant: a browser uses one per stream, and
/// a session holds at most 64 m-lines, each with its media and repair streams.
const MAX_RTCP_SENDERS: usize = 2 * MAX_LINES_PER_PARTICIPANT;

pub struct Sfu {
    config: SfuConfig,
    rooms: HashMap<RoomId, Room>,
    participants: Arena<ParticipantIdx, Participant>,
    tracks: Arena<TrackIdx, Track>,
    by_id: FxHashMap<ParticipantId, ParticipantIdx>,
    by_ufrag: FxHashMap<String, ParticipantIdx>,
    /// Looked up for every datagram: a fast hash. Keys are only inserted for addresses ICE
    /// verified, so flooding cannot target collisions.
    by_addr: FxHashMap<SocketAddr, ParticipantIdx>,
    /// The session each of the sessions' own checks belongs to, by transaction id: their
    /// answers carry no USERNAME, and the address they come from proves nothing (any session
    /// can have the SFU check any address, by nominating it from a forged source).
    by_probe_txn: FxHashMap<[u8; 12], ParticipantIdx>,
    /// The sessions that sent a check to an address, the latest last: early DTLS from there
    /// is held for those proving it (see `Participant::early_dtls`).
    by_probe_addr: FxHashMap<SocketAddr, Vec<ParticipantIdx>>,
    events: VecDeque<Event>,
    pub counters: Counters,
    next_tick: Option<Instant>,
    next_layer_check: Option<Instant>,
    /// Which share of the published tracks gets receiver reports this tick.
    report_phase: usize,
    /// Which share of the participants gets transport-wide feedback this tick.
    twcc_phase: usize,
    next_speaker: Option<Instant>,
    /// The latest `now` seen, for bookkeeping in paths that take no time argument.
    clock: Option<Instant>,
    nack_scratch: Vec<u16>,
    rtcp_scratch: Vec<u8>,
    ssrc_seed: u32,
    /// Layers with work for the timer (packets to NACK, a keyframe to ask for): the tick
    /// visits these, not every layer of every track.
    repair_list: Vec<(TrackIdx, usize)>,
    /// When each participant's transport next has timer work (ICE consent, DTLS
    /// retransmission, SCTP), and when each SFU offer times out: the tick takes the ones due
    /// rather than asking every participant.
    transport_deadlines: DeadlineQueue<ParticipantIdx>,
    offer_deadlines: DeadlineQueue<ParticipantIdx>,
    /// Participants with packets in their pacer or a probe in flight.
    pacing_list: Vec<ParticipantIdx>,
    /// The transports due in one pass (kept for its allocation).
    due_scratch: Vec<ParticipantIdx>,
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
            participants: Arena::default(),
            tracks: Arena::default(),
            by_id: FxHashMap::default(),
            by_probe_txn: FxHashMap::default(),
            by_probe_addr: FxHashMap::default(),
            by_ufrag: FxHashMap::default(),
            by_addr: FxHashMap::default(),
            events: VecDeque::new(),
            counters: Counters::default(),
            next_tick: None,
            next_layer_check: None,
            report_phase: 0,
            twcc_phase: 0,
            next_speaker: None,
            clock: None,
            nack_scratch: Vec::with_capacity(64),
            rtcp_scratch: vec![0; SLOT_SIZE],
            // xorshift never leaves zero.
            ssrc_seed: rand::random::<u32>() | 1,
            repair_list: Vec::new(),
            transport_deadlines: DeadlineQueue::default(),
            offer_deadlines: DeadlineQueue::default(),
            pacing_list: Vec::new(),
            due_scratch: Vec::new(),
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

    /// What the bandwidth estimation knows of the path toward `id` (`None` before its first
    /// transport-wide feedback, or for an unknown participant).
    pub fn downlink_stats(&self, id: &ParticipantId) -> Option<DownlinkStats> {
        Self::stats_of(self.participants[*self.by_id.get(id)?].as_ref()?)
    }

    /// Every participant's downlink that has an estimate (for metrics).
    pub fn downlinks(&self) -> impl Iterator<Item = DownlinkStats> + '_ {
        self.participants
            .indices()
            .filter_map(|i| Self::stats_of(self.participants[i].as_ref()?))
    }

    fn stats_of(p: &Participant) -> Option<DownlinkStats> {
        let estimator = p.downlink.estimator.as_ref()?;
        Some(DownlinkStats {
            estimate_bps: estimator.estimate_bps(),
            acked_bps: estimator.acked_bps(),
            allocated_bps: p.downlink.allocated_bps,
            desired_bps: p.downlink.desired_bps,
            loss_fraction: estimator.loss_fraction,
        })
    }

    /// What participant `idx`'s client is shown of its link.
    fn link_report(&self, idx: ParticipantIdx) -> sfu_proto::LinkReport {
        let p = self.participant(idx);
        let stats = Self::stats_of(p);
        let videos = p
            .subscriptions
            .iter()
            .filter(|s| s.is_live() && s.kind == sfu_proto::MediaKind::Video)
            .filter_map(|s| {
                let track = self.tracks[s.track].as_ref()?;
                let layers = track.layers.len();
                Some(sfu_proto::VideoReport {
                    publisher: self.participants[track.publisher].as_ref()?.id.clone(),
                    mid: s.mid.clone(),
                    layer: s.layer.map(|l| l as u8),
                    target: (s.target_layer < layers).then_some(s.target_layer as u8),
                    layers: layers as u8,
                    paused: s.flow == crate::subscription::Flow::Paused,
                    temporal: (s.temporal.target() != crate::temporal_filter::ALL_TEMPORAL)
                        .then(|| s.temporal.target()),
                })
            })
            .collect();
        sfu_proto::LinkReport {
            estimate_bps: stats.map(|s| s.estimate_bps),
            allocated_bps: stats.map_or(0, |s| s.allocated_bps),
            desired_bps: stats.map_or(0, |s| s.desired_bps),
            loss: stats.map_or(0.0, |s| s.loss_fraction as f32),
            videos,
        }
    }

    /// Participant slots held, taken and free: the most ever present at once (a leaver's slot
    /// goes to the next to join), not all who came.
    pub fn participant_slots(&self) -> usize {
        self.participants.indices().count()
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

    // ----- commands -----------------------------------------------------------------------

    pub fn handle_command(&mut self, now: Instant, command: Command, out: &mut TransmitBatch) {
        self.clock = Some(now);
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.config.tick);
        }
        let participant = command.participant().cloned();
        let name = command.name();
        let session = command.session();
        let result = match command {
            Command::AddParticipant {
                room,
                participant,
                offer_sdp,
                permissions,
                session,
            } => self.add_participant(now, room, participant, session, &offer_sdp, permissions),
            Command::Answer {
                participant,
                answer_sdp,
            } => self.apply_answer(now, &participant, &answer_sdp, out),
            Command::RejectOffer { participant } => self.reject_offer(&participant),
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
            } => self.lookup(&participant).and_then(|idx| {
                let p = self.participant_mut(idx);
                if let Some(m) = &mid
                    && !p.subscriptions.iter().any(|s| s.mid == *m)
                {
                    return Err(format!("no m-line with mid {m:?} receives video"));
                }
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
                Ok(())
            }),
            Command::ReportLink { participant } => self.lookup(&participant).map(|idx| {
                let report = self.link_report(idx);
                self.events.push_back(Event::LinkReport {
                    participant: participant.clone(),
                    report,
                });
            }),
        };
        if let Err(error) = result {
            self.events.push_back(Event::CommandFailed {
                command: name.to_owned(),
                participant,
                error,
                session,
            });
        }
    }
}
