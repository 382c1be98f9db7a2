//! Two people behind one carrier NAT: one reaches the SFU over UDP, the other over ICE-TCP,
//! and the NAT happens to give both the same address and port number (UDP's and TCP's ports
//! are separate spaces). Each is a path of its own: each hears the other, each is told its
//! own address in its connectivity checks' answers, and no UDP client's media goes into the
//! TCP connection. Over real sockets on loopback, both bound to 127.0.0.1 and one port.

use sfu_proto::{Command, Event, MediaKind, ParticipantId, Permissions, RoomId};
use sfu_server::{NodeConfig, SfuNode};
use sfu_testkit::SimPeer;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// An RFC 4571 stream: packets each behind a two-byte length.
struct Framed {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Framed {
    fn send(&mut self, packet: &[u8]) {
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(packet);
        self.stream.write_all(&framed).unwrap();
    }

    fn receive(&mut self) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 65536];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the SFU closed the ICE-TCP connection"),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("ICE-TCP read: {e}"),
            }
        }
        let mut frames = Vec::new();
        while self.pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([self.pending[0], self.pending[1]]));
            if self.pending.len() < 2 + len {
                break;
            }
            frames.push(self.pending[2..2 + len].to_vec());
            self.pending.drain(..2 + len);
        }
        frames
    }
}

/// The address in a STUN binding success's XOR-MAPPED-ADDRESS (IPv4), if it is one.
fn mapped_address(packet: &[u8]) -> Option<SocketAddr> {
    if packet.len() < 20 || packet[..2] != [0x01, 0x01] {
        return None;
    }
    let mut at = 20;
    while at + 4 <= packet.len() {
        let kind = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        let value = packet.get(at + 4..at + 4 + len)?;
        if kind == 0x0020 && len == 8 && value[1] == 0x01 {
            let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
            let ip = u32::from_be_bytes(value[4..8].try_into().ok()?) ^ 0x2112_a442;
            return Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)));
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

fn handle_events(events: &Receiver<Event>, node: &SfuNode, peers: &mut [(&str, &mut SimPeer)]) {
    let now = Instant::now();
    while let Ok(event) = events.try_recv() {
        match event {
            Event::Answer {
                participant,
                answer_sdp,
            } => {
                if let Some((_, p)) = peers.iter_mut().find(|(id, _)| *id == participant.0) {
                    p.apply_answer(now, &answer_sdp);
                }
            }
            Event::Offer {
                participant,
                offer_sdp,
            } => {
                if let Some((_, p)) = peers.iter_mut().find(|(id, _)| *id == participant.0) {
                    let answer_sdp = p.answer_offer(now, &offer_sdp);
                    node.send(Command::Answer {
                        participant,
                        answer_sdp,
                    });
                }
            }
            _ => {}
        }
    }
}

#[test]
fn a_udp_client_and_a_tcp_connection_from_one_address_and_port_are_two_paths() {
    let (tx, events) = std::sync::mpsc::channel();
    let node = SfuNode::start(
        &NodeConfig {
            workers: 1,
            ..Default::default()
        },
        move |e| {
            let _ = tx.send(e);
        },
    )
    .unwrap();
    let sfu = node.workers()[0].local_addr;
    // The shared address: a UDP socket's port, and a TCP socket bound to the same one.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let shared = udp.local_addr().unwrap();
    let tcp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    tcp.bind(&shared.into()).unwrap();
    tcp.connect(&sfu.into()).unwrap();
    let stream: TcpStream = tcp.into();
    assert_eq!(stream.local_addr().unwrap(), shared);
    stream.set_nonblocking(true).unwrap();
    let mut framed = Framed {
        stream,
        pending: Vec::new(),
    };

    let start = Instant::now();
    let mut on_udp = SimPeer::new("udp", shared, start);
    let mut on_tcp = SimPeer::new("tcp", shared, start);
    for p in [&mut on_udp, &mut on_tcp] {
        p.add_track(MediaKind::Audio);
    }
    for (id, p) in [("udp", &on_udp), ("tcp", &on_tcp)] {
        node.send(Command::AddParticipant {
            room: RoomId("nat".into()),
            participant: ParticipantId(id.into()),
            offer_sdp: p.offer(),
            session: 1,
            permissions: Permissions {
                publish: true,
                subscribe: true,
            },
        });
    }

    let mut told = (Vec::new(), Vec::new());
    let mut sent = 0u32;
    let mut next_audio = start;
    let deadline = start + Duration::from_secs(15);
    let heard = |p: &SimPeer| -> usize {
        p.received
            .values()
            .flatten()
            .filter(|r| r.payload.starts_with(b"from-"))
            .count()
    };
    while Instant::now() < deadline {
        handle_events(
            &events,
            &node,
            &mut [("udp", &mut on_udp), ("tcp", &mut on_tcp)],
        );
        let now = Instant::now();
        for p in [&mut on_udp, &mut on_tcp] {
            p.handle_timeout(now);
        }
        if on_udp.is_secured() && on_tcp.is_secured() && now >= next_audio && sent < 150 {
            next_audio = now + Duration::from_millis(20);
            on_udp.send_media(0, b"from-udp-client", false, 960);
            on_tcp.send_media(0, b"from-tcp-client", false, 960);
            sent += 1;
        }
        while let Some((_, data)) = on_udp.poll_transmit() {
            let _ = udp.send_to(&data, sfu);
        }
        while let Some((_, data)) = on_tcp.poll_transmit() {
            framed.send(&data);
        }
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            told.0.extend(mapped_address(&buf[..n]));
            on_udp.handle_datagram(Instant::now(), from, &buf[..n]);
        }
        for frame in framed.receive() {
            told.1.extend(mapped_address(&frame));
            on_tcp.handle_datagram(Instant::now(), sfu, &frame);
        }
        if sent >= 150 && heard(&on_udp) >= 140 && heard(&on_tcp) >= 140 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (udp_heard, tcp_heard) = (heard(&on_udp), heard(&on_tcp));
    eprintln!(
        "sent {sent} each; heard over UDP {udp_heard}, over TCP {tcp_heard}; mapped {:?} / {:?}",
        told.0.first(),
        told.1.first()
    );
    assert!(
        on_udp.is_secured() && on_tcp.is_secured(),
        "both connected: UDP {}, TCP {}",
        on_udp.is_secured(),
        on_tcp.is_secured()
    );
    assert!(
        udp_heard >= 140,
        "the UDP client heard {udp_heard} of {sent}"
    );
    assert!(
        tcp_heard >= 140,
        "the TCP client heard {tcp_heard} of {sent}"
    );
    for p in [&on_udp, &on_tcp] {
        let other = if p.name == "udp" {
            "from-tcp"
        } else {
            "from-udp"
        };
        let all = p.received.values().flatten();
        assert!(
            all.clone().all(|r| r.payload.starts_with(other.as_bytes())),
            "{} heard only the other",
            p.name
        );
    }
    // Each is told the address it sends from, the same one.
    assert!(
        !told.0.is_empty() && told.0.iter().all(|a| *a == shared),
        "{told:?}"
    );
    assert!(
        !told.1.is_empty() && told.1.iter().all(|a| *a == shared),
        "{told:?}"
    );
}
