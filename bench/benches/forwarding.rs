//! The per-packet forwarding path of the SFU core, measured without syscalls: one SRTP packet
//! from a publisher is opened once, routed, rewritten and sealed for each subscriber.
//!
//! Run: `cargo bench -p bench --bench forwarding`. Figures go to docs/benchmarks.md.

use bench::visits_at_scale::{connected_visits, next_video_packet};
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};
use sfu_core::rtp_header::RtpHeader;
use sfu_core::srtp_context::{MasterKey, SRTP_TAG_LEN, SrtpContext};
use sfu_core::{SfuConfig, TransmitBatch};
use sfu_proto::{MediaKind, Permissions};
use sfu_server::cache_prefetch::prefetch_line;
use sfu_testkit::SimNetwork;
use std::hint::black_box;
use std::time::Duration;

/// A room with one publisher and `subscribers` receivers, all connected (real ICE/DTLS).
/// The SFU as configured for these rooms: packets arrive far faster than any real stream (one
/// per iteration), so the bandwidth allocation — which would rightly pause such video — is off;
/// what it adds per packet (the send history, the flow check) is on the path regardless.
fn config(c: &mut SfuConfig) {
    c.nack_cache_slots = 512;
    c.bandwidth_estimation = false;
}

fn room(subscribers: usize) -> SimNetwork {
    let mut net = SimNetwork::new(1, config);
    net.add_peer("pub", &[MediaKind::Audio, MediaKind::Video]);
    for i in 0..subscribers {
        net.add_peer(&format!("sub{i}"), &[]);
    }
    let both = Permissions {
        publish: true,
        subscribe: true,
    };
    for p in 0..=subscribers {
        net.join(p, "bench", both);
    }
    net.connect_all(Duration::from_secs(5));
    // Let renegotiations settle and the first packets establish the rewrite offsets.
    net.run(Duration::from_millis(200), |n| {
        n.peers[0].send_media(1, &[0x90; 1100], true, 3000);
    });
    net
}

/// Times `handle_datagram` on fresh 1,100-byte packets of the publisher's (peer 0) `track`,
/// checking that each leaves as `copies` datagrams.
fn bench_packet(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    net: &mut SimNetwork,
    track: usize,
    copies: usize,
) {
    let from = net.peers[0].addr;
    let now = net.now;
    let mut batch = TransmitBatch::with_capacity(64);
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                net.peers[0].send_media(track, &[0x90; 1100], false, 0);
                // The media packet is the last queued (ICE keep-alives may precede it).
                std::iter::from_fn(|| net.peers[0].poll_transmit())
                    .last()
                    .expect("sealed packet")
                    .1
            },
            |mut datagram| {
                net.sfu
                    .handle_datagram(now, from, &mut datagram, &mut batch);
                assert_eq!(batch.len(), copies, "{:?}", net.sfu.counters);
                batch.clear();
            },
            BatchSize::SmallInput,
        )
    });
}

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_video_1100B");
    for fanout in [1usize, 4, 10] {
        let mut net = room(fanout);
        // Throughput in forwarded packets: the report's time per element is per copy sent.
        group.throughput(Throughput::Elements(fanout as u64));
        bench_packet(&mut group, &format!("fanout_{fanout}"), &mut net, 1, fanout);
    }
    group.finish();
}

/// Simulcast: a publisher sends three layers (l, m, h) to four subscribers that all get h. A
/// packet of h is forwarded four times; one of l is opened, cached and held back.
fn simulcast(c: &mut Criterion) {
    let subscribers = 4;
    let mut net = SimNetwork::new(1, config);
    net.add_peer("pub", &[]);
    let layers = net.peers[0].add_simulcast_video(&["l", "m", "h"]);
    for i in 0..subscribers {
        net.add_peer(&format!("sub{i}"), &[]);
    }
    let both = Permissions {
        publish: true,
        subscribe: true,
    };
    for p in 0..=subscribers {
        net.join(p, "bench", both);
    }
    net.connect_all(Duration::from_secs(5));
    // VP8 keyframes on every layer: the subscriptions start on h.
    let mut keyframe = vec![0x10, 0x00];
    keyframe.resize(1100, 0x90);
    net.run(Duration::from_millis(300), |n| {
        for &t in &layers {
            n.peers[0].send_media(t, &keyframe, true, 3000);
        }
    });
    let mut group = c.benchmark_group("simulcast_1100B");
    for (name, layer, copies) in [
        ("top_layer_fanout_4", 2, subscribers),
        ("held_back_layer", 0, 0),
    ] {
        bench_packet(&mut group, name, &mut net, layers[layer], copies);
    }
    group.finish();
}

/// 150 visits at once (300 participants, each publishing audio and video to the other), the
/// publishers' packets in turn: each packet finds its publisher's and subscriber's state as a
/// busy worker does, evicted from cache by the 299 others since, which the rooms of a few
/// participants above never show (issue 12: half the per-packet cost at scale was misses).
fn at_scale(c: &mut Criterion) {
    let mut net = connected_visits(150, config);
    let now = net.now;
    let peers = net.peers.len();
    let mut next = 0;
    let mut batch = TransmitBatch::with_capacity(64);
    let mut group = c.benchmark_group("at_scale_1100B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("visits_150_video", |b| {
        b.iter_batched(
            || {
                let p = next;
                next = (next + 1) % peers;
                next_video_packet(&mut net.peers[p])
            },
            |(from, mut datagram)| {
                net.sfu
                    .handle_datagram(now, from, &mut datagram, &mut batch);
                assert_eq!(batch.len(), 1, "{:?}", net.sfu.counters);
                batch.clear();
            },
            BatchSize::SmallInput,
        )
    });
    // A received batch of 16 publishers' packets handled as the worker does, with the state
    // they need asked for across the batch first (`prefetch_batch`), and without: the two
    // side by side in one run.
    const BATCH: usize = 16;
    group.throughput(Throughput::Elements(BATCH as u64));
    for look_ahead in [false, true] {
        let name = if look_ahead {
            "visits_150_batch_16_look_ahead"
        } else {
            "visits_150_batch_16"
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    (0..BATCH)
                        .map(|_| {
                            let p = next;
                            next = (next + 1) % peers;
                            next_video_packet(&mut net.peers[p])
                        })
                        .collect::<Vec<_>>()
                },
                |mut datagrams| {
                    if look_ahead {
                        net.sfu.prefetch_batch(
                            datagrams.iter().map(|(from, d)| (*from, d.as_slice())),
                            prefetch_line,
                        );
                    }
                    for (from, datagram) in &mut datagrams {
                        net.sfu.handle_datagram(now, *from, datagram, &mut batch);
                    }
                    assert_eq!(batch.len(), BATCH, "{:?}", net.sfu.counters);
                    batch.clear();
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn crypto(c: &mut Criterion) {
    let provider = rtc_crypto::default_provider().expect("ring");
    let master = MasterKey {
        key: [3; 16],
        salt: [4; 12],
    };
    let ours = SrtpContext::new(provider.crypto(), &master).expect("ctx");
    let mut packet = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7];
    packet.extend_from_slice(&[0x55; 1100]);
    let len = packet.len();
    let mut buf = packet.clone();
    buf.resize(len + SRTP_TAG_LEN, 0);
    let mut group = c.benchmark_group("srtp_gcm_1100B");
    group.bench_function("seal_in_place (ours)", |b| {
        b.iter(|| black_box(ours.seal_rtp(&mut buf, len, 12, 7, 0, 1).expect("seal")))
    });
    let mut theirs = rtc_srtp::context::Context::new(
        &master.key,
        &master.salt,
        rtc_srtp::protection_profile::ProtectionProfile::AeadAes128Gcm,
        None,
        None,
        provider.crypto(),
    )
    .expect("ctx");
    group.bench_function("encrypt_rtp (rtc-srtp, allocating)", |b| {
        b.iter(|| black_box(theirs.encrypt_rtp(&packet).expect("encrypt")))
    });
    group.finish();

    let mut group = c.benchmark_group("rtp_header_parse");
    let mut with_ext = vec![
        0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7, 0xBE, 0xDE, 0, 2, 0x10, 0x85, 0x31, 0x12, 0x34, 0,
        0, 0,
    ];
    with_ext.extend_from_slice(&[0x55; 1100]);
    group.bench_function("RtpHeader::parse (ours, borrowed)", |b| {
        b.iter(|| black_box(RtpHeader::parse(black_box(&with_ext)).expect("parse")))
    });
    group.bench_function("rtc_rtp Header::unmarshal", |b| {
        use rtc_shared::marshal::Unmarshal;
        b.iter(|| {
            let mut slice = black_box(&with_ext[..]);
            black_box(rtc_rtp::header::Header::unmarshal(&mut slice).expect("parse"))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = forwarding, simulcast, at_scale, crypto
}
criterion_main!(benches);
