//! The meeting store on a real redis-server (append-only, as the chart runs it): two
//! processes sharing it book one id at the same moment and one wins; a booking made through
//! one is known to the other; a Redis restart loses no booking; a Redis that cannot be reached
//! books nothing and says so.

mod support;

use serde_json::json;
use std::process::Command;
use support::API_KEY;
use support::redis::{Redis, free_port};

fn booking(id: &str) -> serde_json::Value {
    let now = jiff::Timestamp::now();
    json!({
        "id": id,
        "unit": "unit-1",
        "start": (now - jiff::SignedDuration::from_mins(5)).to_string(),
        "end": (now + jiff::SignedDuration::from_mins(60)).to_string(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_book_each_id_once_and_a_redis_restart_loses_no_booking() {
    let dir = std::env::temp_dir().join(format!("hc-redis-{}", rand::random::<u64>()));
    let mut redis = Redis::persistent(free_port(), &dir);
    let url = redis.url();
    let a = support::start_with(&["--meeting-store", &url]);
    let b = support::start_with(&["--meeting-store", &url]);

    // The same id through both at the same moment, twenty times: one booking each time.
    for i in 0..20 {
        let id = format!("v-race-{i}");
        let (ra, rb) = tokio::join!(
            a.api(
                "POST",
                "/api/v1/meetings",
                Some(API_KEY),
                Some(booking(&id))
            ),
            b.api(
                "POST",
                "/api/v1/meetings",
                Some(API_KEY),
                Some(booking(&id))
            ),
        );
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "{id}: {ra:?} {rb:?}");
    }
    // Each lost race was recorded as asked, and then as not made.
    let not_applied: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|s| s.audit_events("meeting_created_not_applied"))
        .collect();
    assert_eq!(not_applied.len(), 20);
    assert!(not_applied.iter().all(|l| l["code"] == "meeting_exists"));

    // A booking made through one is known to the other: it answers for it and lets its
    // patient in.
    let (status, _) = a
        .api(
            "POST",
            "/api/v1/meetings",
            Some(API_KEY),
            Some(booking("v-shared")),
        )
        .await;
    assert_eq!(status, 201);
    let (status, m) = b
        .api("GET", "/api/v1/meetings/v-shared", Some(API_KEY), None)
        .await;
    assert_eq!((status, m["id"].as_str()), (200, Some("v-shared")), "{m}");
    let (status, t) = b
        .api(
            "POST",
            "/api/v1/meetings/v-shared/tokens",
            Some(API_KEY),
            Some(json!({"sub": "pat-3c1d", "name": "Anna", "role": "patient"})),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    let mut patient = b.connect(t["token"].as_str().unwrap()).await;
    let welcome = patient.next_of("welcome").await;
    assert_eq!(
        (welcome["meeting"].as_str(), welcome["state"].as_str()),
        (Some("v-shared"), Some("waiting"))
    );
    drop(patient);

    // Redis restarts; then the service does: every booking is still there.
    redis.restart();
    drop(b);
    let mut a = a;
    a.restart();
    let (status, list) = a.api("GET", "/api/v1/meetings", Some(API_KEY), None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["meetings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 21, "{ids:?}");
    assert!(ids.contains(&"v-shared") && ids.contains(&"v-race-19"));

    // Redis gone: a booking is refused with a clear error, and nothing is booked.
    redis.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let (status, body) = a
        .api(
            "POST",
            "/api/v1/meetings",
            Some(API_KEY),
            Some(booking("v-lost")),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    // What this service knows it still answers; of what it does not, it cannot say.
    let (status, _) = a
        .api("GET", "/api/v1/meetings/v-shared", Some(API_KEY), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = a
        .api("GET", "/api/v1/meetings/v-lost", Some(API_KEY), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("store_unavailable"))
    );
}

#[test]
fn an_unreachable_store_at_start_names_the_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .args(["--meeting-store", "redis://:s3cret@127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("meetings.store (--meeting-store)"), "{err}");
    assert!(
        !err.contains("s3cret"),
        "the password stays out of messages: {err}"
    );
}
