//! A set of workers behind one control entry point: places rooms on workers and routes each
//! command to the worker that owns its room or participant.

use crate::ice_tcp::IceTcp;
use crate::room_placement::RoomPlacement;
use crate::udp_batch::UdpBatch;
use crate::worker::{self, EventSink, SharedCounters, WorkerHandle, WorkerInput};
use sfu_core::{Counters, SfuConfig, TransportConfig};
use sfu_proto::{Command, Event, RoomId};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Address the UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// First UDP port; worker `i` uses `base + i` (0 = ephemeral ports).
    pub udp_port_base: u16,
    /// Address given to clients as the ICE candidate (public or LAN address).
    pub advertised_ip: IpAddr,
    /// Pin worker `i` to core `i` (for benchmarks).
    pub pin_cores: bool,
    /// Also listen for ICE-TCP on each worker's port number (RFC 6544 passive candidates), for
    /// clients whose networks block UDP.
    pub ice_tcp: bool,
    /// Send runs of datagrams to one destination as UDP GSO messages where the kernel can.
    pub udp_gso: bool,
    /// How workers receive (io_uring only in a build with the `io-uring` feature).
    pub udp_receive: crate::udp_receive::UdpReceive,
    pub consent_disconnected: Duration,
    pub consent_failed: Duration,
    /// Subscribers' layers by their bandwidth estimate (`false`: by reported loss alone).
    pub bandwidth_estimation: bool,
    /// The estimate a subscriber starts with, bits per second.
    pub start_bitrate_bps: u64,
    /// Below this estimate a subscriber gets audio only, bits per second.
    pub video_floor_bps: u64,
    /// Open files kept back from ICE-TCP connections: the node's own, and in one process
    /// with signaling, signaling's connections too.
    pub fd_reserve: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            udp_port_base: 0,
            advertised_ip: IpAddr::from([127, 0, 0, 1]),
            pin_cores: false,
            ice_tcp: true,
            udp_gso: true,
            udp_receive: crate::udp_receive::UdpReceive::Recvmmsg,
            consent_disconnected: Duration::from_secs(3),
            consent_failed: Duration::from_secs(10),
            bandwidth_estimation: true,
            start_bitrate_bps: 1_500_000,
            video_floor_bps: 100_000,
            fd_reserve: crate::ice_tcp::FD_RESERVE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("binding TCP {addr} (ICE-TCP, the UDP port's number): {source}")]
    BindTcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "setting up the io_uring receive (sfu.udp_receive = \"io-uring\") on UDP {addr}: {source}"
    )]
    UringReceive {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting worker thread: {0}")]
    Thread(std::io::Error),
    #[error("creating DTLS certificate: {0}")]
    Transport(String),
}

/// Client requests (offers, answers, layer and keyframe requests) waiting for one worker at
/// most: past it, a request is refused at once (`CommandFailed`, "busy") instead of queueing
/// work that would hold the worker's media back.
pub const MAX_PENDING_REQUESTS: usize = 256;

/// A worker's UDP socket and, with ICE-TCP, its TCP listener on the same port number. With an
/// ephemeral port (0) a number whose TCP side is taken is given back and another one tried.
fn bind_worker_sockets(
    config: &NodeConfig,
    port: u16,
    share: &crate::ice_tcp::TcpShare,
) -> Result<(UdpBatch, Option<IceTcp>, SocketAddr), NodeError> {
    let attempts = if port == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let addr = SocketAddr::new(config.bind_ip, port);
        let mut socket = UdpBatch::bind(addr).map_err(|source| NodeError::Bind { addr, source })?;
        if config.udp_gso && !socket.enable_gso() {
            tracing::info!(%addr, "the kernel offers no UDP GSO: datagrams are sent one by one");
        }
        if config.udp_receive == crate::udp_receive::UdpReceive::IoUring {
            socket
                .enable_uring_receive()
                .map_err(|source| NodeError::UringReceive { addr, source })?;
        }
        let local_addr = socket
            .local_addr()
            .map_err(|source| NodeError::Bind { addr, source })?;
        if !config.ice_tcp {
            return Ok((socket, None, local_addr));
        }
        let tcp_addr = SocketAddr::new(config.bind_ip, local_addr.port());
        match IceTcp::bind_shared(tcp_addr, share.clone()) {
            Ok(tcp) => return Ok((socket, Some(tcp), local_addr)),
            Err(source) => {
                last = Some(NodeError::BindTcp {
                    addr: tcp_addr,
                    source,
                })
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

pub struct SfuNode {
    senders: Vec<Sender<WorkerInput>>,
    /// Per worker: client requests queued and not yet handled.
    pending: Vec<Arc<AtomicUsize>>,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
    workers: Vec<WorkerHandle>,
    placement: Arc<Mutex<RoomPlacement<usize>>>,
    counters: Vec<SharedCounters>,
}

impl std::fmt::Debug for SfuNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuNode")
            .field("workers", &self.workers)
            .finish()
    }
}

impl SfuNode {
    /// Starts the workers. Events of every worker are passed to `on_event`.
    pub fn start(
        config: &NodeConfig,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<Self, NodeError> {
        let n = if config.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            config.workers
        };
        // Every ICE-TCP connection is a file descriptor: take all the process may have, and
        // share them out so that a flood of connections cannot take the ones the node needs
        // (its operations listener, which the kubelet probes, above all).
        let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open-files limit");
                rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
            }
        };
        let tcp_share = crate::ice_tcp::TcpShare::new(n, open_files, config.fd_reserve);
        if config.ice_tcp {
            tracing::info!(
                open_files,
                kept_back = config.fd_reserve,
                per_worker = tcp_share.max_links(),
                "ICE-TCP connections per worker"
            );
            if (tcp_share.max_links() * n) as u64 + config.fd_reserve > open_files {
                tracing::warn!(
                    open_files,
                    "too few open files for the ICE-TCP connections and what is kept back: \
                     raise the process's hard limit (docs/deployment.md)"
                );
            }
        }
        let placement = Arc::new(Mutex::new(RoomPlacement::<usize>::default()));
        let on_event: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(on_event);
        let sink: EventSink = {
            let placement = placement.clone();
            let on_event = on_event.clone();
            Arc::new(move |_worker: usize, event: Event| {
                if let Ok(mut p) = placement.lock() {
                    p.observe(&event);
                }
                on_event(event)
            })
        };
        let mut senders = Vec::with_capacity(n);
        let mut pending = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        let mut counters = Vec::with_capacity(n);
        for i in 0..n {
            let port = if config.udp_port_base == 0 {
                0
            } else {
                config.udp_port_base.saturating_add(i as u16)
            };
            let (socket, tcp, local_addr) = bind_worker_sockets(config, port, &tcp_share)?;
            let advertised_addr = SocketAddr::new(config.advertised_ip, local_addr.port());
            let mut transport = TransportConfig::generate(
                advertised_addr,
                config.consent_disconnected,
                config.consent_failed,
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?;
            if tcp.is_some() {
                transport = transport.with_tcp(advertised_addr);
            }
            let (tx, rx) = channel();
            let mut sfu_config = SfuConfig::new(transport);
            sfu_config.bandwidth_estimation = config.bandwidth_estimation;
            sfu_config.start_bitrate_bps = config.start_bitrate_bps;
            sfu_config.video_floor_bps = config.video_floor_bps;
            let waiting = Arc::new(AtomicUsize::new(0));
            let shared: SharedCounters = Arc::new(Mutex::new((Counters::default(), 0, 0)));
            let thread = worker::spawn(
                i,
                worker::WorkerSockets { udp: socket, tcp },
                sfu_config,
                worker::CommandQueue {
                    commands: rx,
                    pending_requests: waiting.clone(),
                },
                sink.clone(),
                shared.clone(),
                config.pin_cores.then_some(i),
            )
            .map_err(NodeError::Thread)?;
            tracing::info!(worker = i, %local_addr, %advertised_addr, "SFU worker started");
            senders.push(tx);
            pending.push(waiting);
            counters.push(shared);
            workers.push(WorkerHandle {
                index: i,
                local_addr,
                advertised_addr,
                thread: Some(thread),
            });
        }
        Ok(Self {
            senders,
            pending,
            on_event,
            workers,
            placement,
            counters,
        })
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// Routes a command to the worker owning its room or participant.
    pub fn send(&self, command: Command) {
        let workers = self.senders.len();
        let worker = match self.placement.lock() {
            // A new room goes to the worker with the fewest participants.
            Ok(mut p) => p.route(&command, |p| (0..workers).min_by_key(|w| p.count(*w))),
            Err(_) => return,
        };
        let (Some(w), Some(tx)) = (worker, worker.and_then(|w| self.senders.get(w))) else {
            return;
        };
        if command.is_client_request() {
            let waiting = &self.pending[w];
            if waiting.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_REQUESTS {
                waiting.fetch_sub(1, Ordering::AcqRel);
                metrics::counter!("sfu_commands_refused_busy_total", "worker" => w.to_string())
                    .increment(1);
                let failed = Event::command_failed(&command, sfu_proto::BUSY);
                // A refused add must not stay placed on the worker.
                if let Ok(mut p) = self.placement.lock() {
                    p.observe(&failed);
                }
                (self.on_event)(failed);
                return;
            }
        }
        let _ = tx.send(WorkerInput::Command(command));
    }

    /// Sum of the workers' counters as of their last export (about once a second).
    pub fn counters(&self) -> (Counters, usize, usize) {
        let mut total = Counters::default();
        let (mut rooms, mut participants) = (0, 0);
        for c in &self.counters {
            if let Ok(c) = c.lock() {
                let (w, r, p) = *c;
                total += w;
                rooms += r;
                participants += p;
            }
        }
        (total, rooms, participants)
    }

    /// The media sessions the workers run now (for signaling, when the control link comes up).
    pub fn held_sessions(&self) -> Vec<sfu_proto::HeldSession> {
        self.placement
            .lock()
            .map(|p| p.held_sessions())
            .unwrap_or_default()
    }

    /// Ends every room on every worker (the control link to signaling stayed lost).
    pub fn close_all_rooms(&self) {
        let rooms: Vec<(RoomId, usize)> = match self.placement.lock() {
            Ok(mut p) => p.drain_rooms(),
            Err(_) => return,
        };
        for (room, w) in rooms {
            if let Some(tx) = self.senders.get(w) {
                let _ = tx.send(WorkerInput::Command(Command::CloseRoom { room }));
            }
        }
    }

    /// Whether every worker thread is still running (one that panicked or stopped serves
    /// nobody: the node is not ready).
    pub fn workers_running(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.thread.as_ref().is_some_and(|t| !t.is_finished()))
    }

    pub fn shutdown(&mut self) {
        for tx in &self.senders {
            let _ = tx.send(WorkerInput::Shutdown);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for SfuNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health_listener::Readiness;

    #[test]
    fn a_node_whose_workers_stopped_is_not_ready() {
        let mut node = SfuNode::start(
            &NodeConfig {
                workers: 2,
                bind_ip: std::net::IpAddr::from([127, 0, 0, 1]),
                advertised_ip: std::net::IpAddr::from([127, 0, 0, 1]),
                ice_tcp: false,
                ..Default::default()
            },
            |_| {},
        )
        .unwrap();
        assert!(node.workers_running());
        node.shutdown();
        assert!(!node.workers_running());

        let readiness = Readiness::default();
        readiness.set_control_link_up(true);
        assert!(readiness.is_ready(), "no workers watched yet");
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe = running.clone();
        readiness.watch_workers(move || probe.load(Ordering::Relaxed));
        assert!(readiness.is_ready());
        running.store(false, Ordering::Relaxed);
        assert!(
            !readiness.is_ready(),
            "a stopped worker makes the node unready"
        );
    }
}
