//! Offers as a hostile patient sends them, against the running service: a second camera
//! smuggled in by leaving out direction lines, and a flood of huge offers from the waiting
//! room while another visit's media runs on the same SFU worker.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::media::{FrameSender, MediaPeer, frames_per_second, visit};
use support::start;

fn without_directions(sdp: &str) -> String {
    sdp.replace("a=sendonly\r\n", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_cannot_publish_a_second_camera_by_leaving_out_directions() {
    let server = start();
    let (_d, patient_media, _doctor, mut patient) = visit(&server, "visit-dir").await;
    // A second video line with no direction attribute is sendrecv (RFC 4566): it publishes.
    let two = MediaPeer::new("two-cameras").await;
    {
        let mut p = two.peer.lock().unwrap();
        p.add_track(sfu_proto::MediaKind::Video);
    }
    let offer = without_directions(&two.offer());
    assert_eq!(offer.matches("m=video").count(), 2);
    assert!(!offer.contains("a=send"), "no direction lines left");
    patient
        .send(json!({"type": "offer", "sdp": offer, "restart": true}))
        .await;
    let err = patient.next_of("error").await;
    assert_eq!(err["code"], "screen_share_not_allowed", "{err}");
    // One camera without a direction line is fine (a restart with it is answered).
    let one = without_directions(&patient_media.offer());
    tokio::time::sleep(Duration::from_secs(3)).await; // past the restart interval
    patient
        .send(json!({"type": "offer", "sdp": one, "restart": true}))
        .await;
    let reply = loop {
        let m = patient.next().await;
        if m["type"] == "answer" || m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(reply["type"], "answer", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_cannot_add_a_camera_by_leaving_the_first_out_of_a_renegotiation() {
    let server = start();
    let (_d, patient_media, _doctor, mut patient) = visit(&server, "visit-omit").await;
    // The session's offer, its camera's line given a new mid: the SFU keeps the line the
    // offer leaves out publishing, and would publish the new one besides.
    let offer = patient_media.offer();
    let video = offer.find("m=video").expect("a camera line");
    let mid_at = video + offer[video..].find("a=mid:").unwrap() + "a=mid:".len();
    let mid = offer[mid_at..].split("\r\n").next().unwrap().to_owned();
    let moved = format!(
        "{}a=mid:moved{}",
        &offer[..mid_at - "a=mid:".len()],
        &offer[mid_at + mid.len()..]
    )
    .replace(&format!("BUNDLE {mid}"), "BUNDLE moved")
    .replace(&format!(" {mid}\r\n"), " moved\r\n");
    assert!(moved.contains("a=mid:moved") && !moved.contains(&format!("a=mid:{mid}\r\n")));
    patient.send(json!({"type": "offer", "sdp": moved})).await;
    let err = patient.next_of("error").await;
    assert_eq!(err["code"], "screen_share_not_allowed", "{err}");
    // The session's own offer again (its camera's line in it) passes the rule and reaches
    // the SFU: answered, or told it crossed the SFU's own offer (which this test leaves
    // unanswered).
    patient.send(json!({"type": "offer", "sdp": offer})).await;
    let reply = loop {
        let m = patient.next().await;
        if m["type"] == "answer" || m["type"] == "error" {
            break m;
        }
    };
    assert!(
        reply["type"] == "answer" || reply["code"] == "offer_crossed",
        "{reply}"
    );
}

/// The attack's offer: one video line with 1,200 `a=ssrc` and 1,200 `ssrc-group:FID` lines.
fn flood_offer(template: &str) -> String {
    let mut sdp = template.to_owned();
    for i in 0..1_200u32 {
        sdp.push_str(&format!("a=ssrc:{} cname:f\r\n", 1 + i));
        sdp.push_str(&format!("a=ssrc-group:FID {} {}\r\n", 1 + i, 5_000 + i));
    }
    sdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_offers_from_the_waiting_room_leaves_another_call_running() {
    let server = start(); // one SFU worker: the attacker's lobby and the visit share it
    let (doctor_media, patient_media, doctor, patient) = visit(&server, "visit-media").await;
    let mut doctor_events = doctor.negotiate_in_background(&doctor_media);
    let _patient_events = patient.negotiate_in_background(&patient_media);

    // Both send 30 frames a second until told to stop.
    let sender = FrameSender::start(doctor_media, patient_media);
    // Wait for the picture: the clinician decodes the patient's frames.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A patient of another meeting, never admitted, floods offers from its waiting room.
    let attacker_token = server.token("visit-other", "pat-evil", "Eve", "patient");
    let mut attacker = server.connect(&attacker_token).await;
    attacker.next_of("welcome").await;
    let template = MediaPeer::new("attacker").await.offer();
    let offer = flood_offer(&template);
    assert!(
        offer.len() > 55_000 && offer.len() < 64 * 1024,
        "{}",
        offer.len()
    );
    let message = json!({"type": "offer", "sdp": offer}).to_string();
    let flood_start = Instant::now();
    let (mut ws_tx, mut ws_rx) = futures_util::StreamExt::split(attacker.ws);
    let writer = tokio::spawn(async move {
        use futures_util::SinkExt;
        for _ in 0..3_000 {
            ws_tx
                .send(tokio_tungstenite::tungstenite::Message::Text(
                    message.clone().into(),
                ))
                .await
                .unwrap();
        }
        Instant::now()
    });
    let replies = tokio::spawn(async move {
        let mut codes = std::collections::HashMap::<String, usize>::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(
            Duration::from_secs(3),
            futures_util::StreamExt::next(&mut ws_rx),
        )
        .await
        {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                *codes
                    .entry(v["code"].as_str().unwrap_or("").to_owned())
                    .or_default() += 1;
            }
        }
        codes
    });
    let flood_end = writer.await.unwrap();
    let codes = replies.await.unwrap();
    let measured_to = flood_end.max(flood_start + Duration::from_secs(4)) + Duration::from_secs(2);
    tokio::time::sleep_until(measured_to.into()).await;
    let (doctor_media, patient_media) = sender.stop().await;

    eprintln!(
        "flood of 3,000 offers sent in {:?}; replies {codes:?}",
        flood_end - flood_start
    );

    // The call on the same worker kept its picture, second by second, both ways.
    let window = (flood_start - Duration::from_secs(1), measured_to);
    for (who, media) in [("clinician", &doctor_media), ("patient", &patient_media)] {
        let fps = frames_per_second(&media.video_frames(), window.0, window.1);
        eprintln!("{who} receives frames per second: {fps:?}");
        assert!(fps.len() >= 5, "{fps:?}");
        assert!(
            fps.iter().all(|&f| f >= 25),
            "the {who}'s picture dropped below 25 frames/s during the flood: {fps:?}"
        );
    }
    // Every offer is refused, for its size first, then for the rate.
    assert!(codes.get("bad_sdp").copied().unwrap_or(0) >= 1, "{codes:?}");
    assert!(
        codes.get("sdp_rate").copied().unwrap_or(0) >= 2_900,
        "{codes:?}"
    );
    assert!(
        !codes.contains_key("sfu_refused"),
        "nothing reached the SFU: {codes:?}"
    );
    let _ = doctor_events.try_recv();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_request_for_an_m_line_that_receives_no_video_gets_bad_mid() {
    let server = start();
    let (_d, _patient_media, _doctor, mut patient) = visit(&server, "visit-mid").await;
    patient
        .send(json!({"type": "preferred_layer", "layer": "low", "mid": "no-such-line"}))
        .await;
    let err = patient.next_of("error").await;
    assert_eq!(err["code"], "bad_mid", "{err}");
}

/// An offer of the client's that crosses one of the SFU's (glare) is answered `offer_crossed`,
/// which clients treat as "answer the SFU's offer first, then offer again" — not as the
/// `sfu_refused` error it used to be; once the SFU's offer is answered, the same offer goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_crossing_the_sfus_is_told_so_and_goes_through_after_the_answer() {
    let server = start();
    let (doctor_media, _patient_media, mut doctor, _patient) = visit(&server, "visit-glare").await;
    // The patient's tracks make the SFU offer them to the clinician; unanswered for now.
    let sfu_offer = doctor.next_of("offer").await;
    doctor
        .send(json!({"type": "offer", "sdp": doctor_media.offer()}))
        .await;
    let err = doctor.next_of("error").await;
    assert_eq!(err["code"], "offer_crossed", "{err}");
    // The SFU's offer answered, the clinician's own offer is taken.
    let answer = doctor_media
        .peer
        .lock()
        .unwrap()
        .answer_offer(Instant::now(), sfu_offer["sdp"].as_str().unwrap());
    doctor.send(json!({"type": "answer", "sdp": answer})).await;
    offer_is_answered(&mut doctor, &doctor_media).await;
}

/// A client that cannot apply the SFU's offer declines it (`reject_offer`): told
/// `offer_unanswered` at once (not after three sends, 30 s), and its own offer is taken next
/// instead of crossing an offer still out. Declining with nothing out is `no_offer_pending`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_sfu_offer_is_given_up_at_once() {
    let server = start();
    let (doctor_media, _patient_media, mut doctor, _patient) =
        visit(&server, "visit-decline").await;
    // The patient's tracks make the SFU offer them to the clinician, who cannot take it.
    let sfu_offer = doctor.next_of("offer").await;
    let asked = Instant::now();
    doctor.send(json!({"type": "reject_offer"})).await;
    let err = doctor.next_of("error").await;
    assert_eq!(err["code"], "offer_unanswered", "{err}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "given up in {:?}",
        asked.elapsed()
    );
    doctor.send(json!({"type": "reject_offer"})).await;
    let err = doctor.next_of("error").await;
    assert_eq!(err["code"], "no_offer_pending", "{err}");
    // An answer to the offer given up (late, or sent twice) is the same: nothing pending, not
    // a failure of the session (`sfu_refused` made clients restart it).
    let late = doctor_media
        .peer
        .lock()
        .unwrap()
        .answer_offer(Instant::now(), sfu_offer["sdp"].as_str().unwrap());
    doctor.send(json!({"type": "answer", "sdp": late})).await;
    let err = doctor.next_of("error").await;
    assert_eq!(err["code"], "no_offer_pending", "{err}");
    // Nothing is out any more: the clinician's own offer is answered, not `offer_crossed`.
    offer_is_answered(&mut doctor, &doctor_media).await;
}

/// The client's own offer goes through: the SFU answers it.
async fn offer_is_answered(client: &mut support::Client, media: &MediaPeer) {
    client
        .send(json!({"type": "offer", "sdp": media.offer()}))
        .await;
    let answered = client.next_of("answer").await;
    assert!(
        answered["sdp"]
            .as_str()
            .is_some_and(|s| s.starts_with("v=0")),
        "{answered}"
    );
}

/// An offer with more m-lines than the SFU takes is refused by signaling (`bad_sdp`) before it
/// starts a media session: a refusal that came back from the SFU after a later session had
/// started used to cut that later session loose from removals and moves to the lobby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_more_lines_than_the_sfu_takes_is_refused_before_it_gets_there() {
    let server = start();
    let (_d, patient_media, _doctor, mut patient) = visit(&server, "visit-lines").await;
    let offer = patient_media.offer();
    let audio = offer.find("m=audio").expect("an audio line");
    let end = offer[audio + 1..]
        .find("m=")
        .map_or(offer.len(), |n| audio + 1 + n);
    let section = &offer[audio..end];
    let mid_at = section.find("a=mid:").unwrap() + "a=mid:".len();
    let mid = section[mid_at..].split("\r\n").next().unwrap();
    let mut many = offer.clone();
    for n in 0..64 {
        many.push_str(&section.replace(&format!("a=mid:{mid}\r\n"), &format!("a=mid:x{n}\r\n")));
    }
    assert!(many.matches("m=").count() > 64);
    patient
        .send(json!({"type": "offer", "sdp": many, "restart": true}))
        .await;
    let err = patient.next_of("error").await;
    assert_eq!(err["code"], "bad_sdp", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("at most 64 m-lines"),
        "{err}"
    );
}
