//! Dynacast: a simulcast layer no subscription needs for a while is paused at its source — the
//! publisher is told to stop encoding it, sparing a phone's uplink and battery — and resumed as
//! soon as a subscription wants it (the publisher's encoder restarts it with a keyframe).
//!
//! A paused layer stays on offer to the layer choice at the cost it had (see
//! [`crate::track_layer::TrackLayer::is_available`]): a subscriber whose link grows, or who
//! asks for a bigger picture, is given it, and that need resumes it.

use super::*;
use crate::remote_description::MAX_SIMULCAST_LAYERS;
use crate::subscription::Flow;
use sfu_proto::{Event, MediaKind};
use std::time::{Duration, Instant};

/// How long a layer goes unneeded before its publisher is told to stop it: a switch in
/// progress, or a subscriber down a layer for a moment, does not stop it.
pub const DYNACAST_HOLD: Duration = Duration::from_secs(5);

impl Sfu {
    /// Suspends the layers nobody needed for [`DYNACAST_HOLD`] and resumes the needed ones;
    /// each publisher whose set changed gets an event.
    pub(super) fn update_dynacast(&mut self, now: Instant) {
        for t in self.tracks.indices() {
            let Some(track) = self.tracks[t].as_ref() else {
                continue;
            };
            if track.kind != MediaKind::Video || !track.is_simulcast() {
                continue;
            }
            let layers = track.layers.len().min(MAX_SIMULCAST_LAYERS);
            // What each subscription forwards now and where it is headed; a new one (no layer
            // chosen yet) needs what it will be given.
            let mut needed = [false; MAX_SIMULCAST_LAYERS];
            for &(sp, s) in &track.subscribers {
                let Some(sub) = self.participants[sp]
                    .as_ref()
                    .and_then(|p| p.subscriptions.get(s))
                else {
                    continue;
                };
                if !sub.is_active() || sub.flow == Flow::Paused {
                    continue;
                }
                let target = if sub.target_layer < layers {
                    sub.target_layer
                } else {
                    track.choose_layer(sub.layer_limit(layers), now)
                };
                needed[target.min(layers - 1)] = true;
                if let Some(l) = sub.layer.filter(|l| *l < layers) {
                    needed[l] = true;
                }
            }
            let Some(track) = self.tracks[t].as_mut() else {
                continue;
            };
            let mut changed = false;
            for layer in track.layers.iter_mut().take(layers) {
                // A resume the publisher never acted on (the message was lost in a signaling
                // restart, or its encoder could not): suspended again once, so the next need
                // sends the word again rather than leaving the layer off for good.
                layer.note_sending(now);
                if layer.resume_unanswered(now) {
                    layer.resume_went_unanswered();
                }
            }
            for (l, layer) in track.layers.iter_mut().take(layers).enumerate() {
                if needed[l] {
                    layer.unneeded_since = None;
                    if layer.suspended {
                        layer.resume(now);
                        self.counters.layers_resumed += 1;
                        changed = true;
                    }
                } else if !layer.suspended {
                    // Only a layer that is sent counts its time unneeded: one its publisher
                    // has not started, or stopped by itself (its uplink, its CPU), is not
                    // offered back as if it could be resumed.
                    if !layer.is_sending(now) {
                        layer.unneeded_since = None;
                        continue;
                    }
                    let since = *layer.unneeded_since.get_or_insert(now);
                    if now >= since + DYNACAST_HOLD {
                        layer.suspend(now);
                        self.counters.layers_suspended += 1;
                        changed = true;
                    }
                }
            }
            if changed {
                let rids = track
                    .layers
                    .iter()
                    .filter(|l| l.suspended)
                    .filter_map(|l| l.rid.clone())
                    .collect();
                let mid = track.mid.clone();
                let publisher = track.publisher;
                let participant = self.participant(publisher).id.clone();
                self.events.push_back(Event::LayersUnused {
                    participant,
                    mid,
                    rids,
                });
            }
        }
    }
}
