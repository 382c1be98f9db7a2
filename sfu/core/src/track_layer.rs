//! One encoding of a published track: the single stream of a plain track, or one simulcast
//! layer (a RID) of a simulcast one, with its own SSRCs, loss tracking and NACK cache.

use crate::bitrate_meter::BitrateMeter;
use crate::inbound_stream::InboundStream;
use crate::packet_cache::PacketCache;
use crate::rate_history::RateHistory;
use std::time::{Duration, Instant};

/// A layer that has sent nothing for this long is taken as stopped (a publisher's encoder
/// drops its top layers when its uplink or CPU cannot carry them).
pub const LAYER_SILENCE: Duration = Duration::from_millis(1200);

#[derive(Debug)]
pub struct TrackLayer {
    /// The RID of a simulcast layer; `None` for a track without simulcast.
    pub rid: Option<String>,
    pub ssrc: Option<u32>,
    pub rtx_ssrc: Option<u32>,
    pub inbound: Option<InboundStream>,
    pub rtx_inbound: Option<InboundStream>,
    pub cache: PacketCache,
    /// Arrival of the layer's last media packet.
    pub last_packet_at: Option<Instant>,
    pub last_keyframe_request: Option<Instant>,
    /// A keyframe was asked for inside the throttle interval: send one when it ends.
    pub keyframe_pending: bool,
    /// The publisher's last sender report of this layer: (NTP time, RTP timestamp). Layers
    /// have unrelated RTP timestamp origins; two reports relate them at a switch.
    pub sender_report: Option<(u64, u32)>,
    /// When a sender report of this layer was last passed on to its subscribers.
    pub sender_report_relayed: Option<Instant>,
    /// What the layer costs a subscriber's link (media packets as received, repairs aside).
    pub bitrate: BitrateMeter,
    /// The same per VP8 temporal layer (TID 0–3), for streams that say theirs.
    temporal_bitrate: [BitrateMeter; 4],
    /// Dynacast: the publisher was told to stop encoding this layer (nobody needs it).
    pub suspended: bool,
    /// On the SFU's list of layers the timer visits (packets missing, a keyframe to ask
    /// for): kept there once, however often it is found wanting.
    pub repair_listed: bool,
    /// Since when no subscription has needed the layer.
    pub unneeded_since: Option<Instant>,
    /// The layer's bitrate when it was suspended: what it will cost again.
    held_bps: u64,
    /// When the publisher was told to encode it again.
    resumed_at: Option<Instant>,
    /// A resume went unanswered and the layer was suspended again; a second unanswered one
    /// means the publisher cannot send it (its uplink, its CPU): it is then left unoffered.
    unanswered: bool,
    /// The last seconds of `bitrate` and of each of `temporal_bitrate`, for a step up (at the
    /// end: only a closing window writes here, not every packet).
    history: RateHistory,
    temporal_history: [RateHistory; 4],
}

impl TrackLayer {
    pub fn new(rid: Option<String>, cache_slots: usize) -> Self {
        Self {
            rid,
            ssrc: None,
            rtx_ssrc: None,
            inbound: None,
            rtx_inbound: None,
            cache: PacketCache::new(cache_slots),
            last_packet_at: None,
            last_keyframe_request: None,
            keyframe_pending: false,
            sender_report: None,
            sender_report_relayed: None,
            bitrate: BitrateMeter::default(),
            temporal_bitrate: Default::default(),
            suspended: false,
            repair_listed: false,
            unneeded_since: None,
            held_bps: 0,
            resumed_at: None,
            unanswered: false,
            history: RateHistory::default(),
            temporal_history: Default::default(),
        }
    }

    pub fn bind_ssrc(&mut self, ssrc: u32, clock_rate: u32) {
        self.ssrc = Some(ssrc);
        self.inbound = Some(InboundStream::new(ssrc, clock_rate));
    }

    pub fn bind_rtx_ssrc(&mut self, ssrc: u32, clock_rate: u32) {
        self.rtx_ssrc = Some(ssrc);
        self.rtx_inbound = Some(InboundStream::new(ssrc, clock_rate));
    }

    pub fn unbind(&mut self, rtx: bool) {
        if rtx {
            self.rtx_ssrc = None;
            self.rtx_inbound = None;
        } else {
            self.ssrc = None;
            self.inbound = None;
        }
    }

    /// A media packet of `bytes` arrived, of temporal layer `tid` when it says one.
    pub fn measure(&mut self, now: Instant, bytes: usize, tid: Option<u8>) {
        self.last_packet_at = Some(now);
        if let Some(closed) = self.bitrate.add(now, bytes) {
            self.history.record(closed);
        }
        if let Some(tid) = tid {
            let t = usize::from(tid & 3);
            if let Some(closed) = self.temporal_bitrate[t].add(now, bytes) {
                self.temporal_history[t].record(closed);
            }
        }
    }

    /// The highest VP8 temporal layer the layer is sending (0: none above the base, or a
    /// stream without temporal layers).
    pub fn top_temporal(&self, now: Instant) -> u8 {
        (1..4u8)
            .rev()
            .find(|&t| self.temporal_bitrate[usize::from(t)].bps(now) > 0)
            .unwrap_or(0)
    }

    /// What the layer costs with only its temporal layers up to `tid`.
    pub fn temporal_rate_bps(&self, now: Instant, tid: u8) -> u64 {
        self.temporal_bitrate[..=usize::from(tid.min(3))]
            .iter()
            .map(|m| m.bps(now))
            .sum()
    }

    /// The same over the last few seconds (or the last second, if more), to budget for before
    /// moving up to it.
    pub fn temporal_sustained_bps(&self, now: Instant, tid: u8) -> u64 {
        let t = usize::from(tid.min(3));
        let sustained: u64 = self.temporal_bitrate[..=t]
            .iter()
            .zip(&self.temporal_history[..=t])
            .map(|(m, h)| h.sustained_bps(m, now))
            .sum();
        sustained.max(self.temporal_rate_bps(now, tid))
    }

    /// Whether media arrived on this layer recently.
    pub fn is_sending(&self, now: Instant) -> bool {
        self.last_packet_at
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_SILENCE)
    }

    /// Whether a subscription may be given this layer: it is sent, or it was paused at its
    /// source only because nobody needed it (choosing it resumes it), or it was just resumed
    /// and its first packets are on their way.
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_sending(now) || self.suspended || self.is_resuming(now)
    }

    fn is_resuming(&self, now: Instant) -> bool {
        self.resumed_at
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_SILENCE)
    }

    /// What the layer costs a subscriber's link: as measured, or — paused at its source, or
    /// just resumed — what it cost before.
    pub fn rate_bps(&self, now: Instant) -> u64 {
        let measured = self.bitrate.bps(now);
        if self.suspended || self.is_resuming(now) {
            measured.max(self.held_bps)
        } else {
            measured
        }
    }

    /// What to budget for before moving up to the layer: its rate over the last few seconds
    /// (or the last second, if more), not only the last second, which an encoder's swings can
    /// halve for a moment.
    pub fn sustained_rate_bps(&self, now: Instant) -> u64 {
        self.rate_bps(now)
            .max(self.history.sustained_bps(&self.bitrate, now))
    }

    /// The publisher is told to stop encoding the layer.
    pub fn suspend(&mut self, now: Instant) {
        self.held_bps = self.sustained_rate_bps(now);
        self.suspended = true;
        self.resumed_at = None;
    }

    /// Resumed, yet nothing came within [`LAYER_SILENCE`]: the publisher did not get the word
    /// or could not act on it.
    pub fn resume_unanswered(&self, now: Instant) -> bool {
        !self.suspended
            && !self.is_sending(now)
            && self
                .resumed_at
                .is_some_and(|at| now.saturating_duration_since(at) >= LAYER_SILENCE)
    }

    /// A resume went unanswered: the first time, back to suspended without a word to the
    /// publisher — offered again, and asked for again when needed (the word may have been
    /// lost); the second time in a row, left as a layer the publisher does not send (not
    /// offered: a subscriber would wait for its keyframe in vain). Packets clear the count.
    pub fn resume_went_unanswered(&mut self) {
        self.resumed_at = None;
        if !std::mem::replace(&mut self.unanswered, true) {
            self.suspended = true;
        }
    }

    /// Packets arrived: any unanswered resume is forgotten.
    pub fn note_sending(&mut self, now: Instant) {
        if self.is_sending(now) {
            self.unanswered = false;
        }
    }

    /// The publisher is told to encode the layer again.
    pub fn resume(&mut self, now: Instant) {
        self.suspended = false;
        self.unneeded_since = None;
        self.resumed_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer paused at its source stays on offer at its old cost, and for a moment after it
    /// resumes, until its packets arrive.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_suspended_layer_stays_available_at_its_old_cost() {
        let t0 = Instant::now();
        let mut layer = TrackLayer::new(Some("h".into()), 16);
        assert!(!layer.is_available(t0), "never sent");
        for i in 0..50u64 {
            let at = t0 + Duration::from_millis(i * 20);
            layer.last_packet_at = Some(at);
            layer.bitrate.add(at, 1250);
        }
        let t1 = t0 + Duration::from_secs(1);
        let cost = layer.rate_bps(t1);
        assert!(cost > 300_000, "{cost}");
        layer.suspend(t1);
        let later = t1 + Duration::from_secs(10);
        assert!(!layer.is_sending(later));
        assert!(layer.is_available(later));
        assert_eq!(layer.rate_bps(later), cost);
        layer.resume(later);
        assert!(layer.is_available(later + Duration::from_millis(500)));
        assert_eq!(layer.rate_bps(later + Duration::from_millis(500)), cost);
        assert!(
            !layer.is_available(later + LAYER_SILENCE),
            "resumed but never sent again: gone, as a layer its publisher stopped"
        );
        // ...which dynacast takes for a resume the publisher never got: suspended again, on
        // offer again, and its next need asks again.
        let silent = later + LAYER_SILENCE;
        assert!(layer.resume_unanswered(silent));
        layer.resume_went_unanswered();
        assert!(layer.is_available(silent));
        assert_eq!(layer.rate_bps(silent), cost);
        // Asked again, and again nothing: the publisher cannot send it; no longer offered.
        layer.resume(silent);
        let silent = silent + LAYER_SILENCE;
        assert!(layer.resume_unanswered(silent));
        layer.resume_went_unanswered();
        assert!(!layer.is_available(silent));
    }
}
