//! Who may publish and subscribe: tracks are announced and offered only while their
//! publisher may publish, and withdrawn when that ends.

use super::*;
use crate::transmit_batch::TransmitBatch;
use sfu_proto::{Event, ParticipantId, Permissions, TrackInfo};
use std::time::Instant;

impl Sfu {
    pub(super) fn on_tracks_published(&mut self, publisher: ParticipantIdx, tracks: &[TrackIdx]) {
        if tracks.is_empty() {
            return;
        }
        if self.participant(publisher).permissions.publish {
            self.announce_tracks(publisher, tracks, true);
        }
        self.offer_tracks_to_room(publisher, tracks);
    }

    /// Tells signaling that `tracks` of `publisher` became visible to the room (or stopped
    /// being). Only tracks the room may receive are news: a waiting participant's are not.
    pub(super) fn announce_tracks(
        &mut self,
        publisher: ParticipantIdx,
        tracks: &[TrackIdx],
        published: bool,
    ) {
        let room = self.participant(publisher).room.clone();
        let pid = self.participant(publisher).id.clone();
        for &t in tracks {
            let Some(track) = self.tracks[t].as_ref() else {
                continue;
            };
            let info = TrackInfo {
                id: track.id.clone(),
                kind: track.kind,
                publisher: pid.clone(),
            };
            self.events.push_back(if published {
                Event::TrackPublished {
                    room: room.clone(),
                    track: info,
                }
            } else {
                Event::TrackUnpublished {
                    room: room.clone(),
                    track: info,
                }
            });
        }
    }

    /// Subscribes the publisher's room to `tracks`, unless the publisher may not publish: nobody
    /// is even offered a waiting participant's tracks (an m-line would reveal they are there).
    pub(super) fn offer_tracks_to_room(&mut self, publisher: ParticipantIdx, tracks: &[TrackIdx]) {
        if tracks.is_empty() || !self.participant(publisher).permissions.publish {
            return;
        }
        let room = self.participant(publisher).room.clone();
        let members = self.room_members(&room);
        for m in members {
            if m == publisher || !self.participant(m).permissions.subscribe {
                continue;
            }
            let mut added = false;
            for &t in tracks {
                added |= self.subscribe(m, t);
            }
            if added {
                self.renegotiate(m);
            }
        }
    }

    /// Withdraws the publisher's tracks from everyone who receives them.
    pub(super) fn withdraw_tracks(&mut self, publisher: ParticipantIdx) {
        let published = self.participant(publisher).published.clone();
        let mut affected = Vec::new();
        for t in published {
            let Some(track) = self.tracks[t].as_mut() else {
                continue;
            };
            let subscriptions = std::mem::take(&mut track.subscribers);
            self.end_subscriptions(subscriptions, &mut affected);
        }
        for sp in affected {
            self.renegotiate(sp);
        }
    }

    /// Subscribes `idx` to every track of the others in its room it does not yet receive.
    pub(super) fn subscribe_to_room(&mut self, idx: ParticipantIdx) {
        if !self.participant(idx).permissions.subscribe {
            return;
        }
        let room = self.participant(idx).room.clone();
        let members = self.room_members(&room);
        let mut added = false;
        for m in members {
            if m == idx || !self.participant(m).permissions.publish {
                continue;
            }
            let published = self.participant(m).published.clone();
            for t in published {
                added |= self.subscribe(idx, t);
            }
        }
        if added {
            self.renegotiate(idx);
        }
    }

    pub(super) fn set_permissions(
        &mut self,
        now: Instant,
        id: &ParticipantId,
        permissions: Permissions,
        out: &mut TransmitBatch,
    ) -> Result<(), String> {
        let idx = self.lookup(id)?;
        let before = std::mem::replace(&mut self.participant_mut(idx).permissions, permissions);
        if before.subscribe && !permissions.subscribe {
            // What the pacer still holds for it is others' media too: none of it leaves now,
            // nor what an ICE-TCP connection's send queue still holds.
            let p = self.participant_mut(idx);
            let held = p.downlink.pacer.clear();
            if let Some(remote) = p.remote {
                out.withdraw_media(remote);
            }
            self.counters.dropped_blocked += held as u64;
            if self.unsubscribe_all(idx) {
                self.renegotiate(idx);
            }
        }
        if !before.subscribe && permissions.subscribe {
            self.subscribe_to_room(idx);
        }
        if !before.publish && permissions.publish {
            // Admitted: the room is offered this participant's tracks (keyframes are asked for
            // as each subscriber answers).
            let published = self.participant(idx).published.clone();
            self.announce_tracks(idx, &published, true);
            self.offer_tracks_to_room(idx, &published);
            for t in published {
                self.request_track_keyframes(now, t, out);
            }
        }
        if before.publish && !permissions.publish {
            let published = self.participant(idx).published.clone();
            self.announce_tracks(idx, &published, false);
            self.withdraw_tracks(idx);
        }
        Ok(())
    }
}
