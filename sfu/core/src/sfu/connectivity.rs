//! Datagrams in: STUN (ICE-lite), DTLS and the data channels it carries, and the demultiplexing
//! of media and RTCP to the participant an address belongs to.

use super::*;
use crate::downlink::Downlink;
use crate::peer_transport::{CloseCause, TransportEvent};
use crate::rtp_header::{PacketClass, classify};
use crate::sender_stamp::Stamped;
use crate::transmit_batch::TransmitBatch;
use sfu_proto::{DisconnectReason, Event};
use std::net::SocketAddr;
use std::time::Instant;

impl Sfu {
    // ----- datagrams ----------------------------------------------------------------------

    /// One received datagram. `buf` is the worker's receive buffer and is decrypted in place.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        out: &mut TransmitBatch,
    ) {
        self.clock = Some(now);
        self.counters.packets_in += 1;
        self.counters.bytes_in += buf.len() as u64;
        match classify(buf) {
            PacketClass::Stun => self.handle_stun(now, from, buf, out),
            PacketClass::Dtls => match self.by_addr.get(&from) {
                Some(&idx) => self.handle_dtls(now, idx, buf, out),
                None => self.hold_early_dtls(from, buf),
            },
            PacketClass::Rtp => match self.by_addr.get(&from) {
                Some(&idx) => self.handle_rtp(now, idx, buf, out),
                None => self.counters.dropped_unknown_source += 1,
            },
            PacketClass::Rtcp => match self.by_addr.get(&from) {
                Some(&idx) => self.handle_rtcp(now, idx, buf, out),
                None => self.counters.dropped_unknown_source += 1,
            },
            PacketClass::Unknown => self.counters.dropped_malformed += 1,
        }
    }

    pub(super) fn handle_stun(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &[u8],
        out: &mut TransmitBatch,
    ) {
        // Checks name the participant by ufrag; answers to the session's own checks (which
        // prove an address before media goes there) carry none, and are routed by their
        // transaction id, not by where they come from: another session may have had the SFU
        // check that address too.
        let ufrag = stun_username_ufrag(buf);
        let idx = match ufrag {
            Some(ufrag) => self.by_ufrag.get(ufrag).copied(),
            None => stun_transaction_id(buf).and_then(|txn| self.by_probe_txn.get(&txn).copied()),
        };
        let Some(idx) = idx else {
            self.counters.dropped_unknown_source += 1;
            return;
        };
        // (Answers to our own checks come no faster than we send them. Checks from the path in
        // use are not counted: they carry its consent, and the USERNAME that finds the session
        // travels in the clear — a stranger's unsigned checks from elsewhere must not use up
        // the budget they need. From there, answers go only to the session's own address.)
        let p = self.participant_mut(idx);
        if let Some(ufrag) = ufrag
            && p.remote != Some(from)
        {
            let current = p.ufrags.last().is_none_or(|u| u == ufrag);
            let budget = if current {
                &mut p.stun_budget
            } else {
                &mut p.stun_budget_before_restart
            };
            if !budget.take(now, 1.0) {
                self.counters.stun_refused += 1;
                return;
            }
        }
        if !self
            .participant_mut(idx)
            .transport
            .handle_stun(now, from, buf)
        {
            self.counters.stun_refused += 1;
        }
        self.drive_transport(now, idx, out);
    }

    /// A DTLS handshake record from the address a session nominated last and is proving
    /// (see `Participant::early_dtls`) waits for the check's answer; anything else from an
    /// unknown source is dropped. Every session that checked the address and is proving it
    /// keeps a copy: another session may have had the SFU check the same address (a forged
    /// nomination), and must not take the flight from the one it belongs to.
    fn hold_early_dtls(&mut self, from: SocketAddr, buf: &[u8]) {
        let mut kept = false;
        // (Content type 22: a handshake record; the first flight is nothing else.)
        if buf[0] == 22
            && let Some(sessions) = self.by_probe_addr.get(&from)
        {
            for &idx in sessions {
                let Some(p) = self.participants[idx].as_mut() else {
                    continue;
                };
                if p.outbound.is_some() || !p.transport.is_proving(from) {
                    continue;
                }
                let (addr, held) = p.early_dtls.get_or_insert_with(|| (from, Vec::new()));
                if *addr != from {
                    *addr = from;
                    held.clear();
                }
                let bytes: usize = held.iter().map(|d| d.len()).sum();
                if held.len() < MAX_EARLY_DTLS && bytes + buf.len() <= MAX_EARLY_DTLS_BYTES {
                    held.push(buf.into());
                    kept = true;
                }
            }
        }
        if !kept {
            self.counters.dropped_unknown_source += 1;
        }
    }

    pub(super) fn handle_dtls(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        buf: &[u8],
        out: &mut TransmitBatch,
    ) {
        let transport = &mut self.participant_mut(idx).transport;
        let accepted = transport.handle_dtls(now, buf);
        self.counters.sctp_packets_refused += transport.take_sctp_refused();
        if !accepted {
            self.counters.dropped_malformed += 1;
        }
        self.drive_transport(now, idx, out);
        self.relay_data_messages(now, idx, out);
    }

    /// Sends what a transport queued and applies its events.
    pub(super) fn drive_transport(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        out: &mut TransmitBatch,
    ) {
        let mut closed = None;
        let mut secured = false;
        let mut moved = false;
        let mut proven = None;
        {
            let Some(p) = self.participants[idx].as_mut() else {
                return;
            };
            while let Some((dest, datagram)) = p.transport.poll_transmit() {
                // A check of ours (binding request): its answer is routed by transaction id.
                if datagram.starts_with(&[0x00, 0x01])
                    && let Some(txn) = stun_transaction_id(&datagram)
                {
                    if p.probes.len() >= MAX_ROUTED_PROBES {
                        let (old_addr, old_txn) = p.probes.remove(0);
                        if self.by_probe_txn.get(&old_txn) == Some(&idx) {
                            self.by_probe_txn.remove(&old_txn);
                        }
                        if !p.probes.iter().any(|(a, _)| *a == old_addr) {
                            forget_probed_addr(&mut self.by_probe_addr, old_addr, idx);
                        }
                    }
                    p.probes.push((dest, txn));
                    self.by_probe_txn.insert(txn, idx);
                    // The sessions that checked an address, the latest last.
                    let sessions = self.by_probe_addr.entry(dest).or_default();
                    sessions.retain(|&s| s != idx);
                    if sessions.len() >= MAX_SESSIONS_PER_PROBED_ADDR {
                        sessions.remove(0);
                    }
                    sessions.push(idx);
                }
                out.push(dest, &datagram);
            }
            while let Some(event) = p.transport.poll_event() {
                match event {
                    TransportEvent::RemoteAddress(addr) => {
                        if let Some(old) = p.remote.replace(addr) {
                            self.counters.path_changes += 1;
                            moved = p.outbound.is_some();
                            // Another network (Wi-Fi to cellular): its capacity is unknown,
                            // and what was lost on the old one says nothing about it.
                            // (What waits in its pacer was numbered already: it leaves on the
                            // new path at the next pass, unpaced, rather than leave a gap.)
                            let mut pacer = std::mem::take(&mut p.downlink.pacer);
                            pacer.pace(None);
                            p.downlink = Downlink::new(now);
                            p.downlink.pacer = pacer;
                            if self.by_addr.get(&old) == Some(&idx) {
                                self.by_addr.remove(&old);
                            }
                        }
                        self.by_addr.insert(addr, idx);
                        proven = Some(addr);
                    }
                    TransportEvent::Secured { outbound, inbound } => {
                        p.outbound = Some(outbound);
                        p.inbound = Some(inbound);
                        p.early_dtls = None;
                        secured = true;
                    }
                    TransportEvent::Closed(cause) => closed = Some(cause),
                }
            }
        }
        if secured {
            let p = self.participant_mut(idx);
            let participant = p.id.clone();
            let session = p.session;
            self.events.push_back(Event::Connected {
                participant,
                session,
            });
        }
        // A new session, or one whose path moved (what was sent to the old path is lost):
        // its decoders need keyframes.
        if secured || moved {
            self.request_keyframes_for(now, idx, out);
        }
        // And after a move, so do the decoders of what it publishes: its packets sent into the
        // dead path never arrived.
        if moved {
            let published = self.participant(idx).published.clone();
            for t in published {
                self.request_track_keyframes(now, t, out);
            }
        }
        if let Some(cause) = closed {
            let reason = match cause {
                CloseCause::ConsentTimeout => DisconnectReason::ConsentTimeout,
                CloseCause::DtlsClosed | CloseCause::DtlsFailed => {
                    DisconnectReason::TransportClosed
                }
            };
            self.remove_participant(now, idx, reason, out);
        } else {
            self.schedule_transport(idx);
            // What the client sent from there before it was proven is read now (and what
            // came from an address that was not proven, dropped).
            let early = self.participants[idx]
                .as_mut()
                .filter(|_| proven.is_some())
                .and_then(|p| p.early_dtls.take())
                .filter(|(addr, _)| Some(*addr) == proven);
            for datagram in early.map(|(_, held)| held).unwrap_or_default() {
                // (A datagram before may have ended the session: a failed handshake.)
                if self.participants[idx].is_none() {
                    break;
                }
                self.counters.dtls_held_until_proven += 1;
                self.handle_dtls(now, idx, &datagram, out);
            }
        }
    }

    /// Messages a participant sent on its data channels go to the channels of the same label
    /// of everyone else in the room, under the same permissions as media; a JSON object names
    /// its real sender in `from`.
    pub(super) fn relay_data_messages(
        &mut self,
        now: Instant,
        idx: ParticipantIdx,
        out: &mut TransmitBatch,
    ) {
        loop {
            let Some(p) = self.participants[idx].as_mut() else {
                return;
            };
            self.counters.data_messages_dropped += p.transport.take_data_drops();
            let Some(msg) = p.transport.poll_data_message() else {
                return;
            };
            self.counters.data_messages_in += 1;
            if !p.permissions.publish {
                self.counters.dropped_blocked += 1;
                continue;
            }
            if !p.data_budget.take(now, msg.data.len()) {
                self.counters.data_messages_dropped += 1;
                continue;
            }
            // (The sender's real id in place of its own claim: sender_stamp.rs.)
            let data = match msg.binary {
                true => msg.data,
                false => match crate::sender_stamp::stamp_sender(&msg.data, p.id.as_str()) {
                    Stamped::Object(stamped) => stamped,
                    Stamped::AsItIs => msg.data,
                    Stamped::Refused => {
                        self.counters.data_messages_dropped += 1;
                        continue;
                    }
                },
            };
            let room = p.room.clone();
            let members = self.room_members(&room);
            for m in members {
                if m == idx {
                    continue;
                }
                let Some(r) = self.participants[m].as_mut() else {
                    continue;
                };
                let sent = r.permissions.subscribe
                    && r.transport.send_data(now, &msg.label, msg.binary, &data);
                self.counters.data_messages_dropped += r.transport.take_data_drops();
                if sent {
                    self.counters.data_messages_out += 1;
                    self.drive_transport(now, m, out);
                }
            }
        }
    }
}

/// Takes `idx` off the sessions that checked `addr`.
pub(super) fn forget_probed_addr(
    by_probe_addr: &mut FxHashMap<SocketAddr, Vec<ParticipantIdx>>,
    addr: SocketAddr,
    idx: ParticipantIdx,
) {
    if let Some(sessions) = by_probe_addr.get_mut(&addr) {
        sessions.retain(|&s| s != idx);
        if sessions.is_empty() {
            by_probe_addr.remove(&addr);
        }
    }
}

/// The 96-bit transaction id of a STUN message (RFC 5389 §6).
fn stun_transaction_id(datagram: &[u8]) -> Option<[u8; 12]> {
    datagram.get(8..20)?.try_into().ok()
}

/// Decides which of a participant's datagrams matter; keeps ufrag parsing out of the hot path.
fn stun_username_ufrag(datagram: &[u8]) -> Option<&str> {
    // RFC 5389: 20-byte header, then TLV attributes; USERNAME is 0x0006 ("ours:theirs").
    if datagram.len() < 20 || datagram[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let mut pos = 20;
    while pos + 4 <= datagram.len() {
        let typ = u16::from_be_bytes([datagram[pos], datagram[pos + 1]]);
        let len = u16::from_be_bytes([datagram[pos + 2], datagram[pos + 3]]) as usize;
        let value = datagram.get(pos + 4..pos + 4 + len)?;
        if typ == 0x0006 {
            let s = std::str::from_utf8(value).ok()?;
            return s.split(':').next();
        }
        pos += 4 + len.div_ceil(4) * 4;
    }
    None
}
