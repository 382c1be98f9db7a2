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

#[test]
fn a_wrong_turn_url_in_the_file_names_its_key_and_file() {
    let dir = std::env::temp_dir().join(format!("hc-turn-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("signaling.toml");
    std::fs::write(
        &config,
        "[turn]\nurls = [\"stun:turn.region.se\"]\nsecret_file = \"/nonexistent\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .arg("--config")
        .arg(&config)
        .env("SIGNALING_DEV_KEY", dir.join("issuer.key"))
        .env("SIGNALING_AUDIT_LOG", dir.join("audit.jsonl"))
        .env("TURN_SECRET", "0123456789abcdef0123")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("turn.urls in")
            && err.contains("signaling.toml")
            && err.contains("stun:turn.region.se"),
        "{err}"
    );
}

#[tokio::test]
async fn clients_get_turn_credentials_signed_with_the_shared_secret_before_the_welcome() {
    use base64::Engine;
    let secret = "0123456789abcdef-turn-secret";
    let server = start_with(&[
        "--turn-url",
        "turns:turn.region.test:443?transport=tcp,turn:turn.region.test:3478",
        "--turn-secret",
        secret,
    ]);
    let token = server.token("visit-t", "pat-t", "Anna", "patient");
    let mut c = server.connect(&token).await;
    let first = c.next().await;
    assert_eq!(first["type"], "ice_servers", "{first}");
    let s = &first["ice_servers"][0];
    assert_eq!(
        s["urls"],
        serde_json::json!([
            "turns:turn.region.test:443?transport=tcp",
            "turn:turn.region.test:3478"
        ])
    );
    let username = s["username"].as_str().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 11 * 3600..=now + 12 * 3600 + 5).contains(&expiry),
        "12 h by default"
    );
    let welcome = c.next_of("welcome").await;
    assert_eq!(
        welcome["participant"].as_str(),
        Some(who),
        "the pseudonymous participant id"
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, username.as_bytes()).as_ref());
    assert_eq!(s["credential"].as_str(), Some(expected.as_str()));
    // Without a relay configured the list is empty.
    let plain = start_with(&[]);
    let token = plain.token("visit-u", "pat-u", "Bo", "patient");
    let mut c = plain.connect(&token).await;
    let first = c.next().await;
    assert_eq!(first["ice_servers"], serde_json::json!([]));
}

#[test]
fn outside_dev_the_service_does_not_start_without_an_audit_log() {
    let dir = std::env::temp_dir().join(format!("hc-noaudit-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("signaling.toml");
    std::fs::write(&config, "[meetings]\nmax_participants = 4\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--config")
        .arg(&config)
        .env_remove("SIGNALING_AUDIT_LOG")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no audit log configured")
            && err.contains("audit.path")
            && err.contains("signaling.toml")
            && err.contains("--audit-log"),
        "{err}"
    );
}

fn start_failure(config: &str, extra: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("hc-api-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("signaling.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--config")
        .arg(&path)
        .args(extra)
        .env("SIGNALING_AUDIT_LOG", dir.join("audit.jsonl"))
        .env("SIGNALING_DEV_KEY", dir.join("issuer.key"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn api_keys_in_the_clear_are_refused_naming_the_key_and_the_way_out() {
    let err = start_failure("[api]\nkeys = [\"secret\"]\n", &[]);
    assert!(
        err.contains("api.keys")
            && err.contains("signaling.toml")
            && err.contains("[[api.clients]]"),
        "{err}"
    );
    let err = start_failure(
        "[[api.clients]]\nname = \"b\"\nunits = [\"u\"]\nkey_sha256 = \"abc\"\n",
        &[],
    );
    assert!(
        err.contains("api.clients[0].key_sha256") && err.contains("signaling.toml"),
        "{err}"
    );
    let err = start_failure("", &["--api-key", "secret"]);
    assert!(err.contains("--api-key") && err.contains("--dev"), "{err}");
}

/// A production config run with --dev (a `SIGNALING_DEV` left in a deployment's environment):
/// the dev issuer's tokens would be accepted beside the region's, and a clinician's join link
/// printed to the log. Refused, naming the key and the file.
#[test]
fn a_config_with_the_regions_token_keys_is_not_run_with_dev() {
    for (config, key) in [
        (
            "[tokens]\njwks_file = \"/etc/hc/jwks.json\"\n",
            "tokens.jwks_file",
        ),
        (
            "[tokens]\njwks_url = \"https://idp.example/jwks.json\"\n",
            "tokens.jwks_url",
        ),
    ] {
        let err = start_failure(config, &["--dev"]);
        assert!(
            err.contains(key) && err.contains("signaling.toml") && err.contains("--dev"),
            "{err}"
        );
    }
}

#[test]
fn api_key_prints_a_key_once_and_an_entry_holding_only_its_hash() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args([
            "api-key",
            "--name",
            "booking",
            "--unit",
            "SE2321000016-ABCD",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().nth(1).unwrap().trim();
    assert!(key.len() >= 40, "{text}");
    let entry = &text[text.find("[[api.clients]]").unwrap()..];
    assert!(!entry.contains(key), "the entry must not hold the key");
    let parsed = signaling::config::FileConfig::parse(entry).unwrap();
    let c = &parsed.api.unwrap().clients.unwrap()[0];
    let client = signaling::api_client::ApiClient::new(&c.name, &c.units, &c.key_sha256).unwrap();
    let clients = [client];
    let found = signaling::api_client::ApiClient::find(&clients, key).unwrap();
    assert!(found.may_act_for("SE2321000016-ABCD") && !found.may_act_for("other"));
}

#[test]
fn outside_dev_the_audit_log_needs_its_signing_key() {
    let err = start_failure("", &[]);
    assert!(
        err.contains("audit.signing_key") && err.contains("audit keygen"),
        "{err}"
    );
    let err = start_failure("[audit]\nsigning_key = \"/nonexistent/k\"\n", &[]);
    assert!(
        err.contains("/nonexistent/k") && err.contains("signaling.toml"),
        "{err}"
    );
}

/// Replicas need a Redis meeting store, an internal listener and a long enough secret: each
/// missing piece stops the service with its key named.
#[test]
fn replica_settings_name_what_is_missing() {
    let redis = support::redis::Redis::start(support::redis::free_port());
    let dir = std::env::temp_dir().join(format!("hc-rep-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = redis.url();
    let cases: [(&[&str], &str); 4] = [
        (
            &[],
            "set meetings.store (--meeting-store) to a redis:// URL",
        ),
        (&["--meeting-store", &url], "set http.internal_listen"),
        (
            &["--meeting-store", &url, "--internal-listen", "127.0.0.1:0"],
            "replicas.secret_file (--replica-secret-file) is not",
        ),
        (
            &[
                "--meeting-store",
                &url,
                "--internal-listen",
                "127.0.0.1:0",
                "--replica-secret",
                "s3cr3t-XYZ",
            ],
            "at least 32 printable characters",
        ),
    ];
    for (extra, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
            .args([
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
            ])
            .args(["--replica-url", "http://127.0.0.1:9"])
            .args(extra)
            .env("SIGNALING_DEV_KEY", dir.join("issuer.key"))
            .env("SIGNALING_AUDIT_LOG", dir.join("audit.jsonl"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("replicas.") && err.contains(expected),
            "{extra:?}: {err}"
        );
        assert!(
            !err.contains("s3cr3t-XYZ"),
            "the secret stays out of messages"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A control-link setting given for another SFU mode is named in a warning (it has no effect
/// here), and one the mode uses is not.
#[test]
fn settings_another_sfu_mode_uses_are_named_as_unused() {
    let server = start_with(&[
        "--cluster-ca",
        "/nonexistent/ca.pem",
        "--companion-metrics-listen",
        "127.0.0.1:9465",
    ]);
    let log = std::fs::read_to_string(&server.log).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("this SFU mode does not use"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(
        warning.contains("--cluster-ca")
            && warning.contains("--companion-metrics-listen")
            && warning.contains("Embedded"),
        "{warning}"
    );
    assert!(!warning.contains("--sfu-listen"), "{warning}");
}

/// Binding every address with no address to announce: the media server would tell phones to
/// send to 0.0.0.0 and no call would connect, with nothing said. The start stops, naming the
/// key (and the file).
#[test]
fn an_address_no_client_can_reach_is_not_announced() {
    for (config, extra, named) in [
        (
            "",
            &["--dev", "--udp-bind-ip", "0.0.0.0"][..],
            "sfu.advertise_ip in",
        ),
        (
            "[sfu]\nbind_ip = \"0.0.0.0\"\n",
            &["--dev"][..],
            "sfu.advertise_ip in",
        ),
        (
            "",
            &["--dev", "--advertise-ip", "0.0.0.0"][..],
            "--advertise-ip",
        ),
    ] {
        let err = start_failure(config, extra);
        assert!(err.contains(named) && err.contains("0.0.0.0"), "{err}");
    }
}

/// A TURN value given by flag (or its variable) and wrong is named by that flag, not by the
/// file's key the operator never set.
#[test]
fn a_wrong_turn_value_names_the_flag_it_came_from() {
    let config = "[turn]\nurls = [\"turn:turn.region.se:3478\"]\n";
    let err = start_failure(config, &["--dev", "--turn-secret", "short"]);
    assert!(
        err.contains("--turn-secret (TURN_SECRET)") && err.contains("shorter than 16 bytes"),
        "{err}"
    );
    let secret = ["--turn-secret", "0123456789abcdef0123"];
    let err = start_failure(
        config,
        &["--dev", secret[0], secret[1], "--turn-ttl-hours", "0"],
    );
    assert!(
        err.contains("--turn-ttl-hours (TURN_TTL_HOURS)") && !err.contains("signaling.toml"),
        "{err}"
    );
}
