//! Many visits on one SFU core in the simulated network, for what times or counts the
//! forwarding path at scale (`benches/forwarding.rs`' `at_scale`,
//! `examples/lines_per_packet.rs`): each packet then finds its publisher's and subscriber's
//! state as a busy worker does, evicted from cache by the other participants' since.

use sfu_core::SfuConfig;
use sfu_proto::{MediaKind, Permissions};
use sfu_testkit::{SimNetwork, SimPeer};
use std::net::SocketAddr;
use std::time::Duration;

/// `visits` rooms of two, each participant publishing audio and video (track 1) to the
/// other, connected (real ICE, DTLS and SRTP) and past a first keyframe on every video track,
/// so that every publisher's next video packet is forwarded.
pub fn connected_visits(visits: usize, configure: impl FnOnce(&mut SfuConfig)) -> SimNetwork {
    let mut net = SimNetwork::new(1, configure);
    for v in 0..visits {
        for side in 0..2 {
            net.add_peer(
                &format!("v{v}-{side}"),
                &[MediaKind::Audio, MediaKind::Video],
            );
        }
    }
    let both = Permissions {
        publish: true,
        subscribe: true,
    };
    for p in 0..2 * visits {
        net.join(p, &format!("visit{}", p / 2), both);
    }
    net.connect_all(Duration::from_secs(30));
    net.run(Duration::from_millis(300), |n| {
        for p in &mut n.peers {
            p.send_media(1, &[0x90; 1100], true, 3000);
        }
    });
    net
}

/// A participant's next 1,100-byte video packet, sealed, with the address it comes from.
pub fn next_video_packet(peer: &mut SimPeer) -> (SocketAddr, Vec<u8>) {
    peer.send_media(1, &[0x90; 1100], false, 0);
    let datagram = std::iter::from_fn(|| peer.poll_transmit())
        .last()
        .expect("a sealed packet")
        .1;
    (peer.addr, datagram)
}
