//! The join WebSocket on a running `signaling serve --dev`: bad tokens get HTTP 401/403 with a
//! machine-readable reason; a malformed message gets an error reply and affects nobody else.

use futures_util::{SinkExt, StreamExt};
use signaling::dev_issuer::{DevIssuer, dev_claims};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

struct Server {
    child: Child,
    base: String,
    issuer: DevIssuer,
    audit: std::path::PathBuf,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start() -> Server {
    let dir = std::env::temp_dir().join(format!("hc-signaling-test-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("issuer.key");
    let issuer = DevIssuer::load_or_create(&key).unwrap();
    let audit = dir.join("audit.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--dev-key",
        ])
        .arg(&key)
        .arg("--audit-log")
        .arg(&audit)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("signaling starts");
    let stdout = child.stdout.take().unwrap();
    let mut base = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("clinician: ") {
            let end = url.find("/?token=").unwrap();
            base = Some(url[..end].replace("http://", "ws://"));
            break;
        }
    }
    // Keep draining stdout so the server never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        base: base.expect("join URLs printed"),
        issuer,
        audit,
        _dir: TempDir(dir),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Tries to open the join WebSocket; returns the HTTP status and JSON body of a refusal.
async fn refused(server: &Server, token: &str) -> (u16, serde_json::Value) {
    let url = format!("{}/ws?token={}", server.base, token);
    match tokio_tungstenite::connect_async(&url).await {
        Ok(_) => panic!("token {token:.20}… was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().unwrap_or_default();
            (
                status,
                serde_json::from_slice(&body).expect("JSON refusal body"),
            )
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_reason() {
    let server = start();
    let good = dev_claims("m1", "s1", "Anna", "patient", None, None, now(), 600);

    let (status, body) = refused(&server, "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_missing"))
    );

    let mut expired = good.clone();
    expired.nbf = now() - 7200;
    expired.exp = now() - 3600;
    let (status, body) = refused(&server, &server.issuer.mint(&expired).unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_expired"))
    );
    assert!(body["reason"].as_str().unwrap().contains("expired"));

    let mut aud = good.clone();
    aud.aud = "someone-else".into();
    let (status, body) = refused(&server, &server.issuer.mint(&aud).unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_wrong_audience"))
    );

    let other = DevIssuer::generate().unwrap();
    let (status, body) = refused(&server, &other.mint(&good).unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_unknown_key"))
    );

    let mut clinician = good.clone();
    clinician.role = "clinician".into();
    let (status, body) = refused(&server, &server.issuer.mint(&clinician).unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("token_clinician_without_hsa"))
    );

    let (status, body) = refused(&server, "not.a.jwt").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_malformed"))
    );

    // Every refusal left an audit line with its code, and the chain verifies.
    let verify = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["audit", "verify"])
        .arg(&server.audit)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let log = std::fs::read_to_string(&server.audit).unwrap();
    for code in [
        "token_missing",
        "token_expired",
        "token_wrong_audience",
        "token_unknown_key",
        "token_clinician_without_hsa",
        "token_malformed",
    ] {
        assert!(
            log.contains(&format!("\"code\":\"{code}\"")),
            "audit line for {code}"
        );
    }
    assert!(!log.contains("\"event\":\"join\""), "nobody joined");
}

async fn next_json<S>(ws: &mut S) -> serde_json::Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .expect("valid frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("server sends JSON");
        }
    }
}

#[tokio::test]
async fn a_malformed_message_gets_an_error_and_affects_nobody_else() {
    let server = start();
    let token = |sub: &str, name: &str| {
        server
            .issuer
            .mint(&dev_claims(
                "m2",
                sub,
                name,
                "patient",
                None,
                None,
                now(),
                600,
            ))
            .unwrap()
    };
    let url = |t: String| format!("{}/ws?token={}", server.base, t);
    let (mut a, _) = tokio_tungstenite::connect_async(url(token("sa", "Anna")))
        .await
        .unwrap();
    assert_eq!(next_json(&mut a).await["type"], "welcome");
    let (mut b, _) = tokio_tungstenite::connect_async(url(token("sb", "Bo")))
        .await
        .unwrap();
    let welcome_b = next_json(&mut b).await;
    assert_eq!(welcome_b["type"], "welcome");
    assert_eq!(
        welcome_b["participants"][0]["name"], "Anna",
        "Bo sees who is there"
    );
    assert_eq!(next_json(&mut a).await["type"], "participant_joined");

    for garbage in [
        "{not json",
        r#"{"type":"launch_missiles"}"#,
        r#"{"type":"offer"}"#,
    ] {
        a.send(Message::Text(garbage.into())).await.unwrap();
        let reply = next_json(&mut a).await;
        assert_eq!(reply["type"], "error", "reply to {garbage}");
        assert_eq!(reply["code"], "bad_message");
    }
    // A bad SDP reaches the SFU, which refuses it; the sender is told.
    a.send(Message::Text(
        r#"{"type":"offer","sdp":"v=0 nonsense"}"#.into(),
    ))
    .await
    .unwrap();
    let reply = next_json(&mut a).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "sfu_refused");

    // Both connections still work, and Bo heard nothing of Anna's mistakes.
    a.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut a).await["type"], "pong");
    b.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut b).await["type"],
        "pong",
        "Bo's next message is his own pong"
    );
}
