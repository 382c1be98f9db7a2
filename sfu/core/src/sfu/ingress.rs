//! RTP in: a publisher's packet authenticated, bound to its track and layer, cached for
//! repairs, and handed to egress.

use super::timers::list_for_repair;
use super::*;
use crate::payload_format::PayloadFormat;
use crate::rtp_header::RtpHeader;
use crate::ssrc_routes::SsrcRoute;
use crate::transmit_batch::TransmitBatch;
use crate::vp8_descriptor::Vp8Descriptor;
use sfu_proto::MediaKind;
use std::time::Instant;

impl Sfu {
    /// A publisher's RTP packet: forwarded to its subscribers if it is one to forward.
    pub(super) fn handle_rtp(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        buf: &mut [u8],
        out: &mut TransmitBatch,
    ) {
        if let Some(received) = self.receive_rtp(now, idx, buf) {
            let payload = &buf[received.payload.clone()];
            self.forward(now, &received, payload, out);
        }
    }

    /// Opens and checks a publisher's packet, binds a new SSRC to its track and layer, and
    /// keeps it for repairs. `None` when it is dropped (counted) or carries nothing to forward.
    fn receive_rtp(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        buf: &mut [u8],
    ) -> Option<Received> {
        let p = self.participants[idx].as_mut()?;
        let Some(inbound_ctx) = p.inbound.as_deref() else {
            self.counters.dropped_not_ready += 1;
            return None;
        };
        let Ok(header) = RtpHeader::parse(buf) else {
            self.counters.dropped_malformed += 1;
            return None;
        };
        // Which track, which of its layers, and which of the layer's streams (media or RTX):
        // the route found before, if the layer still has this SSRC, else a search.
        let mut found = p.ssrc_routes.get(header.ssrc).and_then(|r| {
            let layer = self.tracks[r.track].as_ref()?.layers.get(r.layer)?;
            let bound = if r.rtx { layer.rtx_ssrc } else { layer.ssrc };
            (bound == Some(header.ssrc)).then_some((r.track, r.layer, r.rtx))
        });
        if found.is_none() {
            for &t in &p.published {
                if let Some((layer, rtx)) = self.tracks[t]
                    .as_ref()
                    .and_then(|tr| tr.layer_of(header.ssrc))
                {
                    found = Some((t, layer, rtx));
                    p.ssrc_routes.insert(
                        header.ssrc,
                        SsrcRoute {
                            track: t,
                            layer,
                            rtx,
                        },
                    );
                    break;
                }
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
            return None;
        };
        let track = self.tracks[t].as_mut()?;
        let layer = &mut track.layers[l];
        let stream = if is_rtx {
            layer.rtx_inbound.as_mut()
        } else {
            layer.inbound.as_mut()
        };
        let Some(stream) = stream else {
            self.counters.dropped_unknown_ssrc += 1;
            return None;
        };
        let ext = stream.extend(header.sequence_number);
        if stream.is_replay(ext) {
            self.counters.dropped_replay += 1;
            return None;
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
            return None;
        };
        stream.record(now, ext, header.timestamp);
        // Listed here, before the checks below may stop the packet: the gap it showed is
        // repaired whether or not this packet is forwarded. (Audio is not repaired.)
        if !is_rtx && track.kind == MediaKind::Video && stream.wants_repair() {
            list_for_repair(&mut self.repair_list, layer, t, l);
        }
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
            return None;
        };
        if !p.permissions.publish {
            // The waiting room: nothing leaves a participant who may not publish.
            self.counters.dropped_blocked += 1;
            return None;
        }
        if track.kind == MediaKind::Audio && !p.audio_budget.take(now, plain_len) {
            self.counters.dropped_over_rate += 1;
            return None;
        }
        let media_ext = if is_rtx {
            if end < start + 2 {
                // Padding-only RTX (bandwidth probing) carries nothing to forward.
                return None;
            }
            let osn = u16::from_be_bytes([buf[start], buf[start + 1]]);
            start += 2;
            let media = layer.inbound.as_mut()?;
            let media_ext = media.extend(osn);
            // A repair fills a gap the stream already passed. One "ahead" of it repairs
            // nothing: it would be media sent as repairs, past the layer's rate.
            if media.highest().is_none_or(|h| media_ext >= h) {
                self.counters.repairs_refused += 1;
                return None;
            }
            if media.is_replay(media_ext) {
                self.counters.duplicate_repairs += 1;
                return None;
            }
            media.record(now, media_ext, header.timestamp);
            if track.kind == MediaKind::Video && media.wants_repair() {
                list_for_repair(&mut self.repair_list, layer, t, l);
            }
            self.counters.repairs_received += 1;
            media_ext
        } else {
            if start == end {
                return None;
            }
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
            track.audio_level_at = Some(now);
        }
        let payload = &buf[start..end];
        // Read once here for every subscriber: its temporal layer and where its numbering is.
        let vp8 = if track.format == PayloadFormat::Vp8 {
            Vp8Descriptor::of(payload)
        } else {
            Vp8Descriptor::default()
        };
        let layer = &mut track.layers[l];
        // Repairs too: they reach the subscribers as media do.
        layer.measure(
            now,
            plain_len + crate::srtp_context::SRTP_TAG_LEN,
            vp8.temporal,
        );
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
        // (Video without simulcast too: a paused subscription resumes at a keyframe.)
        let keyframe =
            track.kind == MediaKind::Video && !is_rtx && track.format.starts_keyframe(payload);
        if keyframe {
            // A request held back by the throttle is answered: sent later it would cost a
            // keyframe nobody waits for, and hold back the next real request.
            track.layers[l].keyframe_pending = false;
        }
        Some(Received {
            track: t,
            layer: l,
            media_ext,
            timestamp: header.timestamp,
            marker: header.marker,
            audio_level,
            simulcast,
            keyframe,
            vp8,
            payload: start..end,
        })
    }
}

/// A publisher's packet as ingress hands it to egress: where it belongs, its place in the
/// layer's sequence, and where its payload lies in the datagram.
pub(super) struct Received {
    pub track: TrackIdx,
    pub layer: usize,
    /// Extended sequence number on the layer's media stream (an RTX repair's original).
    pub media_ext: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// RFC 6464 level of an audio packet, passed on to subscribers.
    pub audio_level: Option<u8>,
    pub simulcast: bool,
    /// Starts a keyframe of video (never a repair): where a subscriber may switch layers or
    /// resume.
    pub keyframe: bool,
    /// A VP8 packet's descriptor (empty for other codecs).
    pub vp8: Vp8Descriptor,
    pub payload: std::ops::Range<usize>,
}
