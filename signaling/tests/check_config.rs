//! `signaling check-config` names the key and the file of a mistake in the media settings
//! (the ranges `serve` enforces), and passes the shipped single-node config.

use std::process::Command;

fn check(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["check-config"])
        .arg(config)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("signaling runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn media_ranges_are_checked_with_the_file_and_key_named() {
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/single-node.toml");
    let (ok, text) = check(&shipped);
    assert!(ok, "{text}");

    let dir = std::env::temp_dir().join(format!("hc-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (line, key) in [
        ("video_floor_kbps = 5000", "video_floor_kbps"),
        ("start_bitrate_kbps = 5", "start_bitrate_kbps"),
    ] {
        let path = dir.join("region.toml");
        std::fs::write(&path, format!("[sfu]\n{line}\n")).unwrap();
        let (ok, text) = check(&path);
        assert!(!ok, "{line} was accepted: {text}");
        assert!(
            text.contains("region.toml [sfu]") && text.contains(key),
            "{text}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Values `serve` refuses by their form are refused by `check-config` too, each with its key
/// and the file named — before, each of these passed the check and stopped the service (or,
/// for the store, lost every booking at the next restart; for the address, left media
/// unable to connect, silently).
#[test]
fn what_serve_refuses_by_its_form_the_check_refuses_naming_key_and_file() {
    let dir = std::env::temp_dir().join(format!("hc-check-form-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (toml, key, why) in [
        (
            "[meetings]\nstore = \"redis.region.internal:6379\"\n",
            "meetings.store",
            "redis://redis.region.internal:6379",
        ),
        (
            "[meetings]\nmax_participants = 0\n",
            "[meetings]",
            "at least 1",
        ),
        ("[meetings]\nqueue_limit = 0\n", "[meetings]", "at least 1"),
        (
            "[meetings]\ntime_zone = \"Europe/Stokholm\"\n",
            "[meetings]",
            "not a known time zone",
        ),
        (
            "[http]\ntrusted_proxies = [\"0.0.0.0/0\"]\n",
            "http.trusted_proxies",
            "every address",
        ),
        (
            "[tokens]\nmax_lifetime_hours = 0\n",
            "tokens.max_lifetime_hours",
            "at least 1",
        ),
        (
            "public_url = \"video.region.se\"\n",
            "public_url",
            "http(s)://",
        ),
        (
            "[sfu]\nadvertise_ip = \"0.0.0.0\"\n",
            "sfu.advertise_ip",
            "no client can reach",
        ),
        // Settings that do nothing where they are given: refused, not ignored.
        (
            "[tokens]\njwks_file = \"/etc/hc/jwks.json\"\njwks_ca_file = \"/etc/hc/ca.pem\"\n",
            "tokens.jwks_ca_file",
            "does nothing without tokens.jwks_url",
        ),
        (
            "[turn]\nsecret_file = \"/etc/hc/turn.secret\"\n",
            "turn.secret_file",
            "does nothing without turn.urls",
        ),
        (
            "[audit.sink]\nstream = \"pod-0:audit\"\n",
            "audit.sink.stream",
            "does nothing without audit.sink.redis_url",
        ),
        (
            "[tls]\ncert = \"/etc/hc/tls.crt\"\nkey = \"/etc/hc/tls.key\"\nself_signed = true\n",
            "tls.self_signed",
            "does nothing beside tls.cert",
        ),
    ] {
        let path = dir.join("region.toml");
        std::fs::write(&path, toml).unwrap();
        let (ok, text) = check(&path);
        assert!(!ok, "{toml} was accepted: {text}");
        assert!(
            text.contains("region.toml") && text.contains(key) && text.contains(why),
            "{toml}: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A needed key given by its environment variable where the check runs (the audit copy's
/// Redis URL carries its password, so it goes in a variable): the options beside it in the
/// file are not refused as doing nothing.
#[test]
fn a_needed_key_given_by_its_variable_counts() {
    let dir = std::env::temp_dir().join(format!("hc-check-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("region.toml");
    std::fs::write(&path, "[audit.sink]\nstream = \"pod-0:audit\"\n").unwrap();
    let run = |url: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_signaling"));
        command.arg("check-config").arg(&path);
        command.env_remove("SIGNALING_AUDIT_REDIS_URL");
        if let Some(url) = url {
            command.env("SIGNALING_AUDIT_REDIS_URL", url);
        }
        let out = command.output().expect("signaling runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(None);
    assert!(!ok && err.contains("SIGNALING_AUDIT_REDIS_URL"), "{err}");
    let (ok, err) = run(Some("redis://:secret@redis:6379"));
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
