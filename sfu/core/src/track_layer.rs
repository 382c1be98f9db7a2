//! One encoding of a published track: the single stream of a plain track, or one simulcast
//! layer (a RID) of a simulcast one, with its own SSRCs, loss tracking and NACK cache.

use crate::bitrate_meter::BitrateMeter;
use crate::inbound_stream::InboundStream;
use crate::packet_cache::PacketCache;
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
    /// What the layer costs a subscriber's link (media packets as received, repairs aside).
    pub bitrate: BitrateMeter,
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
            bitrate: BitrateMeter::default(),
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

    /// Whether media arrived on this layer recently.
    pub fn is_sending(&self, now: Instant) -> bool {
        self.last_packet_at
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_SILENCE)
    }
}
