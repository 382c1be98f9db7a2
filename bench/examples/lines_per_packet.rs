//! The forwarding path at scale, made deterministic for an instruction and cache-line count:
//! 150 visits connected as in the `at_scale` criterion benchmark, each publisher's next
//! video packets sealed beforehand, then handed to the SFU in turn by `forward_all` alone.
//!
//! Run under callgrind's cache simulation and read `forward_all`'s inclusive counts:
//! `valgrind --tool=callgrind --cache-sim=yes --toggle-collect='*forward_all*' <binary>`
//! (built by `cargo build --release -p bench --example lines_per_packet`). Its 32 KiB first-level
//! data cache holds a few participants' state, so its misses per packet approximate the cache
//! lines one packet touches that another packet touched last: what a worker serving hundreds
//! of participants pays in memory latency.

use bench::visits_at_scale::{connected_visits, next_video_packet};
use sfu_core::{SfuConfig, TransmitBatch};
use sfu_testkit::SimNetwork;
use std::net::SocketAddr;
use std::time::Instant;

const VISITS: usize = 150;
/// Packets per publisher in the counted pass.
const ROUNDS: usize = 40;

fn config(c: &mut SfuConfig) {
    c.nack_cache_slots = 512;
    c.bandwidth_estimation = false;
}

#[inline(never)]
fn forward_all(
    net: &mut SimNetwork,
    now: Instant,
    datagrams: &mut [(SocketAddr, Vec<u8>)],
    batch: &mut TransmitBatch,
) -> usize {
    let mut sent = 0;
    for (from, datagram) in datagrams.iter_mut() {
        net.sfu.handle_datagram(now, *from, datagram, batch);
        sent += batch.len();
        batch.clear();
    }
    sent
}

fn main() {
    let mut net = connected_visits(VISITS, config);
    let now = net.now;
    let peers = net.peers.len();
    let mut datagrams = Vec::with_capacity(peers * ROUNDS);
    for _ in 0..ROUNDS {
        for p in 0..peers {
            datagrams.push(next_video_packet(&mut net.peers[p]));
        }
    }
    let mut batch = TransmitBatch::with_capacity(64);
    let sent = forward_all(&mut net, now, &mut datagrams, &mut batch);
    assert_eq!(sent, datagrams.len(), "{:?}", net.sfu.counters);
    println!("{} packets forwarded, one copy each", datagrams.len());
}
