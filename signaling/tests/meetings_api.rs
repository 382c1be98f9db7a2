//! The meetings API on a running service: authentication, booking, minting, listing who is
//! in and who waits, cancelling (which disconnects), a store that survives a restart; and a
//! drop-in queue served by "take next".

mod support;

use serde_json::json;
use std::time::Duration;
use support::{API_KEY, start_with};

fn window(from_mins: i64, to_mins: i64) -> (String, String) {
    let now = jiff::Timestamp::now();
    (
        (now + jiff::SignedDuration::from_mins(from_mins)).to_string(),
        (now + jiff::SignedDuration::from_mins(to_mins)).to_string(),
    )
}

#[tokio::test]
async fn a_booking_system_books_mints_watches_and_cancels() {
    let store_dir = std::env::temp_dir().join(format!("hc-store-{}", rand::random::<u64>()));
    let store = store_dir.join("meetings.json");
    let store_arg = store.to_str().unwrap().to_owned();
    let server = start_with(&["--meeting-store", &store_arg]);

    // Authentication first.
    let (status, body) = server.api("GET", "/api/v1/meetings", None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("api_key_invalid"))
    );
    let (status, _) = server
        .api("GET", "/api/v1/meetings", Some("wrong"), None)
        .await;
    assert_eq!(status, 401);
    let (status, doc) = server.api("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));

    // Book a visit that is open now.
    let (start, end) = window(-5, 25);
    let booking = json!({"id": "v-100", "unit": "unit-1", "start": start, "end": end});
    let (status, m) = server
        .api(
            "POST",
            "/api/v1/meetings",
            Some(API_KEY),
            Some(booking.clone()),
        )
        .await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(
        (m["status"].as_str(), m["kind"].as_str()),
        (Some("open"), Some("visit"))
    );
    assert!(m["join_url"].as_str().unwrap().ends_with("/m/v-100"));
    let (status, _) = server
        .api("POST", "/api/v1/meetings", Some(API_KEY), Some(booking))
        .await;
    assert_eq!(status, 409);
    let (status, body) = server
        .api(
            "POST",
            "/api/v1/meetings",
            Some(API_KEY),
            Some(json!({"unit": "u", "start": end, "end": start})),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["reason"].as_str().unwrap().starts_with("end"),
        "{body}"
    );

    // Mint join tokens; a personal identity number as subject is refused.
    let mint = |body: serde_json::Value| {
        server.api(
            "POST",
            "/api/v1/meetings/v-100/tokens",
            Some(API_KEY),
            Some(body),
        )
    };
    let (status, body) =
        mint(json!({"sub": "19121212-1212", "name": "Tolvan", "role": "patient"})).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = mint(json!({"sub": "c1", "name": "Dr X", "role": "clinician"})).await;
    assert_eq!(status, 422, "a clinician needs an HSA-id");
    let (status, t) = mint(json!({"sub": "pat-1", "name": "Anna", "role": "patient"})).await;
    assert_eq!(status, 200, "{t}");
    let url = t["url"].as_str().unwrap();
    assert!(url.contains("/m/v-100#token="), "{url}");
    let token = t["token"].as_str().unwrap().to_owned();

    // The patient waits; the API lists them.
    let mut patient = server.connect(&format!("{token}&meeting=v-100")).await;
    assert_eq!(patient.next_of("welcome").await["state"], "waiting");
    let (status, list) = server
        .api(
            "GET",
            "/api/v1/meetings/v-100/participants",
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let p = &list["participants"][0];
    assert_eq!(
        (
            p["subject"].as_str(),
            p["state"].as_str(),
            p["role"].as_str()
        ),
        (Some("pat-1"), Some("waiting"), Some("patient"))
    );
    assert!(p["waiting_since"].as_str().is_some());
    let (_, listed) = server
        .api("GET", "/api/v1/meetings?unit=unit-1", Some(API_KEY), None)
        .await;
    assert_eq!(listed["meetings"][0]["id"], "v-100");
    assert_eq!(listed["meetings"][0]["waiting"], 1);
    let (_, none) = server
        .api("GET", "/api/v1/meetings?unit=unit-2", Some(API_KEY), None)
        .await;
    assert_eq!(none["meetings"], json!([]));

    // Cancelling disconnects the waiting patient and refuses the link from then on.
    let (status, m) = server
        .api("POST", "/api/v1/meetings/v-100/cancel", Some(API_KEY), None)
        .await;
    assert_eq!((status, m["status"].as_str()), (200, Some("cancelled")));
    let (closing, code) = patient.closed().await;
    assert_eq!(
        (closing["reason"].as_str(), code),
        (Some("meeting_cancelled"), Some(4004))
    );
    let (status, body) = server.refused(&format!("token={token}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("meeting_cancelled"))
    );
    assert_eq!(server.audit_events("meeting_cancelled").len(), 1);
    assert_eq!(server.audit_events("token_minted").len(), 1);
    // Reads are accesses too: who is waiting, and the lists, are in the record.
    let read = server.audit_events("api_participants_read");
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(
        (read[0]["meeting"].as_str(), read[0]["unit"].as_str()),
        (Some("v-100"), Some("unit-1"))
    );
    let listed = server.audit_events("api_meetings_listed");
    let units: Vec<_> = listed.iter().map(|e| e["unit"].as_str()).collect();
    assert_eq!(units, [Some("unit-1"), Some("unit-2")]);
    assert!(
        !read[0].to_string().contains("pat-1"),
        "what was read is not copied into the record: {}",
        read[0]
    );
    drop(server);

    // The booking survives a restart.
    let server = start_with(&["--meeting-store", &store_arg]);
    let (status, m) = server
        .api("GET", "/api/v1/meetings/v-100", Some(API_KEY), None)
        .await;
    assert_eq!((status, m["status"].as_str()), (200, Some("cancelled")));
    let (status, _) = server
        .api("GET", "/api/v1/meetings/nope", Some(API_KEY), None)
        .await;
    assert_eq!(status, 404);
    let read = server.audit_events("api_meeting_read");
    assert_eq!(read.len(), 1, "the unknown meeting is not a read: {read:?}");
    assert_eq!(read[0]["meeting"], "v-100");
    drop(server);
    let _ = std::fs::remove_dir_all(store_dir);
}

#[tokio::test]
async fn drop_in_the_clinician_takes_the_first_and_the_second_moves_up() {
    let server = start_with(&[]);
    let (start, end) = window(-1, 120);
    let (status, q) = server
        .api("POST", "/api/v1/meetings", Some(API_KEY),
             Some(json!({"id": "q-unit-1", "unit": "unit-1", "kind": "drop_in", "start": start, "end": end})))
        .await;
    assert_eq!((status, q["kind"].as_str()), (201, Some("drop_in")));
    let server = &server;
    let mint = |body: serde_json::Value| async move {
        let (status, t) = server
            .api(
                "POST",
                "/api/v1/meetings/q-unit-1/tokens",
                Some(API_KEY),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{t}");
        t["token"].as_str().unwrap().to_owned()
    };
    // A queue's link outlives the queue by a private visit's length and overrun: a patient
    // taken just before it closes can still come back into their visit.
    let (_, minted) = server
        .api(
            "POST",
            "/api/v1/meetings/q-unit-1/tokens",
            Some(API_KEY),
            Some(json!({"sub": "pat-z", "name": "Z", "role": "patient"})),
        )
        .await;
    let expires: jiff::Timestamp = minted["expires_at"].as_str().unwrap().parse().unwrap();
    let queue_end: jiff::Timestamp = end.parse().unwrap();
    assert_eq!(
        expires.as_second(),
        (queue_end + jiff::SignedDuration::from_mins(90)).as_second(),
        "{minted}"
    );
    let a_token = mint(json!({"sub": "pat-a", "name": "Anna", "role": "patient"})).await;
    let b_token = mint(json!({"sub": "pat-b", "name": "Bertil", "role": "patient"})).await;
    let doc_token = mint(
        json!({"sub": "doc-1", "name": "Dr Berg", "role": "clinician", "hsa": "SE2321000016-D1"}),
    )
    .await;
    // The API makes no link of another unit (it would be refused at every use)…
    let (status, body) = server
        .api(
            "POST",
            "/api/v1/meetings/q-unit-1/tokens",
            Some(API_KEY),
            Some(json!({"sub": "doc-2", "name": "Dr Annan", "role": "clinician", "hsa": "SE2321000016-D2", "unit": "unit-2"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    // …and a region's own token of another unit is refused at the door.
    let stranger = server.token_in_unit("q-unit-1", "doc-2", "Dr Annan", "clinician", "unit-2");

    let mut a = server.connect(&a_token).await;
    assert_eq!(a.next_of("lobby_position").await["position"], 1);
    let mut b = server.connect(&b_token).await;
    assert_eq!(b.next_of("lobby_position").await["position"], 2);

    // A patient whose phone loses the network keeps their place in the queue.
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut a = server.connect(&a_token).await;
    assert_eq!(
        a.next_of("lobby_position").await["position"],
        1,
        "Anna keeps her place"
    );
    let heard = b.drain(Duration::from_millis(300)).await;
    assert_eq!(
        heard.last().map(|m| m["position"].clone()),
        Some(json!(2)),
        "Bertil is second again: {heard:?}"
    );

    // Only the unit's own clinicians serve its queue.
    let (status, body) = server.refused(&format!("token={stranger}")).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("wrong_unit")));

    let mut doc = server.connect(&doc_token).await;
    assert_eq!(doc.next_of("welcome").await["kind"], "drop_in");
    assert_eq!(
        doc.next_of("lobby").await["waiting"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    doc.send(json!({"type": "admit", "participant": "x"})).await;
    assert_eq!(doc.next_of("error").await["code"], "no_such_participant");

    doc.send(json!({"type": "take_next"})).await;
    let moved = doc.next_of("moved").await;
    let private = moved["meeting"].as_str().unwrap().to_owned();
    assert!(private.starts_with("q-unit-1-"), "{private}");
    let a_moved = a.next_of("moved").await;
    assert_eq!(a_moved["meeting"], private.as_str());
    assert_eq!(a_moved["participants"][0]["name"], "Dr Berg");
    assert_eq!(
        b.next_of("lobby_position").await["position"],
        1,
        "Bertil moves up"
    );

    // The private visit is a meeting of the unit, opened from the queue, both admitted.
    let (_, m) = server
        .api(
            "GET",
            &format!("/api/v1/meetings/{private}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(
        (m["from_queue"].as_str(), m["admitted"].as_u64()),
        (Some("q-unit-1"), Some(2))
    );
    let (_, q) = server
        .api("GET", "/api/v1/meetings/q-unit-1", Some(API_KEY), None)
        .await;
    assert_eq!(
        (q["waiting"].as_u64(), q["admitted"].as_u64()),
        (Some(1), Some(0))
    );

    // Chat works in the private visit; the queue hears nothing.
    a.send(json!({"type": "chat", "text": "hej"})).await;
    assert_eq!(doc.next_of("chat").await["name"], "Anna");
    assert!(
        !b.drain(Duration::from_millis(300))
            .await
            .iter()
            .any(|m| m["type"] == "chat")
    );

    // A dropped connection comes back with the queue link into the private visit, admitted.
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut a = server.connect(&format!("{a_token}&meeting=q-unit-1")).await;
    let w = a.next_of("welcome").await;
    assert_eq!(
        (w["meeting"].as_str(), w["state"].as_str()),
        (Some(private.as_str()), Some("admitted"))
    );
    // Its `join` names the visit it entered, as the lines the visit writes do (its lobby, its
    // `leave`s): named by the queue, a patient's extract read a stay in the queue between two
    // in the visit.
    let last_join = |sub: &str| {
        server
            .audit_events("join")
            .into_iter()
            .rev()
            .find(|l| l["subject"] == sub)
            .expect("a join")
    };
    assert_eq!(last_join("pat-a")["meeting"], private.as_str());

    // The clinician, dropped while the patient is still in the private visit, comes back into
    // it with the queue link too: the patient is not left alone there (before, the link led
    // the clinician back to the queue).
    drop(doc);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut doc = server.connect(&doc_token).await;
    let w = doc.next_of("welcome").await;
    assert_eq!(
        (w["meeting"].as_str(), w["state"].as_str()),
        (Some(private.as_str()), Some("admitted")),
        "{w}"
    );
    assert_eq!(last_join("doc-1")["meeting"], private.as_str());
    // Hung up on purpose, the clinician's queue link leads to the queue (to take the next
    // one), the patient still in the visit.
    doc.send(json!({"type": "leave"})).await;
    assert_eq!(doc.next_of("closing").await["reason"], "left");
    drop(doc);
    let mut doc = server.connect(&doc_token).await;
    let w = doc.next_of("welcome").await;
    assert_eq!(
        (w["meeting"].as_str(), w["kind"].as_str()),
        (Some("q-unit-1"), Some("drop_in"))
    );
    assert_eq!(doc.next_of("lobby").await["waiting"][0]["name"], "Bertil");
    doc.send(json!({"type": "end_meeting"})).await;
    assert_eq!(doc.next_of("error").await["code"], "queue_cannot_end");

    let take = server
        .audit_events("admit")
        .into_iter()
        .find(|l| l["subject"] == "pat-a" && l["actor_hsa"] == "SE2321000016-D1")
        .expect("the take is audited with the clinician");
    assert_eq!(take["meeting"], "q-unit-1");
}

/// Two systems, each with its own unit: neither reads nor acts on the other's meetings, every
/// refusal is a 403 with an audit line naming the system, and every call's line names it.
#[tokio::test]
async fn a_key_acts_only_for_its_own_care_units() {
    let dir = std::env::temp_dir().join(format!("hc-clients-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("signaling.toml");
    let hash = signaling::api_client::key_sha256_hex;
    std::fs::write(
        &config,
        format!(
            "[[api.clients]]\nname = \"booking-a\"\nunits = [\"unit-a\"]\nkey_sha256 = \"{}\"\n\n\
             [[api.clients]]\nname = \"booking-b\"\nunits = [\"unit-b\", \"unit-b2\"]\nkey_sha256 = \"{}\"\n",
            hash("key-of-a"),
            hash("key-of-b")
        ),
    )
    .unwrap();
    let server = support::start_command(&[], &["--config", config.to_str().unwrap()]);
    let (a, b) = (Some("key-of-a"), Some("key-of-b"));
    let (start, end) = window(-5, 25);
    let book = |id: &str, unit: &str| json!({"id": id, "unit": unit, "start": start, "end": end});

    let (status, m) = server
        .api("POST", "/api/v1/meetings", a, Some(book("v-a", "unit-a")))
        .await;
    assert_eq!(status, 201, "{m}");
    let (status, m) = server
        .api("POST", "/api/v1/meetings", b, Some(book("v-b", "unit-b")))
        .await;
    assert_eq!(status, 201, "{m}");

    // B against A's unit and meeting: every route refused, nothing done.
    let mint = json!({"sub": "pat-1", "name": "Anna", "role": "patient"});
    let attempts: [(&str, String, Option<serde_json::Value>); 6] = [
        (
            "POST",
            "/api/v1/meetings".into(),
            Some(book("v-b-in-a", "unit-a")),
        ),
        ("GET", "/api/v1/meetings?unit=unit-a".into(), None),
        ("GET", "/api/v1/meetings/v-a".into(), None),
        ("GET", "/api/v1/meetings/v-a/participants".into(), None),
        (
            "POST",
            "/api/v1/meetings/v-a/tokens".into(),
            Some(mint.clone()),
        ),
        ("POST", "/api/v1/meetings/v-a/cancel".into(), None),
    ];
    for (method, path, body) in attempts {
        let on_a_meeting = path.starts_with("/api/v1/meetings/v-a");
        let (status, answer) = server.api(method, &path, b, body.clone()).await;
        if on_a_meeting {
            // Another unit's meeting is answered as one that does not exist, word for word:
            // B's key cannot tell which of A's visits there are.
            let nowhere = path.replace("/v-a", "/v-nowhere");
            let (s, none) = server.api(method, &nowhere, b, body).await;
            assert_eq!(s, 404, "{method} {nowhere}: {none}");
            assert_eq!(none["error"], "meeting_unknown");
            assert_eq!(
                (
                    status,
                    answer["reason"]
                        .as_str()
                        .map(|r| r.replace("v-a", "v-nowhere"))
                ),
                (404, none["reason"].as_str().map(str::to_owned)),
                "{method} {path}: {answer}"
            );
            assert_eq!(answer["error"], "meeting_unknown");
        } else {
            assert_eq!(
                (status, answer["error"].as_str()),
                (403, Some("unit_not_allowed")),
                "{method} {path}"
            );
        }
    }
    let (status, m) = server.api("GET", "/api/v1/meetings/v-a", a, None).await;
    assert_eq!((status, m["status"].as_str()), (200, Some("open")), "{m}");
    assert!(
        server
            .api("GET", "/api/v1/meetings/v-b-in-a", a, None)
            .await
            .0
            == 404,
        "the refused booking was not made"
    );
    // A token claiming another unit is refused too.
    let mut foreign = mint.clone();
    foreign["unit"] = json!("unit-b");
    let (status, _) = server
        .api("POST", "/api/v1/meetings/v-a/tokens", a, Some(foreign))
        .await;
    assert_eq!(status, 403);

    // Listing shows a system its own units' meetings only.
    let ids = |list: serde_json::Value| -> Vec<String> {
        list["meetings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, list) = server.api("GET", "/api/v1/meetings", a, None).await;
    assert_eq!(ids(list), ["v-a"]);
    let (_, list) = server.api("GET", "/api/v1/meetings", b, None).await;
    assert_eq!(ids(list), ["v-b"]);

    // The audit log: each refusal names the system and the unit; each call names its system.
    let refused = server.audit_events("api_refused");
    // Another unit's meeting and one that does not exist are recorded alike (an fsynced line
    // each, so neither the answer nor its time tells them apart): B's four lookups of
    // v-nowhere and A's of the booking that was refused.
    let unknown: Vec<_> = refused
        .iter()
        .filter(|e| e["code"] == "meeting_unknown")
        .map(|e| (e["api_client"].as_str(), e["meeting"].as_str()))
        .collect();
    assert_eq!(
        unknown,
        [
            (Some("booking-b"), Some("v-nowhere")),
            (Some("booking-b"), Some("v-nowhere")),
            (Some("booking-b"), Some("v-nowhere")),
            (Some("booking-b"), Some("v-nowhere")),
            (Some("booking-a"), Some("v-b-in-a")),
        ]
    );
    assert_eq!(refused.len(), 7 + unknown.len(), "{refused:?}");
    let by_b = refused
        .iter()
        .filter(|e| e["api_client"] == "booking-b" && e["code"] == "unit_not_allowed")
        .count();
    assert_eq!(by_b, 6, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|e| e["unit"].is_string() || e["code"] == "meeting_unknown")
    );
    for event in ["meeting_created", "api_meetings_listed", "api_meeting_read"] {
        let lines = server.audit_events(event);
        assert!(!lines.is_empty(), "{event}");
        for line in lines {
            assert!(
                line["api_client"] == "booking-a" || line["api_client"] == "booking-b",
                "{line}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With an internal listener, the meetings API and metrics are served there and nowhere on
/// the public listener; the public one keeps what browsers need.
#[tokio::test]
async fn the_api_and_metrics_move_to_the_internal_listener() {
    let server = support::start_with(&["--internal-listen", "127.0.0.1:0"]);
    let internal = server
        .printed("Internal (meetings API, metrics): ")
        .expect("the internal address printed");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let status = |url: String, key: Option<&'static str>| async move {
        let mut req = reqwest::Client::new().get(url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    let public = &server.http_base;
    assert_eq!(
        status(format!("{public}/api/v1/meetings"), Some(API_KEY))
            .await
            .0,
        404
    );
    assert_eq!(status(format!("{public}/metrics"), None).await.0, 404);
    assert_eq!(status(format!("{public}/healthz"), None).await.0, 200);
    assert_eq!(status(format!("{public}/client.js"), None).await.0, 200);
    let (code, body) = status(format!("{internal}/api/v1/meetings"), Some(API_KEY)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = status(format!("{internal}/metrics"), None).await;
    assert!(code == 200 && body.contains("signaling_"), "{code} {body}");
    assert_eq!(status(format!("{internal}/client.js"), None).await.0, 404);
    assert_eq!(status(format!("{internal}/readyz"), None).await.0, 200);
}

/// What a faulty or hostile booking system sends: times at the end of time, identity numbers
/// where the audit log would take them, percent-encoded ids, tokens for a meeting that is over.
/// Each is refused with the field named, and the service goes on booking and saving.
#[tokio::test]
async fn bad_bookings_are_refused_naming_the_field_and_the_service_goes_on() {
    let store_dir = std::env::temp_dir().join(format!("hc-store-{}", rand::random::<u64>()));
    let store = store_dir.join("meetings.json");
    let server = start_with(&["--meeting-store", store.to_str().unwrap()]);
    let key = Some(API_KEY);
    let book = |id: &str, start: &str, end: &str| json!({"id": id, "unit": "unit-1", "start": start, "end": end});
    for (body, field) in [
        (
            book("far", "9999-12-29T00:00:00Z", "9999-12-30T21:45:00Z"),
            "start",
        ),
        (
            book("old", "2020-01-01T10:00:00Z", "2020-01-01T10:30:00Z"),
            "end",
        ),
        (
            book("long", &window(10, 20).0, &window(0, 60 * 25).1),
            "end",
        ),
        (
            json!({"unit": "u".repeat(65), "start": window(10, 20).0, "end": window(10, 20).1}),
            "unit",
        ),
        // A line break in a unit printed a line of its own in a patient's log extract.
        (
            json!({"unit": "unit-1\n  staff: SE2321000016-X (unit-9)", "start": window(10, 20).0, "end": window(10, 20).1}),
            "unit",
        ),
        // A room's forwarding grows with the square of its size, on a node others share.
        (
            json!({"unit": "unit-1", "start": window(10, 20).0, "end": window(10, 20).1, "max_participants": 100000}),
            "max_participants",
        ),
    ] {
        let (status, refused) = server
            .api("POST", "/api/v1/meetings", key, Some(body))
            .await;
        assert_eq!(status, 422, "{refused}");
        assert_eq!(refused["error"], "invalid_meeting");
        assert!(
            refused["reason"].as_str().unwrap().starts_with(field),
            "{refused}"
        );
    }
    let (status, refused) = server
        .api("GET", "/api/v1/meetings?unit=19900101-1234", key, None)
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (422, Some("invalid_query"))
    );

    let (start, end) = window(-40, 25);
    let (status, m) = server
        .api(
            "POST",
            "/api/v1/meetings",
            key,
            Some(book("bv-1", &start, &end)),
        )
        .await;
    assert_eq!(status, 201, "{m}");
    let (status, refused) = server
        .api("GET", "/api/v1/meetings/bv%2D1", key, None)
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (404, Some("meeting_unknown"))
    );
    let (status, refused) = server
        .api(
            "POST",
            "/api/v1/meetings/bv-1/tokens",
            key,
            Some(json!({"sub": "s1", "name": "Dr", "role": "clinician", "hsa": "SE5501011234-A1"})),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["reason"].as_str().unwrap().starts_with("hsa"),
        "{refused}"
    );
    for (body, field) in [
        (
            json!({"sub": "s2", "name": "Anna\nDr X", "role": "patient"}),
            "name",
        ),
        (
            json!({"sub": "s2", "name": "Anna", "role": "companion", "companion_of": "p".repeat(129)}),
            "companion_of",
        ),
    ] {
        let (status, refused) = server
            .api("POST", "/api/v1/meetings/bv-1/tokens", key, Some(body))
            .await;
        assert_eq!(status, 422, "{refused}");
        assert!(
            refused["reason"].as_str().unwrap().starts_with(field),
            "{refused}"
        );
    }
    // A personal identity number as the id in a path (a booking system that keys its
    // visits by it): refused, and not written — before, its `api_refused` line named it.
    for (method, path) in [
        ("GET", "/api/v1/meetings/19900101-1234"),
        ("POST", "/api/v1/meetings/5501011234/cancel"),
        ("GET", "/api/v1/meetings/5501011234/participants"),
    ] {
        let (status, refused) = server.api(method, path, key, None).await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (422, Some("invalid_meeting")),
            "{method} {path}"
        );
    }
    let long = "x".repeat(300);
    let (status, _) = server
        .api("GET", &format!("/api/v1/meetings/{long}"), key, None)
        .await;
    assert_eq!(status, 422);
    assert!(
        !server.audit_text().contains(&long),
        "a 300-byte id written"
    );

    // Nothing of the refused reached the audit log; the booking was saved.
    let audit = server.audit_text();
    for never in ["19900101-1234", "5501011234", "9999-12"] {
        assert!(!audit.contains(never), "{never} in the audit log");
    }
    let saved = std::fs::read_to_string(&store).unwrap();
    assert!(saved.contains("bv-1"), "the store is written");
    assert!(!saved.contains("\"far\""));

    // A cancelled meeting mints nothing.
    let (status, m) = server
        .api(
            "POST",
            "/api/v1/meetings",
            key,
            Some(book("bv-2", &start, &end)),
        )
        .await;
    assert_eq!(status, 201, "{m}");
    let (status, cancelled) = server
        .api("POST", "/api/v1/meetings/bv-2/cancel", key, None)
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let (status, refused) = server
        .api(
            "POST",
            "/api/v1/meetings/bv-2/tokens",
            key,
            Some(json!({"sub": "s1", "name": "Anna", "role": "patient"})),
        )
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (410, Some("meeting_over"))
    );
    let lines = server.audit_events("meeting_cancelled");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["unit"], "unit-1");
    assert!(lines[0]["api_client"].is_string(), "{}", lines[0]);
    let _ = std::fs::remove_dir_all(store_dir);
}

/// A queue's links outlive it by a private visit, but never so far that they would not be
/// valid yet while it is open: with tokens lasting at most 3 hours, an open 2-hour queue's link
/// is valid now, and expires 3 hours from now (not 3 h 30 min after the queue closes, which
/// would have made it valid only from 1 h 30 min into the queue).
#[tokio::test]
async fn a_queue_link_is_valid_while_the_queue_is_open_whatever_the_longest_lifetime() {
    let server = start_with(&["--max-token-lifetime-hours", "3"]);
    let (start, end) = window(-1, 120);
    let (status, q) = server
        .api("POST", "/api/v1/meetings", Some(API_KEY),
             Some(json!({"id": "q-short", "unit": "unit-1", "kind": "drop_in", "start": start, "end": end})))
        .await;
    assert_eq!(status, 201, "{q}");
    let asked = jiff::Timestamp::now();
    let (status, minted) = server
        .api(
            "POST",
            "/api/v1/meetings/q-short/tokens",
            Some(API_KEY),
            Some(json!({"sub": "pat-z", "name": "Z", "role": "patient"})),
        )
        .await;
    assert_eq!(status, 200, "{minted}");
    let expires: jiff::Timestamp = minted["expires_at"].as_str().unwrap().parse().unwrap();
    let three_hours = asked + jiff::SignedDuration::from_hours(3);
    assert!(
        (three_hours.as_second() - 1..=three_hours.as_second() + 5).contains(&expires.as_second()),
        "{minted}"
    );
    // Valid now: the patient joins the queue.
    let token = minted["token"].as_str().unwrap();
    let mut patient = server.connect(token).await;
    assert_eq!(patient.next_of("lobby_position").await["position"], 1);
}
