//! Runs one [`Sfu`] and several [`SimPeer`]s on virtual time over simulated links: each
//! direction of each peer's link has its own loss rate and delay, drawn from a seeded RNG so a
//! failing scenario replays exactly.

use crate::sim_peer::SimPeer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sfu_core::{Sfu, SfuConfig, TransmitBatch, TransportConfig};
use sfu_proto::{Command, Event, ParticipantId, Permissions, RoomId};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One direction of a peer's connection to the SFU: random loss and a fixed delay, and
/// optionally a bottleneck — a token bucket of `rate_bps` draining a drop-tail queue of
/// `queue_bytes`, as `tc tbf` shapes a real link.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub loss: f64,
    pub delay: Duration,
    pub rate_bps: Option<u64>,
    pub queue_bytes: usize,
    /// The bucket's depth: after a quiet moment this much passes at once, faster than the
    /// rate (`tc tbf`'s `burst`; a cellular link's scheduling bursts). 0: a pure rate.
    pub burst_bytes: usize,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::from_millis(10),
            rate_bps: None,
            queue_bytes: 0,
            burst_bytes: 0,
        }
    }
}

impl Link {
    /// A bottleneck of `rate_bps` whose queue holds `queue` of traffic at that rate.
    pub fn shaped(rate_bps: u64, queue: Duration) -> Self {
        Self {
            rate_bps: Some(rate_bps),
            queue_bytes: (rate_bps as f64 / 8.0 * queue.as_secs_f64()) as usize,
            ..Self::default()
        }
    }

    /// The same with a bucket `burst_bytes` deep, as `tc tbf … burst` sets it.
    pub fn with_burst(self, burst_bytes: usize) -> Self {
        Self {
            burst_bytes,
            ..self
        }
    }
}

/// What a shaped link did to one datagram (downlinks only, for the scenario's eyes).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// When the SFU sent it.
    pub sent: Instant,
    /// Time spent in the bottleneck queue, or `None`: dropped there (queue full).
    pub queued: Option<Duration>,
    pub size: usize,
}

pub struct SimNetwork {
    pub now: Instant,
    pub sfu: Sfu,
    pub sfu_addr: SocketAddr,
    pub peers: Vec<SimPeer>,
    ids: Vec<ParticipantId>,
    /// Per peer: (uplink peer→SFU, downlink SFU→peer).
    links: Vec<(Link, Link)>,
    /// Per peer and direction: when its bottleneck has sent all it holds.
    busy_until: Vec<(Instant, Instant)>,
    /// Per peer: every datagram its shaped downlink carried or dropped.
    pub deliveries: Vec<Vec<Delivery>>,
    /// Destinations whose media the SFU asked the I/O layer to take back (an ICE-TCP
    /// connection's queue), in order.
    pub withdrawn: Vec<SocketAddr>,
    /// Datagrams dropped by a full bottleneck queue (also counted in `link_drops`).
    pub queue_drops: u64,
    queue: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    rng: StdRng,
    batch: TransmitBatch,
    pub events: Vec<Event>,
    /// Datagrams dropped by the simulated links.
    pub link_drops: u64,
}

impl std::fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNetwork")
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl SimNetwork {
    /// `configure` may adjust the SFU's tunables before it starts.
    pub fn new(seed: u64, configure: impl FnOnce(&mut SfuConfig)) -> Self {
        // The one real instant: the origin of virtual time.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let sfu_addr: SocketAddr = "10.0.0.1:3478".parse().expect("addr");
        let transport =
            TransportConfig::generate(sfu_addr, Duration::from_secs(3), Duration::from_secs(10))
                .expect("transport");
        let mut config = SfuConfig::new(transport);
        configure(&mut config);
        Self {
            now,
            sfu: Sfu::new(config),
            sfu_addr,
            peers: Vec::new(),
            ids: Vec::new(),
            links: Vec::new(),
            busy_until: Vec::new(),
            deliveries: Vec::new(),
            withdrawn: Vec::new(),
            queue_drops: 0,
            queue: BTreeMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            batch: TransmitBatch::new(),
            events: Vec::new(),
            link_drops: 0,
        }
    }

    /// Adds a peer publishing the given tracks; returns its index.
    pub fn add_peer(&mut self, name: &str, tracks: &[sfu_proto::MediaKind]) -> usize {
        let i = self.peers.len();
        // 250 peers to a /24: 10.0.1.1, …, 10.0.1.250, 10.0.2.1, … (tests that add
        // addresses of their own use 10.0.7.x and up: below 1,500 peers they never meet).
        let addr: SocketAddr = format!("10.0.{}.{}:5000", 1 + i / 250, 1 + i % 250)
            .parse()
            .expect("addr");
        let mut peer = SimPeer::new(name, addr, self.now);
        for &k in tracks {
            peer.add_track(k);
        }
        self.peers.push(peer);
        self.ids.push(ParticipantId::from(name));
        self.links.push((Link::default(), Link::default()));
        self.busy_until.push((self.now, self.now));
        self.deliveries.push(Vec::new());
        i
    }

    pub fn set_uplink(&mut self, peer: usize, link: Link) {
        self.links[peer].0 = link;
    }

    pub fn set_downlink(&mut self, peer: usize, link: Link) {
        self.links[peer].1 = link;
    }

    pub fn id(&self, peer: usize) -> &ParticipantId {
        &self.ids[peer]
    }

    pub fn command(&mut self, command: Command) {
        self.sfu.handle_command(self.now, command, &mut self.batch);
        self.flush_sfu();
    }

    /// The media session number [`Self::join`] gives `peer` (signaling's `session`).
    pub fn session(peer: usize) -> u32 {
        100 + peer as u32
    }

    /// Joins a peer to `room` the way signaling would: offer, answer, renegotiations.
    pub fn join(&mut self, peer: usize, room: &str, permissions: Permissions) {
        let offer = self.peers[peer].offer();
        self.command(Command::AddParticipant {
            room: RoomId::from(room),
            participant: self.ids[peer].clone(),
            offer_sdp: offer,
            session: Self::session(peer),
            permissions,
        });
    }

    fn peer_index(&self, id: &ParticipantId) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    fn flush_sfu(&mut self) {
        for i in 0..self.batch.len() {
            let (dest, data) = self.batch.get(i);
            let data = data.to_vec();
            self.enqueue(self.sfu_addr, dest, data);
        }
        self.withdrawn.extend_from_slice(self.batch.withdrawn());
        self.batch.clear();
        while let Some(event) = self.sfu.poll_event() {
            match &event {
                Event::Answer {
                    participant,
                    answer_sdp,
                } => {
                    if let Some(p) = self.peer_index(participant) {
                        self.peers[p].apply_answer(self.now, answer_sdp);
                    }
                }
                Event::Offer {
                    participant,
                    offer_sdp,
                } => {
                    if let Some(p) = self.peer_index(participant)
                        && !self.peers[p].ignore_offers
                    {
                        let answer = self.peers[p].answer_offer(self.now, offer_sdp);
                        let participant = participant.clone();
                        self.sfu.handle_command(
                            self.now,
                            Command::Answer {
                                participant,
                                answer_sdp: answer,
                            },
                            &mut self.batch,
                        );
                    }
                }
                _ => {}
            }
            self.events.push(event);
        }
        if !self.batch.is_empty() {
            self.flush_sfu();
        }
    }

    fn enqueue(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let down = from == self.sfu_addr;
        let peer = if down {
            self.peers.iter().position(|p| p.addr == to)
        } else {
            self.peers.iter().position(|p| p.addr == from)
        };
        let link = peer
            .map(|i| {
                if down {
                    self.links[i].1
                } else {
                    self.links[i].0
                }
            })
            .unwrap_or_default();
        if link.loss > 0.0 && self.rng.random::<f64>() < link.loss {
            self.link_drops += 1;
            return;
        }
        let mut at = self.now;
        if let (Some(rate), Some(i)) = (link.rate_bps, peer) {
            let busy = if down {
                &mut self.busy_until[i].1
            } else {
                &mut self.busy_until[i].0
            };
            // `busy`: when the link will have sent all it was given at its rate. A full
            // bucket lets that run `burst` ahead of the clock (the virtual scheduling of a
            // token bucket): a datagram leaves once it is no more than `burst` behind.
            let burst = Duration::from_secs_f64(link.burst_bytes as f64 * 8.0 / rate as f64);
            let backlog = busy.saturating_duration_since(self.now + burst);
            let backlog_bytes = (backlog.as_secs_f64() * rate as f64 / 8.0) as usize;
            let queued = if backlog_bytes + data.len() > link.queue_bytes {
                self.link_drops += 1;
                self.queue_drops += 1;
                None
            } else {
                let transmit = Duration::from_secs_f64(data.len() as f64 * 8.0 / rate as f64);
                *busy = (*busy).max(self.now) + transmit;
                at = busy
                    .checked_sub(burst)
                    .map_or(self.now, |t| t.max(self.now));
                Some(backlog)
            };
            if down {
                self.deliveries[i].push(Delivery {
                    sent: self.now,
                    queued,
                    size: data.len(),
                });
            }
            if queued.is_none() {
                return;
            }
        }
        self.seq += 1;
        self.queue
            .insert((at + link.delay, self.seq), (from, to, data));
    }

    /// The peer's network changes to `new_addr` and it restarts ICE in place: a new offer with
    /// new credentials on the same session, as a browser's `restartIce()` sends it.
    pub fn restart_ice(&mut self, peer: usize, new_addr: SocketAddr) {
        let now = self.now;
        self.peers[peer].restart_ice(now, new_addr);
        let offer = self.peers[peer].offer();
        self.command(Command::Offer {
            participant: self.ids[peer].clone(),
            offer_sdp: offer,
        });
    }

    /// Injects a datagram toward the SFU as if sent from `from` (for bad-input tests).
    pub fn inject_to_sfu(&mut self, from: SocketAddr, data: Vec<u8>) {
        self.seq += 1;
        self.queue
            .insert((self.now, self.seq), (from, self.sfu_addr, data));
    }

    fn flush_peers(&mut self) {
        for i in 0..self.peers.len() {
            while let Some((dest, data)) = self.peers[i].poll_transmit() {
                let from = self.peers[i].addr;
                self.enqueue(from, dest, data);
            }
        }
    }

    /// Advances virtual time by `d` in 1 ms steps, calling `each_ms` (with the network) first
    /// in every step so a scenario can send media.
    pub fn run(&mut self, d: Duration, mut each_ms: impl FnMut(&mut SimNetwork)) {
        let end = self.now + d;
        while self.now < end {
            each_ms(self);
            self.flush_peers();
            self.step(Duration::from_millis(1));
        }
    }

    fn step(&mut self, dt: Duration) {
        let until = self.now + dt;
        while let Some((&(at, key), _)) = self.queue.iter().next() {
            if at > until {
                break;
            }
            let (from, to, mut data) = self.queue.remove(&(at, key)).expect("queued");
            if at > self.now {
                self.now = at;
            }
            if to == self.sfu_addr {
                self.sfu
                    .handle_datagram(self.now, from, &mut data, &mut self.batch);
                self.flush_sfu();
            } else if let Some(p) = self.peers.iter().position(|p| p.addr == to) {
                self.peers[p].handle_datagram(self.now, from, &data);
                self.flush_peers();
            }
        }
        self.now = until;
        if self.sfu.poll_timeout().is_some_and(|t| t <= self.now) {
            self.sfu.handle_timeout(self.now, &mut self.batch);
            self.flush_sfu();
        }
        for i in 0..self.peers.len() {
            if self.peers[i].poll_timeout().is_some_and(|t| t <= self.now) {
                self.peers[i].handle_timeout(self.now);
            }
        }
        self.flush_peers();
    }

    /// Runs until every peer has its SRTP keys (or panics after `limit`).
    pub fn connect_all(&mut self, limit: Duration) {
        let end = self.now + limit;
        while self.peers.iter().any(|p| !p.is_secured()) {
            assert!(
                self.now < end,
                "peers did not connect: {:?}",
                self.peers
                    .iter()
                    .map(|p| (&p.name, p.is_secured()))
                    .collect::<Vec<_>>()
            );
            self.run(Duration::from_millis(10), |_| {});
        }
    }

    pub fn disconnected(&self) -> HashMap<ParticipantId, sfu_proto::DisconnectReason> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Disconnected {
                    participant,
                    reason,
                    ..
                } => Some((participant.clone(), *reason)),
                _ => None,
            })
            .collect()
    }
}
