//! Time: consent and offer timeouts, NACKs toward publishers, periodic reports, layers and
//! speakers, all from one pass when the worker's deadline passes.

use super::*;
use crate::rtcp_writer;
use crate::track_layer::TrackLayer;
use crate::transmit_batch::TransmitBatch;
use sfu_proto::MediaKind;
use std::time::Instant;

impl Sfu {
    // ----- time ---------------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant, out: &mut TransmitBatch) {
        if self.next_tick.is_some_and(|t| now < t) {
            return;
        }
        self.next_tick = Some(now + self.config.tick);
        self.clock = Some(now);
        // SFU offers the browser never answered (it may have failed to apply one).
        while let Some(idx) = self.offer_deadlines.pop_due(now) {
            let Some(due) = self.participants[idx]
                .as_ref()
                .filter(|p| p.awaiting_answer)
                .and_then(|p| p.offer_sent_at)
                .map(|sent| sent + OFFER_TIMEOUT)
            else {
                continue;
            };
            if now < due {
                // The entry was an earlier offer's (answered since); this one's comes later.
                self.offer_deadlines.schedule(idx, due);
                continue;
            }
            let p = self.participant_mut(idx);
            p.awaiting_answer = false;
            if p.offer_attempts >= MAX_OFFER_ATTEMPTS {
                // The client cannot (or will not) take our offers: resending forever would
                // hold every later change behind this one, silently.
                tracing::warn!(participant = %p.id, "SFU offer unanswered {MAX_OFFER_ATTEMPTS} times; given up");
                self.counters.offers_abandoned += 1;
                self.give_up_offer(
                    idx,
                    format!("the client answered none of {MAX_OFFER_ATTEMPTS} offers"),
                );
            } else {
                self.renegotiate(idx);
            }
        }
        // Transports: ICE consent, DTLS retransmission, SCTP — each due one once per pass (a
        // deadline still in the past after its timeout waits for the next pass, not a loop).
        let mut due_now = std::mem::take(&mut self.due_scratch);
        due_now.extend(std::iter::from_fn(|| self.transport_deadlines.pop_due(now)));
        for idx in due_now.drain(..) {
            let due = match self.participants[idx].as_mut() {
                Some(p) => p.transport.poll_timeout().is_some_and(|t| t <= now),
                None => continue,
            };
            if due {
                self.participant_mut(idx).transport.handle_timeout(now);
                // (Schedules the transport's next deadline.)
                self.drive_transport(now, idx, out);
            } else {
                self.schedule_transport(idx);
            }
        }
        self.due_scratch = due_now;
        // NACKs and keyframe requests toward publishers, and requests held back by the
        // throttle: only the layers listed with such work (a pass over every layer of every
        // track, 100 times a second, was 3 % of a busy worker's time).
        let mut i = 0;
        while i < self.repair_list.len() {
            let (t, l) = self.repair_list[i];
            self.repair_layer(now, t, l, out);
            let still = self.tracks[t]
                .as_mut()
                .and_then(|track| track.layers.get_mut(l))
                .map(|layer| {
                    let wanting = layer.keyframe_pending
                        || layer.inbound.as_ref().is_some_and(|s| s.wants_repair());
                    layer.repair_listed = wanting;
                    wanting
                });
            if still == Some(true) {
                i += 1;
            } else {
                self.repair_list.swap_remove(i);
            }
        }
        // Probes in flight: the burst due this tick, and a verdict on those overdue; and what
        // pacers have due.
        if self.config.bandwidth_estimation {
            let mut i = 0;
            while i < self.pacing_list.len() {
                let idx = self.pacing_list[i];
                let waiting = self.participants[idx]
                    .as_ref()
                    .is_some_and(|p| !p.downlink.pacer.is_empty());
                if waiting {
                    self.send_paced(now, idx, out);
                }
                let probing = self.participants[idx]
                    .as_ref()
                    .is_some_and(|p| p.downlink.probe.is_some());
                if probing {
                    self.send_probe_padding(now, idx, out);
                    self.participant_mut(idx).downlink.settle_probe(now);
                }
                let still = self.participants[idx].as_mut().is_some_and(|p| {
                    p.pacing_listed = !p.downlink.pacer.is_empty() || p.downlink.probe.is_some();
                    p.pacing_listed
                });
                if still {
                    i += 1;
                } else {
                    self.pacing_list.swap_remove(i);
                }
            }
        }
        // Transport-wide feedback every `twcc_interval` to each participant, a share of them
        // each tick (all at once, every fifth pass took 200–500 µs at 350 participants, a
        // stall for the packets arriving meanwhile).
        let phases = self.phases_per(self.config.twcc_interval);
        self.twcc_phase = (self.twcc_phase + 1) % phases;
        self.send_twcc_feedback(self.twcc_phase, phases, out);
        // Receiver reports every `report_interval` for each published track, likewise a share
        // of the tracks each tick: all at once they were a burst of ≈ 1,400 datagrams (a
        // report per layer, 350 publishers) once a second, some milliseconds the packets
        // arriving meanwhile waited.
        let phases = self.phases_per(self.config.report_interval);
        self.report_phase = (self.report_phase + 1) % phases;
        self.send_receiver_reports(now, self.report_phase, phases, out);
        if self.next_layer_check.is_none_or(|t| now >= t) {
            self.next_layer_check = Some(now + LAYER_CHECK_INTERVAL);
            self.select_layers(now, None, out);
            if self.config.dynacast {
                self.update_dynacast(now);
            }
        }
        if self.next_speaker.is_none_or(|t| now >= t) {
            self.next_speaker = Some(now + self.config.speaker_interval);
            self.update_speakers(now);
        }
    }

    /// One listed layer's timer work: a held-back keyframe request whose throttle ended,
    /// NACKs due for its missing packets, a keyframe after a gap too long to repair.
    fn repair_layer(&mut self, now: Instant, t: TrackIdx, l: usize, out: &mut TransmitBatch) {
        let throttle = self.config.keyframe_throttle;
        let mut needs_keyframe = false;
        let (publisher, ssrc) = {
            let Some(track) = self.tracks[t].as_mut() else {
                return;
            };
            let kind = track.kind;
            let publisher = track.publisher;
            let Some(layer) = track.layers.get_mut(l) else {
                return;
            };
            if layer.keyframe_pending
                && layer
                    .last_keyframe_request
                    .is_none_or(|last| now >= last + throttle)
            {
                needs_keyframe = true;
            }
            let Some(inbound) = layer.inbound.as_mut() else {
                if needs_keyframe {
                    self.request_keyframe(now, t, l, out);
                }
                return;
            };
            self.nack_scratch.clear();
            if kind == MediaKind::Video {
                inbound.due_nacks(
                    now,
                    self.config.nack_interval,
                    self.config.nack_max_tries,
                    &mut self.nack_scratch,
                );
            }
            if inbound.needs_keyframe {
                inbound.needs_keyframe = false;
                needs_keyframe = true;
            }
            (publisher, inbound.ssrc)
        };
        if !self.nack_scratch.is_empty() {
            let n = rtcp_writer::nack(&mut self.rtcp_scratch, ssrc, &self.nack_scratch);
            if n > 0 && self.send_rtcp(publisher, n, out) {
                self.counters.nacks_out += self.nack_scratch.len() as u64;
            }
        }
        if needs_keyframe {
            self.request_keyframe(now, t, l, out);
        }
    }
}

impl Sfu {
    /// Ticks per `interval`: work done every interval for each participant or track is done
    /// on one of them, a share each tick. (Not capped: a cap would shorten long intervals.)
    fn phases_per(&self, interval: std::time::Duration) -> usize {
        let per_tick = interval.as_nanos() / self.config.tick.as_nanos().max(1);
        usize::try_from(per_tick).unwrap_or(usize::MAX).max(1)
    }

    /// Asks the tick to come back to a participant's transport when it next has timer work.
    pub(super) fn schedule_transport(&mut self, idx: ParticipantIdx) {
        if let Some(at) = self.participants[idx]
            .as_mut()
            .and_then(|p| p.transport.poll_timeout())
        {
            self.transport_deadlines.schedule(idx, at);
        }
    }

    /// Puts a participant on the pacing list, once.
    pub(super) fn list_for_pacing(&mut self, idx: ParticipantIdx) {
        if let Some(p) = self.participants[idx].as_mut()
            && !p.pacing_listed
        {
            p.pacing_listed = true;
            self.pacing_list.push(idx);
        }
    }
}

/// Puts a layer on the SFU's repair list, once.
pub(super) fn list_for_repair(
    list: &mut Vec<(TrackIdx, usize)>,
    layer: &mut TrackLayer,
    t: TrackIdx,
    l: usize,
) {
    if !layer.repair_listed {
        layer.repair_listed = true;
        list.push((t, l));
    }
}
