//! End to end over real UDP on loopback: an independent WebRTC stack (webrtc-rs `rtc`, sans-IO)
//! publishes VP8 video and Opus audio through the SFU and a second instance receives them.
//!
//! Exercised on the way: ICE-lite connectivity checks, DTLS with the clients as DTLS clients,
//! SRTP/SRTCP with AEAD_AES_128_GCM, the SFU's renegotiation offer that adds the publisher's
//! tracks to the subscriber, the per-subscriber SSRC/sequence/timestamp rewrite, and the keyframe
//! request the SFU sends the publisher when a subscriber connects. Both clients are driven from
//! the test thread with non-blocking std sockets. `RUST_LOG=rtc=debug` shows webrtc-rs' side.
//!
//! The second test sprays a worker with seeded garbage during such a call, from a stranger's
//! socket and, a little, from the publisher's own: the worker is to drop and count all of it
//! while the call goes on undisturbed.

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{Registry, Slot};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu_core::Counters;
use sfu_proto::{Command, Event, ParticipantId, Permissions, RoomId};
use sfu_server::udp_receive::UdpReceive;
use sfu_server::{NodeConfig, SfuNode};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const ROOM: &str = "r1";
const VIDEO_PACKETS: u32 = 200;
const MIN_VIDEO_RECEIVED: usize = 190;
/// One audio packet every fourth video packet: 20 ms apart.
const AUDIO_EVERY: u32 = 4;
const AUDIO_PACKETS: u32 = VIDEO_PACKETS / AUDIO_EVERY;
const MIN_AUDIO_RECEIVED: usize = 45;
const PACKET_INTERVAL: Duration = Duration::from_millis(5);
/// Hard ceiling for the whole test; each phase below has its own, smaller one.
const TEST_BUDGET: Duration = Duration::from_secs(20);

/// Marks every inbound RTCP packet for the application: webrtc-rs' chain otherwise ends inbound
/// RTCP at its terminus, and the publisher is to see the SFU's keyframe requests and reports.
#[derive(Default)]
struct DeliverRtcp {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if matches!(msg.message.packet, Packet::Rtcp(_)) {
            msg.message.attributes.push(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// One RTP packet as the application of a client got it, decrypted.
#[derive(Debug)]
struct Received {
    track: String,
    ssrc: u32,
    seq: u16,
    payload_type: u8,
    payload: Bytes,
}

/// One webrtc-rs peer connection on its own loopback UDP socket.
struct Client {
    name: &'static str,
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local_addr: SocketAddr,
    state: RTCPeerConnectionState,
    rtp: Vec<Received>,
    /// Media SSRCs named by the PLIs received, and how many receiver reports came in.
    plis: Vec<u32>,
    receiver_reports: usize,
    tracks_opened: Vec<String>,
    buf: Vec<u8>,
}

impl Client {
    fn new(name: &'static str) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
        socket.set_nonblocking(true).expect("non-blocking socket");
        let local_addr = socket.local_addr().expect("client socket address");

        let mut media_engine = MediaEngine::default();
        media_engine
            .register_default_codecs()
            .expect("register default codecs");
        let registry = Registry::new().with(Slot::Custom(20_000), DeliverRtcp::default());
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .expect("build peer connection");

        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local_addr.ip().to_string(),
                port: local_addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .expect("host candidate");
        pc.add_local_candidate(
            RTCIceCandidate::from(&candidate)
                .to_json()
                .expect("candidate json"),
        )
        .expect("add local candidate");

        Self {
            name,
            pc,
            socket,
            local_addr,
            state: RTCPeerConnectionState::New,
            rtp: Vec::new(),
            plis: Vec::new(),
            receiver_reports: 0,
            tracks_opened: Vec::new(),
            buf: vec![0; 2048],
        }
    }

    fn connected(&self) -> bool {
        self.state == RTCPeerConnectionState::Connected
    }

    /// Moves datagrams both ways, fires due timers and drains events and media. Returns whether
    /// anything happened.
    fn pump(&mut self) -> bool {
        let mut busy = false;
        loop {
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, peer_addr)) => {
                    busy = true;
                    let msg = TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: self.local_addr,
                            peer_addr,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(&self.buf[..n]),
                    };
                    // Per-packet failures (authentication, parsing) are logged by webrtc-rs and
                    // show up below as missing packets; this only fails on a closed connection.
                    self.pc
                        .handle_read(msg)
                        .unwrap_or_else(|e| panic!("{}: handle_read: {e}", self.name));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{}: UDP receive failed: {e}", self.name),
            }
        }
        let now = Instant::now();
        if self.pc.poll_timeout().is_some_and(|t| t <= now) {
            self.pc
                .handle_timeout(now)
                .unwrap_or_else(|e| panic!("{}: handle_timeout: {e}", self.name));
        }
        while let Some(out) = self.pc.poll_write() {
            busy = true;
            if let Err(e) = self.socket.send_to(&out.message, out.transport.peer_addr) {
                panic!(
                    "{}: UDP send to {} failed: {e}",
                    self.name, out.transport.peer_addr
                );
            }
        }
        while let Some(event) = self.pc.poll_event() {
            busy = true;
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    println!("[{}] peer connection state: {state}", self.name);
                    self.state = state;
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    println!(
                        "[{}] track open: {} (ssrc {})",
                        self.name, init.track_id, init.ssrc
                    );
                    self.tracks_opened.push(init.track_id.to_string());
                }
                _ => {}
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            busy = true;
            match message {
                RTCMessage::RtpPacket(track, p) => self.rtp.push(Received {
                    track: track.to_string(),
                    ssrc: p.header.ssrc,
                    seq: p.header.sequence_number,
                    payload_type: p.header.payload_type,
                    payload: p.payload,
                }),
                RTCMessage::RtcpPacket(_, packets) => {
                    for p in &packets {
                        let any = p.as_any();
                        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                            self.plis.push(pli.media_ssrc);
                        } else if any.downcast_ref::<ReceiverReport>().is_some() {
                            self.receiver_reports += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        busy
    }

    fn offer(&mut self) -> String {
        let offer = self.pc.create_offer(None).expect("create offer");
        self.pc
            .set_local_description(Instant::now(), offer.clone())
            .expect("set local offer");
        offer.sdp
    }

    fn apply_answer(&mut self, sdp: &str) {
        let answer = RTCSessionDescription::answer(sdp.to_owned()).unwrap_or_else(|e| {
            panic!(
                "{}: SFU answer is not a valid answer: {e}\n{sdp}",
                self.name
            )
        });
        self.pc
            .set_remote_description(Instant::now(), answer)
            .unwrap_or_else(|e| panic!("{}: applying the SFU answer: {e}\n{sdp}", self.name));
    }

    fn answer_offer(&mut self, sdp: &str) -> String {
        let offer = RTCSessionDescription::offer(sdp.to_owned()).unwrap_or_else(|e| {
            panic!("{}: SFU offer is not a valid offer: {e}\n{sdp}", self.name)
        });
        self.pc
            .set_remote_description(Instant::now(), offer)
            .unwrap_or_else(|e| panic!("{}: applying the SFU offer: {e}\n{sdp}", self.name));
        let answer = self
            .pc
            .create_answer(None)
            .unwrap_or_else(|e| panic!("{}: answering the SFU offer: {e}", self.name));
        self.pc
            .set_local_description(Instant::now(), answer.clone())
            .unwrap_or_else(|e| panic!("{}: set local answer: {e}", self.name));
        answer.sdp
    }

    /// The payload type the sender negotiated for `mime`.
    fn sender_payload_type(&mut self, sender: RTCRtpSenderId, mime: &str) -> u8 {
        let mut s = self.pc.rtp_sender(sender).expect("sender exists");
        s.get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
            .map(|c| c.payload_type)
            .unwrap_or_else(|| panic!("{}: {mime} was not negotiated", self.name))
    }
}

/// The test's signaling: applies the SFU's answers, answers its offers, and records the rest.
struct Signaling {
    events: Receiver<Event>,
    connected: Vec<String>,
    answers_applied: Vec<String>,
    offers_answered: Vec<String>,
    published: Vec<String>,
}

impl Signaling {
    fn pump(&mut self, node: &SfuNode, a: &mut Client, b: &mut Client) -> bool {
        let mut busy = false;
        while let Ok(event) = self.events.try_recv() {
            busy = true;
            match event {
                Event::Answer {
                    participant,
                    answer_sdp,
                } => {
                    println!("[sfu] answer for {participant}:\n{answer_sdp}");
                    client_for(&participant, a, b).apply_answer(&answer_sdp);
                    self.answers_applied.push(participant.to_string());
                }
                Event::Offer {
                    participant,
                    offer_sdp,
                } => {
                    println!("[sfu] renegotiation offer for {participant}:\n{offer_sdp}");
                    let answer_sdp = client_for(&participant, a, b).answer_offer(&offer_sdp);
                    println!("[{participant}] answer to the SFU's offer:\n{answer_sdp}");
                    node.send(Command::Answer {
                        participant: participant.clone(),
                        answer_sdp,
                    });
                    self.offers_answered.push(participant.to_string());
                }
                Event::Connected { participant, .. } => {
                    println!("[sfu] {participant} connected");
                    self.connected.push(participant.to_string());
                }
                Event::TrackPublished { track, .. } => {
                    println!("[sfu] track published: {} ({:?})", track.id, track.kind);
                    self.published.push(track.id.to_string());
                }
                Event::CommandFailed {
                    participant, error, ..
                } => {
                    panic!("the SFU refused a command for {participant:?}: {error}")
                }
                Event::Disconnected {
                    participant,
                    reason,
                    ..
                } => panic!("the SFU disconnected {participant}: {reason:?}"),
                other => println!("[sfu] {other:?}"),
            }
        }
        busy
    }
}

fn client_for<'c>(
    participant: &ParticipantId,
    a: &'c mut Client,
    b: &'c mut Client,
) -> &'c mut Client {
    match participant.as_str() {
        "a" => a,
        "b" => b,
        other => panic!("SFU event for an unknown participant {other}"),
    }
}

/// One round of the loop: SFU events, then both clients. Sleeps a little when all were idle.
fn step(node: &SfuNode, sig: &mut Signaling, a: &mut Client, b: &mut Client) {
    let mut busy = sig.pump(node, a, b);
    busy |= a.pump();
    busy |= b.pump();
    for c in [&*a, &*b] {
        assert!(
            c.state != RTCPeerConnectionState::Failed,
            "{}: peer connection failed",
            c.name
        );
    }
    if !busy {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Drives everything until `done` holds, failing with `what` after `limit`.
fn run_until(
    what: &str,
    limit: Duration,
    node: &SfuNode,
    sig: &mut Signaling,
    a: &mut Client,
    b: &mut Client,
    mut done: impl FnMut(&Signaling, &Client, &Client) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        step(node, sig, a, b);
        if done(sig, a, b) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; a: {:?}, b: {:?}, SFU reported \
             connected: {:?}, answers applied: {:?}, offers answered: {:?}; SFU counters: {:?}",
            a.state,
            b.state,
            sig.connected,
            sig.answers_applied,
            sig.offers_answered,
            node.counters().0,
        );
    }
}

/// A payload: a 4-byte codec header, the packet counter, and filler derived from both.
fn payload(header: [u8; 4], counter: u32, len: usize) -> Bytes {
    let mut p = header.to_vec();
    p.extend_from_slice(&counter.to_be_bytes());
    p.extend((0..len as u32).map(|i| (counter.wrapping_mul(31).wrapping_add(i) & 0xff) as u8));
    Bytes::from(p)
}

/// VP8 (RFC 7741 §4.2): X=1, S=1, a 15-bit picture id.
fn vp8_payload(counter: u32) -> Bytes {
    let picture_id = (counter & 0x7fff) as u16;
    let header = [0x90, 0x80, 0x80 | (picture_id >> 8) as u8, picture_id as u8];
    payload(header, counter, 300)
}

/// Opus: a TOC byte (0x78: config 15, hybrid fullband 20 ms, mono, one frame) and filler.
fn opus_payload(counter: u32) -> Bytes {
    payload([0x78, 0x00, 0x00, 0x00], counter, 60)
}

fn counter_of(payload: &[u8]) -> Option<u32> {
    payload
        .get(4..8)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Checks what the subscriber got on one stream against what the publisher sent: enough of it,
/// byte for byte, under one SSRC that is not the publisher's, in order with continuous sequence
/// numbers. Returns a one-line summary.
fn check_stream(
    what: &str,
    got: &[&Received],
    sent: &[Bytes],
    min: usize,
    publisher_ssrc: u32,
) -> String {
    assert!(
        got.len() >= min,
        "b received {} of {} {what} packets, want at least {min}",
        got.len(),
        sent.len()
    );
    let ssrc = got[0].ssrc;
    assert_ne!(
        ssrc, publisher_ssrc,
        "{what}: the SFU should send under the subscriber's own SSRC, not the publisher's"
    );
    let mut prev: Option<(u16, u32)> = None;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.ssrc, ssrc, "{what}: packet {i} at b changed SSRC");
        assert_eq!(
            r.track, got[0].track,
            "{what}: packet {i} at b changed track"
        );
        let counter = counter_of(&r.payload).unwrap_or_else(|| {
            panic!(
                "{what}: packet {i} at b is too short: {} bytes",
                r.payload.len()
            )
        });
        let expected = sent.get(counter as usize).unwrap_or_else(|| {
            panic!("{what}: packet {i} at b carries counter {counter}, which was never sent")
        });
        assert_eq!(
            &r.payload, expected,
            "{what}: packet {i} at b (counter {counter}) differs from what a sent"
        );
        if let Some((prev_seq, prev_counter)) = prev {
            assert_eq!(
                r.seq.wrapping_sub(prev_seq),
                1,
                "{what}: b's sequence numbers are not continuous at packet {i}: {prev_seq} then {}",
                r.seq
            );
            assert_eq!(
                counter,
                prev_counter + 1,
                "{what}: b got packets out of order or with a hole at packet {i}"
            );
        }
        prev = Some((r.seq, counter));
    }
    let last = got[got.len() - 1];
    format!(
        "{what}: {} of {} packets on track {}, counters {}..={}, seq {}..={} under SSRC {ssrc}",
        got.len(),
        sent.len(),
        got[0].track,
        counter_of(&got[0].payload).unwrap_or(0),
        counter_of(&last.payload).unwrap_or(0),
        got[0].seq,
        last.seq
    )
}

fn encoding(ssrc: u32) -> Vec<RTCRtpEncodingParameters> {
    vec![RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            ..Default::default()
        },
        ..Default::default()
    }]
}

/// A non-zero SSRC that differs between runs, without a dependency on `rand`.
fn some_ssrc(salt: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos.rotate_left(salt % 32) ^ salt).max(1)
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A call through a one-worker node: a publishes one VP8 and one Opus track, b subscribes to
/// both; everyone is connected and b has answered the SFU's renegotiation offer.
struct Call {
    node: SfuNode,
    sig: Signaling,
    a: Client,
    b: Client,
    video_sender: RTCRtpSenderId,
    audio_sender: RTCRtpSenderId,
    video_ssrc: u32,
    audio_ssrc: u32,
}

impl Call {
    fn start(udp_receive: UdpReceive) -> Self {
        let (tx, rx) = channel();
        let config = NodeConfig {
            workers: 1,
            udp_receive,
            ..NodeConfig::default()
        };
        let node = SfuNode::start(&config, move |event| {
            let _ = tx.send(event);
        })
        .expect("start SFU node");
        println!("SFU worker at {}", node.workers()[0].local_addr);
        let mut sig = Signaling {
            events: rx,
            connected: Vec::new(),
            answers_applied: Vec::new(),
            offers_answered: Vec::new(),
            published: Vec::new(),
        };
        let both = Permissions {
            publish: true,
            subscribe: true,
        };

        // --- a publishes one VP8 and one Opus track ------------------------------------------
        let mut a = Client::new("a");
        let mut b = Client::new("b");
        let video_ssrc = some_ssrc(0x5eed_0001);
        let audio_ssrc = some_ssrc(0x5eed_0017);
        let video_sender =
            a.pc.add_track(MediaStreamTrack::new(
                "a-stream".to_owned(),
                "a-video".to_owned(),
                "camera".to_owned(),
                RtpCodecKind::Video,
                encoding(video_ssrc),
            ))
            .expect("add video track");
        let audio_sender =
            a.pc.add_track(MediaStreamTrack::new(
                "a-stream".to_owned(),
                "a-audio".to_owned(),
                "microphone".to_owned(),
                RtpCodecKind::Audio,
                encoding(audio_ssrc),
            ))
            .expect("add audio track");
        let offer_sdp = a.offer();
        println!("[a] offer:\n{offer_sdp}");
        node.send(Command::AddParticipant {
            room: RoomId::from(ROOM),
            participant: ParticipantId::from("a"),
            offer_sdp,
            session: 1,
            permissions: both,
        });
        run_until(
            "a to connect",
            Duration::from_secs(5),
            &node,
            &mut sig,
            &mut a,
            &mut b,
            |s, a, _| a.connected() && s.connected.iter().any(|p| p == "a"),
        );
        let mut published = sig.published.clone();
        published.sort();
        assert_eq!(
            published,
            ["a/0", "a/1"],
            "the SFU should report a's video and audio tracks as published"
        );

        // --- b joins with nothing to send ----------------------------------------------------
        b.pc.add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .expect("add recvonly transceiver");
        let offer_sdp = b.offer();
        println!("[b] offer:\n{offer_sdp}");
        node.send(Command::AddParticipant {
            room: RoomId::from(ROOM),
            participant: ParticipantId::from("b"),
            offer_sdp,
            session: 1,
            permissions: both,
        });
        run_until(
            "b to connect and answer the SFU's renegotiation offer",
            Duration::from_secs(5),
            &node,
            &mut sig,
            &mut a,
            &mut b,
            |s, _, b| {
                b.connected()
                    && s.connected.iter().any(|p| p == "b")
                    && s.offers_answered.iter().any(|p| p == "b")
            },
        );
        Self {
            node,
            sig,
            a,
            b,
            video_sender,
            audio_sender,
            video_ssrc,
            audio_ssrc,
        }
    }

    fn step(&mut self) {
        step(&self.node, &mut self.sig, &mut self.a, &mut self.b);
    }

    /// Whether the (only) worker's thread is still running.
    fn worker_alive(&self) -> bool {
        self.node.workers()[0]
            .thread
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}

/// The publisher's first sequence number: it wraps mid-stream, and the SFU's output must not
/// notice.
const FIRST_SEQ: u16 = 65_500;
const FIRST_TS: u32 = 4_000_000_000;

/// What a sends: the negotiated payload types and every payload, indexed by packet counter.
struct Media {
    video_pt: u8,
    audio_pt: u8,
    video: Vec<Bytes>,
    audio: Vec<Bytes>,
}

impl Media {
    fn new(call: &mut Call, video_packets: u32) -> Self {
        Self {
            video_pt: call.a.sender_payload_type(call.video_sender, MIME_TYPE_VP8),
            audio_pt: call
                .a
                .sender_payload_type(call.audio_sender, MIME_TYPE_OPUS),
            video: (0..video_packets).map(vp8_payload).collect(),
            audio: (0..video_packets.div_ceil(AUDIO_EVERY))
                .map(opus_payload)
                .collect(),
        }
    }

    /// Has a write video packet `next` and, on every `AUDIO_EVERY`th, the next audio packet.
    fn send(&self, call: &mut Call, next: u32) {
        let video = rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                // A frame every 3 packets, 90 kHz clock at 30 fps.
                marker: next % 3 == 2,
                payload_type: self.video_pt,
                sequence_number: FIRST_SEQ.wrapping_add(next as u16),
                timestamp: FIRST_TS.wrapping_add((next / 3) * 3000),
                ssrc: call.video_ssrc,
                ..Default::default()
            },
            payload: self.video[next as usize].clone(),
        };
        call.a
            .pc
            .rtp_sender(call.video_sender)
            .expect("a's video sender")
            .write_rtp(Instant::now(), video)
            .unwrap_or_else(|e| panic!("a: write_rtp video #{next}: {e}"));
        if next.is_multiple_of(AUDIO_EVERY) {
            let n = next / AUDIO_EVERY;
            let audio = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    payload_type: self.audio_pt,
                    sequence_number: 1000u16.wrapping_add(n as u16),
                    timestamp: 7_000u32.wrapping_add(n * 960),
                    ssrc: call.audio_ssrc,
                    ..Default::default()
                },
                payload: self.audio[n as usize].clone(),
            };
            call.a
                .pc
                .rtp_sender(call.audio_sender)
                .expect("a's audio sender")
                .write_rtp(Instant::now(), audio)
                .unwrap_or_else(|e| panic!("a: write_rtp audio #{n}: {e}"));
        }
    }

    /// b's video and audio packets, failing on any other payload type.
    fn split<'r>(&self, rtp: &'r [Received]) -> (Vec<&'r Received>, Vec<&'r Received>) {
        let video: Vec<&Received> = rtp
            .iter()
            .filter(|r| r.payload_type == self.video_pt)
            .collect();
        let audio: Vec<&Received> = rtp
            .iter()
            .filter(|r| r.payload_type == self.audio_pt)
            .collect();
        assert_eq!(
            video.len() + audio.len(),
            rtp.len(),
            "b received RTP with payload types other than a's {} and {}",
            self.video_pt,
            self.audio_pt
        );
        (video, audio)
    }
}

#[test]
fn webrtc_rs_publisher_reaches_webrtc_rs_subscriber_through_the_sfu() {
    publisher_reaches_subscriber(UdpReceive::Recvmmsg);
}

/// The same call with the worker receiving through io_uring (ADR 0006).
#[cfg(feature = "io-uring")]
#[test]
fn webrtc_rs_publisher_reaches_webrtc_rs_subscriber_through_an_io_uring_worker() {
    publisher_reaches_subscriber(UdpReceive::IoUring);
}

fn publisher_reaches_subscriber(udp_receive: UdpReceive) {
    let started = Instant::now();
    init_tracing();
    let mut call = Call::start(udp_receive);

    // --- a sends, b receives -----------------------------------------------------------------
    let media = Media::new(&mut call, VIDEO_PACKETS);
    let send_start = Instant::now();
    let send_deadline = send_start + Duration::from_secs(5);
    let mut next = 0u32;
    while next < VIDEO_PACKETS {
        assert!(
            Instant::now() < send_deadline,
            "sending {VIDEO_PACKETS} packets took over 5 s"
        );
        if Instant::now() >= send_start + PACKET_INTERVAL * next {
            media.send(&mut call, next);
            next += 1;
        }
        call.step();
    }
    let sent_in = send_start.elapsed();
    // Let the tail arrive, and a receiver report (one a second) reach a.
    let complete = |a: &Client, b: &Client| {
        b.rtp.len() >= (VIDEO_PACKETS + AUDIO_PACKETS) as usize && a.receiver_reports > 0
    };
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while !complete(&call.a, &call.b) && Instant::now() < drain_deadline {
        call.step();
    }
    let (counters, rooms, participants) = call.node.counters();
    println!(
        "SFU counters as of the last export (about 1 s old): {counters:?} (rooms {rooms}, \
         participants {participants})"
    );
    let (a, b) = (&call.a, &call.b);
    println!(
        "a: sent {VIDEO_PACKETS} video + {AUDIO_PACKETS} audio packets in {sent_in:?}; got PLIs \
         for {:?} and {} receiver reports",
        a.plis, a.receiver_reports
    );
    println!(
        "b: {} RTP packets, tracks opened {:?}",
        b.rtp.len(),
        b.tracks_opened
    );

    // --- What b got ----------------------------------------------------------------------------
    let (video, audio) = media.split(&b.rtp);
    println!(
        "{}",
        check_stream(
            "video",
            &video,
            &media.video,
            MIN_VIDEO_RECEIVED,
            call.video_ssrc
        )
    );
    println!(
        "{}",
        check_stream(
            "audio",
            &audio,
            &media.audio,
            MIN_AUDIO_RECEIVED,
            call.audio_ssrc
        )
    );
    assert_ne!(
        video[0].ssrc, audio[0].ssrc,
        "video and audio reached b under one SSRC"
    );

    // --- What a got: the keyframe request for the new subscriber, and reports ----------------
    let video_ssrc = call.video_ssrc;
    assert!(
        a.plis.contains(&video_ssrc),
        "a never got a PLI for its video (SSRC {video_ssrc}), though a subscriber joined; PLIs: {:?}",
        a.plis
    );
    assert!(
        a.plis.iter().all(|s| *s == video_ssrc),
        "a got PLIs for SSRCs it does not send video on: {:?}",
        a.plis
    );
    assert!(
        a.receiver_reports > 0,
        "a got no receiver report from the SFU within {:?} of streaming",
        send_start.elapsed()
    );

    call.node.shutdown();
    let elapsed = started.elapsed();
    println!("test took {elapsed:?}");
    assert!(
        elapsed < TEST_BUDGET,
        "test took {elapsed:?}, over its {TEST_BUDGET:?} budget"
    );
}

// ----- garbage ----------------------------------------------------------------------------------

/// Seed of every garbage datagram: a failure reproduces with the same bytes.
const GARBAGE_SEED: u64 = 0x005f_0bad_5eed;
/// Datagrams from the stranger's socket, spread evenly over `SPRAY_TICKS` media ticks.
const SPRAY_DATAGRAMS: usize = 5_000;
/// 2 s of media at `PACKET_INTERVAL`.
const SPRAY_TICKS: u32 = 400;
/// During the spray, a sends one garbage datagram from its own socket every this many ticks.
const A_GARBAGE_EVERY: u32 = 10;
/// Media ticks after the spray, to show forwarding goes on once it is over.
const TAIL_TICKS: u32 = 60;
/// At most this long a streams before the spray, waiting for a fresh counter export to measure
/// from (the workers export about once a second).
const MAX_WARMUP_TICKS: u32 = 300;
const MAX_TICKS: u32 = MAX_WARMUP_TICKS + SPRAY_TICKS + TAIL_TICKS;
/// How long after the last garbage datagram the counters are read.
const COUNTER_EXPORT_WAIT: Duration = Duration::from_millis(1500);
const GARBAGE_TEST_BUDGET: Duration = Duration::from_secs(15);

/// Where RFC 7983's demultiplexing puts a datagram, by its first byte (and for RTCP, its
/// second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Any first byte: mostly outside every range.
    Random,
    /// 0..=3
    Stun,
    /// 20..=63
    Dtls,
    /// 128..=191, second byte outside 192..=223
    Rtp,
    /// 0x80 or 0x81, second byte 192..=223
    Rtcp,
}

const KINDS: [Kind; 5] = [Kind::Random, Kind::Stun, Kind::Dtls, Kind::Rtp, Kind::Rtcp];

/// Garbage sent, by kind.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    /// Zero-length datagrams: nothing for the SFU to see, let alone parse.
    empty: usize,
    by_kind: [usize; KINDS.len()],
}

impl Tally {
    fn add(&mut self, kind: Kind, len: usize) {
        self.sent += 1;
        if len == 0 {
            self.empty += 1;
        }
        let i = KINDS.iter().position(|k| *k == kind).expect("listed kind");
        self.by_kind[i] += 1;
    }

    fn summary(&self) -> String {
        let kinds: Vec<String> = KINDS
            .iter()
            .zip(self.by_kind)
            .map(|(k, n)| format!("{k:?} {n}"))
            .collect();
        format!(
            "{} datagrams ({}; {} empty)",
            self.sent,
            kinds.join(", "),
            self.empty
        )
    }
}

/// One garbage datagram of `kind`: random bytes or, half the time, a plausible header of the
/// protocol (with inconsistent lengths, truncated anywhere, a few bits flipped) over random
/// bytes; the first bytes are then steered into the kind's range if they are not in it. With
/// `ssrc`, an RTP or RTCP datagram always has the header, without CSRCs or extension, long enough
/// to get past the SSRC lookup to the replay check or SRTP/SRTCP authentication.
fn garbage(rng: &mut StdRng, kind: Kind, ssrc: Option<u32>) -> Vec<u8> {
    // Half short (headers cut anywhere), half anything up to a full MTU.
    let mut len: usize = if rng.random_bool(0.5) {
        rng.random_range(0..=48)
    } else {
        rng.random_range(0..=1500)
    };
    if ssrc.is_some() {
        len = len.max(40);
    }
    let mut d = vec![0u8; len];
    rng.fill(&mut d[..]);
    if kind != Kind::Random && (ssrc.is_some() || rng.random_bool(0.5)) {
        let header = plausible_header(rng, kind, len, ssrc);
        let n = header.len().min(len);
        d[..n].copy_from_slice(&header[..n]);
        if ssrc.is_none() && len > 0 {
            for _ in 0..rng.random_range(0..=3) {
                let i = rng.random_range(0..len);
                d[i] ^= 1 << rng.random_range(0..8);
            }
        }
    }
    match (kind, d.len()) {
        (Kind::Random, _) | (_, 0) => {}
        (Kind::Stun, _) => {
            if d[0] > 3 {
                d[0] = rng.random_range(0..=3);
            }
        }
        (Kind::Dtls, _) => {
            if !(20..=63).contains(&d[0]) {
                d[0] = rng.random_range(20..=63);
            }
        }
        (Kind::Rtp, n) => {
            if !(128..=191).contains(&d[0]) {
                d[0] = rng.random_range(128..=191);
            }
            if n > 1 && (192..=223).contains(&d[1]) {
                // Keep it RTP: anything but the 32 RTCP packet types.
                let b: u8 = rng.random_range(0..=223);
                d[1] = if b >= 192 { b + 32 } else { b };
            }
        }
        (Kind::Rtcp, n) => {
            if d[0] & 0xfe != 0x80 {
                d[0] = 0x80 | rng.random_range(0..=1);
            }
            if n > 1 && !(192..=223).contains(&d[1]) {
                d[1] = rng.random_range(192..=223);
            }
        }
    }
    d
}

/// A header that parses a little way before it stops making sense.
fn plausible_header(rng: &mut StdRng, kind: Kind, len: usize, ssrc: Option<u32>) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    match kind {
        Kind::Random => {}
        Kind::Stun => {
            // Binding request, success or error response, indication; magic cookie; a USERNAME
            // whose ufrag nobody has, then MESSAGE-INTEGRITY and FINGERPRINT, any length.
            let msg_type = [0x0001u16, 0x0101, 0x0111, 0x0011][rng.random_range(0..4)];
            h.extend(msg_type.to_be_bytes());
            h.extend(length_field(rng, len.saturating_sub(20)).to_be_bytes());
            h.extend(0x2112_a442u32.to_be_bytes());
            h.extend((0..12).map(|_| rng.random::<u8>()));
            let username = b"Zq3xW9:b7Kp";
            for (attr, value_len) in [(0x0006u16, username.len()), (0x0008, 20), (0x8028, 4)] {
                h.extend(attr.to_be_bytes());
                h.extend(length_field(rng, value_len).to_be_bytes());
                if attr == 0x0006 {
                    h.extend(username);
                    h.extend([0; 1]);
                } else {
                    h.extend((0..value_len).map(|_| rng.random::<u8>()));
                }
            }
        }
        Kind::Dtls => {
            // A record header (DTLS 1.2 or 1.0), then for a handshake record a handshake header.
            let content_type = rng.random_range(20..=25);
            h.push(content_type);
            h.extend([0xfe, if rng.random_bool(0.5) { 0xfd } else { 0xff }]);
            h.extend([0, rng.random_range(0..=1)]);
            h.extend([0, 0, 0, 0, 0, rng.random()]);
            h.extend(length_field(rng, len.saturating_sub(13)).to_be_bytes());
            if content_type == 22 {
                h.push([1u8, 2, 3, 11, 12, 14, 16, 20][rng.random_range(0..8)]);
                let body = length_field(rng, len.saturating_sub(25)) as u32;
                h.extend(&body.to_be_bytes()[1..]);
                h.extend(rng.random::<u16>().to_be_bytes());
                h.extend(&rng.random_range(0u32..=256).to_be_bytes()[1..]);
                h.extend(&(length_field(rng, len.saturating_sub(25)) as u32).to_be_bytes()[1..]);
            }
        }
        Kind::Rtp => {
            let padding = rng.random_bool(0.3);
            let (extension, csrcs) = match ssrc {
                Some(_) => (false, 0),
                None => (rng.random_bool(0.5), rng.random_range(0..=15)),
            };
            h.push(0x80 | (padding as u8) << 5 | (extension as u8) << 4 | csrcs);
            h.push(rng.random::<u8>() & 0x7f);
            h.extend(rng.random::<u16>().to_be_bytes());
            h.extend(rng.random::<u32>().to_be_bytes());
            h.extend(ssrc.unwrap_or_else(|| rng.random()).to_be_bytes());
            h.extend((0..csrcs * 4).map(|_| rng.random::<u8>()));
            if extension {
                // One-byte header extensions, with a length in words that may overrun.
                h.extend([0xbe, 0xde]);
                h.extend(length_field(rng, 2).to_be_bytes());
                h.extend([0x10, 0xff, 0x21, 0x01, 0x02, 0xf0, 0x00, 0x00]);
            }
        }
        Kind::Rtcp => {
            h.push(0x80 | rng.random_range(0..=1));
            h.push(rng.random_range(192..=223));
            h.extend(length_field(rng, (len / 4).saturating_sub(1)).to_be_bytes());
            h.extend(ssrc.unwrap_or_else(|| rng.random()).to_be_bytes());
        }
    }
    h
}

/// A length field: `exact` (what a well-formed datagram would say), or anything.
fn length_field(rng: &mut StdRng, exact: usize) -> u16 {
    if rng.random_bool(0.5) {
        exact as u16
    } else {
        rng.random()
    }
}

/// The counters that changed, by how much.
fn counter_changes(before: &Counters, after: &Counters) -> Vec<(&'static str, u64)> {
    before
        .named()
        .iter()
        .zip(after.named())
        .filter(|(b, a)| a.1 != b.1)
        .map(|(b, a)| (a.0, a.1.saturating_sub(b.1)))
        .collect()
}

#[test]
fn garbage_at_a_worker_is_dropped_and_counted_while_a_call_continues() {
    garbage_is_dropped_and_counted(UdpReceive::Recvmmsg);
}

/// The same garbage at a worker receiving through io_uring (ADR 0006): every datagram, empty
/// ones too, reaches the core and is counted as with `recvmmsg`.
#[cfg(feature = "io-uring")]
#[test]
fn garbage_at_an_io_uring_worker_is_dropped_and_counted_while_a_call_continues() {
    garbage_is_dropped_and_counted(UdpReceive::IoUring);
}

fn garbage_is_dropped_and_counted(udp_receive: UdpReceive) {
    let started = Instant::now();
    init_tracing();
    let mut call = Call::start(udp_receive);
    let worker = call.node.workers()[0].local_addr;
    let media = Media::new(&mut call, MAX_TICKS);
    // A stranger: a 5-tuple the worker has never seen.
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind the stranger's socket");
    println!(
        "stranger at {}, a at {}, seed {GARBAGE_SEED:#x}",
        stranger.local_addr().expect("stranger's address"),
        call.a.local_addr
    );
    let mut rng = StdRng::seed_from_u64(GARBAGE_SEED);
    let mut spray = Tally::default();
    let mut from_a = Tally::default();
    // What a's own garbage is, in turn: every parser behind the known-source check, and SRTP and
    // SRTCP authentication with a's real SSRCs.
    let a_garbage = [
        (Kind::Stun, None),
        (Kind::Dtls, None),
        (Kind::Rtp, None),
        (Kind::Rtp, Some(call.video_ssrc)),
        (Kind::Rtp, Some(call.audio_ssrc)),
        (Kind::Rtcp, Some(call.video_ssrc)),
        (Kind::Random, None),
    ];

    // --- a streams throughout; after the next counter export, the garbage starts -------------
    let initial = call.node.counters().0;
    let mut baseline: Option<Counters> = None;
    let mut spray_start_tick = 0;
    let mut spray_end: Option<(u32, Instant)> = None;
    let send_start = Instant::now();
    let send_deadline = send_start + PACKET_INTERVAL * MAX_TICKS + Duration::from_secs(3);
    let mut next = 0u32;
    loop {
        assert!(
            Instant::now() < send_deadline,
            "streaming {next} media ticks took over {:?}",
            send_deadline - send_start
        );
        if Instant::now() < send_start + PACKET_INTERVAL * next {
            call.step();
            continue;
        }
        if baseline.is_none() {
            let current = call.node.counters().0;
            if next >= 20 && current != initial {
                println!("baseline (export at media tick {next}): {current:?}");
                baseline = Some(current);
                spray_start_tick = next;
            } else {
                assert!(
                    next < MAX_WARMUP_TICKS,
                    "the worker exported no counters within {:?} of streaming",
                    PACKET_INTERVAL * next
                );
            }
        }
        if baseline.is_some() {
            let k = next - spray_start_tick;
            if k < SPRAY_TICKS {
                let due = SPRAY_DATAGRAMS * (k as usize + 1) / SPRAY_TICKS as usize;
                while spray.sent < due {
                    let kind = KINDS[rng.random_range(0..KINDS.len())];
                    let d = garbage(&mut rng, kind, None);
                    stranger
                        .send_to(&d, worker)
                        .unwrap_or_else(|e| panic!("stranger: UDP send failed: {e}"));
                    spray.add(kind, d.len());
                }
                if k % A_GARBAGE_EVERY == A_GARBAGE_EVERY / 2 {
                    let (kind, ssrc) = a_garbage[from_a.sent % a_garbage.len()];
                    let d = garbage(&mut rng, kind, ssrc);
                    call.a
                        .socket
                        .send_to(&d, worker)
                        .unwrap_or_else(|e| panic!("a: UDP send of garbage failed: {e}"));
                    from_a.add(kind, d.len());
                }
            } else if spray_end.is_none() {
                spray_end = Some((next, Instant::now()));
            } else if k >= SPRAY_TICKS + TAIL_TICKS {
                break;
            }
        }
        media.send(&mut call, next);
        next += 1;
        call.step();
    }
    let (spray_end_tick, spray_end_at) = spray_end.expect("the spray ended");
    let baseline = baseline.expect("a baseline");
    let sent_video = next as usize;
    let sent_audio = next.div_ceil(AUDIO_EVERY) as usize;
    println!(
        "a streamed {sent_video} video + {sent_audio} audio packets in {:?}; garbage during \
         ticks {spray_start_tick}..{spray_end_tick}, {:?}",
        send_start.elapsed(),
        spray_end_at - (send_start + PACKET_INTERVAL * spray_start_tick)
    );
    println!("stranger sent {}", spray.summary());
    println!("a sent {} of garbage", from_a.summary());

    // --- Let the media tail arrive and the worker export its counters ------------------------
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < spray_end_at + COUNTER_EXPORT_WAIT
        || (call.b.rtp.len() < sent_video + sent_audio && Instant::now() < drain_deadline)
    {
        call.step();
    }
    let garbage_sent = spray.sent + from_a.sent;
    let enough = |c: &Counters| {
        c.dropped().saturating_sub(baseline.dropped()) * 10 >= garbage_sent as u64 * 9
    };
    let mut after = call.node.counters().0;
    // A loaded machine may delay the export: give it one more period.
    let export_deadline = Instant::now() + COUNTER_EXPORT_WAIT;
    while !enough(&after) && Instant::now() < export_deadline {
        call.step();
        after = call.node.counters().0;
    }
    let dropped = after.dropped().saturating_sub(baseline.dropped());
    println!(
        "counter changes since the baseline: {:?}",
        counter_changes(&baseline, &after)
    );
    println!(
        "dropped grew by {dropped} for {garbage_sent} garbage datagrams ({:.1}%)",
        100.0 * dropped as f64 / garbage_sent as f64
    );

    // --- The worker survived and counted the garbage as dropped ------------------------------
    assert!(
        call.worker_alive(),
        "the worker thread ended while garbage came in"
    );
    assert!(
        enough(&after),
        "the worker counted {dropped} drops for {garbage_sent} garbage datagrams ({}; a's: {}), \
         want at least 90%; changes: {:?}",
        spray.summary(),
        from_a.summary(),
        counter_changes(&baseline, &after)
    );

    // --- b kept getting a's media, in order and without holes, during and after the garbage ---
    let (video, audio) = media.split(&call.b.rtp);
    println!(
        "{}",
        check_stream(
            "video",
            &video,
            &media.video[..sent_video],
            sent_video * 9 / 10,
            call.video_ssrc
        )
    );
    println!(
        "{}",
        check_stream(
            "audio",
            &audio,
            &media.audio[..sent_audio],
            sent_audio * 9 / 10,
            call.audio_ssrc
        )
    );
    let received_from = |got: &[&Received], counter: u32| {
        got.iter()
            .filter(|r| counter_of(&r.payload).is_some_and(|c| c >= counter))
            .count()
    };
    let video_during = received_from(&video, spray_start_tick);
    let audio_during = received_from(&audio, spray_start_tick.div_ceil(AUDIO_EVERY));
    let video_after = received_from(&video, spray_end_tick);
    println!(
        "b got {video_during} video and {audio_during} audio packets sent since the garbage \
         started, {video_after} video packets sent after it ended"
    );
    let video_since = sent_video - spray_start_tick as usize;
    assert!(
        video_during >= video_since * 9 / 10,
        "b got {video_during} of the {video_since} video packets a sent since the garbage started"
    );
    let audio_since = sent_audio - spray_start_tick.div_ceil(AUDIO_EVERY) as usize;
    assert!(
        audio_during >= audio_since * 9 / 10,
        "b got {audio_during} of the {audio_since} audio packets a sent since the garbage started"
    );
    let video_tail = sent_video - spray_end_tick as usize;
    assert!(
        video_after >= video_tail * 9 / 10,
        "b got {video_after} of the {video_tail} video packets a sent after the garbage ended"
    );
    assert!(
        call.worker_alive(),
        "the worker thread ended after the garbage"
    );

    call.node.shutdown();
    let elapsed = started.elapsed();
    println!("test took {elapsed:?}");
    assert!(
        elapsed < GARBAGE_TEST_BUDGET,
        "test took {elapsed:?}, over its {GARBAGE_TEST_BUDGET:?} budget"
    );
}
