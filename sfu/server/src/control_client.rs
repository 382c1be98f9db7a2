//! The SFU node's side of the control link: dials every signaling replica over QUIC, says
//! hello, executes commands, sends events (each to every replica: the one running the
//! participant's meeting acts on it) and a periodic load report; redials a link that drops.

use crate::cluster_tls::ClusterTlsFiles;
use crate::control_stream::{ControlStreamError, ControlWriter, spawn_reader, write_message};
use crate::health_listener::Readiness;
use crate::load_sampler::LoadSampler;
use crate::node::SfuNode;
use sfu_proto::{ControlMessage, Event, LoadReport, PROTOCOL_VERSION};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{Sender, UnboundedReceiver, channel};

/// How long a node's rooms outlive its last control link unless configured otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ControlClientConfig {
    /// `host:port` entries, comma-separated; each resolved again every few seconds, and every
    /// address found dialled (a headless Service lists each signaling replica).
    pub signaling: String,
    /// Name in signaling's certificate.
    pub server_name: String,
    pub node_id: String,
    pub load_interval: Duration,
    /// How long rooms outlive the last control link: media flows on through a signaling
    /// restart or failover, and the signaling reached next takes the sessions over.
    pub grace: Duration,
}

/// How often the signaling addresses are resolved again (a replica added or moved).
const DISCOVERY_EVERY: Duration = Duration::from_secs(5);

/// Events waiting for one link at most: a replica that reads no faster than this (alive but
/// stuck) loses its link — the next hello brings it up to date — rather than the node's memory.
const LINK_QUEUE: usize = 8192;

/// The links up now: where each event goes.
#[derive(Default)]
struct Links {
    next: u64,
    up: HashMap<u64, Sender<Event>>,
}

/// What every link task shares.
struct Shared {
    config: ControlClientConfig,
    endpoint: quinn::Endpoint,
    /// Whether the endpoint is dual-stack (else IPv4 only).
    ipv6: bool,
    /// The certificate files, read again at each dial (a certificate renewed in place is used
    /// from the next link on), and the client configuration they last made.
    tls_files: ClusterTlsFiles,
    client: Mutex<quinn::ClientConfig>,
    node: Arc<SfuNode>,
    readiness: Arc<Readiness>,
    draining: tokio::sync::watch::Receiver<bool>,
    links: Mutex<Links>,
    /// Whether any link is up (the rooms are kept while one is, see `keep_rooms`).
    any_up: tokio::sync::watch::Sender<bool>,
    /// The addresses found at the last resolution, and those a task dials now.
    wanted: Mutex<HashSet<SocketAddr>>,
    dialing: Mutex<HashSet<SocketAddr>>,
    /// The load every link reports, measured over windows of half a report interval at
    /// least (a link's first report goes out as it comes up), every half interval at most.
    load: Mutex<LoadSampler>,
}

impl Shared {
    /// The client configuration for a new link: from the certificate files as they are now,
    /// or, when they do not load (caught mid-rewrite), the last that did.
    fn client_config(&self) -> quinn::ClientConfig {
        let mut last = self.client.lock().unwrap_or_else(|e| e.into_inner());
        match self.tls_files.load().and_then(|t| t.quic_client()) {
            Ok(config) => *last = config,
            Err(e) => {
                tracing::warn!(error = %e, "the cluster certificate files do not load; the last that did is used")
            }
        }
        last.clone()
    }
    fn link_up(&self, tx: Sender<Event>) -> u64 {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.next += 1;
        let key = links.next;
        links.up.insert(key, tx);
        self.any_up.send_replace(true);
        self.readiness.set_control_link_up(true);
        key
    }

    fn link_down(&self, key: u64) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.up.remove(&key);
        if links.up.is_empty() {
            self.any_up.send_replace(false);
            self.readiness.set_control_link_up(false);
        }
    }

    /// Every event to every link up; a link whose queue is full is let go (its session ends
    /// and redials).
    fn fan_out(&self, event: Event) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.up.retain(|_, tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("a signaling replica fell behind on events: its link is closed");
                false
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

/// The socket addresses of the configured entries (see [`dialled`]). An entry that does not
/// resolve, or only to addresses this host cannot reach, is logged and skipped.
async fn resolve(entries: &str, ipv6: bool) -> HashSet<SocketAddr> {
    let mut found = HashSet::new();
    for entry in entries.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match tokio::net::lookup_host(entry).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let dial = dialled(&addrs, ipv6);
                if dial.is_empty() && !addrs.is_empty() {
                    tracing::warn!(signaling = %entry, "signaling address is IPv6 only, and this host has no IPv6: not dialled");
                }
                found.extend(dial);
            }
            Err(e) => {
                tracing::warn!(signaling = %entry, error = %e, "signaling address does not resolve")
            }
        }
    }
    found
}

/// Which of the addresses one entry resolves to are dialled: its IPv4 ones when it has any
/// (a replica with an address of each family is one replica: two links to it would replace
/// each other at signaling, without end), else its IPv6 ones where the host has IPv6.
fn dialled(addrs: &[SocketAddr], ipv6: bool) -> Vec<SocketAddr> {
    let v4: Vec<SocketAddr> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
    if !v4.is_empty() || !ipv6 {
        return v4;
    }
    addrs.to_vec()
}

/// Runs until the process ends. `events` carries the node's SFU events.
pub async fn run(
    config: ControlClientConfig,
    tls_files: ClusterTlsFiles,
    node: Arc<SfuNode>,
    mut events: UnboundedReceiver<Event>,
    readiness: Arc<Readiness>,
    draining: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Dual-stack where the host has IPv6 (signaling at an IPv6 address is reachable, and IPv4
    // addresses are dialled mapped), else IPv4.
    let socket = crate::control_socket::control_socket(SocketAddr::from((
        std::net::Ipv6Addr::UNSPECIFIED,
        0,
    )))?;
    let ipv6 = crate::control_socket::carries_ipv6(&socket);
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let client = tls_files.load()?.quic_client()?;
    let (any_up, any_up_rx) = tokio::sync::watch::channel(false);
    let held = node.clone();
    let closing = node.clone();
    let keeper = tokio::spawn(keep_rooms(
        any_up_rx,
        config.grace,
        move || held.held_sessions().len(),
        move || closing.close_all_rooms(),
    ));
    let _keeper = AbortOnDrop(keeper);
    let load = LoadSampler::new(node.counters().0, config.load_interval / 2);
    let shared = Arc::new(Shared {
        load: Mutex::new(load),
        config,
        endpoint: endpoint.clone(),
        ipv6,
        tls_files,
        client: Mutex::new(client),
        node,
        readiness,
        draining,
        links: Mutex::new(Links::default()),
        any_up,
        wanted: Mutex::new(HashSet::new()),
        dialing: Mutex::new(HashSet::new()),
    });
    // Events go to every link up; with none, they are let go (what happened meanwhile is in
    // the next hello's list of sessions).
    let fanning = shared.clone();
    let fan_out = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            fanning.fan_out(event);
        }
    });
    let _fan_out = AbortOnDrop(fan_out);
    // Windows are measured with no link up too: the first report after every link was down
    // then describes the last half interval, not the whole outage.
    let sampling = shared.clone();
    let sampler = tokio::spawn(async move {
        let mut every = tokio::time::interval(sampling.config.load_interval / 2);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let counters = sampling.node.counters().0;
            sampling
                .load
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .figures(counters);
        }
    });
    let _sampler = AbortOnDrop(sampler);
    let mut tasks = tokio::task::JoinSet::new();
    let mut discovery = tokio::time::interval(DISCOVERY_EVERY);
    loop {
        tokio::select! {
            _ = discovery.tick() => {
                let found = resolve(&shared.config.signaling, shared.ipv6).await;
                if found.is_empty() {
                    tracing::warn!(signaling = %shared.config.signaling, "no signaling address found");
                }
                let new: Vec<SocketAddr> = {
                    let mut dialing = shared.dialing.lock().unwrap_or_else(|e| e.into_inner());
                    let new: Vec<SocketAddr> =
                        found.iter().filter(|a| !dialing.contains(a)).copied().collect();
                    dialing.extend(new.iter().copied());
                    new
                };
                *shared.wanted.lock().unwrap_or_else(|e| e.into_inner()) = found;
                for addr in new {
                    tasks.spawn(link_loop(shared.clone(), addr));
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = stop.wait_for(|stop| *stop) => {
                // The sessions, and with them the connections, are dropped (closed): let the
                // closes reach signaling before the process ends, so it moves this node's
                // participants at once instead of after the idle timeout.
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
                return Ok(());
            }
        }
    }
}

/// Keeps a link to one signaling address: dials, runs the session, waits and dials again —
/// for as long as the address is still found.
async fn link_loop(shared: Arc<Shared>, addr: SocketAddr) {
    let mut redial = RedialDelay::default();
    loop {
        let (was_up, result) = session(&shared, addr).await;
        match result {
            Ok(()) => tracing::info!(%addr, "control link closed by signaling"),
            Err(e) => tracing::warn!(error = %e, %addr, "control link failed"),
        }
        tokio::time::sleep(redial.next(was_up)).await;
        let still_wanted = shared
            .wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&addr);
        if !still_wanted {
            tracing::info!(%addr, "signaling address no longer listed: not dialled again");
            shared
                .dialing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&addr);
            return;
        }
    }
}

/// How long a link must stay up to count as managing the rooms: signaling refuses a node
/// (a protocol or certificate mismatch) right after its hello, and a node redialling every
/// 200 ms must not restart its grace each time.
const LINK_SETTLES: Duration = Duration::from_secs(3);

/// Ends every room once no managing link has been up for `grace`: no signaling took the
/// sessions over, and nobody can admit, mute or remove anyone in them. The grace runs from the
/// moment the last link that had stayed up [`LINK_SETTLES`] went down; a link counts again
/// once it has stayed up that long.
async fn keep_rooms(
    mut link: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
    sessions: impl Fn() -> usize,
    close_all_rooms: impl Fn(),
) {
    let mut ends_at: Option<tokio::time::Instant> = None;
    let mut settles_at: Option<tokio::time::Instant> = None;
    let until = |at: Option<tokio::time::Instant>| async move {
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    loop {
        tokio::select! {
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = tokio::time::Instant::now();
                if *link.borrow_and_update() {
                    settles_at = Some(now + LINK_SETTLES);
                } else {
                    settles_at = None;
                    if ends_at.is_none() {
                        let held = sessions();
                        if held > 0 {
                            tracing::warn!(
                                sessions = held,
                                grace_secs = grace.as_secs(),
                                "control link lost: media sessions kept for the grace"
                            );
                        }
                        ends_at = Some(now + grace);
                    }
                }
            }
            _ = until(settles_at) => {
                settles_at = None;
                ends_at = None;
            }
            _ = until(ends_at) => {
                ends_at = None;
                if sessions() > 0 {
                    tracing::warn!("no control link past the grace: every room ends");
                }
                close_all_rooms();
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The wait before dialling signaling again: doubling from 200 ms to 5 s while dials fail, and
/// back to 200 ms after a link that stayed up (a signaling restart is then found at once, not
/// after the backoff of some earlier outage).
#[derive(Debug)]
struct RedialDelay {
    next: Duration,
}

impl RedialDelay {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    fn next(&mut self, was_up: bool) -> Duration {
        if was_up {
            self.next = Self::FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

impl Default for RedialDelay {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

/// Closes a QUIC connection when dropped.
struct CloseOnDrop(quinn::Connection);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(0u32.into(), b"control session ended");
    }
}

/// One control session with the signaling replica at `addr`. Returns whether the link stayed
/// up [`LINK_SETTLES`] (a link signaling refuses right after the hello does not: its redials
/// back off), and how it ended.
async fn session(shared: &Shared, addr: SocketAddr) -> (bool, anyhow::Result<()>) {
    let config = &shared.config;
    let node = &shared.node;
    let conn = match shared
        .endpoint
        .connect_with(shared.client_config(), addr, &config.server_name)
    {
        Ok(connecting) => match connecting.await {
            Ok(conn) => conn,
            Err(e) => return (false, Err(e.into())),
        },
        Err(e) => return (false, Err(e.into())),
    };
    // However this session ends, the connection goes with it (the reader task holds a stream).
    let _close = CloseOnDrop(conn.clone());
    let (mut send, recv) = match conn.open_bi().await {
        Ok(streams) => streams,
        Err(e) => return (false, Err(e.into())),
    };
    // Events from here on reach this link: registered before the sessions are listed, so
    // nothing that happens in between is missed (an ended session is listed gone, or its
    // event follows the hello).
    let (tx, mut events) = channel(LINK_QUEUE);
    let key = shared.link_up(tx);
    let held = node.held_sessions();
    let hello = ControlMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: config.node_id.clone(),
        workers: node.workers().len() as u32,
        sessions: held.clone(),
    };
    if let Err(e) = write_message(&mut send, &hello).await {
        shared.link_down(key);
        return (false, Err(e.into()));
    }
    tracing::info!(%addr, node = %config.node_id, sessions = held.len(), "control link up");
    let up_since = tokio::time::Instant::now();
    let mut draining = shared.draining.clone();
    let result: anyhow::Result<()> = async {
        let mut incoming = spawn_reader(recv);
        // (Written on a task of its own: this loop never waits on signaling while it should be
        // reading its commands.)
        let mut writer = ControlWriter::spawn(send, LINK_QUEUE);
        let mut tick = tokio::time::interval(config.load_interval);
        loop {
            // A drain is reported at once (a report now), so no new room is placed here
            // meanwhile.
            let drain_started = async {
                if *draining.borrow() {
                    std::future::pending::<()>().await;
                }
                let _ = draining.changed().await;
            };
            tokio::select! {
                e = writer.ended() => return Err(e.into()),
                _ = drain_started => {
                    tick.reset_immediately();
                }
                msg = incoming.recv() => {
                    match msg.ok_or(ControlStreamError::Closed)?? {
                        ControlMessage::Command(cmd) => node.send(cmd),
                        // A replica taking a meeting over asks what its room runs here.
                        ControlMessage::ReportSessions { room } => {
                            let sessions = node
                                .held_sessions()
                                .into_iter()
                                .filter(|h| h.room == room)
                                .collect();
                            writer.queue(ControlMessage::RoomSessions { room, sessions })?;
                        }
                        // Only the kind: messages carry SDP, which stays out of logs.
                        other => tracing::warn!(kind = other.kind(), "unexpected control message from signaling"),
                    }
                }
                event = events.recv() => match event {
                    Some(event) => writer.queue(ControlMessage::Event(event))?,
                    None => anyhow::bail!("fell behind on events (more than {LINK_QUEUE} waiting)"),
                },
                _ = tick.tick() => {
                    let (c, rooms_now, participants) = node.counters();
                    let load = shared.load.lock().unwrap_or_else(|e| e.into_inner()).figures(c);
                    let report = LoadReport {
                        node_id: config.node_id.clone(),
                        rooms: rooms_now as u32,
                        participants: participants as u32,
                        packets_in_per_s: load.packets_in_per_s,
                        packets_out_per_s: load.packets_out_per_s,
                        dropped_per_s: load.dropped_per_s,
                        draining: *draining.borrow(),
                        cpu_percent: load.cpu_percent,
                    };
                    writer.queue(ControlMessage::Event(Event::Load(report)))?;
                }
            }
        }
    }
    .await;
    shared.link_down(key);
    (up_since.elapsed() >= LINK_SETTLES, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rooms end once no link that stayed up has been there for the grace — also while
    /// a node redials every 200 ms into a signaling that refuses it after its hello — and not
    /// while a link that stayed up came back in time.
    #[tokio::test(start_paused = true)]
    async fn rooms_end_after_the_grace_without_a_settled_link() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let closed = Arc::new(AtomicU32::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let counter = closed.clone();
        let keeper = tokio::spawn(keep_rooms(
            rx,
            Duration::from_secs(30),
            || 2,
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
            },
        ));
        let wait = |secs: f64| tokio::time::sleep(Duration::from_secs_f64(secs));
        // A managing link, lost and back within the grace (a signaling restart): kept.
        tx.send_replace(true);
        wait(10.0).await;
        tx.send_replace(false);
        wait(20.0).await;
        tx.send_replace(true);
        wait(20.0).await;
        assert_eq!(closed.load(Ordering::SeqCst), 0, "kept through the restart");
        // Lost again; the node redials into a refusal every 200 ms for a minute.
        tx.send_replace(false);
        for _ in 0..150 {
            wait(0.2).await;
            tx.send_replace(true);
            wait(0.2).await;
            tx.send_replace(false);
        }
        assert_eq!(
            closed.load(Ordering::SeqCst),
            1,
            "the refused redials did not restart the grace"
        );
        keeper.abort();
    }

    #[test]
    fn a_name_with_both_families_is_dialled_once_per_replica_over_ipv4() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        // `localhost`, or a dual-stack headless Service of two replicas.
        let both = [at("[::1]:7443"), at("127.0.0.1:7443")];
        assert_eq!(dialled(&both, true), [at("127.0.0.1:7443")]);
        let two = [
            at("[2001:db8::5]:7443"),
            at("10.0.0.5:7443"),
            at("[2001:db8::6]:7443"),
            at("10.0.0.6:7443"),
        ];
        assert_eq!(
            dialled(&two, true),
            [at("10.0.0.5:7443"), at("10.0.0.6:7443")]
        );
        // IPv6 only: dialled where the host has IPv6.
        let v6 = [at("[2001:db8::5]:7443"), at("[2001:db8::6]:7443")];
        assert_eq!(dialled(&v6, true), v6);
        assert!(dialled(&v6, false).is_empty());
    }

    #[test]
    fn redials_back_off_while_failing_and_start_over_after_a_link_that_came_up() {
        let mut r = RedialDelay::default();
        let failing: Vec<u64> = (0..7).map(|_| r.next(false).as_millis() as u64).collect();
        assert_eq!(failing, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(r.next(true), Duration::from_millis(200));
        assert_eq!(r.next(false), Duration::from_millis(400));
    }
}
