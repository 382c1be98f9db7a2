//! The audit trail off the host, against a real Redis: every line copied in order, an outage
//! of Redis bridged from the file (past the memory bound), an outage of the file bridged by
//! Redis, access refused only when both are down; and `audit verify` with the public key and
//! the copy catching a removed tail.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::redis::{Redis, free_port};
use support::{API_KEY, chattr, start_with};

const STREAM: &str = "healthcare-sfu:audit";

fn copy(url: &str) -> Vec<String> {
    signaling::audit_sink::read_copy(url, STREAM)
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect()
}

fn file_lines(server: &support::Server) -> Vec<String> {
    server.audit_text().lines().map(str::to_owned).collect()
}

/// Waits until the copy in Redis equals the file, line for line.
async fn copy_matches_file(server: &support::Server, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (c, f) = (copy(url), file_lines(server));
        if c == f {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the copy ({} lines) never matched the file ({} lines)",
            c.len(),
            f.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_line_reaches_redis_through_outages_and_verify_catches_a_removed_tail() {
    let port = free_port();
    let redis = Redis::start(port);
    let url = redis.url();
    let mut server = start_with(&[
        "--audit-redis-url",
        &url,
        "--audit-sink-buffer-lines",
        "3",
        "--audit-checkpoint-lines",
        "4",
    ]);
    let list = || server.api("GET", "/api/v1/meetings", Some(API_KEY), None);

    for _ in 0..5 {
        assert_eq!(list().await.0, 200);
    }
    copy_matches_file(&server, &url).await;
    let before_outage = file_lines(&server).len();

    // Redis away: care goes on (the file takes every line); Redis back empty: the whole chain
    // is copied again, well past the 3 lines held in memory.
    redis.stop();
    for _ in 0..12 {
        assert_eq!(list().await.0, 200);
    }
    let redis = Redis::start(port);
    copy_matches_file(&server, &url).await;
    assert!(copy(&url).len() >= before_outage + 12);

    // File and Redis both away: the access is refused, and leaves no line anywhere.
    redis.stop();
    assert_eq!(list().await.0, 200, "a line after Redis went, to notice it");
    let lines_now = file_lines(&server);
    chattr("+i", &server.audit);
    let (status, body) = list().await;
    chattr("-i", &server.audit);
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("audit_unavailable"))
    );
    assert_eq!(file_lines(&server), lines_now);

    // The file away but Redis there: the line counts once Redis has it, and reaches the file
    // when it can be written again.
    let redis = Redis::start(port);
    copy_matches_file(&server, &url).await;
    chattr("+i", &server.audit);
    let (status, _) = list().await;
    let copied_while_file_away = copy(&url);
    chattr("-i", &server.audit);
    assert_eq!(status, 200);
    // The call's line (and a checkpoint it may have brought) are in Redis only, for now.
    let in_file = file_lines(&server);
    assert!(copied_while_file_away.len() > in_file.len());
    assert_eq!(copied_while_file_away[..in_file.len()], in_file[..]);
    assert!(copied_while_file_away[in_file.len()].contains("api_meetings_listed"));
    assert_eq!(list().await.0, 200);
    copy_matches_file(&server, &url).await;

    // Again, but the process dies before the file is back: the next start writes back what
    // only Redis held, and says so.
    chattr("+i", &server.audit);
    assert_eq!(list().await.0, 200);
    let held_by_copy = copy(&url);
    assert!(held_by_copy.len() > file_lines(&server).len());
    let audit_file = server.audit.clone();
    server.restart_after(|| chattr("-i", &audit_file));
    let restored = file_lines(&server);
    assert!(
        restored.starts_with(&held_by_copy),
        "the lines only the copy held were not written back ({} in the file, {} in the copy)",
        restored.len(),
        held_by_copy.len()
    );
    assert!(
        restored[held_by_copy.len()].contains("restored_from_copy"),
        "{}",
        restored[held_by_copy.len()]
    );
    assert!(restored[held_by_copy.len() + 1].contains("after_unclean_stop"));
    copy_matches_file(&server, &url).await;

    // A crash that tore the last line: the service starts, keeps every complete line, and
    // records the recovery.
    let complete = file_lines(&server);
    let audit_file = server.audit.clone();
    server.restart_after(|| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&audit_file)
            .unwrap();
        f.write_all(b"{\"event\":\"join\",\"meeting\":\"v").unwrap();
    });
    let after = file_lines(&server);
    assert!(after.starts_with(&complete), "a complete line was lost");
    assert!(
        after[complete.len()].contains("torn_line_dropped"),
        "{}",
        after[complete.len()]
    );
    copy_matches_file(&server, &url).await;

    // A clean stop closes the log; verify with the public key and the copy: exit 0.
    assert!(server.interrupt().success());
    copy_matches_file(&server, &url).await;
    let public = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["audit", "public-key", "--key"])
        .arg(server.dir.join("audit-signing.key"))
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap().trim().to_owned();
    let verify = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_signaling"))
            .args(["audit", "verify"])
            .arg(&server.audit)
            .args(["--public-key", &public])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = verify(&["--sink", &url]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("closing checkpoint"), "{out}");
    assert!(out.contains("signature(s) hold"), "{out}");

    // The tail removed from the file: not closed (2); with the copy: truncated (1).
    let lines = file_lines(&server);
    std::fs::write(&server.audit, lines[..lines.len() - 3].join("\n") + "\n").unwrap();
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("NOT CLOSED"), "{out}");
    let (code, out) = verify(&["--sink", &url]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("TRUNCATED"), "{out}");
    drop(redis);
}
