//! End to end over real UDP on loopback: an independent WebRTC stack (webrtc-rs `rtc`, sans-IO)
//! publishes VP8 video and Opus audio through the SFU and a second instance receives them.
//!
//! Exercised on the way: ICE-lite connectivity checks, DTLS with the clients as DTLS clients,
//! SRTP/SRTCP with AEAD_AES_128_GCM, the SFU's renegotiation offer that adds the publisher's
//! tracks to the subscriber, the per-subscriber SSRC/sequence/timestamp rewrite, and the keyframe
//! request the SFU sends the publisher when a subscriber connects. Both clients are driven from
//! the test thread with non-blocking std sockets. `RUST_LOG=rtc=debug` shows webrtc-rs' side.

use bytes::{Bytes, BytesMut};
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
use sfu_proto::{Command, Event, ParticipantId, Permissions, RoomId};
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
                Event::Connected { participant } => {
                    println!("[sfu] {participant} connected");
                    self.connected.push(participant.to_string());
                }
                Event::TrackPublished { track, .. } => {
                    println!("[sfu] track published: {} ({:?})", track.id, track.kind);
                    self.published.push(track.id.to_string());
                }
                Event::CommandFailed { participant, error } => {
                    panic!("the SFU refused a command for {participant:?}: {error}")
                }
                Event::Disconnected {
                    participant,
                    reason,
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

#[test]
fn webrtc_rs_publisher_reaches_webrtc_rs_subscriber_through_the_sfu() {
    let started = Instant::now();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (tx, rx) = channel();
    let config = NodeConfig {
        workers: 1,
        ..NodeConfig::default()
    };
    let mut node = SfuNode::start(&config, move |event| {
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

    // --- a publishes one VP8 and one Opus track ----------------------------------------------
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

    // --- b joins with nothing to send --------------------------------------------------------
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

    // --- a sends, b receives -----------------------------------------------------------------
    let video_pt = a.sender_payload_type(video_sender, MIME_TYPE_VP8);
    let audio_pt = a.sender_payload_type(audio_sender, MIME_TYPE_OPUS);
    let sent_video: Vec<Bytes> = (0..VIDEO_PACKETS).map(vp8_payload).collect();
    let sent_audio: Vec<Bytes> = (0..AUDIO_PACKETS).map(opus_payload).collect();
    // The publisher's sequence numbers wrap mid-stream; the SFU's output must not notice.
    let first_seq: u16 = 65_500;
    let first_ts: u32 = 4_000_000_000;
    let send_start = Instant::now();
    let send_deadline = send_start + Duration::from_secs(5);
    let mut next = 0u32;
    while next < VIDEO_PACKETS {
        assert!(
            Instant::now() < send_deadline,
            "sending {VIDEO_PACKETS} packets took over 5 s"
        );
        if Instant::now() >= send_start + PACKET_INTERVAL * next {
            let video = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    // A frame every 3 packets, 90 kHz clock at 30 fps.
                    marker: next % 3 == 2,
                    payload_type: video_pt,
                    sequence_number: first_seq.wrapping_add(next as u16),
                    timestamp: first_ts.wrapping_add((next / 3) * 3000),
                    ssrc: video_ssrc,
                    ..Default::default()
                },
                payload: sent_video[next as usize].clone(),
            };
            a.pc.rtp_sender(video_sender)
                .expect("a's video sender")
                .write_rtp(Instant::now(), video)
                .unwrap_or_else(|e| panic!("a: write_rtp video #{next}: {e}"));
            if next.is_multiple_of(AUDIO_EVERY) {
                let n = next / AUDIO_EVERY;
                let audio = rtp::packet::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        payload_type: audio_pt,
                        sequence_number: 1000u16.wrapping_add(n as u16),
                        timestamp: 7_000u32.wrapping_add(n * 960),
                        ssrc: audio_ssrc,
                        ..Default::default()
                    },
                    payload: sent_audio[n as usize].clone(),
                };
                a.pc.rtp_sender(audio_sender)
                    .expect("a's audio sender")
                    .write_rtp(Instant::now(), audio)
                    .unwrap_or_else(|e| panic!("a: write_rtp audio #{n}: {e}"));
            }
            next += 1;
        }
        step(&node, &mut sig, &mut a, &mut b);
    }
    let sent_in = send_start.elapsed();
    // Let the tail arrive, and a receiver report (one a second) reach a.
    let complete = |a: &Client, b: &Client| {
        b.rtp.len() >= (VIDEO_PACKETS + AUDIO_PACKETS) as usize && a.receiver_reports > 0
    };
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while !complete(&a, &b) && Instant::now() < drain_deadline {
        step(&node, &mut sig, &mut a, &mut b);
    }
    let (counters, rooms, participants) = node.counters();
    println!(
        "SFU counters as of the last export (about 1 s old): {counters:?} (rooms {rooms}, \
         participants {participants})"
    );
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
    let video: Vec<&Received> = b
        .rtp
        .iter()
        .filter(|r| r.payload_type == video_pt)
        .collect();
    let audio: Vec<&Received> = b
        .rtp
        .iter()
        .filter(|r| r.payload_type == audio_pt)
        .collect();
    assert_eq!(
        video.len() + audio.len(),
        b.rtp.len(),
        "b received RTP with payload types other than a's {video_pt} and {audio_pt}"
    );
    println!(
        "{}",
        check_stream("video", &video, &sent_video, MIN_VIDEO_RECEIVED, video_ssrc)
    );
    println!(
        "{}",
        check_stream("audio", &audio, &sent_audio, MIN_AUDIO_RECEIVED, audio_ssrc)
    );
    assert_ne!(
        video[0].ssrc, audio[0].ssrc,
        "video and audio reached b under one SSRC"
    );

    // --- What a got: the keyframe request for the new subscriber, and reports ----------------
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

    node.shutdown();
    let elapsed = started.elapsed();
    println!("test took {elapsed:?}");
    assert!(
        elapsed < TEST_BUDGET,
        "test took {elapsed:?}, over its {TEST_BUDGET:?} budget"
    );
}
