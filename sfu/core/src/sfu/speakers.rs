//! The active speaker of each room, from RFC 6464 audio levels.

use super::*;
use sfu_proto::{Event, MediaKind};

impl Sfu {
    /// Loudest smoothed audio level per room, of the tracks that sent one lately; an event
    /// when it changes hands.
    pub(super) fn update_speakers(&mut self, now: Instant) {
        const SPEAKING_BELOW_DBOV: f32 = 60.0;
        // A level is the sender's own claim: one that claimed the loudest and then stopped
        // sending stayed the speaker for good (its video first in everyone's allocation).
        const LEVEL_FRESH_FOR: Duration = Duration::from_millis(500);
        let mut changes = Vec::new();
        for (room_id, room) in &mut self.rooms {
            let mut best: Option<(ParticipantIdx, f32)> = None;
            for &m in &room.participants {
                let Some(p) = self.participants[m].as_ref() else {
                    continue;
                };
                if !p.permissions.publish {
                    continue;
                }
                for &t in &p.published {
                    if let Some(track) = self.tracks[t].as_ref()
                        && track.kind == MediaKind::Audio
                        && track.audio_level < SPEAKING_BELOW_DBOV
                        && track
                            .audio_level_at
                            .is_some_and(|t| now.saturating_duration_since(t) < LEVEL_FRESH_FOR)
                        && best.is_none_or(|(_, l)| track.audio_level < l)
                    {
                        best = Some((m, track.audio_level));
                    }
                }
            }
            if let Some((m, _)) = best
                && room.speaker != Some(m)
            {
                room.speaker = Some(m);
                if let Some(p) = self.participants[m].as_ref() {
                    changes.push((room_id.clone(), p.id.clone()));
                }
            }
        }
        for (room, participant) in changes {
            self.events
                .push_back(Event::ActiveSpeaker { room, participant });
        }
    }
}
