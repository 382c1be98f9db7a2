//! The single-node service with two SFU workers (one per core in production; every other test
//! runs one): rooms are spread over the workers, each participant is told to send to its
//! room's worker (its answer's candidate port), each worker holds exactly its rooms'
//! participants and no media from anyone else, and media flows through each worker.

mod support;

use std::time::{Duration, Instant};
use support::media::{FrameSender, MediaPeer};

/// The UDP port of the host candidate in an SDP answer.
fn candidate_port(sdp: &str) -> u16 {
    sdp.lines()
        .find_map(|l| {
            let c = l.strip_prefix("a=candidate:")?;
            let f: Vec<&str> = c.split_whitespace().collect();
            (f.get(2).is_some_and(|p| p.eq_ignore_ascii_case("udp"))).then(|| f[5].parse().ok())?
        })
        .expect("a UDP host candidate in the answer")
}

/// A sample's value on `/metrics` (0 when absent).
fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_spread_over_workers_and_each_participant_is_served_by_its_rooms_worker() {
    let server = support::start_with(&["--workers", "2"]);
    let mut visits = Vec::new();
    for meeting in ["visit-a", "visit-b", "visit-c"] {
        let doctor_token = server.token(meeting, &format!("doc-{meeting}"), "Dr Berg", "clinician");
        let patient_token = server.token(meeting, &format!("pat-{meeting}"), "Anna", "patient");
        let (mut doctor, mut patient) =
            support::media::admitted_pair(&server, &doctor_token, &patient_token).await;
        let (dm, pm) = (
            MediaPeer::new("doctor").await,
            MediaPeer::new("patient").await,
        );
        let ports = [
            candidate_port(&doctor.start_media_answered(&dm).await),
            candidate_port(&patient.start_media_answered(&pm).await),
        ];
        assert_eq!(ports[0], ports[1], "{meeting}: both on their room's worker");
        let events = [
            doctor.negotiate_in_background(&dm),
            patient.negotiate_in_background(&pm),
        ];
        visits.push((meeting, ports[0], FrameSender::start(dm, pm), events));
    }
    // Three rooms on two workers: the second goes to the other worker than the first.
    assert_ne!(visits[0].1, visits[1].1, "rooms spread over the workers");
    let workers: std::collections::BTreeSet<u16> = visits.iter().map(|v| v.1).collect();
    assert_eq!(workers.len(), 2);

    tokio::time::sleep(Duration::from_secs(2)).await;
    // Each worker holds its rooms' participants, received their packets, and never got one
    // from an address it does not serve (a participant sent to the wrong worker).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, body) = server.api("GET", "/metrics", None, None).await;
        let text = body["raw"].as_str().unwrap_or_default().to_owned();
        let counted = sample(&text, "sfu_participants{worker=\"0\"} ")
            + sample(&text, "sfu_participants{worker=\"1\"} ");
        let flowing = ["0", "1"]
            .iter()
            .all(|w| sample(&text, &format!("sfu_packets_in_total{{worker=\"{w}\"}} ")) > 100.0);
        if (counted == 6.0 && flowing) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rooms = [
        sample(&text, "sfu_rooms{worker=\"0\"} "),
        sample(&text, "sfu_rooms{worker=\"1\"} "),
    ];
    assert_eq!(rooms[0] + rooms[1], 3.0, "{text}");
    assert!(rooms[0] >= 1.0 && rooms[1] >= 1.0, "{rooms:?}");
    for w in ["0", "1"] {
        let participants = sample(&text, &format!("sfu_participants{{worker=\"{w}\"}} "));
        let room_count = sample(&text, &format!("sfu_rooms{{worker=\"{w}\"}} "));
        assert_eq!(participants, 2.0 * room_count, "worker {w}: {text}");
        assert!(
            sample(&text, &format!("sfu_packets_in_total{{worker=\"{w}\"}} ")) > 100.0,
            "worker {w} forwarded media: {}",
            text.lines()
                .filter(|l| l.starts_with("sfu_packets_in"))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        // A participant sending to the wrong worker would show here by the hundred (its
        // media from an address that worker does not serve); a few per session arrive before
        // their address is known, with one worker too.
        let strangers = sample(
            &text,
            &format!("sfu_dropped_unknown_source_total{{worker=\"{w}\"}} "),
        );
        assert!(
            strangers <= 2.0 * participants,
            "worker {w} got {strangers} packets from addresses it does not serve"
        );
    }
    // A worker wakes for its packets and its deadlines, never in a loop in between: wake-ups
    // that received nothing stay within the 10 ms tick and the 5 ms longest sleep (a wait
    // rounded down to 0 ms once made thousands a second).
    let idle_wakeups = |text: &str, w: &str| {
        sample(
            text,
            &format!("sfu_worker_wakeups_total{{worker=\"{w}\"}} "),
        ) - sample(
            text,
            &format!("sfu_udp_receive_calls_total{{worker=\"{w}\"}} "),
        )
    };
    let before = server.api("GET", "/metrics", None, None).await.1["raw"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.api("GET", "/metrics", None, None).await.1["raw"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for w in ["0", "1"] {
        let received = sample(
            &after,
            &format!("sfu_udp_received_datagrams_total{{worker=\"{w}\"}} "),
        ) - sample(
            &before,
            &format!("sfu_udp_received_datagrams_total{{worker=\"{w}\"}} "),
        );
        assert!(
            received > 100.0,
            "worker {w} received {received} datagrams in 3 s"
        );
        // The counters are exported about once a second, so the two readings span 2–4 s of
        // counting: over 4 s, the figure is at most half the true rate — still far from
        // the thousands a spin makes. (Wake-ups beyond receive calls: a drain may make
        // several receives in one wake-up, so this undercounts the empty ones, never more.)
        let per_second = (idle_wakeups(&after, w) - idle_wakeups(&before, w))
            / (from.elapsed().as_secs_f64() + 1.0);
        assert!(
            per_second < 600.0,
            "worker {w}: {per_second:.0} wake-ups a second beyond its receives"
        );
        eprintln!(
            "worker {w}: {per_second:.0} wake-ups a second without a receive, {received} datagrams in"
        );
    }

    // Media flowed both ways in every visit.
    for (meeting, port, sender, _events) in visits {
        let (d, p) = sender.stop().await;
        assert!(
            d.video_frames().len() > 20 && p.video_frames().len() > 20,
            "{meeting} (worker port {port}): {} / {} frames",
            d.video_frames().len(),
            p.video_frames().len()
        );
    }
}
