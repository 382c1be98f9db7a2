//! Details a client written from docs/protocol.md relies on: a publisher is not told about
//! its own tracks, a track's id in `track_published` is the one in the SDP's `a=msid`, and a
//! `leave` ends with a `closing` message and a normal close.

mod support;

use serde_json::json;
use std::time::Duration;
use support::media::MediaPeer;
use support::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_events_name_the_msid_track_and_go_to_the_others() {
    let server = start();
    let mut doctor = server
        .connect(&server.token("visit-t", "doc-1", "Dr Berg", "clinician"))
        .await;
    doctor.next_of("welcome").await;
    let mut patient = server
        .connect(&server.token("visit-t", "pat-1", "Anna", "patient"))
        .await;
    let patient_id = patient.next_of("welcome").await["participant"].clone();
    let who = doctor.first_waiting().await;
    doctor
        .send(json!({"type": "admit", "participant": who}))
        .await;
    patient.next_of("admitted").await;
    let doctor_media = MediaPeer::new("doctor").await;
    doctor.start_media(&doctor_media).await;
    doctor.drain(Duration::from_millis(500)).await;

    // The patient publishes audio and video.
    let patient_media = MediaPeer::new("patient").await;
    patient
        .send(json!({"type": "offer", "sdp": patient_media.offer()}))
        .await;
    let to_patient = patient.drain(Duration::from_secs(2)).await;
    let to_doctor = doctor.drain(Duration::from_secs(2)).await;
    assert!(
        to_patient.iter().any(|m| m["type"] == "answer"),
        "{to_patient:?}"
    );
    assert!(
        !to_patient
            .iter()
            .any(|m| m["type"] == "track_published" && m["publisher"] == patient_id),
        "a publisher is not told of its own tracks: {to_patient:?}"
    );
    let published: Vec<String> = to_doctor
        .iter()
        .filter(|m| m["type"] == "track_published" && m["publisher"] == patient_id)
        .map(|m| m["track"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(published.len(), 2, "{to_doctor:?}");
    let offer = to_doctor
        .iter()
        .find(|m| m["type"] == "offer")
        .expect("the SFU offers the patient's tracks")["sdp"]
        .as_str()
        .unwrap()
        .to_owned();
    for track in &published {
        assert!(
            offer
                .lines()
                .any(|l| l.starts_with("a=msid:") && l.ends_with(&format!(" {track}"))),
            "track {track} is not an msid track id of the offer"
        );
    }
}

#[tokio::test]
async fn a_leave_ends_with_closing_and_a_normal_close() {
    let server = start();
    let mut patient = server
        .connect(&server.token("visit-l", "pat-1", "Anna", "patient"))
        .await;
    patient.next_of("welcome").await;
    patient.send(json!({"type": "leave"})).await;
    let (closing, code) = patient.closed().await;
    assert_eq!(closing["reason"], "left", "{closing}");
    assert_eq!(code, Some(1000));
}
