//! Janus (Debian's `janus` 1.1.2) as the peer SFU: the harness writes a minimal config
//! (only the VideoRoom plugin and the HTTP transport), starts it, and drives it through its
//! HTTP API — a session per participant kept alive by long polling, a publisher handle that
//! publishes with our offer, a subscriber handle that receives every other feed of the room
//! in one multistream peer connection.
//!
//! Janus's ICE (libnice) ignores loopback interfaces: it must run, with the generator, in a
//! private network namespace where 127.0.0.2 sits on a veth (`in_netns` re-executes the
//! harness there).

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Where Debian installs Janus's plugins and transports.
const JANUS_LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";
/// The address Janus gathers its candidate on (a veth in the namespace).
pub const JANUS_IP: &str = "127.0.0.2";
/// Set in the environment of the harness re-executed inside the namespace.
pub const NETNS_MARK: &str = "BENCH_IN_NETNS";

pub fn installed() -> bool {
    Path::new("/usr/bin/janus").exists()
        && Path::new(JANUS_LIB)
            .join("plugins/libjanus_videoroom.so")
            .exists()
}

/// Re-executes this harness inside a new network namespace with loopback up and 127.0.0.2
/// on a veth, unless already there. Returns the child's exit status when it re-executed.
pub fn in_netns() -> anyhow::Result<Option<std::process::ExitStatus>> {
    if std::env::var_os(NETNS_MARK).is_some() {
        return Ok(None);
    }
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    let script = format!(
        "set -e; ip link set lo up; ip link add hcb0 type veth peer name hcb1; \
         ip addr add {JANUS_IP}/32 dev hcb0; ip link set hcb0 up; ip link set hcb1 up; \
         exec {} {}",
        shell_quote(&exe.to_string_lossy()),
        args.join(" ")
    );
    let status = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .env(NETNS_MARK, "1")
        .status()
        .context("running unshare -n (needs root or user namespaces)")?;
    Ok(Some(status))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes Janus's configuration into `dir`: HTTP on `port`, VideoRoom only, ICE on 127.0.0.2.
pub fn write_config(dir: &Path, port: u16) -> anyhow::Result<()> {
    for sub in ["plugins", "transports", "events", "loggers"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::os::unix::fs::symlink(
        Path::new(JANUS_LIB).join("plugins/libjanus_videoroom.so"),
        dir.join("plugins/libjanus_videoroom.so"),
    )?;
    std::os::unix::fs::symlink(
        Path::new(JANUS_LIB).join("transports/libjanus_http.so"),
        dir.join("transports/libjanus_http.so"),
    )?;
    let d = dir.display();
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            "general: {{\n  configs_folder = \"{d}\"\n  plugins_folder = \"{d}/plugins\"\n  \
             transports_folder = \"{d}/transports\"\n  events_folder = \"{d}/events\"\n  \
             loggers_folder = \"{d}/loggers\"\n  debug_level = 2\n  session_timeout = 60\n}}\n\
             media: {{\n  rtp_port_range = \"20000-60000\"\n}}\n\
             nat: {{\n  ice_enforce_list = \"{JANUS_IP}\"\n  ignore_mdns = true\n}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n  base_path = \"/janus\"\n  http = true\n  port = {port}\n  \
             ip = \"127.0.0.1\"\n  https = false\n}}\nadmin: {{\n  admin_http = false\n}}\n"
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(())
}

/// The command that starts Janus with the config in `dir`.
/// `BENCH_JANUS_LOG=<file>` keeps Janus's own log (debug level 5) for diagnosis.
pub fn command(dir: &Path) -> (PathBuf, Vec<String>) {
    let mut args = vec![
        format!("--configs-folder={}", dir.display()),
        format!("--config={}/janus.jcfg", dir.display()),
    ];
    match std::env::var("BENCH_JANUS_LOG") {
        Ok(file) => {
            args.push("--debug-level=5".into());
            args.push(format!("--log-file={file}"));
        }
        Err(_) => args.push("--debug-level=2".into()),
    }
    (PathBuf::from("/usr/bin/janus"), args)
}

fn transaction() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

/// One Janus session: requests over HTTP, events from its long poll.
pub struct JanusSession {
    http: reqwest::Client,
    base: String,
    pub id: u64,
    events: mpsc::Receiver<Value>,
    /// Events that arrived while another transaction was awaited.
    stash: Vec<Value>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for JanusSession {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl JanusSession {
    pub async fn create(http: &reqwest::Client, base: &str) -> anyhow::Result<Self> {
        let r: Value = http
            .post(format!("{base}/janus"))
            .json(&json!({"janus": "create", "transaction": transaction()}))
            .send()
            .await?
            .json()
            .await?;
        let id = r["data"]["id"]
            .as_u64()
            .context("janus create: no session id")?;
        // Bounded: events nobody waits for (after the joins) are dropped, not kept.
        let (tx, events) = mpsc::channel(256);
        let poll_http = http.clone();
        let url = format!("{base}/janus/{id}?maxev=10");
        // The long poll is also the keepalive: sessions time out after 60 s of silence.
        let poller = tokio::spawn(async move {
            loop {
                let got = poll_http
                    .get(&url)
                    .timeout(Duration::from_secs(40))
                    .send()
                    .await;
                let Ok(resp) = got else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Ok(v) = resp.json::<Value>().await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                if v["janus"] == "error" {
                    // The session is gone: polling again at once would only hammer Janus.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let list = match v {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                for e in list {
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(e) {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            http: http.clone(),
            base: base.to_owned(),
            id,
            events,
            stash: Vec::new(),
            poller,
        })
    }

    pub async fn attach(&mut self) -> anyhow::Result<u64> {
        let r = self
            .post(
                None,
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        r["data"]["id"]
            .as_u64()
            .context("janus attach: no handle id")
    }

    async fn post(&self, handle: Option<u64>, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = transaction().into();
        let url = match handle {
            Some(h) => format!("{}/janus/{}/{h}", self.base, self.id),
            None => format!("{}/janus/{}", self.base, self.id),
        };
        let r: Value = self.http.post(url).json(&body).send().await?.json().await?;
        if r["janus"] == "error" {
            bail!("janus: {}", r["error"]);
        }
        Ok(r)
    }

    /// A VideoRoom request; waits for its event when Janus answers asynchronously. Returns
    /// (plugin data, jsep).
    pub async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<(Value, Option<Value>)> {
        let mut msg = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let t = transaction();
        msg["transaction"] = t.clone().into();
        let url = format!("{}/janus/{}/{handle}", self.base, self.id);
        let r: Value = self.http.post(url).json(&msg).send().await?.json().await?;
        match r["janus"].as_str() {
            Some("success") => {
                let data = r["plugindata"]["data"].clone();
                if data["error"].is_string() {
                    bail!("janus videoroom: {}", data["error"]);
                }
                return Ok((data, None));
            }
            Some("ack") => {}
            _ => bail!("janus: {r}"),
        }
        let event = self.wait(|e| e["transaction"] == t.as_str()).await?;
        let data = event["plugindata"]["data"].clone();
        if data["error"].is_string() {
            bail!("janus videoroom: {}", data["error"]);
        }
        Ok((data, event.get("jsep").cloned()))
    }

    async fn wait(&mut self, matches: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        if let Some(i) = self.stash.iter().position(&matches) {
            return Ok(self.stash.remove(i));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .context("janus: no answer within 20 s")?
                .context("janus: event stream ended")?;
            if matches(&e) {
                return Ok(e);
            }
            if e["janus"] == "event" {
                self.stash.push(e);
            }
        }
    }
}
