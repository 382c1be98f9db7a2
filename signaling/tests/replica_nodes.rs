//! Two signaling replicas in remote mode sharing meetings through a real redis-server, and a
//! real `sfu` node linked to both (ADR 5): a visit whose clinician reaches one replica and
//! whose patient reaches the other has its media on the node; when the replica running it
//! stops (SIGTERM, a rollout) or is killed, the other takes the visit over — the clients
//! come back with their resume keys as the same participants, the node's media sessions are
//! adopted, and the media never stops.

mod support;

use support::{Kill, until};

use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::media::{MediaPeer, assert_media_flowed, send_frames};
use support::redis::{Redis, free_port};
use support::{API_KEY, Server, api_at, join_retrying_with, joined, node_participants};

/// A replica in remote mode, its control listener for the nodes.
struct Replica {
    server: Server,
    internal: String,
    control: String,
}

fn replica(store: &str, certs: &std::path::Path, key: &std::path::Path) -> Replica {
    let control = format!("127.0.0.1:{}", free_udp_port());
    let file = |name: &str| certs.join(name).display().to_string();
    let (ca, cert, cert_key) = (file("ca.pem"), file("signaling.pem"), file("signaling.key"));
    let support::Replica { server, internal } = support::start_replica(
        store,
        key,
        &[
            "--sfu-mode",
            "remote",
            "--sfu-listen",
            &control,
            "--cluster-ca",
            &ca,
            "--cluster-cert",
            &cert,
            "--cluster-key",
            &cert_key,
        ],
    );
    Replica {
        server,
        internal,
        control,
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn ready(base: &str) -> bool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    matches!(reqwest::get(format!("{base}/readyz")).await, Ok(r) if r.status() == 200)
}

/// Redis, two replicas in remote mode and one real `sfu` node linked to both; `meeting`
/// booked through B.
struct Cluster {
    dir: std::path::PathBuf,
    redis: Option<Redis>,
    a: Replica,
    b: Replica,
    node: Kill,
    /// The node's metrics listener.
    metrics: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.redis.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    async fn start(meeting: &str) -> Self {
        let sfu_bin = std::path::Path::new(env!("CARGO_BIN_EXE_signaling")).with_file_name("sfu");
        assert!(
            sfu_bin.exists(),
            "build the sfu binary first (cargo build --workspace --bins)"
        );
        let dir = std::env::temp_dir().join(format!("hc-replica-nodes-{}", rand::random::<u64>()));
        let certs = dir.join("certs");
        let out = Command::new(env!("CARGO_BIN_EXE_signaling"))
            .arg("cluster-certs")
            .arg("--out")
            .arg(&certs)
            .args(["--node", "sfu-a"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let redis = Redis::persistent(free_port(), &dir.join("redis"));
        let key = dir.join("issuer.key");
        let a = replica(&redis.url(), &certs, &key);
        let b = replica(&redis.url(), &certs, &key);
        // One node, linked to both replicas.
        let metrics = format!("127.0.0.1:{}", free_port());
        let file = |name: &str| certs.join(name).display().to_string();
        let node = Kill(
            Command::new(&sfu_bin)
                .args(["--signaling", &format!("{},{}", a.control, b.control)])
                .args(["--node-id", "sfu-a"])
                .args(["--cluster-ca", &file("ca.pem")])
                .args(["--cluster-cert", &file("sfu-a.pem")])
                .args(["--cluster-key", &file("sfu-a.key")])
                .args(["--bind-ip", "127.0.0.1", "--advertise-ip", "127.0.0.1"])
                .args(["--workers", "1", "--metrics-listen", &metrics])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        until("the node linked to both replicas", 20, async || {
            ready(&a.server.http_base).await && ready(&b.server.http_base).await
        })
        .await;
        let now = jiff::Timestamp::now();
        let (status, m) = api_at(
            &b.internal,
            "POST",
            "/api/v1/meetings",
            Some(API_KEY),
            Some(json!({
                "id": meeting,
                "unit": "unit-1",
                "start": (now - jiff::SignedDuration::from_mins(5)).to_string(),
                "end": (now + jiff::SignedDuration::from_mins(60)).to_string(),
            })),
        )
        .await;
        assert_eq!(status, 201, "{m}");
        Self {
            dir,
            redis: Some(redis),
            a,
            b,
            node,
            metrics,
        }
    }
}

/// How replica A goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// SIGTERM, as a rollout stops it: it hands its meetings over at once.
    Terminate,
    /// SIGKILL (a crash, an OOM kill): no hand-over; its leases run out.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replicas_visit_goes_on_through_the_other_with_no_media_lost() {
    replica_goes_and_no_media_is_lost("v-handover", Stop::Terminate).await;
}

/// The replica running a visit is killed (no hand-over): the node keeps the visit's media
/// running, and the store carries each session under its client's resume key. The clients
/// come back through the other replica once the lease runs out, the patient still admitted,
/// and keep their sessions: no media is lost, and the node runs no new sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_visit_goes_on_through_the_other_with_no_media_lost() {
    replica_goes_and_no_media_is_lost("v-killed", Stop::Kill).await;
}

/// A visit with its clinician on replica A (which takes the visit) and its patient on B
/// (relayed to A), its media on the node; A goes (`stop`); both come back through B with
/// their keys — the same participants, media kept, the patient still admitted — and B
/// commands the adopted sessions.
async fn replica_goes_and_no_media_is_lost(meeting: &str, stop: Stop) {
    let mut cluster = Cluster::start(meeting).await;
    let metrics = cluster.metrics.clone();
    let (a, b) = (&mut cluster.a, &cluster.b);
    let doctor_token = a.server.token(meeting, "doc-4411", "Dr Berg", "clinician");
    let patient_token = a.server.token(meeting, "pat-7f3a", "Anna", "patient");
    let (mut doctor, doctor_welcome, doctor_key) = joined(&a.server, &doctor_token, "").await;
    let (mut patient, patient_welcome, patient_key) = joined(&b.server, &patient_token, "").await;
    let patient_id = doctor.first_waiting().await;
    doctor
        .send(json!({"type": "admit", "participant": patient_id}))
        .await;
    patient.next_of("admitted").await;
    let doctor_media = Arc::new(MediaPeer::new("doctor").await);
    let patient_media = Arc::new(MediaPeer::new("patient").await);
    doctor.start_media(&doctor_media).await;
    patient.start_media(&patient_media).await;
    let doctor_events = doctor.negotiate_in_background(&doctor_media);
    let patient_events = patient.negotiate_in_background(&patient_media);
    let _sending = send_frames([doctor_media.clone(), patient_media.clone()]);
    until("media both ways through the node", 15, async || {
        doctor_media.video_frames().len() > 30 && patient_media.video_frames().len() > 30
    })
    .await;
    assert_eq!(node_participants(&metrics).await, Some(2));

    let stopped = Instant::now();
    match stop {
        Stop::Terminate => {
            let (status, took) = a.server.terminate();
            assert!(status.success(), "replica A exited with {status}");
            eprintln!("replica A stopped in {took:?}");
        }
        Stop::Kill => a.server.kill(),
    }
    // After a kill B answers 503 until A's lease has run out.
    let back = |token: String, key: String| async move {
        let query = format!("&resume={key}");
        let (mut client, _) =
            join_retrying_with(&b.server, &token, &query, Duration::from_secs(15)).await;
        let welcome = client.next_of("welcome").await;
        (client, welcome)
    };
    let (mut doctor2, welcome) = back(doctor_token, doctor_key).await;
    assert_eq!(welcome["participant"], doctor_welcome["participant"]);
    assert_eq!(welcome["media"], "kept", "{welcome}");
    let (patient2, welcome) = back(patient_token, patient_key).await;
    assert_eq!(welcome["participant"], patient_welcome["participant"]);
    assert_eq!(welcome["state"], "admitted", "admission kept: {welcome}");
    assert_eq!(welcome["media"], "kept", "{welcome}");
    let back_after = stopped.elapsed();
    eprintln!("clients back through B {back_after:?} after replica A's {stop:?}");
    if stop == Stop::Terminate {
        // A stopping replica lets its leases go: B takes the visit at once, not once the
        // 6 s lease has run out.
        assert!(
            back_after < Duration::from_secs(3),
            "back only after {back_after:?}: the hand-over let no lease go"
        );
    }
    doctor2
        .send(json!({"type": "chat", "text": "hör du mig?"}))
        .await;
    // B commands the adopted sessions on the node: what the SFU knows of the clinician's
    // link comes back (a session B had not adopted would be refused: no node holds it).
    doctor2.send(json!({"type": "link_report"})).await;
    let report = doctor2.next_of("link_report").await;
    assert!(report["videos"].is_array(), "{report}");
    let patient2_events = patient2.negotiate_in_background(&patient_media);
    let doctor2_events = doctor2.negotiate_in_background(&doctor_media);
    let what = format!("replica A's {stop:?}");
    assert_media_flowed(&doctor_media, &patient_media, stopped, &what).await;
    assert_eq!(
        node_participants(&metrics).await,
        Some(2),
        "the node runs the same two sessions, no new ones"
    );
    support::assert_undisturbed(
        vec![
            doctor_events,
            patient_events,
            patient2_events,
            doctor2_events,
        ],
        "hör du mig?",
    );
}

/// The node loses its links to both replicas (stopped for longer than the link's idle
/// timeout, as a network partition would) but keeps running its sessions; the replica running
/// the visit tells its clients their media ended. When the node links again and lists the
/// sessions it kept, that replica ends them — though the replicas share the node — rather
/// than leave them running unmanaged: a removal or a move to the waiting room would no longer
/// reach them (the sessions ran on with the permissions they had).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_a_replica_lost_with_a_nodes_link_are_ended_when_the_node_links_again() {
    let cluster = Cluster::start("v-partition").await;
    let a = &cluster.a;
    let visit = support::media::running_visit(&a.server, "v-partition").await;
    assert_eq!(node_participants(&cluster.metrics).await, Some(2));

    let signal = |sig: &str| {
        let sent = Command::new("kill")
            .args([sig, &cluster.node.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal("-CONT");
    // The clients were told (they start no new sessions here).
    until("the patient told their media ended", 10, async || {
        a.server
            .audit_events("media_stop")
            .iter()
            .any(|e| e["subject"] == "pat-7f3a")
    })
    .await;
    until("the node linked to both replicas again", 20, async || {
        ready(&a.server.http_base).await && ready(&cluster.b.server.http_base).await
    })
    .await;
    until("the sessions the node kept are ended", 10, async || {
        node_participants(&cluster.metrics).await == Some(0)
    })
    .await;
    let received = visit.patient_media.video_frames().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        visit.patient_media.video_frames().len(),
        received,
        "the patient's ended session still received the clinician's video"
    );
}
