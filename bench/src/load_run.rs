//! One measured run of a scenario against one target: start the target pinned to its core,
//! join every participant, let media settle, measure a window, stop everything.

use crate::churn_visits::ChurnVisits;
use crate::deployment::Deployment;
use crate::generator::{Generator, GeneratorReport, PeerRole, ToMedia};
use crate::janus_target::{self, JanusSession};
use crate::proc_stats::{
    CpuWindow, STEAL_FLAG_PCT, StealWindow, rss_bytes, thread_cpu_time, threads_cpu_time,
};
use crate::report::{HostReading, IntervalReport, TargetReport};
use crate::scenario::Scenario;
use crate::synthetic_media::MediaProfile;
use crate::worker_quota::WorkerQuota;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sfu_core::DYNACAST_HOLD;
use signaling::dev_issuer::{DevIssuer, dev_claims};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// Our SFU: `signaling serve` (single-node default) started by the harness.
    Ours,
    /// Our SFU with every participant over ICE-TCP (RFC 6544) instead of UDP.
    OursTcp,
    /// Our SFU choosing layers by receiver-reported loss alone (`bandwidth_estimation =
    /// false`), the behaviour before bandwidth estimation, for comparison.
    OursLossOnly,
    /// Our SFU with its workers receiving through io_uring (`udp_receive = "io-uring"`; the
    /// `signaling` binary built with the io-uring feature), for the experiment of ADR 0006.
    OursIoUring,
    /// The raw UDP relay: the machine's ceiling for the same packet pattern.
    Relay,
    /// The raw relay doing SRTP's AES-GCM work too (an open per packet in, a seal per copy
    /// out): the floor of any SFU that forwards SRTP, for comparing our own code alone.
    RelaySrtp,
    /// Janus's VideoRoom (Debian's `janus`), started by the harness in a network namespace.
    Janus,
}

impl TargetKind {
    /// Our SFU, started by the harness (or reached with `--url`), in any of its variants.
    pub fn is_ours(self) -> bool {
        !matches!(
            self,
            TargetKind::Relay | TargetKind::RelaySrtp | TargetKind::Janus
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Ours => "ours",
            TargetKind::OursTcp => "ours-tcp",
            TargetKind::OursLossOnly => "ours-loss-only",
            TargetKind::OursIoUring => "ours-io-uring",
            TargetKind::Relay => "relay",
            TargetKind::RelaySrtp => "relay-srtp",
            TargetKind::Janus => "janus",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    pub profile: MediaProfile,
    pub duration: Duration,
    /// Longest wait for every participant's media to flow before measuring.
    pub settle_timeout: Duration,
    /// Every n-th receiver decrypts and authenticates everything it receives (latency).
    pub sample_every: usize,
    pub server_core: Option<usize>,
    pub generator_core: Option<usize>,
    /// One socket for all UDP participants, or one each.
    pub generator_sockets: crate::generator::GeneratorSockets,
    /// Hold each SFU worker thread to this fraction of a core (cgroup CPU quota).
    pub worker_cpu_quota: Option<f64>,
    /// Cores for the SFU's worker threads, worker N on the N-th (round robin); empty: the
    /// server's core.
    pub worker_cores: Vec<usize>,
    /// Our SFU's workers also listen for ICE-TCP (its default).
    pub ice_tcp: bool,
    pub workers: usize,
    /// Joins started per second.
    pub join_rate: f64,
    pub signaling_bin: PathBuf,
    /// This binary (the relay runs as `bench relay` in its own process).
    pub bench_bin: PathBuf,
    pub progress: bool,
    /// The tester's Ed25519 signing key (PKCS#8): our SFU trusts it and joins are signed
    /// with it. Without one, a fresh development key per run.
    pub issuer_key: Option<PathBuf>,
    /// Measure this running deployment instead of a server the harness starts.
    pub deployment: Option<Deployment>,
    /// The server's process on this machine, for its CPU and memory (a deployment's).
    pub server_pid: Option<u32>,
    /// Report delivery, latency and the server's memory every this long (a soak).
    pub soak_interval: Option<Duration>,
    /// Visits that come and go through the measurement (a deployment's only).
    pub churn: Option<crate::churn_visits::ChurnOptions>,
    /// Shape every receiver's downlink through this schedule, with a drop-tail queue this
    /// long, for the measurement (which then lasts the schedule).
    pub downlink: Option<(crate::shaped_downlink::LinkSchedule, Duration)>,
}

/// A child process that is killed when dropped.
struct Managed(Child);

impl Drop for Managed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program`, run on `core` (via `taskset`) when one is given.
fn pinned(program: &std::path::Path, core: Option<usize>) -> Command {
    match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Moves each `sfu-worker-N` thread of `pid` to `cores[N % cores.len()]` (via `taskset`).
fn pin_workers(pid: u32, cores: &[usize]) -> anyhow::Result<()> {
    let threads = crate::proc_stats::thread_ids(pid, "sfu-worker-");
    if threads.is_empty() {
        bail!("no sfu-worker-N thread in process {pid} to place");
    }
    for (name, tid) in threads {
        let n: usize = name["sfu-worker-".len()..].parse()?;
        let core = cores[n % cores.len()];
        let status = Command::new("taskset")
            .args(["-p", "-c", &core.to_string(), &tid.to_string()])
            .stdout(Stdio::null())
            .status()
            .context("running taskset")?;
        if !status.success() {
            bail!("taskset could not move {name} (thread {tid}) to core {core}");
        }
    }
    Ok(())
}

/// Starts `program args` pinned to `core` (via `taskset`) and reads stdout until `until`
/// returns a value.
fn spawn_pinned<T>(
    program: &std::path::Path,
    args: &[String],
    core: Option<usize>,
    mut until: impl FnMut(&str) -> Option<T>,
) -> anyhow::Result<(Managed, T)> {
    let mut cmd = pinned(program, core);
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut child = Managed(child);
    // Lines are read on their own thread (which keeps draining them), so a target that never
    // gets ready is given up on after 30 s instead of hanging the run.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(v) = until(&line) {
                    return Ok((child, v));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("{} was not ready within 30 s", program.display())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait()?;
                bail!(
                    "{} exited ({status}) before it was ready",
                    program.display()
                );
            }
        }
    }
}

/// The counters of our SFU's `/metrics` that the report needs, summed over workers.
async fn sfu_counters(http: &reqwest::Client, base: &str) -> anyhow::Result<[f64; 13]> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut v = [0.0; 13];
    for line in text.lines() {
        for (i, name) in [
            "sfu_packets_in_total",
            "sfu_packets_out_total",
            "sfu_bytes_in_total",
            "sfu_bytes_out_total",
            "sfu_ice_tcp_accepted_total",
            "sfu_worker_wakeups_total",
            "sfu_udp_receive_calls_total",
            "sfu_udp_received_datagrams_total",
            "sfu_udp_send_calls_total",
            "sfu_udp_sent_datagrams_total",
            "sfu_udp_gso_messages_total",
            "sfu_udp_gso_datagrams_total",
            "sfu_paced_packets_total",
        ]
        .iter()
        .enumerate()
        {
            if (line.starts_with(&format!("{name} ")) || line.starts_with(&format!("{name}{{")))
                && let Some(x) = line.rsplit(' ').next().and_then(|x| x.parse::<f64>().ok())
            {
                v[i] += x;
            }
        }
    }
    Ok(v)
}

/// What our SFU's own counters said over a run, per second or per system call.
struct SfuFigures {
    pps_in: f64,
    pps_out: f64,
    ice_tcp_connections: u64,
    wakeups_per_s: Option<f64>,
    datagrams_per_receive: Option<f64>,
    datagrams_per_send: Option<f64>,
    gso_datagrams_pct: Option<f64>,
    paced_pct: Option<f64>,
}

async fn generator_report(to_media: &Sender<ToMedia>) -> anyhow::Result<GeneratorReport> {
    let (tx, rx) = oneshot::channel();
    to_media.send(ToMedia::Report { reply: tx })?;
    Ok(rx.await?)
}

/// One participant's signaling: join, offer, answer the SFU's offers, leave when told.
/// Who joins, where, and how.
pub(crate) struct Joining {
    /// The WebSocket address with the token.
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) publish: bool,
    /// Decrypts everything it receives (for latency).
    pub(crate) sampled: bool,
    /// Over ICE-TCP.
    pub(crate) tcp: bool,
    /// For wss: what to trust.
    pub(crate) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Counted in the report (false: a churn visit's).
    pub(crate) measured: bool,
}

/// Returns the generator's index of its media participant, once it has one. An unmeasured
/// (churn) participant's media stops whenever it ends: on leaving, and on an error too.
pub(crate) async fn participant(
    joining: Joining,
    to_media: Sender<ToMedia>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<usize>> {
    let measured = joining.measured;
    let mut client = None;
    let signalled = signal(joining, &to_media, stop, &mut client).await;
    if !measured && let Some(c) = client {
        let _ = to_media.send(ToMedia::Retire { client: c });
    }
    signalled.map(|()| client)
}

/// The participant's WebSocket: join, offer, answer, leave when told; `client` is set once
/// the generator has its media participant.
async fn signal(
    joining: Joining,
    to_media: &Sender<ToMedia>,
    mut stop: watch::Receiver<bool>,
    client: &mut Option<usize>,
) -> anyhow::Result<()> {
    let Joining {
        url,
        name,
        publish,
        sampled,
        tcp,
        tls,
        measured,
    } = joining;
    let join_started = Instant::now();
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(&url, None, false, connector).await?;
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                let v: Value = serde_json::from_str(&text)?;
                match v["type"].as_str() {
                    Some("welcome") if client.is_none() => {
                        let (tx, rx) = oneshot::channel();
                        to_media.send(ToMedia::AddWebRtc { name: name.clone(), publish, sampled, role: PeerRole::Offerer, tcp, join_started, measured, reply: tx })?;
                        let (idx, offer) = rx.await?;
                        *client = Some(idx);
                        sink.send(Message::Text(json!({"type": "offer", "sdp": offer}).to_string().into())).await?;
                    }
                    Some("answer") => {
                        if let (Some(c), Some(sdp)) = (*client, v["sdp"].as_str()) {
                            to_media.send(ToMedia::Answer { client: c, sdp: sdp.to_owned() })?;
                        }
                    }
                    Some("offer") => {
                        if let (Some(c), Some(sdp)) = (*client, v["sdp"].as_str()) {
                            let (tx, rx) = oneshot::channel();
                            to_media.send(ToMedia::Offer { client: c, sdp: sdp.to_owned(), reply: tx })?;
                            let answer = rx.await?;
                            sink.send(Message::Text(json!({"type": "answer", "sdp": answer}).to_string().into())).await?;
                        }
                    }
                    Some("pause_encodings") => {
                        if let (Some(c), Some(rids)) = (*client, v["rids"].as_array()) {
                            let rids = rids.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect();
                            to_media.send(ToMedia::PauseEncodings { client: c, rids })?;
                        }
                    }
                    Some("closing") => break,
                    _ => {}
                }
            }
            _ = stop.changed() => {
                let _ = sink.send(Message::Text(json!({"type": "leave"}).to_string().into())).await;
                break;
            }
        }
    }
    Ok(())
}

/// Starts `program args` pinned to `core`, its output discarded.
fn spawn_quiet(
    program: &std::path::Path,
    args: &[String],
    core: Option<usize>,
) -> anyhow::Result<Managed> {
    let mut cmd = pinned(program, core);
    let child = cmd
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Managed(child))
}

/// Joins the plan to Janus: a room per meeting; every publisher publishes with our offer,
/// then every participant subscribes to the room's other feeds in one peer connection.
/// Returns the sessions, which must live (their long polls keep them alive) for the run.
async fn janus_join(
    http: &reqwest::Client,
    base: &str,
    plan: &[crate::scenario::Planned],
    opts: &RunOptions,
    to_media: &Sender<ToMedia>,
) -> anyhow::Result<Vec<JanusSession>> {
    let mut sessions = Vec::new();
    let mut admin = JanusSession::create(http, base).await?;
    let admin_handle = admin.attach().await?;
    let meetings: std::collections::BTreeSet<usize> = plan.iter().map(|p| p.meeting).collect();
    let kbps = opts.profile.video_kbps.max(1) as u64 * 1000 * 2;
    for m in &meetings {
        admin
            .message(
                admin_handle,
                json!({"request": "create", "room": 1000 + m, "publishers": 100,
                       "bitrate": kbps, "audiocodec": "opus", "videocodec": "vp8",
                       "notify_joining": false}),
                None,
            )
            .await
            .context("creating a Janus room")?;
    }
    sessions.push(admin);
    let pace = Duration::from_secs_f64(1.0 / opts.join_rate.max(0.1));
    // Publishers.
    let mut feeds: std::collections::HashMap<usize, Vec<(String, u64)>> = Default::default();
    for p in plan.iter().filter(|p| p.publish) {
        let join_started = Instant::now();
        let mut s = JanusSession::create(http, base).await?;
        let h = s.attach().await?;
        let (tx, rx) = oneshot::channel();
        to_media.send(ToMedia::AddWebRtc {
            name: format!("{}-pub", p.name),
            publish: true,
            sampled: false,
            role: PeerRole::JanusPublisher,
            tcp: false,
            join_started,
            measured: true,
            reply: tx,
        })?;
        let (client, offer) = rx.await?;
        let (data, jsep) = s
            .message(
                h,
                json!({"request": "joinandconfigure", "ptype": "publisher", "room": 1000 + p.meeting,
                       "display": p.name, "audio": true, "video": true}),
                // Our RIDs are listed lowest first (Janus assumes highest first otherwise).
                Some(json!({"type": "offer", "sdp": offer, "rid_order": "lmh"})),
            )
            .await
            .context("publishing to Janus")?;
        let answer = jsep
            .and_then(|j| j["sdp"].as_str().map(str::to_owned))
            .context("janus sent no answer")?;
        to_media.send(ToMedia::Answer {
            client,
            sdp: answer,
        })?;
        let id = data["id"].as_u64().context("janus: no publisher id")?;
        feeds
            .entry(p.meeting)
            .or_default()
            .push((p.name.clone(), id));
        sessions.push(s);
        tokio::time::sleep(pace).await;
    }
    // Subscribers: everyone receives the room's other feeds.
    for (i, p) in plan.iter().enumerate() {
        let streams: Vec<Value> = feeds
            .get(&p.meeting)
            .map(|f| {
                f.iter()
                    .filter(|(name, _)| *name != p.name)
                    .map(|(_, id)| json!({"feed": id}))
                    .collect()
            })
            .unwrap_or_default();
        if streams.is_empty() {
            continue;
        }
        let join_started = Instant::now();
        let mut s = JanusSession::create(http, base).await?;
        let h = s.attach().await?;
        // A feed can be subscribed to once its publisher's media is up.
        let mut attempt = 0;
        let (_, jsep) = loop {
            let r = s
                .message(
                    h,
                    json!({"request": "join", "ptype": "subscriber", "room": 1000 + p.meeting,
                           "streams": streams}),
                    None,
                )
                .await;
            match r {
                Err(e) if e.to_string().contains("No such feed") && attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other.context("subscribing on Janus")?,
            }
        };
        let offer = jsep
            .and_then(|j| j["sdp"].as_str().map(str::to_owned))
            .context("janus sent no offer")?;
        let (tx, rx) = oneshot::channel();
        to_media.send(ToMedia::AddWebRtc {
            name: format!("{}-sub", p.name),
            publish: false,
            sampled: i % opts.sample_every.max(1) == 0,
            role: PeerRole::JanusSubscriber,
            tcp: false,
            join_started,
            measured: true,
            reply: tx,
        })?;
        let (client, _) = rx.await?;
        let (tx, rx) = oneshot::channel();
        to_media.send(ToMedia::Offer {
            client,
            sdp: offer,
            reply: tx,
        })?;
        let answer = rx.await?;
        s.message(
            h,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await
        .context("starting a Janus subscription")?;
        sessions.push(s);
        tokio::time::sleep(pace).await;
    }
    Ok(sessions)
}

/// Runs the scenario against `target` and measures it.
pub async fn run(target: TargetKind, opts: &RunOptions) -> anyhow::Result<TargetReport> {
    let plan = opts.scenario.plan();
    let dir = std::env::temp_dir().join(format!("hc-bench-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = DirGuard(dir.clone());
    // Janus's ICE pairs only with addresses of its own (veth) kind: the participants use it too.
    let bind_ip = match target {
        TargetKind::Janus => janus_target::JANUS_IP.parse()?,
        _ => std::net::IpAddr::from([127, 0, 0, 1]),
    };
    let (to_media, generator) = Generator::spawn(
        opts.profile,
        opts.generator_core,
        bind_ip,
        opts.generator_sockets,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    let mut notes = Vec::new();

    let key_path = opts
        .issuer_key
        .clone()
        .unwrap_or_else(|| dir.join("issuer.key"));
    // Start the server under test, or book the run's meetings on the deployment.
    let mut booked = (Vec::new(), Vec::new());
    let deployment_tls = match &opts.deployment {
        Some(d) => Some(d.tls()?),
        None => None,
    };
    let (server, base, server_pid) = match (&opts.deployment, target) {
        (Some(d), TargetKind::Ours | TargetKind::OursTcp) => {
            let api = d.http()?;
            let run = format!("bench-{:08x}", rand::random::<u32>());
            booked = d.book(&api, &plan, &run).await?;
            (
                None,
                d.url.trim_end_matches('/').to_owned(),
                opts.server_pid.unwrap_or(0),
            )
        }
        (Some(_), _) => bail!("--url measures our SFU: target ours or ours-tcp"),
        (None, TargetKind::Janus) => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let conf = dir.join("janus");
            janus_target::write_config(&conf, port)?;
            let (program, args) = janus_target::command(&conf);
            let child = spawn_quiet(&program, &args, opts.server_core)?;
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let up = http.get(format!("{base}/janus/info")).send().await;
                if up.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("janus did not answer on {base} within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let pid = child.0.id();
            (Some(child), base, pid)
        }
        (None, TargetKind::Relay | TargetKind::RelaySrtp) => {
            let mut args = vec!["relay".to_owned(), "--listen".into(), "127.0.0.1:0".into()];
            if target == TargetKind::RelaySrtp {
                args.push("--srtp".into());
            }
            let (child, addr) = spawn_pinned(&opts.bench_bin, &args, opts.server_core, |l| {
                l.strip_prefix("relay listening on ").map(str::to_owned)
            })?;
            let pid = child.0.id();
            (Some(child), addr, pid)
        }
        (None, _) => {
            let config = dir.join("bench.toml");
            let mut sfu_section = match target {
                TargetKind::OursLossOnly => "[sfu]\nbandwidth_estimation = false\n",
                TargetKind::OursIoUring => "[sfu]\nudp_receive = \"io-uring\"\n",
                _ => "[sfu]\n",
            }
            .to_owned();
            // (ours-tcp needs it.)
            if !opts.ice_tcp && target != TargetKind::OursTcp {
                sfu_section.push_str("ice_tcp = false\n");
            }
            std::fs::write(
                &config,
                // Every simulated participant connects from this machine's one address: past
                // the per-address limit (500, for a hospital behind one address) joins failed.
                format!(
                    "[meetings]\nmax_participants = 100000\nqueue_limit = 100000\n[http]\nmax_connections_per_source = 100000\n{sfu_section}"
                ),
            )?;
            let args: Vec<String> = [
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                &opts.workers.to_string(),
                "--config",
                config.to_str().context("temp path")?,
                "--dev-key",
                key_path.to_str().context("key path")?,
                "--audit-log",
                dir.join("audit.jsonl").to_str().context("temp path")?,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let (child, base) = spawn_pinned(&opts.signaling_bin, &args, opts.server_core, |l| {
                l.trim()
                    .strip_prefix("clinician: ")
                    .and_then(|u| u.find("/m/").map(|i| u[..i].to_owned()))
            })?;
            let pid = child.0.id();
            (Some(child), base, pid)
        }
    };
    let rss_before = rss_bytes(server_pid).unwrap_or(0);
    let worker_quota = match (opts.worker_cpu_quota, target) {
        (Some(q), t) if t.is_ours() && server_pid != 0 => {
            Some(WorkerQuota::apply(server_pid, "sfu-worker-", q)?)
        }
        (Some(_), _) => {
            bail!("--worker-cpu-quota holds our SFU's workers (target ours, on this machine)")
        }
        (None, _) => None,
    };
    if !opts.worker_cores.is_empty() {
        // (Only the harness's own server: a running service's threads would stay moved.)
        if !target.is_ours() || server.is_none() {
            bail!("--worker-cores places the workers of the SFU this run starts (target ours)");
        }
        pin_workers(server_pid, &opts.worker_cores)?;
    }

    // Join everyone, paced.
    let issuer = match target {
        _ if opts.deployment.is_some() => None,
        t if t.is_ours() => Some(match &opts.issuer_key {
            Some(k) => DevIssuer::load(k)?,
            None => DevIssuer::load_or_create(&key_path)?,
        }),
        _ => None,
    };
    let mut receivers = 0usize;
    let mut janus_sessions = Vec::new();
    if target == TargetKind::Janus {
        janus_sessions = janus_join(&http, &base, &plan, opts, &to_media).await?;
        for p in &plan {
            let expects = plan
                .iter()
                .any(|o| o.meeting == p.meeting && o.publish && o.name != p.name);
            receivers += usize::from(expects);
        }
    }
    let pace = Duration::from_secs_f64(1.0 / opts.join_rate.max(0.1));
    for (i, p) in plan.iter().enumerate() {
        if target == TargetKind::Janus {
            break;
        }
        let sampled = i % opts.sample_every.max(1) == 0;
        let expects_media = plan
            .iter()
            .any(|o| o.meeting == p.meeting && o.publish && o.name != p.name);
        receivers += usize::from(expects_media);
        match target {
            TargetKind::Janus => {}
            TargetKind::Relay | TargetKind::RelaySrtp => {
                let (tx, rx) = oneshot::channel();
                to_media.send(ToMedia::AddPlain {
                    relay: base.parse().context("relay address")?,
                    group: p.meeting as u32,
                    publish: p.publish,
                    join_started: Instant::now(),
                    reply: tx,
                })?;
                rx.await?;
            }
            _ if opts.deployment.is_some() => {
                let d = opts.deployment.as_ref().context("deployment")?;
                tasks.push(tokio::spawn(participant(
                    Joining {
                        url: d.ws_url(&booked.1[i]),
                        name: p.name.clone(),
                        publish: p.publish,
                        sampled,
                        tcp: target == TargetKind::OursTcp,
                        tls: deployment_tls.clone(),
                        measured: true,
                    },
                    to_media.clone(),
                    stop_rx.clone(),
                )));
            }
            _ => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs() as i64;
                let claims = dev_claims(
                    &format!("bench-{}", p.meeting),
                    &p.name,
                    &p.name,
                    "clinician",
                    Some("SE2321000016-BENCH"),
                    Some("bench-unit"),
                    now,
                    3600,
                );
                let token = issuer.as_ref().context("issuer")?.mint(&claims)?;
                let url = format!("{}/ws?token={token}", base.replace("http://", "ws://"));
                tasks.push(tokio::spawn(participant(
                    Joining {
                        url,
                        name: p.name.clone(),
                        publish: p.publish,
                        sampled,
                        tcp: target == TargetKind::OursTcp,
                        tls: None,
                        measured: true,
                    },
                    to_media.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        tokio::time::sleep(pace).await;
    }

    // Wait for media to reach every receiver (or give up after the settle timeout).
    let deadline = Instant::now() + opts.settle_timeout;
    let mut joined = generator_report(&to_media).await?;
    while joined.receiving < receivers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        joined = generator_report(&to_media).await?;
    }
    if joined.receiving < receivers {
        notes.push(format!(
            "only {} of {} receivers got media within {:?}",
            joined.receiving, receivers, opts.settle_timeout
        ));
    }
    // Keyframes and bandwidth settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Simulcast layers nobody receives stop [`DYNACAST_HOLD`] after they went unreceived (our
    // SFU says so; toward the relay and Janus the generator stops them after the same hold):
    // the window measures what a server carries after a meeting's first seconds, so it waits
    // for the publishers' layers to stop changing.
    let mut layers_at_start = (joined.layers_sent, joined.layers_paused);
    if opts.profile.dynacast && opts.profile.simulcast && opts.profile.video_kbps > 0 {
        let waited = Instant::now();
        let mut stable_since = waited;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let r = generator_report(&to_media).await?;
            if (r.layers_sent, r.layers_paused) != layers_at_start {
                layers_at_start = (r.layers_sent, r.layers_paused);
                stable_since = Instant::now();
            }
            let long_enough = waited.elapsed() >= DYNACAST_HOLD + Duration::from_millis(500);
            if long_enough && stable_since.elapsed() >= Duration::from_millis(1500) {
                break;
            }
            if waited.elapsed() >= DYNACAST_HOLD * 4 {
                notes.push(format!(
                    "publishers' layers still stopping or restarting {:?} after media settled",
                    waited.elapsed()
                ));
                break;
            }
        }
    }

    // The measurement window.
    to_media.send(ToMedia::ResetStats)?;
    let duration = match &opts.downlink {
        Some((schedule, queue)) => {
            to_media.send(ToMedia::ShapeDownlinks {
                schedule: schedule.clone(),
                queue: *queue,
            })?;
            schedule.total()
        }
        None => opts.duration,
    };
    // Our SFU's counters: on the server the harness started, or on a deployment's internal
    // listener (a single node's; with standalone nodes they are on the nodes).
    let (metrics_http, metrics_base) = match &opts.deployment {
        Some(d) => (d.http()?, d.api_url.trim_end_matches('/').to_owned()),
        None => (http.clone(), base.clone()),
    };
    let counters_before = match target {
        t if t.is_ours() => sfu_counters(&metrics_http, &metrics_base).await.ok(),
        _ => None,
    };
    let server_cpu = CpuWindow::start(server_pid);
    let throttled_before = worker_quota.as_ref().map(WorkerQuota::throttled_periods);
    let steal = StealWindow::start();
    // Each SFU worker thread's share (ours, in the server or a node given by --server-pid).
    let workers_before = threads_cpu_time(server_pid, "sfu-worker-");
    let own_pid = std::process::id();
    let gen_cpu_before = thread_cpu_time(own_pid, "generator").unwrap_or_default();
    let t0 = Instant::now();
    let mut churn = match (opts.churn, &opts.deployment) {
        (Some(c), Some(d)) => Some(ChurnVisits::new(
            c,
            d.clone(),
            &format!("bench-{:08x}", rand::random::<u32>()),
            to_media.clone(),
            t0,
        )?),
        (Some(_), None) => anyhow::bail!("--churn-every needs a deployment (--url)"),
        _ => None,
    };
    let mut last_print = t0;
    let mut intervals = Vec::new();
    let mut soak = match opts.soak_interval {
        Some(every) => Some((
            every,
            t0,
            generator_report(&to_media).await?,
            CpuWindow::start(server_pid),
            StealWindow::start(),
        )),
        None => None,
    };
    while t0.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(c) = &mut churn {
            c.step(Instant::now()).await;
        }
        if let Some((every, since, before, cpu, stolen)) = &mut soak
            && since.elapsed() >= *every
        {
            let now = generator_report(&to_media).await?;
            let mut row = IntervalReport::between(
                before,
                &now,
                t0.elapsed(),
                since.elapsed(),
                opts.scenario.fan_out(),
                HostReading {
                    server_rss_bytes: rss_bytes(server_pid).unwrap_or(0),
                    server_cpu_pct: cpu.percent(),
                    cpu_steal_pct: stolen.percent(),
                },
            );
            row.churn_visits_ended = churn.as_ref().map(|c| c.ended);
            eprintln!("{}", row.line(target.name()));
            intervals.push(row);
            *since = Instant::now();
            *before = now;
            *cpu = CpuWindow::start(server_pid);
            *stolen = StealWindow::start();
        }
        if opts.progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let g = generator_report(&to_media).await?;
            let secs = t0.elapsed().as_secs_f64();
            eprint!(
                "\r[{}] {:>4.0}/{:.0} s  received {:>8.0} pkt/s  loss {:>6.3} %  server CPU {:>5.1} %   ",
                target.name(),
                secs,
                duration.as_secs_f64(),
                g.rx.packets as f64 / secs,
                g.rx.loss_pct(),
                server_cpu.percent(),
            );
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if opts.progress {
        eprintln!();
    }
    let g = generator_report(&to_media).await?;
    if (g.layers_sent, g.layers_paused) != layers_at_start {
        // Expected where the load changes what is received (shaped downlinks), not otherwise.
        notes.push(format!(
            "publishers' video layers sent / paused changed in the window: {} / {} at its start, {} / {} at its end",
            layers_at_start.0, layers_at_start.1, g.layers_sent, g.layers_paused
        ));
    }
    let server_cpu_pct = server_cpu.percent();
    let cpu_steal_pct = steal.percent();
    let worker_cpu_pct: Vec<f64> = threads_cpu_time(server_pid, "sfu-worker-")
        .iter()
        .filter_map(|(name, after)| {
            let (_, before) = workers_before.iter().find(|(n, _)| n == name)?;
            Some(after.saturating_sub(*before).as_secs_f64() * 100.0 / elapsed)
        })
        .collect();
    let gen_cpu = thread_cpu_time(own_pid, "generator")
        .unwrap_or_default()
        .saturating_sub(gen_cpu_before);
    let generator_cpu_pct = gen_cpu.as_secs_f64() * 100.0 / elapsed;
    let rss_after = rss_bytes(server_pid).unwrap_or(0);
    // Every target is measured the same way, at the generator: media packets its publishers
    // sent (in), and copies that reached — or, by their sequence numbers, should have reached —
    // its receivers (out). Our SFU's own counters (which also count RTCP, STUN and DTLS and are
    // published once a second) are reported beside them.
    let (pps_in, pps_out, bytes_in, bytes_out) = (
        g.sent_packets as f64 / elapsed,
        g.rx.expected.max(g.rx.packets) as f64 / elapsed,
        g.sent_bytes as f64 / elapsed,
        g.rx.bytes as f64 / elapsed,
    );
    let sfu_metrics = match counters_before {
        Some(before) => sfu_counters(&metrics_http, &metrics_base)
            .await
            .ok()
            .map(|after| {
                let d = |i: usize| after[i] - before[i];
                let per = |a: f64, b: f64| (b > 0.0).then(|| a / b);
                SfuFigures {
                    pps_in: d(0) / elapsed,
                    pps_out: d(1) / elapsed,
                    ice_tcp_connections: after[4] as u64,
                    // None where the workers export no such counter (standalone nodes).
                    wakeups_per_s: (d(5) > 0.0).then(|| d(5) / elapsed),
                    datagrams_per_receive: per(d(7), d(6)),
                    datagrams_per_send: per(d(9), d(8)),
                    gso_datagrams_pct: per(100.0 * d(11), d(9)),
                    paced_pct: per(100.0 * d(12), d(1)),
                }
            }),
        None => None,
    };
    // Copies the receivers should have got, from what was sent: catches streams that never
    // arrived or stopped, which sequence-number loss cannot see.
    let should_receive = g.sent_forwarded as f64 * opts.scenario.fan_out();
    let delivery_loss_pct = if should_receive > 0.0 {
        (100.0 * (1.0 - g.rx.packets as f64 / should_receive)).max(0.0)
    } else {
        0.0
    };

    // Stop: participants leave, the generator ends, the server is killed.
    let _ = stop_tx.send(true);
    // After every figure was read: ending them takes a while, and is not measured.
    if let Some(c) = &mut churn {
        c.finish().await;
        notes.push(format!(
            "churn: {} visits came and went ({} failures{}); the server's CPU, memory and own counters include their traffic, the delivery figures do not",
            c.ended,
            c.failed,
            c.first_error
                .as_deref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        ));
    }
    let mut failed_joins = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(2), t).await {
            Ok(Ok(Err(e))) => {
                failed_joins += 1;
                if failed_joins == 1 {
                    notes.push(format!("a participant failed: {e:#}"));
                }
            }
            Ok(Err(_)) => failed_joins += 1,
            _ => {}
        }
    }
    if failed_joins > 0 {
        notes.push(format!("{failed_joins} participants' signaling failed"));
    }
    if g.failed > 0 {
        notes.push(format!("{} participants could not get a socket", g.failed));
    }
    if g.send_dropped > 0 {
        notes.push(format!(
            "the generator's sockets dropped {} datagrams: it was overloaded",
            g.send_dropped
        ));
    }
    if g.receive_dropped > 0 {
        notes.push(format!(
            "the generator's receive queue overflowed and dropped {} datagrams: they count as lost, though the server sent them",
            g.receive_dropped
        ));
    }
    let _ = to_media.send(ToMedia::Stop);
    let _ = generator.join();
    drop(janus_sessions);
    drop(server);
    if let Some(d) = &opts.deployment {
        if let Err(e) = d.cancel(&d.http()?, &booked.0).await {
            notes.push(format!("cancelling the run's meetings failed: {e:#}"));
        }
        if server_pid == 0 {
            notes.push("server CPU and memory not measured (give --server-pid on its host)".into());
        }
    }

    if cpu_steal_pct > STEAL_FLAG_PCT {
        notes.push(format!(
            "the hypervisor took {cpu_steal_pct:.1} % of this VM's CPU time during the run (steal): its figures are not comparable with runs at low steal"
        ));
    }
    if let (Some(q), Some(quota), Some(before)) =
        (opts.worker_cpu_quota, &worker_quota, throttled_before)
    {
        let periods =
            elapsed * 1e6 / crate::worker_quota::PERIOD_US as f64 * quota.workers() as f64;
        let throttled = quota.throttled_periods().saturating_sub(before) as f64;
        notes.push(format!(
            "each SFU worker was held to {q} of a core (cgroup CPU quota) and ran out of it in {:.0} % of its {} ms periods: per core it would carry about packets/s out ÷ {:.2}",
            throttled * 100.0 / periods.max(1.0),
            crate::worker_quota::PERIOD_US / 1000,
            q * quota.workers() as f64
        ));
    }
    drop(worker_quota);
    let generator_limited = generator_cpu_pct > 90.0 || g.send_dropped > 0 || g.receive_dropped > 0;
    if generator_limited {
        notes.push(format!(
            "the generator used {generator_cpu_pct:.0} % of its core: it, not the server, may be the limit"
        ));
    }
    let mut report = TargetReport {
        target: target.name().into(),
        scenario: format!("{:?}", opts.scenario.kind).to_lowercase(),
        participants: plan.len(),
        publishers: plan.iter().filter(|p| p.publish).count(),
        fan_out: opts.scenario.fan_out(),
        duration_s: elapsed,
        pps_in,
        pps_out,
        pps_in_forwarded: g.sent_forwarded as f64 / elapsed,
        simulcast_layers: opts.profile.layers(),
        publisher_layers_sent: g.layers_sent,
        publisher_layers_paused: g.layers_paused,
        bytes_in_per_s: bytes_in,
        bytes_out_per_s: bytes_out,
        generator_pps_sent: g.sent_packets as f64 / elapsed,
        generator_pps_received: g.rx.packets as f64 / elapsed,
        loss_pct: g.rx.loss_pct(),
        delivery_loss_pct,
        reordered_pct: if g.rx.packets > 0 {
            g.rx.reordered as f64 * 100.0 / g.rx.packets as f64
        } else {
            0.0
        },
        receivers_expected: receivers,
        sfu_metrics_pps_in: sfu_metrics.as_ref().map(|m| m.pps_in),
        sfu_metrics_pps_out: sfu_metrics.as_ref().map(|m| m.pps_out),
        sfu_ice_tcp_connections: sfu_metrics.as_ref().map(|m| m.ice_tcp_connections),
        sfu_wakeups_per_s: sfu_metrics.as_ref().and_then(|m| m.wakeups_per_s),
        sfu_datagrams_per_receive: sfu_metrics.as_ref().and_then(|m| m.datagrams_per_receive),
        sfu_datagrams_per_send: sfu_metrics.as_ref().and_then(|m| m.datagrams_per_send),
        sfu_gso_datagrams_pct: sfu_metrics.as_ref().and_then(|m| m.gso_datagrams_pct),
        sfu_paced_pct: sfu_metrics.as_ref().and_then(|m| m.paced_pct),
        generator_send_dropped: g.send_dropped,
        generator_receive_dropped: g.receive_dropped,
        jitter_ms: g.rx.mean_jitter_ms(),
        latency_p50_ms: g.rx.latency_ms(0.5),
        latency_p95_ms: g.rx.latency_ms(0.95),
        latency_p99_ms: g.rx.latency_ms(0.99),
        latency_samples: g.rx.latency_us.len(),
        connected: g.connected,
        receiving: g.receiving,
        cpu_steal_pct,
        server_cpu_pct,
        worker_cpu_pct,
        server_cpu_pct_per_kpps: if pps_out > 0.0 {
            server_cpu_pct / (pps_out / 1000.0)
        } else {
            0.0
        },
        projected_pps_out_per_core: if server_cpu_pct > 0.0 {
            pps_out * 100.0 / server_cpu_pct
        } else {
            0.0
        },
        server_rss_mib: rss_after as f64 / (1024.0 * 1024.0),
        memory_per_participant_kib: rss_after.saturating_sub(rss_before) as f64
            / 1024.0
            / plan.len().max(1) as f64,
        generator_cpu_pct,
        generator_limited,
        notes,
        intervals,
        downlink_phases: g.downlinks.clone(),
        ..Default::default()
    };
    report.set_join_times(g.join_ms);
    Ok(report)
}

/// Removes the run's temporary directory when the run ends.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
