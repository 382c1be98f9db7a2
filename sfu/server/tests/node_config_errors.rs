//! A node's configuration mistake names where the value came from: the flag that gave it, or
//! the file and section — never the file for a value a flag gave.

use std::process::Command;

/// The `sfu` command's exit and what it printed on stderr.
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_media_value_names_its_flag_or_its_file() {
    let dir = std::env::temp_dir().join(format!("hc-node-config-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(&file, "[media]\nvideo_floor_kbps = 100000\n").unwrap();
    let file = file.display().to_string();

    // The flag's value is wrong, beside a file: the flag is named.
    let (ok, err) = run(&["--config", &file, "--start-bitrate-kbps", "999999"]);
    assert!(!ok);
    assert!(
        err.contains("--start-bitrate-kbps: start_bitrate_kbps = 999999"),
        "{err}"
    );
    assert!(!err.contains("[media]"), "{err}");

    // The file's value is wrong: the file and its section are named.
    let (ok, err) = run(&["--config", &file]);
    assert!(!ok);
    assert!(err.contains(&format!("{file} [media]")), "{err}");
    assert!(err.contains("video_floor_kbps = 100000"), "{err}");

    // The same value by flag, over the file's: the flag.
    let (ok, err) = run(&["--config", &file, "--video-floor-kbps", "100000"]);
    assert!(!ok);
    assert!(err.contains("--video-floor-kbps"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
