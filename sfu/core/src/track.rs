//! A published track (producer): what one participant sends on one m-line, with the state the
//! forwarding path needs for it.

use crate::codec::CodecParams;
use crate::inbound_stream::InboundStream;
use crate::packet_cache::PacketCache;
use sfu_proto::{MediaKind, TrackId};
use std::time::Instant;

#[derive(Debug)]
pub struct Track {
    pub id: TrackId,
    pub kind: MediaKind,
    pub publisher: usize,
    pub mid: String,
    pub codec: CodecParams,
    pub ssrc: Option<u32>,
    pub rtx_ssrc: Option<u32>,
    pub inbound: Option<InboundStream>,
    pub rtx_inbound: Option<InboundStream>,
    pub cache: PacketCache,
    /// (subscriber participant, index into its subscriptions).
    pub subscribers: Vec<(usize, usize)>,
    pub last_keyframe_request: Option<Instant>,
    /// A keyframe was asked for inside the throttle interval: send one when it ends.
    pub keyframe_pending: bool,
    /// Smoothed RFC 6464 level, in -dBov (0 loudest, 127 silence).
    pub audio_level: f32,
}

impl Track {
    pub fn new(
        id: TrackId,
        kind: MediaKind,
        publisher: usize,
        mid: String,
        codec: CodecParams,
        cache_slots: usize,
    ) -> Self {
        Self {
            id,
            kind,
            publisher,
            mid,
            codec,
            ssrc: None,
            rtx_ssrc: None,
            inbound: None,
            rtx_inbound: None,
            cache: PacketCache::new(match kind {
                MediaKind::Video => cache_slots,
                MediaKind::Audio => 0,
            }),
            subscribers: Vec::new(),
            last_keyframe_request: None,
            keyframe_pending: false,
            audio_level: 127.0,
        }
    }

    pub fn bind_ssrc(&mut self, ssrc: u32) {
        self.ssrc = Some(ssrc);
        self.inbound = Some(InboundStream::new(ssrc, self.codec.clock_rate));
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

    pub fn bind_rtx_ssrc(&mut self, ssrc: u32) {
        self.rtx_ssrc = Some(ssrc);
        self.rtx_inbound = Some(InboundStream::new(ssrc, self.codec.clock_rate));
    }
}
