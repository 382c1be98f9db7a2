//! A subscription (consumer): one published track sent to one subscriber, with its own SSRC and
//! the sequence-number and timestamp offsets that keep the subscriber's stream continuous, and
//! for a simulcast track the layer it forwards and the one it is switching to.

use crate::arena::TrackIdx;
use crate::resend_record::ResendRecord;
use crate::skipped_numbers::SkippedNumbers;
use crate::temporal_filter::TemporalFilter;
use crate::vp8_continuity::Vp8Continuity;
use sfu_proto::{MediaKind, VideoLayer};
use std::time::{Duration, Instant};

/// An upgrade followed by congestion within this long failed.
const UPGRADE_TRIAL: Duration = Duration::from_secs(8);
const UPGRADE_BACKOFF: Duration = Duration::from_secs(5);
const UPGRADE_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What identifies a subscription's streams toward its subscriber.
#[derive(Debug, Clone, Copy)]
pub struct OutStreamIds {
    pub ssrc: u32,
    pub rtx_ssrc: u32,
    pub payload_type: u8,
    pub rtx_payload_type: Option<u8>,
}

#[derive(Debug)]
pub struct Subscription {
    pub track: TrackIdx,
    /// Fixed for the m-line's life, even after the track is gone (a line is recycled only for
    /// the same kind).
    pub kind: MediaKind,
    pub mid: String,
    pub ssrc: u32,
    pub rtx_ssrc: u32,
    pub payload_type: u8,
    pub rtx_payload_type: Option<u8>,
    /// `out = in + seq_delta` on extended sequence numbers of the forwarded layer (for the
    /// newest; an older packet adds the skips after it); set when a layer starts, lowered by
    /// each packet skipped.
    pub seq_delta: Option<i64>,
    /// Packets of the layer not forwarded (a dropped temporal layer), so the rest stays
    /// contiguous.
    skipped: SkippedNumbers,
    /// The newest incoming sequence number of the layer, forwarded or skipped.
    highest_in: u64,
    pub ts_delta: u32,
    /// Where the stream starts (random, per RFC 3550 §5.1).
    pub first_ext_seq: u64,
    pub first_timestamp: u32,
    pub highest_out: u64,
    /// The first outgoing sequence number of the current layer: nothing below it maps back.
    pub layer_floor: u64,
    /// Timestamp of the newest packet sent, and when: the base for the next layer's timestamps.
    pub last_out_ts: u32,
    pub last_out_at: Option<Instant>,
    pub rtx_ext_seq: u64,
    pub packets: u32,
    pub octets: u32,
    /// The layer being forwarded (`None` before the first packet).
    pub layer: Option<usize>,
    /// The layer to forward next: taken at its next keyframe.
    pub target_layer: usize,
    /// Whether its media goes out now, waits for a keyframe, or is paused (and since when).
    pub flow: Flow,
    pub paused_at: Option<Instant>,
    /// When the allocator last moved it up a layer; upgrades that met congestion soon after,
    /// in a row; and until when it may not go up again.
    pub upgraded_at: Option<Instant>,
    pub failed_upgrades: u8,
    pub up_blocked_until: Option<Instant>,
    /// The highest layer the subscriber asked for.
    pub preferred: VideoLayer,
    /// The highest layer the subscriber's link carries without loss, as its receiver reports
    /// tell (`usize::MAX`: no limit seen).
    pub loss_cap: usize,
    /// Consecutive receiver reports with heavy loss, and since when every report was clean.
    pub lossy_reports: u8,
    pub clean_since: Option<Instant>,
    pub state: SubscriptionState,
    /// VP8 PictureID and TL0PICIDX continued across layer switches and skipped pictures.
    pub vp8: Vp8Continuity,
    /// The VP8 temporal layers forwarded.
    pub temporal: TemporalFilter,
    /// The codec's `a=rtpmap` value, kept for the line once it is stopped.
    pub rtpmap: String,
    /// Resends per packet of this subscriber's stream (capped per subscriber, not per
    /// packet for all).
    pub resends: ResendRecord,
}

/// Whether a live subscription's media goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Its layer is forwarded (and, for simulcast, switched at the target's keyframe).
    Flowing,
    /// Nothing goes out until `target_layer`'s next keyframe, where the stream continues
    /// (sequence numbers, timestamps, picture ids): after a move down for want of bandwidth —
    /// a queue overflowing at the bottleneck loses more than the picture pausing for the
    /// lower layer's keyframe — and when a paused track resumes.
    AwaitingKeyframe,
    /// The subscriber's bandwidth estimate carries no layer of it: nothing goes out.
    Paused,
}

/// Where a subscription is in its life. Forward only: Pending → Offered → Live, any of them →
/// Ending, and Ending → Closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Made, and not yet in an SFU offer.
    Pending,
    /// In an SFU offer that is outstanding.
    Offered,
    /// The subscriber answered an offer with this m-line: media flows (before that, its
    /// browser could not map the SSRC to a transceiver).
    Live,
    /// The track went away, the subscriber lost permission, or its answer refused the line:
    /// the m-line goes inactive at the next renegotiation.
    Ending,
    /// Inactive, and an answer stopped its m-line too: the line may carry a new subscription.
    Closed,
}

impl Subscription {
    pub fn new(
        track: TrackIdx,
        kind: MediaKind,
        mid: String,
        ids: OutStreamIds,
        seed: u32,
    ) -> Self {
        // Rollover counter 0 at the start, as the receiver assumes (RFC 3711 §3.3.1).
        let first_ext_seq = (seed & 0x7fff) as u64;
        Self {
            track,
            kind,
            mid,
            ssrc: ids.ssrc,
            rtx_ssrc: ids.rtx_ssrc,
            payload_type: ids.payload_type,
            rtx_payload_type: ids.rtx_payload_type,
            seq_delta: None,
            skipped: SkippedNumbers::default(),
            highest_in: 0,
            ts_delta: 0,
            first_ext_seq,
            first_timestamp: seed.rotate_left(13),
            highest_out: 0,
            layer_floor: first_ext_seq,
            last_out_ts: 0,
            last_out_at: None,
            rtx_ext_seq: (seed >> 17) as u64,
            packets: 0,
            octets: 0,
            layer: None,
            target_layer: usize::MAX,
            flow: Flow::Flowing,
            paused_at: None,
            upgraded_at: None,
            failed_upgrades: 0,
            up_blocked_until: None,
            preferred: VideoLayer::High,
            loss_cap: usize::MAX,
            lossy_reports: 0,
            clean_since: None,
            state: SubscriptionState::Pending,
            vp8: Vp8Continuity::default(),
            temporal: TemporalFilter::default(),
            rtpmap: String::new(),
            resends: ResendRecord::default(),
        }
    }

    /// A move down (or a pause) for want of bandwidth: if it came soon after a move up (or a
    /// resume), that step failed, and the next waits 5 s, 10 s, 20 s … (at most a minute).
    /// Returns whether a step failed.
    pub fn note_congestion(&mut self, now: Instant) -> bool {
        let failed = self
            .upgraded_at
            .is_some_and(|t| now.saturating_duration_since(t) < UPGRADE_TRIAL);
        if failed {
            self.failed_upgrades = self.failed_upgrades.saturating_add(1);
            let wait = UPGRADE_BACKOFF * (1u32 << self.failed_upgrades.min(4).saturating_sub(1));
            self.up_blocked_until = Some(now + wait.min(UPGRADE_BACKOFF_MAX));
        }
        self.upgraded_at = None;
        failed
    }

    /// An upgrade that held through its trial is a success: the next one need not wait.
    pub fn settle_upgrade(&mut self, now: Instant) {
        if self
            .upgraded_at
            .is_some_and(|t| now.saturating_duration_since(t) >= UPGRADE_TRIAL)
        {
            self.upgraded_at = None;
            self.failed_upgrades = 0;
        }
    }

    /// Not ending or closed: the subscriber is to receive this track.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            SubscriptionState::Pending | SubscriptionState::Offered | SubscriptionState::Live
        )
    }

    /// Media flows on it.
    pub fn is_live(&self) -> bool {
        self.state == SubscriptionState::Live
    }

    /// The track or the permission went away: inactive from the next offer on.
    pub fn end(&mut self) {
        if self.is_active() {
            self.state = SubscriptionState::Ending;
        }
    }

    /// Put in an SFU offer.
    pub fn offer(&mut self) {
        if self.state == SubscriptionState::Pending {
            self.state = SubscriptionState::Offered;
        }
    }

    /// The subscriber's answer kept the line (`accepted`) or refused it. Returns whether the
    /// subscription just went live (its decoder then needs a keyframe).
    pub fn answered(&mut self, accepted: bool) -> bool {
        match (self.state, accepted) {
            (SubscriptionState::Offered, true) => {
                self.state = SubscriptionState::Live;
                true
            }
            (SubscriptionState::Ending, false) => {
                self.state = SubscriptionState::Closed;
                false
            }
            (_, false) => {
                self.end();
                false
            }
            _ => false,
        }
    }

    /// Starts forwarding `layer` at the publisher packet (`in_ext`, `in_ts`): it gets the next
    /// sequence number, so the subscriber sees one unbroken stream, and the timestamp `out_ts`
    /// (the stream's first timestamp when nothing was sent yet).
    pub fn start_layer(&mut self, layer: usize, in_ext: u64, in_ts: u32, out_ts: u32) {
        let (next, out_ts) = if self.seq_delta.is_some() {
            (self.highest_out + 1, out_ts)
        } else {
            (self.first_ext_seq, self.first_timestamp)
        };
        self.seq_delta = Some(next as i64 - in_ext as i64);
        self.skipped.clear();
        self.highest_in = in_ext;
        self.ts_delta = out_ts.wrapping_sub(in_ts);
        self.layer_floor = next;
        self.layer = Some(layer);
        self.flow = Flow::Flowing;
        self.vp8.switch_layer();
        // A layer starts at a keyframe, where every temporal layer may start.
        self.temporal.at_keyframe(in_ext);
    }

    /// A packet of the current layer is not forwarded (its temporal layer is dropped): the
    /// packets after it close the gap. One that comes late, after a newer packet went out,
    /// leaves its gap (the newer one's number is spent).
    pub fn skip(&mut self, in_ext: u64) {
        if let Some(delta) = self.seq_delta.as_mut()
            && in_ext > self.highest_in
        {
            self.highest_in = in_ext;
            self.skipped.skip(in_ext);
            *delta -= 1;
        }
    }

    /// The outgoing extended sequence number of a packet of the current layer, `None` before
    /// the layer (or older than the skips remembered).
    pub fn out_ext(&self, in_ext: u64) -> Option<u64> {
        let delta = self.seq_delta?;
        let out = in_ext as i64 + delta + self.skipped.after(in_ext)? as i64;
        (out >= self.layer_floor as i64).then_some(out as u64)
    }

    /// Maps a publisher extended sequence number of the current layer to this subscriber's.
    /// Returns (out extended seq, out timestamp), or `None` before the layer started: such a
    /// packet has no place in the subscriber's stream, and giving it one would reuse an SRTP
    /// nonce.
    pub fn map(&mut self, now: Instant, in_ext: u64, in_ts: u32) -> Option<(u64, u32)> {
        let out = self.out_ext(in_ext)?;
        self.highest_in = self.highest_in.max(in_ext);
        let out_ts = in_ts.wrapping_add(self.ts_delta);
        if out > self.highest_out || self.last_out_at.is_none() {
            self.highest_out = self.highest_out.max(out);
            self.last_out_ts = out_ts;
            self.last_out_at = Some(now);
        }
        Some((out, out_ts))
    }

    /// The publisher's extended sequence number (of the current layer) for a subscriber's
    /// 16-bit one (from a NACK).
    pub fn unmap(&self, out_seq: u16) -> Option<u64> {
        let delta = self.seq_delta?;
        let d = out_seq.wrapping_sub(self.highest_out as u16) as i16 as i64;
        let out_ext = self.highest_out as i64 + d;
        if out_ext < self.layer_floor as i64 {
            // Before this layer (or the whole stream) began.
            return None;
        }
        let shifted = out_ext - delta;
        if shifted < 0 {
            return None;
        }
        self.skipped.unshift(shifted as u64)
    }

    /// The highest layer to forward of a track with `layers` layers: the subscriber's wish,
    /// lowered while its link loses packets.
    pub fn layer_limit(&self, layers: usize) -> usize {
        self.preferred.max_index(layers).min(self.loss_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::ArenaIndex;

    const IDS: OutStreamIds = OutStreamIds {
        ssrc: 5,
        rtx_ssrc: 6,
        payload_type: 96,
        rtx_payload_type: Some(97),
    };

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn mapping_is_continuous_and_reversible() {
        let ids = IDS;
        let now = Instant::now();
        let mut s = Subscription::new(
            TrackIdx::from_slot(0),
            MediaKind::Video,
            "1".into(),
            ids,
            12345,
        );
        assert_eq!(
            s.map(now, 70_000, 1000),
            None,
            "nothing maps before a layer starts"
        );
        s.start_layer(0, 70_000, 1000, 0);
        let (a, ta) = s.map(now, 70_000, 1000).unwrap();
        assert_eq!(a >> 16, 0, "subscribers start at rollover 0");
        let (b, tb) = s.map(now, 70_001, 4000).unwrap();
        assert_eq!(b, a + 1);
        assert_eq!(tb.wrapping_sub(ta), 3000);
        assert_eq!(s.unmap(a as u16), Some(70_000));
        assert_eq!(s.unmap(b as u16), Some(70_001));
        // A packet from before the subscription began is not forwarded.
        assert_eq!(s.map(now, 69_999, 0), None);
        // A late repair inside the stream maps into the gap it belongs to.
        let (d, _) = s.map(now, 70_005, 9000).unwrap();
        let (c, _) = s.map(now, 70_003, 7000).unwrap();
        assert_eq!(c + 2, d);
        assert_eq!(
            s.last_out_ts,
            9000u32.wrapping_add(s.ts_delta),
            "newest, not latest"
        );
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_layer_switch_continues_sequence_and_timestamps() {
        let ids = IDS;
        let now = Instant::now();
        let mut s = Subscription::new(
            TrackIdx::from_slot(0),
            MediaKind::Video,
            "1".into(),
            ids,
            777,
        );
        s.start_layer(2, 500, 90_000, 0);
        let (a, ta) = s.map(now, 500, 90_000).unwrap();
        let (b, _) = s.map(now, 501, 93_000).unwrap();
        // Layer 0 has its own numbering; it continues right after b, at the timestamp given.
        s.start_layer(0, 10, 1_000_000, ta.wrapping_add(6000));
        let (c, tc) = s.map(now, 10, 1_000_000).unwrap();
        assert_eq!(c, b + 1);
        assert_eq!(tc, ta.wrapping_add(6000));
        let (d, td) = s.map(now, 11, 1_003_000).unwrap();
        assert_eq!((d, td.wrapping_sub(tc)), (c + 1, 3000));
        // The old layer's numbers no longer map, nor do NACKs from before the switch.
        assert_eq!(s.map(now, 9, 997_000), None);
        assert_eq!(s.unmap(a as u16), None);
        assert_eq!(s.unmap(d as u16), Some(11));
        assert_eq!(s.layer, Some(0));
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn skipped_packets_leave_no_gap_and_nacks_map_back_past_them() {
        let now = Instant::now();
        let mut s = Subscription::new(TrackIdx::from_slot(0), MediaKind::Video, "1".into(), IDS, 9);
        s.start_layer(0, 1000, 0, 0);
        let mut sent = Vec::new();
        // 1000..1012 arrive; those ≡ 1 or 3 (mod 4) are of a dropped temporal layer.
        for n in 1000u64..1012 {
            if n % 4 == 1 || n % 4 == 3 {
                s.skip(n);
            } else {
                sent.push((n, s.map(now, n, 0).unwrap().0));
            }
        }
        for w in sent.windows(2) {
            assert_eq!(w[1].1, w[0].1 + 1, "contiguous: {sent:?}");
        }
        // A NACK for each forwarded packet maps back to it; a late repair keeps its number.
        for &(n, out) in &sent {
            assert_eq!(s.unmap(out as u16), Some(n));
            assert_eq!(s.out_ext(n), Some(out));
        }
        // A late copy of a dropped packet is not skipped again (nothing shifts).
        s.skip(1005);
        assert_eq!(s.map(now, 1012, 0).unwrap().0, sent.last().unwrap().1 + 1);
        // A new layer forgets the old layer's skips.
        s.start_layer(1, 50, 0, 0);
        let (first, _) = s.map(now, 50, 0).unwrap();
        assert_eq!(first, sent.last().unwrap().1 + 2);
        assert_eq!(s.unmap(first as u16), Some(50));
    }

    #[test]
    fn the_layer_limit_follows_wish_and_loss() {
        let ids = IDS;
        let mut s = Subscription::new(TrackIdx::from_slot(0), MediaKind::Video, "1".into(), ids, 1);
        assert_eq!(s.layer_limit(3), 2);
        s.preferred = VideoLayer::Medium;
        assert_eq!((s.layer_limit(3), s.layer_limit(2)), (1, 1));
        s.loss_cap = 0;
        assert_eq!(s.layer_limit(3), 0);
    }

    #[test]
    fn the_lifecycle_only_moves_forward() {
        use SubscriptionState::*;
        let new =
            || Subscription::new(TrackIdx::from_slot(0), MediaKind::Video, "1".into(), IDS, 1);
        let mut s = new();
        assert!(s.is_active() && !s.is_live());
        assert!(
            !s.answered(true),
            "not offered yet: an answer does not make it live"
        );
        s.offer();
        assert_eq!(s.state, Offered);
        assert!(s.answered(true));
        assert!(s.is_live());
        s.offer();
        assert!(!s.answered(true), "live once");
        assert_eq!(s.state, Live);
        s.end();
        assert_eq!(s.state, Ending);
        assert!(!s.answered(true), "an ended line does not come back");
        assert!(!s.answered(false));
        assert_eq!(s.state, Closed);
        s.end();
        assert_eq!(s.state, Closed, "closed stays closed");
        // Refused while active: ending, and closed at the next refusal.
        let mut r = new();
        r.offer();
        r.answered(false);
        assert_eq!(r.state, Ending);
        r.answered(false);
        assert_eq!(r.state, Closed);
    }
}
