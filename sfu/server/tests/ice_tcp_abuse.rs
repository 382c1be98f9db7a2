//! ICE-TCP against a hostile peer: connections that never carry a valid connectivity check are
//! closed after 10 s, one address cannot take more than its share of the node's connections
//! (over all workers), a connection replaced under its address gives its count back,
//! malformed framing closes the connection at once, and a connection full of small frames is
//! handed to the core a bounded number per turn, losing none; a connection the core stopped
//! answering (its session ended) is closed however much its peer still writes.

use sfu_server::ice_tcp::{
    FRAMES_PER_POLL, IceTcp, MAX_LINKS_PER_SOURCE, READ_CHUNK, SILENCED_TIMEOUT, UNANSWERED_TIMEOUT,
};
use sfu_server::{NodeConfig, SfuNode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn node() -> (SfuNode, std::net::SocketAddr) {
    let node = SfuNode::start(
        &NodeConfig {
            workers: 1,
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let addr = node.workers()[0].local_addr;
    (node, addr)
}

/// Whether the server closed `s` within `within` (end of stream or reset on read).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_connection_that_never_passes_ice_is_closed_and_garbage_framing_at_once() {
    let (_node, addr) = node();
    // Well-framed garbage, a frame every second: it keeps the idle timer fresh, but the core
    // never answers it.
    let mut probe = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let mut closed_at = None;
    while started.elapsed() < UNANSWERED_TIMEOUT + Duration::from_secs(5) {
        if probe.write_all(&[0, 4, 0x80, 0, 0, 1]).is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        if closed_within(&mut probe, Duration::from_secs(1)) {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let at = closed_at.expect("the probe was closed");
    assert!(
        at >= UNANSWERED_TIMEOUT - Duration::from_secs(1),
        "closed after {at:?}, not before the unanswered timeout"
    );
    // A zero-length frame is malformed: closed right away.
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(&[0, 0, 1, 2, 3]).unwrap();
    assert!(closed_within(&mut bad, Duration::from_secs(2)));
}

#[test]
fn one_address_gets_at_most_its_share_of_a_workers_connections() {
    let (_node, addr) = node();
    let mut held = Vec::new();
    for _ in 0..MAX_LINKS_PER_SOURCE {
        held.push(TcpStream::connect(addr).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    // Over the share: refused (closed at once).
    let mut extra = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "the extra connection is refused"
    );
    // The ones within the share are still open.
    assert!(
        !closed_within(&mut held[0], Duration::from_millis(200)),
        "a connection within the share stays open"
    );
    // Closing one makes room again.
    held.pop();
    std::thread::sleep(Duration::from_millis(300));
    let mut again = TcpStream::connect(addr).unwrap();
    assert!(
        !closed_within(&mut again, Duration::from_millis(300)),
        "room again after one closed"
    );
}

#[test]
fn a_connection_full_of_small_frames_is_read_a_bounded_number_per_turn_losing_none() {
    let mut tcp = IceTcp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut peer = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    // 4,000 frames of 20 bytes (a connectivity check is not much larger), numbered.
    const SENT: u32 = 4_000;
    let mut stream = Vec::new();
    for n in 0..SENT {
        stream.extend_from_slice(&[0, 20]);
        stream.extend_from_slice(&n.to_be_bytes());
        stream.extend_from_slice(&[0xab; 16]);
    }
    peer.write_all(&stream).unwrap();
    let mut got = Vec::new();
    let mut largest_turn = 0;
    let started = Instant::now();
    while got.len() < SENT as usize && started.elapsed() < Duration::from_secs(10) {
        let before = got.len();
        tcp.poll(udp.as_raw_fd(), Duration::from_millis(50), |_, frame| {
            got.push(u32::from_be_bytes(frame[..4].try_into().unwrap()));
        });
        largest_turn = largest_turn.max(got.len() - before);
    }
    assert_eq!(got, (0..SENT).collect::<Vec<_>>(), "every frame, in order");
    // One read past the budget at most.
    assert!(
        largest_turn <= FRAMES_PER_POLL + READ_CHUNK / 22,
        "{largest_turn} frames in one turn"
    );
}

/// One address's share is the node's, not each worker's: with two workers it still holds 64
/// connections at most, wherever they go.
#[test]
fn one_address_gets_at_most_its_share_over_all_the_nodes_workers() {
    let node = SfuNode::start(
        &NodeConfig {
            workers: 2,
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let ports: Vec<_> = node.workers().iter().map(|w| w.local_addr).collect();
    let mut held = Vec::new();
    for n in 0..MAX_LINKS_PER_SOURCE {
        held.push(TcpStream::connect(ports[n % 2]).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    for port in &ports {
        let mut extra = TcpStream::connect(port).unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(2)),
            "an extra connection to {port} is refused"
        );
    }
    assert!(!closed_within(&mut held[1], Duration::from_millis(200)));
}

/// A peer that resets its connection and opens another from the same address and port before
/// the worker reads the reset (it polls in between here, as a busy worker would not): the old
/// connection is closed with its count, the new one kept — a hundred times over, and the
/// address is never refused for counts of connections long gone.
#[test]
fn a_connection_replaced_under_its_address_gives_its_count_back() {
    let mut tcp = IceTcp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let server = tcp.local_addr().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let from: std::net::SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let connect = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        // Closed with a reset: the port is free again at once.
        s.set_linger(Some(Duration::ZERO)).unwrap();
        s.bind(&from.into()).unwrap();
        s.connect(&server.into()).unwrap();
        s
    };
    let turn = |tcp: &mut IceTcp| tcp.poll(udp.as_raw_fd(), Duration::from_millis(20), |_, _| {});
    let mut current = connect();
    turn(&mut tcp);
    assert_eq!(tcp.link_count(), 1);
    for round in 0..100 {
        drop(current);
        current = connect();
        turn(&mut tcp);
        turn(&mut tcp);
        assert_eq!(tcp.link_count(), 1, "round {round}");
        assert_eq!(tcp.counters.refused, 0, "round {round}");
    }
    // The connection kept is the newest: it is open.
    let mut newest: TcpStream = current.into();
    assert!(!closed_within(&mut newest, Duration::from_millis(200)));
}

/// A stranger's connection (no valid check on it yet) announcing a frame of 64 KiB: closed as
/// soon as its reader would grow past the first 4 KiB, not held with a large buffer for the
/// 10 s a connection gets to prove itself.
#[test]
fn a_strangers_large_frame_closes_its_connection_at_once() {
    let mut tcp = IceTcp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut peer = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let mut stream = vec![0xff, 0xff];
    stream.extend_from_slice(&[0x16; 6000]);
    peer.write_all(&stream).unwrap();
    let started = Instant::now();
    while tcp.counters.bad_frames == 0 && started.elapsed() < Duration::from_secs(2) {
        tcp.poll(udp.as_raw_fd(), Duration::from_millis(20), |_, _| {});
    }
    assert_eq!(tcp.counters.bad_frames, 1);
    assert_eq!(tcp.link_count(), 0);
    assert!(closed_within(&mut peer, Duration::from_secs(1)));
}

/// A connection the core answered, whose session then ended (the core sends it nothing more):
/// closed 15 s after the last thing sent, however often its peer writes. Before, a byte every
/// 29 s kept it open for good, holding a slot of its address's share — which patients behind
/// the same guest Wi-Fi or carrier NAT need for their own ICE-TCP.
#[test]
fn a_connection_whose_session_ended_is_closed_however_much_its_peer_writes() {
    let mut tcp = IceTcp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listening = tcp.local_addr().unwrap();
    let mut ended = TcpStream::connect(listening).unwrap();
    let mut alive = TcpStream::connect(listening).unwrap();
    let as_core_knows =
        |s: &TcpStream| sfu_core::stream_address::of_stream(s.local_addr().unwrap());
    let (ended_addr, alive_addr) = (as_core_knows(&ended), as_core_knows(&alive));
    let started = Instant::now();
    while tcp.link_count() < 2 && started.elapsed() < Duration::from_secs(2) {
        tcp.poll(udp.as_raw_fd(), Duration::from_millis(20), |_, _| {});
    }
    assert_eq!(tcp.link_count(), 2);
    // The core answers both once; from then on only the live one (its consent checks).
    tcp.send(Instant::now(), ended_addr, &[0x01, 0x01, 0, 0]);
    let answered_at = Instant::now();
    let mut ended_closed_at = None;
    let mut last_write = Instant::now() - Duration::from_secs(1);
    while answered_at.elapsed() < SILENCED_TIMEOUT + Duration::from_secs(4) {
        if last_write.elapsed() >= Duration::from_millis(500) {
            // Both peers keep writing a well-formed frame.
            for s in [&mut ended, &mut alive] {
                let _ = s.write_all(&[0, 4, 0x80, 0, 0, 1]);
            }
            tcp.send(Instant::now(), alive_addr, &[0x01, 0x01, 0, 0]);
            last_write = Instant::now();
        }
        tcp.poll(udp.as_raw_fd(), Duration::from_millis(50), |_, _| {});
        if ended_closed_at.is_none() && !tcp.is_link(&ended_addr) {
            ended_closed_at = Some(answered_at.elapsed());
        }
    }
    let at = ended_closed_at.expect("the ended session's connection was closed");
    assert!(
        at >= SILENCED_TIMEOUT - Duration::from_secs(1),
        "closed after {at:?}, before the core had been silent {SILENCED_TIMEOUT:?}"
    );
    assert!(
        tcp.is_link(&alive_addr),
        "the live session's connection is kept"
    );
    // (Past what the core sent it: then its end.)
    let mut seen = 0;
    while !closed_within(&mut ended, Duration::from_secs(1)) {
        seen += 1;
        assert!(
            seen < 4,
            "the ended session's connection is still open to its peer"
        );
    }
}
