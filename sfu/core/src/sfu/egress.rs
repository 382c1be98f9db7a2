//! Packets out to subscribers: forwarding (rewrite and seal once per subscriber),
//! retransmissions from the cache, and RTCP sent to a participant.

use super::ingress::Received;
use super::layers::layer_switch_timestamp;
use super::*;
use crate::pacer::PacketSeal;
use crate::participant::Participant;
use crate::payload_format::PayloadFormat;
use crate::resend_record::Resend;
use crate::rtcp_writer;
use crate::rtp_header::HeaderWriter;
use crate::srtp_context::{SRTCP_TRAILER_LEN, SRTP_TAG_LEN};
use crate::subscription::Flow;
use crate::transmit_batch::{SLOT_SIZE, TransmitBatch};
use crate::vp8_descriptor::Vp8Descriptor;
use sfu_proto::MediaKind;
use std::time::Instant;

/// The shortest time between two sender reports of one layer passed on to its subscribers:
/// a browser sends one every 0.5–1.5 s (RFC 3550's randomised interval), so none of those is
/// held, and a flood of them reaches each subscriber at most four times a second.
const SENDER_REPORT_RELAY_INTERVAL: Duration = Duration::from_millis(250);

/// Padding bytes in one probe packet (the most RTP padding can say).
const PROBE_PADDING: usize = 255;

impl Sfu {
    /// Forwards a received packet: rewritten and sealed once per subscriber that takes it.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        received: &Received,
        payload: &[u8],
        out: &mut TransmitBatch,
    ) {
        let Received {
            layer: l,
            media_ext,
            audio_level,
            simulcast,
            keyframe,
            vp8,
            ..
        } = *received;
        let Some(track) = self.tracks[received.track].as_ref() else {
            return;
        };
        // A VP8 track's numbering is continued per subscriber across layer switches, pauses
        // and dropped temporal layers.
        let renumber = track.format == PayloadFormat::Vp8;
        for &(s, sub_idx) in &track.subscribers {
            let Some(sub) = self.participants[s].as_mut() else {
                continue;
            };
            if !sub.permissions.subscribe {
                continue;
            }
            if sub.downlink.pacer.is_full() {
                // The oldest waiting packet leaves now, to make room.
                release_paced(sub, now, true, out, &mut self.counters);
            }
            let (Some(ctx), Some(dest)) = (sub.outbound.as_deref(), sub.remote) else {
                continue;
            };
            let audio_ext = sub.ext.audio_level;
            let twcc_ext = sub.ext.transport_cc;
            let twcc_seq = sub.twcc_out_seq;
            let subscription = &mut sub.subscriptions[sub_idx];
            if !subscription.is_live() {
                continue;
            }
            // Video to a subscriber whose estimate binds waits in its pacer (audio never) — and,
            // while anything still waits there, behind it, so the stream stays in order.
            let paced = subscription.kind == MediaKind::Video
                && (sub.downlink.pacer.is_pacing() || !sub.downlink.pacer.is_empty());
            let restart = match subscription.flow {
                Flow::Paused => continue,
                Flow::AwaitingKeyframe => {
                    if !(keyframe && subscription.target_layer == l) {
                        continue;
                    }
                    true
                }
                Flow::Flowing => subscription.layer != Some(l),
            };
            if restart {
                if simulcast && !(keyframe && subscription.target_layer == l) {
                    continue;
                }
                let out_ts =
                    layer_switch_timestamp(track, subscription, l, received.timestamp, now);
                let switched = simulcast && subscription.layer != Some(l);
                subscription.start_layer(l, media_ext, received.timestamp, out_ts);
                if switched {
                    self.counters.layer_switches += 1;
                }
            }
            if keyframe {
                // Every temporal layer may start at a keyframe of the layer forwarded.
                subscription.temporal.at_keyframe(media_ext);
            }
            if let Some(tid) = vp8.temporal
                && !subscription
                    .temporal
                    .admits(tid, vp8.layer_sync, vp8.starts_picture, media_ext)
            {
                // A temporal layer this subscriber does not get: its stream closes over it
                // (the picture at any of its packets: its first may have been lost).
                subscription.skip(media_ext);
                subscription.vp8.skip_picture(payload, vp8);
                self.counters.temporal_skips += 1;
                continue;
            }
            let Some((out_ext, out_ts)) = subscription.map(now, media_ext, received.timestamp)
            else {
                continue;
            };
            let slot = out.slot();
            if payload.len() + 64 + SRTP_TAG_LEN > slot.len() {
                self.counters.dropped_malformed += 1;
                break;
            }
            let mut w = HeaderWriter::new(
                slot,
                received.marker,
                subscription.payload_type,
                out_ext as u16,
                out_ts,
                subscription.ssrc,
            );
            if let (Some(level), Some(id)) = (audio_level, audio_ext) {
                w.extension(id, &[level]);
            }
            // (A paced packet gets its transport-wide number when it leaves.)
            let twcc_at = twcc_ext.and_then(|id| w.extension(id, &twcc_seq.to_be_bytes()));
            let hlen = w.finish();
            slot[hlen..hlen + payload.len()].copy_from_slice(payload);
            if renumber {
                subscription
                    .vp8
                    .rewrite(&mut slot[hlen..hlen + payload.len()], vp8);
            }
            let len = hlen + payload.len();
            if paced {
                subscription.packets = subscription.packets.wrapping_add(1);
                subscription.octets = subscription.octets.wrapping_add(payload.len() as u32);
                let seal = PacketSeal {
                    header_len: hlen,
                    ssrc: subscription.ssrc,
                    ext_seq: out_ext,
                    twcc_at,
                };
                sub.downlink.pacer.enqueue(now, &slot[..len], seal);
                if !sub.pacing_listed {
                    sub.pacing_listed = true;
                    self.pacing_list.push(s);
                }
                release_paced(sub, now, false, out, &mut self.counters);
                continue;
            }
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
                        sub.downlink.history.record(twcc_seq, now, n, None);
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

    /// Sends what participant `idx`'s pacer has due (called on every timer pass).
    pub(super) fn send_paced(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        out: &mut TransmitBatch,
    ) {
        if let Some(p) = self.participants[idx].as_mut() {
            release_paced(p, now, false, out, &mut self.counters);
        }
    }

    /// Seals `rtcp_scratch[..len]` for participant `idx` and queues it.
    pub(super) fn send_rtcp(
        &mut self,
        idx: ParticipantIdx,
        len: usize,
        out: &mut TransmitBatch,
    ) -> bool {
        let Some(p) = self.participants[idx].as_mut() else {
            return false;
        };
        let Some(index) = p.next_srtcp_index() else {
            self.counters.seal_failures += 1;
            return false;
        };
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

    pub(super) fn retransmit(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        nack: &rtc_rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack,
        out: &mut TransmitBatch,
    ) {
        let max = self.config.max_resends_per_packet;
        let cache_slots = self.config.nack_cache_slots;
        let Some(sub) = self.participants[idx].as_mut() else {
            return;
        };
        let Some(s) = sub
            .subscriptions
            .iter()
            .position(|s| s.ssrc == nack.media_ssrc && s.is_active())
        else {
            return;
        };
        let (Some(ctx), Some(dest)) = (sub.outbound.as_deref(), sub.remote) else {
            return;
        };
        let twcc_ext = sub.ext.transport_cc;
        // The numbers this packet names.
        let named: u64 = nack
            .nacks
            .iter()
            .map(|p| 1 + u64::from(p.lost_packets.count_ones()))
            .sum();
        let subscription = &mut sub.subscriptions[s];
        // Only as RTX: resending on the media SSRC would seal a different header under the same
        // SRTP nonce as the original (RFC 7714 forbids nonce reuse).
        let Some(rtx_pt) = subscription.rtx_payload_type else {
            self.counters.nacks_unrepairable += named;
            return;
        };
        // Repairs come from the layer being forwarded; NACKs from before a switch map to none.
        let Some(layer) = subscription.layer else {
            return;
        };
        let Some(track) = self.tracks[subscription.track].as_ref() else {
            return;
        };
        // How many of them the subscriber's budget lets be looked up (only now: a NACK that
        // can find nothing spends none of it).
        let allowed = (sub.nack_budget.available(now).max(0.0) as u64).min(named);
        sub.nack_budget.take(now, allowed as f64);
        self.counters.nacks_refused += named - allowed;
        let mut left = allowed;
        let renumber = track.format == PayloadFormat::Vp8;
        let cache = &track.layers[layer].cache;
        // A packet asked for again after its last retransmission: the link lost every copy,
        // and the subscriber's picture stays broken until a keyframe. A browser asks for one
        // only after seconds without a picture (Chromium: 3 s); the SFU knows now.
        let mut repair_failed = false;
        for seq in nack.nacks.iter().copied().flatten() {
            if left == 0 {
                break;
            }
            left -= 1;
            self.counters.nacks_in += 1;
            let Some(in_ext) = subscription.unmap(seq) else {
                continue;
            };
            let Some(out_ext) = subscription.out_ext(in_ext) else {
                continue;
            };
            let Some((meta, payload)) = cache.get(in_ext) else {
                self.counters.nacks_unrepairable += 1;
                continue;
            };
            let at = if renumber {
                Vp8Descriptor::of(payload)
            } else {
                Vp8Descriptor::default()
            };
            // Not a packet of a temporal layer the subscriber no longer got when it came (a
            // NACK for the gap a late packet of one left): its references may be missing.
            // Nor one whose picture is older than the numbering remembers.
            if at
                .temporal
                .is_some_and(|tid| !subscription.temporal.passes(tid, in_ext))
                || !subscription.vp8.places(payload, at)
            {
                self.counters.nacks_unrepairable += 1;
                continue;
            }
            match subscription.resends.allow(out_ext, max, cache_slots) {
                Resend::Allowed => {}
                verdict => {
                    self.counters.nacks_unrepairable += 1;
                    repair_failed |= verdict == Resend::UsedUp;
                    continue;
                }
            }
            let out_ts = meta.timestamp.wrapping_add(subscription.ts_delta);
            let slot = out.slot();
            subscription.rtx_ext_seq += 1;
            let (ssrc, seq_ext, pt) = (subscription.rtx_ssrc, subscription.rtx_ext_seq, rtx_pt);
            let mut w = HeaderWriter::new(slot, meta.marker, pt, seq_ext as u16, out_ts, ssrc);
            let twcc_seq = sub.twcc_out_seq;
            if let Some(id) = twcc_ext {
                w.extension(id, &twcc_seq.to_be_bytes());
                sub.twcc_out_seq = twcc_seq.wrapping_add(1);
            }
            let hlen = w.finish();
            // (Not paced: a repair is what a subscriber waits for, and there are few.)
            // RTX payload: the original sequence number, then the original payload.
            slot[hlen..hlen + 2].copy_from_slice(&(out_ext as u16).to_be_bytes());
            let mut len = hlen + 2;
            slot[len..len + payload.len()].copy_from_slice(payload);
            if renumber {
                subscription
                    .vp8
                    .rewrite_repair(&mut slot[len..len + payload.len()], at);
            }
            len += payload.len();
            if let Ok(n) = ctx.seal_rtp(
                slot,
                len,
                hlen,
                ssrc,
                (seq_ext >> 16) as u32,
                seq_ext as u16,
            ) {
                if twcc_ext.is_some() {
                    sub.downlink.history.record(twcc_seq, now, n, None);
                }
                out.commit(dest, n);
                self.counters.retransmissions_out += 1;
                self.counters.packets_out += 1;
                self.counters.bytes_out += n as u64;
            }
        }
        // (Not for a picture already waiting for a keyframe, or paused: one is asked for or
        // not wanted.)
        let flowing = self.participant(idx).subscriptions[s].flow == Flow::Flowing;
        if repair_failed && flowing {
            self.counters.keyframes_for_failed_repairs += 1;
            self.keyframe_for(now, idx, s, out);
        }
    }

    /// Sends what is due of participant `idx`'s probe cluster: padding-only packets on the
    /// RTX stream of one of its live video subscriptions (a receiver counts them for its
    /// feedback and discards them). Without such a stream, or once the cluster has sent all it
    /// will, nothing.
    pub(super) fn send_probe_padding(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        out: &mut TransmitBatch,
    ) {
        let tick = self.config.tick;
        let Some(sub) = self.participants[idx].as_mut() else {
            return;
        };
        let Some(probe) = sub.downlink.probe.as_ref() else {
            return;
        };
        let mut due = probe.bytes_due(now, tick);
        let cluster = probe.id;
        let (Some(ctx), Some(dest), Some(twcc_id)) =
            (sub.outbound.as_deref(), sub.remote, sub.ext.transport_cc)
        else {
            return;
        };
        let Some(s) = sub.subscriptions.iter().position(|s| {
            s.is_live() && s.kind == MediaKind::Video && s.rtx_payload_type.is_some()
        }) else {
            return;
        };
        let subscription = &mut sub.subscriptions[s];
        let rtx_pt = subscription.rtx_payload_type.unwrap_or_default();
        while due > 0 {
            let slot = out.slot();
            subscription.rtx_ext_seq += 1;
            let seq_ext = subscription.rtx_ext_seq;
            let twcc_seq = sub.twcc_out_seq;
            let mut w = HeaderWriter::new(
                slot,
                false,
                rtx_pt,
                seq_ext as u16,
                subscription.last_out_ts,
                subscription.rtx_ssrc,
            );
            w.extension(twcc_id, &twcc_seq.to_be_bytes());
            let hlen = w.finish();
            // RFC 3550 §5.1 padding: the P bit, and the count in the last byte.
            slot[0] |= 0x20;
            slot[hlen..hlen + PROBE_PADDING - 1].fill(0);
            slot[hlen + PROBE_PADDING - 1] = PROBE_PADDING as u8;
            let len = hlen + PROBE_PADDING;
            let Ok(n) = ctx.seal_rtp(
                slot,
                len,
                hlen,
                subscription.rtx_ssrc,
                (seq_ext >> 16) as u32,
                seq_ext as u16,
            ) else {
                self.counters.seal_failures += 1;
                return;
            };
            sub.twcc_out_seq = twcc_seq.wrapping_add(1);
            sub.downlink.history.record(twcc_seq, now, n, Some(cluster));
            if let Some(p) = sub.downlink.probe.as_mut() {
                p.on_sent(now, n);
            }
            out.commit(dest, n);
            self.counters.probe_packets_out += 1;
            self.counters.packets_out += 1;
            self.counters.bytes_out += n as u64;
            due = due.saturating_sub(n);
        }
    }

    /// Publisher SRs are translated per subscriber so lip sync survives the rewrite.
    pub(super) fn relay_sender_report(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
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
            // Passed on at most every 250 ms (browsers send one every 0.5–1.5 s): each
            // goes to every subscriber of the layer, outside the pacer and the estimate, so a
            // publisher sending dozens in one datagram would flood everyone's downlink. The
            // latest is what counts, and is what the next one passed on carries.
            if layer
                .sender_report_relayed
                .is_some_and(|t| now.saturating_duration_since(t) < SENDER_REPORT_RELAY_INTERVAL)
            {
                self.counters.sender_reports_held += 1;
                return;
            }
            layer.sender_report_relayed = Some(now);
            track.subscribers.clone()
        };
        for (s, sub_idx) in subscribers {
            let Some(sub) = self.participants[s].as_ref() else {
                continue;
            };
            // Only the forwarded layer's report describes what the subscriber receives.
            let subscription = &sub.subscriptions[sub_idx];
            if subscription.layer != Some(l) || !subscription.is_active() {
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
}

/// Seals and sends what `p`'s pacer has due now — with `make_room`, just its oldest packet —
/// each with the next transport-wide sequence number, recorded as sent now.
fn release_paced(
    p: &mut Participant,
    now: Instant,
    make_room: bool,
    out: &mut TransmitBatch,
    counters: &mut Counters,
) {
    let (Some(ctx), Some(dest)) = (p.outbound.as_deref(), p.remote) else {
        return;
    };
    while let Some(packet) = p.downlink.pacer.release(now, make_room) {
        let slot = out.slot();
        slot[..packet.len].copy_from_slice(p.downlink.pacer.bytes(&packet));
        let twcc_seq = p.twcc_out_seq;
        if let Some(at) = packet.seal.twcc_at {
            slot[at..at + 2].copy_from_slice(&twcc_seq.to_be_bytes());
        }
        let ext = packet.seal.ext_seq;
        match ctx.seal_rtp(
            slot,
            packet.len,
            packet.seal.header_len,
            packet.seal.ssrc,
            (ext >> 16) as u32,
            ext as u16,
        ) {
            Ok(n) => {
                if packet.seal.twcc_at.is_some() {
                    p.twcc_out_seq = twcc_seq.wrapping_add(1);
                    p.downlink.history.record(twcc_seq, now, n, None);
                }
                out.commit(dest, n);
                counters.paced_packets += 1;
                counters.packets_out += 1;
                counters.bytes_out += n as u64;
            }
            Err(_) => counters.seal_failures += 1,
        }
        if make_room {
            return;
        }
    }
}
