//! A running `signaling serve --dev` (its own key, audit log and log file in a temporary
//! directory) and WebSocket clients for it.

#![allow(dead_code)]

pub mod media;
pub mod redis;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use signaling::dev_issuer::{DevIssuer, dev_claims};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub const API_KEY: &str = "test-api-key-0123456789";

/// Sets or clears a file attribute: `+i` makes the audit log unwritable, even through the
/// service's open descriptor (as a full or failed disk would).
pub fn chattr(flag: &str, path: &std::path::Path) {
    let ok = Command::new("chattr").arg(flag).arg(path).status().unwrap();
    assert!(ok.success(), "chattr {flag}");
}

pub struct Server {
    child: Child,
    /// `ws://127.0.0.1:port`
    pub ws_base: String,
    /// `http://127.0.0.1:port`
    pub http_base: String,
    pub issuer: DevIssuer,
    pub audit: PathBuf,
    /// The service's own log (stderr).
    pub log: PathBuf,
    pub stdout: std::sync::Arc<std::sync::Mutex<String>>,
    pub dir: PathBuf,
    /// How it was started (for a restart).
    command: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn start() -> Server {
    start_with(&[])
}

/// Starts the service with extra flags.
pub fn start_with(extra: &[&str]) -> Server {
    start_via(&[], extra)
}

/// Starts the service through a launcher (e.g. `prlimit --nofile=…`) with extra flags.
pub fn start_via(launcher: &[&str], extra: &[&str]) -> Server {
    let mut all = vec!["--api-key", API_KEY];
    all.extend_from_slice(extra);
    start_command(launcher, &all)
}

/// Starts the service with exactly these extra flags (no API key: `--dev` makes one).
pub fn start_command(launcher: &[&str], extra: &[&str]) -> Server {
    let dir = std::env::temp_dir().join(format!("hc-signaling-test-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    // Replicas share one issuer: a test may name the key (`--dev-key`) itself.
    let given = extra
        .iter()
        .position(|a| *a == "--dev-key")
        .map(|i| PathBuf::from(extra[i + 1]));
    let key = given.clone().unwrap_or_else(|| dir.join("issuer.key"));
    let issuer = DevIssuer::load_or_create(&key).unwrap();
    let audit = dir.join("audit.jsonl");
    let log = dir.join("signaling.log");
    let mut command: Vec<String> = launcher.iter().map(|s| s.to_string()).collect();
    command.push(env!("CARGO_BIN_EXE_signaling").into());
    for a in ["serve", "--dev", "--listen", "127.0.0.1:0"] {
        command.push(a.into());
    }
    if given.is_none() {
        command.push("--dev-key".into());
        command.push(key.display().to_string());
    }
    command.push("--audit-log".into());
    command.push(audit.display().to_string());
    // One SFU worker unless the test asks for more.
    if !extra.contains(&"--workers") {
        command.extend(["--workers".into(), "1".into()]);
    }
    command.extend(extra.iter().map(|s| s.to_string()));
    let (child, http_base, stdout) = spawn(&command, &log);
    Server {
        child,
        ws_base: http_base.replace("http://", "ws://"),
        http_base,
        issuer,
        audit,
        log,
        stdout,
        dir,
        command,
    }
}

type Captured = std::sync::Arc<std::sync::Mutex<String>>;

fn spawn(command: &[String], log: &std::path::Path) -> (Child, String, Captured) {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("signaling starts");
    let stdout = child.stdout.take().unwrap();
    let mut base = None;
    let captured = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        captured.lock().unwrap().push_str(&line);
        captured.lock().unwrap().push('\n');
        if let Some(url) = line.trim().strip_prefix("clinician: ") {
            let end = url.find("/m/").unwrap();
            base = Some(url[..end].to_owned());
            break;
        }
    }
    // Keep draining stdout so the server never writes into a closed pipe.
    let sink = captured.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            sink.lock().unwrap().push_str(&l);
            sink.lock().unwrap().push('\n');
        }
    });
    (child, base.expect("join URLs printed"), captured)
}

impl Server {
    /// Kills the service and starts it again with the same flags and files (a new port).
    pub fn restart(&mut self) {
        self.restart_after(|| {});
    }

    /// Kills the service, runs `between`, and starts it again as [`restart`](Self::restart).
    pub fn restart_after(&mut self, between: impl FnOnce()) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        between();
        let (child, http_base, stdout) = spawn(&self.command, &self.log);
        self.child = child;
        self.ws_base = http_base.replace("http://", "ws://");
        self.http_base = http_base;
        self.stdout = stdout;
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the service printed after `prefix` on a line of its own (an address it bound).
    pub fn printed(&self, prefix: &str) -> Option<String> {
        self.stdout
            .lock()
            .unwrap()
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
    }

    /// Stops the service as Ctrl-C does (SIGINT) and waits for it to exit.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM (what Kubernetes and systemd send) and waits for the process to exit:
    /// its status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, std::time::Duration) {
        let sent = std::time::Instant::now();
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        (self.child.wait().unwrap(), sent.elapsed())
    }

    /// `host:port` of the service.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.http_base
            .trim_start_matches("http://")
            .parse()
            .expect("http://ip:port")
    }

    /// A dev token for `meeting`.
    pub fn token(&self, meeting: &str, sub: &str, name: &str, role: &str) -> String {
        self.token_in_unit(meeting, sub, name, role, "unit-1")
    }

    /// A dev token for `meeting` of care unit `unit` (as a region's issuer makes them).
    pub fn token_in_unit(
        &self,
        meeting: &str,
        sub: &str,
        name: &str,
        role: &str,
        unit: &str,
    ) -> String {
        let (hsa, unit) = if role == "clinician" {
            let extension: String = sub.chars().filter(char::is_ascii_alphanumeric).collect();
            (Some(format!("SE2321000016-{extension}")), Some(unit))
        } else {
            (None, Some(unit))
        };
        self.issuer
            .mint(&dev_claims(
                meeting,
                sub,
                name,
                role,
                hsa.as_deref(),
                unit,
                now(),
                600,
            ))
            .unwrap()
    }

    pub async fn connect(&self, token: &str) -> Client {
        self.connect_with(token, "").await
    }

    /// As [`Server::connect`], with more of the query (e.g. `&resume=…`).
    pub async fn connect_with(&self, token: &str, query: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(join_request(&self.ws_base, token, query))
            .await
            .unwrap_or_else(|e| panic!("join refused: {e}"));
        Client { ws }
    }

    /// Tries to open the join WebSocket; returns the HTTP status and JSON body of a refusal.
    pub async fn refused(&self, query: &str) -> (u16, Value) {
        self.refused_from("127.0.0.1", query).await
    }

    /// As [`Server::refused`], from the loopback address `from` (its own source to the
    /// service, with its own budget of token refusals).
    pub async fn refused_from(&self, from: &str, query: &str) -> (u16, Value) {
        let url = format!("{}/ws?{}", self.ws_base, query);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        let stream = socket.connect(self.addr()).await.unwrap();
        match tokio_tungstenite::client_async(&url, stream).await {
            Ok(_) => panic!("join {query:.40}… was accepted"),
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

    /// An HTTP request to the service (the meetings API with `key`).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        api_at(&self.http_base, method, path, key, body).await
    }
}

/// An HTTP request to `base` (a listener of the service: the meetings API with `key`).
pub async fn api_at(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let url = format!("{base}{path}");
        let mut req = match method {
            "GET" => client.get(&url),
            "POST" => client.post(&url),
            other => panic!("method {other}"),
        };
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("service answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
        )
    }
}

impl Server {
    /// Kills the service at once (SIGKILL: a crash, an OOM kill, a lost host).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }

    /// The public half of the service's audit checkpoint key (the dev key beside its files),
    /// as `signaling audit public-key` prints it.
    pub fn audit_public_key(&self) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
            .args(["audit", "public-key", "--key"])
            .arg(self.dir.join("audit-signing.key"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The audit lines (as JSON) of one kind of event.
    pub fn audit_events(&self, event: &str) -> Vec<Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["event"] == event)
            .collect()
    }
}

pub struct Client {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// Sends raw text (for malformed messages).
pub trait SendText {
    async fn send_text(&mut self, text: &str);
}

impl SendText
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn send_text(&mut self, text: &str) {
        self.send(Message::Text(text.into())).await.unwrap();
    }
}

impl Client {
    pub async fn send(&mut self, msg: Value) {
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON message (within 5 s).
    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5)).await
    }

    /// The next JSON message within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Value {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("a message in time")
                .expect("stream open")
                .expect("valid frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Close(frame) => {
                    return json!({"type": "__closed", "code": frame.map(|f| u16::from(f.code))});
                }
                _ => {}
            }
        }
    }

    /// Skips messages until one of type `kind` arrives (within 5 s); panics at a close.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.next_of_within(kind, Duration::from_secs(5)).await
    }

    /// As [`Client::next_of`], waiting up to `wait` for each message.
    pub async fn next_of_within(&mut self, kind: &str, wait: Duration) -> Value {
        loop {
            let m = self.next_within(wait).await;
            if m["type"] == kind {
                return m;
            }
            assert_ne!(m["type"], "__closed", "closed while waiting for {kind}");
        }
    }

    /// A clinician's view: the participant id of the first person to wait in the lobby.
    pub async fn first_waiting(&mut self) -> Value {
        loop {
            let lobby = self.next_of("lobby").await;
            if let Some(w) = lobby["waiting"].get(0) {
                return w["participant"].clone();
            }
        }
    }

    /// Every message that arrives within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<Value> {
        self.drain_until(tokio::time::Instant::now() + wait).await
    }

    /// Every message that arrives before `deadline`.
    pub async fn drain_until(&mut self, deadline: tokio::time::Instant) -> Vec<Value> {
        let mut got = Vec::new();
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(t) = msg {
                got.push(serde_json::from_str(&t).unwrap());
            }
        }
        got
    }

    /// Waits for the server to close the connection; returns the `closing` message and the
    /// close code.
    pub async fn closed(&mut self) -> (Value, Option<u16>) {
        let mut closing = Value::Null;
        loop {
            let m = self.next().await;
            if m["type"] == "closing" {
                closing = m.clone();
            }
            if m["type"] == "__closed" {
                return (closing, m["code"].as_u64().map(|c| c as u16));
            }
        }
    }
}

/// Problems with the exposition: a metric without HELP text, or a name against Prometheus'
/// conventions (an application prefix; counters end in `_total`, other kinds do not;
/// histograms name their unit).
pub fn convention_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let help: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter(|l| l.split_once(' ').is_some_and(|(_, h)| h.len() > 10))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        if !help.contains(name) {
            problems.push(format!("{name}: no HELP text"));
        }
        let prefixed = name.starts_with("signaling_") || name.starts_with("sfu_");
        let snake = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !prefixed || !snake {
            problems.push(format!("{name}: not a signaling_/sfu_ snake_case name"));
        }
        match kind {
            "counter" if !name.ends_with("_total") => {
                problems.push(format!("{name}: a counter not ending in _total"))
            }
            "gauge" | "histogram" | "summary" if name.ends_with("_total") => {
                problems.push(format!("{name}: a {kind} ending in _total"))
            }
            "histogram"
                if !(name.ends_with("_seconds")
                    || name.ends_with("_bytes")
                    || name.ends_with("_bytes_per_second")) =>
            {
                problems.push(format!("{name}: a histogram without its unit"))
            }
            "summary" => problems.push(format!(
                "{name}: a summary (histograms add up across replicas)"
            )),
            _ => {}
        }
    }
    problems
}

/// A participant joined with `token` on `server` (`query`: more of it, e.g. `&resume=…`): its
/// connection, welcome and resume key.
pub async fn joined(server: &Server, token: &str, query: &str) -> (Client, Value, String) {
    let mut client = server.connect_with(token, query).await;
    let mut key = String::new();
    loop {
        let m = client.next().await;
        match m["type"].as_str() {
            Some("resume_key") => key = m["key"].as_str().unwrap().to_owned(),
            Some("welcome") => return (client, m, key),
            Some("__closed") => panic!("closed before the welcome"),
            _ => {}
        }
    }
}

/// Participants an SFU node's worker 0 serves, from its metrics listener at `metrics`.
pub async fn node_participants(metrics: &str) -> Option<u64> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("sfu_participants{worker=\"0\"} "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits for `ok`, checking every 200 ms; fails the test after `secs` seconds.
pub async fn until(what: &str, secs: u64, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !ok().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens the join WebSocket on `server`, trying again while it answers 503 (the meeting's
/// owner died and its lease has not run out yet); returns the client and when it got in.
pub async fn join_retrying(
    server: &Server,
    token: &str,
    within: Duration,
) -> (Client, std::time::Instant) {
    join_retrying_with(server, token, "", within).await
}

/// [`join_retrying`] with more of the query (`&resume=…`).
pub async fn join_retrying_with(
    server: &Server,
    token: &str,
    query: &str,
    within: Duration,
) -> (Client, std::time::Instant) {
    let deadline = std::time::Instant::now() + within;
    loop {
        match tokio_tungstenite::connect_async(join_request(&server.ws_base, token, query)).await {
            Ok((ws, _)) => return (Client { ws }, std::time::Instant::now()),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503 => {
                let body: Value =
                    serde_json::from_slice(&r.body().clone().unwrap_or_default()).unwrap();
                assert_eq!(body["error"], "replica_unavailable", "{body}");
            }
            Err(e) => panic!("join refused: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The join WebSocket's handshake as the web client makes it: the token, and a resume key
/// the test put in `query` (`&resume=…`), offered as subprotocols (`socket_credentials.rs`),
/// the rest of `query` in the URL. `token` may end in more of the query (`…&meeting=x`).
pub fn join_request(
    ws_base: &str,
    token: &str,
    query: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (token, token_rest) = token.split_once('&').unwrap_or((token, ""));
    let mut protocols = vec!["hc.v1".to_owned(), format!("hc.token.{token}")];
    let mut rest: Vec<&str> = Vec::new();
    for part in token_rest.split('&').chain(query.split('&')) {
        match part.strip_prefix("resume=") {
            Some(key) => protocols.push(format!("hc.resume.{key}")),
            None if !part.is_empty() => rest.push(part),
            None => {}
        }
    }
    let url = if rest.is_empty() {
        format!("{ws_base}/ws")
    } else {
        format!("{ws_base}/ws?{}", rest.join("&"))
    };
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        protocols.join(", ").parse().unwrap(),
    );
    request
}

/// The secret the test replicas share.
pub const REPLICA_SECRET: &str = "replicas-test-secret-0123456789abcdef";

/// A signaling replica sharing meetings through the Redis at `store` (ADR 5), with the
/// issuer key `key` the other replicas have too, and `extra` flags.
pub struct Replica {
    pub server: Server,
    /// Its internal listener (the meetings API, and what other replicas relay to).
    pub internal: String,
}

pub fn start_replica(store: &str, key: &std::path::Path, extra: &[&str]) -> Replica {
    let port = redis::free_port();
    start_replica_advertised(store, key, port, &format!("http://127.0.0.1:{port}"), extra)
}

/// A replica whose internal listener is on `port` and which tells the others to reach it at
/// `internal` (e.g. through a proxy in front of it).
pub fn start_replica_advertised(
    store: &str,
    key: &std::path::Path,
    port: u16,
    internal: &str,
    extra: &[&str],
) -> Replica {
    let internal = internal.to_owned();
    let listen = format!("127.0.0.1:{port}");
    let key = key.display().to_string();
    let mut flags = vec![
        "--meeting-store",
        store,
        "--dev-key",
        &key,
        "--internal-listen",
        &listen,
        "--replica-url",
        &internal,
        "--replica-secret",
        REPLICA_SECRET,
    ];
    flags.extend_from_slice(extra);
    Replica {
        server: start_with(&flags),
        internal,
    }
}

/// Everything the clients' connections got (`events`, drained now) across a restart or a
/// hand-over: nobody was told their media ended, sent to the lobby or refused, and the chat
/// line `chat` came through.
pub fn assert_undisturbed(events: Vec<tokio::sync::mpsc::UnboundedReceiver<Value>>, chat: &str) {
    let mut got = Vec::new();
    for mut e in events {
        while let Ok(v) = e.try_recv() {
            got.push(v);
        }
    }
    for v in &got {
        let kind = v["type"].as_str().unwrap_or("");
        assert!(
            !matches!(
                kind,
                "media_disconnected" | "returned_to_lobby" | "error" | "lobby_position"
            ),
            "{v}"
        );
    }
    assert!(
        got.iter().any(|v| v["type"] == "chat" && v["text"] == chat),
        "the chat line came through: {got:?}"
    );
}
