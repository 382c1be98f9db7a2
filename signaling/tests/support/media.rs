//! A WebRTC participant for tests of the running service: a `SimPeer` (real ICE, DTLS and
//! SRTP) on a real UDP socket, negotiating over the join WebSocket, sending VP8-shaped video
//! frames and counting the frames it receives.

use super::{Client, Server};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sfu_proto::MediaKind;
use sfu_testkit::SimPeer;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

/// A VP8 keyframe's first packet (descriptor S=1, frame tag P=0, start code): every frame a
/// keyframe, so a subscriber starts forwarding at once whichever frame comes first.
const VP8_KEYFRAME: [u8; 10] = [0x10, 0x50, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0];

pub struct MediaPeer {
    pub peer: Arc<Mutex<SimPeer>>,
    socket: Arc<UdpSocket>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for MediaPeer {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl MediaPeer {
    /// A peer on its own loopback socket publishing one audio and one video track.
    pub async fn new(name: &str) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let mut peer = SimPeer::new(name, addr, Instant::now());
        peer.add_track(MediaKind::Audio);
        peer.add_track(MediaKind::Video);
        let peer = Arc::new(Mutex::new(peer));
        let pump = tokio::spawn(pump(peer.clone(), socket.clone()));
        Self { peer, socket, pump }
    }

    pub fn offer(&self) -> String {
        self.peer.lock().unwrap().offer()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub fn is_secured(&self) -> bool {
        self.peer.lock().unwrap().is_secured()
    }

    /// Sends one video frame (a single packet) and flushes it to the network.
    pub async fn send_video_frame(&self) {
        let mut payload = VP8_KEYFRAME.to_vec();
        payload.resize(900, 0x5a);
        let out: Vec<(SocketAddr, Vec<u8>)> = {
            let mut p = self.peer.lock().unwrap();
            p.send_media(1, &payload, true, 3000);
            std::iter::from_fn(|| p.poll_transmit()).collect()
        };
        for (to, data) in out {
            let _ = self.socket.send_to(&data, to).await;
        }
    }

    /// Arrival times of the video frames received (one per RTP timestamp), all publishers.
    pub fn video_frames(&self) -> Vec<Instant> {
        let p = self.peer.lock().unwrap();
        let mut frames = Vec::new();
        for line in p.incoming.iter().filter(|l| l.kind == MediaKind::Video) {
            let Some(packets) = p.received.get(&line.ssrc) else {
                continue;
            };
            let mut last_ts = None;
            for r in packets {
                if last_ts != Some(r.timestamp) {
                    frames.push(r.at);
                    last_ts = Some(r.timestamp);
                }
            }
        }
        frames.sort();
        frames
    }
}

/// Moves datagrams between the socket and the peer, and runs its timers.
async fn pump(peer: Arc<Mutex<SimPeer>>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let wait = {
            let mut p = peer.lock().unwrap();
            let now = Instant::now();
            p.handle_timeout(now);
            p.poll_timeout()
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(20))
                .min(Duration::from_millis(20))
        };
        flush(&peer, &socket).await;
        if let Ok(Ok((n, from))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            peer.lock()
                .unwrap()
                .handle_datagram(Instant::now(), from, &buf[..n]);
            flush(&peer, &socket).await;
        }
    }
}

async fn flush(peer: &Mutex<SimPeer>, socket: &UdpSocket) {
    let out: Vec<(SocketAddr, Vec<u8>)> = {
        let mut p = peer.lock().unwrap();
        std::iter::from_fn(|| p.poll_transmit()).collect()
    };
    for (to, data) in out {
        let _ = socket.send_to(&data, to).await;
    }
}

impl Client {
    /// Starts `media`'s session: sends its offer and applies the SFU's answer.
    pub async fn start_media(&mut self, media: &MediaPeer) {
        self.start_media_answered(media).await;
    }

    /// As [`Client::start_media`]; returns the SFU's answer.
    pub async fn start_media_answered(&mut self, media: &MediaPeer) -> String {
        self.send(json!({"type": "offer", "sdp": media.offer()}))
            .await;
        let answer = self.next_of("answer").await;
        let sdp = answer["sdp"].as_str().unwrap().to_owned();
        media
            .peer
            .lock()
            .unwrap()
            .apply_answer(Instant::now(), &sdp);
        sdp
    }

    /// From now on answers the SFU's offers for `media` in the background; returns the other
    /// messages as they come.
    pub fn negotiate_in_background(
        self,
        media: &MediaPeer,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
        self.negotiate_until_dropped(media).0
    }

    /// As [`Client::negotiate_in_background`]; aborting the returned task drops the socket
    /// without a close handshake, as a network change does.
    pub fn negotiate_until_dropped(
        self,
        media: &MediaPeer,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<Value>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let peer = media.peer.clone();
        let mut ws = self.ws;
        let task = tokio::spawn(async move {
            use futures_util::SinkExt;
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(text) = msg else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "offer" {
                    let answer = peer
                        .lock()
                        .unwrap()
                        .answer_offer(Instant::now(), v["sdp"].as_str().unwrap());
                    let reply = json!({"type": "answer", "sdp": answer}).to_string();
                    if ws.send(Message::Text(reply.into())).await.is_err() {
                        break;
                    }
                } else if tx.send(v).is_err() {
                    break;
                }
            }
        });
        (rx, task)
    }
}

/// Two peers sending 30 video frames a second each (once secured) until stopped.
pub struct FrameSender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(MediaPeer, MediaPeer)>,
}

impl FrameSender {
    pub fn start(a: MediaPeer, b: MediaPeer) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(33_333));
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                for peer in [&a, &b] {
                    if peer.is_secured() {
                        peer.send_video_frame().await;
                    }
                }
            }
            (a, b)
        });
        Self { stop, task }
    }

    /// Stops sending; gives the peers back.
    pub async fn stop(self) -> (MediaPeer, MediaPeer) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the sender ran")
    }
}

/// Frames per whole second of `frames` between `from` and `to` (the lowest and each second's
/// count).
pub fn frames_per_second(frames: &[Instant], from: Instant, to: Instant) -> Vec<usize> {
    let mut counts = Vec::new();
    let mut start = from;
    while start + Duration::from_secs(1) <= to {
        let end = start + Duration::from_secs(1);
        counts.push(frames.iter().filter(|t| **t >= start && **t < end).count());
        start = end;
    }
    counts
}

/// A clinician and a patient joined with these tokens, the patient admitted (no media yet).
pub async fn admitted_pair(
    server: &Server,
    doctor_token: &str,
    patient_token: &str,
) -> (Client, Client) {
    let mut doctor = server.connect(doctor_token).await;
    doctor.next_of("welcome").await;
    let mut patient = server.connect(patient_token).await;
    patient.next_of("welcome").await;
    let patient_id = doctor.first_waiting().await;
    doctor
        .send(json!({"type": "admit", "participant": patient_id}))
        .await;
    patient.next_of("admitted").await;
    (doctor, patient)
}

/// A clinician and a patient of `meeting`, admitted, with media running both ways.
pub async fn visit(server: &Server, meeting: &str) -> (MediaPeer, MediaPeer, Client, Client) {
    let doctor_token = server.token(meeting, "doc-4411", "Dr Berg", "clinician");
    let patient_token = server.token(meeting, "pat-7f3a", "Anna", "patient");
    let (mut doctor, mut patient) = admitted_pair(server, &doctor_token, &patient_token).await;
    let doctor_media = MediaPeer::new("doctor").await;
    let patient_media = MediaPeer::new("patient").await;
    doctor.start_media(&doctor_media).await;
    patient.start_media(&patient_media).await;
    (doctor_media, patient_media, doctor, patient)
}

/// A [`visit`] whose clients answer the SFU's offers in the background, with 30 video frames a
/// second going both ways until dropped.
pub struct RunningVisit {
    pub doctor_media: Arc<MediaPeer>,
    pub patient_media: Arc<MediaPeer>,
    /// What each client was told meanwhile (see [`super::assert_undisturbed`]).
    pub doctor_events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    pub patient_events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    _sending: AbortOnDrop,
}

/// [`visit`], its media waited for both ways (over 30 frames each).
pub async fn running_visit(server: &Server, meeting: &str) -> RunningVisit {
    let (doctor_media, patient_media, doctor, patient) = visit(server, meeting).await;
    let (doctor_media, patient_media) = (Arc::new(doctor_media), Arc::new(patient_media));
    let doctor_events = doctor.negotiate_in_background(&doctor_media);
    let patient_events = patient.negotiate_in_background(&patient_media);
    let sending = send_frames([doctor_media.clone(), patient_media.clone()]);
    super::until("media both ways", 15, async || {
        doctor_media.video_frames().len() > 30 && patient_media.video_frames().len() > 30
    })
    .await;
    RunningVisit {
        doctor_media,
        patient_media,
        doctor_events,
        patient_events,
        _sending: sending,
    }
}

/// A participant that recovers as docs/protocol.md tells a client to: when its media session
/// is lost (`media_disconnected`) it starts a new one from a new peer (an `offer` with
/// `restart: true`); it answers the SFU's offers with its current peer and sends 30 video
/// frames a second from it.
pub struct Recovering {
    peers: Arc<Mutex<Vec<Arc<MediaPeer>>>>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Recovering {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Recovering {
    /// Arrival times of the video frames all its peers received, in order.
    pub fn frames(&self) -> Vec<Instant> {
        let mut all: Vec<Instant> = self
            .peers
            .lock()
            .unwrap()
            .iter()
            .flat_map(|p| p.video_frames())
            .collect();
        all.sort();
        all
    }

    /// Media sessions it has had (1 + restarts).
    pub fn sessions(&self) -> usize {
        self.peers.lock().unwrap().len()
    }

    /// Video frames its newest media session has received.
    pub fn frames_in_newest_session(&self) -> usize {
        self.peers
            .lock()
            .unwrap()
            .last()
            .map_or(0, |p| p.video_frames().len())
    }

    /// The longest time without a received frame between `from` and `to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for t in self.frames().into_iter().filter(|t| *t > from && *t <= to) {
            gap = gap.max(t - last);
            last = t;
        }
        gap.max(to.saturating_duration_since(last))
    }
}

impl Client {
    /// Runs this participant (whose media session `media` has started) as a [`Recovering`]
    /// client from now on.
    pub fn recover_on_loss(self, media: MediaPeer) -> Recovering {
        let peers = Arc::new(Mutex::new(vec![Arc::new(media)]));
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let current = {
            let peers = peers.clone();
            move || peers.lock().unwrap().last().cloned().expect("a peer")
        };
        let mut ws = self.ws;
        let negotiate = {
            let (peers, current) = (peers.clone(), current.clone());
            tokio::spawn(async move {
                use futures_util::SinkExt;
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else {
                        continue;
                    };
                    let v: Value = serde_json::from_str(&text).unwrap();
                    let reply = match v["type"].as_str() {
                        Some("offer") => {
                            let answer = current()
                                .peer
                                .lock()
                                .unwrap()
                                .answer_offer(Instant::now(), v["sdp"].as_str().unwrap());
                            Some(json!({"type": "answer", "sdp": answer}))
                        }
                        Some("answer") => {
                            current()
                                .peer
                                .lock()
                                .unwrap()
                                .apply_answer(Instant::now(), v["sdp"].as_str().unwrap());
                            None
                        }
                        Some("media_disconnected") => {
                            let fresh = Arc::new(MediaPeer::new("restarted").await);
                            let offer = fresh.offer();
                            peers.lock().unwrap().push(fresh);
                            Some(json!({"type": "offer", "sdp": offer, "restart": true}))
                        }
                        _ => None,
                    };
                    if let Some(reply) = reply
                        && ws
                            .send(Message::Text(reply.to_string().into()))
                            .await
                            .is_err()
                    {
                        break;
                    }
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            })
        };
        let send = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(33_333));
            loop {
                tick.tick().await;
                let peer = current();
                if peer.is_secured() {
                    peer.send_video_frame().await;
                }
            }
        });
        Recovering {
            peers,
            events,
            tasks: [negotiate, send],
        }
    }
}

/// Sends 30 video frames a second from each peer (once secured) until dropped.
pub fn send_frames(peers: [Arc<MediaPeer>; 2]) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(33_333));
        loop {
            tick.tick().await;
            for p in &peers {
                if p.is_secured() {
                    p.send_video_frame().await;
                }
            }
        }
    }))
}

/// A task aborted when this is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The longest time without a received frame between `from` and `to`.
/// Waits 3 s, then asserts that video kept arriving at both the clinician's and the patient's
/// peers from `since` on (no gap of 500 ms or more) across `what`; prints the longest gaps.
pub async fn assert_media_flowed(
    clinician: &MediaPeer,
    patient: &MediaPeer,
    since: Instant,
    what: &str,
) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = Instant::now();
    let gaps = (
        longest_gap(&clinician.video_frames(), since, end),
        longest_gap(&patient.video_frames(), since, end),
    );
    eprintln!(
        "longest media gap across {what}: clinician {:?}, patient {:?}",
        gaps.0, gaps.1
    );
    assert!(
        gaps.0 < Duration::from_millis(500) && gaps.1 < Duration::from_millis(500),
        "media flowed on through {what} (longest gaps {gaps:?})"
    );
}

pub fn longest_gap(frames: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for t in frames.iter().filter(|t| **t > from && **t <= to) {
        gap = gap.max(*t - last);
        last = *t;
    }
    gap.max(to.saturating_duration_since(last))
}
