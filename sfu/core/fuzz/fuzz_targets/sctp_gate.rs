//! The SCTP gate on arbitrary packets: every SCTP packet a participant sends (as DTLS
//! application data) passes it before the association sees it. The input is cut into packets
//! at each `0xff 0xff` pair; each is shown to the gate as one the SFU sent (its SACKs move the
//! window), then offered to it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::sctp_gate::SctpGate;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut gate = SctpGate::new();
    let mut packets = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(2).position(|w| w == [0xff, 0xff]) {
        packets.push(&rest[..at]);
        rest = &rest[at + 2..];
    }
    packets.push(rest);
    for (i, p) in packets.iter().enumerate() {
        let now = start + Duration::from_millis(100 * i as u64);
        if i % 2 == 0 {
            gate.sent(p);
        }
        let _ = gate.admit(now, p);
    }
});
