//! The participant's data channels: an SCTP association (`rtc-sctp`) carried in DTLS
//! application data, with channels opened by the browser through DCEP (`rtc-datachannel`).
//!
//! The SFU relays messages between participants' channels of the same label; this type only
//! terminates the protocol and hands whole messages up.

use bytes::Bytes;
use rtc_datachannel::message::Message as Dcep;
use rtc_datachannel::message::message_channel_ack::DataChannelAck;
use rtc_sctp::{
    Association, AssociationHandle, DatagramEvent, Endpoint, EndpointConfig, Event, Payload,
    PayloadProtocolIdentifier, ServerConfig, StreamEvent, StreamId, TransportConfig,
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
    pub oversized: u64,
    /// Messages not queued because the receiver's buffer was full.
    pub dropped_backlog: u64,
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
                Some(Arc::new(ServerConfig::new(TransportConfig::default()))),
            ),
            association: None,
            channels: HashMap::new(),
            outgoing: VecDeque::new(),
            received: VecDeque::new(),
            oversized: 0,
            dropped_backlog: 0,
        }
    }

    /// An SCTP packet that arrived as DTLS application data.
    pub fn handle_packet(&mut self, now: Instant, remote: SocketAddr, packet: &[u8]) {
        let Some((handle, event)) =
            self.endpoint
                .handle(now, remote, None, Bytes::copy_from_slice(packet))
        else {
            return;
        };
        match event {
            DatagramEvent::NewAssociation(association) => {
                // One association per DTLS connection (RFC 8261): a new one replaces the old.
                self.association = Some((handle, association));
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

    /// Messages dropped (too large, or a receiver's backlog full) since the last call.
    pub fn take_drops(&mut self) -> u64 {
        std::mem::take(&mut self.oversized) + std::mem::take(&mut self.dropped_backlog)
    }

    /// Sends a message on every open channel with `label`. Returns whether one existed.
    pub fn send(&mut self, now: Instant, label: &str, binary: bool, data: &[u8]) -> bool {
        let Some((_, a)) = self.association.as_mut() else {
            return false;
        };
        let ids: Vec<StreamId> = self
            .channels
            .iter()
            .filter(|(_, l)| l.as_str() == label)
            .map(|(id, _)| *id)
            .collect();
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
        for id in ids {
            let Ok(mut stream) = a.stream(id) else {
                continue;
            };
            // A receiver that does not keep up loses messages rather than the SFU its memory.
            if stream.buffered_amount().unwrap_or(0) > MAX_BUFFERED {
                self.dropped_backlog += 1;
                continue;
            }
            if stream.write_sctp(now, &payload, ppi).is_ok() {
                sent = true;
            }
        }
        self.drive(now);
        sent
    }

    fn drive(&mut self, now: Instant) {
        let Some((handle, a)) = self.association.as_mut() else {
            return;
        };
        let mut readable = Vec::new();
        while let Some(event) = a.poll() {
            match event {
                Event::Stream(StreamEvent::Readable { id })
                | Event::Stream(StreamEvent::Opened { id }) => readable.push(id),
                Event::AssociationLost { .. } => self.channels.clear(),
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
                let Ok(payload) = chunks.to_payload(256 * 1024) else {
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
            self.endpoint.handle_event(*handle, event);
        }
        while let Some(t) = a.poll_transmit(now) {
            if let Payload::RawEncode(raws) = t.message {
                self.outgoing.extend(raws);
            }
        }
    }
}
