//! Signaling's side of the control link to standalone SFU nodes: accepts their QUIC
//! connections (mutual TLS), places new rooms on the least-loaded node and routes commands;
//! relays the nodes' events to the hub.

use crate::node_load::NodeLoad;
use crate::session_takeover::{Adoption, CarriedMedia, SessionTakeover};
use crate::sfu_control::SfuControl;
use sfu_proto::{
    Command, ControlMessage, DisconnectReason, Event, HeldSession, LoadReport, PROTOCOL_VERSION,
    ParticipantId, RoomId,
};
use sfu_server::control_stream::{ControlStreamError, ControlWriter, read_message, spawn_reader};
use sfu_server::room_placement::RoomPlacement;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

struct NodeLink {
    id: String,
    tx: UnboundedSender<ControlMessage>,
    /// Its workers and last load report: where a new room goes.
    load: NodeLoad,
    /// Participants whose old session on this link this replica ended while they run
    /// elsewhere now: the node's reports of that end are expected, not a node passing for
    /// another. (Kept while the link lasts, unless the participant is placed here again:
    /// few, and a report may trail the session's own end.)
    ending: std::collections::HashSet<ParticipantId>,
}

#[derive(Default)]
struct Nodes {
    next_key: u64,
    links: HashMap<u64, NodeLink>,
    placement: RoomPlacement<u64>,
    /// Sessions carried over from the previous run, and those nodes kept for them.
    takeover: SessionTakeover,
    /// Rooms of meetings this replica took over, with the nodes asked what they run of them
    /// and not answered yet.
    surveys: std::collections::HashSet<(RoomId, u64)>,
    /// Sessions this replica had placed on a node whose link went away, by node id, and when:
    /// their clients were told their media ended. A node that only lost its link kept them
    /// (with the permissions they had); when it links again they are this replica's to end,
    /// though the replicas share the node.
    dropped: HashMap<
        String,
        (
            std::time::Instant,
            std::collections::HashSet<(ParticipantId, u32)>,
        ),
    >,
}

/// Whether `event` trails the end of an old session `link` was told to end while its
/// participant runs elsewhere (see [`NodeLink::ending`]): its last renegotiation, its
/// tracks' ends, its own end. Nothing to pass on, and expected.
fn trails_an_end(link: &NodeLink, event: &Event) -> bool {
    let participant = match event {
        Event::TrackUnpublished { track, .. } | Event::TrackPublished { track, .. } => {
            &track.publisher
        }
        Event::Answer { participant, .. }
        | Event::Offer { participant, .. }
        | Event::Connected { participant, .. }
        | Event::VideoPaused { participant, .. }
        | Event::LinkReport { participant, .. }
        | Event::LayersUnused { participant, .. }
        | Event::ActiveSpeaker { participant, .. }
        | Event::Disconnected { participant, .. }
        | Event::CommandFailed {
            participant: Some(participant),
            ..
        } => participant,
        Event::CommandFailed {
            participant: None, ..
        }
        | Event::Load(_) => return false,
    };
    link.ending.contains(participant)
}

/// How long the sessions of a node whose link went away are remembered for its return.
const DROPPED_KEPT: std::time::Duration = std::time::Duration::from_secs(600);

/// Workers a node may claim (more than any host has cores).
const MAX_NODE_WORKERS: u32 = 1024;
/// Commands that may wait to be written to a node before its link is given up as not reading.
const COMMAND_QUEUE: usize = 8192;

/// Commands go to whichever connected node owns the room.
pub struct RemoteSfu {
    nodes: Mutex<Nodes>,
    events: UnboundedSender<Event>,
    /// Set when the service stops with its sessions left running on the nodes.
    held: std::sync::atomic::AtomicBool,
    /// Replicas share the nodes (ADR 5): a node's sessions of meetings this replica does not
    /// run are another replica's, never ended at a hello.
    shared: std::sync::atomic::AtomicBool,
    /// With replicas: whether this one surely runs a meeting now (holds its lease). A session
    /// it lost with a node's link is its to end only while it does — another replica may
    /// have taken the meeting over and adopted the session meanwhile.
    runs: std::sync::OnceLock<RunsMeeting>,
}

type RunsMeeting = Box<dyn Fn(&str) -> bool + Send + Sync>;

impl RemoteSfu {
    pub fn new(events: UnboundedSender<Event>) -> Arc<Self> {
        Arc::new(Self {
            nodes: Mutex::new(Nodes::default()),
            events,
            held: std::sync::atomic::AtomicBool::new(false),
            shared: std::sync::atomic::AtomicBool::new(false),
            runs: std::sync::OnceLock::new(),
        })
    }

    /// Other signaling replicas link to the same nodes; `runs` says whether this one surely
    /// runs a meeting now.
    pub fn share(&self, runs: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let _ = self.runs.set(Box::new(runs));
        self.shared
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Ends what the take-over window has run out for: adopted sessions nobody claimed are
    /// removed from their nodes, expected ones no node reported are declared lost (their
    /// clients start new ones). Called about once a second.
    pub fn tick(&self, now: std::time::Instant) {
        let due = match self.nodes.lock() {
            Ok(mut n) if !n.takeover.is_idle() => n.takeover.due(now),
            _ => return,
        };
        for participant in due.unclaimed {
            tracing::info!(%participant, "a kept media session nobody came back for is ended");
            self.send(Command::RemoveParticipant { participant });
        }
        for (participant, session) in due.lost {
            tracing::info!(%participant, "a carried media session was reported by no node");
            let _ = self.events.send(Event::Disconnected {
                participant,
                reason: DisconnectReason::TransportClosed,
                session,
            });
        }
    }

    /// Places the sessions a node kept that this service expects; tells it to end the rest —
    /// all of them when `room` is a meeting this replica took over, only those of its own
    /// meetings (none, replicas sharing the nodes) at a hello.
    fn take_over(
        &self,
        n: &mut Nodes,
        key: u64,
        node_id: &str,
        held: &[HeldSession],
        room: Option<&RoomId>,
    ) {
        let shared = self.shared.load(std::sync::atomic::Ordering::Acquire);
        let now = std::time::Instant::now();
        let Some(tx) = n.links.get(&key).map(|l| l.tx.clone()) else {
            return;
        };
        let (mut adopted, mut ended) = (0, 0);
        for h in held {
            let end = Command::RemoveParticipant {
                participant: h.participant.clone(),
            };
            // A session this replica lost with this node's link, of a meeting it still runs:
            // its client was told its media ended (and may have started anew, on another
            // node even).
            let was_ours = n.dropped.get(node_id).is_some_and(|(at, set)| {
                now.duration_since(*at) < DROPPED_KEPT
                    && set.contains(&(h.participant.clone(), h.session))
            }) && self.runs.get().is_none_or(|runs| runs(h.room.as_str()));
            // A participant this replica placed itself (a client of a meeting taken over that
            // already started anew) is its own: its old session, if listed, ends with the
            // new one's placement, and a removal here would end the new one too — unless it
            // is a session lost with a link: this very session placed on this node's previous
            // link (it linked again before that link was found dead), or one lost before.
            // Commands sent meanwhile went nowhere, so it may run with permissions it no
            // longer has. It ends; its client starts a new one (told its media ended when the
            // old link's placements go).
            if let Some(target) = n.placement.target_of(&h.participant) {
                let on_old_link =
                    !n.links.contains_key(&target) && n.placement.holds(&h.participant, h.session);
                if on_old_link || was_ours {
                    ended += 1;
                    let _ = tx.send(ControlMessage::Command(end));
                    if target != key
                        && let Some(link) = n.links.get_mut(&key)
                    {
                        link.ending.insert(h.participant.clone());
                    }
                }
                continue;
            }
            match n.takeover.reported(h, now) {
                Adoption::Adopt(permissions) => {
                    if n.placement.adopt(key, h) {
                        adopted += 1;
                        if let Some(p) = permissions {
                            let _ = tx.send(ControlMessage::Command(p));
                        }
                    } else {
                        // Its room went to another node meanwhile: one meeting stays on one
                        // node, so this session ends and its client starts a new one there.
                        n.takeover.forget(&h.participant);
                        ended += 1;
                        let _ = tx.send(ControlMessage::Command(end));
                        let _ = self.events.send(Event::Disconnected {
                            participant: h.participant.clone(),
                            reason: DisconnectReason::TransportClosed,
                            session: h.session,
                        });
                    }
                }
                Adoption::End if shared && room.is_none() && !was_ours => {}
                Adoption::End => {
                    ended += 1;
                    let _ = tx.send(ControlMessage::Command(end));
                }
            }
        }
        if room.is_none() {
            n.dropped.remove(node_id);
        }
        // What it ran before and no longer does: lost now, not at the window's end.
        let lost = n.takeover.linked(node_id, room);
        if !held.is_empty() || !lost.is_empty() {
            tracing::info!(node = %node_id, adopted, ended, lost = lost.len(), "sessions the node kept");
        }
        for (participant, session) in lost {
            let _ = self.events.send(Event::Disconnected {
                participant,
                reason: DisconnectReason::TransportClosed,
                session,
            });
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.lock().map(|n| n.links.len()).unwrap_or(0)
    }

    /// Accepts SFU nodes on `endpoint` until it closes.
    pub async fn accept(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let this = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        let remote = conn.remote_address();
                        if let Err(e) = this.serve_node(conn.clone()).await {
                            tracing::warn!(%remote, error = %e, "SFU node link ended");
                            // The node is told why, so its own log says what to mend (a link
                            // that ended after it was up is closed already: this adds nothing).
                            let reason = e.to_string();
                            let reason = &reason.as_bytes()[..reason.len().min(512)];
                            conn.close(1u32.into(), reason);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "SFU node handshake failed"),
                }
            });
        }
    }

    async fn serve_node(self: &Arc<Self>, conn: quinn::Connection) -> anyhow::Result<()> {
        let (send, mut recv) = conn.accept_bi().await?;
        let (node_id, workers, held) = match read_message(&mut recv).await? {
            ControlMessage::Hello {
                protocol_version,
                node_id,
                workers,
                sessions,
            } => {
                if protocol_version != PROTOCOL_VERSION {
                    anyhow::bail!(
                        "node {node_id} speaks control protocol {protocol_version}, expected {PROTOCOL_VERSION}"
                    );
                }
                // (A node claiming more would look idle to room placement and draw every room.)
                if !(1..=MAX_NODE_WORKERS).contains(&workers) {
                    anyhow::bail!(
                        "node {node_id} claims {workers} workers (1 to {MAX_NODE_WORKERS} are taken)"
                    );
                }
                (node_id, workers, sessions)
            }
            other => anyhow::bail!("expected hello, got a {}", other.kind()),
        };
        // A node is known by the name its certificate carries: one node cannot pass for
        // another, and two cannot share an id unnoticed.
        let named = conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().cloned())
            .is_some_and(|cert| sfu_server::cluster_tls::certificate_names(&cert, &node_id));
        if !named {
            metrics::counter!("signaling_sfu_nodes_refused_total").increment(1);
            anyhow::bail!(
                "node {node_id:?} refused: its certificate does not carry that name (issue one with \
                 `signaling cluster-certs --node {node_id}`, or set the node's node_id to its \
                 certificate's name)"
            );
        }
        let (tx, mut rx) = unbounded_channel::<ControlMessage>();
        let key = {
            let mut n = self
                .nodes
                .lock()
                .map_err(|_| anyhow::anyhow!("node table lock poisoned"))?;
            // The same node again (restarted before its old link timed out): the old link
            // goes, and its participants are told their media ended.
            let stale: Vec<u64> = n
                .links
                .iter()
                .filter(|(_, l)| l.id == node_id)
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                tracing::warn!(node = %node_id, "the node connected again: its previous link is closed");
                n.links.remove(&k);
            }
            n.next_key += 1;
            let key = n.next_key;
            n.links.insert(
                key,
                NodeLink {
                    id: node_id.clone(),
                    tx,
                    load: NodeLoad {
                        workers,
                        report: LoadReport::default(),
                    },
                    ending: Default::default(),
                },
            );
            self.take_over(&mut n, key, &node_id, &held, None);
            key
        };
        tracing::info!(node = %node_id, workers, remote = %conn.remote_address(), "SFU node connected");
        // Whatever ends this session ends the connection too (the reader task holds a stream).
        let _close = CloseOnDrop(conn.clone());
        let mut incoming = spawn_reader(recv);
        // (Written on a task of its own: this loop never waits on the node while it should be
        // reading its events; a node that reads none of 8,192 commands is given up.)
        let mut writer = ControlWriter::spawn(send, COMMAND_QUEUE);
        let result: anyhow::Result<()> = async {
            loop {
                tokio::select! {
                    e = writer.ended() => return Err(e.into()),
                    msg = rx.recv() => match msg {
                        Some(msg) => writer.queue(msg)?,
                        None => return Ok(()),
                    },
                    msg = incoming.recv() => match msg.ok_or(ControlStreamError::Closed)?? {
                        ControlMessage::Event(Event::Load(report)) => {
                            if let Ok(mut n) = self.nodes.lock()
                                && let Some(link) = n.links.get_mut(&key)
                            {
                                link.load.report = report;
                            }
                        }
                        ControlMessage::RoomSessions { room, sessions } => {
                            if let Ok(mut n) = self.nodes.lock()
                                && n.surveys.remove(&(room.clone(), key))
                            {
                                self.take_over(&mut n, key, &node_id, &sessions, Some(&room));
                            }
                        }
                        ControlMessage::Event(event) => {
                            // Another node's participants and rooms are not this node's to
                            // report (a compromised node passing for another).
                            let from_it = match self.nodes.lock() {
                                Ok(mut n) => {
                                    if n.links.get(&key).is_some_and(|l| trails_an_end(l, &event)) {
                                        continue;
                                    }
                                    let from_it = !n.placement.is_elsewhere(key, &event);
                                    if from_it {
                                        n.placement.observe(&event);
                                    }
                                    from_it
                                }
                                Err(_) => false,
                            };
                            if from_it {
                                let _ = self.events.send(event);
                            } else {
                                metrics::counter!("signaling_sfu_events_refused_total").increment(1);
                                tracing::warn!(node = %node_id, kind = event.kind(), "an event about what the node does not run; dropped");
                            }
                        }
                        other => tracing::warn!(node = %node_id, kind = other.kind(), "unexpected control message"),
                    },
                }
            }
        }
        .await;
        // The node is gone: its participants lost their media.
        let orphans: Vec<(ParticipantId, u32)> = match self.nodes.lock() {
            Ok(mut n) => {
                n.links.remove(&key);
                n.surveys.retain(|(_, k)| *k != key);
                let gone = n.placement.drop_target(key);
                let now = std::time::Instant::now();
                n.dropped
                    .retain(|_, (at, _)| now.duration_since(*at) < DROPPED_KEPT);
                let entry = n
                    .dropped
                    .entry(node_id.clone())
                    .or_insert_with(|| (now, Default::default()));
                entry.0 = now;
                entry.1.extend(gone.iter().cloned());
                gone
            }
            Err(_) => Vec::new(),
        };
        tracing::warn!(node = %node_id, participants = orphans.len(), "SFU node disconnected");
        for (participant, session) in orphans {
            let _ = self.events.send(Event::Disconnected {
                participant,
                reason: DisconnectReason::TransportClosed,
                session,
            });
        }
        result
    }
}

/// Closes a QUIC connection when dropped.
struct CloseOnDrop(quinn::Connection);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(0u32.into(), b"control session ended");
    }
}

impl SfuControl for RemoteSfu {
    fn node_counts(&self) -> Option<(usize, usize)> {
        let n = self.nodes.lock().ok()?;
        let draining = n.links.values().filter(|l| l.load.report.draining).count();
        Some((n.links.len() - draining, draining))
    }

    fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::Release);
    }

    fn expect_sessions(&self, sessions: &[CarriedMedia]) {
        let now = std::time::Instant::now();
        if let Ok(mut n) = self.nodes.lock() {
            for carried in sessions {
                n.takeover.expect(carried.clone(), now);
            }
        }
    }

    fn take_over_meeting(&self, room: &RoomId, carried: &[CarriedMedia]) {
        let now = std::time::Instant::now();
        let Ok(mut guard) = self.nodes.lock() else {
            return;
        };
        let n = &mut *guard;
        for c in carried {
            n.takeover.expect(c.clone(), now);
        }
        let asked: Vec<u64> = n.links.keys().copied().collect();
        for key in asked {
            if let Some(link) = n.links.get(&key)
                && link
                    .tx
                    .send(ControlMessage::ReportSessions { room: room.clone() })
                    .is_ok()
            {
                n.surveys.insert((room.clone(), key));
            }
        }
    }

    fn node_of(&self, participant: &ParticipantId) -> Option<String> {
        let n = self.nodes.lock().ok()?;
        let key = n.placement.target_of(participant)?;
        n.links.get(&key).map(|l| l.id.clone())
    }

    fn claim_session(&self, participant: &ParticipantId, session: u32) -> bool {
        let Ok(mut n) = self.nodes.lock() else {
            return false;
        };
        let adopted = n.placement.holds(participant, session);
        n.takeover.claim(participant, session, adopted)
    }

    fn send(&self, command: Command) {
        if self.held.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let target = {
            let Ok(mut guard) = self.nodes.lock() else {
                return;
            };
            let n = &mut *guard;
            // Permissions for a carried session no node has reported yet: given to the node
            // when it does. A removal (or its room's closing) before that: the node's report
            // then ends the session.
            if matches!(command, Command::SetPermissions { .. })
                && n.takeover.hold_permissions(&command)
            {
                return;
            }
            if matches!(
                command,
                Command::RemoveParticipant { .. } | Command::CloseRoom { .. }
            ) {
                n.takeover.withdraw(&command);
            }
            // A newcomer to a meeting whose carried sessions a node may still report goes to
            // that node — or waits for it (refused: the client tries again) — never to
            // another, which would end them all (one meeting, one node).
            if let Command::AddParticipant { room, .. } = &command
                && let Some(node) = n.takeover.expected_node(room).map(str::to_owned)
            {
                match n.links.iter().find(|(_, l)| l.id == node).map(|(k, _)| *k) {
                    Some(key) => n.placement.reserve_room(room, key),
                    None => {
                        drop(guard);
                        let _ = self.events.send(Event::command_failed(
                            &command,
                            format!("the meeting's SFU node {node} is reconnecting"),
                        ));
                        return;
                    }
                }
            }
            // A new room goes to the node with the least CPU per worker (its report, plus what
            // was placed on it since), never to one that is draining (stopping once its rooms
            // are empty); between equals, to the one with fewer participants.
            let candidates: Vec<(u64, NodeLoad)> = n
                .links
                .iter()
                .filter(|(_, l)| !l.load.report.draining)
                .map(|(k, l)| (*k, l.load.clone()))
                .collect();
            let key = n.placement.route(&command, |p| {
                candidates
                    .iter()
                    .min_by(|(a, la), (b, lb)| {
                        let (ca, cb) = (p.count(*a), p.count(*b));
                        la.cpu_per_worker(ca)
                            .total_cmp(&lb.cpu_per_worker(cb))
                            .then(ca.cmp(&cb))
                    })
                    .map(|(k, _)| *k)
            });
            key.and_then(|k| n.links.get_mut(&k)).map(|l| {
                // (Placed here anew: what the node says of it is no longer an end's trail.)
                if let Command::AddParticipant { participant, .. } = &command {
                    l.ending.remove(participant);
                }
                (l.tx.clone(), l.id.clone())
            })
        };
        match target {
            Some((tx, node)) => {
                if tx.send(ControlMessage::Command(command)).is_err() {
                    tracing::warn!(%node, "SFU node link closed while sending");
                }
            }
            // Nothing to remove, close or change: the participant's session (or the room)
            // went with its node, which signaling has already been told about. Refusing it
            // would fail the restart that follows (a false `sfu_refused`).
            None if matches!(
                command,
                Command::RemoveParticipant { .. }
                    | Command::CloseRoom { .. }
                    | Command::SetPermissions { .. }
            ) => {}
            None => {
                let _ = self
                    .events
                    .send(Event::command_failed(&command, "no SFU node is available"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfu_proto::{Permissions, RoomId};

    /// With no node to send it to, a new media session is refused (the client retries), but
    /// removing a session that went with its node is nothing to refuse: a refusal there failed
    /// the restart that followed it.
    #[test]
    fn only_a_new_session_is_refused_when_no_node_holds_it() {
        let (tx, mut rx) = unbounded_channel();
        let sfu = RemoteSfu::new(tx);
        let p = ParticipantId::from("p-1");
        sfu.send(Command::RemoveParticipant {
            participant: p.clone(),
        });
        sfu.send(Command::SetPermissions {
            participant: p.clone(),
            permissions: Permissions::default(),
        });
        sfu.send(Command::CloseRoom {
            room: RoomId::from("visit-1"),
        });
        assert!(rx.try_recv().is_err(), "nothing refused");
        sfu.send(Command::AddParticipant {
            room: RoomId::from("visit-1"),
            participant: p.clone(),
            offer_sdp: String::new(),
            permissions: Permissions::default(),
            session: 2,
        });
        match rx.try_recv() {
            Ok(Event::CommandFailed {
                command,
                participant,
                error,
                session,
            }) => {
                assert_eq!(command, "add_participant");
                assert_eq!(participant, Some(p));
                assert_eq!(error, "no SFU node is available");
                assert_eq!(session, Some(2), "the refused session named");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
