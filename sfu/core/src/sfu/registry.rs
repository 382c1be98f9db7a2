//! The worker's arenas and lookups, and the only writer of the subscription graph: who
//! subscribes to which track, and what goes when a track or a participant does.

use super::*;
use crate::codec::CodecParams;
use crate::local_description::{EXT_AUDIO_LEVEL, EXT_TRANSPORT_CC};
use crate::participant::{LineRole, MediaLine, Participant};
use crate::remote_description::RemoteCodec;
use crate::subscription::{OutStreamIds, Subscription, SubscriptionState};
use crate::track::Track;
use crate::transmit_batch::TransmitBatch;
use sfu_proto::{DisconnectReason, Event, MediaKind, ParticipantId, RoomId, TrackInfo};
use std::time::Instant;

impl Sfu {
    pub(super) fn new_ssrc(&mut self) -> u32 {
        // xorshift: distinct, non-zero, unpredictable enough for SSRCs (not a secret).
        let mut x = self.ssrc_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.ssrc_seed = x;
        x.max(2)
    }

    pub(super) fn lookup(&self, id: &ParticipantId) -> Result<ParticipantIdx, String> {
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| format!("unknown participant {id}"))
    }

    /// The participants of a room (a copy: callers change the room while walking it).
    pub(super) fn room_members(&self, room: &RoomId) -> Vec<ParticipantIdx> {
        self.rooms
            .get(room)
            .map(|r| r.participants.clone())
            .unwrap_or_default()
    }

    pub(super) fn participant(&self, idx: ParticipantIdx) -> &Participant {
        self.participants[idx]
            .as_ref()
            .expect("live participant index")
    }

    pub(super) fn participant_mut(&mut self, idx: ParticipantIdx) -> &mut Participant {
        self.participants[idx]
            .as_mut()
            .expect("live participant index")
    }

    pub(super) fn track(&self, t: TrackIdx) -> &Track {
        self.tracks[t].as_ref().expect("live track index")
    }

    /// The payload types a subscription of `track` gets in the subscriber's session (and its
    /// RTX's, for video). One BUNDLE session maps a payload type to one format across all its
    /// m-lines (browsers refuse a description that does not: Chrome's "codec collision"), and
    /// publishers number theirs as they like — Safari's 96 is H.264, Chrome's VP8, and a
    /// hostile client may put VP8 on the 111 everyone's Opus has. So a format keeps the
    /// number it already has in this session, else takes the one the subscriber's own offers
    /// gave it, else the publisher's, else a free one — never one the session or the
    /// subscriber's offers give another format. (The forwarding path writes each
    /// subscription's own.) `None`: no number is free.
    fn subscriber_payload_types(
        &self,
        subscriber: ParticipantIdx,
        track: TrackIdx,
    ) -> Option<(u8, Option<u8>)> {
        let p = self.participant(subscriber);
        let codec = &self.track(track).codec;
        // What the session's m-lines in the BUNDLE (not the rejected ones) already use.
        let mut used: Vec<(u8, PayloadUse)> = Vec::new();
        fn add<'a>(
            used: &mut Vec<(u8, PayloadUse<'a>)>,
            c: &'a CodecParams,
            pt: u8,
            rtx: Option<u8>,
        ) {
            used.push((pt, PayloadUse::of_codec(c)));
            if let Some(rtx) = rtx {
                used.push((rtx, PayloadUse::Rtx { apt: Some(pt) }));
            }
        }
        for line in &p.lines {
            match &line.role {
                LineRole::Publish { track } => {
                    if let Some(t) = self.tracks[*track].as_ref() {
                        add(
                            &mut used,
                            &t.codec,
                            t.codec.payload_type,
                            t.codec.rtx_payload_type,
                        );
                    }
                }
                LineRole::Subscribe { subscription } => {
                    let s = &p.subscriptions[*subscription];
                    if s.is_active()
                        && let Some(t) = self.tracks[s.track].as_ref()
                    {
                        add(&mut used, &t.codec, s.payload_type, s.rtx_payload_type);
                    }
                }
                LineRole::Idle { codec, .. } => {
                    add(&mut used, codec, codec.payload_type, codec.rtx_payload_type);
                }
                LineRole::Data | LineRole::Rejected { .. } => {}
            }
        }
        let offered: Vec<(u8, PayloadUse)> = p
            .offered_formats
            .iter()
            .map(|c| (c.payload_type, PayloadUse::of_offered(c)))
            .collect();
        let in_session = |pt: u8| used.iter().any(|(u, _)| *u == pt);
        let taken = |pt: u8| in_session(pt) || offered.iter().any(|(u, _)| *u == pt);
        let free = |except: Option<u8>| {
            (96..=127u8)
                .chain(35..=63)
                .find(|&pt| !taken(pt) && Some(pt) != except)
        };
        let first = |uses: &[(u8, PayloadUse)], want: &PayloadUse| {
            uses.iter().find(|(_, u)| u == want).map(|(pt, _)| *pt)
        };
        let format = PayloadUse::of_codec(codec);
        let pt = first(&used, &format)
            .or_else(|| first(&offered, &format).filter(|&pt| !in_session(pt)))
            .or_else(|| (!taken(codec.payload_type)).then_some(codec.payload_type))
            .or_else(|| free(None))?;
        if self.track(track).kind == MediaKind::Audio {
            return Some((pt, None));
        }
        let repairs = PayloadUse::Rtx { apt: Some(pt) };
        let rtx = first(&used, &repairs)
            .or_else(|| first(&offered, &repairs).filter(|&r| !in_session(r) && r != pt))
            .or_else(|| codec.rtx_payload_type.filter(|&r| !taken(r) && r != pt))
            .or_else(|| free(Some(pt)))?;
        Some((pt, Some(rtx)))
    }

    pub(super) fn subscribe(&mut self, subscriber: ParticipantIdx, track: TrackIdx) -> bool {
        let p = self.participant(subscriber);
        if p.subscriptions
            .iter()
            .any(|s| s.track == track && s.is_active())
        {
            return false;
        }
        let kind = self.track(track).kind;
        // A stopped m-line of the same kind, stopped on both sides, is taken again (JSEP
        // m-section recycling, under a new mid): people who reconnect again and again do not
        // use up the session's lines.
        let recycled = p.lines.iter().enumerate().find_map(|(li, l)| match l.role {
            LineRole::Subscribe { subscription: s }
                if p.subscriptions[s].state == SubscriptionState::Closed
                    && p.subscriptions[s].kind == kind =>
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
        let Some((pt, rtx_pt)) = self.subscriber_payload_types(subscriber, track) else {
            self.counters.subscriptions_refused += 1;
            return false;
        };
        let p = self.participant_mut(subscriber);
        p.ext.transport_cc = p.ensure_extmap_id(EXT_TRANSPORT_CC);
        if kind == MediaKind::Audio {
            p.ext.audio_level = p.ensure_extmap_id(EXT_AUDIO_LEVEL);
        }
        let mid = loop {
            let candidate = p.next_mid.to_string();
            // (A client may have taken a MID near u32::MAX: past it, the free ones from 0.)
            p.next_mid = p.next_mid.wrapping_add(1);
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
        subscription.rtpmap = CodecParams {
            payload_type: pt,
            ..self.track(track).codec.clone()
        }
        .rtpmap();
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
                    offered_extensions: Vec::new(),
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
                    offered_extensions: Vec::new(),
                });
                s
            }
        };
        if let Some(t) = self.tracks[track].as_mut() {
            t.subscribers.push((subscriber, s));
        }
        true
    }

    pub(super) fn unsubscribe_all(&mut self, subscriber: ParticipantIdx) -> bool {
        let mut changed = false;
        let subs: Vec<(usize, TrackIdx)> = self
            .participant(subscriber)
            .subscriptions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_active())
            .map(|(i, s)| (i, s.track))
            .collect();
        for (i, t) in subs {
            self.participant_mut(subscriber).subscriptions[i].end();
            if let Some(track) = self.tracks[t].as_mut() {
                track
                    .subscribers
                    .retain(|&(p, s)| !(p == subscriber && s == i));
            }
            changed = true;
        }
        changed
    }

    /// Marks these subscriptions inactive (their m-lines stop at the next renegotiation) and
    /// notes each subscriber once in `affected`.
    pub(super) fn end_subscriptions(
        &mut self,
        subscriptions: Vec<(ParticipantIdx, usize)>,
        affected: &mut Vec<ParticipantIdx>,
    ) {
        for (sp, ss) in subscriptions {
            if let Some(sub) = self.participants[sp].as_mut() {
                sub.subscriptions[ss].end();
                if !affected.contains(&sp) {
                    affected.push(sp);
                }
            }
        }
    }

    /// Ends one published track: its subscribers' m-lines go inactive by renegotiation.
    pub(super) fn unpublish_track(&mut self, publisher: ParticipantIdx, t: TrackIdx) {
        if self.participant(publisher).permissions.publish {
            self.announce_tracks(publisher, &[t], false);
        }
        let p = self.participant_mut(publisher);
        p.published.retain(|&x| x != t);
        p.ssrc_routes.forget_track(t);
        self.repair_list.retain(|&(x, _)| x != t);
        let Some(track) = self.tracks.remove(t) else {
            return;
        };
        let mut affected = Vec::new();
        self.end_subscriptions(track.subscribers, &mut affected);
        for sp in affected {
            self.renegotiate(sp);
        }
    }

    pub(super) fn remove_participant(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        reason: DisconnectReason,
        out: &mut TransmitBatch,
    ) {
        // Removed from the arena (not just emptied), so the next to join takes the slot: a
        // worker's passes and tables stay the size of who is here, not of all who came.
        let Some(mut p) = self.participants.remove(idx) else {
            return;
        };
        p.transport.shutdown(now);
        while let Some((dest, datagram)) = p.transport.poll_transmit() {
            out.push(dest, &datagram);
        }
        self.transport_deadlines.forget(idx);
        self.offer_deadlines.forget(idx);
        if p.pacing_listed {
            self.pacing_list.retain(|&x| x != idx);
        }
        self.by_id.remove(&p.id);
        for ufrag in &p.ufrags {
            self.by_ufrag.remove(ufrag);
        }
        for (addr, txn) in &p.probes {
            connectivity::forget_probed_addr(&mut self.by_probe_addr, *addr, idx);
            if self.by_probe_txn.get(txn) == Some(&idx) {
                self.by_probe_txn.remove(txn);
            }
        }
        // Only entries that still point at this participant (another may have the address now).
        if let Some(addr) = p.remote
            && self.by_addr.get(&addr) == Some(&idx)
        {
            self.by_addr.remove(&addr);
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
            self.repair_list.retain(|&(x, _)| x != t);
            if let Some(track) = self.tracks.remove(t) {
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
        self.events.push_back(Event::Disconnected {
            participant: p.id,
            reason,
            session: p.session,
        });
    }
}

/// What a payload type stands for in one session's m-lines: a format (one payload type must
/// mean one on every m-line of a BUNDLE session; names compared as lowercase), or the
/// retransmissions of another payload type (`None`: an RTX whose `apt` does not read).
#[derive(PartialEq)]
enum PayloadUse<'a> {
    Format {
        name: String,
        clock_rate: u32,
        channels: &'a str,
        /// As passed on ([`crate::codec::passed_on_fmtp`]): what else a browser writes there
        /// does not make another format of it.
        fmtp: std::borrow::Cow<'a, str>,
    },
    Rtx {
        apt: Option<u8>,
    },
}

impl<'a> PayloadUse<'a> {
    fn of_codec(c: &'a CodecParams) -> Self {
        Self::Format {
            name: c.name.to_ascii_lowercase(),
            clock_rate: c.clock_rate,
            channels: &c.channels,
            fmtp: std::borrow::Cow::Borrowed(&c.fmtp),
        }
    }

    fn of_offered(c: &'a RemoteCodec) -> Self {
        if c.is("rtx") {
            return Self::Rtx { apt: c.rtx_apt() };
        }
        Self::Format {
            name: c.name.to_ascii_lowercase(),
            clock_rate: c.clock_rate,
            channels: &c.channels,
            fmtp: std::borrow::Cow::Owned(crate::codec::passed_on_fmtp(&c.name, &c.fmtp)),
        }
    }
}
