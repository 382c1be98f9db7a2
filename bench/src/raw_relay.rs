//! The ceiling: a minimal UDP relay with no crypto and no parsing beyond the source address
//! and the payload type — `recvmmsg` in, `sendmmsg` out to every other member of the sender's
//! group. Lower simulcast layers (by payload type) are received and not forwarded, as an SFU
//! forwards one layer per subscriber; so it forwards the same packet pattern as the SFU and
//! shows what this machine can move at all.
//!
//! With `--srtp` it also does the cryptography SRTP requires of any SFU (DESIGN's "bare relay
//! plus AES-GCM open + seal per copy"): AES-128-GCM over every packet in, as the open with
//! the sender's keys costs, and a seal of every copy out with its receiver's own keys. So the
//! gap between it and ours is our own code, not the work RFC 7714 mandates. The sealed copy
//! is made in a scratch buffer and the clear packet sent, so receivers still read the stamps
//! the harness measures latency by; that costs the relay one extra copy per packet out.
//!
//! Members register with `JOIN <group> <pub|sub>` from the socket they use.

use crate::generator::{RELAY_JOIN, RELAY_LOWER_LAYER_PTS};
use sfu_core::TransmitBatch;
use sfu_core::rtp_header::RtpHeader;
use sfu_core::srtp_context::{MasterKey, SRTP_TAG_LEN, SrtpContext};
use sfu_core::transmit_batch::SLOT_SIZE;
use sfu_server::udp_batch::UdpBatch;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// One member of a group: where it receives, and (with `--srtp`) its own keys.
struct Member {
    addr: SocketAddr,
    keys: Option<Box<SrtpContext>>,
}

#[derive(Default)]
pub struct RawRelay {
    groups: HashMap<u32, Vec<Member>>,
    /// A member's group and its place in it.
    member_of: HashMap<SocketAddr, (u32, usize)>,
    /// Set with `--srtp`: where packets are sealed.
    scratch: Option<Vec<u8>>,
    pub forwarded: u64,
    pub received: u64,
    /// Packets sealed (`--srtp`): one per packet in, one per copy out.
    pub sealed: u64,
}

impl RawRelay {
    /// A relay that also does SRTP's AES-GCM work per packet in and per copy out.
    pub fn with_srtp() -> Self {
        Self {
            scratch: Some(vec![0; SLOT_SIZE]),
            ..Self::default()
        }
    }

    /// Handles one datagram, queueing its copies in `out`.
    pub fn handle(&mut self, from: SocketAddr, data: &[u8], out: &mut TransmitBatch) {
        self.received += 1;
        if let Some(rest) = data.strip_prefix(RELAY_JOIN) {
            let text = String::from_utf8_lossy(rest);
            if let Some(group) = text.split_whitespace().next().and_then(|g| g.parse().ok())
                && !self.member_of.contains_key(&from)
            {
                let members = self.groups.entry(group).or_default();
                self.member_of.insert(from, (group, members.len()));
                // Keys differ per member, as DTLS-SRTP's do; their values do not matter here.
                // (Without them relay-srtp would measure the plain relay under its name.)
                let keys = self.scratch.as_ref().map(|_| {
                    let n = self.member_of.len() as u8;
                    let provider = rtc_crypto::default_provider().expect("ring crypto provider");
                    let master = MasterKey {
                        key: [n; 16],
                        salt: [n ^ 0x5a; 12],
                    };
                    Box::new(SrtpContext::new(provider.crypto(), &master).expect("SRTP keys"))
                });
                members.push(Member { addr: from, keys });
            }
            return;
        }
        let Some(&(group, me)) = self.member_of.get(&from) else {
            return;
        };
        let members = &self.groups[&group];
        // Every packet in is opened, forwarded or not (ours opens and caches lower layers).
        if let Some(scratch) = self.scratch.as_mut()
            && seal_copy(members[me].keys.as_deref(), data, scratch)
        {
            self.sealed += 1;
        }
        if data
            .get(1)
            .is_some_and(|b| RELAY_LOWER_LAYER_PTS.contains(&(b & 0x7f)))
        {
            return;
        }
        for (i, member) in members.iter().enumerate() {
            if i != me {
                out.push(member.addr, data);
                self.forwarded += 1;
                if let Some(scratch) = self.scratch.as_mut()
                    && seal_copy(member.keys.as_deref(), data, scratch)
                {
                    self.sealed += 1;
                }
            }
        }
    }

    /// Serves on `listen` until the process is killed; prints the bound address first.
    pub fn serve(listen: SocketAddr, srtp: bool) -> std::io::Result<()> {
        let mut socket = UdpBatch::bind(listen)?;
        println!("relay listening on {}", socket.local_addr()?);
        let mut relay = if srtp {
            RawRelay::with_srtp()
        } else {
            RawRelay::default()
        };
        let mut out = TransmitBatch::with_capacity(512);
        loop {
            if !socket.wait_readable(Duration::from_millis(100)) {
                continue;
            }
            loop {
                let n = socket.recv_batch(|from, buf| relay.handle(from, buf, &mut out))?;
                if !out.is_empty() {
                    socket.send_batch(&out);
                    out.clear();
                }
                if n == 0 {
                    break;
                }
            }
        }
    }
}

/// Seals a copy of the RTP packet `data` with `keys` in `scratch` (the AES-GCM work of an
/// SRTP open or seal of it). False when there was nothing to seal.
fn seal_copy(keys: Option<&SrtpContext>, data: &[u8], scratch: &mut [u8]) -> bool {
    let (Some(keys), Ok(header)) = (keys, RtpHeader::parse(data)) else {
        return false;
    };
    if data.len() + SRTP_TAG_LEN > scratch.len() {
        return false;
    }
    scratch[..data.len()].copy_from_slice(data);
    keys.seal_rtp(
        scratch,
        data.len(),
        header.header_len,
        header.ssrc,
        0,
        header.sequence_number,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_go_to_every_other_member_of_the_group() {
        let mut r = RawRelay::default();
        let mut out = TransmitBatch::new();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        for (addr, g) in [(a, 1), (b, 1), (c, 1), (other, 2)] {
            r.handle(addr, format!("JOIN {g} pub").as_bytes(), &mut out);
        }
        assert!(out.is_empty());
        r.handle(a, &[0x80, 96, 0, 1], &mut out);
        let dests: Vec<SocketAddr> = (0..out.len()).map(|i| out.get(i).0).collect();
        assert_eq!(dests, vec![b, c]);
        out.clear();
        // A lower simulcast layer is held back.
        r.handle(a, &[0x80, RELAY_LOWER_LAYER_PTS[0], 0, 1], &mut out);
        assert!(out.is_empty());
        r.handle("127.0.0.1:9".parse().unwrap(), b"stranger", &mut out);
        assert!(out.is_empty(), "unregistered senders are dropped");
        assert_eq!(r.sealed, 0, "no crypto without --srtp");
    }

    #[test]
    fn with_srtp_every_packet_in_and_every_copy_out_is_sealed_and_copies_leave_clear() {
        let mut r = RawRelay::with_srtp();
        let mut out = TransmitBatch::new();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        for addr in [a, b, c] {
            r.handle(addr, b"JOIN 7 pub", &mut out);
        }
        let mut packet = vec![0x80, 96, 0, 1, 0, 0, 0, 9, 0, 0, 0, 5];
        packet.extend_from_slice(&[0x42; 1100]);
        r.handle(a, &packet, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(r.sealed, 3, "one open's worth in, a seal per copy out");
        for i in 0..out.len() {
            assert_eq!(out.get(i).1, &packet[..], "receivers read the clear packet");
        }
        out.clear();
        // A lower layer is opened and held back.
        packet[1] = RELAY_LOWER_LAYER_PTS[0];
        r.handle(a, &packet, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.sealed, 4);
        // Not RTP: forwarded as the plain relay would, with nothing to seal.
        r.handle(b, &[0x80, 96], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(r.sealed, 4);
    }
}
