//! Simulcast layers: which layer each subscription gets (its preference, its subscriber's
//! bandwidth estimate — or, without one, its link's loss — and what is being sent), the probes
//! that look for room to go up, and the timestamps that keep a switch continuous.

use super::*;
use crate::delay_trend::BandwidthUsage;
use crate::probe_cluster::ProbeCluster;
use crate::subscription::Subscription;
use crate::track::Track;
use crate::transmit_batch::TransmitBatch;
use std::time::Instant;

impl Sfu {
    /// Re-chooses the layer of every simulcast subscription (of one participant, or of all):
    /// the highest its subscriber wants, its link carries and its publisher sends. A change,
    /// or a switch still waiting for its keyframe, asks for a keyframe of the new layer.
    pub(super) fn select_layers(
        &mut self,
        now: Instant,
        only: Option<ParticipantIdx>,
        out: &mut TransmitBatch,
    ) {
        // One participant, or every slot (no list built on this 250 ms pass).
        let all = only.is_none();
        let every = self.participants.indices().filter(move |_| all);
        for idx in only.into_iter().chain(every) {
            if self.config.bandwidth_estimation
                && self.participants[idx]
                    .as_ref()
                    .is_some_and(|p| p.downlink.estimator.is_some())
            {
                self.allocate(now, idx, out);
                continue;
            }
            let count = self.participants[idx]
                .as_ref()
                .map_or(0, |p| p.subscriptions.len());
            for s in 0..count {
                let sub = &self.participant(idx).subscriptions[s];
                if !sub.is_live() {
                    continue;
                }
                let Some(track) = self.tracks[sub.track].as_ref() else {
                    continue;
                };
                if !track.is_simulcast() {
                    continue;
                }
                let want = track.choose_layer(sub.layer_limit(track.layers.len()), now);
                let t = sub.track;
                let behind = sub.layer != Some(want);
                self.participant_mut(idx).subscriptions[s].target_layer = want;
                if behind {
                    self.request_keyframe(now, t, want, out);
                }
            }
        }
    }

    /// Splits participant `idx`'s bandwidth estimate across its subscriptions: audio and
    /// single-layer video first (they cannot step down), then simulcast video, the room's
    /// active speaker before the rest, each on the highest layer it wants that the rest of the
    /// estimate carries. Going up needs 15 % to spare (no flapping at the edge); a track that
    /// fits no layer gets its lowest. When something is held back and no probe is in flight,
    /// a probe looks for the headroom.
    pub(super) fn allocate(&mut self, now: Instant, idx: ParticipantIdx, out: &mut TransmitBatch) {
        let p = self.participant(idx);
        let Some(estimator) = p.downlink.estimator.as_ref() else {
            return;
        };
        let estimate = estimator.estimate_bps();
        let overusing = estimator.usage() == BandwidthUsage::Overusing;
        let speaker = self.rooms.get(&p.room).and_then(|r| r.speaker);
        let mut remaining = estimate as i64;
        let mut desired = 0u64;
        let mut held_back = false;
        let count = p.subscriptions.len();
        // Pass 0: what cannot adapt; pass 1: the speaker's simulcast video; pass 2: the rest.
        for pass in 0..3 {
            for s in 0..count {
                let sub = &self.participant(idx).subscriptions[s];
                if !sub.is_live() {
                    continue;
                }
                let Some(track) = self.tracks[sub.track].as_ref() else {
                    continue;
                };
                let simulcast = track.is_simulcast();
                let wanted_pass = match (simulcast, Some(track.publisher) == speaker) {
                    (false, _) => 0,
                    (true, true) => 1,
                    (true, false) => 2,
                };
                if wanted_pass != pass {
                    continue;
                }
                if !simulcast {
                    let rate = track.layers[0].bitrate.bps(now);
                    remaining -= rate as i64;
                    desired += rate;
                    continue;
                }
                let limit = sub.preferred.max_index(track.layers.len());
                let current = sub.target_layer;
                let rate = |l: usize| track.layers[l].bitrate.bps(now);
                let sending = |l: &usize| track.layers[*l].is_sending(now);
                let top = (0..=limit).rev().find(sending);
                let fits = |l: &usize| {
                    let need = rate(*l) as i64;
                    if *l > current {
                        need + need * 15 / 100 <= remaining
                    } else {
                        need <= remaining
                    }
                };
                let chosen = (0..=limit)
                    .rev()
                    .filter(sending)
                    .find(fits)
                    .or_else(|| (0..track.layers.len()).find(sending))
                    .unwrap_or_else(|| track.choose_layer(limit, now));
                if let Some(top) = top {
                    desired += rate(top);
                    held_back |= chosen < top;
                }
                remaining -= rate(chosen) as i64;
                let t = sub.track;
                let behind = sub.layer != Some(chosen);
                // Lower for want of bandwidth (not because the subscriber asked for less):
                // stop the layer that overflows now rather than at the next keyframe.
                let congested =
                    sub.layer.is_some_and(|l| chosen < l) && top.is_some_and(|t| chosen < t);
                if congested && !sub.hold_until_switch {
                    self.counters.layer_bandwidth_downgrades += 1;
                }
                let sub = &mut self.participant_mut(idx).subscriptions[s];
                sub.target_layer = chosen;
                sub.hold_until_switch = congested;
                if behind {
                    self.request_keyframe(now, t, chosen, out);
                }
            }
        }
        let dl = &mut self.participant_mut(idx).downlink;
        dl.allocated_bps = (estimate as i64 - remaining).max(0) as u64;
        dl.desired_bps = desired;
        let may_probe = held_back
            && !overusing
            && dl.probe.is_none()
            && dl.next_probe_at().is_none_or(|t| now >= t);
        if may_probe {
            // Enough for what is held back (and a margin), but never more than three times
            // the estimate in one step (libwebrtc's first probes go to 3× and 6×).
            let target = (desired + desired / 5).clamp(estimate + estimate / 5, estimate * 3);
            dl.probes_started = dl.probes_started.wrapping_add(1);
            dl.probe = Some(ProbeCluster::new(dl.probes_started, target, now));
            dl.last_probe_at = Some(now);
            self.counters.probe_clusters += 1;
        }
    }

    /// A subscriber's report on a simulcast stream: sustained loss lowers its layer limit one
    /// step below what it receives; a clean link raises it a step at a time.
    pub(super) fn apply_loss_report(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        ssrc: u32,
        fraction_lost: u8,
    ) {
        let Some(p) = self.participants[idx].as_mut() else {
            return;
        };
        let Some(sub) = p
            .subscriptions
            .iter_mut()
            .find(|s| s.ssrc == ssrc && s.is_active())
        else {
            return;
        };
        let Some(track) = self.tracks[sub.track].as_ref() else {
            return;
        };
        let (Some(current), true) = (sub.layer, track.is_simulcast()) else {
            return;
        };
        let top = track.layers.len() - 1;
        if fraction_lost > LOSS_CLEAR {
            sub.clean_since = None;
        } else if sub.clean_since.is_none() {
            sub.clean_since = Some(now);
        }
        if fraction_lost >= LOSS_DOWNGRADE {
            sub.lossy_reports = sub.lossy_reports.saturating_add(1);
            // Sustained: two reports in a row (about two seconds), not one bad burst.
            if sub.lossy_reports >= 2 && current > 0 && sub.loss_cap > current - 1 {
                sub.loss_cap = current - 1;
                self.counters.layer_loss_downgrades += 1;
            }
        } else {
            sub.lossy_reports = 0;
        }
        // Up a step after a clean stretch, and the next step after another one.
        if sub.loss_cap < top
            && let Some(since) = sub.clean_since
            && now >= since + LOSS_RECOVERY
        {
            sub.loss_cap += 1;
            sub.clean_since = Some(now);
            if sub.loss_cap >= top {
                sub.loss_cap = usize::MAX;
            }
        }
    }
}

/// The outgoing timestamp for the first packet of `to` on a subscription switching layers:
/// the packet's capture time on the old layer's clock when both layers' sender reports say it
/// (lip sync survives), else the last sent timestamp advanced by the time since it was sent.
pub(super) fn layer_switch_timestamp(
    track: &Track,
    subscription: &Subscription,
    to: usize,
    in_ts: u32,
    now: Instant,
) -> u32 {
    let (Some(from), Some(sent_at)) = (subscription.layer, subscription.last_out_at) else {
        // The stream's first packet: its timestamp is the stream's random origin.
        return 0;
    };
    let clock = track.codec.clock_rate;
    let elapsed = now.saturating_duration_since(sent_at).as_secs_f64() * clock as f64;
    let by_arrival = subscription
        .last_out_ts
        .wrapping_add((elapsed as u32).max(1));
    if let Some(on_from) = track.timestamp_on_layer(to, in_ts, from) {
        let out = on_from.wrapping_add(subscription.ts_delta);
        let ahead = out.wrapping_sub(subscription.last_out_ts) as i32;
        let off_arrival = out.wrapping_sub(by_arrival) as i32;
        // Reports half a second away from what the arrival times say are stale or wrong.
        if off_arrival.unsigned_abs() < clock / 2 {
            // The same capture instant as the last frame sent (a switch within one frame)
            // still needs a later timestamp: a decoder takes an equal one for the same frame.
            return if ahead > 0 {
                out
            } else {
                subscription.last_out_ts.wrapping_add(1)
            };
        }
    }
    by_arrival
}
