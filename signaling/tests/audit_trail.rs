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

/// A log's options with its copy in the Redis at `url`, holding up to `buffer_lines` in memory.
fn with_copy(url: &str, buffer_lines: usize) -> signaling::audit_log::AuditOptions {
    signaling::audit_log::AuditOptions {
        sink: Some(signaling::audit_sink::SinkConfig {
            url: url.to_owned(),
            stream: STREAM.into(),
            buffer_lines,
            timeout: Duration::from_secs(2),
        }),
        ..Default::default()
    }
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
    let public = server.audit_public_key();
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
    // Another stream (a forgotten --stream: a pod's copy is its own) holds nothing of it: no
    // agreement to report (before, "0 line(s) match" and exit 0).
    let (code, out) = verify(&["--sink", &url, "--stream", "another-pod:audit"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("EMPTY") && out.contains("another-pod:audit"),
        "{out}"
    );

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

/// A line the service wrote, edited on the host while the service was down — its hash and
/// every later line's rechained — is caught against the copy at the next start, which then
/// neither signs over it nor writes anything.
#[test]
fn a_line_edited_while_the_service_was_down_is_caught_against_the_copy() {
    use serde_json::{Map, Value};
    use signaling::audit_log::{AuditError, AuditEvent, AuditLog};
    let redis = Redis::start(free_port());
    let url = redis.url();
    let dir = std::env::temp_dir().join(format!("hc-audit-edit-{}", rand::random::<u64>()));
    let path = dir.join("audit.jsonl");
    let options = || with_copy(&url, 100);
    let log = AuditLog::open_with(&path, options()).unwrap();
    for sub in ["pat-1", "pat-2", "pat-3"] {
        log.append(&AuditEvent {
            event: "join".into(),
            meeting: Some("m1".into()),
            subject: Some(sub.into()),
            ..Default::default()
        })
        .unwrap();
    }
    let file = || std::fs::read_to_string(&path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while copy(&url).len() < file().lines().count() {
        assert!(Instant::now() < deadline, "the copy never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Gone without its closing checkpoint, as in a crash.
    drop(log);

    let original = file();
    // pat-2's line names someone else; every hash from there on recomputed.
    let hash = |f: &Map<String, Value>| {
        let mut without = f.clone();
        without.remove("hash");
        let canonical = serde_json::to_string(&without).unwrap();
        ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let mut prev = None::<String>;
    let mut edited = String::new();
    for line in file().lines() {
        let mut f: Map<String, Value> = serde_json::from_str(line).unwrap();
        if f.get("subject") == Some(&Value::from("pat-2")) {
            f.insert("subject".into(), Value::from("pat-other"));
        }
        if let Some(p) = &prev {
            f.insert("prev".into(), Value::from(p.clone()));
        }
        let h = hash(&f);
        f.insert("hash".into(), Value::from(h.clone()));
        prev = Some(h);
        edited += &(serde_json::to_string(&f).unwrap() + "\n");
    }
    std::fs::write(&path, &edited).unwrap();
    assert!(
        signaling::audit_chain::verify_chain(&path, None).is_ok(),
        "the edit holds up against the file alone"
    );

    match AuditLog::open_with(&path, options()) {
        Err(AuditError::CopyDisagrees { reason, .. }) => {
            assert!(reason.contains("another line"), "{reason}")
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("the service started over an edited line"),
    }
    assert_eq!(file(), edited, "and wrote nothing");

    // The file as it was, but the copy's oldest lines trimmed away (as `XADD … MAXLEN` can):
    // what the file holds can no longer be vouched for, and the start says so.
    std::fs::write(&path, &original).unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg(STREAM)
        .arg("MAXLEN")
        .arg(2)
        .query(&mut con)
        .unwrap();
    match AuditLog::open_with(&path, options()) {
        Err(AuditError::CopyDisagrees { reason, .. }) => {
            assert!(reason.contains("lacks line 3"), "{reason}")
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("the service started against a trimmed copy"),
    }
    assert_eq!(file(), original);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The audit file lost with its volume while the copy holds its whole history — more than a
/// page of it (1,000 lines): the next start writes every line back from the copy, page by
/// page, continuing the chain; `verify --sink` compares file and copy page by page too, and
/// still sees a tail cut from the file and lines archived from the copy.
#[test]
fn a_log_lost_with_its_volume_is_written_back_from_a_copy_of_many_pages() {
    use signaling::audit_log::{AuditEvent, AuditLog};
    let redis = Redis::start(free_port());
    let url = redis.url();
    let dir = std::env::temp_dir().join(format!("hc-audit-lost-{}", rand::random::<u64>()));
    let path = dir.join("audit.jsonl");
    let options = || with_copy(&url, 5_000);
    let log = AuditLog::open_with(&path, options()).unwrap();
    for n in 0..2_600 {
        log.append(&AuditEvent {
            event: "join".into(),
            meeting: Some(format!("m{}", n % 7)),
            subject: Some(format!("pat-{n}")),
            ..Default::default()
        })
        .unwrap();
    }
    log.close(Duration::from_secs(15)).unwrap();
    drop(log);
    let written = std::fs::read_to_string(&path).unwrap();
    let count = written.lines().count();
    assert!(count > 2_600, "{count}");
    assert_eq!(copy(&url).len(), count, "the copy has every line");

    let verify = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_signaling"))
            .args(["audit", "verify"])
            .arg(&path)
            .args(["--sink", &url, "--stream", STREAM])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("off-host copy: {count} line(s) match the file")),
        "{out}"
    );

    // The volume is lost: the next start finds no file, and writes the copy back — but only
    // once every line was checked: a line added at the copy's end (three pages in, after the
    // closing checkpoint, not continuing the chain) refuses the start with nothing written.
    std::fs::remove_file(&path).unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    // (On a copy of the copy: Redis never takes an id below a stream's last again.)
    let forged = "healthcare-sfu:audit:forged";
    let mut entries = signaling::audit_sink::read_copy(&url, STREAM).unwrap();
    let next = entries.len() as u64 + 1;
    entries.push((
        next,
        r#"{"event":"join","hash":"00","prev":"11","seq":0}"#.into(),
    ));
    for (seq, line) in &entries {
        let _: String = redis::cmd("XADD")
            .arg(forged)
            .arg(format!("{seq}-0"))
            .arg("line")
            .arg(line)
            .query(&mut con)
            .unwrap();
    }
    let mut on_forged = options();
    if let Some(sink) = on_forged.sink.as_mut() {
        sink.stream = forged.into();
    }
    match AuditLog::open_with(&path, on_forged) {
        Err(signaling::audit_log::AuditError::CopyDisagrees { reason, .. }) => {
            assert!(reason.contains(&format!("line {next}")), "{reason}")
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started over a copy with a line added"),
    }
    assert_eq!(
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        0,
        "nothing written back"
    );
    let log = AuditLog::open_with(&path, options()).unwrap();
    log.close(Duration::from_secs(15)).unwrap();
    drop(log);
    let restored = std::fs::read_to_string(&path).unwrap();
    let back: Vec<&str> = restored.lines().take(count).collect();
    assert_eq!(back.len(), count, "every line written back");
    let differs = written.lines().zip(&back).position(|(w, b)| w != *b);
    assert_eq!(differs, None, "written back in order, byte for byte");
    let report = signaling::audit_chain::verify_chain(&path, None).unwrap();
    assert!(
        report.last_seq > count as u64,
        "and the chain goes on: {report:?}"
    );
    let recovered = restored
        .lines()
        .skip(count)
        .filter(|l| l.contains("\"audit_recovered\""))
        .count();
    assert_eq!(recovered, 1, "the write-back is on record");
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(0), "{out}");

    // A tail cut from the file, in the copy's third page: truncated.
    let lines: Vec<&str> = restored.lines().collect();
    std::fs::write(&path, lines[..2_500].join("\n") + "\n").unwrap();
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("TRUNCATED: the off-host copy holds lines 2501–"),
        "{out}"
    );

    // The copy's first 1,500 lines archived (XTRIM MINID, as the chart's admin user does):
    // what is left matches, and the rest is named as archived, not as missing.
    std::fs::write(&path, &restored).unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg(STREAM)
        .arg("MINID")
        .arg("1501-0")
        .query(&mut con)
        .unwrap();
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("the file's first 1500 line(s) precede the copy's first (archived from it)"),
        "{out}"
    );
    assert!(!out.contains("not copied yet"), "{out}");

    // A line removed from the middle of the copy (XDEL): a gap, not a line "not copied yet".
    let _: u64 = redis::cmd("XDEL")
        .arg(STREAM)
        .arg("2000-0")
        .query(&mut con)
        .unwrap();
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("GAP: the off-host copy lacks 1 line(s)"),
        "{out}"
    );
    assert!(out.contains("first line 2000"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
