//! The load generator's media thread: many simulated participants, each with an address of its
//! own (the SFU tells participants apart by address) — on loopback all of them on one UDP
//! socket ([`SharedUdp`]), elsewhere a socket each — or its own ICE-TCP connection, driven by
//! one loop over `epoll`.
//! WebRTC participants run real ICE, DTLS and SRTP (`SimPeer`, the webrtc-rs sans-IO crates in
//! client mode); plain participants send the same packet pattern as clear RTP to the raw relay.
//!
//! Receivers count every packet from its clear RTP header; a sample of WebRTC receivers also
//! decrypts and authenticates each packet and reads its stamp for one-way latency.

use crate::receive_stats::{ReceiveStats, RxTotals};
use crate::shaped_downlink::{LinkSchedule, PhaseReport, ShapedDownlink, summarise};
use crate::shared_udp::{self, SharedUdp};
use crate::synthetic_media::{
    Emit, MediaProfile, StreamKind, SyntheticMedia, frame_header, read_stamp, stamp,
};
use crate::tcp_link::TcpLink;
use crate::timestamped_recv::{Arrival, TimestampedRecv, realtime_ns};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use sfu_core::rtp_header::{HeaderWriter, PacketClass, RtpHeader, classify};
use sfu_core::{DYNACAST_HOLD, TransmitBatch};
use sfu_proto::MediaKind;
use sfu_server::udp_batch::UdpBatch;
use sfu_testkit::SimPeer;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Nanoseconds on the generator's clock: the kernel's receive timestamps are on the same
/// (real-time) clock, so a packet's latency ends when it arrived, not when it was read.
pub fn now_ns() -> u64 {
    realtime_ns()
}

/// Registration a plain participant sends to the raw relay: `JOIN <group> <pub|sub>`.
pub const RELAY_JOIN: &[u8] = b"JOIN ";

const AUDIO_PT: u8 = 111;
const VIDEO_PT: u8 = 96;
/// Payload types of the lower simulcast layers toward the raw relay (layer 0, layer 1): it
/// holds them back as an SFU forwards one layer per subscriber.
pub const RELAY_LOWER_LAYER_PTS: [u8; 2] = [100, 101];
/// Simulcast RIDs, lowest first (the generator publishes as mediasoup-client and Chrome
/// applications commonly name them).
pub const RIDS: [&str; 3] = ["l", "m", "h"];

#[derive(Debug)]
struct PlainStream {
    ssrc: u32,
    seq: u16,
}

enum Transport {
    WebRtc(Box<SimPeer>),
    Plain {
        relay: SocketAddr,
        group: u32,
        audio: PlainStream,
        /// One per video layer, lowest first.
        video: Vec<PlainStream>,
        joins_sent: u32,
        next_join: Instant,
    },
}

/// The address ICE-TCP participant `idx` connects from: its own loopback address when the
/// generator runs on loopback (127.0.{1..}.{1..250}), else the generator's.
fn tcp_source_ip(bind_ip: std::net::IpAddr, idx: usize) -> std::net::IpAddr {
    if bind_ip.is_loopback() && bind_ip.is_ipv4() {
        std::net::IpAddr::from([127, 0, 1 + (idx / 250) as u8, 1 + (idx % 250) as u8])
    } else {
        bind_ip
    }
}

/// How the generator's UDP participants meet the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GeneratorSockets {
    /// On loopback, one socket for all participants, each at an address of its own
    /// (127.1.x.y): one `sendmmsg` and one `recvmmsg` serve them all. Elsewhere (Janus's
    /// network namespace) a socket each.
    #[default]
    Shared,
    /// A socket per participant, each on its own port (the generator before the shared
    /// socket; for comparing the two).
    PerParticipant,
}

/// Datagrams queued on the shared socket that are sent without waiting for the pass's end:
/// few, as participants' packets reach a server spread out, not in bursts. (Its cost hardly
/// depends on this: 1, 4 and 16 measured within noise of each other.)
const SHARED_SEND_AT: usize = 4;

/// The epoll token of the shared socket (participants' own sockets and connections use their
/// index).
const SHARED_TOKEN: Token = Token(usize::MAX - 1);

/// How a participant's packets travel.
enum Link {
    Udp(Box<UdpBatch>),
    /// Through the generator's shared socket, from and to this address.
    Shared(Ipv4Addr),
    /// ICE-TCP: RFC 4571 frames on one TCP connection to the SFU.
    Tcp(TcpLink),
    /// A participant that left: its socket or connection is closed.
    Closed,
}

struct Client {
    link: Link,
    transport: Transport,
    publish: bool,
    media: Option<SyntheticMedia>,
    sampled: bool,
    join_started: Instant,
    first_media: Option<Instant>,
    rx: ReceiveStats,
    sent_packets: u64,
    /// Packets of the streams subscribers receive by default (audio, top video layer).
    sent_forwarded: u64,
    sent_bytes: u64,
    counter: u64,
    /// Its downlink, when shaped: what the server sends passes through it first; and when
    /// it next reports reception (as browsers do, about once a second).
    shaper: Option<ShapedDownlink>,
    next_receiver_report: Option<Instant>,
    /// Counted in the reports (a churn visit's participants are not: they come and go).
    measured: bool,
    /// Left: sends, receives and ticks no more.
    retired: bool,
    /// Received datagrams in the current drain of the shared socket (its PLIs and answers
    /// are handled once the drain ends).
    touched: bool,
    /// Its WebRTC stack's next timer, as last asked; asked again after anything but media
    /// went through the stack (`timers_stale`), and at least every [`TIMERS_REFRESH`].
    timers_due: Option<Instant>,
    timers_stale: bool,
    timers_asked: Instant,
    /// When it first sent media: toward a target that never says `pause_encodings` (the raw
    /// relay, Janus) its lower layers stop [`DYNACAST_HOLD`] later, as our SFU's dynacast
    /// stops the layers nobody receives, so every target takes in the same packets.
    media_since: Option<Instant>,
    lower_layers_stop_after_hold: bool,
}

/// The longest a participant's cached next timer is trusted without asking its stack again.
const TIMERS_REFRESH: Duration = Duration::from_millis(20);

/// How a WebRTC participant meets its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// Offers to our ICE-lite SFU (ICE controlling, DTLS client).
    Offerer,
    /// Publishes to Janus: offers with `a=setup:active` to stay the DTLS client.
    JanusPublisher,
    /// Receives from Janus: answers its offer (ICE controlled, DTLS client).
    JanusSubscriber,
}

impl Client {
    fn new(
        link: Link,
        transport: Transport,
        publish: bool,
        media: Option<SyntheticMedia>,
        sampled: bool,
        join_started: Instant,
    ) -> Self {
        Self {
            link,
            transport,
            publish,
            media,
            sampled,
            join_started,
            first_media: None,
            rx: ReceiveStats::default(),
            sent_packets: 0,
            sent_forwarded: 0,
            sent_bytes: 0,
            counter: 0,
            shaper: None,
            next_receiver_report: None,
            measured: true,
            retired: false,
            touched: false,
            timers_due: None,
            timers_stale: true,
            timers_asked: join_started,
            media_since: None,
            lower_layers_stop_after_hold: false,
        }
    }
}

/// Requests to the media thread (from the signaling tasks and the harness).
pub enum ToMedia {
    /// A WebRTC participant; replies with its index and its offer.
    AddWebRtc {
        name: String,
        publish: bool,
        sampled: bool,
        role: PeerRole,
        /// Over ICE-TCP instead of UDP.
        tcp: bool,
        join_started: Instant,
        /// Counted in the reports (false: a churn visit's participant).
        measured: bool,
        reply: oneshot::Sender<(usize, String)>,
    },
    /// Participant `client` left: its socket closes, it sends and counts nothing more.
    Retire {
        client: usize,
    },
    /// The SFU's answer to a participant's offer.
    Answer {
        client: usize,
        sdp: String,
    },
    /// An SFU offer; replies with the participant's answer.
    Offer {
        client: usize,
        sdp: String,
        reply: oneshot::Sender<String>,
    },
    /// A plain participant of relay group `group`; replies with its index.
    AddPlain {
        relay: SocketAddr,
        group: u32,
        publish: bool,
        join_started: Instant,
        reply: oneshot::Sender<usize>,
    },
    /// The SFU's `pause_encodings` for participant `client`: the simulcast layers (RIDs)
    /// nobody receives now; the others are to be sent.
    PauseEncodings {
        client: usize,
        rids: Vec<String>,
    },
    /// Starts the measurement window: receive counters start from zero.
    ResetStats,
    /// From now on every WebRTC participant's downlink steps through `schedule`, each a
    /// token bucket draining a drop-tail queue of `queue` (as `tc tbf` shapes a link), and
    /// each decrypts everything it receives to send transport-wide feedback, as a browser does.
    ShapeDownlinks {
        schedule: LinkSchedule,
        queue: Duration,
    },
    Report {
        reply: oneshot::Sender<GeneratorReport>,
    },
    Stop,
}

/// What the generator measured since the last reset.
#[derive(Debug, Clone, Default)]
pub struct GeneratorReport {
    pub rx: RxTotals,
    pub sent_packets: u64,
    /// Of those, packets of streams subscribers receive by default (audio, the top video
    /// layer): what they should get copies of.
    pub sent_forwarded: u64,
    pub sent_bytes: u64,
    /// Join → first media packet received, per participant that received any (ms).
    pub join_ms: Vec<f64>,
    pub clients: usize,
    /// Datagrams the generator's sockets refused to send (its own overload).
    pub send_dropped: u64,
    /// Datagrams for its participants that its shared socket's full queue dropped (its own
    /// overload, not the server's loss).
    pub receive_dropped: u64,
    /// Participants that could not be created (sockets exhausted).
    pub failed: usize,
    /// Participants whose media path is up (DTLS done, or plain).
    pub connected: usize,
    /// Participants that received at least one media packet.
    pub receiving: usize,
    /// Per phase of the shaped downlinks' schedule (empty when not shaped).
    pub downlinks: Vec<PhaseReport>,
    /// Publishers' video layers being encoded and sent now, and paused (dynacast).
    pub layers_sent: usize,
    pub layers_paused: usize,
}

pub struct Generator {
    poll: Poll,
    recv: TimestampedRecv,
    /// Address the participants' sockets bind to.
    bind_ip: std::net::IpAddr,
    sockets: GeneratorSockets,
    /// The participants' one socket ([`GeneratorSockets::Shared`] on loopback), once the
    /// first needs it.
    shared: Option<SharedUdp>,
    /// Participants that received in the current drain of the shared socket.
    touched: Vec<usize>,
    /// Datagrams the shared socket's full queue dropped since it opened (as last reported),
    /// and that count when the measurement started.
    shared_overflows: u32,
    shared_overflows_at_reset: u32,
    clients: Vec<Client>,
    profile: MediaProfile,
    batch: TransmitBatch,
    send_dropped: u64,
    failed: usize,
    emits: Vec<Emit>,
    payload: Vec<u8>,
}

impl Generator {
    /// Runs the media thread until [`ToMedia::Stop`]; pinned to `core` when given.
    pub fn spawn(
        profile: MediaProfile,
        core: Option<usize>,
        bind_ip: std::net::IpAddr,
        sockets: GeneratorSockets,
    ) -> (Sender<ToMedia>, std::thread::JoinHandle<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("generator".into())
            .spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                let mut g = Generator {
                    poll: Poll::new().expect("epoll"),
                    recv: TimestampedRecv::default(),
                    bind_ip,
                    sockets,
                    shared: None,
                    touched: Vec::new(),
                    shared_overflows: 0,
                    shared_overflows_at_reset: 0,
                    clients: Vec::new(),
                    profile,
                    batch: TransmitBatch::with_capacity(256),
                    send_dropped: 0,
                    failed: 0,
                    emits: Vec::new(),
                    payload: vec![0u8; 2048],
                };
                g.run(rx);
            })
            .expect("generator thread");
        (tx, handle)
    }

    fn run(&mut self, rx: Receiver<ToMedia>) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let _ = self.poll.poll(&mut events, Some(wait));
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token() == SHARED_TOKEN {
                    self.receive_shared(now);
                } else {
                    self.receive(ev.token().0, now);
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(ToMedia::Stop) | Err(TryRecvError::Disconnected) => return,
                    Ok(msg) => self.control(msg, now),
                    Err(TryRecvError::Empty) => break,
                }
            }
            // Timers and media of every participant once a millisecond, not on every wake-up:
            // the work per wake-up stays independent of the number of participants.
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + Duration::from_millis(1);
                for i in 0..self.clients.len() {
                    self.tick(i, now);
                }
            }
            self.send_shared();
        }
    }

    /// The next participant's UDP link, and the address the server will see it at.
    fn add_udp_link(&mut self) -> std::io::Result<(usize, Link, SocketAddr)> {
        let idx = self.clients.len();
        let shared_here = self.sockets == GeneratorSockets::Shared
            && self.bind_ip == std::net::IpAddr::from([127, 0, 0, 1]);
        if shared_here && let Some(ip) = shared_udp::source_ip(idx) {
            if self.shared.is_none() {
                let socket = SharedUdp::bind()?;
                self.poll.registry().register(
                    &mut SourceFd(&socket.as_raw_fd()),
                    SHARED_TOKEN,
                    Interest::READABLE,
                )?;
                self.shared = Some(socket);
            }
            let port = self.shared.as_ref().map_or(Ok(0), SharedUdp::port)?;
            return Ok((idx, Link::Shared(ip), SocketAddr::new(ip.into(), port)));
        }
        let socket = UdpBatch::bind(SocketAddr::new(self.bind_ip, 0))?;
        crate::timestamped_recv::enable(socket.as_raw_fd())?;
        self.poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(idx),
            Interest::READABLE,
        )?;
        let addr = socket.local_addr()?;
        Ok((idx, Link::Udp(Box::new(socket)), addr))
    }

    /// Sends what the participants queued on the shared socket.
    fn send_shared(&mut self) {
        if let Some(shared) = self.shared.as_mut()
            && shared.pending() > 0
        {
            self.send_dropped += shared.send() as u64;
        }
    }

    fn media(&self, publish: bool, idx: usize) -> Option<SyntheticMedia> {
        // Spread publishers over a frame interval so they do not all send at once.
        let phase = Duration::from_micros((idx as u64 * 7919) % 33_000);
        publish.then(|| SyntheticMedia::new(self.profile, Instant::now(), phase))
    }

    fn control(&mut self, msg: ToMedia, now: Instant) {
        match msg {
            ToMedia::AddWebRtc {
                name,
                publish,
                sampled,
                role,
                tcp,
                join_started,
                measured,
                reply,
            } => {
                let (idx, link, addr) = if tcp {
                    // The connection opens with the first check; the SFU learns the address
                    // from it, so the offer's candidate only names the participant's host.
                    let idx = self.clients.len();
                    let ip = tcp_source_ip(self.bind_ip, idx);
                    (idx, Link::Tcp(TcpLink::new(ip)), SocketAddr::new(ip, 9))
                } else {
                    match self.add_udp_link() {
                        Ok(link) => link,
                        Err(e) => {
                            self.failed += 1;
                            eprintln!("generator: no socket for {name}: {e}");
                            return;
                        }
                    }
                };
                let mut peer =
                    SimPeer::with_role(&name, addr, now, role != PeerRole::JanusSubscriber);
                peer.keep_history = false;
                // Only sampled packets are opened here: feedback from them would read as loss.
                peer.transport_feedback = false;
                if role == PeerRole::JanusPublisher {
                    peer.offer_setup = "active";
                }
                if publish {
                    if self.profile.audio {
                        peer.add_track(MediaKind::Audio);
                    }
                    if self.profile.video_kbps > 0 && self.profile.simulcast {
                        peer.add_simulcast_video(&RIDS);
                    } else if self.profile.video_kbps > 0 {
                        peer.add_track(MediaKind::Video);
                    }
                }
                let offer = peer.offer();
                let media = self.media(publish, idx);
                let mut client = Client::new(
                    link,
                    Transport::WebRtc(Box::new(peer)),
                    publish,
                    media,
                    sampled,
                    join_started,
                );
                client.measured = measured;
                client.lower_layers_stop_after_hold = role == PeerRole::JanusPublisher;
                self.clients.push(client);
                let _ = reply.send((idx, offer));
            }
            ToMedia::Retire { client } => {
                if let Some(c) = self.clients.get_mut(client) {
                    if let Link::Udp(socket) = &c.link {
                        let _ = self
                            .poll
                            .registry()
                            .deregister(&mut SourceFd(&socket.as_raw_fd()));
                    }
                    c.link = Link::Closed;
                    c.media = None;
                    c.shaper = None;
                    c.retired = true;
                }
            }
            ToMedia::Answer { client, sdp } => {
                if let Some(Client {
                    transport: Transport::WebRtc(peer),
                    ..
                }) = self.clients.get_mut(client)
                {
                    peer.apply_answer(now, &sdp);
                }
                self.stale_timers(client);
                self.flush(client);
            }
            ToMedia::Offer { client, sdp, reply } => {
                if let Some(Client {
                    transport: Transport::WebRtc(peer),
                    ..
                }) = self.clients.get_mut(client)
                {
                    let _ = reply.send(peer.answer_offer(now, &sdp));
                }
                self.stale_timers(client);
                self.flush(client);
            }
            ToMedia::AddPlain {
                relay,
                group,
                publish,
                join_started,
                reply,
            } => {
                let (idx, link, _) = match self.add_udp_link() {
                    Ok(l) => l,
                    Err(e) => {
                        self.failed += 1;
                        eprintln!("generator: no socket for a relay participant: {e}");
                        return;
                    }
                };
                let media = self.media(publish, idx);
                let mut client = Client::new(
                    link,
                    Transport::Plain {
                        relay,
                        group,
                        audio: PlainStream {
                            ssrc: rand::random(),
                            seq: rand::random(),
                        },
                        video: (0..self.profile.layers())
                            .map(|_| PlainStream {
                                ssrc: rand::random(),
                                seq: rand::random(),
                            })
                            .collect(),
                        joins_sent: 0,
                        next_join: now,
                    },
                    publish,
                    media,
                    true,
                    join_started,
                );
                // The relay forwards only the top layer and never says `pause_encodings`.
                client.lower_layers_stop_after_hold = true;
                self.clients.push(client);
                let _ = reply.send(idx);
            }
            ToMedia::PauseEncodings { client, rids } => {
                if !self.profile.dynacast || !self.profile.simulcast {
                    return;
                }
                // A publisher has one video track, so the message's `mid` is that track's.
                if let Some(media) = self.clients.get_mut(client).and_then(|c| c.media.as_mut()) {
                    for (l, rid) in RIDS.iter().enumerate() {
                        media.set_paused(l, rids.iter().any(|r| r == rid));
                    }
                }
            }
            ToMedia::ResetStats => {
                self.send_dropped = 0;
                self.shared_overflows_at_reset = self.shared_overflows;
                for c in &mut self.clients {
                    c.rx = ReceiveStats::default();
                    c.sent_packets = 0;
                    c.sent_forwarded = 0;
                    c.sent_bytes = 0;
                }
            }
            ToMedia::ShapeDownlinks { schedule, queue } => {
                for c in &mut self.clients {
                    if let Transport::WebRtc(peer) = &mut c.transport {
                        // Everything it receives is opened, kept (for its receiver reports)
                        // and acknowledged in transport-wide feedback, as a browser does.
                        peer.transport_feedback = true;
                        peer.keep_history = true;
                        c.shaper = Some(ShapedDownlink::new(schedule.clone(), queue, now));
                        c.next_receiver_report = Some(now + Duration::from_secs(1));
                    }
                }
            }
            ToMedia::Report { reply } => {
                let _ = reply.send(self.report());
            }
            ToMedia::Stop => {}
        }
    }

    fn report(&self) -> GeneratorReport {
        let mut r = GeneratorReport {
            clients: self.clients.len(),
            send_dropped: self.send_dropped,
            receive_dropped: u64::from(
                self.shared_overflows
                    .wrapping_sub(self.shared_overflows_at_reset),
            ),
            failed: self.failed,
            ..Default::default()
        };
        for c in self.clients.iter().filter(|c| c.measured) {
            r.rx.add(&c.rx);
            r.sent_packets += c.sent_packets;
            r.sent_forwarded += c.sent_forwarded;
            r.sent_bytes += c.sent_bytes;
            if let Some(media) = c.media.as_ref().filter(|_| !c.retired) {
                let (sent, paused) = media.layer_counts();
                r.layers_sent += sent;
                r.layers_paused += paused;
            }
            if let Some(t) = c.first_media {
                r.join_ms
                    .push(t.duration_since(c.join_started).as_secs_f64() * 1000.0);
                r.receiving += 1;
            }
            let connected = match &c.transport {
                Transport::WebRtc(p) => p.is_secured(),
                Transport::Plain { .. } => true,
            };
            r.connected += usize::from(connected);
        }
        let now = Instant::now();
        let links: Vec<ShapedDownlink> = self
            .clients
            .iter()
            .filter_map(|c| c.shaper.clone())
            // Only receivers: a publishing-only peer connection (Janus's) gets nothing.
            .filter(|l| l.phases.iter().any(|p| p.offered_bytes > 0))
            .map(|mut l| {
                l.finish(now);
                l
            })
            .collect();
        r.downlinks = summarise(&links);
        r
    }

    /// Drains a participant's own readable socket or connection.
    fn receive(&mut self, idx: usize, now: Instant) {
        let Some(c) = self.clients.get_mut(idx).filter(|c| !c.retired) else {
            return;
        };
        // Out of the participant while it reads, so each datagram can reach the rest of it.
        let mut link = std::mem::replace(&mut c.link, Link::Closed);
        match &mut link {
            Link::Udp(socket) => {
                let fd = socket.as_raw_fd();
                loop {
                    let got = self.recv.recv(fd, |a: Arrival, buf| {
                        take_datagram(c, now, a.from, buf, a.kernel_ns.unwrap_or_else(now_ns));
                    });
                    match got {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            Link::Tcp(tcp) => {
                // A TCP stream has no per-packet kernel timestamps: arrival is when read.
                tcp.write();
                tcp.read(|from, buf| take_datagram(c, now, from, buf, now_ns()));
            }
            Link::Shared(_) | Link::Closed => {}
        }
        c.link = link;
        self.after_receive(idx);
    }

    /// Drains the shared socket: each datagram goes to the participant whose address it was
    /// sent to; each participant that got any then answers once.
    fn receive_shared(&mut self, now: Instant) {
        let Some(fd) = self.shared.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let (clients, touched) = (&mut self.clients, &mut self.touched);
        let overflows = &mut self.shared_overflows;
        loop {
            let got = self.recv.recv(fd, |a: Arrival, buf| {
                if let Some(n) = a.dropped {
                    *overflows = n;
                }
                let Some(idx) = a.to.and_then(shared_udp::participant) else {
                    return;
                };
                let Some(c) = clients.get_mut(idx).filter(|c| !c.retired) else {
                    return;
                };
                take_datagram(c, now, a.from, buf, a.kernel_ns.unwrap_or_else(now_ns));
                if !c.touched {
                    c.touched = true;
                    touched.push(idx);
                }
            });
            // Edge-triggered: a short read emptied the queue, and what arrives after it
            // raises a new event.
            match got {
                Ok(n) if n == crate::timestamped_recv::BATCH => {}
                _ => break,
            }
        }
        let mut touched = std::mem::take(&mut self.touched);
        for &idx in &touched {
            self.clients[idx].touched = false;
            self.after_receive(idx);
        }
        touched.clear();
        self.touched = touched;
        self.send_shared();
    }

    /// After a participant received: the keyframes its PLIs ask for, and what it answers.
    fn after_receive(&mut self, idx: usize) {
        // A PLI asks the named layer's encoder for a keyframe, as a browser's would.
        if let Some(Client {
            transport: Transport::WebRtc(peer),
            media: Some(media),
            ..
        }) = self.clients.get_mut(idx)
        {
            let video_base = usize::from(self.profile.audio);
            for ssrc in std::mem::take(&mut peer.pli_ssrcs) {
                if let Some(t) = peer.tracks.iter().position(|t| t.ssrc == ssrc)
                    && t >= video_base
                {
                    media.request_keyframe(t - video_base);
                }
            }
        }
        self.flush(idx);
    }

    /// Its stack took something that may move its timers: ask it again at the next tick.
    fn stale_timers(&mut self, idx: usize) {
        if let Some(c) = self.clients.get_mut(idx) {
            c.timers_stale = true;
        }
    }

    /// Timers, media due, and sending for one participant.
    fn tick(&mut self, idx: usize, now: Instant) {
        let profile_audio = self.profile.audio;
        let c = &mut self.clients[idx];
        if c.retired {
            return;
        }
        if let (Some(shaper), Transport::WebRtc(peer)) = (c.shaper.as_mut(), &mut c.transport) {
            while let Some((from, bytes, at)) = shaper.deliver(now) {
                // Arrival on the generator's (real-time) clock: when the link let it through.
                let late = now.saturating_duration_since(at).as_nanos() as u64;
                let arrival = now_ns().saturating_sub(late);
                count_rtp(peer, &mut c.rx, &mut c.first_media, at, &bytes, arrival);
                peer.handle_datagram(at, from, &bytes);
                c.timers_stale = true;
            }
            if c.next_receiver_report.is_some_and(|t| now >= t) {
                c.next_receiver_report = Some(now + Duration::from_secs(1));
                peer.send_receiver_reports();
                c.timers_stale = true;
            }
        }
        let ready = match &mut c.transport {
            Transport::WebRtc(peer) => {
                // Asking every participant's stack every millisecond was a tenth of the
                // generator's own code: its answer is kept until something could move it.
                if c.timers_stale || now.duration_since(c.timers_asked) >= TIMERS_REFRESH {
                    c.timers_due = peer.poll_timeout();
                    c.timers_asked = now;
                    c.timers_stale = false;
                }
                if c.timers_due.is_some_and(|t| t <= now) {
                    peer.handle_timeout(now);
                    c.timers_due = peer.poll_timeout();
                    c.timers_asked = now;
                }
                peer.is_secured()
            }
            Transport::Plain {
                relay,
                group,
                joins_sent,
                next_join,
                ..
            } => {
                // Registration is repeated a few times: UDP may lose it.
                if *joins_sent < 3 && *next_join <= now {
                    let role = if c.publish { "pub" } else { "sub" };
                    let msg = format!("JOIN {group} {role}");
                    self.batch.push(*relay, msg.as_bytes());
                    *joins_sent += 1;
                    *next_join = now + Duration::from_millis(200);
                }
                *joins_sent > 0
            }
        };
        if ready && let Some(media) = c.media.as_mut() {
            let since = *c.media_since.get_or_insert(now);
            if c.lower_layers_stop_after_hold
                && self.profile.dynacast
                && self.profile.simulcast
                && now >= since + DYNACAST_HOLD
                && media.layer_counts().1 == 0
            {
                // Every receiver takes the top layer: the lower ones go unreceived, and are
                // stopped after the hold our SFU gives them, so every target gets one input.
                for l in 0..self.profile.layers() - 1 {
                    media.set_paused(l, true);
                }
            }
            self.emits.clear();
            media.poll(now, &mut self.emits);
            for e in &self.emits {
                c.counter += 1;
                let payload = &mut self.payload[..e.len];
                frame_header(payload, e);
                stamp(payload, now_ns(), c.counter);
                c.sent_packets += 1;
                c.sent_forwarded += u64::from(e.forwarded);
                c.sent_bytes += e.len as u64;
                match &mut c.transport {
                    Transport::WebRtc(peer) => {
                        let track = match (e.kind, profile_audio) {
                            (StreamKind::Audio, _) => 0,
                            (StreamKind::Video, true) => 1 + e.layer,
                            (StreamKind::Video, false) => e.layer,
                        };
                        if let Some(t) = peer.tracks.get_mut(track) {
                            t.timestamp = e.rtp_ts;
                            peer.send_media(track, payload, e.marker, 0);
                        }
                    }
                    Transport::Plain {
                        relay,
                        audio,
                        video,
                        ..
                    } => {
                        let top = video.len() - 1;
                        let (s, pt) = match e.kind {
                            StreamKind::Audio => (audio, AUDIO_PT),
                            StreamKind::Video if e.layer == top => (&mut video[top], VIDEO_PT),
                            StreamKind::Video => {
                                (&mut video[e.layer], RELAY_LOWER_LAYER_PTS[e.layer])
                            }
                        };
                        s.seq = s.seq.wrapping_add(1);
                        let slot = self.batch.slot();
                        let w = HeaderWriter::new(slot, e.marker, pt, s.seq, e.rtp_ts, s.ssrc);
                        let hlen = w.finish();
                        slot[hlen..hlen + payload.len()].copy_from_slice(payload);
                        self.batch.commit(*relay, hlen + payload.len());
                    }
                }
            }
        }
        self.flush(idx);
    }

    /// Sends what a participant has queued.
    fn flush(&mut self, idx: usize) {
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        if c.retired {
            self.batch.clear();
            return;
        }
        if let Transport::WebRtc(peer) = &mut c.transport {
            while let Some((dest, data)) = peer.poll_transmit() {
                self.batch.push(dest, &data);
            }
        }
        if self.batch.is_empty() {
            return;
        }
        match &mut c.link {
            Link::Udp(socket) => {
                let (_, dropped) = socket.send_batch(&self.batch);
                self.send_dropped += dropped as u64;
            }
            Link::Shared(source) => {
                // Sent with others' a few at a time: fewer calls, yet no burst the server would
                // queue, and a packet's stamp (taken as it is built) stays close to its sending.
                if let Some(shared) = self.shared.as_mut() {
                    for i in 0..self.batch.len() {
                        let (dest, data) = self.batch.get(i);
                        shared.queue(*source, dest, data);
                    }
                    if shared.pending() >= SHARED_SEND_AT {
                        self.send_dropped += shared.send() as u64;
                    }
                }
            }
            Link::Tcp(tcp) => {
                for i in 0..self.batch.len() {
                    let (dest, data) = self.batch.get(i);
                    match tcp.push(self.poll.registry(), Token(idx), dest, data) {
                        Ok(true) => {}
                        Ok(false) => self.send_dropped += 1,
                        Err(e) => {
                            self.send_dropped += 1;
                            if !tcp.closed {
                                eprintln!("generator: ICE-TCP connection to {dest}: {e}");
                            }
                            tcp.closed = true;
                        }
                    }
                }
                tcp.write();
            }
            Link::Closed => {}
        }
        self.batch.clear();
    }
}

/// A datagram that reached participant `c` at `now` (`arrival` on the real-time clock).
fn take_datagram(c: &mut Client, now: Instant, from: SocketAddr, buf: &mut [u8], arrival: u64) {
    let Client {
        transport,
        rx,
        sampled,
        first_media,
        shaper,
        timers_stale,
        ..
    } = c;
    match transport {
        Transport::WebRtc(peer) => {
            if classify(buf) != PacketClass::Rtp {
                peer.handle_datagram(now, from, buf);
                *timers_stale = true;
                return;
            }
            if let Some(shaper) = shaper {
                // Through the shaped link first; it reaches the participant later.
                let audio = RtpHeader::parse(buf).is_ok_and(|h| {
                    peer.incoming
                        .iter()
                        .any(|l| l.ssrc == h.ssrc && l.kind == MediaKind::Audio)
                });
                shaper.offer(now, from, buf, audio);
                return;
            }
            // Opening a packet may schedule transport-wide feedback.
            *timers_stale |= *sampled && peer.transport_feedback;
            take_rtp(peer, rx, *sampled, first_media, now, buf, arrival);
        }
        Transport::Plain { .. } => {
            let Ok(h) = RtpHeader::parse(buf) else {
                return;
            };
            let clock = if h.payload_type == AUDIO_PT {
                48_000
            } else {
                90_000
            };
            rx.on_header(
                h.ssrc,
                h.sequence_number,
                h.timestamp,
                arrival,
                clock,
                buf.len(),
            );
            first_media.get_or_insert(now);
            if let Some((sent, _)) = read_stamp(&buf[h.header_len..]) {
                rx.on_latency(sent, arrival);
            }
        }
    }
}

/// A media packet that reached a WebRTC participant at `now` (`arrival` on the real-time
/// clock): counted from its clear header, and — sampled — opened (its transport-wide number
/// recorded for feedback) and its stamp read for latency.
fn take_rtp(
    peer: &mut SimPeer,
    rx: &mut ReceiveStats,
    sampled: bool,
    first_media: &mut Option<Instant>,
    now: Instant,
    buf: &mut [u8],
    arrival: u64,
) {
    count_rtp(peer, rx, first_media, now, buf, arrival);
    if sampled
        && let Some(p) = peer.open_rtp(now, buf)
        && let Some((sent, _)) = read_stamp(&p.payload)
    {
        rx.on_latency(sent, arrival);
    }
}

/// Counts a media packet that reached a WebRTC participant from its clear header.
fn count_rtp(
    peer: &SimPeer,
    rx: &mut ReceiveStats,
    first_media: &mut Option<Instant>,
    now: Instant,
    buf: &[u8],
    arrival: u64,
) {
    let Ok(h) = RtpHeader::parse(buf) else {
        return;
    };
    let clock = match peer.incoming.iter().find(|l| l.ssrc == h.ssrc) {
        Some(l) if l.kind == MediaKind::Audio => 48_000,
        _ => 90_000,
    };
    rx.on_header(
        h.ssrc,
        h.sequence_number,
        h.timestamp,
        arrival,
        clock,
        buf.len(),
    );
    first_media.get_or_insert(now);
}
