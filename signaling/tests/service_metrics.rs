//! Signaling's own metrics, as an operator's Prometheus reads them: people admitted and
//! waiting, meetings in progress and WebSockets open follow what happens; a visit's waiting
//! time, its join → media time and the SFU's answer time land in histograms; every metric
//! (signaling's and the SFU workers') carries HELP text and a conventional name.

mod support;

use std::time::{Duration, Instant};
use support::start;

async fn metrics(server: &support::Server) -> String {
    let (status, body) = server.api("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    body["raw"].as_str().unwrap_or_default().to_owned()
}

async fn until(server: &support::Server, lines: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(server).await;
        if lines.iter().all(|l| text.lines().any(|t| t == *l)) {
            return text;
        }
        assert!(Instant::now() < deadline, "never saw {lines:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_waiting_room_and_the_meeting_show_in_the_gauges_each_with_help_text() {
    let server = start();
    let doctor_token = server.token("visit-m", "doc-4411", "Dr Berg", "clinician");
    let patient_token = server.token("visit-m", "pat-7f3a", "Anna", "patient");
    let mut doctor = server.connect(&doctor_token).await;
    doctor.next_of("welcome").await;
    let mut patient = server.connect(&patient_token).await;
    patient.next_of("welcome").await;
    until(
        &server,
        &[
            "signaling_participants{state=\"admitted\"} 1",
            "signaling_participants{state=\"waiting\"} 1",
            "signaling_meetings_active 1",
            "signaling_websockets 2",
        ],
    )
    .await;

    let patient_id = doctor.first_waiting().await;
    doctor
        .send(serde_json::json!({"type": "admit", "participant": patient_id}))
        .await;
    patient.next_of("admitted").await;
    let text = until(
        &server,
        &[
            "signaling_participants{state=\"admitted\"} 2",
            "signaling_participants{state=\"waiting\"} 0",
        ],
    )
    .await;

    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("signaling_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    assert!(names.len() >= 4, "{names:?}");
    assert_eq!(support::convention_problems(&text), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_lands_in_the_histograms_and_every_metric_is_named_and_explained() {
    let server = start();
    let (doctor_media, patient_media, doctor, patient) =
        support::media::visit(&server, "visit-h").await;
    let _d = doctor.negotiate_in_background(&doctor_media);
    let _p = patient.negotiate_in_background(&patient_media);
    let sender = support::media::FrameSender::start(doctor_media, patient_media);
    // Two people whose media flowed, one of them admitted from the waiting room, two SDP
    // answers from the SFU at least; the worker holds one room of two.
    let text = until(
        &server,
        &[
            "signaling_join_to_media_seconds_count 2",
            "signaling_lobby_wait_seconds_count 1",
            "sfu_rooms{worker=\"0\"} 1",
            "sfu_participants{worker=\"0\"} 2",
        ],
    )
    .await;
    let _ = sender.stop().await;
    let answers: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("signaling_sfu_answer_seconds_count "))
        .expect("the SFU's answer times")
        .parse()
        .unwrap();
    assert!(answers >= 2.0, "{answers} answers timed");
    // A histogram with buckets, in seconds: the answers came within a second on loopback.
    let within_a_second: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("signaling_sfu_answer_seconds_bucket{le=\"1\"} "))
        .expect("a 1 s bucket")
        .parse()
        .unwrap();
    assert_eq!(within_a_second, answers);
    assert!(text.contains("# TYPE sfu_packets_out_total counter"));
    // The worker's timer passes, timed, in buckets fine enough for them (from 25 µs).
    let passes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sfu_timer_pass_seconds_count{worker=\"0\"} "))
        .expect("the worker's timer passes")
        .parse()
        .unwrap();
    assert!(passes >= 1.0, "{passes} timer passes");
    assert!(
        text.lines()
            .any(|l| l.starts_with("sfu_timer_pass_seconds_bucket{worker=\"0\",le=\"0.000025\"}")),
        "microsecond buckets"
    );
    assert_eq!(support::convention_problems(&text), Vec::<String>::new());
    // And the check can fail.
    assert_eq!(
        support::convention_problems("# TYPE sfu_packets counter\nsfu_packets 1\n"),
        [
            "sfu_packets: no HELP text",
            "sfu_packets: a counter not ending in _total"
        ]
    );
}
