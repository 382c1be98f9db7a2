//! A sans-IO WebRTC client for tests: offers send-only tracks, answers the SFU's offers with
//! receive-only lines, runs ICE (controlling) and DTLS (client), and sends/receives SRTP.

use bytes::BytesMut;
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_ice::candidate::CandidateConfig;
use rtc_ice::candidate::candidate_host::CandidateHostConfig;
use rtc_ice::{Agent, AgentConfig};
use rtc_shared::{TransportContext, TransportMessage, TransportProtocol};
use sansio::Protocol;
use sfu_core::remote_description::RemoteDescription;
use sfu_core::rtp_header::{HeaderWriter, PacketClass, RtpHeader, classify};
use sfu_core::srtp_context::{MasterKey, SRTCP_TRAILER_LEN, SRTP_TAG_LEN, SrtpContext};
use sfu_proto::MediaKind;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A track this peer publishes.
#[derive(Debug, Clone)]
pub struct SendTrack {
    pub kind: MediaKind,
    pub mid: String,
    pub ssrc: u32,
    pub rtx_ssrc: u32,
    pub payload_type: u8,
    pub seq: u16,
    pub rtx_seq: u16,
    pub timestamp: u32,
    /// Rollover counters of the media and RTX streams (RFC 3711 §3.3.1).
    pub roc: u32,
    pub rtx_roc: u32,
    /// The simulcast layer this stream is (several tracks then share one `mid`).
    pub rid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPacket {
    pub seq: u16,
    pub timestamp: u32,
    pub payload: Vec<u8>,
    pub at: Instant,
    /// Arrived as an RTX retransmission (RFC 4588), already unwrapped.
    pub repaired: bool,
}

/// A packet from the SFU, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedRtp {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub payload: Vec<u8>,
    pub repaired: bool,
}

/// What the peer learned from an SFU offer about one incoming stream.
#[derive(Debug, Clone)]
pub struct IncomingLine {
    pub mid: String,
    pub kind: MediaKind,
    pub ssrc: u32,
    pub rtx_ssrc: Option<u32>,
    pub stream_id: String,
}

pub struct SimPeer {
    pub name: String,
    pub addr: SocketAddr,
    agent: Agent,
    dtls: Endpoint,
    certificate: Certificate,
    fingerprint: String,
    local_ufrag: String,
    local_pwd: String,
    sfu_addr: Option<SocketAddr>,
    dtls_started: bool,
    outbound: Option<SrtpContext>,
    inbound: Option<SrtpContext>,
    pub tracks: Vec<SendTrack>,
    /// Sent packets by (ssrc, seq) for answering NACKs: (timestamp, marker, payload).
    history: HashMap<(u32, u16), (u32, bool, Vec<u8>)>,
    pub incoming: Vec<IncomingLine>,
    pub received: HashMap<u32, Vec<ReceivedPacket>>,
    pub plis_received: u32,
    /// Sender reports received (relayed by the SFU for the publishers it forwards).
    pub sender_reports_received: u32,
    /// Media SSRCs named by PLIs received, in order (a keyframe is owed on each).
    pub pli_ssrcs: Vec<u32>,
    /// Per incoming SSRC: packets already reported on and the highest sequence number then.
    report_marks: HashMap<u32, (usize, u16)>,
    pub nacks_received: u32,
    pub retransmissions_sent: u32,
    srtcp_index: u32,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// When set, the peer sends nothing at all (a closed browser).
    pub silent: bool,
    /// When set, SFU offers are not answered (a client whose stack refuses them).
    pub ignore_offers: bool,
    roc_in: HashMap<u32, (u64, bool)>,
    /// Transport-wide sequence number on this peer's packets (extension id 3).
    twcc_seq: u16,
    /// Transport-cc feedback received: messages and packet statuses reported.
    pub twcc_feedback_received: u32,
    /// Receiver reports received, by the SSRC each block reports on, with their arrival
    /// (the first 4,096).
    pub receiver_reports: Vec<(Instant, u32)>,
    pub twcc_statuses_reported: u32,
    /// Transport-wide sequence numbers on packets the SFU sent us, in arrival order.
    pub twcc_seqs_received: Vec<u16>,
    /// The transport-cc extension id the SFU's offers use toward us.
    twcc_in_id: Option<u8>,
    /// Arrivals of the SFU's packets, for the transport-wide feedback we send it every
    /// `feedback_interval` (as a browser does; its bandwidth estimate of our link needs it).
    twcc_in: sfu_core::twcc_feedback::TwccRecorder,
    pub transport_feedback: bool,
    pub feedback_interval: std::time::Duration,
    next_feedback_at: Option<Instant>,
    /// Padding-only packets received (the SFU's bandwidth probes).
    pub padding_received: u32,
    /// RFC 6464 level put on our audio packets, in -dBov (0 loudest, 127 silence).
    pub audio_level: u8,
    /// Keep sent packets to answer NACKs, and the transport-wide sequence numbers received
    /// (both off in the load generator: memory stays flat).
    pub keep_history: bool,
    /// Ask for what is missing from an incoming stream (a NACK as a gap in its sequence
    /// numbers shows, once), as a browser's receiver does.
    pub nack_losses: bool,
    /// The newest sequence number received per incoming SSRC (for `nack_losses`).
    newest_seq: HashMap<u32, u16>,
    /// Packets asked for and not yet come, per incoming SSRC: when last asked, and how often.
    awaited: HashMap<u32, std::collections::BTreeMap<u16, (Instant, u8)>>,
    /// ICE role: controlling when we offer (to our ICE-lite SFU); controlled when answering
    /// a full-ICE offerer (Janus's subscriber offers).
    controlling: bool,
    /// `a=setup` of our offers: `actpass`, or `active` to stay the DTLS client with an
    /// answerer that would otherwise take the client role.
    pub offer_setup: &'static str,
    /// An ICE restart is under way: the next answer's credentials start new checks.
    ice_restarting: bool,
    /// The SFU's ICE credentials from its last answer (ufrag, pwd).
    sfu_credentials: Option<(String, String)>,
}

impl std::fmt::Debug for SimPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPeer")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

const TWCC_EXTMAP: &str =
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";

fn crypto() -> Arc<dyn rtc_crypto::RTCCryptoProvider> {
    rtc_crypto::default_provider().expect("ring crypto provider")
}

fn host_candidate(addr: SocketAddr) -> rtc_ice::candidate::Candidate {
    CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .expect("host candidate")
}

impl SimPeer {
    pub fn new(name: &str, addr: SocketAddr, now: Instant) -> Self {
        Self::with_role(name, addr, now, true)
    }

    /// A peer in the given ICE role (it is always the DTLS client).
    pub fn with_role(name: &str, addr: SocketAddr, now: Instant, controlling: bool) -> Self {
        let provider = crypto();
        let local_ufrag = format!("u{}{:08x}", name.len(), rand::random::<u32>());
        let local_pwd = format!("p{:032x}", rand::random::<u128>());
        let mut agent = Agent::new(
            now,
            Arc::new(AgentConfig {
                local_ufrag: local_ufrag.clone(),
                local_pwd: local_pwd.clone(),
                is_controlling: controlling,
                candidate_types: vec![rtc_ice::candidate::CandidateType::Host],
                ..Default::default()
            }),
            provider.clone(),
        )
        .expect("ICE agent");
        agent
            .add_local_candidate(host_candidate(addr))
            .expect("add candidate");
        let certificate =
            Certificate::generate_self_signed(vec!["peer".to_owned()], provider.crypto())
                .expect("cert");
        let digest =
            ring::digest::digest(&ring::digest::SHA256, certificate.certificate[0].as_ref());
        let fingerprint = digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        Self {
            name: name.to_owned(),
            addr,
            agent,
            dtls: Endpoint::new(addr, TransportProtocol::UDP, None),
            certificate,
            fingerprint,
            local_ufrag,
            local_pwd,
            sfu_addr: None,
            dtls_started: false,
            outbound: None,
            inbound: None,
            tracks: Vec::new(),
            history: HashMap::new(),
            incoming: Vec::new(),
            received: HashMap::new(),
            plis_received: 0,
            sender_reports_received: 0,
            pli_ssrcs: Vec::new(),
            report_marks: HashMap::new(),
            nacks_received: 0,
            retransmissions_sent: 0,
            srtcp_index: 0,
            outbox: VecDeque::new(),
            silent: false,
            ignore_offers: false,
            roc_in: HashMap::new(),
            twcc_seq: 0,
            twcc_feedback_received: 0,
            receiver_reports: Vec::new(),
            twcc_statuses_reported: 0,
            twcc_seqs_received: Vec::new(),
            twcc_in_id: None,
            twcc_in: sfu_core::twcc_feedback::TwccRecorder::new(now),
            transport_feedback: true,
            feedback_interval: std::time::Duration::from_millis(50),
            next_feedback_at: None,
            padding_received: 0,
            nack_losses: false,
            newest_seq: HashMap::new(),
            awaited: HashMap::new(),
            audio_level: 30,
            keep_history: true,
            controlling,
            offer_setup: "actpass",
            ice_restarting: false,
            sfu_credentials: None,
        }
    }

    /// A network change and ICE restart (JSEP `restartIce`): the peer now sends from
    /// `new_addr` and its next [`Self::offer`] carries new ICE credentials. DTLS and SRTP stay.
    pub fn restart_ice(&mut self, now: Instant, new_addr: SocketAddr) {
        self.addr = new_addr;
        self.local_ufrag = format!("r{:08x}", rand::random::<u32>());
        self.local_pwd = format!("p{:032x}", rand::random::<u128>());
        self.agent
            .restart(now, self.local_ufrag.clone(), self.local_pwd.clone(), false)
            .expect("ICE restart");
        self.agent
            .add_local_candidate(host_candidate(new_addr))
            .expect("add candidate");
        self.ice_restarting = true;
    }

    /// A connectivity check toward the SFU from wherever this peer is, as a controlling agent
    /// would send it; `nominate` adds USE-CANDIDATE. Empty before the SFU answered.
    pub fn connectivity_check(&self, nominate: bool) -> Vec<u8> {
        let Some((ufrag, pwd)) = &self.sfu_credentials else {
            return Vec::new();
        };
        sfu_core::ice_lite::connectivity_check(
            &format!("{ufrag}:{}", self.local_ufrag),
            pwd,
            nominate,
            crypto().crypto(),
        )
    }

    /// Adds a track to publish; call before [`Self::offer`].
    pub fn add_track(&mut self, kind: MediaKind) {
        let n = self.mids().len();
        self.tracks.push(SendTrack {
            kind,
            mid: n.to_string(),
            ssrc: rand::random::<u32>() | 1,
            rtx_ssrc: rand::random::<u32>() | 1,
            payload_type: if kind == MediaKind::Audio { 111 } else { 96 },
            seq: rand::random::<u16>() & 0x3fff,
            rtx_seq: rand::random::<u16>() & 0x3fff,
            timestamp: rand::random(),
            roc: 0,
            rtx_roc: 0,
            rid: None,
        });
    }

    /// Adds a simulcast video track sent as `rids` (one stream each, on one m-line, bound by
    /// the MID and RID header extensions as Chrome does); returns their indices in `tracks`.
    pub fn add_simulcast_video(&mut self, rids: &[&str]) -> Vec<usize> {
        let mid = self.mids().len().to_string();
        let first = self.tracks.len();
        for rid in rids {
            self.add_track(MediaKind::Video);
            let t = self.tracks.last_mut().expect("just added");
            t.mid = mid.clone();
            t.rid = Some((*rid).to_owned());
        }
        (first..self.tracks.len()).collect()
    }

    /// The m-lines this peer sends on, in order.
    fn mids(&self) -> Vec<&str> {
        let mut mids: Vec<&str> = Vec::new();
        for t in &self.tracks {
            if !mids.contains(&t.mid.as_str()) {
                mids.push(&t.mid);
            }
        }
        mids
    }

    fn transport_lines(&self, setup: &str) -> String {
        format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:sha-256 {}\r\na=setup:{}\r\n",
            self.local_ufrag, self.local_pwd, self.fingerprint, setup
        )
    }

    /// The initial offer: one send-only m-line per track.
    pub fn offer(&self) -> String {
        let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n");
        let mids = self.mids();
        if mids.is_empty() {
            sdp += &self.transport_lines(self.offer_setup);
        } else {
            sdp += &format!("a=group:BUNDLE {}\r\n", mids.join(" "));
        }
        for mid in &mids {
            let layers: Vec<&SendTrack> = self.tracks.iter().filter(|t| t.mid == *mid).collect();
            let t = layers[0];
            if t.rid.is_some() {
                sdp += "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\n";
                sdp += &self.transport_lines(self.offer_setup);
                sdp += &format!("a=mid:{}\r\na=sendonly\r\na=rtcp-mux\r\n", t.mid);
                sdp += "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n";
                sdp += "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n";
                sdp += "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n";
                sdp += TWCC_EXTMAP;
                sdp += "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n";
                sdp += "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n";
                let rids: Vec<&str> = layers.iter().filter_map(|l| l.rid.as_deref()).collect();
                for rid in &rids {
                    sdp += &format!("a=rid:{rid} send\r\n");
                }
                sdp += &format!("a=simulcast:send {}\r\n", rids.join(";"));
                continue;
            }
            match t.kind {
                MediaKind::Audio => {
                    sdp += "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n";
                    sdp += &self.transport_lines(self.offer_setup);
                    sdp += &format!("a=mid:{}\r\na=sendonly\r\na=rtcp-mux\r\n", t.mid);
                    sdp += "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n";
                    sdp += "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n";
                    sdp += TWCC_EXTMAP;
                    sdp += "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n";
                    sdp += &format!("a=ssrc:{} cname:{}\r\n", t.ssrc, self.name);
                }
                MediaKind::Video => {
                    sdp += "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\n";
                    sdp += &self.transport_lines(self.offer_setup);
                    sdp += &format!("a=mid:{}\r\na=sendonly\r\na=rtcp-mux\r\n", t.mid);
                    sdp += "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n";
                    sdp += TWCC_EXTMAP;
                    sdp +=
                        "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n";
                    sdp += "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n";
                    sdp += &format!("a=ssrc-group:FID {} {}\r\n", t.ssrc, t.rtx_ssrc);
                    sdp += &format!(
                        "a=ssrc:{} cname:{}\r\na=ssrc:{} cname:{}\r\n",
                        t.ssrc, self.name, t.rtx_ssrc, self.name
                    );
                }
            }
        }
        sdp
    }

    /// Applies the SFU's answer: starts ICE toward its candidate.
    pub fn apply_answer(&mut self, now: Instant, sdp: &str) {
        // An answer to an offer without media has no m-line to carry ICE; the SFU's first
        // offer then starts it.
        let Some(candidate) = sdp.lines().find_map(|l| l.strip_prefix("a=candidate:")) else {
            return;
        };
        let remote = RemoteDescription::parse(sdp).expect("SFU answer parses");
        self.start_ice(now, &remote, candidate);
    }

    fn start_ice(&mut self, now: Instant, remote: &RemoteDescription, candidate: &str) {
        self.sfu_credentials = Some((remote.ice_ufrag.clone(), remote.ice_pwd.clone()));
        if self.sfu_addr.is_some() && !std::mem::take(&mut self.ice_restarting) {
            return;
        }
        let c = rtc_ice::candidate::unmarshal_candidate(candidate).expect("candidate parses");
        self.sfu_addr = Some(c.addr());
        self.agent
            .add_remote_candidate(c)
            .expect("remote candidate");
        self.agent
            .start_connectivity_checks(
                now,
                self.controlling,
                remote.ice_ufrag.clone(),
                remote.ice_pwd.clone(),
            )
            .expect("ICE start");
        self.drain(now);
    }

    /// Answers an SFU offer: receive-only for every line it sends on. Returns the answer SDP.
    pub fn answer_offer(&mut self, now: Instant, sdp: &str) -> String {
        let remote = RemoteDescription::parse(sdp).expect("SFU offer parses");
        if let Some(candidate) = sdp.lines().find_map(|l| l.strip_prefix("a=candidate:")) {
            self.start_ice(now, &remote, candidate);
        }
        let mut out = String::from("v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n");
        let bundle: Vec<&str> = remote
            .media
            .iter()
            .filter(|m| !m.rejected)
            .map(|m| m.mid.as_str())
            .collect();
        out += &format!("a=group:BUNDLE {}\r\n", bundle.join(" "));
        for m in &remote.media {
            if let Some((id, _)) = m
                .extmaps
                .iter()
                .find(|(_, u)| u.contains("transport-wide-cc"))
            {
                self.twcc_in_id = Some(*id);
            }
            let kind = m.kind.unwrap_or(MediaKind::Video);
            let media = if kind == MediaKind::Audio {
                "audio"
            } else {
                "video"
            };
            let pts: Vec<String> = m
                .codecs
                .iter()
                .map(|c| c.payload_type.to_string())
                .collect();
            let port = if m.rejected { 0 } else { 9 };
            // A stopped line lists no codecs; the m= line still needs a format.
            let pts = if pts.is_empty() {
                vec!["0".to_owned()]
            } else {
                pts
            };
            out += &format!(
                "m={media} {port} UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\n",
                pts.join(" ")
            );
            out += &self.transport_lines("active");
            let dir = match m.direction {
                sfu_core::remote_description::Direction::SendOnly => "recvonly",
                sfu_core::remote_description::Direction::RecvOnly => "sendonly",
                _ => "inactive",
            };
            out += &format!("a=mid:{}\r\na={dir}\r\na=rtcp-mux\r\n", m.mid);
            for c in &m.codecs {
                out += &format!(
                    "a=rtpmap:{} {}/{}\r\n",
                    c.payload_type, c.name, c.clock_rate
                );
            }
            if m.direction == sfu_core::remote_description::Direction::SendOnly
                && let Some(&ssrc) = m.ssrcs.first()
                && !self.incoming.iter().any(|l| l.ssrc == ssrc)
            {
                self.incoming.push(IncomingLine {
                    mid: m.mid.clone(),
                    kind,
                    ssrc,
                    rtx_ssrc: m.rtx_ssrcs.first().map(|(_, r)| *r),
                    stream_id: m
                        .msid
                        .as_deref()
                        .unwrap_or("")
                        .split(' ')
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                });
            }
        }
        out
    }

    pub fn is_secured(&self) -> bool {
        self.outbound.is_some()
    }

    /// Incoming stream of a given publisher and kind, as announced in SFU offers.
    pub fn incoming_from(&self, publisher: &str, kind: MediaKind) -> Option<&IncomingLine> {
        self.incoming
            .iter()
            .find(|l| l.stream_id == publisher && l.kind == kind)
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        if self.silent {
            self.outbox.clear();
            return None;
        }
        self.outbox.pop_front()
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let a = self.agent.poll_timeout();
        let b = self.sfu_addr.and_then(|r| self.dtls.poll_timeout(&r));
        let c = self.next_feedback_at;
        [a, b, c].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_feedback_at.is_some_and(|t| t <= now) {
            self.next_feedback_at = None;
            let mut buf = vec![0u8; 1500];
            let media_ssrc = self.incoming.first().map_or(0, |l| l.ssrc);
            while let Some(n) = self.twcc_in.write_feedback(&mut buf, 0x5151, media_ssrc) {
                self.send_rtcp(&buf[..n]);
            }
        }
        let _ = self.agent.handle_timeout(now);
        if let Some(r) = self.sfu_addr
            && self.dtls.poll_timeout(&r).is_some_and(|t| t <= now)
        {
            let _ = self.dtls.handle_timeout(r, now);
        }
        self.drain(now);
    }

    fn drain(&mut self, now: Instant) {
        while let Some(t) = self.agent.poll_write() {
            self.outbox
                .push_back((t.transport.peer_addr, t.message.to_vec()));
        }
        while let Some(evt) = self.agent.poll_event() {
            if let rtc_ice::Event::SelectedCandidatePairChange(_, remote) = evt.event
                && !self.dtls_started
            {
                self.dtls_started = true;
                let cfg = ConfigBuilder::default()
                    .with_crypto_provider(crypto())
                    .with_certificates(vec![self.certificate.clone()])
                    .with_srtp_protection_profiles(vec![
                        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                    ])
                    .with_client_auth(ClientAuthType::RequireAnyClientCert)
                    .with_insecure_skip_verify(true)
                    .with_extended_master_secret(ExtendedMasterSecretType::Require)
                    .build(true, None)
                    .expect("DTLS client config");
                self.dtls
                    .connect(now, remote.addr(), Arc::new(cfg), None)
                    .expect("DTLS connect");
            }
        }
        while let Some(t) = self.dtls.poll_transmit() {
            self.outbox
                .push_back((t.transport.peer_addr, t.message.to_vec()));
        }
    }

    /// A datagram from the network.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match classify(data) {
            // The ICE-lite SFU checks an address before sending media there; a controlling
            // browser answers that check from whatever address it now uses (its agent here
            // knows only the address it started with).
            PacketClass::Stun if self.controlling && data.starts_with(&[0x00, 0x01]) => {
                if let Some(answer) =
                    sfu_core::ice_lite::answer_check(data, from, &self.local_pwd, crypto().crypto())
                {
                    self.outbox.push_back((from, answer));
                }
            }
            PacketClass::Stun => {
                let _ = self.agent.handle_read(TransportMessage {
                    now,
                    transport: TransportContext {
                        local_addr: self.addr,
                        peer_addr: from,
                        transport_protocol: TransportProtocol::UDP,
                        ecn: None,
                    },
                    message: BytesMut::from(data),
                });
            }
            PacketClass::Dtls => {
                if let Ok(events) = self.dtls.read(now, from, None, BytesMut::from(data)) {
                    for e in events {
                        if let EndpointEvent::HandshakeComplete = e {
                            let state = self.dtls.get_connection_state(from).expect("state");
                            let material = state
                                .export_keying_material("EXTRACTOR-dtls_srtp", &[], 56)
                                .expect("keying material");
                            let (local, remote) =
                                MasterKey::pair_from_keying_material(material.as_ref(), true)
                                    .expect("keys");
                            let provider = crypto();
                            self.outbound =
                                Some(SrtpContext::new(provider.crypto(), &local).expect("srtp"));
                            self.inbound =
                                Some(SrtpContext::new(provider.crypto(), &remote).expect("srtp"));
                        }
                    }
                }
            }
            PacketClass::Rtp => self.receive_rtp(now, data),
            PacketClass::Rtcp => self.receive_rtcp(now, data),
            PacketClass::Unknown => {}
        }
        self.drain(now);
    }

    fn receive_rtp(&mut self, now: Instant, data: &[u8]) {
        let Some(p) = self.open_rtp(now, data) else {
            return;
        };
        if self.nack_losses {
            self.ask_for_missing(now, p.ssrc, p.seq, p.repaired);
        }
        self.received
            .entry(p.ssrc)
            .or_default()
            .push(ReceivedPacket {
                seq: p.seq,
                timestamp: p.timestamp,
                payload: p.payload,
                at: now,
                repaired: p.repaired,
            });
    }

    /// What a browser's receiver does about loss: a gap in the sequence numbers is asked for
    /// (NACK), and asked for again every 40 ms while it has not come, four times at most.
    fn ask_for_missing(&mut self, now: Instant, ssrc: u32, seq: u16, repaired: bool) {
        let awaited = self.awaited.entry(ssrc).or_default();
        awaited.remove(&seq);
        let mut ask: Vec<u16> = Vec::new();
        if !repaired {
            let newest = self.newest_seq.entry(ssrc).or_insert(seq.wrapping_sub(1));
            let ahead = seq.wrapping_sub(*newest);
            if ahead < 0x8000 {
                for d in 1..ahead.min(64) {
                    let missing = newest.wrapping_add(d);
                    awaited.insert(missing, (now, 1));
                    ask.push(missing);
                }
                *newest = seq;
            }
        }
        for (&missing, (asked, tries)) in awaited.iter_mut() {
            if now.saturating_duration_since(*asked) >= Duration::from_millis(40) && *tries < 4 {
                *asked = now;
                *tries += 1;
                ask.push(missing);
            }
        }
        // Given up on (or far behind): forgotten.
        awaited.retain(|_, (_, tries)| *tries < 4);
        while awaited.len() > 256 {
            awaited.pop_first();
        }
        if !ask.is_empty() {
            self.send_nack(ssrc, &ask);
        }
    }

    /// Decrypts and authenticates an SRTP packet from the SFU without keeping it (RTX
    /// unwrapped to its media stream). `None` when it does not open.
    pub fn open_rtp(&mut self, now: Instant, data: &[u8]) -> Option<OpenedRtp> {
        let ctx = self.inbound.as_ref()?;
        let h = RtpHeader::parse(data).ok()?;
        let mut buf = data.to_vec();
        // Rollover estimate per SSRC (as a receiver would).
        let entry = self
            .roc_in
            .entry(h.ssrc)
            .or_insert((h.sequence_number as u64, false));
        let ext = if !entry.1 {
            h.sequence_number as u64
        } else {
            let d = h.sequence_number.wrapping_sub(entry.0 as u16) as i16 as i64;
            (entry.0 as i64 + d).max(0) as u64
        };
        let n = ctx
            .open_rtp(
                &mut buf,
                h.header_len,
                h.ssrc,
                (ext >> 16) as u32,
                h.sequence_number,
            )
            .ok()?;
        let entry = self.roc_in.get_mut(&h.ssrc)?;
        if !entry.1 || ext > entry.0 {
            *entry = (ext, true);
        }
        if let Some(v) = self.twcc_in_id.and_then(|id| h.extension_value(&buf, id))
            && v.len() == 2
        {
            let seq = u16::from_be_bytes([v[0], v[1]]);
            if self.keep_history {
                self.twcc_seqs_received.push(seq);
            }
            if self.transport_feedback {
                self.twcc_in.record(seq, now);
                self.next_feedback_at
                    .get_or_insert(now + self.feedback_interval);
            }
        }
        // RFC 3550 §5.1 padding (the SFU's probes are padding only).
        let pad = if data[0] & 0x20 != 0 && n > h.header_len {
            buf[n - 1] as usize
        } else {
            0
        };
        if pad > n - h.header_len {
            return None;
        }
        let payload = &buf[h.header_len..n - pad];
        if payload.is_empty() && pad > 0 {
            self.padding_received += 1;
            return None;
        }
        let rtx_line = self
            .incoming
            .iter()
            .find(|l| l.rtx_ssrc == Some(h.ssrc))
            .map(|l| l.ssrc);
        Some(match rtx_line {
            Some(media_ssrc) if payload.len() >= 2 => OpenedRtp {
                ssrc: media_ssrc,
                seq: u16::from_be_bytes([payload[0], payload[1]]),
                timestamp: h.timestamp,
                payload: payload[2..].to_vec(),
                repaired: true,
            },
            _ => OpenedRtp {
                ssrc: h.ssrc,
                seq: h.sequence_number,
                timestamp: h.timestamp,
                payload: payload.to_vec(),
                repaired: false,
            },
        })
    }

    fn receive_rtcp(&mut self, now: Instant, data: &[u8]) {
        let Some(ctx) = self.inbound.as_ref() else {
            return;
        };
        let mut buf = data.to_vec();
        let Ok((n, _)) = ctx.open_rtcp(&mut buf) else {
            return;
        };
        let mut slice = &buf[..n];
        let Ok(packets) = rtc_rtcp::packet::unmarshal(&mut slice) else {
            return;
        };
        for p in packets {
            let any = p.as_any();
            if let Some(pli) = any
                .downcast_ref::<rtc_rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
            {
                self.plis_received += 1;
                // Bounded: a sender drains it, and requests are throttled upstream.
                if self.pli_ssrcs.len() < 64 {
                    self.pli_ssrcs.push(pli.media_ssrc);
                }
            } else if any
                .downcast_ref::<rtc_rtcp::sender_report::SenderReport>()
                .is_some()
            {
                self.sender_reports_received += 1;
            } else if let Some(rr) =
                any.downcast_ref::<rtc_rtcp::receiver_report::ReceiverReport>()
            {
                for block in &rr.reports {
                    if self.receiver_reports.len() < 4096 {
                        self.receiver_reports.push((now, block.ssrc));
                    }
                }
            } else if let Some(fb) = any
                .downcast_ref::<rtc_rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc>()
            {
                self.twcc_feedback_received += 1;
                self.twcc_statuses_reported += fb.packet_status_count as u32;
            } else if let Some(nack) =
                any.downcast_ref::<rtc_rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
            {
                self.nacks_received += 1;
                let Some(track) = self.tracks.iter().position(|t| t.ssrc == nack.media_ssrc) else {
                    continue;
                };
                for pair in &nack.nacks {
                    for seq in pair.packet_list() {
                        self.retransmit(track, seq);
                    }
                }
            }
        }
    }

    /// Sends `payload` on track `track`'s RTX stream as a repair of `osn`, whatever it held
    /// (a hostile publisher's "repairs").
    pub fn send_rtx(&mut self, track: usize, osn: u16, payload: &[u8]) {
        let ts = self.tracks[track].timestamp;
        self.send_on_rtx(track, osn, ts, true, payload);
    }

    /// RTX: the original sequence number, then the original payload (of a simulcast stream,
    /// naming the stream it repairs).
    fn send_on_rtx(&mut self, track: usize, osn: u16, ts: u32, marker: bool, payload: &[u8]) {
        let mut body = osn.to_be_bytes().to_vec();
        body.extend_from_slice(payload);
        let t = &mut self.tracks[track];
        t.rtx_seq = t.rtx_seq.wrapping_add(1);
        if t.rtx_seq == 0 {
            t.rtx_roc += 1;
        }
        let (ssrc, rtx_seq, roc) = (t.rtx_ssrc, t.rtx_seq, t.rtx_roc);
        self.send_rtp_raw(
            ssrc,
            97,
            rtx_seq,
            roc,
            ts,
            marker,
            &body,
            None,
            Some((track, 11)),
        );
    }

    fn retransmit(&mut self, track: usize, seq: u16) {
        let t = &self.tracks[track];
        let Some((ts, marker, payload)) = self.history.get(&(t.ssrc, seq)).cloned() else {
            return;
        };
        self.send_on_rtx(track, seq, ts, marker, &payload);
        self.retransmissions_sent += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn send_rtp_raw(
        &mut self,
        ssrc: u32,
        pt: u8,
        seq: u16,
        roc: u32,
        ts: u32,
        marker: bool,
        payload: &[u8],
        audio_level: Option<u8>,
        // (track, extension id) to tag a simulcast stream's packet with its MID and RID.
        tags: Option<(usize, u8)>,
    ) {
        let (Some(ctx), Some(dest)) = (self.outbound.as_ref(), self.sfu_addr) else {
            return;
        };
        let mut buf = vec![0u8; 64 + payload.len() + SRTP_TAG_LEN];
        let mut w = HeaderWriter::new(&mut buf, marker, pt, seq, ts, ssrc);
        if let Some(level) = audio_level {
            w.extension(1, &[level]);
        }
        if let Some((track, rid_ext)) = tags
            && let Some(rid) = self.tracks[track].rid.as_deref()
        {
            w.extension(4, self.tracks[track].mid.as_bytes());
            w.extension(rid_ext, rid.as_bytes());
        }
        w.extension(3, &self.twcc_seq.to_be_bytes());
        self.twcc_seq = self.twcc_seq.wrapping_add(1);
        let hlen = w.finish();
        buf[hlen..hlen + payload.len()].copy_from_slice(payload);
        let n = ctx
            .seal_rtp(&mut buf, hlen + payload.len(), hlen, ssrc, roc, seq)
            .expect("seal");
        buf.truncate(n);
        self.outbox.push_back((dest, buf));
    }

    /// Sends one media packet on track `track` with `payload`; returns its sequence number.
    pub fn send_media(&mut self, track: usize, payload: &[u8], marker: bool, ts_step: u32) -> u16 {
        let t = &mut self.tracks[track];
        t.seq = t.seq.wrapping_add(1);
        if t.seq == 0 {
            t.roc += 1;
        }
        if marker {
            t.timestamp = t.timestamp.wrapping_add(ts_step);
        }
        let (ssrc, pt, seq, roc, ts, kind) =
            (t.ssrc, t.payload_type, t.seq, t.roc, t.timestamp, t.kind);
        if self.keep_history {
            self.history
                .insert((ssrc, seq), (ts, marker, payload.to_vec()));
        }
        let level = (kind == MediaKind::Audio).then_some(self.audio_level);
        self.send_rtp_raw(
            ssrc,
            pt,
            seq,
            roc,
            ts,
            marker,
            payload,
            level,
            Some((track, 10)),
        );
        seq
    }

    /// Sends an RTCP packet (plain bytes) protected with SRTCP.
    pub fn send_rtcp(&mut self, plain: &[u8]) {
        let (Some(ctx), Some(dest)) = (self.outbound.as_ref(), self.sfu_addr) else {
            return;
        };
        let mut buf = vec![0u8; plain.len() + SRTCP_TRAILER_LEN];
        buf[..plain.len()].copy_from_slice(plain);
        let n = ctx
            .seal_rtcp(&mut buf, plain.len(), self.srtcp_index)
            .expect("seal rtcp");
        self.srtcp_index += 1;
        buf.truncate(n);
        self.outbox.push_back((dest, buf));
    }

    /// Sends a receiver report on every incoming stream with packets since the last one: the
    /// share lost in between (RFC 3550 §6.4.1), counted before repair as browsers count it.
    pub fn send_receiver_reports(&mut self) {
        let mut blocks = Vec::new();
        for line in &self.incoming {
            let Some(pkts) = self.received.get(&line.ssrc) else {
                continue;
            };
            let (from, previous) = self.report_marks.get(&line.ssrc).copied().unwrap_or((0, 0));
            let fresh: Vec<u16> = pkts[from.min(pkts.len())..]
                .iter()
                .filter(|p| !p.repaired)
                .map(|p| p.seq)
                .collect();
            let Some(&first) = fresh.first() else {
                continue;
            };
            let base = if from == 0 {
                first.wrapping_sub(1)
            } else {
                previous
            };
            let highest = fresh
                .iter()
                .copied()
                .max_by_key(|s| s.wrapping_sub(base) as i16)
                .unwrap_or(first);
            let expected = (highest.wrapping_sub(base) as i16).max(1) as i64;
            let lost = (expected - fresh.len() as i64).max(0);
            self.report_marks.insert(line.ssrc, (pkts.len(), highest));
            blocks.push(sfu_core::rtcp_writer::ReportBlock {
                ssrc: line.ssrc,
                fraction_lost: (lost * 256 / expected).min(255) as u8,
                total_lost: 0,
                highest_ext_seq: highest as u32,
                jitter: 0,
                last_sr: 0,
                delay_since_last_sr: 0,
            });
        }
        for block in blocks {
            let mut buf = [0u8; 64];
            let n = sfu_core::rtcp_writer::receiver_report(&mut buf, &block);
            self.send_rtcp(&buf[..n]);
        }
    }

    /// Sends a REMB: its own estimate of its downlink, for every incoming stream (as a client
    /// without transport-wide feedback does).
    pub fn send_remb(&mut self, bitrate_bps: u64) {
        let ssrcs: Vec<u32> = self.incoming.iter().map(|l| l.ssrc).collect();
        let mut buf = [0u8; 64];
        let n = sfu_core::rtcp_writer::remb(&mut buf, 0x5151, bitrate_bps, &ssrcs);
        self.send_rtcp(&buf[..n]);
    }

    /// Sends a PLI for an incoming stream.
    pub fn send_pli(&mut self, media_ssrc: u32) {
        let mut buf = [0u8; 12];
        let n = sfu_core::rtcp_writer::pli(&mut buf, media_ssrc);
        self.send_rtcp(&buf[..n]);
    }

    /// Sends a NACK for lost packets of an incoming stream.
    pub fn send_nack(&mut self, media_ssrc: u32, seqs: &[u16]) {
        let mut buf = [0u8; 512];
        let n = sfu_core::rtcp_writer::nack(&mut buf, media_ssrc, seqs);
        if n > 0 {
            self.send_rtcp(&buf[..n]);
        }
    }

    /// Sequence numbers missing from an incoming stream between the first and last received.
    pub fn missing(&self, ssrc: u32) -> Vec<u16> {
        let Some(pkts) = self.received.get(&ssrc) else {
            return Vec::new();
        };
        let mut seen: Vec<i64> = Vec::new();
        let first = pkts[0].seq;
        for p in pkts {
            seen.push(p.seq.wrapping_sub(first) as i16 as i64);
        }
        seen.sort_unstable();
        seen.dedup();
        let (lo, hi) = (seen[0], *seen.last().expect("non-empty"));
        (lo..=hi)
            .filter(|d| seen.binary_search(d).is_err())
            .map(|d| first.wrapping_add(d as u16))
            .collect()
    }
}
