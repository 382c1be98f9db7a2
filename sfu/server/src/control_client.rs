//! The SFU node's side of the control link: dials signaling over QUIC, says hello, executes
//! commands, sends events and a periodic load report; redials when the link drops.

use crate::cluster_tls::ClusterTls;
use crate::control_stream::{read_message, write_message};
use crate::node::SfuNode;
use sfu_proto::{Command, ControlMessage, Event, LoadReport, PROTOCOL_VERSION, RoomId};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, Clone)]
pub struct ControlClientConfig {
    pub signaling: SocketAddr,
    /// Name in signaling's certificate.
    pub server_name: String,
    pub node_id: String,
    pub load_interval: Duration,
}

/// Runs until the process ends. `events` carries the node's SFU events.
pub async fn run(
    config: ControlClientConfig,
    tls: ClusterTls,
    node: Arc<SfuNode>,
    mut events: UnboundedReceiver<Event>,
) -> anyhow::Result<()> {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    endpoint.set_default_client_config(tls.quic_client()?);
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&config, &endpoint, &node, &mut events).await {
            Ok(()) => tracing::info!("control link closed by signaling"),
            Err(e) => {
                tracing::warn!(error = %e, signaling = %config.signaling, "control link failed")
            }
        }
        // Signaling has forgotten this node's participants: end their sessions here too.
        node.close_all_rooms();
        while events.try_recv().is_ok() {}
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    config: &ControlClientConfig,
    endpoint: &quinn::Endpoint,
    node: &SfuNode,
    events: &mut UnboundedReceiver<Event>,
) -> anyhow::Result<()> {
    let conn = endpoint
        .connect(config.signaling, &config.server_name)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_message(
        &mut send,
        &ControlMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: config.node_id.clone(),
            workers: node.workers().len() as u32,
        },
    )
    .await?;
    tracing::info!(signaling = %config.signaling, node = %config.node_id, "control link up");
    let mut tick = tokio::time::interval(config.load_interval);
    let mut rooms: HashSet<RoomId> = HashSet::new();
    loop {
        tokio::select! {
            msg = read_message(&mut recv) => {
                match msg? {
                    ControlMessage::Command(cmd) => {
                        if let Command::AddParticipant { room, .. } = &cmd {
                            rooms.insert(room.clone());
                        }
                        node.send(cmd);
                    }
                    other => tracing::warn!(?other, "unexpected control message from signaling"),
                }
            }
            Some(event) = events.recv() => {
                write_message(&mut send, &ControlMessage::Event(event)).await?;
            }
            _ = tick.tick() => {
                let (c, rooms_now, participants) = node.counters();
                let report = LoadReport {
                    node_id: config.node_id.clone(),
                    rooms: rooms_now as u32,
                    participants: participants as u32,
                    packets_in_per_s: c.packets_in,
                    packets_out_per_s: c.packets_out,
                    dropped_per_s: c.dropped(),
                };
                write_message(&mut send, &ControlMessage::Event(Event::Load(report))).await?;
            }
        }
    }
}
