//! A subscriber's pacer: while its bandwidth estimate binds (something it wants is held back),
//! its video — media and repairs — leaves at a little above the estimate instead of in the
//! bursts it arrives in (a keyframe is tens of packets at once; a phone's bottleneck queue
//! holds a few). Audio and probes never wait here: audio is never queued behind video.
//!
//! Packets wait unsealed, in fixed slots allocated the first time the subscriber is paced (no
//! allocation per packet); each gets its transport-wide sequence number and is sealed only
//! when it leaves, so the send history holds the time it really left and numbers follow
//! sending order, as the estimator needs. A packet never waits longer than [`MAX_WAIT`]: one
//! that would is sent at once (the pacer delays, it never drops).

use crate::transmit_batch::SLOT_SIZE;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Packets a pacer holds: beyond this the oldest leaves at once.
pub const PACER_SLOTS: usize = 128;
/// The longest a packet waits.
pub const MAX_WAIT: Duration = Duration::from_millis(250);
/// Pace at this much above the estimate (in tenths): what is queued drains, and a link at
/// its estimate is not pushed much past it.
const PACE_ABOVE_ESTIMATE: u64 = 11;
/// The send allowance saved up while nothing waits: a short burst, a couple of packets.
const MAX_SAVED: Duration = Duration::from_millis(10);

/// What sealing a queued packet needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSeal {
    pub header_len: usize,
    pub ssrc: u32,
    /// Extended sequence number (the SRTP index).
    pub ext_seq: u64,
    /// Where in the header the transport-wide sequence number goes.
    pub twcc_at: Option<usize>,
}

/// A packet waiting in the pacer: its slot, plain length, how to seal it, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacedPacket {
    slot: usize,
    pub len: usize,
    pub seal: PacketSeal,
    queued_at: Instant,
}

#[derive(Debug, Default)]
pub struct Pacer {
    /// Bits per second; 0 when not pacing.
    rate_bps: u64,
    /// Bytes that may leave now (negative: owed by the last packet sent).
    allowance: i64,
    refilled_at: Option<Instant>,
    slots: Vec<u8>,
    queue: VecDeque<PacedPacket>,
}

impl Pacer {
    /// Paces at a little above `estimate_bps`, or — `None` — no longer (what waits leaves at
    /// the next release).
    pub fn pace(&mut self, estimate_bps: Option<u64>) {
        self.rate_bps = estimate_bps.map_or(0, |e| e * PACE_ABOVE_ESTIMATE / 10);
    }

    /// Whether a packet to this subscriber is to wait here.
    pub fn is_pacing(&self) -> bool {
        self.rate_bps > 0
    }

    /// Whether anything waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a plain packet (`packet`: header and payload) to be sealed as `seal` says. When
    /// [`Self::is_full`], release the oldest first (`make_room`).
    pub fn enqueue(&mut self, now: Instant, packet: &[u8], seal: PacketSeal) {
        if self.slots.is_empty() {
            self.slots = vec![0; PACER_SLOTS * SLOT_SIZE];
            self.queue.reserve_exact(PACER_SLOTS);
        }
        debug_assert!(self.queue.len() < PACER_SLOTS, "release the oldest first");
        let slot = self
            .queue
            .back()
            .map_or(0, |last| (last.slot + 1) % PACER_SLOTS);
        let at = slot * SLOT_SIZE;
        let len = packet.len().min(SLOT_SIZE);
        self.slots[at..at + len].copy_from_slice(&packet[..len]);
        self.queue.push_back(PacedPacket {
            slot,
            len,
            seal,
            queued_at: now,
        });
    }

    /// Drops everything waiting (its subscriber may no longer receive it). Returns how many.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queue.len();
        self.queue.clear();
        dropped
    }

    /// Whether the queue is full: the oldest must leave before another is queued.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= PACER_SLOTS
    }

    /// The next packet due to leave now, if any: within the rate, or waited too long, or the
    /// queue must make room, or pacing ended. Its plain bytes are [`Self::bytes`] until the
    /// next call.
    pub fn release(&mut self, now: Instant, make_room: bool) -> Option<PacedPacket> {
        self.refill(now);
        let next = self.queue.front()?;
        // Not in debt: one packet may go (the next waits until the rate has paid for it).
        let paid = self.allowance >= 0 && self.rate_bps > 0;
        let forced = make_room
            || self.rate_bps == 0
            || now.saturating_duration_since(next.queued_at) >= MAX_WAIT;
        if !paid && !forced {
            return None;
        }
        let packet = self.queue.pop_front()?;
        // A packet that had to go (waited too long, made room) runs up no debt: charged, it
        // would hold every later packet to the longest wait long after the backlog left.
        if paid {
            self.allowance -= packet.len as i64;
        }
        Some(packet)
    }

    /// The plain bytes of a packet [`Self::release`] just gave.
    pub fn bytes(&mut self, packet: &PacedPacket) -> &mut [u8] {
        let at = packet.slot * SLOT_SIZE;
        &mut self.slots[at..at + packet.len]
    }

    fn refill(&mut self, now: Instant) {
        let last = self.refilled_at.replace(now).unwrap_or(now);
        if self.rate_bps == 0 {
            self.allowance = 0;
            return;
        }
        let elapsed = now.saturating_duration_since(last);
        let earned = (self.rate_bps as u128 * elapsed.as_nanos() / 8_000_000_000) as i64;
        let cap = (self.rate_bps as u128 * MAX_SAVED.as_nanos() / 8_000_000_000) as i64;
        // Saved up only while nothing waited: a full queue drains at the rate, not in a burst.
        self.allowance = (self.allowance + earned).min(cap.max(SLOT_SIZE as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> PacketSeal {
        PacketSeal {
            header_len: 12,
            ssrc: 1,
            ext_seq: 0,
            twcc_at: None,
        }
    }

    /// A keyframe's 40 packets of 1,200 bytes arrive at once at a subscriber paced at
    /// 400 kbit/s: they leave spread over about 0.9 s of its rate, not in one burst — but
    /// none waits over `MAX_WAIT`.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_burst_leaves_at_the_rate_and_nothing_waits_too_long() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        p.pace(Some(400_000));
        for i in 0..40u64 {
            let mut m = meta();
            m.ext_seq = i;
            p.enqueue(t0, &[7u8; 1200], m);
        }
        let mut sent: Vec<(Duration, u64)> = Vec::new();
        let mut now = t0;
        while !p.is_empty() {
            while let Some(packet) = p.release(now, false) {
                assert_eq!(p.bytes(&packet), &[7u8; 1200][..]);
                sent.push((now - t0, packet.seal.ext_seq));
            }
            now += Duration::from_millis(1);
        }
        assert_eq!(
            sent.iter().map(|s| s.1).collect::<Vec<_>>(),
            (0..40).collect::<Vec<_>>(),
            "in order"
        );
        // 440 kbit/s: a 1,200-byte packet every ~22 ms, so ~11 in the first 250 ms...
        let early = sent
            .iter()
            .filter(|s| s.0 < Duration::from_millis(240))
            .count();
        assert!((9..=14).contains(&early), "{early} in the first 240 ms");
        // ...and the rest at MAX_WAIT, since they waited that long.
        assert!(sent.iter().all(|s| s.0 <= MAX_WAIT));
        // Those forced out ran up no debt: the next packet, a frame later, goes at once.
        let later = now + Duration::from_millis(30);
        p.enqueue(later, &[7u8; 1200], meta());
        assert!(p.release(later, false).is_some());
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn when_pacing_ends_what_waits_leaves_and_a_full_queue_makes_room() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        p.pace(Some(100_000));
        for _ in 0..PACER_SLOTS {
            p.enqueue(t0, &[1u8; 1000], meta());
        }
        assert!(p.is_full());
        // The first leaves at once; the rest wait for the rate to pay for it.
        assert!(p.release(t0, false).is_some());
        assert!(p.release(t0, false).is_none());
        // Room for one more: the oldest goes at once.
        assert!(p.release(t0, true).is_some());
        p.pace(None);
        let mut n = 0;
        while p.release(t0, false).is_some() {
            n += 1;
        }
        assert_eq!(n, PACER_SLOTS - 2);
        assert!(!p.is_pacing() && p.is_empty());
    }
}
