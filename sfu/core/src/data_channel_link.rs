//! The participant's data channels: an SCTP association (`rtc-sctp`) carried in DTLS
//! application data, with channels opened by the browser through DCEP (`rtc-datachannel`).
//!
//! The SFU relays messages between participants' channels of the same label; this type only
//! terminates the protocol and hands whole messages up.

use crate::sctp_gate::{MAX_STREAMS, SctpGate};
use crate::token_bucket::{SCTP_PACKETS_BURST, SCTP_PACKETS_PER_SECOND, TokenBucket};
use bytes::Bytes;
use rtc_datachannel::message::Message as Dcep;
use rtc_datachannel::message::message_channel_ack::DataChannelAck;
use rtc_sctp::{
    Association, AssociationHandle, DatagramEvent, Endpoint, EndpointConfig, EndpointEvent, Event,
    Payload, PayloadProtocolIdentifier, ServerConfig, StreamEvent, StreamId, TransportConfig,
};
use rtc_shared::TransportProtocol;
use rtc_shared::marshal::{Marshal, Unmarshal};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Largest message relayed; bigger ones are dropped (and counted by the caller).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Bytes queued toward a slow receiver on one channel before further messages are dropped.
const MAX_BUFFERED: usize = 1024 * 1024;
/// Channels one participant may open, and the longest label kept.
const MAX_CHANNELS: usize = 16;
const MAX_LABEL: usize = 256;

/// A message a participant sent on one of its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMessage {
    pub label: String,
    pub binary: bool,
    pub data: Vec<u8>,
}

pub struct DataChannelLink {
    endpoint: Endpoint,
    association: Option<(AssociationHandle, Association)>,
    /// Open channels: stream id → label.
    channels: HashMap<StreamId, String>,
    /// SCTP packets to hand to DTLS.
    outgoing: VecDeque<Bytes>,
    received: VecDeque<DataMessage>,
    /// Messages dropped as they came in: too large, or on a stream without a channel.
    pub oversized: u64,
    /// Messages not queued because the receiver's buffer was full.
    pub dropped_backlog: u64,
    /// SCTP packets the association never saw: refused by the gate (`sctp_gate.rs`), or past
    /// the session's budget.
    refused_packets: u64,
    gate: SctpGate,
    budget: TokenBucket,
    /// The association told the endpoint itself that it is done (it shut down or failed): the
    /// endpoint freed its entry, which a later association may take under the same handle.
    drained: bool,
}

impl std::fmt::Debug for DataChannelLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataChannelLink")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl DataChannelLink {
    pub fn new(local: SocketAddr) -> Self {
        Self {
            endpoint: Endpoint::new(
                local,
                TransportProtocol::UDP,
                Arc::new(EndpointConfig::default()),
                Some(Arc::new(ServerConfig::new(
                    TransportConfig::default()
                        .with_max_num_inbound_streams(MAX_STREAMS)
                        .with_max_num_outbound_streams(MAX_STREAMS),
                ))),
            ),
            association: None,
            channels: HashMap::new(),
            outgoing: VecDeque::new(),
            received: VecDeque::new(),
            oversized: 0,
            dropped_backlog: 0,
            refused_packets: 0,
            gate: SctpGate::new(),
            budget: TokenBucket::new(SCTP_PACKETS_PER_SECOND, SCTP_PACKETS_BURST),
            drained: false,
        }
    }

    /// An SCTP packet that arrived as DTLS application data.
    pub fn handle_packet(&mut self, now: Instant, remote: SocketAddr, packet: &[u8]) {
        if !self.budget.take(now, 1.0) || self.gate.admit(now, packet).is_err() {
            self.refused_packets += 1;
            return;
        }
        let Some((handle, event)) =
            self.endpoint
                .handle(now, remote, None, Bytes::copy_from_slice(packet))
        else {
            return;
        };
        match event {
            DatagramEvent::NewAssociation(association) => {
                // One association per DTLS connection (RFC 8261): a new one replaces the old,
                // which the endpoint forgets (it would keep each one's entry otherwise) —
                // unless it was freed already, and its handle may be the new one's.
                if let Some((old, _)) = self.association.replace((handle, association))
                    && !self.drained
                    && old != handle
                {
                    self.endpoint.handle_event(old, EndpointEvent::drained());
                }
                self.drained = false;
                self.channels.clear();
            }
            DatagramEvent::AssociationEvent(event) => {
                if let Some((h, a)) = self.association.as_mut()
                    && *h == handle
                {
                    a.handle_event(event);
                }
            }
            _ => {}
        }
        self.drive(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, a)) = self.association.as_mut() {
            a.handle_timeout(now);
        }
        self.drive(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.association
            .as_ref()
            .and_then(|(_, a)| a.poll_timeout())
    }

    /// Next SCTP packet for the DTLS connection.
    pub fn poll_outgoing(&mut self) -> Option<Bytes> {
        self.outgoing.pop_front()
    }

    pub fn poll_message(&mut self) -> Option<DataMessage> {
        self.received.pop_front()
    }

    /// Messages dropped (too large, on a stream no channel was opened on, or a receiver's
    /// backlog full) since the last call.
    pub fn take_drops(&mut self) -> u64 {
        std::mem::take(&mut self.oversized) + std::mem::take(&mut self.dropped_backlog)
    }

    /// SCTP packets refused unread since the last call.
    pub fn take_refused_packets(&mut self) -> u64 {
        std::mem::take(&mut self.refused_packets)
    }

    /// Sends a message on the open channel with `label` (the first, if several have it).
    /// Returns whether one existed.
    pub fn send(&mut self, now: Instant, label: &str, binary: bool, data: &[u8]) -> bool {
        let Some((_, a)) = self.association.as_mut() else {
            return false;
        };
        // One copy per label, on its first channel: a receiver opening the same label on many
        // channels (and reading none) would have the SFU hold a backlog for each.
        let first: Option<StreamId> = self
            .channels
            .iter()
            .filter(|(_, l)| l.as_str() == label)
            .map(|(id, _)| *id)
            .min();
        let ppi = match (binary, data.is_empty()) {
            (true, false) => PayloadProtocolIdentifier::Binary,
            (true, true) => PayloadProtocolIdentifier::BinaryEmpty,
            (false, false) => PayloadProtocolIdentifier::String,
            (false, true) => PayloadProtocolIdentifier::StringEmpty,
        };
        // SCTP cannot carry an empty message: a single zero byte stands in (RFC 8831 §6.6).
        let payload = if data.is_empty() {
            Bytes::from_static(&[0])
        } else {
            Bytes::copy_from_slice(data)
        };
        let mut sent = false;
        if let Some(id) = first
            && let Ok(mut stream) = a.stream(id)
        {
            // A receiver that does not keep up loses messages rather than the SFU its memory.
            if stream.buffered_amount().unwrap_or(0) > MAX_BUFFERED {
                self.dropped_backlog += 1;
            } else {
                sent = stream.write_sctp(now, &payload, ppi).is_ok();
            }
        }
        self.drive(now);
        sent
    }

    fn drive(&mut self, now: Instant) {
        let Some((handle, a)) = self.association.as_mut() else {
            return;
        };
        // Streams are read by id as they become readable; the library's queue of new ones
        // is emptied so that it does not grow with each stream a peer resets and opens again.
        while a.accept_stream().is_some() {}
        let mut readable = Vec::new();
        while let Some(event) = a.poll() {
            match event {
                Event::Stream(StreamEvent::Readable { id })
                | Event::Stream(StreamEvent::Opened { id }) => readable.push(id),
                // One stream's end (the peer reset it, closing its channel): that channel only.
                Event::AssociationLost { id, .. } => {
                    self.channels.remove(&id);
                }
                _ => {}
            }
        }
        for id in readable {
            loop {
                let Ok(mut stream) = a.stream(id) else {
                    break;
                };
                let Ok(Some(chunks)) = stream.read_sctp() else {
                    break;
                };
                let ppi = chunks.ppi;
                let Ok(payload) = chunks.to_payload(MAX_MESSAGE) else {
                    self.oversized += 1;
                    continue;
                };
                match ppi {
                    PayloadProtocolIdentifier::Dcep => {
                        let mut buf = &payload[..];
                        if let Ok(Dcep::DataChannelOpen(open)) = Dcep::unmarshal(&mut buf)
                            && open.label.len() <= MAX_LABEL
                            && (self.channels.len() < MAX_CHANNELS
                                || self.channels.contains_key(&id))
                        {
                            let label = String::from_utf8_lossy(&open.label).into_owned();
                            self.channels.insert(id, label);
                            if let Ok(ack) = Dcep::DataChannelAck(DataChannelAck {}).marshal()
                                && let Ok(mut stream) = a.stream(id)
                            {
                                let _ = stream.write_sctp(
                                    now,
                                    &ack.freeze(),
                                    PayloadProtocolIdentifier::Dcep,
                                );
                            }
                        }
                    }
                    PayloadProtocolIdentifier::String
                    | PayloadProtocolIdentifier::Binary
                    | PayloadProtocolIdentifier::StringEmpty
                    | PayloadProtocolIdentifier::BinaryEmpty => {
                        let Some(label) = self.channels.get(&id) else {
                            // Negotiated channels (no DCEP open) are not relayed.
                            self.oversized += 1;
                            continue;
                        };
                        if payload.len() > MAX_MESSAGE {
                            self.oversized += 1;
                            continue;
                        }
                        let empty = matches!(
                            ppi,
                            PayloadProtocolIdentifier::StringEmpty
                                | PayloadProtocolIdentifier::BinaryEmpty
                        );
                        self.received.push_back(DataMessage {
                            label: label.clone(),
                            binary: matches!(
                                ppi,
                                PayloadProtocolIdentifier::Binary
                                    | PayloadProtocolIdentifier::BinaryEmpty
                            ),
                            data: if empty { Vec::new() } else { payload.to_vec() },
                        });
                    }
                    _ => {}
                }
            }
        }
        while let Some(event) = a.poll_endpoint_event() {
            if event.is_drained() {
                // Once: the endpoint's entry is gone after it.
                if self.drained {
                    continue;
                }
                self.drained = true;
            }
            self.endpoint.handle_event(*handle, event);
        }
        while let Some(t) = a.poll_transmit(now) {
            if let Payload::RawEncode(raws) = t.message {
                for raw in &raws {
                    self.gate.sent(raw);
                }
                self.outgoing.extend(raws);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_datachannel::message::message_channel_open::DataChannelOpen;
    use rtc_sctp::ClientConfig;
    use std::time::Duration;

    /// A browser's side of the association, by the same library.
    struct Browser {
        endpoint: Endpoint,
        handle: AssociationHandle,
        association: Association,
    }

    const SFU: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);

    impl Browser {
        fn connect(now: Instant) -> Self {
            let mut endpoint = Endpoint::new(
                "127.0.0.2:5000".parse().unwrap(),
                TransportProtocol::UDP,
                Arc::new(EndpointConfig::default()),
                None,
            );
            let (handle, association) =
                endpoint.connect(now, ClientConfig::default(), SFU).unwrap();
            Self {
                endpoint,
                handle,
                association,
            }
        }

        /// Packets both ways until neither side has more.
        fn exchange(&mut self, now: Instant, sfu: &mut DataChannelLink) {
            for _ in 0..50 {
                let mut moved = false;
                while let Some(t) = self.association.poll_transmit(now) {
                    if let Payload::RawEncode(raws) = t.message {
                        for raw in raws {
                            sfu.handle_packet(now, "127.0.0.2:5000".parse().unwrap(), &raw);
                            moved = true;
                        }
                    }
                }
                while let Some(packet) = sfu.poll_outgoing() {
                    moved = true;
                    if let Some((h, DatagramEvent::AssociationEvent(e))) =
                        self.endpoint.handle(now, SFU, None, packet)
                        && h == self.handle
                    {
                        self.association.handle_event(e);
                    }
                }
                while self.association.poll().is_some() {}
                while let Some(e) = self.association.poll_endpoint_event() {
                    self.endpoint.handle_event(self.handle, e);
                }
                if !moved {
                    return;
                }
            }
        }

        fn open(&mut self, now: Instant, id: StreamId, label: &str) {
            let open = Dcep::DataChannelOpen(DataChannelOpen {
                channel_type: Default::default(),
                priority: 256,
                reliability_parameter: 0,
                label: label.as_bytes().to_vec(),
                protocol: Vec::new(),
            })
            .marshal()
            .unwrap();
            self.association
                .open_stream(id, PayloadProtocolIdentifier::Dcep)
                .unwrap()
                .write_sctp(now, &open.freeze(), PayloadProtocolIdentifier::Dcep)
                .unwrap();
        }

        fn send(&mut self, now: Instant, id: StreamId, text: &str) {
            self.association
                .stream(id)
                .unwrap()
                .write_sctp(
                    now,
                    &Bytes::copy_from_slice(text.as_bytes()),
                    PayloadProtocolIdentifier::String,
                )
                .unwrap();
        }
    }

    fn texts(sfu: &mut DataChannelLink) -> Vec<String> {
        std::iter::from_fn(|| sfu.poll_message())
            .map(|m| String::from_utf8(m.data).unwrap())
            .collect()
    }

    /// A channel on a stream id channels use carries messages; one on a stream id past the cap
    /// is refused before the association makes a stream for it (it would scan every such
    /// stream for each chunk after), and counted; the association goes on working.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test's starting point in time
    fn streams_past_the_cap_never_reach_the_association() {
        let mut now = Instant::now();
        let mut sfu = DataChannelLink::new(SFU);
        let mut browser = Browser::connect(now);
        browser.exchange(now, &mut sfu);
        browser.open(now, 1, "room");
        browser.send(now, 1, "hand");
        browser.exchange(now, &mut sfu);
        assert_eq!(texts(&mut sfu), ["hand"]);
        assert_eq!(sfu.take_refused_packets(), 0);

        browser.open(now, 5000, "flood");
        browser.send(now, 5000, "x");
        browser.exchange(now, &mut sfu);
        assert!(sfu.take_refused_packets() >= 1);
        assert_eq!(sfu.channels.len(), 1, "no channel past the cap");
        let (_, a) = sfu.association.as_mut().unwrap();
        assert!(a.stream(5000).is_err(), "no stream made for it");

        // The browser retransmits what was refused; its next message on the good channel
        // still arrives (the refused chunk holds nothing up on another stream, unordered).
        now += Duration::from_secs(4);
        browser.association.handle_timeout(now);
        browser.send(now, 1, "still here");
        browser.exchange(now, &mut sfu);
        assert!(texts(&mut sfu).contains(&"still here".to_owned()));
    }

    /// A receiver with several channels of one label gets each message once, on the first:
    /// the SFU holds one backlog per label, not one per channel a peer chose to open.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test's starting point in time
    fn a_label_open_on_several_channels_receives_each_message_once() {
        let now = Instant::now();
        let mut sfu = DataChannelLink::new(SFU);
        let mut browser = Browser::connect(now);
        browser.exchange(now, &mut sfu);
        for id in [1, 3, 5] {
            browser.open(now, id, "room");
        }
        browser.exchange(now, &mut sfu);
        assert!(sfu.send(now, "room", false, b"hello"));
        browser.exchange(now, &mut sfu);
        let received: Vec<StreamId> = [1, 3, 5]
            .into_iter()
            .flat_map(|id| {
                let mut s = browser.association.stream(id).unwrap();
                std::iter::from_fn(move || s.read_sctp().ok().flatten())
                    .filter(|c| c.ppi == PayloadProtocolIdentifier::String)
                    .map(move |_| id)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(received, [1]);
    }

    /// A browser closing one of its channels resets its stream (RE-CONFIG): the reset passes
    /// the gate once its data is acknowledged, that channel ends, and the others carry on.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test's starting point in time
    fn a_closed_channel_ends_alone() {
        let mut now = Instant::now();
        let mut sfu = DataChannelLink::new(SFU);
        let mut browser = Browser::connect(now);
        browser.exchange(now, &mut sfu);
        browser.open(now, 1, "room");
        browser.open(now, 3, "other");
        browser.send(now, 3, "bye soon");
        browser.exchange(now, &mut sfu);
        assert_eq!(texts(&mut sfu), ["bye soon"]);
        browser.association.stream(3).unwrap().close(now).unwrap();
        // (A reset sent before the SFU acknowledged its data waits for the retransmission.)
        for _ in 0..5 {
            browser.exchange(now, &mut sfu);
            now += Duration::from_secs(2);
            browser.association.handle_timeout(now);
            sfu.handle_timeout(now);
        }
        assert!(
            !sfu.send(now, "other", false, b"x"),
            "the closed channel has ended"
        );
        assert!(sfu.send(now, "room", false, b"x"), "the other is open");
        browser.send(now, 1, "still here");
        browser.exchange(now, &mut sfu);
        assert_eq!(texts(&mut sfu), ["still here"]);
    }

    /// A browser's new association (a new INIT) replaces the old one, which the endpoint
    /// forgets; the new one carries messages. Again and again, the endpoint holds one.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test's starting point in time
    fn a_new_association_replaces_the_old_one() {
        let now = Instant::now();
        let mut sfu = DataChannelLink::new(SFU);
        for round in 0..20u16 {
            let mut browser = Browser::connect(now);
            browser.exchange(now, &mut sfu);
            browser.open(now, 1, "room");
            let text = format!("round {round}");
            browser.send(now, 1, &text);
            browser.exchange(now, &mut sfu);
            assert_eq!(texts(&mut sfu), [text]);
        }
    }

    /// Past a session's budget, packets are refused unread and counted; the budget refills.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test's starting point in time
    fn packets_past_the_budget_are_refused() {
        let now = Instant::now();
        let mut sfu = DataChannelLink::new(SFU);
        // A well-formed packet with no chunks: read (and ignored) while the budget lasts.
        let empty = [0x13, 0x88, 0x13, 0x88, 0, 0, 0, 1, 0, 0, 0, 0];
        let remote = "127.0.0.2:5000".parse().unwrap();
        for _ in 0..SCTP_PACKETS_BURST as usize + 100 {
            sfu.handle_packet(now, remote, &empty);
        }
        assert_eq!(sfu.take_refused_packets(), 100);
        sfu.handle_packet(now + Duration::from_secs(1), remote, &empty);
        assert_eq!(sfu.take_refused_packets(), 0);
    }
}
