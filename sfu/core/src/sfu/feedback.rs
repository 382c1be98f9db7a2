//! RTCP: reports, NACKs and keyframe requests from subscribers and publishers, keyframe
//! requests toward publishers, and the receiver reports and transport-wide feedback we send them.

use super::timers::list_for_repair;
use super::*;
use crate::bandwidth_estimator::{BandwidthEstimator, PacketResult};
use crate::downlink::Downlink;
use crate::remote_description::MAX_SIMULCAST_LAYERS;
use crate::replay_window::ReplayWindow;
use crate::rtcp_writer::{self, ReportBlock};
use crate::send_history::RING as SEND_HISTORY_LEN;
use crate::track::Track;
use crate::transmit_batch::TransmitBatch;
use crate::transport_feedback::TransportFeedback;
use sfu_proto::MediaKind;
use std::time::Instant;

/// The largest SRTCP datagram read: an IP packet's worth (a browser keeps its compounds within
/// one).
const MAX_RTCP_DATAGRAM: usize = 1500;
/// Packets of one compound acted on: a browser's hold a report, a description and a few
/// feedback messages.
const MAX_RTCP_PACKETS: usize = 16;

/// Whether a compound (its headers read, within the first [`MAX_RTCP_PACKETS`]) holds
/// payload-specific feedback: keyframe requests (PLI, FIR) or a receiver estimate (REMB).
fn asks_for_work(compound: &[u8]) -> bool {
    let mut rest = compound;
    for _ in 0..MAX_RTCP_PACKETS {
        if rest.len() < 4 {
            return false;
        }
        if rest[1] == 206 {
            return true;
        }
        let n = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        rest = rest.get(n..).unwrap_or_default();
    }
    false
}

impl Sfu {
    pub(super) fn handle_rtcp(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        buf: &mut [u8],
        out: &mut TransmitBatch,
    ) {
        let Some(p) = self.participants[idx].as_mut() else {
            return;
        };
        let Some(ctx) = p.inbound.as_deref() else {
            self.counters.dropped_not_ready += 1;
            return;
        };
        // No client sends RTCP larger than an IP packet; a reassembled 64 KiB one would be
        // thousands of feedback messages to act on.
        if buf.len() > MAX_RTCP_DATAGRAM {
            self.counters.rtcp_refused += 1;
            return;
        }
        // The index sits in the clear trailer: a replay is refused before any crypto.
        let Some(index) = crate::srtp_context::srtcp_index(buf) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        // Each sender SSRC counts its own SRTCP index (RFC 3711 §3.4).
        let sender_ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if p.srtcp_replay
            .get(&sender_ssrc)
            .is_some_and(|(w, _)| w.is_replay(index as u64))
        {
            self.counters.dropped_replay += 1;
            return;
        }
        let Ok((len, _)) = ctx.open_rtcp(buf) else {
            self.counters.dropped_auth += 1;
            return;
        };
        // Windows are made only for authenticated senders, and a session has a few at once
        // (one per stream it receives on). Past that many, a new sender takes the window of
        // the one heard from longest ago (a stream that ended: m-lines are recycled, and a
        // browser's senders change with them) — never is RTCP accepted without a window,
        // where anyone who saw it could replay it.
        if p.srtcp_replay.len() >= MAX_RTCP_SENDERS
            && !p.srtcp_replay.contains_key(&sender_ssrc)
            && let Some(quietest) = p
                .srtcp_replay
                .iter()
                .min_by_key(|(_, (_, heard))| *heard)
                .map(|(s, _)| *s)
        {
            p.srtcp_replay.remove(&quietest);
        }
        let (window, heard) = p
            .srtcp_replay
            .entry(sender_ssrc)
            .or_insert_with(|| (ReplayWindow::default(), now));
        window.accept(index as u64);
        *heard = now;
        // Keyframe requests and receiver estimates — what makes a publisher's encoder work
        // or the allocation run again — are charged to the session's budget; reports,
        // NACKs and transport-wide feedback (each with a budget of its own where it costs)
        // are not, so that a lossy subscriber's feedback is never what goes. Charged once it
        // authenticates (another's forged datagrams spend none of it), and after its index
        // is taken (it cannot be replayed into a later second's budget).
        if asks_for_work(&buf[..len]) && !p.rtcp_budget.take(now, 1.0) {
            self.counters.rtcp_refused += 1;
            return;
        }
        self.counters.rtcp_in += 1;
        // One packet of the compound at a time: transport-wide feedback is read in place (it
        // comes every 50–250 ms from every subscriber), the rest by rtc-rtcp; a malformed
        // packet costs only itself.
        let mut rest = &buf[..len];
        let mut read = 0;
        while rest.len() >= 4 {
            if read == MAX_RTCP_PACKETS {
                self.counters.rtcp_refused += 1;
                return;
            }
            read += 1;
            let n = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
            if n > rest.len() {
                self.counters.dropped_malformed += 1;
                return;
            }
            let (packet, tail) = rest.split_at(n);
            rest = tail;
            if crate::transport_feedback::is_transport_feedback(packet) {
                self.on_transport_feedback(now, idx, packet, out);
                continue;
            }
            let mut slice = packet;
            match rtc_rtcp::packet::unmarshal(&mut slice) {
                Ok(packets) => self.handle_rtcp_packets(now, idx, &packets, out),
                Err(_) => self.counters.dropped_malformed += 1,
            }
        }
    }

    fn handle_rtcp_packets(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        packets: &[Box<dyn rtc_rtcp::packet::Packet>],
        out: &mut TransmitBatch,
    ) {
        use rtc_rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtc_rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtc_rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
        use rtc_rtcp::receiver_report::ReceiverReport;
        use rtc_rtcp::sender_report::SenderReport;
        use rtc_rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        for packet in packets {
            let any = packet.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.keyframe_for_subscription(now, idx, pli.media_ssrc, out);
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                for entry in &fir.fir {
                    self.keyframe_for_subscription(now, idx, entry.ssrc, out);
                }
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.retransmit(now, idx, nack, out);
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                self.on_receiver_estimate(now, idx, remb.bitrate, out);
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                self.relay_sender_report(now, idx, sr, out);
                for r in &sr.reports {
                    self.apply_loss_report(now, idx, r.ssrc, r.fraction_lost);
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for r in &rr.reports {
                    self.apply_loss_report(now, idx, r.ssrc, r.fraction_lost);
                }
            }
        }
    }

    /// A subscriber's own estimate of its downlink (REMB): its estimate, unless it also sends
    /// transport-wide feedback (ours from that is the better one).
    fn on_receiver_estimate(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        bitrate: f32,
        out: &mut TransmitBatch,
    ) {
        if !self.config.bandwidth_estimation || !bitrate.is_finite() || bitrate < 0.0 {
            return;
        }
        let start = self.config.start_bitrate_bps;
        let Some(p) = self.participants[idx].as_mut() else {
            return;
        };
        let dl = &mut p.downlink;
        if dl.estimator.is_some() && !dl.receiver_estimated {
            return;
        }
        dl.receiver_estimated = true;
        dl.estimator
            .get_or_insert_with(|| BandwidthEstimator::new(start))
            .set_receiver_estimate(bitrate as u64);
        self.counters.receiver_estimates_in += 1;
        let fits = dl
            .estimator
            .as_ref()
            .is_none_or(|e| e.estimate_bps() >= dl.allocated_bps);
        if !fits {
            self.allocate(now, idx, out);
        }
    }

    /// A subscriber's transport-wide feedback: its packets matched to what we sent feed its
    /// bandwidth estimate, and a probe in flight.
    fn on_transport_feedback(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        packet: &[u8],
        out: &mut TransmitBatch,
    ) {
        let Ok(feedback) = TransportFeedback::parse(packet) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        self.counters.transport_feedback_in += 1;
        if !self.config.bandwidth_estimation {
            return;
        }
        let start = self.config.start_bitrate_bps;
        let Some(p) = self.participants[idx].as_mut() else {
            return;
        };
        // What walking it costs: a step per status, up to what the history could match.
        let statuses = usize::from(feedback.status_count).min(SEND_HISTORY_LEN);
        if !p.feedback_budget.take(now, statuses as f64) {
            self.counters.rtcp_refused += 1;
            return;
        }
        if std::mem::take(&mut p.downlink.receiver_estimated) {
            // Its own estimate until now: ours, from its feedback, from here on.
            p.downlink.estimator = None;
        }
        let Downlink {
            history,
            estimator,
            probe,
            ..
        } = &mut p.downlink;
        let estimator = estimator.get_or_insert_with(|| BandwidthEstimator::new(start));
        let before = estimator.estimate_bps();
        estimator.on_feedback(
            now,
            // Two bytes of run-length chunk can describe 8,191 packets: a hostile message would
            // cost up to 65,535 steps; more than the history holds cannot match anything.
            feedback
                .packets()
                .take(SEND_HISTORY_LEN)
                .filter_map(|status| {
                    let sent = history.lookup(status.seq)?;
                    if let Some(cluster) = probe.as_mut() {
                        cluster.on_feedback(&sent, status.arrival_us);
                    }
                    Some(PacketResult {
                        sent_at: sent.sent_at,
                        size: sent.size,
                        arrival_us: status.arrival_us,
                    })
                }),
        );
        if let Some(e) = p.downlink.estimator.as_ref()
            && e.estimate_bps() < before - before / 50
        {
            // Why a subscriber's picture went down is read from these (no media, no identity).
            tracing::debug!(
                participant = %p.id,
                before,
                after = e.estimate_bps(),
                usage = ?e.usage(),
                queue_delay_ms = e.queue_delay_ms(),
                loss = e.recent_loss(),
                acked_bps = e.acked_bps(),
                "estimate down"
            );
        }
        let estimate_before = p.downlink.estimator.as_ref().map(|e| e.estimate_bps());
        if let Some(probe) = p.downlink.settle_probe(now) {
            tracing::debug!(
                participant = %p.id,
                target = probe.target_bps,
                found = probe.found_bps,
                believed = probe.believed,
                before = estimate_before,
                after = p.downlink.estimator.as_ref().map(|e| e.estimate_bps()),
                "probe settled"
            );
        }
        // A step up that brought loss fails now: the picture goes back down before the new
        // layer's losses freeze it.
        let failed = p.downlink.judge_trial(now);
        if failed {
            tracing::debug!(participant = %p.id, "step up failed");
            self.counters.failed_steps += 1;
        }
        // An estimate that no longer carries what was allocated is acted on now, not at the
        // next layer pass: every 100 ms over a bottleneck's capacity fills its queue further.
        let fits = p
            .downlink
            .estimator
            .as_ref()
            .is_none_or(|e| e.estimate_bps() >= p.downlink.allocated_bps);
        if failed || !fits {
            self.allocate(now, idx, out);
        }
    }

    pub(super) fn keyframe_for_subscription(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        media_ssrc: u32,
        out: &mut TransmitBatch,
    ) {
        let found = self
            .participant(idx)
            .subscriptions
            .iter()
            .position(|s| s.ssrc == media_ssrc && s.is_active());
        if let Some(s) = found {
            self.counters.keyframe_requests_in += 1;
            self.keyframe_for(now, idx, s, out);
        }
    }

    /// Asks the publishers of everything `idx` receives for a keyframe (throttled per layer).
    pub(super) fn request_keyframes_for(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        out: &mut TransmitBatch,
    ) {
        for s in 0..self.participant(idx).subscriptions.len() {
            if self.participant(idx).subscriptions[s].is_active() {
                self.keyframe_for(now, idx, s, out);
            }
        }
    }

    /// A keyframe for subscription `s` of participant `idx`: of the layer it forwards, or of
    /// the one it is switching to.
    pub(super) fn keyframe_for(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        s: usize,
        out: &mut TransmitBatch,
    ) {
        let subscription = &self.participant(idx).subscriptions[s];
        let t = subscription.track;
        let Some(track) = self.tracks[t].as_ref() else {
            return;
        };
        let layer = subscription.target_layer.min(track.layers.len() - 1);
        self.request_keyframe(now, t, layer, out);
    }

    /// Keyframes of every layer of track `t` that a subscriber forwards or switches to.
    pub(super) fn request_track_keyframes(
        &mut self,
        now: Instant,
        t: TrackIdx,
        out: &mut TransmitBatch,
    ) {
        let Some(track) = self.tracks[t].as_ref() else {
            return;
        };
        let top = track.layers.len() - 1;
        let mut wanted = 0u8;
        for &(sp, si) in &track.subscribers {
            if let Some(sub) = self.participants[sp].as_ref() {
                wanted |= 1 << sub.subscriptions[si].target_layer.min(top);
            }
        }
        if !track.is_simulcast() {
            wanted = 1;
        }
        for layer in 0..=top {
            if wanted & (1 << layer) != 0 {
                self.request_keyframe(now, t, layer, out);
            }
        }
    }

    /// Sends a PLI for one layer of a track to its publisher unless one went out within the
    /// throttle interval.
    pub(super) fn request_keyframe(
        &mut self,
        now: Instant,
        t: TrackIdx,
        layer: usize,
        out: &mut TransmitBatch,
    ) {
        let throttle = self.config.keyframe_throttle;
        let Some(track) = self.tracks[t].as_mut() else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        let publisher = track.publisher;
        let layer_idx = layer;
        let Some(layer) = track.layers.get_mut(layer) else {
            return;
        };
        let Some(ssrc) = layer.ssrc else {
            return;
        };
        if layer
            .last_keyframe_request
            .is_some_and(|last| now < last + throttle)
        {
            self.counters.keyframe_requests_throttled += 1;
            layer.keyframe_pending = true;
            list_for_repair(&mut self.repair_list, layer, t, layer_idx);
            return;
        }
        layer.last_keyframe_request = Some(now);
        layer.keyframe_pending = false;
        let n = rtcp_writer::pli(&mut self.rtcp_scratch, ssrc);
        if self.send_rtcp(publisher, n, out) {
            self.counters.keyframe_requests_out += 1;
        }
    }

    /// Transport-wide feedback to the participants in slots `phase`, `phase + phases`, …
    /// whose packets arrived since their last one.
    pub(super) fn send_twcc_feedback(
        &mut self,
        phase: usize,
        phases: usize,
        out: &mut TransmitBatch,
    ) {
        for idx in self.participants.indices().skip(phase).step_by(phases) {
            let media_ssrc = {
                let Some(p) = self.participants[idx].as_ref() else {
                    continue;
                };
                if !p.twcc.has_pending() {
                    continue;
                }
                p.published
                    .iter()
                    .find_map(|&t| self.tracks[t].as_ref().and_then(Track::any_ssrc))
                    .unwrap_or(0)
            };
            // A long silence may leave more than one message's worth.
            for _ in 0..4 {
                let Some(p) = self.participants[idx].as_mut() else {
                    break;
                };
                let Some(n) = p.twcc.write_feedback(
                    &mut self.rtcp_scratch,
                    rtcp_writer::SFU_RTCP_SSRC,
                    media_ssrc,
                ) else {
                    break;
                };
                if self.send_rtcp(idx, n, out) {
                    self.counters.twcc_feedback_out += 1;
                }
            }
        }
    }

    /// Receiver reports on the published tracks in slots `phase`, `phase + phases`, … (each
    /// track's turn comes once every `phases` calls).
    pub(super) fn send_receiver_reports(
        &mut self,
        now: Instant,
        phase: usize,
        phases: usize,
        out: &mut TransmitBatch,
    ) {
        for (t, l) in self
            .tracks
            .indices()
            .skip(phase)
            .step_by(phases)
            .flat_map(|t| (0..MAX_SIMULCAST_LAYERS).map(move |l| (t, l)))
        {
            let Some(track) = self.tracks[t].as_mut() else {
                continue;
            };
            let publisher = track.publisher;
            let Some(inbound) = track.layers.get_mut(l).and_then(|l| l.inbound.as_mut()) else {
                continue;
            };
            let Some(highest) = inbound.highest() else {
                continue;
            };
            let (fraction_lost, total_lost) = inbound.report_loss();
            let (last_sr, dlsr) = match inbound.last_sr {
                Some((mid, at)) => {
                    let d = now.duration_since(at);
                    (mid, (d.as_secs_f64() * 65536.0) as u32)
                }
                None => (0, 0),
            };
            let block = ReportBlock {
                ssrc: inbound.ssrc,
                fraction_lost,
                total_lost,
                highest_ext_seq: highest as u32,
                jitter: inbound.jitter(),
                last_sr,
                delay_since_last_sr: dlsr,
            };
            let n = rtcp_writer::receiver_report(&mut self.rtcp_scratch, &block);
            self.send_rtcp(publisher, n, out);
        }
    }
}
