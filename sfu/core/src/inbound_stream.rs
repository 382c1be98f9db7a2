//! Receive state of one incoming SSRC: rollover counter and replay window for SRTP, loss
//! detection with NACK scheduling toward the publisher, and the statistics for receiver reports.

use crate::replay_window::ReplayWindow;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Missing packets remembered for NACK; a bigger hole asks for a keyframe instead.
const MAX_MISSING: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Missing {
    ext_seq: u64,
    next_nack: Instant,
    tries: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// New highest sequence number (possibly after a gap).
    InOrder,
    /// Fills a hole (a retransmission or reordering).
    Late,
}

#[derive(Debug)]
pub struct InboundStream {
    pub ssrc: u32,
    pub clock_rate: u32,
    replay: ReplayWindow,
    missing: VecDeque<Missing>,
    pub received: u64,
    base_ext: u64,
    /// Interarrival jitter (RFC 3550 §6.4.1) in timestamp units, ×16 fixed point.
    jitter_q4: u64,
    last_transit: Option<i64>,
    epoch: Option<Instant>,
    /// For receiver reports: expected/received at the previous report.
    prior_expected: u64,
    prior_received: u64,
    /// Middle 32 bits of the last SR's NTP time and when it arrived (for LSR/DLSR).
    pub last_sr: Option<(u32, Instant)>,
    /// Set when a gap was too large to repair: the caller asks for a keyframe.
    pub needs_keyframe: bool,
}

impl InboundStream {
    /// Names to `prefetch_line` what recording a packet reads: the replay window and the
    /// arrival figures.
    pub fn prefetch(&self, prefetch_line: &impl Fn(*const u8)) {
        prefetch_line(std::ptr::from_ref(&self.replay).cast());
        prefetch_line(std::ptr::from_ref(&self.jitter_q4).cast());
    }

    pub fn new(ssrc: u32, clock_rate: u32) -> Self {
        Self {
            ssrc,
            clock_rate: clock_rate.max(1),
            replay: ReplayWindow::default(),
            missing: VecDeque::new(),
            received: 0,
            base_ext: 0,
            jitter_q4: 0,
            last_transit: None,
            epoch: None,
            prior_expected: 0,
            prior_received: 0,
            last_sr: None,
            needs_keyframe: false,
        }
    }

    /// Extended sequence number of `seq` relative to the highest seen (RFC 3711 §3.3.1 guess).
    pub fn extend(&self, seq: u16) -> u64 {
        match self.replay.highest() {
            // The rollover counter starts at zero (RFC 3711 §3.3.1).
            None => seq as u64,
            Some(h) => {
                let delta = (seq.wrapping_sub(h as u16)) as i16 as i64;
                (h as i64 + delta).max(0) as u64
            }
        }
    }

    /// Whether `ext` is a replay or too old (checked before decrypting).
    pub fn is_replay(&self, ext: u64) -> bool {
        self.replay.is_replay(ext)
    }

    /// Records an authenticated packet. Returns how it arrived.
    pub fn record(&mut self, now: Instant, ext: u64, rtp_timestamp: u32) -> Arrival {
        self.received += 1;
        // The replay window holds the highest extended sequence number seen.
        let arrival = match self.replay.highest() {
            None => {
                self.base_ext = ext;
                self.replay.accept(ext);
                Arrival::InOrder
            }
            Some(h) if ext > h => {
                let shift = ext - h;
                self.replay.accept(ext);
                if shift > 1 {
                    if shift as usize > MAX_MISSING {
                        self.missing.clear();
                        self.needs_keyframe = true;
                    } else {
                        for lost in h + 1..ext {
                            if self.missing.len() >= MAX_MISSING {
                                self.missing.pop_front();
                            }
                            self.missing.push_back(Missing {
                                ext_seq: lost,
                                // Give reordering a moment before the first NACK.
                                next_nack: now + Duration::from_millis(5),
                                tries: 0,
                            });
                        }
                    }
                }
                Arrival::InOrder
            }
            Some(_) => {
                self.replay.accept(ext);
                self.missing.retain(|m| m.ext_seq != ext);
                Arrival::Late
            }
        };
        self.update_jitter(now, rtp_timestamp);
        arrival
    }

    fn update_jitter(&mut self, now: Instant, rtp_timestamp: u32) {
        let epoch = *self.epoch.get_or_insert(now);
        let arrival_units =
            (now.duration_since(epoch).as_micros() as i64) * self.clock_rate as i64 / 1_000_000;
        let transit = arrival_units - rtp_timestamp as i64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs();
            // J += (|D| - J) / 16, in ×16 fixed point.
            self.jitter_q4 = self.jitter_q4 + d - (self.jitter_q4 >> 4);
        }
        self.last_transit = Some(transit);
    }

    pub fn jitter(&self) -> u32 {
        (self.jitter_q4 >> 4) as u32
    }

    pub fn highest(&self) -> Option<u64> {
        self.replay.highest()
    }

    /// Sequence numbers due for a NACK now; each is retried up to `max_tries`, `interval` apart.
    pub fn due_nacks(
        &mut self,
        now: Instant,
        interval: Duration,
        max_tries: u8,
        out: &mut Vec<u16>,
    ) {
        self.missing.retain(|m| m.tries < max_tries);
        for m in &mut self.missing {
            if m.next_nack <= now {
                out.push(m.ext_seq as u16);
                m.tries += 1;
                m.next_nack = now + interval;
            }
        }
    }

    /// Whether the timer has work here: packets to NACK, or a keyframe to ask for.
    pub fn wants_repair(&self) -> bool {
        !self.missing.is_empty() || self.needs_keyframe
    }

    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }

    /// Fraction lost since the last call (8-bit fixed point) and cumulative lost, for an RR.
    pub fn report_loss(&mut self) -> (u8, u32) {
        let Some(h) = self.replay.highest() else {
            return (0, 0);
        };
        let expected = h - self.base_ext + 1;
        let lost_total = expected.saturating_sub(self.received);
        let expected_interval = expected - self.prior_expected;
        let received_interval = self.received.saturating_sub(self.prior_received);
        self.prior_expected = expected;
        self.prior_received = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction = (lost_interval << 8)
            .checked_div(expected_interval)
            .map_or(0, |f| f.min(255) as u8);
        (fraction, lost_total.min(0x7f_ffff) as u32)
    }
}

#[cfg(test)]
// Tests take one real instant as the origin of their virtual time.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn extends_across_wraparound_and_spots_replays() {
        let now = Instant::now();
        let mut s = InboundStream::new(1, 90_000);
        let e1 = s.extend(65534);
        s.record(now, e1, 0);
        let e2 = s.extend(65535);
        s.record(now, e2, 0);
        let e3 = s.extend(2);
        assert_eq!(e3, e2 + 3, "wraps into the next rollover");
        assert_eq!((e3 >> 16) - (e2 >> 16), 1);
        assert!(s.is_replay(e2));
        assert!(!s.is_replay(e3));
        s.record(now, e3, 0);
        assert_eq!(s.missing_count(), 2, "0 and 1 were skipped");
        let e0 = s.extend(0);
        assert!(!s.is_replay(e0));
        assert_eq!(s.record(now, e0, 0), Arrival::Late);
        assert_eq!(s.missing_count(), 1);
        assert!(s.is_replay(e0));
    }

    #[test]
    fn nacks_are_retried_then_given_up() {
        let t0 = Instant::now();
        let mut s = InboundStream::new(1, 90_000);
        s.record(t0, s.extend(10), 0);
        s.record(t0, s.extend(13), 0);
        let mut out = Vec::new();
        s.due_nacks(t0, Duration::from_millis(20), 2, &mut out);
        assert!(out.is_empty(), "waits for reordering first");
        s.due_nacks(
            t0 + Duration::from_millis(6),
            Duration::from_millis(20),
            2,
            &mut out,
        );
        assert_eq!(out, vec![11, 12]);
        out.clear();
        s.due_nacks(
            t0 + Duration::from_millis(10),
            Duration::from_millis(20),
            2,
            &mut out,
        );
        assert!(out.is_empty(), "spaced by the interval");
        s.due_nacks(
            t0 + Duration::from_millis(30),
            Duration::from_millis(20),
            2,
            &mut out,
        );
        assert_eq!(out, vec![11, 12]);
        out.clear();
        s.due_nacks(
            t0 + Duration::from_millis(60),
            Duration::from_millis(20),
            2,
            &mut out,
        );
        assert!(out.is_empty(), "given up after two tries");
        assert_eq!(s.missing_count(), 0);
    }

    #[test]
    fn reports_loss_fraction() {
        let t0 = Instant::now();
        let mut s = InboundStream::new(1, 48_000);
        for seq in [1u16, 2, 4, 5] {
            s.record(t0, s.extend(seq), 0);
        }
        let (fraction, total) = s.report_loss();
        assert_eq!(total, 1);
        assert_eq!(fraction, (256 / 5) as u8);
    }

    #[test]
    fn a_repair_hundreds_of_packets_late_is_accepted_once() {
        let t0 = Instant::now();
        let mut s = InboundStream::new(1, 90_000);
        s.record(t0, s.extend(1000), 0);
        // Packet 1001 is lost; 300 more arrive.
        for seq in 1002u16..1302 {
            s.record(t0, s.extend(seq), 0);
        }
        let late = s.extend(1001);
        assert!(!s.is_replay(late), "a repair 300 packets late still counts");
        s.record(t0, late, 0);
        assert!(s.is_replay(late), "but only once");
        assert!(s.is_replay(s.extend(1200)), "seen packets stay seen");
        // Far beyond the window: refused as too old.
        for seq in 1302u16..2400 {
            s.record(t0, s.extend(seq), 0);
        }
        assert!(s.is_replay(s.extend(1100)));
    }
}
