//! Simulcast layers: which layer each subscription gets (its preference, its subscriber's
//! bandwidth estimate — or, without one, its link's loss — and what is being sent), the probes
//! that look for room to go up, and the timestamps that keep a switch continuous.

use super::*;
use crate::delay_trend::BandwidthUsage;
use crate::probe_cluster::ProbeCluster;
use crate::subscription::{Flow, Subscription};
use crate::temporal_filter::ALL_TEMPORAL;
use crate::track::Track;
use crate::transmit_batch::TransmitBatch;
use sfu_proto::{Event, MediaKind, TrackInfo};
use std::time::{Duration, Instant};

/// A paused video resumes no sooner than this after its pause.
const RESUME_AFTER: Duration = Duration::from_secs(3);
/// A step up in temporal layers waits this long for a layer-sync picture before it asks for a
/// keyframe.
const TEMPORAL_SYNC_WAIT: Duration = Duration::from_secs(1);

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
                // Paused by an estimate there no longer is (a new path): it resumes.
                if sub.flow == Flow::Paused {
                    self.resume(now, idx, s, out);
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
                let behind = sub.layer != Some(want) || sub.flow == Flow::AwaitingKeyframe;
                let sub = &mut self.participant_mut(idx).subscriptions[s];
                sub.target_layer = want;
                sub.temporal.set_target(ALL_TEMPORAL);
                if behind {
                    self.request_keyframe(now, t, want, out);
                }
            }
        }
    }

    /// Splits participant `idx`'s bandwidth estimate across its subscriptions: audio first
    /// (always), then single-layer video (a screen share: whole or paused), then simulcast
    /// video, the room's active speaker before the rest, each on the highest layer it wants
    /// that the rest of the estimate carries. Going up, or resuming, needs 15 % to spare (no
    /// flapping at the edge); video that fits nowhere — or any video below the configured
    /// floor — pauses, with an event. When something is held back and no probe is in flight,
    /// a probe looks for the headroom.
    pub(super) fn allocate(&mut self, now: Instant, idx: ParticipantIdx, out: &mut TransmitBatch) {
        let p = self.participant(idx);
        let Some(estimator) = p.downlink.estimator.as_ref() else {
            return;
        };
        let estimate = estimator.estimate_bps();
        let overusing = estimator.usage() == BandwidthUsage::Overusing;
        let speaker = self.rooms.get(&p.room).and_then(|r| r.speaker);
        let audio_only = estimate < self.config.video_floor_bps;
        if std::mem::take(&mut self.participant_mut(idx).downlink.link_improved) {
            // The link changed: where a step failed on the old one no longer says anything.
            self.participant_mut(idx).downlink.failed_at_bps = 0;
            for sub in &mut self.participant_mut(idx).subscriptions {
                sub.up_blocked_until = None;
                sub.failed_upgrades = 0;
            }
        }
        let p = self.participant(idx);
        let mut remaining = estimate as i64;
        let mut desired = 0u64;
        let mut held_back = false;
        let count = p.subscriptions.len();
        for pass in 0..4 {
            for s in 0..count {
                let sub = &self.participant(idx).subscriptions[s];
                if !sub.is_live() {
                    continue;
                }
                let Some(track) = self.tracks[sub.track].as_ref() else {
                    continue;
                };
                let simulcast = track.is_simulcast();
                let wanted_pass = match (track.kind, simulcast) {
                    (MediaKind::Audio, _) => 0,
                    (_, false) => 1,
                    _ if Some(track.publisher) == speaker => 2,
                    _ => 3,
                };
                if wanted_pass != pass {
                    continue;
                }
                let rate = |l: usize| track.layers[l].rate_bps(now);
                // Up takes the layer's rate over the last seconds: read in an encoder's dip it
                // looks cheaper than it is, and a step on it fails within a second.
                let sustained = |l: usize| track.layers[l].sustained_rate_bps(now);
                if track.kind == MediaKind::Audio {
                    remaining -= rate(0) as i64;
                    desired += rate(0);
                    continue;
                }
                let paused = sub.flow == Flow::Paused;
                // Back from a pause only after a while: an estimate that just fell climbs
                // back for a moment before it settles.
                let may_resume = sub.paused_at.is_none_or(|t| now >= t + RESUME_AFTER)
                    && sub.up_blocked_until.is_none_or(|t| now >= t);
                // Up a layer, or back from a pause, only with room to spare.
                let fits = |l: usize, up: bool| {
                    if up {
                        let need = sustained(l) as i64;
                        need + need * 15 / 100 <= remaining && (!paused || may_resume)
                    } else {
                        rate(l) as i64 <= remaining
                    }
                };
                let current = sub.target_layer;
                let current_temporal = sub.temporal.target();
                // A layer that failed (congestion soon after going up to it) is not tried
                // again for a while, longer after each failure.
                let up_allowed = sub.up_blocked_until.is_none_or(|t| now >= t);
                // Whether (layer, temporal layers) is a step up from where the subscription is.
                let is_up = |l: usize, temporal: u8| {
                    paused
                        || current == usize::MAX
                        || l > current
                        || (l == current && temporal > current_temporal)
                };
                let (limit, top) = if simulcast {
                    let limit = sub.preferred.max_index(track.layers.len());
                    let sending = |l: &usize| track.layers[*l].is_available(now);
                    let top = (0..=limit)
                        .rev()
                        .find(sending)
                        .or_else(|| (limit + 1..track.layers.len()).find(sending));
                    (limit, top)
                } else {
                    (0, Some(0))
                };
                let chosen = if audio_only {
                    None
                } else if simulcast {
                    let sending = |l: &usize| track.layers[*l].is_available(now);
                    (0..=limit)
                        .rev()
                        .filter(sending)
                        .filter(|&l| !is_up(l, ALL_TEMPORAL) || up_allowed)
                        .find(|&l| fits(l, is_up(l, ALL_TEMPORAL)))
                        .or_else(|| {
                            // Nothing it wants is sent: the lowest layer that is, if it fits.
                            (limit + 1..track.layers.len())
                                .find(sending)
                                .filter(|&l| fits(l, paused))
                        })
                        .or_else(|| top.is_none().then(|| track.choose_layer(limit, now)))
                } else {
                    // Back to every temporal layer is a step up too (room to spare, and not
                    // while a failed step is held back).
                    let up = paused || (current == 0 && current_temporal != ALL_TEMPORAL);
                    ((!up || up_allowed) && fits(0, up)).then_some(0)
                };
                // Not even the lowest layer fits whole: its base and middle temporal layers
                // alone (a half or a quarter of the frame rate) may, before a pause.
                let mut temporal = ALL_TEMPORAL;
                let chosen = match chosen {
                    None if !audio_only => {
                        let lowest =
                            (0..track.layers.len()).find(|&l| track.layers[l].is_sending(now));
                        lowest.and_then(|l| {
                            let layer = &track.layers[l];
                            let t = (0..layer.top_temporal(now)).rev().find(|&t| {
                                let up = is_up(l, t);
                                (!up || up_allowed)
                                    && if up {
                                        let need = layer.temporal_sustained_bps(now, t) as i64;
                                        need + need * 15 / 100 <= remaining
                                            && (!paused || may_resume)
                                    } else {
                                        layer.temporal_rate_bps(now, t) as i64 <= remaining
                                    }
                            })?;
                            temporal = t;
                            Some(l)
                        })
                    }
                    chosen => chosen,
                };
                let cost = |l: usize| {
                    if temporal == ALL_TEMPORAL {
                        rate(l)
                    } else {
                        track.layers[l].temporal_rate_bps(now, temporal)
                    }
                };
                if let Some(top) = top {
                    desired += rate(top);
                    held_back |= chosen.is_none_or(|c| c < top) || temporal != ALL_TEMPORAL;
                }
                let t = sub.track;
                // Built only when the event is sent (not on every pass).
                let info = |sfu: &Self| TrackInfo {
                    id: track.id.clone(),
                    kind: track.kind,
                    publisher: sfu.participant(track.publisher).id.clone(),
                };
                let Some(chosen) = chosen else {
                    // Paused: nothing of it goes out until it fits again.
                    if !paused {
                        tracing::debug!(
                            participant = %self.participant(idx).id,
                            track = %track.id,
                            estimate,
                            left_bps = remaining,
                            "video paused"
                        );
                        let info = info(self);
                        let p = self.participant_mut(idx);
                        // A pause soon after a resume (or an upgrade): that step failed.
                        let mut failed = false;
                        if p.subscriptions[s].note_congestion(now) {
                            p.downlink.failed_at_bps = p.downlink.allocated_bps;
                            failed = p.downlink.step_failed(now);
                        }
                        let sub = &mut p.subscriptions[s];
                        sub.flow = Flow::Paused;
                        sub.paused_at = Some(now);
                        self.counters.video_pauses += 1;
                        self.counters.failed_steps += u64::from(failed);
                        let participant = self.participant(idx).id.clone();
                        self.events.push_back(Event::VideoPaused {
                            participant,
                            track: info,
                            paused: true,
                        });
                    }
                    continue;
                };
                remaining -= cost(chosen) as i64;
                let info = paused.then(|| info(self));
                let sub = &self.participant(idx).subscriptions[s];
                // (A keyframe is asked for again while one is awaited: a lost request would
                // otherwise leave the picture stopped until the publisher's next keyframe.)
                // (Also when a step up in temporal layers found no layer-sync picture within a
                // second: an encoder that marks none starts them again only at a keyframe.)
                let temporal_stalled = sub.layer == Some(chosen)
                    && sub.temporal.current()
                        < temporal
                            .min(sub.temporal.target())
                            .min(track.layers[chosen].top_temporal(now))
                    && sub
                        .upgraded_at
                        .is_some_and(|t| now >= t + TEMPORAL_SYNC_WAIT);
                let behind = sub.layer != Some(chosen)
                    || paused
                    || sub.flow == Flow::AwaitingKeyframe
                    || temporal_stalled;
                // Lower for want of bandwidth (not because the subscriber asked for less):
                // stop the layer that overflows now rather than at the next keyframe.
                let congested =
                    sub.layer.is_some_and(|l| chosen < l) && top.is_some_and(|t| chosen < t);
                // Fewer temporal layers of the same layer: from the next picture on, no
                // keyframe needed.
                let thinned = !paused
                    && sub.layer == Some(chosen)
                    && temporal < current_temporal.min(sub.temporal.current());
                let flowing = sub.flow == Flow::Flowing;
                if congested && flowing {
                    self.counters.layer_bandwidth_downgrades += 1;
                }
                if thinned && flowing {
                    self.counters.temporal_downgrades += 1;
                }
                let stepped_up = current != usize::MAX && is_up(chosen, temporal);
                if current != chosen || current_temporal != temporal || paused {
                    // Why a subscriber's picture changed is read from these.
                    tracing::debug!(
                        participant = %self.participant(idx).id,
                        track = %track.id,
                        from = (current != usize::MAX).then_some(current),
                        to = chosen,
                        temporal,
                        estimate,
                        left_bps = remaining,
                        rate_bps = rate(chosen),
                        sustained_bps = sustained(chosen),
                        overusing,
                        "video layer"
                    );
                }
                let mut failed = false;
                let p = self.participant_mut(idx);
                let sub = &mut p.subscriptions[s];
                if (congested || thinned) && sub.flow == Flow::Flowing {
                    if sub.note_congestion(now) {
                        p.downlink.failed_at_bps = p.downlink.allocated_bps;
                        failed = p.downlink.step_failed(now);
                    }
                } else if paused || stepped_up {
                    sub.upgraded_at = Some(now);
                    p.downlink.start_trial(now);
                }
                sub.settle_upgrade(now);
                sub.target_layer = chosen;
                sub.temporal.set_target(temporal);
                if paused || congested {
                    sub.flow = Flow::AwaitingKeyframe;
                }
                self.counters.failed_steps += u64::from(failed);
                if let Some(info) = info {
                    let participant = self.participant(idx).id.clone();
                    self.events.push_back(Event::VideoPaused {
                        participant,
                        track: info,
                        paused: false,
                    });
                }
                if behind {
                    self.request_keyframe(now, t, chosen, out);
                }
            }
        }
        let pacing = self.config.pacing;
        let dl = &mut self.participant_mut(idx).downlink;
        dl.allocated_bps = (estimate as i64 - remaining).max(0) as u64;
        dl.desired_bps = desired;
        // The estimate binds: video leaves at its pace, not in bursts.
        dl.pacer.pace((pacing && held_back).then_some(estimate));
        // (A subscriber that estimates its own downlink finds headroom itself.)
        let may_probe = held_back
            && !dl.receiver_estimated
            && !overusing
            && dl.probes_believed(now)
            && dl.probe.is_none()
            && dl.next_probe_at().is_none_or(|t| now >= t);
        if may_probe {
            // Enough for what is held back (and a margin), but never more than three times
            // the estimate in one step (libwebrtc's first probes go to 3× and 6×) — except
            // that a step which failed before is unblocked only by a probe well above where
            // it failed: aim there, or a paused subscriber whose estimate is its audio's
            // would climb towards it three times at a time, and fall back in between.
            // (Six times the estimate at most: a failure long ago at a rate far above the
            // link of now does not make every probe a burst that buries its audio.)
            let unblock = (dl.failed_at_bps + dl.failed_at_bps * 3 / 5).min(estimate * 6);
            let wanted = (desired + desired / 5).max(unblock);
            let target = wanted.clamp(estimate + estimate / 5, (estimate * 3).max(unblock));
            dl.probes_started = dl.probes_started.wrapping_add(1);
            dl.probe = Some(ProbeCluster::new(dl.probes_started, target, now));
            dl.last_probe_at = Some(now);
            self.counters.probe_clusters += 1;
            self.list_for_pacing(idx);
        }
    }

    /// A paused subscription sends again from its target layer's next keyframe, and its
    /// subscriber is told.
    fn resume(&mut self, now: Instant, idx: ParticipantIdx, s: usize, out: &mut TransmitBatch) {
        let sub = &self.participant(idx).subscriptions[s];
        let t = sub.track;
        let Some(track) = self.tracks[t].as_ref() else {
            return;
        };
        let layer = if track.is_simulcast() {
            track.choose_layer(sub.layer_limit(track.layers.len()), now)
        } else {
            0
        };
        let info = TrackInfo {
            id: track.id.clone(),
            kind: track.kind,
            publisher: self.participant(track.publisher).id.clone(),
        };
        let participant = self.participant(idx).id.clone();
        let sub = &mut self.participant_mut(idx).subscriptions[s];
        sub.flow = Flow::AwaitingKeyframe;
        sub.target_layer = layer;
        sub.temporal.set_target(ALL_TEMPORAL);
        self.events.push_back(Event::VideoPaused {
            participant,
            track: info,
            paused: false,
        });
        self.request_keyframe(now, t, layer, out);
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
