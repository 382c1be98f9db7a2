//! A signaling restart (SIGTERM, as Kubernetes and systemd stop it; then started again): the
//! process ends within its grace period with the audit log closed, every client is told to
//! connect again (`closing` reason `restarting`, close 1012), and whoever was admitted comes
//! back past the waiting room; whoever waited, waits.

mod support;

use futures_util::StreamExt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The `closing` message and the close code a client got.
async fn told_to_reconnect(client: &mut support::Client) -> (serde_json::Value, u16) {
    let mut closing = serde_json::Value::Null;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), client.ws.next())
            .await
            .expect("told within 5 s");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "closing" {
                    closing = v;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return (closing, frame.map_or(0, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            other => panic!("the connection ended without a close: {other:?}"),
        }
    }
}

/// A visit on a service with a meeting store: the clinician, the admitted patient, a second
/// patient still waiting, and the tokens to come back with.
struct Scene {
    server: support::Server,
    dir: std::path::PathBuf,
    store: String,
    doctor: support::Client,
    patient: support::Client,
    waiting: support::Client,
    patient_token: String,
    waiting_token: String,
}

async fn scene(meeting: &str) -> Scene {
    let dir = std::env::temp_dir().join(format!("hc-{meeting}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("meetings.json").display().to_string();
    let server = support::start_with(&["--meeting-store", &store]);
    let doctor_token = server.token(meeting, "doc-4411", "Dr Berg", "clinician");
    let patient_token = server.token(meeting, "pat-7f3a", "Anna", "patient");
    let waiting_token = server.token(meeting, "pat-9c2e", "Bo", "patient");
    let (doctor, patient) =
        support::media::admitted_pair(&server, &doctor_token, &patient_token).await;
    let mut waiting = server.connect(&waiting_token).await;
    assert_eq!(waiting.next_of("welcome").await["state"], "waiting");
    Scene {
        server,
        dir,
        store,
        doctor,
        patient,
        waiting,
        patient_token,
        waiting_token,
    }
}

/// After the restart: the admitted patient skips the waiting room, the waiting one waits.
async fn admissions_kept(scene: &Scene) {
    let mut patient = scene.server.connect(&scene.patient_token).await;
    assert_eq!(
        patient.next_of("welcome").await["state"],
        "admitted",
        "the admitted patient skips the waiting room after the restart"
    );
    let mut waiting = scene.server.connect(&scene.waiting_token).await;
    assert_eq!(waiting.next_of("welcome").await["state"], "waiting");
}

#[tokio::test]
async fn a_restart_tells_clients_to_reconnect_and_keeps_who_was_admitted() {
    let mut scene = scene("visit-r").await;
    let server = &mut scene.server;
    let (status, took) = server.terminate();
    assert!(status.success(), "signaling exited with {status}");
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    for client in [&mut scene.doctor, &mut scene.patient, &mut scene.waiting] {
        let (closing, code) = told_to_reconnect(client).await;
        assert_eq!(closing["reason"], "restarting");
        assert_eq!(code, 1012, "RFC 6455's Service Restart");
    }
    // The audit log was closed: its last line is the closing checkpoint.
    let audit = std::fs::read_to_string(&server.audit).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "checkpoint", "{last}");
    assert_eq!(last["code"], "close", "{last}");
    // ...after each connection's `leave`, written as the clients were told to go.
    let leaves = audit
        .lines()
        .filter(|l| l.contains("\"event\":\"leave\""))
        .count();
    assert_eq!(leaves, 3, "{audit}");
    // The store keeps who was admitted and who waited where (pseudonymous subjects only).
    let stored = std::fs::read_to_string(&scene.store).unwrap();
    let record: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&stored).unwrap()[0].clone();
    assert_eq!(record["readmit"][0]["sub"], "pat-7f3a", "{stored}");
    assert_eq!(
        record["readmit"].as_array().map(Vec::len),
        Some(1),
        "{stored}"
    );
    assert_eq!(record["queue"][0]["sub"], "pat-9c2e", "{stored}");
    for name in ["Anna", "Bo", "Dr Berg"] {
        assert!(!stored.contains(name), "a name in the store: {stored}");
    }
    assert_eq!(
        record["queue"].as_array().map(Vec::len),
        Some(1),
        "{stored}"
    );

    scene.server.restart();
    admissions_kept(&scene).await;
    // Stopped first: the service writes its store while a meeting is in use.
    scene.server.kill();
    std::fs::remove_dir_all(&scene.dir).unwrap();
}

/// A participant whose phone lost the network just before a restart is parked for a resume,
/// with no connection left to write its end: the hand-over writes its `leave` before the log
/// closes (before, its `join` stayed open in the old log, and the next run wrote another).
#[tokio::test]
async fn a_restart_writes_the_end_of_a_participant_whose_socket_had_dropped() {
    let Scene {
        mut server,
        dir,
        doctor,
        patient,
        waiting,
        ..
    } = scene("visit-p").await;
    // Bo's socket goes without a close: parked.
    drop(waiting);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = server.terminate();
    assert!(status.success(), "signaling exited with {status}");
    let leaves = server.audit_events("leave");
    let bo: Vec<&serde_json::Value> = leaves
        .iter()
        .filter(|l| l["subject"] == "pat-9c2e")
        .collect();
    assert_eq!(bo.len(), 1, "Bo's end: {leaves:?}");
    assert_eq!(bo[0]["code"], "handed_over", "{}", bo[0]);
    assert_eq!(leaves.len(), 3, "{leaves:?}");
    let audit = std::fs::read_to_string(&server.audit).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["event"].as_str(), last["code"].as_str()),
        (Some("checkpoint"), Some("close"))
    );
    drop((doctor, patient));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Not stopped but killed (a crash, an OOM kill, a node lost): whoever was admitted is still
/// let back in past the waiting room — the store is written when someone is admitted.
#[tokio::test]
async fn after_a_crash_the_admitted_patient_still_skips_the_waiting_room() {
    let mut scene = scene("visit-k").await;
    scene.server.restart(); // SIGKILL, then started again on the same files
    admissions_kept(&scene).await;
    // Stopped first: the service writes its store while a meeting is in use.
    scene.server.kill();
    std::fs::remove_dir_all(&scene.dir).unwrap();
}
