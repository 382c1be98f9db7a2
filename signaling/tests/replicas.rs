//! Two signaling replicas sharing meetings through a real redis-server (ADR 5): a meeting is
//! run by the replica holding its lease, and a client that reaches the other replica is
//! relayed to it — lobby, admission, chat, the meetings API and media all work across them.
//! When the owner is killed, the meeting's clients come back through the other replica,
//! which takes the meeting over with who was admitted and who waits in which order.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::media::{FrameSender, MediaPeer, frames_per_second};
use support::redis::{Redis, free_port};
use support::{API_KEY, Client, REPLICA_SECRET, Replica, api_at, join_retrying};

fn replica(store: &str, key: &std::path::Path) -> Replica {
    support::start_replica(store, key, &[])
}

fn booking(id: &str) -> Value {
    let now = jiff::Timestamp::now();
    json!({
        "id": id,
        "unit": "unit-1",
        "start": (now - jiff::SignedDuration::from_mins(5)).to_string(),
        "end": (now + jiff::SignedDuration::from_mins(60)).to_string(),
    })
}

/// A persistent Redis in a new directory, two replicas sharing it, and meeting `id` booked
/// through B.
async fn two_replicas_and_a_booking(id: &str) -> (std::path::PathBuf, Redis, Replica, Replica) {
    let dir = std::env::temp_dir().join(format!("hc-replicas-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::persistent(free_port(), &dir.join("redis"));
    let key = dir.join("issuer.key");
    let a = replica(&redis.url(), &key);
    let b = replica(&redis.url(), &key);
    let (status, m) = api_at(
        &b.internal,
        "POST",
        "/api/v1/meetings",
        Some(API_KEY),
        Some(booking(id)),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    (dir, redis, a, b)
}

/// The next chat line `client` gets from `name` (its own come back to it too).
async fn chat_from(client: &mut Client, name: &str) -> Value {
    loop {
        let chat = client.next_of("chat").await;
        if chat["name"] == name {
            return chat;
        }
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_runs_across_two_replicas_and_moves_when_its_owner_dies() {
    // Booked through B, joined first through A: A takes the meeting.
    let (dir, redis, a, b) = two_replicas_and_a_booking("v-replicas").await;
    let doctor_token = a
        .server
        .token("v-replicas", "doc-4411", "Dr Berg", "clinician");
    let patient_token = a.server.token("v-replicas", "pat-7f3a", "Anna", "patient");
    let mut doctor = a.server.connect(&doctor_token).await;
    doctor.next_of("welcome").await;

    // The patient reaches B, which relays to A: the same waiting room, admission and chat.
    let mut patient = b.server.connect(&patient_token).await;
    let welcome = patient.next_of("welcome").await;
    assert_eq!(
        (welcome["meeting"].as_str(), welcome["state"].as_str()),
        (Some("v-replicas"), Some("waiting")),
        "{welcome}"
    );
    let patient_id = doctor.first_waiting().await;
    assert_eq!(patient_id, welcome["participant"], "{welcome}");
    doctor
        .send(json!({"type": "admit", "participant": patient_id}))
        .await;
    patient.next_of("admitted").await;
    patient.send(json!({"type": "chat", "text": "hej"})).await;
    let chat = doctor.next_of("chat").await;
    assert_eq!(
        (chat["name"].as_str(), chat["text"].as_str()),
        (Some("Anna"), Some("hej"))
    );
    doctor
        .send(json!({"type": "chat", "text": "välkommen"}))
        .await;
    assert_eq!(
        chat_from(&mut patient, "Dr Berg").await["text"],
        "välkommen"
    );

    // Redis restarts mid-visit (append-only, as the chart runs it): the visit goes on, and
    // no booking is lost.
    let mut redis = redis;
    redis.restart();
    patient
        .send(json!({"type": "chat", "text": "hörs jag?"}))
        .await;
    assert_eq!(chat_from(&mut doctor, "Anna").await["text"], "hörs jag?");
    let (status, m) = api_at(
        &a.internal,
        "POST",
        "/api/v1/meetings",
        Some(API_KEY),
        Some(booking("v-after-restart")),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    let (status, list) = api_at(&b.internal, "GET", "/api/v1/meetings", Some(API_KEY), None).await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<(&str, &Value)> = list["meetings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap_or_default(), &m["admitted"]))
        .collect();
    assert_eq!(
        listed,
        [
            ("v-after-restart", &Value::Null),
            ("v-replicas", &Value::Null)
        ],
        "every booking, the live counts left to the owner: {list}"
    );

    // The meetings API through B is answered by A, which runs the meeting (and records the
    // read); through A itself the same.
    for base in [&b.internal, &a.internal] {
        let (status, list) = api_at(
            base,
            "GET",
            "/api/v1/meetings/v-replicas/participants",
            Some(API_KEY),
            None,
        )
        .await;
        assert_eq!(status, 200, "{list}");
        let states: Vec<&str> = list["participants"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["state"].as_str())
            .collect();
        assert_eq!(states.len(), 2, "{list}");
    }
    assert_eq!(a.server.audit_events("api_participants_read").len(), 2);
    assert!(b.server.audit_events("api_participants_read").is_empty());
    assert!(
        b.server.audit_events("join").is_empty(),
        "the owner records the join, not the replica that relayed it"
    );
    let (_, metrics) = api_at(&b.internal, "GET", "/metrics", None, None).await;
    let text = metrics["raw"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        metric(&text, "signaling_relayed_websockets_total"),
        1.0,
        "{text}"
    );

    // Media both ways through the owner's SFU, the patient's signaling relayed.
    let doctor_media = MediaPeer::new("doctor").await;
    let patient_media = MediaPeer::new("patient").await;
    doctor.start_media(&doctor_media).await;
    patient.start_media(&patient_media).await;
    let _doctor_events = doctor.negotiate_in_background(&doctor_media);
    let mut patient_events = patient.negotiate_in_background(&patient_media);
    let sender = FrameSender::start(doctor_media, patient_media);
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (doctor_media, patient_media) = sender.stop().await;
    for (who, media) in [("doctor", &doctor_media), ("patient", &patient_media)] {
        let fps = frames_per_second(
            &media.video_frames(),
            from + Duration::from_secs(1),
            Instant::now(),
        );
        assert!(
            fps.iter().all(|n| *n >= 20),
            "{who} receives video through the owner's SFU: {fps:?} frames a second"
        );
    }

    // Two more patients wait in the lobby, Wilma before Vera, both on A.
    let wilma_token = a.server.token("v-replicas", "pat-w1", "Wilma", "patient");
    let vera_token = a.server.token("v-replicas", "pat-w2", "Vera", "patient");
    let mut wilma = a.server.connect(&wilma_token).await;
    assert_eq!(wilma.next_of("lobby_position").await["position"], 1);
    let mut vera = a.server.connect(&vera_token).await;
    assert_eq!(vera.next_of("lobby_position").await["position"], 2);

    // A dies. The patient's relayed connection is told to connect again…
    let mut a = a;
    let killed = Instant::now();
    a.server.kill();
    let closing = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), patient_events.recv())
            .await
            .expect("the relay tells the patient")
            .expect("a closing message before the socket ends");
        if msg["type"] == "closing" {
            break msg;
        }
    };
    assert_eq!(closing["reason"], "restarting", "{closing}");

    // …and both come back through B, which takes the meeting over once A's lease runs out:
    // the patient admitted as before, without the waiting room.
    let (mut doctor, _) = join_retrying(&b.server, &doctor_token, Duration::from_secs(15)).await;
    doctor.next_of("welcome").await;
    let (mut patient, back) =
        join_retrying(&b.server, &patient_token, Duration::from_secs(15)).await;
    let welcome = patient.next_of("welcome").await;
    assert_eq!(welcome["state"], "admitted", "admission kept: {welcome}");
    let moved = back.duration_since(killed);
    assert!(
        moved < Duration::from_secs(10),
        "the meeting moved in {moved:?} (the lease is 6 s)"
    );
    eprintln!("the meeting moved to the other replica {moved:?} after its owner died");
    patient
        .send(json!({"type": "chat", "text": "är du kvar?"}))
        .await;
    assert_eq!(chat_from(&mut doctor, "Anna").await["text"], "är du kvar?");
    assert!(
        !b.server.audit_events("join").is_empty(),
        "B runs the meeting now and records its joins"
    );

    // The waiting room's order survived A too: Vera is back first, yet Wilma — back after
    // her — is first in the queue again, and the clinician sees them in that order.
    drop((wilma, vera));
    let mut vera = b.server.connect(&vera_token).await;
    assert_eq!(vera.next_of("welcome").await["state"], "waiting");
    assert_eq!(vera.next_of("lobby_position").await["position"], 1);
    let mut wilma = b.server.connect(&wilma_token).await;
    assert_eq!(wilma.next_of("lobby_position").await["position"], 1);
    assert_eq!(
        vera.next_of("lobby_position").await["position"],
        2,
        "Vera goes back behind Wilma"
    );
    let lobby = loop {
        let lobby = doctor.next_of("lobby").await;
        if lobby["waiting"].as_array().is_some_and(|w| w.len() == 2) {
            break lobby;
        }
    };
    let names: Vec<&str> = lobby["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["Wilma", "Vera"], "{lobby}");
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A relayed join must carry the replicas' secret: without it, the internal relay routes
/// refuse, and a client cannot pass itself off as relayed to choose its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_replicas_may_relay() {
    let dir = std::env::temp_dir().join(format!("hc-replicas-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::start(free_port());
    let a = replica(&redis.url(), &dir.join("issuer.key"));
    let token = a.server.token("v-x", "pat-1", "Anna", "patient");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    for secret in [None, Some("wrong-secret-0123456789abcdef0123456789")] {
        let mut req = client
            .post(format!("{}/relay/join", a.internal))
            .header("x-healthcare-relayed-for", "203.0.113.9")
            .json(&json!({"token": token}));
        if let Some(s) = secret {
            req = req.header("x-healthcare-relay", s);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "{secret:?}");
    }
    let resp = client
        .post(format!("{}/relay/join", a.internal))
        .header("x-healthcare-relay", REPLICA_SECRET)
        .header("x-healthcare-relayed-for", "203.0.113.9")
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replica that relays photos to the meeting's owner reads each body whole first: one
/// declared larger than a photo is refused before a byte of it is read, one person relays one
/// photo at a time, and bodies held half-sent take at most 64 MiB of the replica's memory —
/// past either, `replica_busy`. A body read is the owner's to judge (its answer comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaying_replica_holds_a_bounded_amount_of_half_sent_photos() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = std::env::temp_dir().join(format!("hc-replicas-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::start(free_port());
    let key = dir.join("issuer.key");
    let a = replica(&redis.url(), &key);
    let b = replica(&redis.url(), &key);
    let (status, m) = api_at(
        &a.internal,
        "POST",
        "/api/v1/meetings",
        Some(API_KEY),
        Some(booking("v-photos")),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    // A runs the meeting; the patients' photos reach B.
    let doctor = a.server.token("v-photos", "doc-1", "Dr Berg", "clinician");
    let mut doctor = a.server.connect(&doctor).await;
    doctor.next_of("welcome").await;
    let token = |n: usize| {
        a.server
            .token("v-photos", &format!("pat-{n}"), "Anna", "companion")
    };
    let at = b.server.http_base.trim_start_matches("http://").to_owned();
    let post = |token: &str, length: usize| {
        format!(
            "POST /images HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    let status_of = |head: &str| head.split(' ').nth(1).unwrap_or_default().to_owned();
    let answer = async |s: &mut tokio::net::TcpStream| {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let held = async |token: &str| {
        let mut s = tokio::net::TcpStream::connect(&at).await.unwrap();
        s.write_all(post(token, 8 << 20).as_bytes()).await.unwrap();
        s.write_all(&[0xff; 1024]).await.unwrap();
        s
    };
    // Declared larger than a photo: 413 at once, nothing of it sent.
    let mut s = tokio::net::TcpStream::connect(&at).await.unwrap();
    s.write_all(post(&token(0), 100 << 20).as_bytes())
        .await
        .unwrap();
    let head = answer(&mut s).await;
    assert_eq!(status_of(&head), "413", "{head}");
    // One person's second photo while the first is held back: turned away.
    let first = held(&token(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = held(&token(1)).await;
    let head = answer(&mut second).await;
    assert_eq!(status_of(&head), "503", "{head}");
    // Eight people's photos of 8 MiB held back (64 MiB with the first): a ninth is turned
    // away.
    let mut holding = vec![first];
    for n in 2..=8 {
        holding.push(held(&token(n)).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ninth = held(&token(9)).await;
    let head = answer(&mut ninth).await;
    assert_eq!(status_of(&head), "503", "{head}");
    assert!(head.contains("replica_busy"), "{head}");
    // Those that give up free their share.
    drop(holding);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tenth = tokio::net::TcpStream::connect(&at).await.unwrap();
    tenth
        .write_all(post(&token(10), 100).as_bytes())
        .await
        .unwrap();
    tenth.write_all(&[0xff; 100]).await.unwrap();
    let head = answer(&mut tenth).await;
    assert_ne!(status_of(&head), "503", "{head}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replica stalled past its meeting's lease (a long pause, a partition) comes back to find
/// the meeting taken over by the other replica: it lets the meeting go, and the `join` it
/// wrote for the clinician there gets its end in its own log (`leave`, `handed_over`) — the
/// clinician's connection closing there finds the meeting gone and wrote nothing before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_a_meetings_lease_ends_the_accesses_it_recorded() {
    let (dir, redis, a, b) = two_replicas_and_a_booking("v-lease-lost").await;
    let doctor_token = a
        .server
        .token("v-lease-lost", "doc-4411", "Dr Berg", "clinician");
    let mut doctor = a.server.connect(&doctor_token).await;
    let welcome = doctor.next_of("welcome").await;
    let doctor_id = welcome["participant"].clone();

    let signal = |sig: &str| {
        let sent = std::process::Command::new("kill")
            .args([sig, &a.server.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");
    // B takes the meeting once A's lease has run out (until then A owns it, and cannot
    // answer).
    let patient_token = a
        .server
        .token("v-lease-lost", "pat-7f3a", "Anna", "patient");
    let (mut patient, _) = join_retrying(&b.server, &patient_token, Duration::from_secs(20)).await;
    patient.next_of("welcome").await;
    signal("-CONT");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ended: Vec<Value> = a
            .server
            .audit_events("leave")
            .into_iter()
            .filter(|e| e["participant"] == doctor_id)
            .collect();
        if !ended.is_empty() {
            assert_eq!(ended.len(), 1, "{ended:?}");
            assert_eq!(ended[0]["code"], "handed_over", "{ended:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica A never ended the clinician's access: {}",
            a.server.audit_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A drop-in patient's queue link leads back into their private visit while it lasts — on the
/// replica holding the visit's lease, read from the store. A replica that started while the
/// visit was open holds a copy of it from then: when the visit's owner stops after the
/// clinician ended it, and the patient comes back through that replica, the visit is read
/// again, ended, and the link leads to the queue's waiting room. (Before, that replica served
/// the visit from its own copy, without its lease: the patient was back in the ended visit's
/// waiting room, where nobody would come.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_visit_is_served_only_where_its_lease_is_held_from_what_the_store_says() {
    let dir = std::env::temp_dir().join(format!("hc-replicas-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::persistent(free_port(), &dir.join("redis"));
    let key = dir.join("issuer.key");
    let mut a = replica(&redis.url(), &key);
    let now = jiff::Timestamp::now();
    let (status, q) = api_at(
        &a.internal,
        "POST",
        "/api/v1/meetings",
        Some(API_KEY),
        Some(json!({
            "id": "q-rep", "unit": "unit-1", "kind": "drop_in",
            "start": (now - jiff::SignedDuration::from_mins(5)).to_string(),
            "end": (now + jiff::SignedDuration::from_mins(120)).to_string(),
        })),
    )
    .await;
    assert_eq!(status, 201, "{q}");
    let mint = |body: Value| {
        let internal = a.internal.clone();
        async move {
            let (status, t) = api_at(
                &internal,
                "POST",
                "/api/v1/meetings/q-rep/tokens",
                Some(API_KEY),
                Some(body),
            )
            .await;
            assert_eq!(status, 200, "{t}");
            t["token"].as_str().unwrap().to_owned()
        }
    };
    let patient_token = mint(json!({"sub": "pat-q", "name": "Anna", "role": "patient"})).await;
    let doc_token = mint(
        json!({"sub": "doc-q", "name": "Dr Berg", "role": "clinician", "hsa": "SE2321000016-D1"}),
    )
    .await;
    let mut patient = a.server.connect(&patient_token).await;
    assert_eq!(patient.next_of("lobby_position").await["position"], 1);
    let mut doc = a.server.connect(&doc_token).await;
    doc.next_of("lobby").await;
    doc.send(json!({"type": "take_next"})).await;
    let private = doc.next_of("moved").await["meeting"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(patient.next_of("moved").await["meeting"], private.as_str());

    // B starts with the visit open, the patient admitted to it.
    let b = replica(&redis.url(), &key);
    // The clinician ends the visit; then A stops (its leases handed back).
    doc.send(json!({"type": "end_meeting"})).await;
    assert_eq!(patient.next_of("closing").await["reason"], "meeting_ended");
    drop((patient, doc));
    a.server.terminate();

    let (mut patient, _) = join_retrying(&b.server, &patient_token, Duration::from_secs(20)).await;
    let welcome = patient.next_of("welcome").await;
    assert_eq!(
        (welcome["meeting"].as_str(), welcome["state"].as_str()),
        (Some("q-rep"), Some("waiting")),
        "back in the ended visit {private}: {welcome}"
    );
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP forwarder to `to` that keeps the head of each request it carries (what a mesh's
/// sidecar or an internal balancer would log).
async fn recording_forwarder(to: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                else {
                    return;
                };
                if upstream.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (port, heads)
}

/// A join relayed to its meeting's owner carries the token and the resume key in the owner's
/// handshake header, never in its URL: a request line inside the cluster is written by
/// whatever logs its traffic, and a token or key there let its reader into the visit in the
/// patient's place (before, `/relay/ws?…&token=…&resume=…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_join_carries_no_credential_in_its_url() {
    let dir = std::env::temp_dir().join(format!("hc-relay-url-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::persistent(free_port(), &dir.join("redis"));
    let key = dir.join("issuer.key");
    let a = replica(&redis.url(), &key);
    // B is reached by the others through a forwarder that keeps what it carries.
    let b_port = free_port();
    let (via, heads) = recording_forwarder(b_port).await;
    let b = support::start_replica_advertised(
        &redis.url(),
        &key,
        b_port,
        &format!("http://127.0.0.1:{via}"),
        &[],
    );
    let (status, m) = api_at(
        &b.internal.replace(&via.to_string(), &b_port.to_string()),
        "POST",
        "/api/v1/meetings",
        Some(API_KEY),
        Some(booking("v-relay-url")),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    // The clinician on B: B runs the visit. The patient comes in through A, relayed to B.
    let doctor_token = b
        .server
        .token("v-relay-url", "doc-9", "Dr Berg", "clinician");
    let patient_token = a.server.token("v-relay-url", "pat-9", "Anna", "patient");
    let mut doctor = b.server.connect(&doctor_token).await;
    doctor.next_of("welcome").await;
    let mut patient = a.server.connect(&patient_token).await;
    let resume = patient.next_of("resume_key").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let welcome = patient.next_of("welcome").await;
    assert_eq!(welcome["state"], "waiting", "{welcome}");
    let id = doctor.first_waiting().await;
    assert_eq!(id, welcome["participant"]);
    // Dropped, and back through A with the resume key: the same participant.
    drop(patient);
    let mut back = a
        .server
        .connect_with(&patient_token, &format!("resume={resume}"))
        .await;
    assert_eq!(back.next_of("resumed").await["participant"], id);

    let heads = heads.lock().unwrap().clone();
    let relayed: Vec<&String> = heads.iter().filter(|h| h.contains("/relay/ws")).collect();
    assert_eq!(
        relayed.len(),
        2,
        "both joins went through the forwarder: {heads:?}"
    );
    for head in relayed {
        let line = head.lines().next().unwrap_or_default();
        assert!(
            !line.contains("token=")
                && !line.contains("resume=")
                && !line.contains(&patient_token)
                && !line.contains(&resume),
            "a credential in the relayed URL: {line}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-protocol: hc.v1, hc.token.")
        );
    }
    // An identity number as a meeting id in an API path: refused, and not made the name of a
    // meeting's lease in Redis on the way (the store runs with append-only persistence).
    let (status, refused) = api_at(
        &a.internal,
        "GET",
        "/api/v1/meetings/19121212-1212",
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (422, Some("invalid_meeting")),
        "{refused}"
    );
    let mut con = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert!(keys.iter().all(|k| !k.contains("19121212")), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.contains("v-relay-url")),
        "the leases are in Redis: {keys:?}"
    );
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}
