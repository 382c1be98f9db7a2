//! Connections as an anonymous attacker holds them, against the running service: bad tokens
//! posted as fast as keep-alive allows (the audit log must not grow with the rate), sockets
//! that never finish their headers or sit idle (slowloris), a WebSocket that goes silent, and
//! a message larger than the limit.

mod support;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{start_via, start_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address `from` (each 127.x address is its own
/// source to the server).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// POST /join over a fresh connection from `from`: the status code, or `None` when the server
/// closed the connection without answering.
async fn join_from(from: &str, to: SocketAddr, token: &str) -> Option<u16> {
    let mut s = connect_from(from, to).await;
    let body = json!({"token": token}).to_string();
    let req = format!(
        "POST /join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the server closes `s` within `wait` (end of stream or reset).
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// A slowloris socket: the start of a request's headers, never finished.
async fn partial_request(from: &str, to: SocketAddr) -> TcpStream {
    let mut s = connect_from(from, to).await;
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_in_a_flood_are_summarised_per_source_and_limited_with_429() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start_with(&["--refusal-summary-secs", "3"]);
    let addr = server.addr();
    let started = Instant::now();
    // 32 keep-alive connections post bad tokens for 3 s.
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let url = format!("{}/join", server.http_base);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = HashMap::<u16, u64>::new();
            while started.elapsed() < Duration::from_secs(3) {
                let r = client
                    .post(&url)
                    .json(&json!({"token": "eyJhbGciOiJFZERTQSJ9.e30.c2ln"}))
                    .send()
                    .await
                    .unwrap();
                *statuses.entry(r.status().as_u16()).or_default() += 1;
            }
            statuses
        }));
    }
    let mut statuses = HashMap::<u16, u64>::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *statuses.entry(k).or_default() += v;
        }
    }
    let total: u64 = statuses.values().sum();
    eprintln!("{total} bad tokens posted: {statuses:?}");
    assert!(total > 200, "the flood ran ({total})");
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(statuses[&401] >= 1 && statuses[&401] <= 12, "{statuses:?}");
    assert_eq!(statuses[&429], total - statuses[&401]);

    // A valid token from the same address still gets in: only refusals spend the budget —
    // once a signature check is free again (20 a second while the address is over it).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let token = server.token("visit-ok", "pat-1", "Anna", "patient");
    assert_eq!(join_from("127.0.0.1", addr, &token).await, Some(200));

    // Past the summary interval: a few lines, and their counts add up to every refusal.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lines = server.audit_events("token_refused");
    eprintln!("{} audit lines: {lines:?}", lines.len());
    assert!(lines.len() <= 4, "one line now and one per interval");
    let counted: u64 = lines.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, total, "no refusal goes unrecorded");
    assert!(lines.iter().all(|l| l["source"] == "127.0.0.1"));
    let limited: u64 = lines.iter().filter_map(|l| l["limited"].as_u64()).sum();
    assert_eq!(limited, statuses[&429]);
    assert!(lines[0]["code"].as_str().unwrap().starts_with("token_"));
    // Over the budget, most tokens were never checked: the signatures the flood cost were its
    // burst, then 20 a second (every token was checked, and a core could go to them, before).
    let unchecked: u64 = lines
        .iter()
        .filter_map(|l| l["codes"]["unchecked"].as_u64())
        .sum();
    let checked = total - unchecked;
    eprintln!("{checked} of {total} tokens checked");
    assert!(checked <= 10 + 20 + 20 * 4, "{checked} of {total} checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_capped_and_closed_and_joins_still_work() {
    let server = start_via(
        &["prlimit", "--nofile=256:4096", "--"],
        &[
            "--header-timeout-secs",
            "4",
            "--max-connections",
            "60",
            "--max-connections-per-source",
            "20",
        ],
    );
    let addr = server.addr();
    // The service raised its own open-files limit to the hard limit.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        files.split_whitespace().filter(|w| *w == "4096").count() == 2,
        "{files}"
    );
    let token = server.token("visit-slow", "pat-1", "Anna", "patient");

    // One source holds its 20; more from it are closed at once.
    let opened = Instant::now();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(partial_request("127.0.0.1", addr).await);
    }
    // The server counts a connection when its accept task runs: let it catch up, so the
    // sockets refused are the ones past the cap (not whichever task ran last).
    settle().await;
    for _ in 0..3 {
        let mut extra = partial_request("127.0.0.1", addr).await;
        assert!(
            closed_within(&mut extra, Duration::from_secs(1)).await,
            "past the per-source cap"
        );
    }
    // While they are held, someone else joins normally.
    assert_eq!(join_from("127.0.0.2", addr, &token).await, Some(200));

    // Two more sources fill the service's cap: then nobody gets in ...
    for from in ["127.0.0.3", "127.0.0.4"] {
        for _ in 0..20 {
            held.push(partial_request(from, addr).await);
        }
    }
    settle().await;
    let mut over = partial_request("127.0.0.5", addr).await;
    assert!(closed_within(&mut over, Duration::from_secs(1)).await);
    // ... until the header timeout closes them all.
    let mut closed_after = Vec::new();
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_secs(8)).await,
            "a partial request outlived the header timeout"
        );
        closed_after.push(opened.elapsed());
    }
    eprintln!(
        "60 slowloris sockets closed between {:?} and {:?}",
        closed_after.first(),
        closed_after.last()
    );
    assert!(
        closed_after[0] >= Duration::from_millis(3500),
        "not closed before the timeout"
    );
    assert_eq!(join_from("127.0.0.5", addr, &token).await, Some(200));

    // An idle keep-alive connection is closed after the same timeout.
    let mut idle = connect_from("127.0.0.6", addr).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(8)).await);
    assert!(
        t.elapsed() >= Duration::from_millis(3500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_pinged_then_closed() {
    let server = start_with(&["--ws-idle-secs", "3"]);
    let token = server.token("visit-quiet", "pat-1", "Anna", "patient");
    // A raw WebSocket client that never writes, so never answers a ping.
    let mut raw = connect_from("127.0.0.1", server.addr()).await;
    let upgrade = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    raw.write_all(upgrade.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the server closed the silent connection");
    let silent_for = started.elapsed();
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(bytes.starts_with(b"HTTP/1.1 101"));
    // The server's frames (unmasked): count the pings, find the closing text and code.
    let (mut pings, mut closing, mut code) = (0, Value::Null, None);
    let mut at = head_end;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, start) = match bytes[at + 1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                at + 4,
            ),
            n => (usize::from(n), at + 2),
        };
        let payload = &bytes[start..start + len];
        match opcode {
            0x9 => pings += 1,
            0x1 => {
                let v: Value = serde_json::from_slice(payload).unwrap();
                if v["type"] == "closing" {
                    closing = v;
                }
            }
            0x8 => code = Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => {}
        }
        at = start + len;
    }
    eprintln!("closed after {silent_for:?}, {pings} pings");
    assert!(pings >= 2, "the server pinged ({pings})");
    assert_eq!(closing["reason"], "idle", "{closing}");
    assert_eq!(code, Some(4007));
    assert!(silent_for >= Duration::from_secs(3) && silent_for < Duration::from_secs(6));

    // A client that answers pings (any WebSocket library does) stays.
    let mut alive = server.connect(&token).await;
    alive.next_of("welcome").await;
    let heard = alive.drain(Duration::from_secs(5)).await;
    assert!(
        !heard.iter().any(|m| m["type"] == "closing"),
        "an answering client is kept: {heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_gets_close_code_1009() {
    let server = start_with(&[]);
    let token = server.token("visit-big", "pat-1", "Anna", "patient");
    let mut client = server.connect(&token).await;
    client.next_of("welcome").await;
    use support::SendText;
    let big = format!(
        "{{\"type\":\"chat\",\"text\":\"{}\"}}",
        "x".repeat(200 * 1024)
    );
    client.ws.send_text(&big).await;
    let (closing, code) = client.closed().await;
    assert_eq!(closing["reason"], "message_too_large", "{closing}");
    assert_eq!(code, Some(1009));
}

/// A join check whose body comes a byte at a time: its connection is closed once the time for
/// a request has passed (as slow headers are), not held for as long as the client trickles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_sent_a_byte_at_a_time_is_cut_off() {
    let server = start_with(&["--header-timeout-secs", "2"]);
    let addr = server.addr();
    let mut slow = connect_from("127.0.0.1", addr).await;
    slow.write_all(
        b"POST /join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    while started.elapsed() < Duration::from_secs(12) {
        if slow.write_all(b" ").await.is_err()
            || closed_within(&mut slow, Duration::from_millis(300)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let after = closed_after.expect("a body trickled for 12 s was still being read");
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}, before the time for a request"
    );
    // Someone else's join is answered meanwhile and after.
    let token = server.token("visit-body", "pat-1", "Anna", "patient");
    assert_eq!(join_from("127.0.0.2", addr, &token).await, Some(200));
}

/// A valid token asked again and again for a meeting it may not enter writes one line, then
/// counts in its subject's summary, then gets 429: the audit log does not grow with the rate
/// of a patient's loop (and other patients behind the same address are not held to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_refused_in_a_loop_is_summarised_and_limited() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start_with(&["--refusal-summary-secs", "3"]);
    let token = server.token("visit-own", "pat-1", "Anna", "patient");
    let client = reqwest::Client::new();
    let url = format!("{}/join", server.http_base);
    let mut statuses = HashMap::<u16, u64>::new();
    for _ in 0..200 {
        let r = client
            .post(&url)
            .json(&json!({"token": token, "meeting": "someone-elses-visit"}))
            .send()
            .await
            .unwrap();
        *statuses.entry(r.status().as_u16()).or_default() += 1;
    }
    eprintln!("200 refused joins: {statuses:?}");
    assert!(statuses[&403] >= 1 && statuses[&403] <= 12, "{statuses:?}");
    assert_eq!(statuses[&429], 200 - statuses[&403], "{statuses:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let written = server.audit_events("join_refused");
    assert!(
        written.len() <= 3,
        "one line now and one per interval: {written:?}"
    );
    assert_eq!(written[0]["code"], "meeting_mismatch");
    assert!(
        written.iter().all(|l| l["subject"] == "pat-1"),
        "{written:?}"
    );
    let counted: u64 = written
        .iter()
        .map(|l| l["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(counted, 200, "every refusal recorded: {written:?}");
    // The token still opens its own visit.
    assert_eq!(
        join_from("127.0.0.2", server.addr(), &token).await,
        Some(200)
    );
}

/// A patient's valid token asking in a loop for photos that are not theirs (guessed ids, or
/// posting as a connection that is not theirs): each refusal is on record under the patient,
/// the first at once and the rest counted in summary lines, and past the budget 429 — a
/// budget of its own, so the patient's link still opens their visit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_asking_for_photos_not_its_own_is_recorded_and_limited() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start_with(&["--refusal-summary-secs", "3"]);
    let token = server.token("visit-photos", "pat-2", "Anna", "patient");
    let client = reqwest::Client::new();
    let mut statuses = HashMap::<u16, u64>::new();
    for n in 0..60 {
        let r = if n % 2 == 1 {
            client
                .get(format!("{}/images/img-{n:08x}", server.http_base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
        } else {
            // (A personal identity number where a participant id belongs: never recorded.)
            client
                .post(format!("{}/images", server.http_base))
                .bearer_auth(&token)
                .header("x-participant", "19121212-1212")
                .header("content-type", "image/jpeg")
                .body(vec![0u8; 16])
                .send()
                .await
                .unwrap()
        };
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        match status {
            404 => assert_eq!(body["error"], "image_unknown", "{body}"),
            403 => assert_eq!(body["error"], "not_in_meeting", "{body}"),
            429 => assert_eq!(body["error"], "too_many_refusals", "{body}"),
            _ => panic!("{status}: {body}"),
        }
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("60 refused photo requests: {statuses:?}");
    let answered = statuses.get(&404).unwrap_or(&0) + statuses.get(&403).unwrap_or(&0);
    assert!((10..=12).contains(&answered), "{statuses:?}");
    assert_eq!(statuses[&429], 60 - answered, "{statuses:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let written = server.audit_events("image_refused");
    assert!(written.len() <= 3, "{written:?}");
    assert_eq!(written[0]["code"], "not_in_meeting");
    assert_eq!(written[0]["target"], "(not a participant id)");
    assert!(!server.audit_text().contains("19121212"));
    assert!(
        written
            .iter()
            .all(|l| l["subject"] == "pat-2" && l["meeting"] == "visit-photos"),
        "{written:?}"
    );
    let counted: u64 = written
        .iter()
        .map(|l| l["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(counted, 60, "every refusal recorded: {written:?}");
    assert!(server.audit_events("join_refused").is_empty());
    assert_eq!(
        join_from("127.0.0.2", server.addr(), &token).await,
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_too_slow_and_joins_again_afresh() {
    let server = start_with(&["--ws-outbox-limit-kib", "16"]);
    let meeting = "visit-slow-reader";
    let staff: Vec<String> = (1..=3)
        .map(|i| server.token(meeting, &format!("doc-{i}"), "Dr Berg", "clinician"))
        .collect();
    let patient_token = server.token(meeting, "pat-1", "Anna", "patient");
    let mut doctors = Vec::new();
    for token in &staff {
        let mut d = server.connect(token).await;
        d.next_of("welcome").await;
        doctors.push(d);
    }
    // The patient's socket takes a few KiB at a time; once admitted, it reads nothing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr()).await.unwrap();
    let url = format!("{}/ws?token={patient_token}", server.ws_base);
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut patient = support::Client { ws };
    // (The key is sent directly, the welcome through the meeting's queue: either first.)
    let (mut first_id, mut resume_key) = (Value::Null, Value::Null);
    while first_id.is_null() || resume_key.is_null() {
        let m = patient.next().await;
        match m["type"].as_str() {
            Some("welcome") => first_id = m["participant"].clone(),
            Some("resume_key") => resume_key = m["key"].clone(),
            _ => {}
        }
    }
    let waiting = doctors[0].first_waiting().await;
    assert_eq!(waiting, first_id);
    doctors[0]
        .send(json!({"type": "admit", "participant": first_id}))
        .await;
    patient.next_of("admitted").await;

    // The staff chat (each within its budget: a burst, then one a second), 3 KB a message.
    let text = "€".repeat(1000);
    let started = Instant::now();
    let mut sent = 0;
    let mut left_after = None;
    'chat: while started.elapsed() < Duration::from_secs(40) {
        for d in &mut doctors {
            d.send(json!({"type": "chat", "text": text})).await;
            sent += 1;
        }
        // (The staff read theirs: only the patient falls behind.)
        let pause = if sent < 5 * doctors.len() { 50 } else { 1050 };
        let until = tokio::time::Instant::now() + Duration::from_millis(pause);
        for (i, d) in doctors.iter_mut().enumerate() {
            for m in d.drain_until(until).await {
                assert_ne!(m["type"], "error", "{m}");
                if i == 0 && m["type"] == "participant_left" && m["participant"] == first_id {
                    left_after = Some(started.elapsed());
                    break 'chat;
                }
            }
        }
    }
    let left_after = left_after.unwrap_or_else(|| {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
        panic!(
            "the patient that stopped reading was let go ({sent} sent); log, newest first:\n{tail}"
        )
    });
    eprintln!("too slow after {left_after:?}, {sent} chat messages sent");
    // Within the staff's budgets: 45 KB at once, then 9 KB a second.
    assert!(left_after < Duration::from_secs(20), "{left_after:?}");

    // What the patient's socket still held: the start of the chat, then the reason and 4008.
    let mut chats = 0;
    let (closing, code) = loop {
        let m = patient.next().await;
        match m["type"].as_str() {
            Some("chat") => chats += 1,
            Some("closing") => {
                let code = patient.next_of("__closed").await["code"].as_u64();
                break (m, code);
            }
            Some("__closed") => break (Value::Null, m["code"].as_u64()),
            _ => {}
        }
    };
    eprintln!("the patient had {chats} of {sent} chat messages");
    assert_eq!(closing["reason"], "too_slow", "{closing}");
    assert_eq!(code, Some(4008));
    assert!(chats > 0 && chats < sent, "{chats} of {sent}");

    // Back with the same token and its resume key: not resumed (messages were lost) but a
    // fresh participant, let in past the waiting room (the admission kept for the grace).
    let mut again = server
        .connect_with(
            &patient_token,
            &format!("&resume={}", resume_key.as_str().unwrap()),
        )
        .await;
    let mut seen = again.drain(Duration::from_secs(2)).await;
    seen.retain(|m| m["type"] == "welcome" || m["type"] == "resumed");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["type"], "welcome", "{seen:?}");
    assert_ne!(seen[0]["participant"], first_id);
    assert_eq!(
        seen[0]["state"], "admitted",
        "admitted again without waiting: {seen:?}"
    );
    let (status, body) = server.api("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let metrics = body["raw"].as_str().unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("signaling_connections_too_slow_total") && l.ends_with(" 1")),
        "the close is counted"
    );
}

/// Clients that end their connection while it is being upgraded — a phone dropping out of
/// coverage mid-join, or a hostile client resetting on purpose — leave an audit trail in
/// which every `join` line has its `leave`: the patient's record shows no meeting that was
/// never left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_join_in_the_audit_log_has_its_leave_when_clients_vanish_mid_upgrade() {
    let server = start_with(&[]);
    let addr = server.addr();
    let token = server.token("visit-vanish", "pat-1", "Anna", "patient");
    let upgrade = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // (24: within the burst of connections one person gets, join_pace.rs.)
    for round in 0..24u32 {
        let mut raw = connect_from("127.0.0.1", addr).await;
        raw.write_all(upgrade.as_bytes()).await.unwrap();
        match round % 3 {
            // Half-closed at once: the request and nothing more.
            0 => raw.shutdown().await.unwrap(),
            // Reset once the server has had the request.
            1 => {
                tokio::time::sleep(Duration::from_millis(u64::from(round % 7))).await;
                socket2::SockRef::from(&raw)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            // Reset after the answer's first bytes.
            _ => {
                let mut b = [0u8; 12];
                let _ = raw.read_exact(&mut b).await;
                socket2::SockRef::from(&raw)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        }
        drop(raw);
    }
    // The patient joins properly at last (replacing whoever of them got in and was left
    // waiting out its resume window) and leaves.
    let mut client = server.connect(&token).await;
    client.next_of("welcome").await;
    client.send(json!({"type": "leave"})).await;
    let (closing, _) = client.closed().await;
    assert_eq!(closing["reason"], "left");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let joins = server.audit_events("join");
    // A participant ends by leaving, or by being replaced by the same person's next connection.
    let ends: Vec<Value> = ["leave", "replaced"]
        .iter()
        .flat_map(|e| server.audit_events(e))
        .collect();
    eprintln!("{} joins, {} ends", joins.len(), ends.len());
    assert!(
        joins.len() > 10,
        "the server had most of the requests ({})",
        joins.len()
    );
    for j in &joins {
        let p = &j["participant"];
        let of_it: Vec<&Value> = ends.iter().filter(|l| &l["participant"] == p).collect();
        assert_eq!(of_it.len(), 1, "one end for {j}");
        assert!(
            of_it[0]["seq"].as_u64() > j["seq"].as_u64(),
            "after its join: {j}"
        );
    }
    // Those that never got in (most of them) say so.
    let never = ends.iter().filter(|l| l["code"] == "not_entered").count();
    assert!(never >= 5, "{never} leaves as not_entered");
}

/// A valid patient link in a loop of connect and drop: each connection would write audit
/// lines, change the roster and start a media session. A person gets 30, then one every 2 s;
/// the join check says so without spending any; other people are not held to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_link_in_a_loop_of_connect_and_drop_is_paced() {
    let server = start_with(&[]);
    let token = server.token("visit-loop", "pat-1", "Anna", "patient");
    // Connections until the join check says no (one comes back every 2 s while they run: a
    // slow machine's run gets a few more than the burst).
    let mut connected = 0;
    while join_from("127.0.0.1", server.addr(), &token).await == Some(200) {
        let mut c = server.connect(&token).await;
        c.next_of("welcome").await;
        connected += 1;
        assert!(connected <= 40, "not paced after {connected} connections");
    }
    assert!(
        connected >= 30,
        "the burst is 30: refused after {connected}"
    );
    let (status, body) = server.refused(&format!("token={token}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_joins")),
        "{body}"
    );
    let other = server.token("visit-loop", "pat-2", "Bertil", "patient");
    server.connect(&other).await.next_of("welcome").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        join_from("127.0.0.1", server.addr(), &token).await,
        Some(200)
    );
    server.connect(&token).await.next_of("welcome").await;
    // The audit log holds the joins, and the refusals in at most two lines.
    let joins = server.audit_events("join");
    assert_eq!(
        joins.iter().filter(|j| j["subject"] == "pat-1").count(),
        connected + 1
    );
    let refused: Vec<_> = server
        .audit_events("join_refused")
        .into_iter()
        .filter(|l| l["code"] == "too_many_joins" || l["codes"]["too_many_joins"].is_number())
        .collect();
    assert!(!refused.is_empty() && refused.len() <= 2, "{refused:?}");
}

/// A join check whose body is not the check's JSON gets a JSON answer naming what is wrong,
/// as every other refusal does (a client written from the protocol reads `error` alone).
#[tokio::test]
async fn a_join_check_with_a_broken_body_gets_a_json_error() {
    let server = start_with(&[]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    for (content_type, body, status) in [
        ("application/json", "{\"token\": ", 400),
        ("text/plain", "{\"token\": \"x\"}", 415),
        ("application/json", "{\"token\": 7}", 422),
    ] {
        let r = client
            .post(format!("{}/join", server.http_base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let v: Value = r.json().await.expect("a JSON body");
        assert_eq!(v["error"], "bad_request", "{v}");
        assert!(!v["reason"].as_str().unwrap_or_default().is_empty(), "{v}");
    }
}

/// A raw HTTP/1.1 request from `from`: the status and the body.
async fn request_from(from: &str, to: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = connect_from(from, to).await;
    let req = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Another site's page, run in browsers behind the patients' shared address (a carrier's or
/// a clinic's NAT), spends none of that address's budget of refused tokens: its WebSocket
/// handshakes (another `Origin`) and photo requests (`Sec-Fetch-Site: cross-site`, an `<img>`
/// or a no-cors POST) are refused `cross_site` before any token is read, and a patient behind
/// the address gets in. And photo requests with bad tokens get few signature checks once the
/// address is over its budget, as joins do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_pages_spend_none_of_a_shared_addresss_refusal_budget() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start_with(&["--refusal-summary-secs", "3"]);
    let addr = server.addr();
    let upgrade = "GET /ws?token=a.b.c HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: https://ads.example";
    for _ in 0..30 {
        for head in [
            upgrade,
            "GET /images/abc HTTP/1.1\r\nSec-Fetch-Site: cross-site",
            "POST /images HTTP/1.1\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain",
        ] {
            let (status, body) = request_from("127.0.0.3", addr, head, "x").await;
            assert_eq!(status, 403, "{head}: {body}");
            assert!(body.contains("\"cross_site\""), "{body}");
        }
    }
    // The address's budget is whole: a patient's link opens, and a mistyped one is refused
    // for what it is (401), not 429.
    let token = server.token("visit-shared", "pat-1", "Anna", "patient");
    assert_eq!(join_from("127.0.0.3", addr, &token).await, Some(200));
    assert_eq!(join_from("127.0.0.3", addr, "a.b.c").await, Some(401));

    // Photo requests with bad tokens from one address: past the budget, 429, and most of the
    // tokens are never checked.
    let mut statuses = HashMap::<u16, u64>::new();
    for _ in 0..60 {
        let (status, _) = request_from(
            "127.0.0.4",
            addr,
            "GET /images/abc HTTP/1.1\r\nAuthorization: Bearer eyJhbGciOiJFZERTQSJ9.e30.c2ln",
            "",
        )
        .await;
        *statuses.entry(status).or_default() += 1;
    }
    assert!(statuses[&401] <= 12 && statuses[&429] >= 40, "{statuses:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lines = server.audit_events("token_refused");
    assert!(
        lines
            .iter()
            .all(|l| l["source"] != "127.0.0.3" || l["count"] == 1),
        "only the mistyped link counted for the shared address: {lines:?}"
    );
    let unchecked: u64 = lines
        .iter()
        .filter(|l| l["source"] == "127.0.0.4")
        .filter_map(|l| l["codes"]["unchecked"].as_u64())
        .sum();
    assert!(
        unchecked >= 20,
        "photo requests over the budget went unchecked: {lines:?}"
    );
}

/// No connection is held open for ever by sending nothing: one that never sends a byte is
/// closed after the header timeout (whose timer starts only at a request's first byte), on
/// the public listener and on the internal one (meetings API, metrics, replicas' relays),
/// which also closes a request never finished; the listener still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_unfinished_connections_are_closed_on_both_listeners() {
    let server = start_with(&[
        "--internal-listen",
        "127.0.0.1:0",
        "--header-timeout-secs",
        "2",
    ]);
    let internal = server
        .printed("Internal (meetings API, metrics): ")
        .expect("the internal address printed");
    let addr: SocketAddr = internal.trim_start_matches("http://").parse().unwrap();
    let mut idle = connect_from("127.0.0.1", addr).await;
    let mut idle_public = connect_from("127.0.0.1", server.addr()).await;
    let mut slow = partial_request("127.0.0.1", addr).await;
    let started = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(6)).await,
        "a request never finished"
    );
    assert!(
        closed_within(&mut idle_public, Duration::from_secs(1)).await,
        "a connection never used, on the public listener"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(2)).await,
        "a connection never used"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let (status, body) = request_from("127.0.0.1", addr, "GET /metrics HTTP/1.1", "").await;
    assert_eq!(status, 200, "{body}");
}

/// A waiting patient floods its socket with messages the meeting's budgets do not cover
/// (pings, each answered; candidates, each parsed; clinician actions, each a turn of the
/// meeting's lock before `not_allowed`): past an allowance of 200 the connection is read at
/// 50 a second — before, all 20,000 were answered as fast as they came — and the clinician's
/// admission of someone else goes through meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unbudgeted_messages_is_read_at_a_bounded_rate() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = start_with(&[]);
    let doctor = server.token("visit-flood", "doc-1", "Dr Berg", "clinician");
    let mut doctor = server.connect(&doctor).await;
    doctor.next_of("welcome").await;
    let hostile = server.token("visit-flood", "pat-h", "Hostile", "patient");
    let mut hostile = server.connect(&hostile).await;
    hostile.next_of("welcome").await;
    let other = server.token("visit-flood", "pat-o", "Other", "patient");
    let mut other = server.connect(&other).await;
    other.next_of("welcome").await;
    let (mut sink, mut stream) = hostile.ws.split();
    let flood = tokio::spawn(async move {
        let kinds = [
            json!({"type": "ping"}),
            json!({"type": "candidate"}),
            json!({"type": "admit", "participant": "p-nobody"}),
        ];
        for i in 0..20_000 {
            let text = kinds[i % kinds.len()].to_string();
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        sink
    });
    // Replies to the flood over 2 s: the burst and 50 a second (pongs and refusals).
    let replies = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut n = 0;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, stream.next()).await {
            n += 1;
        }
        n
    });
    // Meanwhile the clinician admits the other patient: it takes effect at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other_id = loop {
        let lobby = doctor.next_of("lobby").await;
        let waiting = lobby["waiting"].as_array().unwrap().clone();
        if let Some(w) = waiting.iter().find(|w| w["name"] == "Other") {
            break w["participant"].clone();
        }
    };
    let asked = Instant::now();
    doctor
        .send(json!({"type": "admit", "participant": other_id}))
        .await;
    other.next_of("admitted").await;
    let took = asked.elapsed();
    let replied = replies.await.unwrap();
    flood.abort();
    assert!(
        replied <= 200 + 50 * 2 + 60,
        "{replied} replies in 2 s to a flood (the allowance is 200, then 50 a second)"
    );
    assert!(
        replied >= 150,
        "the flood's first messages were answered ({replied})"
    );
    assert!(took < Duration::from_secs(2), "the admission took {took:?}");
}
