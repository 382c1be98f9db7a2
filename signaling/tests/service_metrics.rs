//! Signaling's own metrics, as an operator's Prometheus reads them: people admitted and
//! waiting, meetings in progress and WebSockets open follow what happens, and every
//! `signaling_` metric carries HELP text.

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
    for name in names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > name.len() + 10),
            "no HELP text for {name}"
        );
    }
}
