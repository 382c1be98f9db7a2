//! A published track (producer): what one participant sends on one m-line, with the state the
//! forwarding path needs for it. A simulcast track has one [`TrackLayer`] per RID, lowest
//! quality first; any other track has one.

use crate::arena::ParticipantIdx;
use crate::codec::CodecParams;
use crate::payload_format::PayloadFormat;
use crate::track_layer::TrackLayer;
use sfu_proto::{MediaKind, TrackId};
use std::time::Instant;

#[derive(Debug)]
pub struct Track {
    pub id: TrackId,
    pub kind: MediaKind,
    pub publisher: ParticipantIdx,
    pub mid: String,
    pub codec: CodecParams,
    pub format: PayloadFormat,
    /// Lowest quality first.
    pub layers: Vec<TrackLayer>,
    /// (subscriber participant, index into its subscriptions).
    pub subscribers: Vec<(ParticipantIdx, usize)>,
    /// Smoothed RFC 6464 level, in -dBov (0 loudest, 127 silence).
    pub audio_level: f32,
    /// When a packet last carried a level: a track that stopped sending is not speaking,
    /// whatever its last level said.
    pub audio_level_at: Option<Instant>,
}

impl Track {
    /// A track received as `rids` (simulcast, in the order the client listed them) or, with
    /// no RIDs, as one stream.
    pub fn new(
        id: TrackId,
        kind: MediaKind,
        publisher: ParticipantIdx,
        mid: String,
        codec: CodecParams,
        rids: &[String],
        cache_slots: usize,
    ) -> Self {
        let cache_slots = match kind {
            MediaKind::Video => cache_slots,
            MediaKind::Audio => 0,
        };
        let layers = if rids.is_empty() {
            vec![TrackLayer::new(None, cache_slots)]
        } else {
            let ordered = lowest_first(rids);
            let n = ordered.len();
            ordered
                .into_iter()
                .enumerate()
                // Each layer down sends about a quarter of the packets (half the width and
                // height): the same repair window needs a quarter of the slots.
                .map(|(i, rid)| TrackLayer::new(Some(rid), cache_slots >> (2 * (n - 1 - i))))
                .collect()
        };
        Self {
            id,
            kind,
            publisher,
            mid,
            format: match kind {
                MediaKind::Video => PayloadFormat::from_codec_name(&codec.name),
                MediaKind::Audio => PayloadFormat::Opaque,
            },
            codec,
            layers,
            subscribers: Vec::new(),
            audio_level: 127.0,
            audio_level_at: None,
        }
    }

    pub fn is_simulcast(&self) -> bool {
        self.layers.len() > 1
    }

    /// The layer an SSRC belongs to, and whether it is that layer's RTX stream.
    pub fn layer_of(&self, ssrc: u32) -> Option<(usize, bool)> {
        self.layers.iter().enumerate().find_map(|(i, l)| {
            if l.ssrc == Some(ssrc) {
                Some((i, false))
            } else if l.rtx_ssrc == Some(ssrc) {
                Some((i, true))
            } else {
                None
            }
        })
    }

    /// The layer a packet's RID header extension names (a track without simulcast has one
    /// layer and needs none).
    pub fn layer_by_rid(&self, rid: Option<&[u8]>) -> Option<usize> {
        if !self.is_simulcast() {
            return Some(0);
        }
        let rid = rid?;
        self.layers
            .iter()
            .position(|l| l.rid.as_deref().is_some_and(|r| r.as_bytes() == rid))
    }

    /// The layer to forward to a subscriber allowed up to `limit`: the highest one the
    /// publisher is sending (or would, were it asked: see [`TrackLayer::is_available`]) within
    /// it, else the lowest one sending above it (some picture beats none), else `limit` itself
    /// (nothing is sending yet).
    pub fn choose_layer(&self, limit: usize, now: Instant) -> usize {
        let limit = limit.min(self.layers.len() - 1);
        let sending = |l: &usize| self.layers[*l].is_available(now);
        (0..=limit)
            .rev()
            .find(sending)
            .or_else(|| (limit + 1..self.layers.len()).find(sending))
            .unwrap_or(limit)
    }

    /// Timestamp `ts` of layer `to` on layer `from`'s RTP clock, related through the two
    /// layers' last sender reports (each layer's timestamps start at a random origin).
    pub fn timestamp_on_layer(&self, to: usize, ts: u32, from: usize) -> Option<u32> {
        let (ntp_from, rtp_from) = self.layers.get(from)?.sender_report?;
        let (ntp_to, rtp_to) = self.layers.get(to)?.sender_report?;
        // NTP is 32.32 fixed point seconds.
        let dt = ((ntp_to as i128 - ntp_from as i128) * self.codec.clock_rate as i128) >> 32;
        // `rtp_to` sampled at the same instant on `from`'s clock.
        let rtp_to_on_from = rtp_from.wrapping_add(dt as i64 as u32);
        Some(ts.wrapping_add(rtp_to_on_from.wrapping_sub(rtp_to)))
    }

    /// The first SSRC bound to this track (the SSRC feedback about the whole track names).
    pub fn any_ssrc(&self) -> Option<u32> {
        self.layers.iter().find_map(|l| l.ssrc)
    }
}

/// Orders RIDs lowest quality first. The common naming schemes say it (`l m h`, `q h f`,
/// `low mid high`, `0 1 2`); otherwise the client's order is taken as lowest first, as
/// Chrome's and mediasoup-client's conventions list encodings.
fn lowest_first(rids: &[String]) -> Vec<String> {
    const SCHEMES: [&[&str]; 4] = [
        &["l", "m", "h"],
        &["q", "h", "f"],
        &["low", "mid", "high"],
        &["0", "1", "2"],
    ];
    for scheme in SCHEMES {
        let rank = |rid: &str| scheme.iter().position(|s| s.eq_ignore_ascii_case(rid));
        if rids.iter().all(|r| rank(r).is_some()) {
            let mut sorted = rids.to_vec();
            sorted.sort_by_key(|r| rank(r));
            return sorted;
        }
    }
    rids.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::ArenaIndex;

    fn vp8() -> CodecParams {
        CodecParams {
            payload_type: 96,
            name: "VP8".into(),
            clock_rate: 90_000,
            channels: String::new(),
            fmtp: String::new(),
            rtx_payload_type: Some(97),
        }
    }

    fn rids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn layers_are_ordered_lowest_first() {
        assert_eq!(
            lowest_first(&rids(&["h", "m", "l"])),
            rids(&["l", "m", "h"])
        );
        assert_eq!(
            lowest_first(&rids(&["f", "q", "h"])),
            rids(&["q", "h", "f"])
        );
        assert_eq!(lowest_first(&rids(&["m", "h"])), rids(&["m", "h"]));
        assert_eq!(
            lowest_first(&rids(&["a", "c", "b"])),
            rids(&["a", "c", "b"])
        );
    }

    #[test]
    fn simulcast_layers_are_found_by_rid() {
        let t = Track::new(
            TrackId("p/0".into()),
            MediaKind::Video,
            ParticipantIdx::from_slot(0),
            "0".into(),
            vp8(),
            &rids(&["h", "m", "l"]),
            512,
        );
        assert!(t.is_simulcast());
        assert_eq!(t.layer_by_rid(Some(b"l")), Some(0));
        assert_eq!(t.layer_by_rid(Some(b"h")), Some(2));
        assert_eq!(t.layer_by_rid(Some(b"x")), None);
        assert_eq!(t.layer_by_rid(None), None);
        assert_eq!(t.format, PayloadFormat::Vp8);
    }

    #[test]
    fn sender_reports_relate_layer_timestamps() {
        let mut t = Track::new(
            TrackId("p/0".into()),
            MediaKind::Video,
            ParticipantIdx::from_slot(0),
            "0".into(),
            vp8(),
            &rids(&["l", "h"]),
            64,
        );
        assert_eq!(t.timestamp_on_layer(0, 5, 1), None, "no reports yet");
        // At NTP 100.0 s layer l was at 1_000; half a second later layer h was at 4_000_000_000.
        let ntp = |secs: f64| (secs * 4_294_967_296.0) as u64;
        t.layers[0].sender_report = Some((ntp(100.0), 1_000));
        t.layers[1].sender_report = Some((ntp(100.5), 4_000_000_000));
        // h's report instant is l's 1_000 + 45_000; a frame 3_000 ticks later maps likewise.
        assert_eq!(t.timestamp_on_layer(1, 4_000_003_000, 0), Some(49_000));
        assert_eq!(t.timestamp_on_layer(0, 49_000, 1), Some(4_000_003_000));
    }
}
