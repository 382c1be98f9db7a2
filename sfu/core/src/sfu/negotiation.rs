//! SDP offers and answers: a participant's session from its first offer, the lines it
//! publishes on, the SFU's own offers (with m-line recycling) and the answers to them.

use super::*;
use crate::codec::CodecParams;
use crate::downlink::Downlink;
use crate::local_description::{
    self, EXT_AUDIO_LEVEL, EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TRANSPORT_CC, LineContent,
    LineSpec, SdpKind, SendSource, TransportSpec,
};
use crate::participant::{
    ExtIds, LineRole, MediaLine, Participant, remember_extmap, remember_format,
};
use crate::peer_transport::PeerTransport;
use crate::remote_description::{RemoteDescription, SdpError};
use crate::ssrc_routes::SsrcRoutes;
use crate::token_bucket::{
    FEEDBACK_STATUSES_BURST, FEEDBACK_STATUSES_PER_SECOND, NACKED_BURST, NACKED_PER_SECOND,
    RTCP_DATAGRAMS_BURST, RTCP_DATAGRAMS_PER_SECOND, STUN_BUDGET_RENEWAL,
    STUN_CHECKS_BEFORE_RESTART_BURST, STUN_CHECKS_BEFORE_RESTART_PER_SECOND, STUN_CHECKS_BURST,
    STUN_CHECKS_PER_SECOND, TokenBucket,
};
use crate::track::Track;
use crate::transmit_batch::TransmitBatch;
use crate::twcc_feedback::TwccRecorder;
use sfu_proto::{Event, MediaKind, ParticipantId, Permissions, RoomId, TrackId, VideoLayer};
use std::collections::HashMap;
use std::time::Instant;

impl Sfu {
    pub(super) fn add_participant(
        &mut self,
        now: Instant,
        room: RoomId,
        id: ParticipantId,
        session: u32,
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
            session,
            room: room.clone(),
            transport,
            outbound: None,
            inbound: None,
            remote: None,
            permissions,
            lines: Vec::new(),
            ext: ExtIds::default(),
            offered_extmaps: Vec::new(),
            offered_formats: Vec::new(),
            data_budget: crate::token_bucket::RelayBudget::data(),
            audio_budget: crate::token_bucket::RelayBudget::audio(),
            stun_budget: TokenBucket::new(STUN_CHECKS_PER_SECOND, STUN_CHECKS_BURST),
            stun_budget_before_restart: TokenBucket::new(
                STUN_CHECKS_BEFORE_RESTART_PER_SECOND,
                STUN_CHECKS_BEFORE_RESTART_BURST,
            ),
            stun_budget_renewed_at: None,
            nack_budget: TokenBucket::new(NACKED_PER_SECOND, NACKED_BURST),
            rtcp_budget: TokenBucket::new(RTCP_DATAGRAMS_PER_SECOND, RTCP_DATAGRAMS_BURST),
            feedback_budget: TokenBucket::new(
                FEEDBACK_STATUSES_PER_SECOND,
                FEEDBACK_STATUSES_BURST,
            ),
            published: Vec::new(),
            ssrc_routes: SsrcRoutes::default(),
            subscriptions: Vec::new(),
            srtcp_index: 0,
            srtcp_replay: HashMap::new(),
            awaiting_answer: false,
            offer_sent_at: None,
            offer_attempts: 0,
            renegotiation_pending: false,
            sdp_session_id: u64::from(self.new_ssrc()) << 16,
            sdp_version: 1,
            next_mid: 0,
            ufrags: vec![ufrag.clone()],
            probes: Vec::new(),
            twcc: TwccRecorder::new(now),
            twcc_out_seq: 0,
            downlink: Downlink::new(now),
            pacing_listed: false,
            preferred_layer: VideoLayer::High,
            early_dtls: None,
        };
        let idx = self.participants.insert(participant);
        self.by_id.insert(id, idx);
        self.by_ufrag.insert(ufrag, idx);
        self.rooms.entry(room).or_default().participants.push(idx);
        self.schedule_transport(idx);

        let new_tracks = self.negotiate_offer(idx, &offer);
        self.answer(idx);
        self.on_tracks_published(idx, &new_tracks);
        // The newcomer receives what the room already publishes.
        self.subscribe_to_room(idx);
        Ok(())
    }

    /// Applies a client offer's m-lines: new sending lines become published tracks.
    pub(super) fn negotiate_offer(
        &mut self,
        idx: ParticipantIdx,
        offer: &RemoteDescription,
    ) -> Vec<TrackIdx> {
        let mut new_tracks = Vec::new();
        {
            let p = self.participant_mut(idx);
            for (id, uri) in offer.media.iter().flat_map(|m| m.extmaps.iter()) {
                remember_extmap(&mut p.offered_extmaps, *id, uri);
            }
            for codec in offer.media.iter().flat_map(|m| m.codecs.iter()) {
                remember_format(&mut p.offered_formats, codec);
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
                self.participant_mut(idx).lines[li].offered_extensions =
                    m.extmaps.iter().map(|(_, uri)| uri.clone()).collect();
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
                // Echoed as offered: its own media, protocol and formats.
                _ => LineRole::Rejected {
                    media: m.media.clone(),
                    proto: m.proto.clone(),
                    formats: if m.formats.is_empty() {
                        vec!["0".into()]
                    } else {
                        m.formats.clone()
                    },
                    rtpmap: m.first_rtpmap(),
                },
            };
            let p = self.participant_mut(idx);
            if let Ok(n) = m.mid.parse::<u32>() {
                p.next_mid = p.next_mid.max(n.saturating_add(1));
            }
            p.lines.push(MediaLine {
                mid: m.mid.clone(),
                role,
                offered_extensions: m.extmaps.iter().map(|(_, uri)| uri.clone()).collect(),
            });
        }
        new_tracks
    }

    /// A new track published on m-line `m`.
    pub(super) fn publish_line(
        &mut self,
        idx: ParticipantIdx,
        m: &crate::remote_description::RemoteMedia,
        kind: MediaKind,
        codec: CodecParams,
    ) -> TrackIdx {
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
        let t = self.tracks.insert(track);
        self.participant_mut(idx).published.push(t);
        t
    }

    /// A known m-line in a client's new offer. A line the client stopped (port 0) or no longer
    /// sends on ends its track (a screen share that ended); an idle line that sends again
    /// publishes a new one, room permitting. Returns a newly published track.
    pub(super) fn renegotiate_line(
        &mut self,
        idx: ParticipantIdx,
        li: usize,
        m: &crate::remote_description::RemoteMedia,
    ) -> Option<TrackIdx> {
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
                rtpmap: Some(codec.rtpmap()),
            }
        } else {
            LineRole::Idle { kind, codec }
        };
        None
    }

    /// The m-lines of a description of ours; `answering` a client's offer, each line carries
    /// only the header extensions that offer put on it.
    pub(super) fn line_specs(&self, idx: ParticipantIdx, answering: bool) -> Vec<LineSpec> {
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
                        // An answer echoes only what this m-line offered.
                        extmaps.retain(|(_, uri)| line.offered_extensions.iter().any(|o| o == uri));
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
                            (Some(t), Some(publisher)) if s.is_active() => {
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
                                if answering {
                                    extmaps.retain(|(_, uri)| {
                                        line.offered_extensions.iter().any(|o| o == uri)
                                    });
                                }
                                let mut codec = t.codec.clone();
                                codec.payload_type = s.payload_type;
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
                                rtpmap: (!s.rtpmap.is_empty()).then(|| s.rtpmap.clone()),
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
                        rtpmap,
                    } => LineContent::Rejected {
                        media: media.clone(),
                        proto: proto.clone(),
                        formats: formats.clone(),
                        rtpmap: rtpmap.clone(),
                    },
                };
                LineSpec {
                    mid: line.mid.clone(),
                    content,
                }
            })
            .collect()
    }

    pub(super) fn write_sdp(&mut self, idx: ParticipantIdx, kind: SdpKind) -> String {
        let lines = self.line_specs(idx, kind == SdpKind::Answer);
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
            tcp_candidate: self.config.transport.tcp_advertised_addr,
            ice_generation: p.transport.ice_generation(),
        };
        local_description::write(kind, p.sdp_session_id, p.sdp_version, &t, &lines)
    }

    pub(super) fn answer(&mut self, idx: ParticipantIdx) {
        let sdp = self.write_sdp(idx, SdpKind::Answer);
        let participant = self.participant(idx).id.clone();
        self.events.push_back(Event::Answer {
            participant,
            answer_sdp: sdp,
        });
    }

    /// Sends an SFU offer now, or as soon as the outstanding one is answered.
    pub(super) fn renegotiate(&mut self, idx: ParticipantIdx) {
        let clock = self.clock;
        let p = self.participant_mut(idx);
        if p.awaiting_answer {
            p.renegotiation_pending = true;
            return;
        }
        p.awaiting_answer = true;
        p.renegotiation_pending = false;
        p.offer_sent_at = clock;
        p.offer_attempts = p.offer_attempts.saturating_add(1);
        for s in &mut p.subscriptions {
            s.offer();
        }
        if let Some(sent) = clock {
            self.offer_deadlines.schedule(idx, sent + OFFER_TIMEOUT);
        }
        let sdp = self.write_sdp(idx, SdpKind::Offer);
        let participant = self.participant(idx).id.clone();
        self.events.push_back(Event::Offer {
            participant,
            offer_sdp: sdp,
        });
    }

    pub(super) fn apply_answer(
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
                s.answered(false);
            } else if let Some(rtx) = s.rtx_payload_type
                && !m.codecs.iter().any(|c| c.payload_type == rtx)
            {
                // No RTX in the answer: no retransmissions (see `retransmit`).
                s.rtx_payload_type = None;
            }
        }
        p.awaiting_answer = false;
        p.offer_sent_at = None;
        p.offer_attempts = 0;
        // Only lines the answer accepted: a late answer to an earlier offer does not cover
        // subscriptions added since.
        let mut newly = Vec::new();
        for (i, s) in p.subscriptions.iter_mut().enumerate() {
            let accepted = answer.media.iter().any(|m| m.mid == s.mid && !m.rejected);
            if accepted && s.answered(true) {
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

    /// The client declined our outstanding offer: given up now rather than after three
    /// unanswered sends (30 s with every later change held behind it).
    pub(super) fn reject_offer(&mut self, id: &ParticipantId) -> Result<(), String> {
        let idx = self.lookup(id)?;
        if !self.participant(idx).awaiting_answer {
            return Err(sfu_proto::NO_OFFER_OUTSTANDING.into());
        }
        self.counters.offers_declined += 1;
        tracing::info!(participant = %id, "SFU offer declined by the client; given up");
        self.give_up_offer(idx, "the client declined the offer".into());
        Ok(())
    }

    /// Stops offering to a participant (and forgets the renegotiation waiting behind the offer)
    /// and says so (`sfu_offer`): its client goes on with a new media session.
    pub(super) fn give_up_offer(&mut self, idx: ParticipantIdx, error: String) {
        let p = self.participant_mut(idx);
        p.awaiting_answer = false;
        p.offer_sent_at = None;
        p.offer_attempts = 0;
        p.renegotiation_pending = false;
        let participant = p.id.clone();
        self.events.push_back(Event::CommandFailed {
            command: "sfu_offer".into(),
            participant: Some(participant),
            error,
            session: None,
        });
    }

    pub(super) fn apply_client_offer(
        &mut self,
        now: Instant,
        id: &ParticipantId,
        sdp: &str,
    ) -> Result<(), String> {
        let idx = self.lookup(id)?;
        if self.participant(idx).awaiting_answer {
            // Glare: the SFU's offer is outstanding; the client retries after answering it.
            return Err(sfu_proto::OFFER_CROSSED.into());
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
        if !p.transport.is_remote_fingerprint(&offer.fingerprint) {
            // A new certificate means a new DTLS association: a new media session, which is
            // signaling's `restart`, not a renegotiation.
            return Err("the DTLS fingerprint changed: start a new media session instead".into());
        }
        if offer.ice_ufrag != p.transport.remote_ufrag() {
            self.restart_ice(now, idx, &offer);
        }
        let new_tracks = self.negotiate_offer(idx, &offer);
        self.answer(idx);
        self.on_tracks_published(idx, &new_tracks);
        Ok(())
    }

    /// An ICE restart in place (RFC 8445 §9, JSEP `restartIce`): the offer carries new ICE
    /// credentials, the answer gets new ones of ours. Tracks, subscriptions, layers, DTLS and
    /// SRTP all stay; media keeps going to the current path until the browser nominates one
    /// under the new credentials.
    fn restart_ice(&mut self, now: Instant, idx: ParticipantIdx, offer: &RemoteDescription) {
        let p = self.participant_mut(idx);
        let ufrag = p.transport.restart_ice(&offer.ice_ufrag, &offer.ice_pwd);
        p.ufrags.push(ufrag.clone());
        // Checks under the credentials before the previous restart are done by now.
        let retired: Vec<String> = p.ufrags.drain(..p.ufrags.len().saturating_sub(2)).collect();
        for old in retired {
            self.by_ufrag.remove(&old);
        }
        self.by_ufrag.insert(ufrag, idx);
        // The new credentials' checks get a budget of their own, whatever a replay of the old
        // ones used (once per few seconds: restarts in a loop do not multiply it); the old
        // ones' last few get a small one.
        let p = self.participant_mut(idx);
        if p.stun_budget_renewed_at
            .is_none_or(|t| now >= t + STUN_BUDGET_RENEWAL)
        {
            p.stun_budget = TokenBucket::new(STUN_CHECKS_PER_SECOND, STUN_CHECKS_BURST);
            p.stun_budget_renewed_at = Some(now);
        }
        p.stun_budget_before_restart = TokenBucket::new(
            STUN_CHECKS_BEFORE_RESTART_PER_SECOND,
            STUN_CHECKS_BEFORE_RESTART_BURST,
        );
        self.counters.ice_restarts += 1;
        self.schedule_transport(idx);
    }
}
