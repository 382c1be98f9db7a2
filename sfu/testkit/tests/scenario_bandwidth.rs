//! Bandwidth estimation on the simulated network: a publisher sends a simulcast camera (about
//! 150 kbit/s, 0.5 and 1.4 Mbit/s) and audio; subscribers sit behind shaped downlinks (a token
//! bucket draining a drop-tail queue, as `tc tbf` makes one). What is asserted is what a
//! patient would notice: the picture's layer over time, pauses in the video, packets lost at
//! the bottleneck, the delay its queue adds, audio that keeps coming.

use sfu_proto::{MediaKind, Permissions};
use sfu_testkit::simulcast_publisher::{SimulcastPublisher, layer, starts_keyframe, video_from};
use sfu_testkit::{Link, ReceivedPacket, SimNetwork};
use std::time::{Duration, Instant};

const BOTH: Permissions = Permissions {
    publish: true,
    subscribe: true,
};

/// The publisher: peer 0, audio on its track 0, the camera's three layers after it.
struct Call {
    net: SimNetwork,
    camera: SimulcastPublisher,
    ms: u64,
    audio_sent: u32,
}

impl Call {
    fn new(seed: u64, downlinks: &[Link]) -> Self {
        Self::with_config(seed, downlinks, |_| {})
    }

    fn with_config(
        seed: u64,
        downlinks: &[Link],
        config: impl FnOnce(&mut sfu_core::SfuConfig),
    ) -> Self {
        let mut net = SimNetwork::new(seed, config);
        net.add_peer("pub", &[MediaKind::Audio]);
        let mut camera = SimulcastPublisher::new(&mut net, 0, true);
        // 30 fps: 1 × 600 B, 2 × 1000 B and 5 × 1100 B per frame.
        camera.packets_per_frame = [1, 2, 5];
        camera.packet_size = [600, 1000, 1100];
        for (i, link) in downlinks.iter().enumerate() {
            net.add_peer(&format!("sub{i}"), &[]);
            net.set_downlink(i + 1, *link);
        }
        for p in 0..=downlinks.len() {
            net.join(p, "visit", BOTH);
        }
        net.connect_all(Duration::from_secs(5));
        Self {
            net,
            camera,
            ms: 0,
            audio_sent: 0,
        }
    }

    fn run(&mut self, d: Duration) {
        let Self {
            net,
            camera,
            ms,
            audio_sent,
        } = self;
        net.run(d, |n| {
            camera.step(n);
            *ms += 1;
            // Opus: 20 ms frames of about 80 bytes.
            if ms.is_multiple_of(20) {
                n.peers[0].send_media(0, &[0x55; 80], true, 960);
                *audio_sent += 1;
            }
        });
    }

    fn video(&self, subscriber: usize) -> Vec<ReceivedPacket> {
        video_from(&self.net, subscriber)
    }

    /// Audio packets the subscriber received (first copies).
    fn audio_received(&self, subscriber: usize) -> usize {
        let line = self.net.peers[subscriber]
            .incoming_from("pub", MediaKind::Audio)
            .expect("offered the publisher's audio");
        self.net.peers[subscriber]
            .received
            .get(&line.ssrc)
            .map_or(0, |p| p.iter().filter(|p| !p.repaired).count())
    }

    /// Of the datagrams the SFU sent `subscriber` in [from, to): the share its bottleneck
    /// dropped, and the longest any waited in its queue.
    fn bottleneck(&self, subscriber: usize, from: Instant, to: Instant) -> (f64, Duration) {
        let window: Vec<_> = self.net.deliveries[subscriber]
            .iter()
            .filter(|d| d.sent >= from && d.sent < to)
            .collect();
        let dropped = window.iter().filter(|d| d.queued.is_none()).count();
        let longest = window
            .iter()
            .filter_map(|d| d.queued)
            .max()
            .unwrap_or_default();
        (dropped as f64 / window.len().max(1) as f64, longest)
    }
}

/// The layer of the last video packet that arrived before `t`.
fn layer_at(video: &[ReceivedPacket], t: Instant) -> Option<u8> {
    video.iter().rev().find(|p| p.at < t).map(layer)
}

/// The first arrival at or after `from` of a packet on `layer`.
fn first_on(
    video: &[ReceivedPacket],
    from: Instant,
    wanted: impl Fn(u8) -> bool,
) -> Option<Instant> {
    video
        .iter()
        .find(|p| p.at >= from && wanted(layer(p)))
        .map(|p| p.at)
}

/// The longest stretch without a video packet between `from` and `to`.
fn longest_gap(video: &[ReceivedPacket], from: Instant, to: Instant) -> Duration {
    let times: Vec<Instant> = video
        .iter()
        .map(|p| p.at)
        .filter(|&t| t >= from && t < to)
        .collect();
    let mut longest = Duration::ZERO;
    let mut last = from;
    for t in times.into_iter().chain([to]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

/// A phone on 3 Mbit/s whose downlink falls to 400 kbit/s with a bottleneck queue of
/// `queue`; returns the call, the share of datagrams its queue dropped in the 3 s after, and
/// the audio packets lost.
fn capacity_drop(seed: u64, queue: Duration) -> (Call, f64, i64) {
    let mut call = Call::new(seed, &[Link::shaped(3_000_000, Duration::from_millis(100))]);
    call.run(Duration::from_secs(6));
    assert_eq!(
        layer_at(&call.video(1), call.net.now),
        Some(2),
        "the top layer on 3 Mbit/s"
    );

    let drop = call.net.now;
    let audio_before = (call.audio_sent, call.audio_received(1));
    call.net.set_downlink(1, Link::shaped(400_000, queue));
    call.run(Duration::from_secs(6));
    let video = call.video(1);
    let down = first_on(&video, drop, |l| l < 2).expect("moved to a lower layer");
    let (loss, _) = call.bottleneck(1, drop, drop + Duration::from_secs(3));
    let (_, queued_after) = call.bottleneck(1, drop + Duration::from_secs(3), call.net.now);
    let audio_lost = (call.audio_sent - audio_before.0) as i64
        - (call.audio_received(1) - audio_before.1) as i64;
    let paused = longest_gap(&video, drop, call.net.now);
    println!(
        "drop to 400 kbit/s ({queue:?} queue): lower layer after {:?}, bottleneck loss {:.1} % in 3 s, queue after 3 s ≤ {:?}, \
         longest video pause {:?}, audio packets lost {audio_lost}, estimate {:?}",
        down - drop,
        loss * 100.0,
        queued_after,
        paused,
        call.net.sfu.downlink_stats(call.net.id(1)),
    );
    assert!(
        down - drop <= Duration::from_secs(2),
        "on a lower layer {:?} after the drop",
        down - drop
    );
    assert!(
        queued_after < Duration::from_millis(100),
        "queueing delay still {queued_after:?} 3 s after the drop"
    );
    assert!(
        paused < Duration::from_millis(500),
        "the picture paused {paused:?}"
    );
    assert!(
        layer_at(&video, call.net.now).is_some_and(|l| l < 2),
        "still low at the end"
    );
    assert!(call.net.sfu.counters.layer_bandwidth_downgrades >= 1);
    (call, loss, audio_lost)
}

#[test]
fn a_capacity_drop_moves_the_picture_down_within_two_seconds_and_probing_brings_it_back() {
    // A phone's cellular bottleneck queues a lot (a quarter of a second here).
    let (mut call, loss, audio_lost) = capacity_drop(21, Duration::from_millis(250));
    assert_eq!(audio_lost, 0, "audio came through the congestion");
    assert!(
        loss < 0.05,
        "{:.1} % lost at the bottleneck during the transition",
        loss * 100.0
    );

    // The link recovers: probes find the room and the picture climbs back to the top.
    let recover = call.net.now;
    let probes_before = call.net.sfu.counters.probe_clusters;
    call.net
        .set_downlink(1, Link::shaped(3_000_000, Duration::from_millis(100)));
    call.run(Duration::from_secs(12));
    let video = call.video(1);
    let top = first_on(&video, recover, |l| l == 2).expect("back on the top layer");
    let (loss, queued) = call.bottleneck(1, recover, call.net.now);
    println!(
        "back to 3 Mbit/s: top layer after {:?} ({} probes), bottleneck loss {:.2} %, longest queue {:?}",
        top - recover,
        call.net.sfu.counters.probe_clusters - probes_before,
        loss * 100.0,
        queued,
    );
    assert!(
        top - recover <= Duration::from_secs(10),
        "top layer only {:?} after recovery",
        top - recover
    );
    assert!(
        call.net.sfu.counters.probe_clusters > probes_before,
        "found by probing"
    );
    assert!(
        call.net.peers[1].padding_received > 0,
        "the probes reached the subscriber"
    );
    assert!(
        loss < 0.01,
        "{:.2} % lost at the bottleneck while climbing",
        loss * 100.0
    );
    assert_eq!(layer_at(&video, call.net.now), Some(2));
}

/// Layers the video moved through from `from` on, each change once: [2, 0] is one move down.
fn layer_changes(video: &[ReceivedPacket], from: Instant) -> Vec<u8> {
    let mut seen: Vec<u8> = Vec::new();
    for p in video.iter().filter(|p| p.at >= from && !p.repaired) {
        if seen.last() != Some(&layer(p)) {
            seen.push(layer(p));
        }
    }
    seen
}

#[test]
fn behind_a_token_bucket_a_narrowed_link_keeps_the_lower_layer_without_flapping() {
    // `tc tbf` as the browser test shapes a phone's downlink: its bucket passes a couple of
    // packets at once after a quiet moment. A 30 ms probe is a few such packets: read whole,
    // the bucket's burst looks like headroom (in Chromium, probes on a 400 kbit/s link read
    // 500–665 kbit/s and the picture went up and down every few seconds).
    let mut call = Call::new(
        31,
        &[Link::shaped(3_000_000, Duration::from_millis(250)).with_burst(3000)],
    );
    call.run(Duration::from_secs(6));
    assert_eq!(layer_at(&call.video(1), call.net.now), Some(2));
    let drop = call.net.now;
    call.net.set_downlink(
        1,
        Link::shaped(400_000, Duration::from_millis(250)).with_burst(1600),
    );
    let probes_before = call.net.sfu.counters.probe_clusters;
    // The estimate, every 250 ms from 3 s after the drop on (the first cuts are then over).
    let mut estimates = Vec::new();
    for step in 0..80 {
        call.run(Duration::from_millis(250));
        if step >= 12 {
            let stats = call
                .net
                .sfu
                .downlink_stats(call.net.id(1))
                .expect("estimated");
            estimates.push(stats.estimate_bps);
        }
    }
    let highest = estimates.iter().copied().max().unwrap_or(0);
    let video = call.video(1);
    let down = first_on(&video, drop, |l| l < 2).expect("moved to a lower layer");
    let changes = layer_changes(&video, drop);
    let gap = longest_gap(&video, down, call.net.now);
    let (loss, _) = call.bottleneck(1, drop + Duration::from_secs(3), call.net.now);
    println!(
        "400 kbit/s behind a 1600-byte bucket: lower layer after {:?}, layers {changes:?}, {} probes, longest gap {gap:?}, \
         bottleneck loss after 3 s {:.2} %, estimate at most {highest} bit/s, at the end {:?}",
        down - drop,
        call.net.sfu.counters.probe_clusters - probes_before,
        loss * 100.0,
        call.net.sfu.downlink_stats(call.net.id(1)),
    );
    assert!(
        down - drop <= Duration::from_secs(2),
        "moved down after {:?}",
        down - drop
    );
    assert!(
        changes.windows(2).all(|w| w[1] < w[0]),
        "the picture went back up on the narrow link: layers {changes:?}"
    );
    assert!(
        gap < Duration::from_millis(500),
        "the picture stopped for {gap:?}"
    );
    assert!(
        loss < 0.01,
        "{:.2} % lost at the bottleneck after 3 s",
        loss * 100.0
    );
    // What the probes find is the link, not its bucket: an estimate a fifth over the link
    // paces video into its queue, and a layer that needs 15 % to spare over it goes up.
    assert!(
        highest <= 480_000,
        "the estimate reached {highest} bit/s on a 400 kbit/s link"
    );
    assert!(
        call.net.sfu.counters.probe_clusters > probes_before,
        "probes kept looking for headroom"
    );
}

#[test]
fn two_subscribers_of_one_publisher_on_different_links_get_different_layers() {
    let mut call = Call::new(
        22,
        &[
            Link::shaped(4_000_000, Duration::from_millis(100)),
            Link::shaped(600_000, Duration::from_millis(150)),
        ],
    );
    call.run(Duration::from_secs(10));
    let now = call.net.now;
    let (fast, slow) = (layer_at(&call.video(1), now), layer_at(&call.video(2), now));
    let (slow_loss, slow_queue) = call.bottleneck(2, now - Duration::from_secs(5), now);
    println!(
        "4 Mbit/s: layer {fast:?}; 600 kbit/s: layer {slow:?}, loss {:.2} %, queue ≤ {slow_queue:?} over the last 5 s",
        slow_loss * 100.0
    );
    assert_eq!(fast, Some(2), "the fast link gets the top layer");
    assert!(
        slow.is_some_and(|l| l < 2),
        "the slow link gets a lower one: {slow:?}"
    );
    assert!(slow_loss < 0.01 && slow_queue < Duration::from_millis(100));
}

/// A shallow queue fills before any feedback about it can arrive (the feedback waits in that
/// queue too): the transition loses more, but briefly, and the move down is quicker.
#[test]
fn with_a_shallow_bottleneck_queue_the_transition_loss_stays_bounded() {
    let (_, loss, audio_lost) = capacity_drop(23, Duration::from_millis(50));
    // The full queue drops whatever arrives, audio too, until the video steps down.
    assert!(audio_lost <= 3, "{audio_lost} audio packets lost");
    assert!(
        loss < 0.10,
        "{:.1} % lost at the bottleneck during the transition",
        loss * 100.0
    );
}

/// Five minutes on a 1 Mbit/s link that carries the middle layer but not the top one: the
/// picture settles and stays (no flapping between layers), and the estimate tracks the link.
#[test]
fn five_steady_minutes_settle_on_one_layer_with_the_estimate_near_capacity() {
    let capacity = 1_000_000u64;
    let mut call = Call::new(24, &[Link::shaped(capacity, Duration::from_millis(200))]);
    call.run(Duration::from_secs(20));
    let settled = call.net.now;
    let mut estimates = Vec::new();
    for _ in 0..280 {
        call.run(Duration::from_secs(1));
        let stats = call
            .net
            .sfu
            .downlink_stats(call.net.id(1))
            .expect("an estimate");
        estimates.push(stats.estimate_bps);
    }
    let video = call.video(1);
    let after: Vec<u8> = video
        .iter()
        .filter(|p| p.at >= settled)
        .map(layer)
        .collect();
    let switches = after.windows(2).filter(|w| w[0] != w[1]).count();
    estimates.sort_unstable();
    let median = estimates[estimates.len() / 2];
    let low = estimates[estimates.len() / 20];
    let (loss, queued) = call.bottleneck(1, settled, call.net.now);
    println!(
        "1 Mbit/s for 5 min: layer {:?}, {switches} switches after 20 s, estimate median {median} \
         (5th percentile {low}), bottleneck loss {:.3} %, longest queue {queued:?}, probes {}",
        after.last(),
        loss * 100.0,
        call.net.sfu.counters.probe_clusters,
    );
    assert_eq!(
        after.last(),
        Some(&1),
        "the middle layer fits, the top does not"
    );
    assert!(switches <= 2, "{switches} layer switches after settling");
    assert!(median >= capacity * 8 / 10, "median estimate {median}");
    assert!(loss < 0.01, "{:.2} % lost", loss * 100.0);
}

/// The `video_paused` events the SFU sent about `subscriber`: (when seen, paused).
fn pause_events(net: &SimNetwork, subscriber: usize) -> Vec<bool> {
    let id = net.id(subscriber);
    net.events
        .iter()
        .filter_map(|e| match e {
            sfu_proto::Event::VideoPaused {
                participant,
                paused,
                ..
            } if participant == id => Some(*paused),
            _ => None,
        })
        .collect()
}

#[test]
fn at_200_kbits_the_video_pauses_audio_keeps_coming_and_the_picture_resumes_at_a_keyframe() {
    let mut call = Call::new(25, &[Link::shaped(3_000_000, Duration::from_millis(100))]);
    call.run(Duration::from_secs(5));
    call.net
        .set_downlink(1, Link::shaped(200_000, Duration::from_millis(250)));
    call.run(Duration::from_secs(4));
    assert_eq!(
        pause_events(&call.net, 1),
        vec![true],
        "one pause, told to the subscriber"
    );
    // Paused: no video at all, and every audio packet, for the next 10 s.
    let (since, audio_before) = (call.net.now, (call.audio_sent, call.audio_received(1)));
    let video_before = call.video(1).len();
    call.run(Duration::from_secs(10));
    let audio_lost = (call.audio_sent - audio_before.0) as i64
        - (call.audio_received(1) - audio_before.1) as i64;
    let (loss, queued) = call.bottleneck(1, since, call.net.now);
    println!(
        "200 kbit/s, video paused: audio lost {audio_lost} of {}, bottleneck loss {:.2} %, longest queue {queued:?}, estimate {:?}",
        call.audio_sent - audio_before.0,
        loss * 100.0,
        call.net.sfu.downlink_stats(call.net.id(1)),
    );
    assert_eq!(call.video(1).len(), video_before, "no video while paused");
    assert_eq!(audio_lost, 0, "audio is never starved by video");
    assert_eq!(
        pause_events(&call.net, 1),
        vec![true],
        "it stays paused (no flapping)"
    );

    // The link recovers: the video resumes, told, at a keyframe, one unbroken stream.
    let back = call.net.now;
    call.net
        .set_downlink(1, Link::shaped(3_000_000, Duration::from_millis(100)));
    call.run(Duration::from_secs(10));
    assert_eq!(pause_events(&call.net, 1), vec![true, false]);
    let video = call.video(1);
    let resumed: Vec<&ReceivedPacket> = video.iter().filter(|p| p.at >= back).collect();
    assert!(!resumed.is_empty(), "video again");
    assert!(
        sfu_testkit::simulcast_publisher::starts_keyframe(resumed[0]),
        "the first picture after the pause is a keyframe"
    );
    let last_before = &video[video.len() - resumed.len() - 1];
    assert_eq!(
        resumed[0].seq,
        last_before.seq.wrapping_add(1),
        "sequence numbers continue across the pause"
    );
    println!(
        "resumed {:?} after the link came back",
        resumed[0].at - back
    );
}

#[test]
fn a_single_layer_screen_share_pauses_on_a_weak_link_and_resumes() {
    let mut call = Call::new(26, &[]);
    // A clinician's screen share: one 600 kbit/s stream (no simulcast), keyframes on request.
    let share = call.net.add_peer("share", &[MediaKind::Video]);
    let phone = call.net.add_peer("phone", &[]);
    call.net
        .set_downlink(phone, Link::shaped(400_000, Duration::from_millis(250)));
    call.net.join(share, "visit", BOTH);
    call.net.join(phone, "visit", BOTH);
    call.net.connect_all(Duration::from_secs(5));
    let mut ms = 0u64;
    let mut frame = 0u64;
    let mut step = |call: &mut Call, d: Duration| {
        let end = call.net.now + d;
        while call.net.now < end {
            call.run(Duration::from_millis(1));
            ms += 1;
            if ms.is_multiple_of(100) {
                // 10 frames a second of 5 packets of 1,500 bytes.
                let peer = &mut call.net.peers[share];
                let key =
                    !std::mem::take(&mut peer.pli_ssrcs).is_empty() || frame.is_multiple_of(100);
                for part in 0..5u8 {
                    let mut payload = vec![
                        if part == 0 { 0x10 } else { 0x00 },
                        if key { 0x00 } else { 0x01 },
                    ];
                    payload.resize(1500, 0x5c);
                    peer.send_media(0, &payload, part == 4, 9000);
                }
                frame += 1;
            }
        }
    };
    step(&mut call, Duration::from_secs(8));
    let shared = |call: &Call| {
        let line = call.net.peers[phone]
            .incoming_from("share", MediaKind::Video)
            .expect("offered the share")
            .ssrc;
        call.net.peers[phone]
            .received
            .get(&line)
            .map_or(0, |p| p.len())
    };
    assert_eq!(
        pause_events(&call.net, phone),
        vec![true],
        "the share does not fit 400 kbit/s"
    );
    let before = shared(&call);
    step(&mut call, Duration::from_secs(4));
    assert_eq!(shared(&call), before, "nothing of it is sent while paused");
    assert!(
        layer_at(&call.video(phone), call.net.now).is_some(),
        "the camera still comes (its lowest layer fits)"
    );
    call.net
        .set_downlink(phone, Link::shaped(3_000_000, Duration::from_millis(100)));
    step(&mut call, Duration::from_secs(10));
    assert_eq!(pause_events(&call.net, phone), vec![true, false], "resumed");
    assert!(shared(&call) > before + 100, "the share flows again");
}

/// A phone whose link comes and goes around what the lowest layer needs — each resume soon
/// failing, so the next waits longer — and then recovers for good: the picture is back
/// within a few seconds. The publisher follows dynacast, so while the subscriber is paused its
/// camera encodes nothing and the resume must wake it. (The 15 s stall a browser once showed
/// here, fixed in `downlink.rs`, does not reproduce on this network: this guards the
/// recovery with dynacast, not that fix, which has its unit test.)
#[test]
fn after_failed_resumes_a_recovered_link_gets_its_picture_back_within_seconds() {
    let mut call = Call::new(27, &[Link::shaped(3_000_000, Duration::from_millis(100))]);
    call.camera.follows_dynacast = true;
    call.run(Duration::from_secs(5));
    let weak = Link::shaped(150_000, Duration::from_millis(250));
    let fair = Link::shaped(450_000, Duration::from_millis(250));
    for (link, secs) in [(weak, 8), (fair, 4), (weak, 6), (fair, 4), (weak, 8)] {
        call.net.set_downlink(1, link);
        call.run(Duration::from_secs(secs));
    }
    let events = pause_events(&call.net, 1);
    println!("pause events while the link came and went: {events:?}");
    assert_eq!(
        events.last(),
        Some(&true),
        "paused at the end of the weak spell"
    );
    let back = call.net.now;
    call.net
        .set_downlink(1, Link::shaped(3_000_000, Duration::from_millis(100)));
    call.run(Duration::from_secs(15));
    let video = call.video(1);
    let first = video
        .iter()
        .find(|p| p.at >= back)
        .map(|p| p.at - back)
        .expect("video again");
    let top = first_on(&video, back, |l| l == 2).map(|t| t - back);
    println!("after the link recovered: video again after {first:?}, top layer after {top:?}");
    assert!(
        first < Duration::from_secs(5),
        "video back within 5 s ({first:?})"
    );
}

/// The temporal layer of a numbered VP8 packet, and its PictureID.
fn temporal_of(p: &ReceivedPacket) -> (u8, u16) {
    (
        p.payload[5] >> 6,
        u16::from_be_bytes([p.payload[2] & 0x7f, p.payload[3]]),
    )
}

/// A camera that sends temporal layers (L1T3, as Chrome does) to a phone whose link falls to
/// 180 kbit/s, where the lowest layer at full rate and the audio do not fit together: the
/// picture keeps moving at a lower frame rate instead of pausing, as one unbroken stream —
/// sequence numbers and picture ids without the gaps the dropped pictures would leave (a
/// receiver would take them for loss and hold every later picture back) — and the audio
/// loses nothing. When the link returns, the full frame rate and the top layer come back.
#[test]
fn below_the_lowest_layer_the_picture_keeps_moving_at_a_lower_frame_rate() {
    let mut call = Call::new(28, &[Link::shaped(3_000_000, Duration::from_millis(100))]);
    call.camera.numbered = true;
    call.run(Duration::from_secs(5));
    call.net
        .set_downlink(1, Link::shaped(180_000, Duration::from_millis(250)));
    call.run(Duration::from_secs(5));
    let (since, audio_before) = (call.net.now, (call.audio_sent, call.audio_received(1)));
    call.run(Duration::from_secs(10));
    let audio_lost = (call.audio_sent - audio_before.0) as i64
        - (call.audio_received(1) - audio_before.1) as i64;
    let video = call.video(1);
    let thinned: Vec<&ReceivedPacket> = video.iter().filter(|p| p.at >= since).collect();
    let (loss, queued) = call.bottleneck(1, since, call.net.now);
    let layers: std::collections::BTreeSet<(u8, u8)> = thinned
        .iter()
        .map(|p| (layer(p), temporal_of(p).0))
        .collect();
    let pictures = thinned
        .windows(2)
        .filter(|w| temporal_of(w[0]).1 != temporal_of(w[1]).1)
        .count()
        + 1;
    let seq_steps: Vec<u16> = thinned
        .windows(2)
        .map(|w| w[1].seq.wrapping_sub(w[0].seq))
        .collect();
    let picture_steps: Vec<u16> = thinned
        .windows(2)
        .map(|w| temporal_of(w[1]).1.wrapping_sub(temporal_of(w[0]).1) & 0x7fff)
        .collect();
    let gaps = |steps: &[u16], most: u16| steps.iter().filter(|&&d| d > most).count();
    println!(
        "180 kbit/s: (layer, temporal layer) received {layers:?}, {pictures} pictures in 10 s, \
         longest gap {:?}, seq gaps {}, picture-id gaps {}, audio lost {audio_lost}, \
         bottleneck loss {:.2} %, longest queue {queued:?}, packets skipped {}",
        longest_gap(&video, since, call.net.now),
        gaps(&seq_steps, 1),
        gaps(&picture_steps, 1),
        loss * 100.0,
        call.net.sfu.counters.temporal_skips,
    );
    assert_eq!(
        pause_events(&call.net, 1),
        Vec::<bool>::new(),
        "never paused"
    );
    assert!(
        layers.iter().all(|&(l, t)| l == 0 && t < 2),
        "the lowest layer without its top temporal layer: {layers:?}"
    );
    assert!(
        (100..=200).contains(&pictures),
        "about half of the 300 pictures: {pictures}"
    );
    assert!(
        longest_gap(&video, since, call.net.now) < Duration::from_millis(300),
        "the picture keeps moving"
    );
    // What is left out leaves no hole: steps of one, but for what the bottleneck dropped.
    assert!(
        gaps(&seq_steps, 1) <= seq_steps.len() / 50 && gaps(&picture_steps, 1) <= 3,
        "seq steps {seq_steps:?} picture steps {picture_steps:?}"
    );
    assert_eq!(audio_lost, 0, "audio is never starved by video");

    // The link returns: every temporal layer, and then the top layer, again.
    let back = call.net.now;
    call.net
        .set_downlink(1, Link::shaped(3_000_000, Duration::from_millis(100)));
    call.run(Duration::from_secs(12));
    let video = call.video(1);
    let full_rate = video
        .iter()
        .find(|p| p.at >= back && temporal_of(p).0 == 2)
        .map(|p| p.at - back);
    let top = first_on(&video, back, |l| l == 2).map(|t| t - back);
    println!("link back: all temporal layers after {full_rate:?}, top layer after {top:?}");
    assert!(full_rate.is_some_and(|d| d < Duration::from_secs(5)));
    assert!(top.is_some_and(|d| d < Duration::from_secs(12)));
    let steps: Vec<u16> = video
        .iter()
        .filter(|p| p.at >= back)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| temporal_of(w[1]).1.wrapping_sub(temporal_of(w[0]).1) & 0x7fff)
        .collect();
    assert!(
        steps.iter().all(|&d| d <= 1),
        "picture ids continue across every step back up: {steps:?}"
    );
}

/// A subscriber on 900 kbit/s whose bottleneck queue holds only 80 ms (9 KB): the top layer
/// does not fit, so its estimate binds. The publisher's keyframes are eight times its frames —
/// sixteen packets of the middle layer at once, more than the queue holds. Paced, they leave
/// at the estimate's pace and the queue does not overflow; unpaced (the same call, pacing
/// off) keyframe bursts lose packets at the bottleneck. Returns the share of datagrams the
/// bottleneck dropped over 20 s, the longest a packet waited in its queue, and the packets
/// the pacer held.
fn keyframe_bursts(pacing: bool) -> (f64, Duration, u64) {
    let mut call = Call::with_config(
        29,
        &[Link::shaped(3_000_000, Duration::from_millis(100))],
        |c| c.pacing = pacing,
    );
    call.camera.keyframe_scale = 8;
    call.run(Duration::from_secs(3));
    call.net
        .set_downlink(1, Link::shaped(900_000, Duration::from_millis(80)));
    call.run(Duration::from_secs(6));
    let since = call.net.now;
    call.run(Duration::from_secs(20));
    let (loss, queued) = call.bottleneck(1, since, call.net.now);
    let layers: std::collections::BTreeSet<u8> = call
        .video(1)
        .iter()
        .filter(|p| p.at >= since)
        .map(layer)
        .collect();
    println!(
        "pacing {pacing}: bottleneck loss {:.2} %, longest queue {queued:?}, layers {layers:?}, \
         paced packets {}",
        loss * 100.0,
        call.net.sfu.counters.paced_packets
    );
    (loss, queued, call.net.sfu.counters.paced_packets)
}

#[test]
fn paced_keyframe_bursts_do_not_overflow_a_shallow_bottleneck_queue() {
    let (paced_loss, _, paced) = keyframe_bursts(true);
    let (burst_loss, _, unpaced) = keyframe_bursts(false);
    assert!(paced > 0 && unpaced == 0);
    assert!(
        burst_loss > 0.005,
        "unpaced keyframes overflow the queue (else this test shows nothing): {burst_loss}"
    );
    assert!(
        paced_loss < burst_loss / 4.0,
        "paced {paced_loss} vs unpaced {burst_loss}"
    );
}

/// A subscriber that sends no transport-wide feedback but estimates its own downlink (REMB, as
/// older WebRTC stacks do): its estimate is what the allocator splits. At 250 kbit/s it
/// gets the lowest layer; at 3 Mbit/s the top one. And one that sends both is estimated from
/// its feedback, not its REMB.
#[test]
fn a_receiver_estimate_sets_the_layer_of_a_subscriber_without_transport_feedback() {
    let mut call = Call::new(30, &[Link::default(), Link::default()]);
    call.net.peers[1].transport_feedback = false;
    let remb = |call: &mut Call, bps: u64, secs: u64| {
        for _ in 0..secs * 2 {
            call.net.peers[1].send_remb(bps);
            // The second sends a REMB far below what its feedback shows.
            call.net.peers[2].send_remb(100_000);
            call.run(Duration::from_millis(500));
        }
    };
    remb(&mut call, 250_000, 6);
    let low = layer_at(&call.video(1), call.net.now);
    let estimate = call
        .net
        .sfu
        .downlink_stats(call.net.id(1))
        .map(|s| s.estimate_bps);
    remb(&mut call, 3_000_000, 8);
    let high = layer_at(&call.video(1), call.net.now);
    let other = layer_at(&call.video(2), call.net.now);
    println!(
        "REMB 250 kbit/s: layer {low:?}, estimate {estimate:?}; REMB 3 Mbit/s: layer {high:?}; \
         with transport-wide feedback beside a 100 kbit/s REMB: layer {other:?}, receiver \
         estimates taken {}",
        call.net.sfu.counters.receiver_estimates_in
    );
    assert_eq!(estimate, Some(250_000), "its own estimate, taken as it is");
    assert_eq!(low, Some(0));
    assert_eq!(high, Some(2));
    assert_eq!(other, Some(2), "feedback wins over a REMB");
}

/// The pictures a receiver could show: when each showed (its last packet's arrival) and its
/// layer. A picture shows when all its packets arrived (repairs too) and — unless it is a
/// keyframe — the one before it showed: a loss never repaired holds the picture until the next
/// keyframe (the SFU asks for one at a switch, the camera sends one every 3 s).
fn shown_pictures(video: &[ReceivedPacket], camera: &SimulcastPublisher) -> Vec<(Instant, u8)> {
    use std::collections::BTreeMap;
    struct Picture {
        layer: u8,
        key: bool,
        seqs: Vec<i64>,
        last: Instant,
    }
    let mut pictures: BTreeMap<u32, Picture> = BTreeMap::new();
    let mut base: Option<(u16, i64)> = None;
    for p in video {
        // Sequence numbers unwrapped against the last one seen.
        let seq = match base {
            None => i64::from(p.seq),
            Some((last, at)) => at + i64::from(p.seq.wrapping_sub(last) as i16),
        };
        base = Some((p.seq, seq));
        let picture = pictures.entry(p.timestamp).or_insert(Picture {
            layer: layer(p),
            key: false,
            seqs: Vec::new(),
            last: p.at,
        });
        picture.key |= starts_keyframe(p);
        picture.seqs.push(seq);
        picture.last = picture.last.max(p.at);
    }
    let mut ordered: Vec<Picture> = pictures.into_values().collect();
    ordered.sort_by_key(|p| p.seqs.iter().copied().min());
    let mut shown = Vec::new();
    let (mut chain, mut next_seq) = (false, None);
    for p in ordered {
        let (first, last) = (p.seqs.iter().min().copied(), p.seqs.iter().max().copied());
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let per_frame = camera.packets_per_frame[usize::from(p.layer)];
        let expected = if p.key {
            per_frame * camera.keyframe_scale.max(1)
        } else {
            per_frame
        };
        let whole = p.seqs.len() == expected && last - first + 1 == expected as i64;
        let follows = next_seq.is_none_or(|n| n == first);
        chain = whole && (p.key || (chain && follows));
        if chain {
            shown.push((p.last, p.layer));
        }
        next_seq = Some(last + 1);
    }
    shown
}

/// Every video packet a subscriber received from the publisher, repairs too (the first copy
/// of each sequence number), in arrival order.
fn arrivals(net: &sfu_testkit::SimNetwork, subscriber: usize) -> Vec<ReceivedPacket> {
    let line = net.peers[subscriber]
        .incoming_from("pub", MediaKind::Video)
        .expect("offered the publisher's video");
    let mut seen = std::collections::HashSet::new();
    net.peers[subscriber]
        .received
        .get(&line.ssrc)
        .map(|pkts| {
            pkts.iter()
                .filter(|p| seen.insert(p.seq))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Stretches of more than 200 ms between two pictures shown in [from, to): (start, length).
fn freezes(shown: &[(Instant, u8)], from: Instant, to: Instant) -> Vec<(Duration, Duration)> {
    let mut out = Vec::new();
    let mut last = from;
    for t in shown
        .iter()
        .map(|&(t, _)| t)
        .filter(|&t| t >= from && t < to)
        .chain([to])
    {
        if t - last > Duration::from_millis(200) {
            out.push((last - from, t - last));
        }
        last = t;
    }
    out
}

#[test]
fn behind_a_policer_a_failed_step_up_costs_little_picture() {
    // A plan's rate limit: a token bucket that passes 16 KB at once, then 400 kbit/s, and
    // drops what exceeds it (no queue to speak of). A probe passes it whole and reads a rate
    // the link cannot carry for long; the step up taken on it fails.
    let mut call = Call::new(41, &[Link::shaped(3_000_000, Duration::from_millis(100))]);
    // Keyframes four times a frame, as an encoder's are; the subscriber asks for repairs.
    call.camera.keyframe_scale = 4;
    call.net.peers[1].nack_losses = true;
    call.run(Duration::from_secs(6));
    assert_eq!(layer_at(&call.video(1), call.net.now), Some(2));
    let policed = call.net.now;
    let policer = Link {
        rate_bps: Some(400_000),
        queue_bytes: 1500,
        burst_bytes: 16_000,
        ..Link::default()
    };
    call.net.set_downlink(1, policer);
    call.run(Duration::from_secs(40));
    let end = call.net.now;
    let video = call.video(1);
    let changes = layer_changes(&video, policed);
    let steps_up = changes.windows(2).filter(|w| w[1] > w[0]).count();
    let shown = shown_pictures(&arrivals(&call.net, 1), &call.camera);
    // After the first move down (the link's change itself is not what is judged).
    let settled =
        first_on(&video, policed, |l| l < 2).expect("moved down") + Duration::from_secs(2);
    let frozen = freezes(&shown, settled, end);
    let total: Duration = frozen.iter().map(|&(_, d)| d).sum();
    let (loss, _) = call.bottleneck(1, settled, end);
    println!(
        "400 kbit/s behind a policer (16 KB bucket): layers {changes:?} ({steps_up} steps up), \
         frozen {total:?} in all after the first move down, freezes {frozen:?}, bottleneck loss {:.1} %",
        loss * 100.0
    );
    // Before steps were put on trial (the same call, seed and receiver): 17 steps up in 40 s
    // (every probe, one each 2 s, read the bucket's burst as headroom), 9.0 s frozen in 17
    // freezes, 22.5 % lost at the policer.
    assert!(steps_up <= 4, "{steps_up} steps up: {changes:?}");
    assert!(
        frozen.iter().all(|&(_, d)| d < Duration::from_millis(500)),
        "the picture froze: {frozen:?}"
    );
    assert!(total < Duration::from_secs(2), "frozen {total:?} in all");
    assert!(loss < 0.06, "{:.1} % lost at the policer", loss * 100.0);
    assert!(
        call.net.sfu.counters.failed_steps >= 1,
        "a step was taken back"
    );
    assert_eq!(
        layer_at(&video, end),
        Some(0),
        "on the layer the link carries"
    );
}

#[test]
fn a_loss_no_repair_mends_brings_a_keyframe_at_once() {
    // A small tile (the lowest layer) on a link that loses a third of what is sent for 8 s,
    // from a camera that — as a browser's encoder — sends a keyframe only when asked. Each
    // packet the subscriber misses is asked for four times and resent at most three: when
    // all four copies are lost the picture cannot go on until a keyframe, which a browser
    // asks for itself only after 3 s without a picture.
    let mut call = Call::with_config(44, &[Link::default()], |c| {
        // The layer is the tile's choice here, not the estimate's (which would pause the
        // video at this loss, hiding what is judged).
        c.bandwidth_estimation = false;
    });
    call.camera.keyframe_scale = 4;
    call.camera.keyframe_every = None;
    call.net.peers[1].nack_losses = true;
    let tile = call.net.id(1).clone();
    call.net.command(sfu_proto::Command::SetPreferredLayer {
        participant: tile,
        mid: None,
        layer: sfu_proto::VideoLayer::Low,
    });
    call.run(Duration::from_secs(3));
    let lossy = call.net.now;
    call.net.set_downlink(
        1,
        Link {
            loss: 0.33,
            ..Link::default()
        },
    );
    call.run(Duration::from_secs(8));
    let clean = call.net.now;
    call.net.set_downlink(1, Link::default());
    call.run(Duration::from_secs(2));
    let end = call.net.now;
    let shown = shown_pictures(&arrivals(&call.net, 1), &call.camera);
    let frozen = freezes(&shown, lossy, end);
    let total: Duration = frozen.iter().map(|&(_, d)| d).sum();
    let c = &call.net.sfu.counters;
    println!(
        "a third lost for 8 s: {} pictures shown of {} sent, freezes {frozen:?} ({total:?} in \
         all), {} losses every resend of which was lost, {} keyframes sent",
        shown.iter().filter(|&&(t, _)| t >= lossy).count(),
        (end - lossy).as_millis() * 30 / 1000,
        c.keyframes_for_failed_repairs,
        call.camera.keyframes[0],
    );
    assert!(
        c.keyframes_for_failed_repairs >= 1,
        "no packet lost with every resend"
    );
    // Without the keyframe the first such loss froze the picture for the rest of the call
    // (9.8 s of these 10). With it, 1.5–3.5 s in all over eight seeds, most of it repairs
    // arriving late; no freeze over 0.95 s.
    assert!(
        frozen.iter().all(|&(_, d)| d < Duration::from_millis(1500)),
        "the picture froze: {frozen:?}"
    );
    assert!(total < Duration::from_secs(5), "frozen {total:?} in all");
    // Moving in the clean seconds at the end.
    assert!(
        shown.iter().filter(|&&(t, _)| t >= clean).count() >= 50,
        "{} pictures in the last 2 s",
        shown.iter().filter(|&&(t, _)| t >= clean).count()
    );
}

/// A subscriber whose estimate binds, sent back to the waiting room while its pacer holds a
/// keyframe burst: nothing of others' media leaves for it after the move (before, what its
/// pacer held went out after it: here 49 packets over 180 ms).
#[test]
fn a_subscriber_moved_to_the_waiting_room_gets_nothing_its_pacer_held() {
    let mut call = Call::with_config(
        29,
        &[Link::shaped(3_000_000, Duration::from_millis(100))],
        |c| c.pacing = true,
    );
    // Keyframes of 30 packets: some 150 ms of the subscriber's estimate.
    call.camera.keyframe_scale = 30;
    call.run(Duration::from_secs(3));
    call.net
        .set_downlink(1, Link::shaped(900_000, Duration::from_millis(80)));
    call.run(Duration::from_secs(6));
    // The subscriber asks for a keyframe; step until its first packets have left for the
    // subscriber (the rest wait in the pacer).
    let ssrc = call.net.peers[1]
        .incoming_from("pub", MediaKind::Video)
        .expect("the camera offered")
        .ssrc;
    let keyframes = call.camera.keyframes;
    call.net.peers[1].send_pli(ssrc);
    let mut waited = 0;
    while call.camera.keyframes == keyframes {
        call.run(Duration::from_millis(1));
        waited += 1;
        assert!(waited < 2_000, "no keyframe came");
    }
    let sent_before = |call: &Call| {
        call.net.deliveries[1]
            .iter()
            .filter(|d| d.size > 300)
            .count()
    };
    let media = sent_before(&call);
    while sent_before(&call) < media + 4 {
        call.run(Duration::from_millis(1));
        waited += 1;
        assert!(waited < 4_000, "the keyframe did not come");
    }
    let moved_at = call.net.now;
    let id = call.net.id(1).clone();
    call.net.command(sfu_proto::Command::SetPermissions {
        participant: id,
        permissions: Permissions {
            publish: true,
            subscribe: false,
        },
    });
    call.run(Duration::from_secs(2));
    // Media datagrams (RTCP to the subscriber is smaller than any media packet here).
    let after: Vec<_> = call.net.deliveries[1]
        .iter()
        .filter(|d| d.sent > moved_at && d.size > 300)
        .map(|d| (d.sent - moved_at, d.size))
        .collect();
    assert!(after.is_empty(), "media sent after the move: {after:?}");
    // And what an ICE-TCP connection's queue held for it is taken back.
    let addr = call.net.peers[1].addr;
    assert_eq!(call.net.withdrawn, [addr]);
}

/// A publisher whose "audio" is a flood (1,200-byte packets every millisecond: 9.6 Mbit/s).
/// Audio is forwarded ahead of video and outside the pacer, and each subscriber's allocation
/// counts it first: without a cap it would fill a subscriber's link and take the picture away.
/// The SFU forwards at most the track's rate; the picture goes on. (Without the cap: the
/// picture gone for 8 s, 80 % lost at the subscriber's bottleneck.)
#[test]
fn a_flood_on_an_audio_track_is_held_to_its_rate_and_the_picture_goes_on() {
    let mut call = Call::new(31, &[Link::shaped(2_000_000, Duration::from_millis(100))]);
    call.run(Duration::from_secs(8));
    let before = call.audio_received(1);
    let flood_start = call.net.now;
    let Call { net, camera, .. } = &mut call;
    net.run(Duration::from_secs(10), |n| {
        camera.step(n);
        n.peers[0].send_media(0, &[0x55; 1200], true, 48);
    });
    let end = call.net.now;
    let forwarded = call.audio_received(1) - before;
    let video = call.video(1);
    let gap = longest_gap(&video, flood_start, end);
    let (loss, queue) = call.bottleneck(1, flood_start, end);
    println!(
        "flood of 10,000 audio packets: {forwarded} forwarded, {} dropped at the SFU; video gap ≤ {gap:?}, layer {:?}; bottleneck loss {:.2} %, queue ≤ {queue:?}",
        call.net.sfu.counters.dropped_over_rate,
        layer_at(&video, end),
        loss * 100.0
    );
    // 72 kB a second after a 16 kB burst binds before 150 packets a second: some 613 of
    // 1,200 bytes in 10 s.
    assert!(
        (560..=660).contains(&forwarded),
        "audio held to its rate: {forwarded} in 10 s"
    );
    assert!(call.net.sfu.counters.dropped_over_rate >= 8_000);
    assert!(
        gap < Duration::from_millis(500),
        "the picture went on: gap {gap:?}"
    );
    assert!(layer_at(&video, end).is_some());
    assert!(
        loss < 0.02,
        "the link was not flooded: loss {:.2} %",
        loss * 100.0
    );
}

/// A publisher flooding two audio lines (a microphone and a screen's sound may both be
/// published): its audio together is held to one track's rate — before, each line had its
/// own, and two flooded twice as much ahead of everyone's video.
#[test]
fn a_flood_on_two_audio_tracks_is_held_to_one_participants_rate() {
    let mut net = sfu_testkit::SimNetwork::new(32, |_| {});
    net.add_peer("pub", &[MediaKind::Audio, MediaKind::Audio]);
    net.add_peer("sub", &[]);
    net.join(0, "visit", BOTH);
    net.join(1, "visit", BOTH);
    net.connect_all(Duration::from_secs(5));
    net.run(Duration::from_secs(1), |_| {});
    let audio = |net: &sfu_testkit::SimNetwork| -> usize {
        let sub = &net.peers[1];
        sub.incoming
            .iter()
            .filter(|l| l.kind == MediaKind::Audio)
            .map(|l| sub.received.get(&l.ssrc).map_or(0, Vec::len))
            .sum()
    };
    assert_eq!(
        net.peers[1]
            .incoming
            .iter()
            .filter(|l| l.kind == MediaKind::Audio)
            .count(),
        2,
        "both audio lines offered to the subscriber"
    );
    let before = audio(&net);
    net.run(Duration::from_secs(10), |n| {
        n.peers[0].send_media(0, &[0x55; 1200], true, 48);
        n.peers[0].send_media(1, &[0x55; 1200], true, 48);
    });
    let forwarded = audio(&net) - before;
    println!("two flooded audio tracks: {forwarded} packets forwarded in 10 s");
    // One track's share: 72 kB a second after a 16 kB burst, some 613 of 1,200 bytes.
    assert!(
        (560..=660).contains(&forwarded),
        "the publisher's audio held to one rate: {forwarded} in 10 s"
    );
}
