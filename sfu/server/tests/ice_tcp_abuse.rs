//! ICE-TCP against a hostile peer: connections that never carry a valid connectivity check are
//! closed after 10 s, one address cannot take more than its share of a worker's connections,
//! malformed framing closes the connection at once, and a connection full of small frames is
//! handed to the core a bounded number per turn, losing none.

use sfu_server::ice_tcp::{
    FRAMES_PER_POLL, IceTcp, MAX_LINKS_PER_SOURCE, READ_CHUNK, UNANSWERED_TIMEOUT,
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
