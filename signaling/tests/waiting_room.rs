//! A full scripted visit over the join WebSocket of a running service: the waiting room,
//! every clinician action, chat, a device switch and a reconnect; then the audit log of it
//! (verify, tampering caught at the line, the patient's extract) and the privacy of all logs.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::start;

const CHAT_TEXT: &str = "Mitt personnummer är 19121212-1212, hur mår du?";

fn mentions(msgs: &[Value], needle: &str) -> bool {
    msgs.iter().any(|m| m.to_string().contains(needle))
}

#[tokio::test]
async fn a_visit_from_the_waiting_room_to_the_end() {
    let server = start();
    let meeting = "visit-1";
    let patient_token = server.token(meeting, "pat-7f3a", "Anna Patient", "patient");
    let companion_token = server.token(meeting, "comp-19b2", "Bo Anhörig", "companion");
    let doctor_token = server.token(meeting, "doc-4411", "Dr Cecilia Berg", "clinician");

    // The patient and a companion wait; each learns only their place in the queue.
    let mut patient = server.connect(&patient_token).await;
    let w = patient.next_of("welcome").await;
    assert_eq!(w["state"], "waiting");
    assert!(w.get("participants").is_none(), "the lobby learns nobody");
    assert_eq!(patient.next_of("lobby_position").await["position"], 1);
    let mut companion = server.connect(&companion_token).await;
    assert_eq!(companion.next_of("welcome").await["state"], "waiting");
    assert_eq!(companion.next_of("lobby_position").await["position"], 2);

    // The clinician sees both in the lobby, in order, with role and waiting time.
    let mut doctor = server.connect(&doctor_token).await;
    let w = doctor.next_of("welcome").await;
    assert_eq!(w["state"], "admitted");
    assert_eq!(
        w["participants"],
        json!([]),
        "people in the lobby are not in the meeting"
    );
    let lobby = doctor.next_of("lobby").await;
    let waiting = lobby["waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 2);
    assert_eq!(
        (waiting[0]["name"].as_str(), waiting[0]["role"].as_str()),
        (Some("Anna Patient"), Some("patient"))
    );
    assert_eq!(waiting[1]["role"], "companion");
    assert!(waiting[0]["since"].as_str().is_some());
    let patient_id = waiting[0]["participant"].clone();
    let companion_id = waiting[1]["participant"].clone();
    let doctor_id = w["participant"].clone();

    // Nothing about the clinician reaches the lobby, and the lobby can neither chat nor act.
    let heard = patient.drain(Duration::from_millis(300)).await;
    assert!(
        !mentions(&heard, "Cecilia") && !mentions(&heard, doctor_id.as_str().unwrap()),
        "{heard:?}"
    );
    patient
        .send(json!({"type": "chat", "text": "hallå?"}))
        .await;
    assert_eq!(
        patient.next_of("error").await["code"],
        "waiting_for_admission"
    );
    patient
        .send(json!({"type": "admit", "participant": companion_id}))
        .await;
    assert_eq!(patient.next_of("error").await["code"], "not_allowed");

    // Admit: the patient gets the meeting's roster; the companion moves up.
    doctor
        .send(json!({"type": "admit", "participant": patient_id}))
        .await;
    let admitted = patient.next_of("admitted").await;
    assert_eq!(admitted["participants"][0]["name"], "Dr Cecilia Berg");
    assert_eq!(
        doctor.next_of("participant_joined").await["name"],
        "Anna Patient"
    );
    assert_eq!(companion.next_of("lobby_position").await["position"], 1);

    // Chat reaches the admitted only, within size and rate limits.
    doctor
        .send(json!({"type": "chat", "text": CHAT_TEXT}))
        .await;
    assert_eq!(patient.next_of("chat").await["text"], CHAT_TEXT);
    assert_eq!(doctor.next_of("chat").await["name"], "Dr Cecilia Berg");
    let long = "a".repeat(1001);
    patient.send(json!({"type": "chat", "text": long})).await;
    assert_eq!(patient.next_of("error").await["code"], "chat_size");
    for i in 0..6 {
        patient
            .send(json!({"type": "chat", "text": format!("{i}")}))
            .await;
    }
    assert_eq!(patient.next_of("error").await["code"], "chat_rate");
    // Layer requests: an unknown layer is an unreadable message; without a media session
    // there is nothing to choose a layer of.
    patient
        .send(json!({"type": "preferred_layer", "layer": "huge"}))
        .await;
    assert_eq!(patient.next_of("error").await["code"], "bad_message");
    patient
        .send(json!({"type": "preferred_layer", "layer": "low", "mid": "3"}))
        .await;
    assert_eq!(patient.next_of("error").await["code"], "no_media_session");
    let heard = companion.drain(Duration::from_millis(300)).await;
    assert!(
        !heard.iter().any(|m| m["type"] == "chat"),
        "the lobby hears no chat: {heard:?}"
    );

    // Back to the lobby and admitted again.
    doctor
        .send(json!({"type": "to_lobby", "participant": patient_id}))
        .await;
    assert_eq!(patient.next_of("returned_to_lobby").await["position"], 2);
    assert_eq!(
        doctor.next_of("participant_left").await["participant"],
        patient_id
    );
    doctor
        .send(json!({"type": "admit", "participant": patient_id}))
        .await;
    patient.next_of("admitted").await;

    // A device switch: the same person on a second connection replaces the first, admitted.
    let mut patient2 = server.connect(&patient_token).await;
    let (closing, code) = patient.closed().await;
    assert_eq!(
        (closing["reason"].as_str(), code),
        (Some("replaced"), Some(4005))
    );
    assert_eq!(patient2.next_of("welcome").await["state"], "admitted");

    // A connection closed (a page reloaded) and back within the grace keeps its admission.
    // (One that drops without a close waits for a resume first: tests/session_resume.rs.)
    patient2.ws.close(None).await.unwrap();
    drop(patient2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut patient3 = server.connect(&patient_token).await;
    let w = patient3.next_of("welcome").await;
    assert_eq!(w["state"], "admitted");
    let patient3_id = w["participant"].clone();

    // Deny: told, disconnected, and kept out.
    doctor.drain(Duration::from_millis(200)).await;
    doctor
        .send(json!({"type": "deny", "participant": companion_id}))
        .await;
    let (closing, code) = companion.closed().await;
    assert_eq!(
        (closing["reason"].as_str(), code),
        (Some("denied"), Some(4001))
    );
    assert!(closing["message"].as_str().is_some_and(|m| !m.is_empty()));
    let (status, body) = server.refused(&format!("token={companion_token}")).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("denied")));

    // Remove: disconnected; coming back means waiting again.
    doctor
        .send(json!({"type": "remove", "participant": patient3_id}))
        .await;
    let (closing, code) = patient3.closed().await;
    assert_eq!(
        (closing["reason"].as_str(), code),
        (Some("removed"), Some(4002))
    );
    let mut patient4 = server.connect(&patient_token).await;
    assert_eq!(patient4.next_of("welcome").await["state"], "waiting");

    // The clinician switches device: the new connection regains control, lobby included.
    let mut doctor2 = server.connect(&doctor_token).await;
    let (closing, _) = doctor.closed().await;
    assert_eq!(closing["reason"], "replaced");
    assert_eq!(doctor2.next_of("welcome").await["state"], "admitted");
    assert_eq!(
        doctor2.next_of("lobby").await["waiting"][0]["name"],
        "Anna Patient"
    );

    // End: everyone is disconnected.
    doctor2.send(json!({"type": "end_meeting"})).await;
    for c in [&mut doctor2, &mut patient4] {
        let (closing, code) = c.closed().await;
        assert_eq!(
            (closing["reason"].as_str(), code),
            (Some("meeting_ended"), Some(4003))
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The audit trail of the visit: every access, the acting clinician on each action.
    let doctor_hsa = "SE2321000016-doc4411";
    for event in [
        "lobby_enter",
        "admit",
        "back_to_lobby",
        "deny",
        "remove",
        "replaced",
        "meeting_end",
        "leave",
        "join",
    ] {
        assert!(!server.audit_events(event).is_empty(), "no {event} line");
    }
    for event in ["back_to_lobby", "deny", "remove", "meeting_end"] {
        for line in server.audit_events(event) {
            assert_eq!(line["actor_hsa"], doctor_hsa, "{event}: {line}");
            assert_eq!(line["actor_unit"], "unit-1");
        }
    }
    let admits = server.audit_events("admit");
    assert!(
        admits
            .iter()
            .any(|l| l["actor_hsa"] == doctor_hsa && l["subject"] == "pat-7f3a")
    );

    // verify passes; a changed, removed or swapped line is named.
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["audit", "verify", "--running"])
        .arg(&server.audit)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let text = server.audit_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 15, "a full visit: {} lines", lines.len());
    let tampered = server.dir.join("tampered.jsonl");
    let fails_at = |content: String, line: usize, what: &str| {
        std::fs::write(&tampered, content).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
            .args(["audit", "verify"])
            .arg(&tampered)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} line {line} went unnoticed");
        assert!(
            err.contains(&format!("line {line}:")),
            "{what} line {line}: {err}"
        );
    };
    for i in 0..lines.len() {
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        edited[i] = edited[i].replacen("\"event\":\"", "\"event\":\"x", 1);
        fails_at(edited.join("\n") + "\n", i + 1, "edited");
        if i + 1 < lines.len() {
            let mut removed: Vec<&str> = lines.clone();
            removed.remove(i);
            fails_at(removed.join("\n") + "\n", i + 1, "removed");
            let mut swapped: Vec<&str> = lines.clone();
            swapped.swap(i, i + 1);
            fails_at(swapped.join("\n") + "\n", i + 1, "swapped");
        }
    }

    // The patient's extract names the clinician and the care unit (checked against the
    // service's public key).
    let public = server.audit_public_key();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args([
            "audit",
            "extract",
            "--subject",
            "pat-7f3a",
            "--public-key",
            &public,
        ])
        .arg(&server.audit)
        .output()
        .unwrap();
    let extract = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        extract.contains(&format!("staff: {doctor_hsa} (unit-1)")),
        "{extract}"
    );
    assert!(extract.contains("meeting visit-1"), "{extract}");

    // Privacy: no identity number, SDP or chat text in the service's logs or the audit log.
    let pnr = regex_lite::Regex::new(r"\b(19|20)\d{6}[-+]?\d{4}\b").unwrap();
    let logs = std::fs::read_to_string(&server.log).unwrap();
    let stdout = server.stdout.lock().unwrap().clone();
    assert!(logs.contains("joined"), "the service logged the visit");
    for (name, text) in [
        ("log", &logs),
        ("stdout", &stdout),
        ("audit", &server.audit_text()),
        ("extract", &extract.to_string()),
    ] {
        if let Some(m) = pnr.find(text) {
            let around = &text[m.start().saturating_sub(120)..(m.end() + 60).min(text.len())];
            panic!("{name} holds an identity number: …{around}…");
        }
        assert!(!text.contains("a=fingerprint"), "{name} holds SDP");
        assert!(!text.contains("hur mår du"), "{name} holds chat text");
    }
}
