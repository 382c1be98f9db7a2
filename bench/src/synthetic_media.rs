//! Synthetic media with the shape of a real call: Opus-sized audio at 50 packets/s, and video
//! at a target bitrate in frames of realistic size (a keyframe every few seconds, ~5× a delta
//! frame), split into packets of at most 1,100 bytes. Every payload starts with its send time
//! and a counter, so receivers measure loss, jitter and one-way latency on one host clock.

use std::time::{Duration, Instant};

/// Largest RTP payload (what browsers use on typical paths).
pub const MAX_PAYLOAD: usize = 1100;
/// An Opus packet of a 20 ms frame at ~32 kbit/s.
pub const AUDIO_PAYLOAD: usize = 80;
/// Send time (8 bytes, nanoseconds since the generator's epoch) and counter (8 bytes).
pub const STAMP_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MediaProfile {
    pub audio: bool,
    pub video_kbps: u32,
    pub fps: u32,
    pub keyframe_interval: Duration,
}

impl Default for MediaProfile {
    fn default() -> Self {
        Self {
            audio: true,
            video_kbps: 600,
            fps: 30,
            keyframe_interval: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Audio,
    Video,
}

/// One packet to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emit {
    pub kind: StreamKind,
    pub len: usize,
    /// Last packet of a frame.
    pub marker: bool,
    /// RTP timestamp of the packet's frame, in the stream's clock (48 kHz audio, 90 kHz video).
    pub rtp_ts: u32,
}

#[derive(Debug)]
pub struct SyntheticMedia {
    profile: MediaProfile,
    next_audio: Instant,
    next_frame: Instant,
    last_keyframe: Option<Instant>,
    audio_ts: u32,
    video_ts: u32,
}

impl SyntheticMedia {
    /// `phase` spreads publishers over a frame interval so they do not all send at once.
    pub fn new(profile: MediaProfile, now: Instant, phase: Duration) -> Self {
        Self {
            profile,
            next_audio: now + Duration::from_nanos(phase.as_nanos() as u64 % 20_000_000),
            next_frame: now + phase,
            last_keyframe: None,
            audio_ts: rand::random(),
            video_ts: rand::random(),
        }
    }

    fn frame_interval(&self) -> Duration {
        Duration::from_secs(1) / self.profile.fps.max(1)
    }

    /// Bytes of a delta frame such that the average over a keyframe interval meets the target
    /// bitrate with keyframes 5× a delta frame.
    fn delta_frame_bytes(&self) -> usize {
        let fps = self.profile.fps.max(1) as f64;
        let per_interval = fps * self.profile.keyframe_interval.as_secs_f64().max(1.0 / fps);
        let bytes_per_interval = self.profile.video_kbps as f64 * 1000.0 / 8.0
            * self.profile.keyframe_interval.as_secs_f64();
        (bytes_per_interval / (per_interval + 4.0)).max(STAMP_LEN as f64) as usize
    }

    /// Appends the packets due by `now`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Emit>) {
        if self.profile.audio {
            while self.next_audio <= now {
                out.push(Emit {
                    kind: StreamKind::Audio,
                    len: AUDIO_PAYLOAD,
                    marker: true,
                    rtp_ts: self.audio_ts,
                });
                self.audio_ts = self.audio_ts.wrapping_add(960);
                self.next_audio += Duration::from_millis(20);
            }
        }
        if self.profile.video_kbps == 0 {
            return;
        }
        let interval = self.frame_interval();
        while self.next_frame <= now {
            let key = self.last_keyframe.is_none_or(|k| {
                self.next_frame.duration_since(k) >= self.profile.keyframe_interval
            });
            if key {
                self.last_keyframe = Some(self.next_frame);
            }
            let mut bytes = self.delta_frame_bytes() * if key { 5 } else { 1 };
            while bytes > 0 {
                let len = bytes.clamp(STAMP_LEN, MAX_PAYLOAD);
                bytes = bytes.saturating_sub(MAX_PAYLOAD);
                out.push(Emit {
                    kind: StreamKind::Video,
                    len,
                    marker: bytes == 0,
                    rtp_ts: self.video_ts,
                });
            }
            self.video_ts = self.video_ts.wrapping_add(90_000 / self.profile.fps.max(1));
            self.next_frame += interval;
        }
    }
}

/// Writes the stamp into a payload.
pub fn stamp(payload: &mut [u8], sent_ns: u64, counter: u64) {
    if payload.len() >= STAMP_LEN {
        payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
        payload[8..16].copy_from_slice(&counter.to_be_bytes());
    }
}

/// Reads a stamp: (send time in ns, counter).
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() < STAMP_LEN {
        return None;
    }
    let sent = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let counter = u64::from_be_bytes(payload[8..16].try_into().ok()?);
    Some((sent, counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_match_the_profile() {
        let t0 = Instant::now();
        let profile = MediaProfile::default();
        let mut m = SyntheticMedia::new(profile, t0, Duration::ZERO);
        let mut out = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(9) {
            m.poll(t, &mut out);
            t += Duration::from_millis(1);
        }
        let audio = out.iter().filter(|e| e.kind == StreamKind::Audio).count();
        let video_bytes: usize = out
            .iter()
            .filter(|e| e.kind == StreamKind::Video)
            .map(|e| e.len)
            .sum();
        assert!((445..=455).contains(&audio), "{audio} audio packets in 9 s");
        let kbps = video_bytes as f64 * 8.0 / 9.0 / 1000.0;
        assert!((540.0..660.0).contains(&kbps), "{kbps} kbit/s of video");
        assert!(out.iter().all(|e| e.len <= MAX_PAYLOAD));
        let frames = out
            .iter()
            .filter(|e| e.kind == StreamKind::Video && e.marker)
            .count();
        assert!((269..=271).contains(&frames), "{frames} frames");
    }

    #[test]
    fn stamps_round_trip() {
        let mut p = [0u8; 40];
        stamp(&mut p, 123_456_789, 42);
        assert_eq!(read_stamp(&p), Some((123_456_789, 42)));
        assert_eq!(read_stamp(&p[..10]), None);
    }
}
