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
