//! One worker thread: owns a shard of rooms (an [`Sfu`]), its own UDP socket and port.

use crate::cache_prefetch::prefetch_line;
use crate::datagram_sink::DatagramSink;
use crate::ice_tcp::IceTcp;
use crate::udp_batch::UdpBatch;
use sfu_core::stream_address;
use sfu_core::{Counters, Sfu, SfuConfig, TransmitBatch};
use sfu_proto::{Command, Event};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub enum WorkerInput {
    Command(Command),
    Shutdown,
}

/// Where a worker's events go (the node routes them to signaling).
pub type EventSink = Arc<dyn Fn(usize, Event) + Send + Sync>;

/// Commands handled between two turns of I/O at most, and the time they may take: a flood of
/// commands delays media by one such turn, never stops it.
const COMMANDS_PER_TURN: usize = 32;
const COMMAND_TIME_PER_TURN: Duration = Duration::from_millis(2);

/// A worker's commands, and how many client requests among them wait (the node refuses new
/// ones past [`crate::node::MAX_PENDING_REQUESTS`]).
pub struct CommandQueue {
    pub commands: Receiver<WorkerInput>,
    pub pending_requests: Arc<AtomicUsize>,
}

/// Longest sleep of an idle worker; bounds how late a command is picked up.
const MAX_WAIT: Duration = Duration::from_millis(5);
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

pub struct WorkerHandle {
    pub index: usize,
    pub local_addr: SocketAddr,
    pub advertised_addr: SocketAddr,
    pub thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("index", &self.index)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// Snapshot of a worker's counters, published for metrics and load reports.
pub type SharedCounters = Arc<std::sync::Mutex<(Counters, usize, usize)>>;

/// A worker's sockets: its UDP socket and, with ICE-TCP, the listener on the same port number.
pub struct WorkerSockets {
    pub udp: UdpBatch,
    pub tcp: Option<IceTcp>,
}

pub fn spawn(
    index: usize,
    sockets: WorkerSockets,
    config: SfuConfig,
    commands: CommandQueue,
    sink: EventSink,
    shared: SharedCounters,
    core: Option<usize>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sfu-worker-{index}"))
        .spawn(move || {
            if let Some(core) = core {
                pin_to_core(core);
            }
            // A worker that panicked would leave its rooms frozen while the node still looked
            // alive: the process stops instead, so that its supervisor starts it again (and,
            // with standalone nodes, signaling moves its visits meanwhile).
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(index, sockets, config, commands, sink, shared)
            }));
            if ran.is_err() {
                stop_after_panic(index);
            }
        })
}

/// How long the process's own stop (SIGTERM: signaling hands its meetings over and closes its
/// audit log) may take before it is ended outright.
const STOP_AFTER_PANIC: Duration = Duration::from_secs(30);

static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a worker of this process panicked: its `main` then ends with [`WORKER_PANICKED`].
pub fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

/// Stops the process the way SIGTERM does — in one process with signaling, that hands its
/// meetings over and closes the audit log — and ends it outright if that has not happened in
/// [`STOP_AFTER_PANIC`] (no core dump: memory holds media).
fn stop_after_panic(index: usize) {
    PANICKED.store(true, Ordering::SeqCst);
    tracing::error!(
        worker = index,
        "SFU worker panicked; the process stops so that it is started again"
    );
    // SAFETY: kill with the process's own id and a standard signal; no memory is involved.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
    std::thread::sleep(STOP_AFTER_PANIC);
    std::process::exit(WORKER_PANICKED);
}

/// Datagrams handed to the core per turn at most, before timers, commands and TCP.
const DATAGRAMS_PER_TURN: usize = 8192;

/// The exit status of a process whose worker panicked.
pub const WORKER_PANICKED: i32 = 70;

fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it and
    // sched_setaffinity reads it for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(
                core,
                error = %std::io::Error::last_os_error(),
                "could not pin the worker to its core (outside the CPUs allowed?)"
            );
        }
    }
}

fn run(
    index: usize,
    sockets: WorkerSockets,
    config: SfuConfig,
    queue: CommandQueue,
    sink: EventSink,
    shared: SharedCounters,
) {
    let WorkerSockets {
        udp: mut socket,
        mut tcp,
    } = sockets;
    let mut sfu = Sfu::new(config);
    let mut batch = TransmitBatch::with_capacity(256);
    let mut out = Outlets {
        socket: &mut socket,
        tcp: tcp.as_mut(),
        send_dropped: 0,
    };
    let mut next_metrics = Instant::now() + METRICS_INTERVAL;
    let label = index.to_string();
    let timer_pass = metrics::histogram!("sfu_timer_pass_seconds", "worker" => label.clone());
    loop {
        // Commands from signaling, a bounded turn of them so the sockets are served between.
        let turn_started = Instant::now();
        let mut more_commands = false;
        for handled in 0.. {
            if handled == COMMANDS_PER_TURN || turn_started.elapsed() >= COMMAND_TIME_PER_TURN {
                more_commands = true;
                break;
            }
            match queue.commands.try_recv() {
                Ok(WorkerInput::Command(cmd)) => {
                    let request = cmd.is_client_request();
                    sfu.handle_command(Instant::now(), cmd, &mut batch);
                    if request {
                        queue.pending_requests.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Ok(WorkerInput::Shutdown) | Err(TryRecvError::Disconnected) => {
                    out.flush(&mut batch);
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        // (What the commands produced goes first, so the pass is timed on its own output.)
        out.flush(&mut batch);
        let now = Instant::now();
        let pass_due = sfu.poll_timeout().is_some_and(|t| t <= now);
        sfu.handle_timeout(now, &mut batch);
        out.flush(&mut batch);
        if pass_due {
            // With the sending of what the pass produced: datagrams wait behind both.
            timer_pass.record(now.elapsed().as_secs_f64());
        }
        while let Some(event) = sfu.poll_event() {
            sink(index, event);
        }
        let wait = if more_commands {
            Duration::ZERO
        } else {
            sfu.poll_timeout()
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT)
        };
        // Datagrams already taken from the socket (io_uring) wait for no readiness — nor does
        // TCP wait for them: it is looked at without waiting, every turn all the same.
        let received = out.socket.has_received();
        let udp_readable = match out.tcp.as_deref_mut() {
            // Framed packets on TCP go to the core like datagrams from their connection.
            Some(tcp) => {
                let wait = if received { Duration::ZERO } else { wait };
                let udp_readable = tcp.poll(out.socket.as_raw_fd(), wait, |from, frame| {
                    sfu.handle_datagram(Instant::now(), from, frame, &mut batch)
                });
                out.flush(&mut batch);
                udp_readable || received
            }
            None if received => true,
            None => out.socket.wait_readable(wait),
        };
        out.socket.calls.wakeups += 1;
        if udp_readable {
            // Drain what is queued, a batch at a time, sending after each batch — up to a
            // bound in datagrams (a batch's buffers may each hold dozens of coalesced ones), so
            // that timers, commands and TCP are served between.
            let mut drained = 0;
            for _ in 0..64 {
                if drained >= DATAGRAMS_PER_TURN {
                    break;
                }
                let now = Instant::now();
                let got = out.socket.recv_batch_into(&mut CoreSink {
                    sfu: &mut sfu,
                    now,
                    batch: &mut batch,
                    links: out.tcp.as_deref(),
                });
                out.flush(&mut batch);
                drained += got.as_ref().map_or(0, |n| *n);
                match got {
                    Ok(0) => break,
                    Ok(_) if !out.socket.more_waiting() => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(worker = index, error = %e, "UDP receive failed");
                        break;
                    }
                }
            }
            while let Some(event) = sfu.poll_event() {
                sink(index, event);
            }
        }
        if now >= next_metrics {
            next_metrics = now + METRICS_INTERVAL;
            export_metrics(&label, &sfu.counters, out.send_dropped);
            for (name, value) in out.socket.calls.named() {
                metrics::counter!(name, "worker" => label.clone()).absolute(value);
            }
            #[cfg(feature = "io-uring")]
            if let Some(uring) = out.socket.uring_counters() {
                for (name, value) in uring.named() {
                    metrics::counter!(name, "worker" => label.clone()).absolute(value);
                }
            }
            if let Some(tcp) = out.tcp.as_deref() {
                for (name, value) in tcp.counters.named() {
                    metrics::counter!(name, "worker" => label.clone()).absolute(value);
                }
                metrics::gauge!("sfu_ice_tcp_connections", "worker" => label.clone())
                    .set(tcp.link_count() as f64);
            }
            metrics::gauge!("sfu_rooms", "worker" => label.clone()).set(sfu.room_count() as f64);
            metrics::gauge!("sfu_participants", "worker" => label.clone())
                .set(sfu.participant_count() as f64);
            export_downlinks(&label, &sfu);
            tracing::debug!(worker = index, counters = ?sfu.counters, "worker counters");
            if let Ok(mut s) = shared.lock() {
                *s = (sfu.counters, sfu.room_count(), sfu.participant_count());
            }
        }
    }
}

/// Where a worker's output goes: its UDP socket, or the ICE-TCP connection a destination is.
struct Outlets<'a> {
    socket: &'a mut UdpBatch,
    tcp: Option<&'a mut IceTcp>,
    send_dropped: u64,
}

impl Outlets<'_> {
    fn flush(&mut self, batch: &mut TransmitBatch) {
        if batch.is_empty() && batch.withdrawn().is_empty() {
            return;
        }
        match self.tcp.as_deref_mut() {
            Some(tcp) => {
                // Connections are known to the core by IPv6 addresses (`stream_address`): an
                // IPv4 destination is a datagram's.
                if tcp.has_links() {
                    let now = Instant::now();
                    for i in 0..batch.len() {
                        let (dest, datagram) = batch.get(i);
                        if dest.is_ipv6() {
                            tcp.send(now, dest, datagram);
                        }
                    }
                    for dest in batch.withdrawn() {
                        tcp.withdraw_media(dest);
                    }
                }
                // (An IPv4 connection's address is never a datagram's, even once it closed.)
                let links = &*tcp;
                let (_, dropped) = self.socket.send_batch_where(batch, |dest| {
                    dest.is_ipv4() || !(stream_address::is_stream(dest) || links.is_link(&dest))
                });
                self.send_dropped += dropped as u64;
                tcp.close_pending();
            }
            None => {
                let (_, dropped) = self.socket.send_batch(batch);
                self.send_dropped += dropped as u64;
            }
        }
        batch.clear();
    }
}

fn export_metrics(worker: &str, c: &Counters, send_dropped: u64) {
    for (name, value) in c.named() {
        metrics::counter!(name, "worker" => worker.to_owned()).absolute(value);
    }
    metrics::counter!("sfu_send_dropped_total", "worker" => worker.to_owned())
        .absolute(send_dropped);
}

/// Subscribers' bandwidth estimates, once per export: their distribution (no per-subscriber
/// label: participant ids are not for metrics) and how many are held below what they want.
fn export_downlinks(worker: &str, sfu: &Sfu) {
    let mut constrained = 0usize;
    // One registry lookup for all of them, not one per subscriber.
    let estimates = metrics::histogram!("sfu_downlink_estimate_bytes_per_second", "worker" => worker.to_owned());
    for d in sfu.downlinks() {
        estimates.record(d.estimate_bps as f64 / 8.0);
        if d.desired_bps > d.allocated_bps {
            constrained += 1;
        }
    }
    metrics::gauge!("sfu_downlinks_constrained", "worker" => worker.to_owned())
        .set(constrained as f64);
}

/// A received batch into the core: its state asked for across the whole batch first, then
/// each datagram handled.
struct CoreSink<'a> {
    sfu: &'a mut Sfu,
    now: Instant,
    batch: &'a mut TransmitBatch,
    /// The worker's ICE-TCP connections, whose addresses no datagram may claim.
    links: Option<&'a IceTcp>,
}

/// Whether a datagram that came in on UDP names a source only an ICE-TCP connection has: an
/// IPv4 connection's stand-in (`100::/96`, reachable as a UDP source on a dual-stack bind) or
/// an IPv6 connection's own address — spoofed, to pass as that connection's path (blind DTLS
/// records during its handshake, checks outside its budget).
fn posing_as_stream(from: SocketAddr, links: Option<&IceTcp>) -> bool {
    // (An IPv4 source is never a connection's address: one branch per datagram, no lookup.)
    from.is_ipv6()
        && (stream_address::is_stream(from)
            || links.is_some_and(|t| t.has_links() && t.is_link(&from)))
}

impl DatagramSink for CoreSink<'_> {
    fn looks_ahead(&self) -> bool {
        true
    }

    fn look_ahead(&mut self, batch: &[(SocketAddr, &[u8])]) {
        self.sfu
            .prefetch_batch(batch.iter().copied(), prefetch_line);
    }

    fn datagram(&mut self, from: SocketAddr, buf: &mut [u8]) {
        if posing_as_stream(from, self.links) {
            self.sfu.counters.dropped_unknown_source += 1;
            return;
        }
        self.sfu.handle_datagram(self.now, from, buf, self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_naming_a_tcp_connections_address_is_not_taken_as_its_path() {
        let peer: SocketAddr = "198.18.0.7:50000".parse().unwrap();
        assert!(posing_as_stream(stream_address::of_stream(peer), None));
        assert!(!posing_as_stream(peer, None));
        let v6: SocketAddr = "[2001:db8::7]:50000".parse().unwrap();
        assert!(!posing_as_stream(v6, None));
    }
}
