//! The ceiling: a minimal UDP relay with no crypto and no parsing beyond the source address
//! and the payload type — `recvmmsg` in, `sendmmsg` out to every other member of the sender's
//! group. Lower simulcast layers (by payload type) are received and not forwarded, as an SFU
//! forwards one layer per subscriber; so it forwards the same packet pattern as the SFU and
//! shows what this machine can move at all.
//!
//! Members register with `JOIN <group> <pub|sub>` from the socket they use.

use crate::generator::{RELAY_JOIN, RELAY_LOWER_LAYER_PTS};
use sfu_core::TransmitBatch;
use sfu_server::udp_batch::UdpBatch;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct RawRelay {
    groups: HashMap<u32, Vec<SocketAddr>>,
    member_of: HashMap<SocketAddr, u32>,
    pub forwarded: u64,
    pub received: u64,
}

impl RawRelay {
    /// Handles one datagram, queueing its copies in `out`.
    pub fn handle(&mut self, from: SocketAddr, data: &[u8], out: &mut TransmitBatch) {
        self.received += 1;
        if let Some(rest) = data.strip_prefix(RELAY_JOIN) {
            let text = String::from_utf8_lossy(rest);
            if let Some(group) = text.split_whitespace().next().and_then(|g| g.parse().ok())
                && !self.member_of.contains_key(&from)
            {
                self.member_of.insert(from, group);
                self.groups.entry(group).or_default().push(from);
            }
            return;
        }
        let Some(group) = self.member_of.get(&from) else {
            return;
        };
        if data
            .get(1)
            .is_some_and(|b| RELAY_LOWER_LAYER_PTS.contains(&(b & 0x7f)))
        {
            return;
        }
        for &to in &self.groups[group] {
            if to != from {
                out.push(to, data);
                self.forwarded += 1;
            }
        }
    }

    /// Serves on `listen` until the process is killed; prints the bound address first.
    pub fn serve(listen: SocketAddr) -> std::io::Result<()> {
        let mut socket = UdpBatch::bind(listen)?;
        println!("relay listening on {}", socket.local_addr()?);
        let mut relay = RawRelay::default();
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
    }
}
