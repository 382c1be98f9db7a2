//! A set of workers behind one control entry point: places rooms on workers and routes each
//! command to the worker that owns its room or participant.

use crate::udp_batch::UdpBatch;
use crate::worker::{self, EventSink, SharedCounters, WorkerHandle, WorkerInput};
use sfu_core::{Counters, SfuConfig, TransportConfig};
use sfu_proto::{Command, Event, ParticipantId, RoomId};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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
    pub consent_disconnected: Duration,
    pub consent_failed: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            udp_port_base: 0,
            advertised_ip: IpAddr::from([127, 0, 0, 1]),
            pin_cores: false,
            consent_disconnected: Duration::from_secs(3),
            consent_failed: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting worker thread: {0}")]
    Thread(std::io::Error),
    #[error("creating DTLS certificate: {0}")]
    Transport(String),
}

#[derive(Default)]
struct Placement {
    rooms: HashMap<RoomId, usize>,
    /// Worker and room of every participant placed.
    participants: HashMap<ParticipantId, (usize, RoomId)>,
    load: Vec<usize>,
}

impl Placement {
    /// Forgets a participant that left (or was never added); an emptied room is forgotten too,
    /// so its next use is placed afresh.
    fn release(&mut self, participant: &ParticipantId) {
        let Some((worker, room)) = self.participants.remove(participant) else {
            return;
        };
        if let Some(l) = self.load.get_mut(worker) {
            *l = l.saturating_sub(1);
        }
        if !self.participants.values().any(|(_, r)| *r == room) {
            self.rooms.remove(&room);
        }
    }
}

pub struct SfuNode {
    senders: Vec<Sender<WorkerInput>>,
    workers: Vec<WorkerHandle>,
    placement: Arc<Mutex<Placement>>,
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
        let placement = Arc::new(Mutex::new(Placement {
            load: vec![0; n],
            ..Default::default()
        }));
        let on_event = Arc::new(on_event);
        let sink: EventSink = {
            let placement = placement.clone();
            Arc::new(move |_worker: usize, event: Event| {
                // Placement changes with commands only (in order, under the lock): a participant
                // stays placed until signaling removes it, even after its media ended, so a
                // late event of an old session can never unplace a rejoined one. A refused
                // add is the exception: nothing was placed on the worker.
                let gone = match &event {
                    Event::CommandFailed {
                        command,
                        participant: Some(participant),
                        ..
                    } if command == "add_participant" => Some(participant),
                    _ => None,
                };
                if let Some(participant) = gone
                    && let Ok(mut p) = placement.lock()
                {
                    p.release(participant);
                }
                on_event(event)
            })
        };
        let mut senders = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        let mut counters = Vec::with_capacity(n);
        for i in 0..n {
            let port = if config.udp_port_base == 0 {
                0
            } else {
                config.udp_port_base.saturating_add(i as u16)
            };
            let addr = SocketAddr::new(config.bind_ip, port);
            let socket = UdpBatch::bind(addr).map_err(|source| NodeError::Bind { addr, source })?;
            let local_addr = socket
                .local_addr()
                .map_err(|source| NodeError::Bind { addr, source })?;
            let advertised_addr = SocketAddr::new(config.advertised_ip, local_addr.port());
            let transport = TransportConfig::generate(
                advertised_addr,
                config.consent_disconnected,
                config.consent_failed,
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?;
            let (tx, rx) = channel();
            let shared: SharedCounters = Arc::new(Mutex::new((Counters::default(), 0, 0)));
            let thread = worker::spawn(
                i,
                socket,
                SfuConfig::new(transport),
                rx,
                sink.clone(),
                shared.clone(),
                config.pin_cores.then_some(i),
            )
            .map_err(NodeError::Thread)?;
            tracing::info!(worker = i, %local_addr, %advertised_addr, "SFU worker started");
            senders.push(tx);
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
        let worker = {
            let Ok(mut p) = self.placement.lock() else {
                return;
            };
            match &command {
                Command::AddParticipant {
                    room, participant, ..
                } => {
                    let w = match p.rooms.get(room) {
                        Some(&w) => w,
                        None => {
                            // A new room goes to the least-loaded worker.
                            let w = p
                                .load
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, l)| **l)
                                .map(|(i, _)| i)
                                .unwrap_or(0);
                            p.rooms.insert(room.clone(), w);
                            w
                        }
                    };
                    p.participants
                        .insert(participant.clone(), (w, room.clone()));
                    p.load[w] += 1;
                    Some(w)
                }
                Command::CloseRoom { room } => {
                    let members: Vec<ParticipantId> = p
                        .participants
                        .iter()
                        .filter(|(_, (_, r))| r == room)
                        .map(|(id, _)| id.clone())
                        .collect();
                    let w = p.rooms.get(room).copied();
                    for m in members {
                        p.release(&m);
                    }
                    p.rooms.remove(room);
                    w
                }
                Command::RemoveParticipant { participant } => {
                    let w = p.participants.get(participant).map(|(w, _)| *w);
                    p.release(participant);
                    w
                }
                other => other
                    .participant()
                    .and_then(|id| p.participants.get(id).map(|(w, _)| *w)),
            }
        };
        if let Some(w) = worker
            && let Some(tx) = self.senders.get(w)
        {
            let _ = tx.send(WorkerInput::Command(command));
        }
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

    /// Ends every room on every worker (the control link to signaling was lost).
    pub fn close_all_rooms(&self) {
        let rooms: Vec<(RoomId, usize)> = match self.placement.lock() {
            Ok(mut p) => {
                p.participants.clear();
                p.load.iter_mut().for_each(|l| *l = 0);
                p.rooms.drain().collect()
            }
            Err(_) => return,
        };
        for (room, w) in rooms {
            if let Some(tx) = self.senders.get(w) {
                let _ = tx.send(WorkerInput::Command(Command::CloseRoom { room }));
            }
        }
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
