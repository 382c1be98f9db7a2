//! Synthetic media with the shape of a real call: Opus-sized audio at 50 packets/s, and video
//! as three simulcast layers (as browsers publish) at a target bitrate for the top one, in
//! frames of realistic size (a keyframe every few seconds or when asked for, ~5× a delta
//! frame), split into packets of at most 1,100 bytes. Video payloads start like VP8 (payload
//! descriptor, frame tag, keyframe start code) so SFUs find the keyframes they switch layers
//! at. Every payload then carries its send time and a counter, so receivers measure loss,
//! jitter and one-way latency on one host clock.

use std::time::{Duration, Instant};

/// Largest RTP payload (what browsers use on typical paths).
pub const MAX_PAYLOAD: usize = 1100;
/// An Opus packet of a 20 ms frame at ~32 kbit/s.
pub const AUDIO_PAYLOAD: usize = 80;
/// VP8 payload descriptor (1 byte) and the keyframe header (frame tag, start code, size).
pub const FRAME_HEADER_LEN: usize = 11;
/// Send time (8 bytes, nanoseconds since the generator's epoch) and counter (8 bytes).
pub const STAMP_LEN: usize = 16;
/// The smallest payload: frame header and stamp.
pub const MIN_PAYLOAD: usize = FRAME_HEADER_LEN + STAMP_LEN;
/// Simulcast layers, lowest first: bitrate as a share of the top layer's (quarter and half
/// resolution, as browsers scale them).
pub const LAYER_SHARE: [f64; 3] = [0.15, 0.4, 1.0];

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MediaProfile {
    pub audio: bool,
    /// Bitrate of the top video layer (what a subscriber asking for the best gets).
    pub video_kbps: u32,
    pub fps: u32,
    pub keyframe_interval: Duration,
    /// Send three simulcast layers instead of one stream.
    pub simulcast: bool,
    /// Stop encoding the simulcast layers nobody receives, as the web client does when the
    /// SFU says so (`pause_encodings`); restart one with a keyframe when it is wanted again.
    pub dynacast: bool,
}

impl Default for MediaProfile {
    fn default() -> Self {
        Self {
            audio: true,
            video_kbps: 600,
            fps: 30,
            keyframe_interval: Duration::from_secs(3),
            simulcast: true,
            dynacast: true,
        }
    }
}

impl MediaProfile {
    /// Video layers sent: three with simulcast, else one.
    pub fn layers(&self) -> usize {
        if self.simulcast { LAYER_SHARE.len() } else { 1 }
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
    /// Video layer, lowest first (0 for audio and for video without simulcast).
    pub layer: usize,
    pub len: usize,
    /// First packet of a frame, and whether that frame is a keyframe.
    pub frame_start: bool,
    pub keyframe: bool,
    /// Last packet of a frame.
    pub marker: bool,
    /// RTP timestamp of the packet's frame, in the stream's clock (48 kHz audio, 90 kHz video).
    pub rtp_ts: u32,
    /// The stream subscribers receive by default (audio, the top video layer); lower layers
    /// are for those who ask for less.
    pub forwarded: bool,
}

#[derive(Debug)]
struct VideoLayer {
    /// Each layer is its own RTP stream with its own timestamp origin.
    ts: u32,
    last_keyframe: Option<Instant>,
    key_requested: bool,
    kbps: f64,
    /// Not encoded (`pause_encodings`): sends nothing, its clock runs on.
    paused: bool,
}

#[derive(Debug)]
pub struct SyntheticMedia {
    profile: MediaProfile,
    next_audio: Instant,
    next_frame: Instant,
    audio_ts: u32,
    layers: Vec<VideoLayer>,
}

/// Payload sizes of a frame of `bytes`, as a browser's packetizer splits it (libwebrtc's
/// `SplitAboutEqually`): as few packets as [`MAX_PAYLOAD`] allows, sizes within one byte of
/// each other, the larger ones last. The SFU's GSO runs (equal sizes, a shorter last one)
/// then meet what browsers send, not a pattern kinder to them.
pub fn split_about_equally(bytes: usize) -> impl Iterator<Item = usize> {
    let packets = bytes.div_ceil(MAX_PAYLOAD).max(1);
    let base = bytes / packets;
    let larger = bytes % packets;
    (0..packets).map(move |i| base + usize::from(i >= packets - larger))
}

impl SyntheticMedia {
    /// `phase` spreads publishers over a frame interval so they do not all send at once.
    pub fn new(profile: MediaProfile, now: Instant, phase: Duration) -> Self {
        let shares: &[f64] = if profile.simulcast {
            &LAYER_SHARE
        } else {
            &[1.0]
        };
        Self {
            profile,
            next_audio: now + Duration::from_nanos(phase.as_nanos() as u64 % 20_000_000),
            next_frame: now + phase,
            audio_ts: rand::random(),
            layers: shares
                .iter()
                .map(|share| VideoLayer {
                    ts: rand::random(),
                    last_keyframe: None,
                    key_requested: false,
                    kbps: profile.video_kbps as f64 * share,
                    paused: false,
                })
                .collect(),
        }
    }

    /// A receiver lost the picture (a PLI): the layer's next frame is a keyframe.
    pub fn request_keyframe(&mut self, layer: usize) {
        if let Some(l) = self.layers.get_mut(layer) {
            l.key_requested = true;
        }
    }

    /// Stops or restarts a layer's encoder; a restarted one starts with a keyframe, as a
    /// browser's does when an encoding is made active again.
    pub fn set_paused(&mut self, layer: usize, paused: bool) {
        if let Some(l) = self.layers.get_mut(layer) {
            if l.paused && !paused {
                l.key_requested = true;
            }
            l.paused = paused;
        }
    }

    /// Video layers encoded now, and how many are paused (none of either without video).
    pub fn layer_counts(&self) -> (usize, usize) {
        if self.profile.video_kbps == 0 {
            return (0, 0);
        }
        let paused = self.layers.iter().filter(|l| l.paused).count();
        (self.layers.len() - paused, paused)
    }

    fn frame_interval(&self) -> Duration {
        Duration::from_secs(1) / self.profile.fps.max(1)
    }

    /// Bytes of a delta frame such that the average over a keyframe interval meets `kbps`
    /// with keyframes 5× a delta frame.
    fn delta_frame_bytes(&self, kbps: f64) -> usize {
        let fps = self.profile.fps.max(1) as f64;
        let per_interval = fps * self.profile.keyframe_interval.as_secs_f64().max(1.0 / fps);
        let bytes_per_interval = kbps * 1000.0 / 8.0 * self.profile.keyframe_interval.as_secs_f64();
        (bytes_per_interval / (per_interval + 4.0)).max(MIN_PAYLOAD as f64) as usize
    }

    /// Appends the packets due by `now`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Emit>) {
        if self.profile.audio {
            while self.next_audio <= now {
                out.push(Emit {
                    kind: StreamKind::Audio,
                    layer: 0,
                    len: AUDIO_PAYLOAD,
                    frame_start: true,
                    keyframe: false,
                    marker: true,
                    rtp_ts: self.audio_ts,
                    forwarded: true,
                });
                self.audio_ts = self.audio_ts.wrapping_add(960);
                self.next_audio += Duration::from_millis(20);
            }
        }
        if self.profile.video_kbps == 0 {
            return;
        }
        let interval = self.frame_interval();
        let ts_step = 90_000 / self.profile.fps.max(1);
        let top = self.layers.len() - 1;
        while self.next_frame <= now {
            for l in 0..self.layers.len() {
                let frame_at = self.next_frame;
                let delta_bytes = self.delta_frame_bytes(self.layers[l].kbps);
                let layer = &mut self.layers[l];
                if layer.paused {
                    // The capture clock runs on: a restarted layer's timestamps are current.
                    layer.ts = layer.ts.wrapping_add(ts_step);
                    continue;
                }
                let key = std::mem::take(&mut layer.key_requested)
                    || layer.last_keyframe.is_none_or(|k| {
                        frame_at.duration_since(k) >= self.profile.keyframe_interval
                    });
                if key {
                    layer.last_keyframe = Some(frame_at);
                }
                let bytes = (delta_bytes * if key { 5 } else { 1 }).max(MIN_PAYLOAD);
                for (i, len) in split_about_equally(bytes).enumerate() {
                    out.push(Emit {
                        kind: StreamKind::Video,
                        layer: l,
                        len,
                        frame_start: i == 0,
                        keyframe: key,
                        marker: false,
                        rtp_ts: layer.ts,
                        forwarded: l == top,
                    });
                }
                if let Some(last) = out.last_mut() {
                    last.marker = true;
                }
                layer.ts = layer.ts.wrapping_add(ts_step);
            }
            self.next_frame += interval;
        }
    }
}

/// Writes the VP8-shaped start of a payload: the payload descriptor (S on a frame's first
/// packet), and on that packet the frame tag (P = 0 on keyframes) and a keyframe's start code
/// and size (640×360), so an SFU can tell where a picture starts.
pub fn frame_header(payload: &mut [u8], e: &Emit) {
    if payload.len() < FRAME_HEADER_LEN {
        return;
    }
    let header: [u8; FRAME_HEADER_LEN] = match (e.kind, e.frame_start, e.keyframe) {
        (StreamKind::Audio, _, _) => [0; FRAME_HEADER_LEN],
        (StreamKind::Video, false, _) => [0; FRAME_HEADER_LEN],
        (StreamKind::Video, true, true) => [
            0x10, 0x50, 0x2e, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
        ],
        (StreamKind::Video, true, false) => [0x10, 0x31, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0],
    };
    payload[..FRAME_HEADER_LEN].copy_from_slice(&header);
}

/// Writes the stamp into a payload.
pub fn stamp(payload: &mut [u8], sent_ns: u64, counter: u64) {
    if payload.len() >= MIN_PAYLOAD {
        let s = &mut payload[FRAME_HEADER_LEN..];
        s[..8].copy_from_slice(&sent_ns.to_be_bytes());
        s[8..16].copy_from_slice(&counter.to_be_bytes());
    }
}

/// Reads a stamp: (send time in ns, counter).
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let payload = payload.get(FRAME_HEADER_LEN..MIN_PAYLOAD)?;
    let sent = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let counter = u64::from_be_bytes(payload[8..16].try_into().ok()?);
    Some((sent, counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_about_equally_with_the_larger_packets_last() {
        let sizes = |b| split_about_equally(b).collect::<Vec<_>>();
        assert_eq!(sizes(300), [300]);
        assert_eq!(sizes(MAX_PAYLOAD), [MAX_PAYLOAD]);
        assert_eq!(sizes(MAX_PAYLOAD + 1), [550, 551]);
        assert_eq!(sizes(3_002), [1000, 1001, 1001]);
        for bytes in [1, 999, 2_200, 5_555, 12_345] {
            let s = sizes(bytes);
            assert_eq!(s.iter().sum::<usize>(), bytes);
            assert_eq!(s.len(), bytes.div_ceil(MAX_PAYLOAD));
            assert!(s.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
        }
    }

    fn nine_seconds(profile: MediaProfile, keyframe_asked_at: Option<Duration>) -> Vec<Emit> {
        let t0 = Instant::now();
        let mut m = SyntheticMedia::new(profile, t0, Duration::ZERO);
        let mut out = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(9) {
            if keyframe_asked_at.is_some_and(|at| t == t0 + at) {
                m.request_keyframe(1);
            }
            m.poll(t, &mut out);
            t += Duration::from_millis(1);
        }
        out
    }

    fn kbps(out: &[Emit], layer: usize) -> f64 {
        let bytes: usize = out
            .iter()
            .filter(|e| e.kind == StreamKind::Video && e.layer == layer)
            .map(|e| e.len)
            .sum();
        bytes as f64 * 8.0 / 9.0 / 1000.0
    }

    #[test]
    fn rates_match_the_profile() {
        let out = nine_seconds(MediaProfile::default(), None);
        let audio = out.iter().filter(|e| e.kind == StreamKind::Audio).count();
        assert!((445..=455).contains(&audio), "{audio} audio packets in 9 s");
        for (layer, share) in LAYER_SHARE.iter().enumerate() {
            let kbps = kbps(&out, layer);
            let want = 600.0 * share;
            assert!(
                (want * 0.85..want * 1.15).contains(&kbps),
                "layer {layer}: {kbps} kbit/s of video, {want} wanted"
            );
            let frames = out
                .iter()
                .filter(|e| e.kind == StreamKind::Video && e.layer == layer && e.marker)
                .count();
            assert!((269..=271).contains(&frames), "{frames} frames");
        }
        assert!(
            out.iter()
                .all(|e| e.len <= MAX_PAYLOAD && e.len >= MIN_PAYLOAD)
        );
        // Only audio and the top layer are what subscribers get by default.
        assert!(
            out.iter()
                .filter(|e| e.forwarded)
                .all(|e| e.kind == StreamKind::Audio || e.layer == 2)
        );
        let single = nine_seconds(
            MediaProfile {
                simulcast: false,
                ..MediaProfile::default()
            },
            None,
        );
        assert!(single.iter().all(|e| e.layer == 0 && e.forwarded));
        let kbps = kbps(&single, 0);
        assert!(
            (540.0..660.0).contains(&kbps),
            "{kbps} kbit/s without simulcast"
        );
    }

    #[test]
    fn keyframes_come_on_schedule_and_when_asked_for() {
        let keyframes = |out: &[Emit], layer| -> Vec<u32> {
            out.iter()
                .filter(|e| e.kind == StreamKind::Video && e.layer == layer)
                .filter(|e| e.frame_start && e.keyframe)
                .map(|e| e.rtp_ts)
                .collect()
        };
        let out = nine_seconds(MediaProfile::default(), Some(Duration::from_millis(1500)));
        // Every 3 s: at 0, 3 and 6 s.
        assert_eq!(keyframes(&out, 0).len(), 3);
        assert_eq!(
            keyframes(&out, 1).len(),
            4,
            "plus the one asked for at 1.5 s"
        );
        // A frame's first packet carries a VP8 keyframe header; the others do not.
        let mut p = [0u8; 64];
        let key = out
            .iter()
            .find(|e| e.kind == StreamKind::Video && e.keyframe && e.frame_start)
            .unwrap();
        frame_header(&mut p, key);
        assert_eq!(
            (p[0], p[1] & 1, &p[4..7]),
            (0x10, 0, &[0x9d, 0x01, 0x2a][..])
        );
        let delta = out
            .iter()
            .find(|e| e.kind == StreamKind::Video && !e.keyframe && e.frame_start)
            .unwrap();
        frame_header(&mut p, delta);
        assert_eq!((p[0], p[1] & 1), (0x10, 1));
    }

    #[test]
    fn a_paused_layer_sends_nothing_and_restarts_with_a_keyframe_on_its_clock() {
        let t0 = Instant::now();
        let mut m = SyntheticMedia::new(MediaProfile::default(), t0, Duration::ZERO);
        let mut out = Vec::new();
        let video = |out: &[Emit], layer: usize| {
            out.iter()
                .filter(|e| e.kind == StreamKind::Video && e.layer == layer)
                .copied()
                .collect::<Vec<_>>()
        };
        let ms = Duration::from_millis;
        m.poll(t0 + ms(500), &mut out);
        let before = video(&out, 0).last().unwrap().rtp_ts;
        m.set_paused(0, true);
        m.set_paused(1, true);
        assert_eq!(m.layer_counts(), (1, 2));
        out.clear();
        m.poll(t0 + ms(1000), &mut out);
        assert!(video(&out, 0).is_empty() && video(&out, 1).is_empty());
        let top = video(&out, 2);
        assert!(top.len() >= 15, "the top layer goes on: {}", top.len());
        assert!(top.iter().all(|e| !e.keyframe), "no keyframe asked of it");
        assert!(out.iter().any(|e| e.kind == StreamKind::Audio));
        // Restarted (well within the 3 s keyframe interval): a keyframe first, stamped as if
        // the encoder had kept time: the frame at 1,033 ms is 16 frames of 3,000 ticks after
        // the last one sent, at 500 ms.
        m.set_paused(0, false);
        assert_eq!(m.layer_counts(), (2, 1));
        out.clear();
        m.poll(t0 + ms(1040), &mut out);
        let first = video(&out, 0)[0];
        assert!(first.keyframe && first.frame_start);
        assert_eq!(first.rtp_ts.wrapping_sub(before), 16 * 3_000);
        assert!(video(&out, 1).is_empty(), "layer 1 is still paused");
    }

    #[test]
    fn stamps_round_trip() {
        let mut p = [0u8; 40];
        stamp(&mut p, 123_456_789, 42);
        assert_eq!(read_stamp(&p), Some((123_456_789, 42)));
        assert_eq!(read_stamp(&p[..20]), None);
    }
}
