//! Every meeting setting has a flag and an environment variable beside its config key, and a
//! wrong value names the key.

mod support;

use support::start_with;

#[tokio::test]
async fn meeting_settings_come_from_flags_too() {
    let server = start_with(&["--max-participants", "1"]);
    let first = server.token("visit-f", "pat-1", "Anna", "patient");
    let second = server.token("visit-f", "pat-2", "Bo", "companion");
    let mut a = server.connect(&first).await;
    a.next_of("welcome").await;
    let (status, body) = server.refused(&format!("token={second}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("meeting_full"))
    );
}

#[test]
fn a_wrong_time_zone_names_its_key() {
    let dir = std::env::temp_dir().join(format!("hc-tz-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .env("SIGNALING_TIME_ZONE", "Nowhere/Else")
        .env("SIGNALING_DEV_KEY", dir.join("issuer.key"))
        .env("SIGNALING_AUDIT_LOG", dir.join("audit.jsonl"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("time_zone") && err.contains("Nowhere/Else"),
        "{err}"
    );
}
