//! Signaling's side of the control link to standalone SFU nodes: accepts their QUIC
//! connections (mutual TLS), places new rooms on the least-loaded node and routes commands;
//! relays the nodes' events to the hub.

use crate::server::SfuControl;
use sfu_proto::{
    Command, ControlMessage, DisconnectReason, Event, LoadReport, PROTOCOL_VERSION, ParticipantId,
    RoomId,
};
use sfu_server::control_stream::{ControlStreamError, read_message, spawn_reader, write_message};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

struct NodeLink {
    id: String,
    tx: UnboundedSender<Command>,
    load: LoadReport,
    /// Rooms placed here since the last load report (reports lag behind placements).
    placed: u32,
}

#[derive(Default)]
struct Placement {
    next_key: u64,
    nodes: HashMap<u64, NodeLink>,
    rooms: HashMap<RoomId, u64>,
    /// Node and room of every participant placed.
    participants: HashMap<ParticipantId, (u64, RoomId)>,
}

impl Placement {
    /// Forgets a participant; an emptied room is forgotten too, to be placed afresh.
    fn release(&mut self, participant: &ParticipantId) {
        if let Some((_, room)) = self.participants.remove(participant)
            && !self.participants.values().any(|(_, r)| *r == room)
        {
            self.rooms.remove(&room);
        }
    }
}

/// Commands go to whichever connected node owns the room.
pub struct RemoteSfu {
    placement: Mutex<Placement>,
    events: UnboundedSender<Event>,
}

impl RemoteSfu {
    pub fn new(events: UnboundedSender<Event>) -> Arc<Self> {
        Arc::new(Self {
            placement: Mutex::new(Placement::default()),
            events,
        })
    }

    pub fn node_count(&self) -> usize {
        self.placement.lock().map(|p| p.nodes.len()).unwrap_or(0)
    }

    /// Accepts SFU nodes on `endpoint` until it closes.
    pub async fn accept(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let this = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        let remote = conn.remote_address();
                        if let Err(e) = this.serve_node(conn).await {
                            tracing::warn!(%remote, error = %e, "SFU node link ended");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "SFU node handshake failed"),
                }
            });
        }
    }

    async fn serve_node(self: &Arc<Self>, conn: quinn::Connection) -> anyhow::Result<()> {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let (node_id, workers) = match read_message(&mut recv).await? {
            ControlMessage::Hello {
                protocol_version,
                node_id,
                workers,
            } => {
                if protocol_version != PROTOCOL_VERSION {
                    anyhow::bail!(
                        "node {node_id} speaks control protocol {protocol_version}, expected {PROTOCOL_VERSION}"
                    );
                }
                (node_id, workers)
            }
            other => anyhow::bail!("expected hello, got a {}", other.kind()),
        };
        let (tx, mut rx) = unbounded_channel::<Command>();
        let key = {
            let mut p = self
                .placement
                .lock()
                .map_err(|_| anyhow::anyhow!("placement lock poisoned"))?;
            p.next_key += 1;
            let key = p.next_key;
            p.nodes.insert(
                key,
                NodeLink {
                    id: node_id.clone(),
                    tx,
                    load: LoadReport::default(),
                    placed: 0,
                },
            );
            key
        };
        tracing::info!(node = %node_id, workers, remote = %conn.remote_address(), "SFU node connected");
        let mut incoming = spawn_reader(recv);
        let result: anyhow::Result<()> = async {
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => write_message(&mut send, &ControlMessage::Command(cmd)).await?,
                        None => return Ok(()),
                    },
                    msg = incoming.recv() => match msg.ok_or(ControlStreamError::Closed)?? {
                        ControlMessage::Event(Event::Load(report)) => {
                            if let Ok(mut p) = self.placement.lock()
                                && let Some(n) = p.nodes.get_mut(&key)
                            {
                                n.load = report;
                                n.placed = 0;
                            }
                        }
                        ControlMessage::Event(event) => {
                            // As in `SfuNode`: placement follows commands; only a refused add
                            // is undone from an event.
                            let gone = match &event {
                                Event::CommandFailed {
                                    command,
                                    participant: Some(participant),
                                    ..
                                } if command == "add_participant" => Some(participant),
                                _ => None,
                            };
                            if let Some(participant) = gone
                                && let Ok(mut p) = self.placement.lock()
                            {
                                p.release(participant);
                            }
                            let _ = self.events.send(event);
                        }
                        other => tracing::warn!(node = %node_id, kind = other.kind(), "unexpected control message"),
                    },
                }
            }
        }
        .await;
        // The node is gone: its participants lost their media.
        let orphans: Vec<ParticipantId> = match self.placement.lock() {
            Ok(mut p) => {
                p.nodes.remove(&key);
                p.rooms.retain(|_, n| *n != key);
                let orphans = p
                    .participants
                    .iter()
                    .filter(|(_, (n, _))| *n == key)
                    .map(|(id, _)| id.clone())
                    .collect();
                p.participants.retain(|_, (n, _)| *n != key);
                orphans
            }
            Err(_) => Vec::new(),
        };
        tracing::warn!(node = %node_id, participants = orphans.len(), "SFU node disconnected");
        for participant in orphans {
            let _ = self.events.send(Event::Disconnected {
                participant,
                reason: DisconnectReason::TransportClosed,
            });
        }
        result
    }
}

impl SfuControl for RemoteSfu {
    fn send(&self, command: Command) {
        let target = {
            let Ok(mut p) = self.placement.lock() else {
                return;
            };
            let key = match &command {
                Command::AddParticipant {
                    room, participant, ..
                } => {
                    let key = match p.rooms.get(room) {
                        Some(&k) => Some(k),
                        None => {
                            let k = p
                                .nodes
                                .iter()
                                .min_by_key(|(_, n)| n.load.participants + n.placed)
                                .map(|(k, _)| *k);
                            if let Some(k) = k {
                                p.rooms.insert(room.clone(), k);
                            }
                            k
                        }
                    };
                    if let Some(k) = key {
                        p.participants
                            .insert(participant.clone(), (k, room.clone()));
                        if let Some(n) = p.nodes.get_mut(&k) {
                            n.placed += 1;
                        }
                    }
                    key
                }
                Command::CloseRoom { room } => {
                    let members: Vec<ParticipantId> = p
                        .participants
                        .iter()
                        .filter(|(_, (_, r))| r == room)
                        .map(|(id, _)| id.clone())
                        .collect();
                    let node = p.rooms.get(room).copied();
                    for m in members {
                        p.release(&m);
                    }
                    p.rooms.remove(room);
                    node
                }
                Command::RemoveParticipant { participant } => {
                    let node = p.participants.get(participant).map(|(n, _)| *n);
                    p.release(participant);
                    node
                }
                other => other
                    .participant()
                    .and_then(|id| p.participants.get(id).map(|(n, _)| *n)),
            };
            key.and_then(|k| p.nodes.get(&k))
                .map(|n| (n.tx.clone(), n.id.clone()))
        };
        match target {
            Some((tx, node)) => {
                if tx.send(command).is_err() {
                    tracing::warn!(%node, "SFU node link closed while sending");
                }
            }
            None => {
                let participant = command.participant().cloned();
                let _ = self.events.send(Event::CommandFailed {
                    command: command.name().to_owned(),
                    participant,
                    error: "no SFU node is available".into(),
                });
            }
        }
    }
}
