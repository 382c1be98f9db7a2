//! A publisher's simulcast camera on the simulated network: three layers (RIDs l, m, h) sent
//! the way Chrome sends them, with VP8-shaped payloads that say their layer and frame, and
//! keyframes when asked for.

use crate::sim_network::SimNetwork;
use crate::sim_peer::ReceivedPacket;
use sfu_proto::MediaKind;

pub const LAYERS: usize = 3;
/// Packets per frame of each layer (lowest first) by default: higher layers have bigger frames.
pub const PACKETS_PER_FRAME: [usize; LAYERS] = [1, 2, 4];

/// A publisher's three encoders at 30 fps, VP8-shaped payloads. Each layer's RTP timestamps
/// start at their own origin (as in browsers); sender reports relate them to one clock.
pub struct SimulcastPublisher {
    peer: usize,
    pub tracks: Vec<usize>,
    origins: [u32; LAYERS],
    pub sending: [bool; LAYERS],
    key_owed: [bool; LAYERS],
    send_reports: bool,
    ms: u64,
    frame: u64,
    picture: [u16; LAYERS],
    tl0: [u8; LAYERS],
    pattern_at: [usize; LAYERS],
    /// VP8 descriptors with PictureID (15-bit), TL0PICIDX, TID and Y (L1T3, as Chrome sends),
    /// each layer numbering from its own start.
    pub numbered: bool,
    /// Packets per frame and payload bytes per packet of each layer.
    pub packets_per_frame: [usize; LAYERS],
    pub packet_size: [usize; LAYERS],
    /// A keyframe is this many times a frame's packets (as a real encoder's are several
    /// times larger than the frames between them); 1 by default.
    pub keyframe_scale: usize,
    /// Keyframes sent per layer (asked for or periodic).
    pub keyframes: [u32; LAYERS],
    /// A keyframe unasked every this many frames (every 3 s by default); `None`: only when
    /// asked, as a browser's encoder.
    pub keyframe_every: Option<u64>,
    /// Stops and restarts its encoders as the SFU's `LayersUnused` events say (as the web
    /// client does), a restarted one with a keyframe.
    pub follows_dynacast: bool,
    events_seen: usize,
}

/// The RIDs of the three layers, lowest first.
pub const RIDS: [&str; LAYERS] = ["l", "m", "h"];

/// Where each layer's PictureID and TL0PICIDX start (far apart, as independent encoders').
const PICTURE_ID_START: [u16; LAYERS] = [31_000, 123, 16_000];
const TL0_START: [u8; LAYERS] = [250, 7, 100];
/// L1T3: the temporal layer of each frame, repeating, and whether it is a layer sync (Y: it
/// refers only to the base layer), as libwebrtc marks them.
const TEMPORAL_PATTERN: [(u8, bool); 4] = [(0, false), (2, true), (1, true), (2, false)];

impl SimulcastPublisher {
    pub fn new(net: &mut SimNetwork, peer: usize, send_reports: bool) -> Self {
        let tracks = net.peers[peer].add_simulcast_video(&RIDS);
        Self {
            peer,
            tracks,
            origins: [0x1000_0000, 0x9000_0000, 0xf000_0000],
            sending: [true; LAYERS],
            key_owed: [true; LAYERS],
            send_reports,
            ms: 0,
            frame: 0,
            picture: PICTURE_ID_START,
            tl0: TL0_START,
            pattern_at: [0; LAYERS],
            numbered: false,
            packets_per_frame: PACKETS_PER_FRAME,
            packet_size: [300, 600, 900],
            keyframe_scale: 1,
            keyframes: [0; LAYERS],
            keyframe_every: Some(90),
            follows_dynacast: false,
            events_seen: 0,
        }
    }

    /// Applies the `LayersUnused` events about this publisher that arrived since the last call.
    fn follow_dynacast(&mut self, net: &SimNetwork) {
        let me = net.id(self.peer);
        for event in &net.events[self.events_seen.min(net.events.len())..] {
            if let sfu_proto::Event::LayersUnused {
                participant, rids, ..
            } = event
                && participant == me
            {
                for (l, rid) in RIDS.iter().enumerate() {
                    let on = !rids.iter().any(|r| r == rid);
                    if on && !self.sending[l] {
                        // An encoder made active again starts with a keyframe.
                        self.key_owed[l] = true;
                    }
                    self.sending[l] = on;
                }
            }
        }
        self.events_seen = net.events.len();
    }

    /// Called every simulated millisecond.
    pub fn step(&mut self, net: &mut SimNetwork) {
        self.ms += 1;
        if self.follows_dynacast {
            self.follow_dynacast(net);
        }
        let peer = &mut net.peers[self.peer];
        for ssrc in std::mem::take(&mut peer.pli_ssrcs) {
            if let Some(l) = self
                .tracks
                .iter()
                .position(|&t| peer.tracks[t].ssrc == ssrc)
            {
                self.key_owed[l] = true;
            }
        }
        if self.send_reports && self.ms.is_multiple_of(500) {
            for l in 0..LAYERS {
                let t = &peer.tracks[self.tracks[l]];
                let mut buf = [0u8; 64];
                // NTP seconds since an arbitrary epoch, 32.32 fixed point.
                let ntp = (1000u64 << 32) + (self.ms << 32) / 1000;
                let rtp = self.origins[l].wrapping_add((self.ms * 90) as u32);
                let n = sfu_core::rtcp_writer::sender_report(&mut buf, t.ssrc, ntp, rtp, 0, 0);
                peer.send_rtcp(&buf[..n]);
            }
        }
        let frame = self.ms * 30 / 1000;
        if frame == self.frame {
            return;
        }
        self.frame = frame;
        for (l, &packets) in self.packets_per_frame.iter().enumerate() {
            if !self.sending[l] {
                continue;
            }
            let key = std::mem::take(&mut self.key_owed[l])
                || self.keyframe_every.is_some_and(|n| frame.is_multiple_of(n));
            if key {
                self.keyframes[l] += 1;
            }
            let t = self.tracks[l];
            peer.tracks[t].timestamp = self.origins[l].wrapping_add((frame * 3000) as u32);
            // A keyframe restarts the temporal pattern (it is a base-layer picture).
            if key {
                self.pattern_at[l] = 0;
            }
            let (tid, sync) = TEMPORAL_PATTERN[self.pattern_at[l] % TEMPORAL_PATTERN.len()];
            self.pattern_at[l] += 1;
            if tid == 0 {
                self.tl0[l] = self.tl0[l].wrapping_add(1);
            }
            self.picture[l] = (self.picture[l] + 1) & 0x7fff;
            let packets = if key {
                packets * self.keyframe_scale.max(1)
            } else {
                packets
            };
            for part in 0..packets {
                let mut payload = if self.numbered {
                    // X, I (M: 15 bits), L, T; S on the first packet; layer id after the
                    // payload header.
                    let [hi, lo] = self.picture[l].to_be_bytes();
                    vec![
                        if part == 0 { 0x90 } else { 0x80 },
                        0xe0,
                        0x80 | hi,
                        lo,
                        self.tl0[l],
                        tid << 6 | u8::from(sync) << 5,
                        if key { 0x00 } else { 0x01 },
                    ]
                } else {
                    // VP8 descriptor: S on the first packet; payload header P = 0 on keyframes.
                    vec![
                        if part == 0 { 0x10 } else { 0x00 },
                        if key { 0x00 } else { 0x01 },
                    ]
                };
                payload.push(l as u8);
                payload.extend_from_slice(&(frame as u32).to_be_bytes());
                payload.push(part as u8);
                payload.resize(self.packet_size[l], 0xab);
                peer.send_media(t, &payload, part + 1 == packets, 0);
            }
        }
    }
}

/// Where the payload header is: after the 7-byte numbered descriptor, or the 1-byte plain one.
pub fn header_at(p: &ReceivedPacket) -> usize {
    if p.payload[0] & 0x80 != 0 { 6 } else { 1 }
}

pub fn layer(p: &ReceivedPacket) -> u8 {
    p.payload[header_at(p) + 1]
}

pub fn starts_keyframe(p: &ReceivedPacket) -> bool {
    p.payload[0] & 0x10 != 0 && p.payload[header_at(p)] == 0x00
}

/// The video a subscriber received from the publisher (the peer named "pub"), first arrivals only, in arrival order.
pub fn video_from(net: &SimNetwork, subscriber: usize) -> Vec<ReceivedPacket> {
    let line = net.peers[subscriber]
        .incoming_from("pub", MediaKind::Video)
        .expect("offered the publisher's video")
        .clone();
    net.peers[subscriber]
        .received
        .get(&line.ssrc)
        .map(|pkts| pkts.iter().filter(|p| !p.repaired).cloned().collect())
        .unwrap_or_default()
}
