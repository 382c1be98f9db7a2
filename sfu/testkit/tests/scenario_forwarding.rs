//! Scenario tests of the SFU core on a simulated network with virtual time: real ICE, DTLS and
//! SRTP between the core and test peers, loss on chosen links.

use sfu_proto::{DisconnectReason, Event, MediaKind, ParticipantId, Permissions};
use sfu_testkit::{Link, SimNetwork};
use std::time::Duration;

const BOTH: Permissions = Permissions {
    publish: true,
    subscribe: true,
};

/// Video at ~30 fps, 3 packets a frame; audio every 20 ms. Payloads carry (track, counter).
fn send_media(net: &mut SimNetwork, publishers: &[usize], tick: &mut u64) {
    *tick += 1;
    for &p in publishers {
        if (*tick).is_multiple_of(11) {
            for part in 0..3u8 {
                let mut payload = vec![0x90, 0x80, part, p as u8];
                payload.extend_from_slice(&tick.to_be_bytes());
                payload.resize(900, 0xab);
                net.peers[p].send_media(1, &payload, part == 2, 3000);
            }
        }
        if (*tick).is_multiple_of(20) {
            let mut payload = vec![0xfc, p as u8];
            payload.extend_from_slice(&tick.to_be_bytes());
            payload.resize(80, 0x11);
            net.peers[p].send_media(0, &payload, true, 960);
        }
    }
}

fn two_publishers_three_subscribers(seed: u64) -> SimNetwork {
    two_publishers_three_subscribers_with(seed, |_| {})
}

fn two_publishers_three_subscribers_with(
    seed: u64,
    configure: impl FnOnce(&mut sfu_core::SfuConfig),
) -> SimNetwork {
    let mut net = SimNetwork::new(seed, configure);
    let av = [MediaKind::Audio, MediaKind::Video];
    net.add_peer("pub-a", &av);
    net.add_peer("pub-b", &av);
    for name in ["sub-c", "sub-d", "sub-e"] {
        net.add_peer(name, &[]);
    }
    for p in 0..5 {
        net.join(p, "visit", BOTH);
    }
    net.connect_all(Duration::from_secs(5));
    net
}

#[test]
fn uplink_loss_is_repaired_and_every_subscriber_sees_continuous_sequences() {
    let mut net = two_publishers_three_subscribers(7);
    net.set_uplink(
        0,
        Link {
            loss: 0.05,
            delay: Duration::from_millis(20),
            ..Link::default()
        },
    );
    let mut tick = 0;
    net.run(Duration::from_secs(6), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    // A quiet second for the last repairs.
    net.run(Duration::from_secs(1), |_| {});

    assert!(
        net.link_drops > 20,
        "the uplink dropped packets ({})",
        net.link_drops
    );
    assert!(
        net.peers[0].nacks_received > 0,
        "the SFU NACKed the lossy publisher"
    );
    assert!(net.peers[0].retransmissions_sent > 0);

    for s in 2..5 {
        for (publisher, kind) in [
            ("pub-a", MediaKind::Video),
            ("pub-b", MediaKind::Video),
            ("pub-b", MediaKind::Audio),
        ] {
            let line = net.peers[s]
                .incoming_from(publisher, kind)
                .unwrap_or_else(|| {
                    panic!("{} was offered {publisher}'s {kind:?}", net.peers[s].name)
                })
                .clone();
            let got = net.peers[s]
                .received
                .get(&line.ssrc)
                .map(Vec::len)
                .unwrap_or(0);
            assert!(
                got > 100,
                "{} received {got} packets of {publisher}'s {kind:?}",
                net.peers[s].name
            );
            let missing = net.peers[s].missing(line.ssrc);
            assert!(
                missing.is_empty(),
                "{} has holes in {publisher}'s {kind:?}: {missing:?}",
                net.peers[s].name
            );
        }
        // Every payload of pub-a's video arrived intact: the counters embedded in it are the
        // ones pub-a sent, in sequence order once repairs are sorted in.
        let line = net.peers[s]
            .incoming_from("pub-a", MediaKind::Video)
            .expect("line")
            .clone();
        let mut pkts = net.peers[s].received[&line.ssrc].clone();
        let first = pkts[0].seq;
        pkts.sort_by_key(|p| p.seq.wrapping_sub(first));
        pkts.dedup_by_key(|p| p.seq);
        for w in pkts.windows(2) {
            let (a, b) = (&w[0].payload, &w[1].payload);
            assert_eq!(a[3], 0, "payload from pub-a");
            let (ta, tb) = (
                u64::from_be_bytes(a[4..12].try_into().unwrap()),
                u64::from_be_bytes(b[4..12].try_into().unwrap()),
            );
            assert!(tb >= ta, "payload order follows sequence order");
        }
        // Repairs of uplink loss arrive late, after later packets, on the media SSRC.
        let arrivals = &net.peers[s].received[&line.ssrc];
        let late = arrivals
            .windows(2)
            .filter(|w| (w[1].seq.wrapping_sub(w[0].seq) as i16) < 0)
            .count();
        assert!(
            late > 0,
            "{} got pub-a's lost packets late, after repair",
            net.peers[s].name
        );
    }
    // The lossless publisher needed no repair.
    assert_eq!(net.peers[1].retransmissions_sent, 0);
}

/// The network of `two_publishers_three_subscribers` with sub-c's downlink losing 5 %.
fn sub_c_on_a_lossy_downlink(seed: u64) -> SimNetwork {
    let mut net = two_publishers_three_subscribers(seed);
    net.set_downlink(
        2,
        Link {
            loss: 0.05,
            delay: Duration::from_millis(15),
            ..Link::default()
        },
    );
    net
}

/// The SSRC on which `peer` receives pub-a's video.
fn pub_a_video(net: &SimNetwork, peer: usize) -> Option<u32> {
    net.peers[peer]
        .incoming_from("pub-a", MediaKind::Video)
        .map(|l| l.ssrc)
}

/// `peer` NACKs the holes in pub-a's video, as a browser does; returns how many.
fn nack_holes(net: &mut SimNetwork, peer: usize) -> usize {
    let Some(ssrc) = pub_a_video(net, peer) else {
        return 0;
    };
    let missing = net.peers[peer].missing(ssrc);
    if !missing.is_empty() {
        net.peers[peer].send_nack(ssrc, &missing);
    }
    missing.len()
}

/// Half a second of NACKs for what is still missing, media stopped.
fn repair_the_rest(net: &mut SimNetwork, peer: usize) {
    for _ in 0..10 {
        nack_holes(net, peer);
        net.run(Duration::from_millis(50), |_| {});
    }
}

#[test]
fn downlink_loss_is_repaired_from_the_sfu_cache() {
    let mut net = sub_c_on_a_lossy_downlink(11);
    let mut tick = 0;
    let mut nacked = 0;
    net.run(Duration::from_secs(5), |n| {
        send_media(n, &[0, 1], &mut tick);
        // The subscriber NACKs its holes every 20 ms, as a browser would.
        if tick.is_multiple_of(20) {
            nacked += nack_holes(n, 2);
        }
    });
    repair_the_rest(&mut net, 2);
    let ssrc = pub_a_video(&net, 2).expect("line");
    assert!(nacked > 0, "the lossy downlink caused NACKs");
    assert!(
        net.sfu.counters.retransmissions_out > 0,
        "the SFU answered from its cache"
    );
    assert_eq!(
        net.peers[2].missing(ssrc),
        Vec::<u16>::new(),
        "all holes repaired"
    );
    assert_eq!(
        net.peers[0].retransmissions_sent, 0,
        "repairs came from the SFU, not the publisher"
    );
    assert!(
        net.peers[2].received[&ssrc].iter().any(|p| p.repaired),
        "repairs arrive as RTX"
    );
}

/// One subscriber NACKing every packet it got, over and over, takes no repair from another:
/// resends are capped per subscriber and packet, not per packet for all.
#[test]
fn a_subscriber_that_nacks_everything_uses_up_no_one_elses_repairs() {
    let mut net = sub_c_on_a_lossy_downlink(12);
    let mut tick = 0;
    let mut hostile_nacks = 0;
    net.run(Duration::from_secs(5), |n| {
        send_media(n, &[0, 1], &mut tick);
        // sub-d asks again for the packets it just got, three times each, every millisecond.
        if let Some(ssrc) = pub_a_video(n, 3)
            && let Some(got) = n.peers[3].received.get(&ssrc)
        {
            let recent: Vec<u16> = got.iter().rev().take(4).map(|p| p.seq).collect();
            for _ in 0..3 {
                n.peers[3].send_nack(ssrc, &recent);
                hostile_nacks += recent.len();
            }
        }
        if tick.is_multiple_of(20) {
            nack_holes(n, 2);
        }
    });
    repair_the_rest(&mut net, 2);
    let ssrc = pub_a_video(&net, 2).expect("line");
    assert!(hostile_nacks > 10_000, "{hostile_nacks}");
    assert_eq!(
        net.peers[2].missing(ssrc),
        Vec::<u16>::new(),
        "all of sub-c's holes repaired"
    );
    // And sub-d got at most three resends of any packet.
    let hostile = pub_a_video(&net, 3).expect("line");
    let mut repaired: std::collections::HashMap<u16, usize> = Default::default();
    for p in net.peers[3].received[&hostile]
        .iter()
        .filter(|p| p.repaired)
    {
        *repaired.entry(p.seq).or_default() += 1;
    }
    assert!(
        !repaired.is_empty(),
        "sub-d's repeats were answered at first"
    );
    assert!(repaired.values().all(|&n| n <= 3), "{repaired:?}");
}

/// NACK packets naming thousands of sequence numbers each (one datagram can name about 6,000)
/// cost the worker a bounded number of lookups: past the subscriber's budget they are counted
/// and not looked up. The budget refills, and an honest NACK is repaired after.
#[test]
fn nacks_naming_thousands_of_numbers_are_looked_up_only_within_a_budget() {
    let mut net = sub_c_on_a_lossy_downlink(13);
    let mut tick = 0;
    net.run(Duration::from_secs(2), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    let ssrc = pub_a_video(&net, 3).expect("line");
    let (looked_up, refused) = (net.sfu.counters.nacks_in, net.sfu.counters.nacks_refused);
    // 20 packets of 100 pairs, each naming 17 numbers.
    let mut named = 0;
    for round in 0..20u16 {
        let seqs: Vec<u16> = (0..1_700u16)
            .map(|i| round.wrapping_mul(1_700).wrapping_add(i))
            .collect();
        net.peers[3].send_nack(ssrc, &seqs);
        named += seqs.len() as u64;
    }
    net.run(Duration::from_millis(100), |_| {});
    let looked_up = net.sfu.counters.nacks_in - looked_up;
    let refused = net.sfu.counters.nacks_refused - refused;
    assert_eq!(looked_up + refused, named, "every number counted one way");
    assert!(
        looked_up <= sfu_core::token_bucket::NACKED_BURST as u64 + 20,
        "looked up {looked_up} at once"
    );
    // Meanwhile, and a second on, sub-c's holes of that second are repaired from the cache
    // (it has its own budget; those before it were never asked for here).
    let ssrc_c = pub_a_video(&net, 2).unwrap();
    let older = net.peers[2].missing(ssrc_c);
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick);
        if tick.is_multiple_of(20) {
            nack_holes(n, 2);
        }
    });
    repair_the_rest(&mut net, 2);
    let left: Vec<u16> = net.peers[2]
        .missing(ssrc_c)
        .into_iter()
        .filter(|s| !older.contains(s))
        .collect();
    assert_eq!(left, Vec::<u16>::new(), "new holes left unrepaired");
}

/// RTCP costs the worker a bounded amount whatever a client packs into it: a datagram over an
/// IP packet's size is not read (a reassembled 64 KiB one held some 2,700 transport-wide
/// feedback messages, each walked over 2,048 statuses), a compound is read to its 16th packet,
/// feedback statuses and datagrams have a budget per session — and the session's RTCP is read
/// again once the budget refills. (Before: every packet of every compound was acted on.)
#[test]
fn rtcp_past_an_ip_packet_a_compound_or_a_budget_is_not_read() {
    let mut net = two_publishers_three_subscribers(15);
    let mut tick = 0;
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    let ssrc = pub_a_video(&net, 2).expect("line");
    let plis = |count: usize| {
        let mut compound = Vec::new();
        for _ in 0..count {
            let mut buf = [0u8; 12];
            let n = sfu_core::rtcp_writer::pli(&mut buf, ssrc);
            compound.extend_from_slice(&buf[..n]);
        }
        compound
    };
    let counters = |net: &SimNetwork| {
        let c = &net.sfu.counters;
        (c.keyframe_requests_in, c.rtcp_refused, c.rtcp_in)
    };
    // 200 keyframe requests in 2,400 bytes: none read.
    let (asked, refused, _) = counters(&net);
    net.peers[2].send_rtcp(&plis(200));
    net.run(Duration::from_millis(30), |_| {});
    assert_eq!(
        counters(&net).0,
        asked,
        "a request of an oversized datagram was read"
    );
    assert_eq!(counters(&net).1, refused + 1);
    // 100 in 1,200 bytes: the first 16.
    let (asked, refused, _) = counters(&net);
    net.peers[2].send_rtcp(&plis(100));
    net.run(Duration::from_millis(30), |_| {});
    assert_eq!(counters(&net).0, asked + 16);
    assert_eq!(counters(&net).1, refused + 1);
    // Twelve feedback messages, each saying 2,048 packets were lost (2 bytes of chunk each):
    // at most the statuses' burst of them walked.
    let mut compound = Vec::new();
    for i in 0..12u8 {
        let mut m = vec![0x8f, 205, 0, 5];
        m.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        m.extend_from_slice(&ssrc.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes()); // base sequence number
        m.extend_from_slice(&2048u16.to_be_bytes()); // status count
        m.extend_from_slice(&[0, 0, 1, i]); // reference time, feedback count
        m.extend_from_slice(&0x0800u16.to_be_bytes()); // a run of 2,048 "not received"
        m.extend_from_slice(&[0, 0]);
        compound.extend_from_slice(&m);
    }
    let (_, refused, _) = counters(&net);
    net.peers[2].send_rtcp(&compound);
    net.run(Duration::from_millis(30), |_| {});
    let walked = 12 - (counters(&net).1 - refused);
    assert!(
        walked * 2048 <= sfu_core::token_bucket::FEEDBACK_STATUSES_BURST as u64,
        "{walked} messages of 2,048 statuses walked at once"
    );
    // 2,000 datagrams at once: the burst read, the rest not.
    let (_, refused, read) = counters(&net);
    for _ in 0..2_000 {
        net.peers[2].send_pli(ssrc);
    }
    net.run(Duration::from_millis(30), |_| {});
    let (_, refused_now, read_now) = counters(&net);
    assert!(
        read_now - read <= sfu_core::token_bucket::RTCP_DATAGRAMS_BURST as u64 + 10,
        "{} read",
        read_now - read
    );
    assert!(
        refused_now - refused >= 1_500,
        "{} refused",
        refused_now - refused
    );
    // Its NACKs are read all the same (their own budget bounds them): a lossy subscriber's
    // feedback is never what the keyframe requests' budget takes.
    let (_, refused, read) = counters(&net);
    for i in 0..300u16 {
        net.peers[2].send_nack(ssrc, &[i]);
    }
    net.run(Duration::from_millis(30), |_| {});
    let (_, refused_now, read_now) = counters(&net);
    assert_eq!((read_now - read, refused_now - refused), (300, 0));
    // Its own RTCP is read again once the budget refills; everyone's media went on meanwhile.
    let received = net.peers[3].received.values().map(Vec::len).sum::<usize>();
    net.run(Duration::from_secs(3), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    let (asked, _, _) = counters(&net);
    net.peers[2].send_pli(ssrc);
    net.run(Duration::from_millis(30), |_| {});
    assert_eq!(
        counters(&net).0,
        asked + 1,
        "an honest request after the flood"
    );
    assert!(net.peers[3].received.values().map(Vec::len).sum::<usize>() > received + 100);
}

/// A publisher may send on its RTX stream only repairs of what its media stream passed: "repairs"
/// of packets it never sent would reach every subscriber as media, outside the layer's
/// measured rate that their bandwidth is shared by (before: 399 of these 500 reached one).
#[test]
fn repairs_of_packets_never_sent_are_not_forwarded() {
    let mut net = two_publishers_three_subscribers(16);
    let mut tick = 0;
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    // (What is on its way arrives first.)
    net.run(Duration::from_millis(100), |_| {});
    let ssrc = pub_a_video(&net, 2).expect("line");
    let got = |net: &SimNetwork| net.peers[2].received.get(&ssrc).map_or(0, Vec::len);
    let (before, refused) = (got(&net), net.sfu.counters.repairs_refused);
    let next = net.peers[0].tracks[1].seq;
    for i in 0..500u16 {
        let mut payload = vec![0x90, 0x80, 0, 0];
        payload.resize(1_000, 0xab);
        net.peers[0].send_rtx(1, next.wrapping_add(1 + i), &payload);
    }
    net.run(Duration::from_millis(100), |_| {});
    assert_eq!(got(&net), before, "\"repairs\" forwarded");
    assert_eq!(net.sfu.counters.repairs_refused - refused, 500);
    // Its media goes on.
    net.run(Duration::from_millis(500), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    assert!(got(&net) > before + 20, "{} after", got(&net) - before);
}

/// A publisher's sender reports reach its subscribers at most every 250 ms: 50 in a few
/// datagrams (28 bytes each) used to become 50 to every subscriber, outside the pacer.
#[test]
fn a_publishers_flood_of_sender_reports_is_passed_on_once() {
    let mut net = two_publishers_three_subscribers(14);
    let mut tick = 0;
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    let video = net.peers[0].tracks[1].ssrc;
    let mut compound = Vec::new();
    for i in 0..50u64 {
        let mut sr = [0u8; 28];
        sfu_core::rtcp_writer::sender_report(&mut sr, video, (i + 1) << 32, 90_000, 100, 100_000);
        compound.extend_from_slice(&sr);
    }
    let before: Vec<u32> = (2..5)
        .map(|p| net.peers[p].sender_reports_received)
        .collect();
    // (Ten to a compound: past its 16th packet a compound is not read.)
    for part in compound.chunks(10 * 28) {
        net.peers[0].send_rtcp(part);
    }
    net.run(Duration::from_millis(100), |_| {});
    let after: Vec<u32> = (2..5)
        .map(|p| net.peers[p].sender_reports_received)
        .collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a - b, 1, "sender reports relayed: {before:?} -> {after:?}");
    }
    assert_eq!(net.sfu.counters.sender_reports_held, 49);
}

/// A request inside the throttle interval is not lost: it goes out once the interval ends
/// (the timer visits the layers holding one), and only once.
#[test]
fn a_keyframe_request_held_back_by_the_throttle_goes_out_when_it_ends() {
    let mut net = two_publishers_three_subscribers(4);
    let mut tick = 0;
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    // pub-b sends no keyframes of its own (pub-a's frames all are), which would answer a
    // held-back request.
    let ssrc = net.peers[2]
        .incoming_from("pub-b", MediaKind::Video)
        .expect("line")
        .ssrc;
    let throttle = net.sfu.config().keyframe_throttle;
    let before = net.peers[1].plis_received;
    let throttled = net.sfu.counters.keyframe_requests_throttled;
    net.peers[2].send_pli(ssrc);
    net.run(Duration::from_millis(50), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    assert_eq!(net.peers[1].plis_received, before + 1, "the first passes");
    net.peers[2].send_pli(ssrc);
    net.run(Duration::from_millis(100), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    assert_eq!(
        net.peers[1].plis_received,
        before + 1,
        "the second is held back"
    );
    net.run(throttle, |n| send_media(n, &[0, 1], &mut tick));
    assert_eq!(
        net.peers[1].plis_received,
        before + 2,
        "held back, then sent when the throttle ended"
    );
    net.run(throttle * 3, |n| send_media(n, &[0, 1], &mut tick));
    assert_eq!(net.peers[1].plis_received, before + 2, "and only once");
    assert_eq!(net.sfu.counters.keyframe_requests_throttled, throttled + 1);
}

#[test]
fn keyframe_request_storms_reach_the_publisher_throttled() {
    let mut net = two_publishers_three_subscribers(3);
    let mut tick = 0;
    net.run(Duration::from_millis(500), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    let before = net.peers[0].plis_received;
    let ssrcs: Vec<(usize, u32)> = (2..5)
        .map(|s| {
            (
                s,
                net.peers[s]
                    .incoming_from("pub-a", MediaKind::Video)
                    .expect("line")
                    .ssrc,
            )
        })
        .collect();
    // Three subscribers each ask every 10 ms for two seconds: 600 requests.
    net.run(Duration::from_secs(2), |n| {
        send_media(n, &[0, 1], &mut tick);
        if tick.is_multiple_of(10) {
            for &(s, ssrc) in &ssrcs {
                n.peers[s].send_pli(ssrc);
            }
        }
    });
    let got = net.peers[0].plis_received - before;
    let throttle = net.sfu.config().keyframe_throttle;
    let max = (Duration::from_secs(2).as_millis() / throttle.as_millis()) as u32 + 1;
    assert!(got >= 2, "keyframe requests reached the publisher ({got})");
    assert!(
        got <= max,
        "{got} PLIs reached the publisher, throttle allows {max}"
    );
    assert!(net.sfu.counters.keyframe_requests_throttled > 500);
    assert!(
        net.peers[1].plis_received <= 3,
        "pub-b was not asked beyond its subscribers' start"
    );
}

#[test]
fn a_participant_without_publish_permission_is_not_forwarded_until_allowed() {
    let mut net = SimNetwork::new(5, |_| {});
    net.add_peer("waiting", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("clinician", &[MediaKind::Audio, MediaKind::Video]);
    net.join(
        0,
        "visit",
        Permissions {
            publish: false,
            subscribe: false,
        },
    );
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    let mut tick = 0;
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    assert!(
        net.sfu.counters.dropped_blocked > 50,
        "the waiting participant's media was held back"
    );
    assert!(
        net.peers[1].received.is_empty(),
        "the clinician received nothing from the lobby"
    );
    assert!(
        net.peers[0].received.is_empty(),
        "the waiting participant received nothing"
    );
    assert!(
        net.peers[0].incoming.is_empty(),
        "and was not even told about the clinician's tracks"
    );
    assert!(
        net.peers[1]
            .incoming_from("waiting", MediaKind::Video)
            .is_none(),
        "nor was the clinician offered the waiting participant's tracks"
    );
    let waiting_id = net.id(0).clone();
    let announced = |net: &SimNetwork, published: bool| {
        net.events
            .iter()
            .filter(|e| match e {
                sfu_proto::Event::TrackPublished { track, .. } if published => {
                    track.publisher == waiting_id
                }
                sfu_proto::Event::TrackUnpublished { track, .. } if !published => {
                    track.publisher == waiting_id
                }
                _ => false,
            })
            .count()
    };
    assert_eq!(
        announced(&net, true),
        0,
        "signaling hears of no track from the lobby"
    );

    let id = net.id(0).clone();
    net.command(sfu_proto::Command::SetPermissions {
        participant: id,
        permissions: BOTH,
    });
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    assert_eq!(
        announced(&net, true),
        2,
        "admitted: audio and video announced"
    );
    let from_waiting = net.peers[1]
        .incoming_from("waiting", MediaKind::Video)
        .expect("offered after admit")
        .ssrc;
    assert!(
        net.peers[1]
            .received
            .get(&from_waiting)
            .map(Vec::len)
            .unwrap_or(0)
            > 30
    );
    let from_clinician = net.peers[0]
        .incoming_from("clinician", MediaKind::Video)
        .expect("offered after admit")
        .ssrc;
    assert!(
        net.peers[0]
            .received
            .get(&from_clinician)
            .map(Vec::len)
            .unwrap_or(0)
            > 30
    );

    // Back to the lobby: the clinician stops receiving them at once.
    let id = net.id(0).clone();
    net.command(sfu_proto::Command::SetPermissions {
        participant: id,
        permissions: Permissions {
            publish: false,
            subscribe: false,
        },
    });
    let got_before = net.peers[1].received[&from_waiting].len();
    let to_waiting_before = net.peers[0].received[&from_clinician].len();
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    assert_eq!(announced(&net, false), 2, "back in the lobby: withdrawn");
    let got_after = net.peers[1].received[&from_waiting].len();
    let to_waiting_after = net.peers[0].received[&from_clinician].len();
    assert!(
        got_after - got_before <= 5,
        "at most what was in flight: {got_before} -> {got_after}"
    );
    assert!(
        to_waiting_after - to_waiting_before <= 5,
        "{to_waiting_before} -> {to_waiting_after}"
    );
}

#[test]
fn a_vanished_browser_is_removed_by_consent_timeout() {
    let mut net = SimNetwork::new(9, |_| {});
    net.add_peer("a", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("b", &[MediaKind::Audio, MediaKind::Video]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    net.peers[1].silent = true;
    let mut tick = 0;
    net.run(Duration::from_secs(30), |n| send_media(n, &[0], &mut tick));
    let gone = net.disconnected();
    assert_eq!(gone.get(net.id(1)), Some(&DisconnectReason::ConsentTimeout));
    assert!(!gone.contains_key(net.id(0)), "the live participant stays");
    assert!(!net.sfu.has_participant(net.id(1)));
    assert!(net.sfu.has_participant(net.id(0)));
    // Each event names the media session it is about, as signaling numbered it.
    let sessions: Vec<(bool, &ParticipantId, u32)> = net
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Connected {
                participant,
                session,
            } => Some((true, participant, *session)),
            Event::Disconnected {
                participant,
                session,
                ..
            } => Some((false, participant, *session)),
            _ => None,
        })
        .collect();
    for peer in 0..2 {
        assert!(sessions.contains(&(true, net.id(peer), SimNetwork::session(peer))));
    }
    assert!(sessions.contains(&(false, net.id(1), SimNetwork::session(1))));
}

#[test]
fn garbage_datagrams_are_dropped_and_counted_while_the_call_goes_on() {
    use rand::{Rng, SeedableRng};
    let mut net = two_publishers_three_subscribers(21);
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut tick = 0;
    net.run(Duration::from_millis(500), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    let line = net.peers[2]
        .incoming_from("pub-a", MediaKind::Video)
        .expect("line")
        .ssrc;
    let before = net.peers[2].received[&line].len();
    let dropped_before = net.sfu.counters.dropped();
    let known = net.peers[0].addr;
    let stranger: std::net::SocketAddr = "10.9.9.9:9999".parse().unwrap();
    net.run(Duration::from_secs(2), |n| {
        send_media(n, &[0, 1], &mut tick);
        for _ in 0..5 {
            let len = rng.random_range(0..300);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Steer the first byte into each protocol's range so every parser is exercised.
            if !junk.is_empty() {
                let kind = rng.random_range(0..5);
                junk[0] = match kind {
                    0 => rng.random_range(0..4),   // STUN
                    1 => rng.random_range(20..64), // DTLS
                    2 => 0x80,                     // RTP
                    3 => 0x81,                     // RTCP (with the type below)
                    _ => junk[0],
                };
                if kind == 3 && junk.len() > 1 {
                    junk[1] = rng.random_range(192..224);
                }
            }
            let from = if rng.random_bool(0.7) {
                known
            } else {
                stranger
            };
            n.inject_to_sfu(from, junk);
        }
    });
    let after = net.peers[2].received[&line].len();
    assert!(
        after > before + 100,
        "media kept flowing ({before} -> {after})"
    );
    assert!(
        net.sfu.counters.dropped() >= dropped_before + 8000,
        "garbage was counted as dropped"
    );
    assert!(
        net.disconnected().is_empty(),
        "nobody was disconnected by garbage"
    );
}

#[test]
fn publisher_streams_survive_sequence_number_rollover() {
    let mut net = SimNetwork::new(13, |_| {});
    net.add_peer("pub", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("sub", &[]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    net.peers[0].tracks[1].seq = 65_500;
    let mut sent = 0;
    net.run(Duration::from_millis(400), |n| {
        n.peers[0].send_media(1, &[0x90; 200], true, 3000);
        sent += 1;
    });
    net.run(Duration::from_millis(100), |_| {});
    assert_eq!(net.sfu.counters.dropped_auth, 0, "{:?}", net.sfu.counters);
    let ssrc = net.peers[1]
        .incoming_from("pub", MediaKind::Video)
        .expect("line")
        .ssrc;
    assert!(net.peers[1].received[&ssrc].len() >= sent - 30);
    assert!(net.peers[1].missing(ssrc).is_empty());
}

#[test]
fn receiver_reports_reach_every_stream_each_second_spread_over_the_ticks() {
    // Twelve 1:1 visits, 24 publishers of audio and video, and a publisher of three simulcast
    // layers with a viewer: 51 streams to report on (each layer its own).
    let mut net = SimNetwork::new(29, |_| {});
    for v in 0..12 {
        for side in 0..2 {
            let p = net.add_peer(
                &format!("v{v}-{side}"),
                &[MediaKind::Audio, MediaKind::Video],
            );
            net.join(p, &format!("visit{v}"), BOTH);
        }
    }
    let sc = net.add_peer("simulcast", &[]);
    net.peers[sc].add_simulcast_video(&["l", "m", "h"]);
    net.join(sc, "lecture", BOTH);
    let viewer = net.add_peer("viewer", &[]);
    net.join(viewer, "lecture", BOTH);
    net.connect_all(Duration::from_secs(10));
    let send = |n: &mut SimNetwork| {
        for p in &mut n.peers {
            for t in 0..p.tracks.len() {
                match p.tracks[t].kind {
                    MediaKind::Audio => p.send_media(t, &[0x55; 80], true, 960),
                    MediaKind::Video => p.send_media(t, &[0x90; 600], true, 3000),
                };
            }
        }
    };
    net.run(Duration::from_millis(200), send);
    let start = net.now;
    for p in &mut net.peers {
        p.receiver_reports.clear();
    }
    net.run(Duration::from_secs(3), send);
    let mut ticks = std::collections::BTreeMap::<Duration, usize>::new();
    for p in &net.peers {
        for t in &p.tracks {
            let n = p.receiver_reports.iter().filter(|r| r.1 == t.ssrc).count();
            assert!(
                (2..=4).contains(&n),
                "{}'s stream {} got {n} reports in 3 s",
                p.name,
                t.ssrc
            );
        }
        for (at, _) in &p.receiver_reports {
            *ticks
                .entry(
                    (*at - start).div_duration_f64(Duration::from_millis(10)) as u32
                        * Duration::from_millis(10),
                )
                .or_default() += 1;
        }
    }
    // Reports on 51 streams a second, a share each tick: none carries most of them.
    let busiest = ticks.values().copied().max().unwrap_or(0);
    assert!(
        busiest <= 8,
        "{busiest} reports in one 10 ms tick (of {} in {} ticks)",
        ticks.values().sum::<usize>(),
        ticks.len()
    );
}

#[test]
fn receiver_reports_keep_a_long_configured_interval() {
    // Every 2 s (200 ticks of 10 ms): in 4 s each stream is reported on exactly twice.
    let mut net = SimNetwork::new(31, |c| c.report_interval = Duration::from_secs(2));
    for side in 0..2 {
        let p = net.add_peer(&format!("v-{side}"), &[MediaKind::Audio, MediaKind::Video]);
        net.join(p, "visit", BOTH);
    }
    net.connect_all(Duration::from_secs(5));
    let send = |n: &mut SimNetwork| {
        for p in &mut n.peers {
            p.send_media(0, &[0x55; 80], true, 960);
            p.send_media(1, &[0x90; 600], true, 3000);
        }
    };
    net.run(Duration::from_millis(200), send);
    for p in &mut net.peers {
        p.receiver_reports.clear();
    }
    net.run(Duration::from_secs(4), send);
    for p in &net.peers {
        for t in &p.tracks {
            let n = p.receiver_reports.iter().filter(|r| r.1 == t.ssrc).count();
            assert_eq!(n, 2, "{}'s stream {} in 4 s", p.name, t.ssrc);
        }
    }
}

#[test]
fn transport_wide_feedback_reaches_publishers_and_subscribers_get_our_own_sequence() {
    let mut net = two_publishers_three_subscribers(17);
    let mut tick = 0;
    net.run(Duration::from_secs(2), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    for p in 0..2 {
        let peer = &net.peers[p];
        // Every 50 ms to each, whichever tick its share falls on: ~40 in 2 s.
        assert!(
            (34..=42).contains(&peer.twcc_feedback_received),
            "{} got {} feedback messages in 2 s",
            peer.name,
            peer.twcc_feedback_received
        );
        // ~2 s of 140 packets/s: nearly every one was reported on.
        assert!(
            peer.twcc_statuses_reported > 200,
            "{} statuses",
            peer.twcc_statuses_reported
        );
    }
    for s in 2..5 {
        let seqs = &net.peers[s].twcc_seqs_received;
        assert!(seqs.len() > 200);
        // One counter per subscriber, ours: consecutive in arrival order on a clean link,
        // whatever the publishers stamped.
        for w in seqs.windows(2) {
            assert_eq!(
                w[1],
                w[0].wrapping_add(1),
                "{}'s transport-wide sequence",
                net.peers[s].name
            );
        }
        assert_eq!(seqs[0], 0, "starts at zero for each subscriber");
    }
}

#[test]
fn the_loudest_publisher_becomes_the_active_speaker() {
    let mut net = SimNetwork::new(23, |_| {});
    net.add_peer("anna", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("bo", &[MediaKind::Audio, MediaKind::Video]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    let speakers = |net: &SimNetwork| -> Vec<String> {
        net.events
            .iter()
            .filter_map(|e| match e {
                sfu_proto::Event::ActiveSpeaker { participant, .. } => {
                    Some(participant.to_string())
                }
                _ => None,
            })
            .collect()
    };
    net.peers[0].audio_level = 20; // speaking
    net.peers[1].audio_level = 110; // near silence
    let mut tick = 0;
    net.run(Duration::from_secs(2), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    assert_eq!(speakers(&net), vec!["anna".to_owned()]);
    net.peers[0].audio_level = 110;
    net.peers[1].audio_level = 15;
    net.run(Duration::from_secs(2), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    assert_eq!(speakers(&net), vec!["anna".to_owned(), "bo".to_owned()]);
}

/// A publisher that claims the loudest level and then stops sending audio (its levels are its
/// own claim) does not stay the speaker — whose video goes first in everyone's allocation —
/// once another speaks: before, nobody could be louder than its last 0 dBov, for good.
#[test]
fn a_speaker_that_stopped_sending_does_not_keep_the_floor() {
    let mut net = SimNetwork::new(24, |_| {});
    net.add_peer("hostile", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("clinician", &[MediaKind::Audio, MediaKind::Video]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    net.peers[0].audio_level = 0;
    net.peers[1].audio_level = 110;
    let mut tick = 0;
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    // It goes quiet by sending nothing; the clinician speaks.
    net.peers[1].audio_level = 20;
    net.run(Duration::from_secs(3), |n| send_media(n, &[1], &mut tick));
    let last = net.events.iter().rev().find_map(|e| match e {
        sfu_proto::Event::ActiveSpeaker { participant, .. } => Some(participant.to_string()),
        _ => None,
    });
    assert_eq!(last.as_deref(), Some("clinician"));
}

/// The call after half a second, and the SSRC on which sub-c (peer 2) receives pub-a's video.
fn sub_c_receiving(seed: u64) -> (SimNetwork, u32) {
    let mut net = two_publishers_three_subscribers(seed);
    let mut tick = 0;
    net.run(Duration::from_millis(500), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    let ssrc = pub_a_video(&net, 2).expect("line");
    (net, ssrc)
}

/// The RTCP sub-c just sealed (taken before the network carries it), delivered to the SFU
/// twice: how many keyframe requests the first copy made, and how many replays the second.
fn delivered_twice(net: &mut SimNetwork) -> (u64, u64) {
    let (_, sealed) = std::iter::from_fn(|| net.peers[2].poll_transmit())
        .last()
        .expect("sealed");
    let from = net.peers[2].addr;
    let (requests, replays) = (
        net.sfu.counters.keyframe_requests_in,
        net.sfu.counters.dropped_replay,
    );
    net.inject_to_sfu(from, sealed.clone());
    net.run(Duration::from_millis(20), |_| {});
    let first = net.sfu.counters.keyframe_requests_in - requests;
    net.inject_to_sfu(from, sealed);
    net.run(Duration::from_millis(20), |_| {});
    (first, net.sfu.counters.dropped_replay - replays)
}

#[test]
fn a_replayed_rtcp_packet_is_refused() {
    let (mut net, ssrc) = sub_c_receiving(29);
    net.peers[2].send_pli(ssrc);
    assert_eq!(
        delivered_twice(&mut net),
        (1, 1),
        "the first copy counts, the second is a replay"
    );
}

/// Replay windows are kept for as many RTCP sender SSRCs as a session can use at once; a new
/// sender past them takes the window of the one heard from longest ago. No RTCP is ever taken
/// without a window (where a captured packet could be replayed at will): a replay of the new
/// sender's packet is refused.
#[test]
fn rtcp_from_more_senders_than_the_windows_takes_the_quietest_ones_window() {
    let (mut net, ssrc) = sub_c_receiving(30);
    let pli_from = |sender: u32| {
        let mut p = vec![0x81, 206, 0, 2];
        p.extend_from_slice(&sender.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    };
    for sender in 0..200u32 {
        net.peers[2].send_rtcp(&pli_from(0x1000 + sender));
        net.run(Duration::from_millis(2), |_| {});
    }
    // (All of them arrived.)
    net.run(Duration::from_millis(200), |_| {});
    net.peers[2].send_rtcp(&pli_from(0x9999));
    assert_eq!(
        delivered_twice(&mut net),
        (1, 1),
        "a sender past the windows is heard, and its replay refused"
    );
}

#[test]
fn a_publisher_who_reconnects_again_and_again_stays_visible() {
    use sfu_proto::Command;
    let mut net = SimNetwork::new(23, |_| {});
    let av = [MediaKind::Audio, MediaKind::Video];
    net.add_peer("pub", &av);
    net.add_peer("sub", &[]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    // A phone on a bad network: 40 new media sessions. Each stops two m-lines in the
    // subscriber's session and needs two new ones; 64 lines would run out at the 31st.
    let mut tick = 0;
    for _ in 0..40 {
        let id = net.id(0).clone();
        net.command(Command::RemoveParticipant { participant: id });
        let mut phone = sfu_testkit::SimPeer::new("pub", net.peers[0].addr, net.now);
        for k in av {
            phone.add_track(k);
        }
        net.peers[0] = phone;
        net.join(0, "visit", BOTH);
        net.connect_all(Duration::from_secs(5));
        net.run(Duration::from_millis(300), |n| {
            send_media(n, &[0], &mut tick)
        });
    }
    assert_eq!(net.sfu.counters.subscriptions_refused, 0);
    assert!(
        net.sfu.counters.lines_recycled >= 70,
        "stopped lines were taken again: {}",
        net.sfu.counters.lines_recycled
    );
    // The latest session's video and audio reach the subscriber.
    for kind in av {
        let line = net.peers[1]
            .incoming
            .iter()
            .rev()
            .find(|l| l.kind == kind)
            .expect("a line")
            .clone();
        let got = net.peers[1].received.get(&line.ssrc).map_or(0, Vec::len);
        assert!(got > 5, "{kind:?} of the last session: {got} packets");
    }
    // Each session took the place the one before left (a worker does not grow with every
    // visit it ever had), and the last one, in that reused place, keeps its consent and its
    // media: nothing left behind by the 40 before (timers, lists) touches it.
    assert_eq!(net.sfu.participant_slots(), 2);
    let removed = |n: &SimNetwork| {
        n.events
            .iter()
            .filter(|e| matches!(e, sfu_proto::Event::Disconnected { participant, .. } if participant.as_str() == "pub"))
            .count()
    };
    assert_eq!(removed(&net), 40);
    let ssrc = net.peers[1]
        .incoming
        .iter()
        .rev()
        .find(|l| l.kind == MediaKind::Video)
        .expect("a line")
        .ssrc;
    let before = net.peers[1].received.get(&ssrc).map_or(0, Vec::len);
    net.run(Duration::from_secs(30), |n| send_media(n, &[0], &mut tick));
    assert_eq!(
        removed(&net),
        40,
        "the last session outlived consent's 13 s"
    );
    let got = net.peers[1].received.get(&ssrc).map_or(0, Vec::len) - before;
    assert!(
        got > 2_000,
        "video over 30 s in the reused place: {got} packets"
    );
}

#[test]
fn offers_a_client_never_answers_are_given_up_after_three_and_reported() {
    let mut net = SimNetwork::new(41, |_| {});
    net.add_peer("pub", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("stuck", &[MediaKind::Audio]);
    net.peers[1].ignore_offers = true;
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    let mut tick = 0;
    net.run(Duration::from_secs(60), |n| send_media(n, &[0], &mut tick));
    let offers = net
        .events
        .iter()
        .filter(|e| matches!(e, sfu_proto::Event::Offer { participant, .. } if participant.as_str() == "stuck"))
        .count();
    assert_eq!(offers, 3, "sent three times, then no more");
    let failed: Vec<_> = net
        .events
        .iter()
        .filter_map(|e| match e {
            sfu_proto::Event::CommandFailed {
                command,
                participant: Some(p),
                ..
            } if p.as_str() == "stuck" => Some(command.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec!["sfu_offer".to_owned()]);
    assert_eq!(net.sfu.counters.offers_abandoned, 1);
}

#[test]
fn an_offer_sent_soon_after_an_answered_one_is_sent_again_when_it_goes_unanswered() {
    let mut net = SimNetwork::new(47, |_| {});
    net.add_peer("pub", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("late", &[MediaKind::Audio]);
    net.add_peer("pub-2", &[MediaKind::Audio, MediaKind::Video]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    let mut tick = 0;
    net.run(Duration::from_millis(500), |n| {
        send_media(n, &[0], &mut tick)
    });
    let offers = |n: &SimNetwork| {
        n.events
            .iter()
            .filter(|e| matches!(e, sfu_proto::Event::Offer { participant, .. } if participant.as_str() == "late"))
            .count()
    };
    assert_eq!(offers(&net), 1, "the first offer, answered at once");
    // A second publisher half a second later: a new offer well before the first one's
    // timeout would have come, which the client now leaves unanswered.
    net.peers[1].ignore_offers = true;
    net.join(2, "visit", BOTH);
    net.run(Duration::from_millis(500), |n| {
        send_media(n, &[0], &mut tick)
    });
    assert_eq!(offers(&net), 2);
    // Sent again 10 s after it went out (not dropped when the first offer's time came), and
    // again, then given up.
    net.run(Duration::from_secs(10), |n| send_media(n, &[0], &mut tick));
    assert_eq!(offers(&net), 3, "sent again after 10 s");
    net.run(Duration::from_secs(21), |n| send_media(n, &[0], &mut tick));
    assert_eq!(offers(&net), 4);
    assert_eq!(net.sfu.counters.offers_abandoned, 1);
}

#[test]
fn an_offer_the_client_declines_is_given_up_at_once_and_nothing_waits_behind_it() {
    let mut net = SimNetwork::new(43, |_| {});
    net.add_peer("pub", &[MediaKind::Audio, MediaKind::Video]);
    net.add_peer("picky", &[MediaKind::Audio]);
    net.peers[1].ignore_offers = true;
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    let mut tick = 0;
    net.run(Duration::from_millis(500), |n| {
        send_media(n, &[0], &mut tick)
    });
    let id = net.id(1).clone();
    let offers = |n: &SimNetwork| {
        n.events
            .iter()
            .filter(|e| matches!(e, sfu_proto::Event::Offer { participant, .. } if participant.as_str() == "picky"))
            .count()
    };
    let failures = |n: &SimNetwork, from: usize| -> Vec<(String, String)> {
        n.events[from..]
            .iter()
            .filter_map(|e| match e {
                sfu_proto::Event::CommandFailed {
                    command,
                    participant: Some(p),
                    error,
                    ..
                } if p.as_str() == "picky" => Some((command.clone(), error.clone())),
                _ => None,
            })
            .collect()
    };
    assert_eq!(offers(&net), 1, "the subscription's offer is out");
    let before = net.events.len();
    net.command(sfu_proto::Command::RejectOffer {
        participant: id.clone(),
    });
    assert_eq!(
        failures(&net, before),
        vec![(
            "sfu_offer".to_owned(),
            "the client declined the offer".to_owned()
        )],
        "given up at once, not after three sends"
    );
    assert_eq!(net.sfu.counters.offers_declined, 1);
    assert_eq!(net.sfu.counters.offers_abandoned, 0);
    // Nothing is sent again: the next 40 s bring no offer.
    net.run(Duration::from_secs(40), |n| send_media(n, &[0], &mut tick));
    assert_eq!(offers(&net), 1, "the declined offer is not sent again");
    // Declining when no offer is out is refused and changes nothing.
    let before = net.events.len();
    net.command(sfu_proto::Command::RejectOffer { participant: id });
    assert_eq!(
        failures(&net, before),
        vec![(
            "reject_offer".to_owned(),
            "no offer is outstanding".to_owned()
        )]
    );
    assert_eq!(net.sfu.counters.offers_declined, 1);
}

#[test]
fn a_layer_request_for_an_unknown_mid_is_refused() {
    let mut net = SimNetwork::new(42, |_| {});
    net.add_peer("a", &[MediaKind::Video]);
    net.add_peer("b", &[MediaKind::Video]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    let id = net.id(1).clone();
    let known = net.peers[1].incoming[0].mid.clone();
    for (mid, refused) in [(known, false), ("no-such".to_owned(), true)] {
        let before = net.events.len();
        net.command(sfu_proto::Command::SetPreferredLayer {
            participant: id.clone(),
            mid: Some(mid.clone()),
            layer: sfu_proto::VideoLayer::Low,
        });
        let failed = net.events[before..].iter().any(|e| {
            matches!(e, sfu_proto::Event::CommandFailed { command, .. } if command == "set_preferred_layer")
        });
        assert_eq!(failed, refused, "mid {mid}");
    }
}

/// The cache lines `prefetch_batch` names for `batch`, as addresses.
fn lines_named(net: &SimNetwork, batch: &[(std::net::SocketAddr, &[u8])]) -> Vec<usize> {
    let named = std::cell::RefCell::new(Vec::new());
    net.sfu.prefetch_batch(batch.iter().copied(), |line| {
        named.borrow_mut().push(line as usize)
    });
    named.into_inner()
}

/// A publisher's next 900-byte video packet, sealed, with the address it comes from.
fn next_video(net: &mut SimNetwork, p: usize) -> (std::net::SocketAddr, Vec<u8>) {
    net.peers[p].send_media(1, &[0x90; 900], false, 0);
    let datagram = std::iter::from_fn(|| net.peers[p].poll_transmit())
        .last()
        .expect("a sealed packet")
        .1;
    (net.peers[p].addr, datagram)
}

#[test]
fn a_batch_looked_ahead_at_follows_each_packet_to_its_subscribers_and_changes_nothing() {
    // (Without the bandwidth estimation, so that no subscriber's video waits in a pacer.)
    let mut net = two_publishers_three_subscribers_with(11, |c| c.bandwidth_estimation = false);
    let mut tick = 0;
    net.run(Duration::from_secs(1), |n| {
        send_media(n, &[0, 1], &mut tick)
    });
    let (from_a, video_a) = next_video(&mut net, 0);
    let (from_b, video_b) = next_video(&mut net, 1);
    let counters = net.sfu.counters;

    // Not a publisher's: an unknown address, STUN, a datagram too short for RTP.
    let stranger: std::net::SocketAddr = "198.51.100.9:5000".parse().unwrap();
    assert!(lines_named(&net, &[(stranger, &video_a)]).is_empty());
    assert!(lines_named(&net, &[(from_a, &[0x00, 0x01, 0x00, 0x00])]).is_empty());
    assert!(lines_named(&net, &[(from_a, &video_a[..11])]).is_empty());
    // An SSRC the publisher never sent: its own state, nothing past the route.
    let mut unknown_ssrc = video_a.clone();
    unknown_ssrc[8..12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
    let publisher_only = lines_named(&net, &[(from_a, &unknown_ssrc)]);
    assert!(!publisher_only.is_empty());
    // Its video on the route: on to the track, the layer and each of its four subscribers
    // (six lines of each one's own state and three behind its pointers: its keys, its
    // subscription, its send history's next entry).
    let one = lines_named(&net, &[(from_a, &video_a)]);
    assert!(
        one.len() >= publisher_only.len() + 4 * 9,
        "{} lines for a packet to four subscribers, {} for its publisher alone",
        one.len(),
        publisher_only.len()
    );
    // A batch: every packet's lines.
    let both = lines_named(&net, &[(from_a, &video_a), (from_b, &video_b)]);
    assert!(one.iter().all(|l| both.contains(l)));
    assert!(both.len() > one.len());

    // Looking ahead changed nothing: the packets are then forwarded as ever, four copies each.
    assert_eq!(net.sfu.counters, counters);
    let now = net.now;
    let mut out = sfu_core::TransmitBatch::with_capacity(16);
    for (from, mut datagram) in [(from_a, video_a), (from_b, video_b)] {
        net.sfu.handle_datagram(now, from, &mut datagram, &mut out);
    }
    assert_eq!(out.len(), 8, "{:?}", net.sfu.counters);
    assert_eq!(net.sfu.counters.packets_out, counters.packets_out + 8);
}
