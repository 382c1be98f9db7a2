//! `Sfu::handle_datagram` on arbitrary datagrams, plus `handle_timeout`: the whole receive path
//! (demultiplexing, STUN routing by ufrag, DTLS records, RTP header parsing, SSRC lookup,
//! replay check, SRTP/SRTCP open, RTCP parsing and what follows it). It must never panic.
//!
//! Set-up, built once per process (lazily) and rebuilt only if a participant is lost: an `Sfu`
//! (`SfuConfig::new(TransportConfig::generate(..))`, as `sfu_testkit::SimNetwork` makes it) with
//! one room, a publisher (`SimPeer` with an audio track, a video track and a simulcast video
//! track of three layers bound by RID, its realistic offer) and a subscriber, connected for
//! real over the simulated network: ICE, DTLS and SRTP keys, and the subscriber's renegotiated
//! subscriptions. ICE consent is kept alive by running the simulated
//! network for 1 ms of virtual time after each input.
//!
//! Each input is then:
//! 1. handed to the SFU as a datagram from the publisher's address (the address ICE selected,
//!    so DTLS, RTP and RTCP reach that participant's session) and from an unknown address;
//! 2. if it looks like RTCP (RFC 7983/5761 first bytes) and has at least 8 bytes: taken as a
//!    plain compound RTCP packet, sealed with SRTCP by the publisher and by the subscriber with
//!    their real keys and sent from each (this is what reaches `rtc_rtcp::packet::unmarshal`,
//!    NACK → retransmission, PLI/FIR → keyframe requests, sender-report translation);
//! 3. if it parses as an RTP header: its payload (after the header) sent by the publisher as an
//!    authenticated media packet on the audio track (payload type 111) or, by the payload
//!    type's two low bits, the video track or one of the simulcast layers (MID and RID header
//!    extensions), with the header's marker bit: payload handling, keyframe detection and
//!    layer switching, packet cache, and the rewrite and seal toward the subscriber;
//! 4. `handle_timeout` at the current virtual time.
//!
//! SSRCs are random per process, so a corpus could not name them; the four bytes
//! `F0 0D 55 0k` anywhere in the input stand for SSRC number `k` of this table (any other `k`:
//! left alone): 0 the publisher's audio, 1 its video, 2 its video RTX, 3 its audio RTX (not
//! negotiated), then from 4 the subscriber's incoming streams in the order of the SFU's offers,
//! two numbers each (media SSRC, RTX SSRC or 0), then the simulcast layers l, m, h (media, RTX
//! each).
//!
//! The SFU keeps state between inputs (as a worker does between datagrams). A crash that needs
//! that state may not reproduce from its artifact alone.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::TransmitBatch;
use sfu_core::rtp_header::{PacketClass, RtpHeader, classify};
use sfu_proto::{Event, MediaKind, Permissions};
use sfu_testkit::SimNetwork;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

const PUBLISHER: usize = 0;
const SUBSCRIBER: usize = 1;
const BOTH: Permissions = Permissions {
    publish: true,
    subscribe: true,
};
const SSRC_MARK: [u8; 3] = [0xF0, 0x0D, 0x55];

struct Harness {
    net: SimNetwork,
    batch: TransmitBatch,
    unknown: SocketAddr,
    ssrcs: Vec<u32>,
    lost_participant: bool,
    inputs: u64,
    /// `SFU_FUZZ_STATS=1`: print the SFU's counters after 2^k inputs (which paths are reached).
    stats: bool,
}

impl Harness {
    fn build() -> Self {
        let mut net = SimNetwork::new(1, |_| {});
        net.add_peer("fuzz-pub", &[MediaKind::Audio, MediaKind::Video]);
        let layers = net.peers[PUBLISHER].add_simulcast_video(&["l", "m", "h"]);
        net.add_peer("fuzz-sub", &[]);
        net.join(PUBLISHER, "fuzz-room", BOTH);
        net.join(SUBSCRIBER, "fuzz-room", BOTH);
        net.connect_all(Duration::from_secs(5));
        // A little real media, so the streams and the subscriptions are live.
        let mut tick = 0u32;
        net.run(Duration::from_millis(200), |n| {
            tick += 1;
            if tick.is_multiple_of(20) {
                n.peers[PUBLISHER].send_media(0, &[0xfc, 0xff, 0xfe], true, 960);
            }
            if tick.is_multiple_of(33) {
                // VP8 payload descriptor, then a keyframe header (P bit clear).
                for track in [1, 2, 3, 4] {
                    n.peers[PUBLISHER].send_media(
                        track,
                        &[0x10, 0x00, 0x9d, 0x01, 0x2a],
                        true,
                        3000,
                    );
                }
            }
        });

        let publisher = &net.peers[PUBLISHER];
        let mut ssrcs = vec![
            publisher.tracks[0].ssrc,
            publisher.tracks[1].ssrc,
            publisher.tracks[1].rtx_ssrc,
            publisher.tracks[0].rtx_ssrc,
        ];
        for line in &net.peers[SUBSCRIBER].incoming {
            ssrcs.push(line.ssrc);
            ssrcs.push(line.rtx_ssrc.unwrap_or(0));
        }
        for &t in &layers {
            ssrcs.push(net.peers[PUBLISHER].tracks[t].ssrc);
            ssrcs.push(net.peers[PUBLISHER].tracks[t].rtx_ssrc);
        }
        net.events.clear();
        Self {
            net,
            batch: TransmitBatch::new(),
            unknown: "192.0.2.7:40000".parse().expect("addr"),
            ssrcs,
            lost_participant: false,
            inputs: 0,
            stats: std::env::var_os("SFU_FUZZ_STATS").is_some(),
        }
    }

    fn healthy(&self) -> bool {
        !self.lost_participant
            && self.net.sfu.participant_count() == 2
            && self.net.peers.iter().all(|p| p.is_secured())
    }

    /// Replaces each `F0 0D 55 0k` by SSRC `k` of the table.
    fn substitute_ssrcs(&self, data: &mut [u8]) {
        let mut i = 0;
        while i + 4 <= data.len() {
            if data[i..i + 3] == SSRC_MARK
                && let Some(&ssrc) = self.ssrcs.get(data[i + 3] as usize)
            {
                data[i..i + 4].copy_from_slice(&ssrc.to_be_bytes());
                i += 4;
            } else {
                i += 1;
            }
        }
    }

    /// Hands what a peer queued (the sealed packet) to the SFU from the peer's address.
    fn deliver_from(&mut self, peer: usize) {
        let now = self.net.now;
        let from = self.net.peers[peer].addr;
        while let Some((_, mut datagram)) = self.net.peers[peer].poll_transmit() {
            self.net
                .sfu
                .handle_datagram(now, from, &mut datagram, &mut self.batch);
        }
    }

    fn one(&mut self, input: &[u8]) {
        let mut data = input.to_vec();
        self.substitute_ssrcs(&mut data);
        let now = self.net.now;
        let publisher_addr = self.net.peers[PUBLISHER].addr;

        // 1. Raw, from the participant's address and from an unknown one.
        let mut buf = data.clone();
        self.net
            .sfu
            .handle_datagram(now, publisher_addr, &mut buf, &mut self.batch);
        buf.copy_from_slice(&data);
        self.net
            .sfu
            .handle_datagram(now, self.unknown, &mut buf, &mut self.batch);

        // 2./3. Authenticated, sealed with the peers' real keys.
        match classify(&data) {
            PacketClass::Rtcp if data.len() >= 8 => {
                for peer in [PUBLISHER, SUBSCRIBER] {
                    self.net.peers[peer].send_rtcp(&data);
                    self.deliver_from(peer);
                }
            }
            PacketClass::Rtp => {
                if let Ok(h) = RtpHeader::parse(&data) {
                    let track = if h.payload_type == 111 {
                        0
                    } else {
                        1 + (h.payload_type & 3) as usize
                    };
                    let payload = &data[h.header_len..];
                    let step = if track == 0 { 960 } else { 3000 };
                    self.net.peers[PUBLISHER].send_media(track, payload, h.marker, step);
                    self.deliver_from(PUBLISHER);
                }
            }
            _ => {}
        }
        self.batch.clear();

        // 4. Timers.
        self.net.sfu.handle_timeout(now, &mut self.batch);
        self.batch.clear();

        // Keep ICE consent alive; virtual time moves on by 1 ms per input.
        self.net.run(Duration::from_millis(1), |_| {});

        // Keep memory bounded over millions of inputs.
        for p in &mut self.net.peers {
            p.received.clear();
            p.twcc_seqs_received.clear();
        }
        self.lost_participant |= self
            .net
            .events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. }));
        self.net.events.clear();

        self.inputs += 1;
        if self.stats && self.inputs.is_power_of_two() {
            eprintln!(
                "sfu_datagram: after {} inputs: {:?}",
                self.inputs, self.net.sfu.counters
            );
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
    static BUILDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !slot.as_ref().is_some_and(Harness::healthy) {
            let n = BUILDS.with(|b| {
                b.set(b.get() + 1);
                b.get()
            });
            if n.is_power_of_two() {
                eprintln!("sfu_datagram: building the SFU and its peers (build #{n})");
            }
            *slot = Some(Harness::build());
        }
        slot.as_mut().expect("built").one(data);
    });
});
