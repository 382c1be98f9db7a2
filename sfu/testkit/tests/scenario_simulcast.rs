//! Simulcast scenarios on the simulated network: a publisher sends three layers (RIDs l, m, h)
//! the way Chrome does; each subscriber gets one layer, chosen by what it asks for, what the
//! publisher is sending and what its link carries, switched only at keyframes, with one
//! unbroken sequence and timestamp line per subscriber.

use sfu_proto::{Command, MediaKind, Permissions, VideoLayer};
use sfu_testkit::simulcast_publisher::{SimulcastPublisher, layer, starts_keyframe, video_from};
use sfu_testkit::{Link, ReceivedPacket, SimNetwork};
use std::time::Duration;

const BOTH: Permissions = Permissions {
    publish: true,
    subscribe: true,
};
/// Where the forwarded layer changes: (index of the first packet of the new layer, old, new).
fn switches(pkts: &[ReceivedPacket]) -> Vec<(usize, u8, u8)> {
    pkts.windows(2)
        .enumerate()
        .filter(|(_, w)| layer(&w[0]) != layer(&w[1]))
        .map(|(i, w)| (i + 1, layer(&w[0]), layer(&w[1])))
        .collect()
}

fn setup(send_reports: bool) -> (SimNetwork, SimulcastPublisher) {
    setup_with(send_reports, |_| {})
}

fn setup_with(
    send_reports: bool,
    configure: impl FnOnce(&mut sfu_core::SfuConfig),
) -> (SimNetwork, SimulcastPublisher) {
    let mut net = SimNetwork::new(11, configure);
    net.add_peer("pub", &[]);
    let publisher = SimulcastPublisher::new(&mut net, 0, send_reports);
    for name in ["full", "small", "lossy"] {
        net.add_peer(name, &[]);
    }
    for p in 0..4 {
        net.join(p, "conference", BOTH);
    }
    net.connect_all(Duration::from_secs(5));
    (net, publisher)
}

#[test]
fn each_subscriber_gets_its_layer_and_switches_only_at_keyframes() {
    let (mut net, mut publisher) = setup(true);
    // A small tile asks for the low layer.
    let small = net.id(2).clone();
    net.command(Command::SetPreferredLayer {
        participant: small,
        mid: None,
        layer: VideoLayer::Low,
    });
    net.run(Duration::from_secs(3), |n| publisher.step(n));

    let full = video_from(&net, 1);
    let low = video_from(&net, 2);
    assert!(full.len() > 200, "full received {} packets", full.len());
    assert!(low.len() > 50, "small received {} packets", low.len());
    assert!(
        full.iter().all(|p| layer(p) == 2),
        "full gets only the top layer"
    );
    assert!(
        low.iter().all(|p| layer(p) == 0),
        "small gets only the low layer"
    );
    assert!(
        starts_keyframe(&full[0]) && starts_keyframe(&low[0]),
        "streams start at keyframes"
    );
    let ingress = net.sfu.counters.packets_in;
    assert!(ingress > 0);

    // The publisher's top encoder stops (its uplink got worse): `full` falls back to m.
    publisher.sending[2] = false;
    net.run(Duration::from_secs(3), |n| publisher.step(n));
    // It comes back: `full` returns to h.
    publisher.sending[2] = true;
    net.run(Duration::from_secs(3), |n| publisher.step(n));
    net.run(Duration::from_millis(300), |_| {});

    let full = video_from(&net, 1);
    let changes = switches(&full);
    assert_eq!(
        changes.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
        [(2, 1), (1, 2)],
        "down to m while h is silent, back up to h"
    );
    for &(i, _, _) in &changes {
        assert!(starts_keyframe(&full[i]), "a switch lands on a keyframe");
        // One unbroken stream: the new layer's first packet follows the old layer's last.
        assert_eq!(full[i].seq, full[i - 1].seq.wrapping_add(1));
        // Sender reports put both layers on one clock: the timestamp advances by exactly the
        // frames between the two packets (3000 per frame at 90 kHz).
        let frame = |p: &ReceivedPacket| u32::from_be_bytes(p.payload[3..7].try_into().unwrap());
        // A switch inside one frame (the new layer's keyframe of the frame just sent on the
        // old one) still moves the timestamp on, by one tick.
        let frames = frame(&full[i]) - frame(&full[i - 1]);
        assert_eq!(
            full[i].timestamp.wrapping_sub(full[i - 1].timestamp),
            (frames * 3000).max(1),
            "timestamps continue on the capture clock across the switch"
        );
    }
    assert!(
        net.peers[1]
            .missing(
                net.peers[1]
                    .incoming_from("pub", MediaKind::Video)
                    .unwrap()
                    .ssrc
            )
            .is_empty()
    );
    assert!(
        video_from(&net, 2).iter().all(|p| layer(p) == 0),
        "small stayed low"
    );

    // A NACK after the last switch is repaired from the forwarded layer's cache, payload for
    // payload; one from before the switch names a packet of another layer and is not.
    let ssrc = net.peers[1]
        .incoming_from("pub", MediaKind::Video)
        .unwrap()
        .ssrc;
    let (last_switch, _, _) = *changes.last().unwrap();
    let after = full[last_switch + 3].clone();
    let before = full[last_switch - 3].clone();
    let repairs = |net: &SimNetwork| {
        net.peers[1].received[&ssrc]
            .iter()
            .filter(|p| p.repaired)
            .cloned()
            .collect::<Vec<_>>()
    };
    net.peers[1].send_nack(ssrc, &[after.seq, before.seq]);
    net.run(Duration::from_millis(100), |n| publisher.step(n));
    let repaired = repairs(&net);
    assert_eq!(
        repaired.len(),
        1,
        "only the packet of the current layer: {repaired:?}"
    );
    assert_eq!(
        (repaired[0].seq, &repaired[0].payload),
        (after.seq, &after.payload)
    );
    assert!(net.sfu.counters.layer_switches >= 2);

    // Asking for the medium layer of that m-line moves `small` up at the next keyframe.
    let small = net.id(2).clone();
    let mid = net.peers[2]
        .incoming_from("pub", MediaKind::Video)
        .unwrap()
        .mid
        .clone();
    net.command(Command::SetPreferredLayer {
        participant: small,
        mid: Some(mid),
        layer: VideoLayer::Medium,
    });
    net.run(Duration::from_secs(1), |n| publisher.step(n));
    let low = video_from(&net, 2);
    assert_eq!(layer(low.last().unwrap()), 1, "small now gets m");
    let (i, _, _) = switches(&low)[0];
    assert!(starts_keyframe(&low[i]));
}

#[test]
fn without_sender_reports_a_switch_still_moves_time_forward() {
    let (mut net, mut publisher) = setup(false);
    net.run(Duration::from_secs(2), |n| publisher.step(n));
    publisher.sending[2] = false;
    net.run(Duration::from_secs(3), |n| publisher.step(n));
    let full = video_from(&net, 1);
    let changes = switches(&full);
    assert_eq!(changes.len(), 1, "one switch, down to m");
    let (i, _, _) = changes[0];
    assert_eq!(full[i].seq, full[i - 1].seq.wrapping_add(1));
    // The layers' origins differ by 0x8000_0000 ticks; the SFU must not jump by that but by
    // the time between the two packets' arrivals (within a frame; the network here has no
    // jitter).
    let frame = |p: &ReceivedPacket| u32::from_be_bytes(p.payload[3..7].try_into().unwrap());
    let step = full[i].timestamp.wrapping_sub(full[i - 1].timestamp);
    let capture = (frame(&full[i]) - frame(&full[i - 1])) * 3000;
    assert!(
        step > 0 && step.abs_diff(capture) < 3000,
        "the timestamp moves forward by the time between the packets ({step} for {capture}), \
         not by the layers' offset"
    );
    for w in full[i..].windows(2) {
        assert!(w[1].timestamp.wrapping_sub(w[0].timestamp) < 90_000);
    }
}

/// The selection by receiver-reported loss alone (bandwidth estimation off, as kept for
/// comparison): see scenario_bandwidth.rs for the estimate's.
#[test]
fn a_subscriber_whose_link_loses_packets_is_moved_down_and_back_up() {
    let (mut net, mut publisher) = setup_with(true, |c| c.bandwidth_estimation = false);
    net.set_downlink(
        3,
        Link {
            loss: 0.25,
            delay: Duration::from_millis(10),
            ..Link::default()
        },
    );
    let mut ms = 0u64;
    let mut step = |n: &mut SimNetwork| {
        publisher.step(n);
        ms += 1;
        // Browsers report reception about once a second.
        if ms.is_multiple_of(1000) {
            n.peers[3].send_receiver_reports();
        }
    };
    net.run(Duration::from_secs(4), &mut step);
    let lossy = video_from(&net, 3);
    assert!(
        lossy.iter().any(|p| layer(p) < 2),
        "the lossy subscriber was moved below h"
    );
    assert!(net.sfu.counters.layer_loss_downgrades >= 1);
    assert!(
        video_from(&net, 1).iter().all(|p| layer(p) == 2),
        "full is unaffected"
    );

    // The link heals: after the recovery wait, one step at a time, back to h.
    net.set_downlink(3, Link::default());
    net.run(Duration::from_secs(30), &mut step);
    let lossy = video_from(&net, 3);
    assert_eq!(
        layer(lossy.last().unwrap()),
        2,
        "back on h once the link is clean"
    );
}

#[test]
fn a_default_layer_covers_video_that_arrives_later() {
    let mut net = SimNetwork::new(13, |_| {});
    net.add_peer("viewer", &[]);
    net.join(0, "conference", BOTH);
    // A data-saving phone, before anyone publishes (its media starts with the first offer).
    let viewer = net.id(0).clone();
    net.command(Command::SetPreferredLayer {
        participant: viewer,
        mid: None,
        layer: VideoLayer::Low,
    });
    net.add_peer("pub", &[]);
    let mut publisher = SimulcastPublisher::new(&mut net, 1, true);
    net.join(1, "conference", BOTH);
    net.connect_all(Duration::from_secs(5));
    net.run(Duration::from_secs(2), |n| publisher.step(n));
    let got = video_from(&net, 0);
    assert!(got.len() > 30, "the viewer received {} packets", got.len());
    assert!(got.iter().all(|p| layer(p) == 0), "only the low layer");
}

#[test]
fn simulcast_without_the_rid_extension_is_answered_as_one_stream() {
    let mut net = SimNetwork::new(17, |_| {});
    net.add_peer("pub", &[]);
    net.peers[0].add_simulcast_video(&["l", "m", "h"]);
    let offer = net.peers[0].offer().replace(
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
        "",
    );
    let mut batch = sfu_core::TransmitBatch::new();
    net.sfu.handle_command(
        net.now,
        Command::AddParticipant {
            room: "r".into(),
            participant: net.id(0).clone(),
            offer_sdp: offer,
            session: 1,
            permissions: BOTH,
        },
        &mut batch,
    );
    let answer = net
        .sfu
        .poll_event()
        .and_then(|e| match e {
            sfu_proto::Event::Answer { answer_sdp, .. } => Some(answer_sdp),
            _ => None,
        })
        .expect("an answer");
    assert!(!answer.contains("a=simulcast"), "{answer}");
    assert!(!answer.contains("a=rid:"), "{answer}");
}

/// (PictureID, TL0PICIDX, TID) of a numbered packet as the subscriber received it.
fn numbering(p: &ReceivedPacket) -> (u16, u8, u8) {
    (
        u16::from_be_bytes([p.payload[2] & 0x7f, p.payload[3]]),
        p.payload[4],
        p.payload[5] >> 6,
    )
}

#[test]
fn a_hundred_switches_keep_one_picture_line() {
    let (mut net, mut publisher) = setup(true);
    publisher.numbered = true;
    let viewer = net.id(1).clone();
    // The subscriber's wish flips between the low and the top layer 100 times.
    for i in 0..100 {
        let layer = if i % 2 == 0 {
            VideoLayer::Low
        } else {
            VideoLayer::High
        };
        net.command(Command::SetPreferredLayer {
            participant: viewer.clone(),
            mid: None,
            layer,
        });
        net.run(Duration::from_millis(400), |n| publisher.step(n));
    }
    let got = video_from(&net, 1);
    let switched = switches(&got);
    assert!(switched.len() >= 95, "{} switches", switched.len());
    // No switch without a keyframe.
    for &(i, from, to) in &switched {
        assert!(starts_keyframe(&got[i]), "switch {from}→{to} at packet {i}");
    }
    // One unbroken line: sequence numbers, timestamps, PictureIDs and TL0PICIDX.
    for (i, w) in got.windows(2).enumerate() {
        let (a, b) = (&w[0], &w[1]);
        assert_eq!(b.seq, a.seq.wrapping_add(1), "sequence at {i}");
        let ts = b.timestamp.wrapping_sub(a.timestamp) as i32;
        assert!(ts >= 0, "timestamp went back at {i}");
        let ((pa, la, _), (pb, lb, tb)) = (numbering(a), numbering(b));
        let same_picture = ts == 0;
        let step = pb.wrapping_sub(pa) & 0x7fff;
        if same_picture {
            assert_eq!(
                (pb, lb),
                (pa, la),
                "a picture's packets keep its numbers at {i}"
            );
        } else {
            assert_eq!(
                step,
                1,
                "PictureID {pa} → {pb} at {i} (a switch: {})",
                layer(a) != layer(b)
            );
            let tl0_step = lb.wrapping_sub(la);
            assert_eq!(
                tl0_step,
                u8::from(tb == 0),
                "TL0PICIDX {la} → {lb} (TID {tb}) at {i}"
            );
        }
    }
}

/// The `LayersUnused` events about the publisher (peer 0) so far: each one's RIDs.
fn unused_layers(net: &SimNetwork) -> Vec<Vec<String>> {
    let publisher = net.id(0);
    net.events
        .iter()
        .filter_map(|e| match e {
            sfu_proto::Event::LayersUnused {
                participant, rids, ..
            } if participant == publisher => Some(rids.clone()),
            _ => None,
        })
        .collect()
}

/// The longest time between two packets of `pkts` after `from`.
fn longest_gap(pkts: &[ReceivedPacket], from: std::time::Instant) -> Duration {
    pkts.windows(2)
        .filter(|w| w[0].at >= from)
        .map(|w| w[1].at.saturating_duration_since(w[0].at))
        .max()
        .unwrap_or_default()
}

/// Dynacast: a layer nobody receives is paused at its publisher after a few seconds (an
/// event the publisher's client acts on), and resumed — keyframe first — as soon as a
/// subscriber wants it; the subscriber's picture never stops on the way. With nobody
/// watching at all every layer pauses, and a newcomer resumes what it needs.
#[test]
fn a_layer_nobody_needs_is_paused_at_its_publisher_and_resumed_when_wanted() {
    let mut net = SimNetwork::new(12, |_| {});
    net.add_peer("pub", &[]);
    let mut publisher = SimulcastPublisher::new(&mut net, 0, true);
    publisher.follows_dynacast = true;
    for name in ["small", "large"] {
        net.add_peer(name, &[]);
    }
    for p in 0..3 {
        net.join(p, "visit", BOTH);
    }
    net.connect_all(Duration::from_secs(5));
    let (small, large) = (net.id(1).clone(), net.id(2).clone());
    let prefer = |net: &mut SimNetwork, who: &sfu_proto::ParticipantId, layer| {
        net.command(Command::SetPreferredLayer {
            participant: who.clone(),
            mid: None,
            layer,
        })
    };
    prefer(&mut net, &small, VideoLayer::Low);
    net.run(Duration::from_secs(4), |n| publisher.step(n));
    assert!(
        unused_layers(&net).is_empty(),
        "nothing paused within the hold"
    );
    // The middle layer goes to nobody: paused once the hold has passed.
    net.run(Duration::from_secs(2), |n| publisher.step(n));
    assert_eq!(unused_layers(&net), [vec!["m".to_owned()]]);
    assert_eq!(publisher.sending, [true, false, true]);

    // The large tile's person saves data too: the top layer goes unused, and is paused.
    prefer(&mut net, &large, VideoLayer::Low);
    let switched = net.now;
    net.run(Duration::from_secs(7), |n| publisher.step(n));
    assert_eq!(
        unused_layers(&net).last().unwrap(),
        &vec!["m".to_owned(), "h".to_owned()]
    );
    assert_eq!(publisher.sending, [true, false, false]);
    let large_video = video_from(&net, 2);
    assert!(
        large_video.iter().rev().take(50).all(|p| layer(p) == 0),
        "large now on the low layer"
    );
    assert!(
        longest_gap(&large_video, switched) < Duration::from_millis(100),
        "the picture went on through the switch and the pause ({:?})",
        longest_gap(&large_video, switched)
    );

    // And wants the full picture again: the top layer resumes at once and the switch lands on
    // its (first) keyframe within half a second, the low layer flowing until then.
    let keyframes_before = publisher.keyframes[2];
    let asked = net.now;
    let before = video_from(&net, 2).len();
    prefer(&mut net, &large, VideoLayer::High);
    net.run(Duration::from_millis(600), |n| publisher.step(n));
    assert_eq!(
        unused_layers(&net).last().unwrap(),
        &vec!["m".to_owned()],
        "h resumed"
    );
    assert!(
        publisher.keyframes[2] > keyframes_before,
        "h restarts with a keyframe"
    );
    let large_video = video_from(&net, 2);
    let first_high = large_video[before..]
        .iter()
        .position(|p| layer(p) == 2)
        .map(|i| before + i)
        .expect("large back on the top layer within 0.6 s");
    assert!(starts_keyframe(&large_video[first_high]));
    assert_eq!(
        large_video[first_high].seq,
        large_video[first_high - 1].seq.wrapping_add(1),
        "one unbroken stream"
    );
    eprintln!(
        "top layer back {:?} after it was asked for",
        large_video[first_high].at - asked
    );
    assert!(longest_gap(&large_video, asked) < Duration::from_millis(100));
    // Its diagnostics say the same: the top of three layers.
    net.command(Command::ReportLink {
        participant: large.clone(),
    });
    let report = net
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            sfu_proto::Event::LinkReport {
                participant,
                report,
            } if *participant == large => Some(report.clone()),
            _ => None,
        })
        .expect("a link report");
    assert_eq!(report.videos.len(), 1);
    let v = &report.videos[0];
    assert_eq!(
        (v.layer, v.layers, v.paused, &v.publisher),
        (Some(2), 3, false, net.id(0))
    );

    // Both subscribers leave: nothing is watched, every layer pauses.
    for who in [&small, &large] {
        net.command(Command::RemoveParticipant {
            participant: who.clone(),
        });
    }
    net.run(Duration::from_secs(6), |n| publisher.step(n));
    assert_eq!(
        unused_layers(&net).last().unwrap(),
        &vec!["l".to_owned(), "m".to_owned(), "h".to_owned()]
    );
    assert_eq!(publisher.sending, [false; 3]);
    let counters = net.sfu.counters;
    assert!(counters.layers_suspended >= 4 && counters.layers_resumed >= 1);

    // Someone new arrives: what it needs resumes and its picture starts at a keyframe.
    let newcomer = net.add_peer("newcomer", &[]);
    net.join(newcomer, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    net.run(Duration::from_secs(1), |n| publisher.step(n));
    assert!(
        unused_layers(&net).last().unwrap().len() < 3,
        "a layer resumed for the newcomer"
    );
    let got = video_from(&net, newcomer);
    assert!(
        got.len() > 20,
        "the newcomer receives video ({})",
        got.len()
    );
    assert!(starts_keyframe(&got[0]));
}
