//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01)
//! toward a publisher: records when each transport-wide sequence number arrived and writes the
//! RTCP feedback its browser's bandwidth estimator needs.

use std::time::{Duration, Instant};

/// Packets described by one feedback message at most (keeps it well under the MTU).
const MAX_PER_FEEDBACK: u64 = 300;
/// Arrivals remembered between feedbacks: a fixed ring, so recording never allocates.
const RING: usize = 4096;

/// One remembered arrival, 8 bytes (a cache line holds eight): the low 32 bits of the
/// extended sequence number plus one (0: empty) and of the arrival time in µs since the epoch.
#[derive(Debug, Clone, Copy, Default)]
struct Arrival {
    seq_plus_one: u32,
    at_us: u32,
}

#[derive(Debug)]
pub struct TwccRecorder {
    epoch: Instant,
    highest: Option<u64>,
    /// First sequence number not yet reported.
    next_report: Option<u64>,
    /// Arrivals by extended sequence number modulo `RING`.
    arrivals: Vec<Arrival>,
    /// The largest arrival time recorded, µs since the epoch: an entry's full time is this
    /// less the wrapped difference of their low 32 bits (exact while the entry is under 71 minutes
    /// older, which the reset in `record` keeps so).
    newest_us: u64,
    feedback_count: u8,
}

impl TwccRecorder {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            highest: None,
            next_report: None,
            arrivals: Vec::new(),
            newest_us: 0,
            feedback_count: 0,
        }
    }

    fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            None => seq as u64 + (1 << 16),
            Some(h) => (h as i64 + seq.wrapping_sub(h as u16) as i16 as i64).max(0) as u64,
        }
    }

    fn arrival(&self, ext: u64) -> Option<Instant> {
        let a = self.arrivals.get((ext % RING as u64) as usize)?;
        // 0 marks an empty entry, which the 2^32nd packet's low bits would also read as.
        if a.seq_plus_one == 0 || a.seq_plus_one != (ext + 1) as u32 {
            return None;
        }
        let age = (self.newest_us as u32).wrapping_sub(a.at_us);
        Some(self.epoch + Duration::from_micros(self.newest_us - u64::from(age)))
    }

    pub fn record(&mut self, seq: u16, now: Instant) {
        if self.arrivals.is_empty() {
            // Only participants that negotiated transport-cc pay for the ring.
            self.arrivals = vec![Arrival::default(); RING];
        }
        let ext = self.extend(seq);
        if self.next_report.is_some_and(|n| ext < n) {
            return; // already reported as lost; too late to matter
        }
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        let next = *self.next_report.get_or_insert(ext);
        // A sender far ahead of our reports: give up on what the ring can no longer hold.
        if ext >= next + RING as u64 {
            self.next_report = Some(ext + 1 - RING as u64);
        }
        let at_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        if at_us.saturating_sub(self.newest_us) >= 1 << 31 {
            // Nothing arrived for over 35 minutes: what the ring holds was reported long
            // ago, and its times would soon read wrapped.
            self.arrivals.fill(Arrival::default());
        }
        self.newest_us = self.newest_us.max(at_us);
        self.arrivals[(ext % RING as u64) as usize] = Arrival {
            seq_plus_one: (ext + 1) as u32,
            at_us: at_us as u32,
        };
    }

    /// Names to `prefetch_line` the entry the next arrival will be recorded in.
    pub fn prefetch_next(&self, prefetch_line: &impl Fn(*const u8)) {
        if let Some(h) = self.highest
            && let Some(entry) = self.arrivals.get(((h + 1) % RING as u64) as usize)
        {
            prefetch_line(std::ptr::from_ref(entry).cast());
        }
    }

    pub fn has_pending(&self) -> bool {
        matches!((self.next_report, self.highest), (Some(n), Some(h)) if n <= h)
    }

    /// Writes one feedback message into `buf` (which must hold 1500 bytes) covering the oldest
    /// unreported packets. Returns its length, or `None` when there is nothing to report.
    pub fn write_feedback(
        &mut self,
        buf: &mut [u8],
        sender_ssrc: u32,
        media_ssrc: u32,
    ) -> Option<usize> {
        let (start, highest) = (self.next_report?, self.highest?);
        // The first arrival at or after `start`: the reference time comes from it.
        let mut first = start;
        while first <= highest && self.arrival(first).is_none() {
            first += 1;
        }
        if first > highest {
            self.next_report = Some(first);
            return None;
        }
        // Losses just before it are reported as such (the estimator needs them), unless the
        // gap is too long for one message.
        let start = if first - start < MAX_PER_FEEDBACK / 2 {
            start
        } else {
            first
        };
        let end = highest.min(start + MAX_PER_FEEDBACK - 1);
        let count = (end - start + 1) as usize;

        // Reference time: the first reported arrival, in 64 ms units from our epoch.
        let first_time = self.arrival(first)?;
        let since_epoch = first_time.saturating_duration_since(self.epoch);
        let reference = (since_epoch.as_micros() / 64_000) as u32 & 0x00ff_ffff;
        let mut previous = self.epoch + Duration::from_micros(reference as u64 * 64_000);

        buf[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
        buf[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
        buf[12..14].copy_from_slice(&(start as u16).to_be_bytes());
        buf[14..16].copy_from_slice(&(count as u16).to_be_bytes());
        buf[16..19].copy_from_slice(&reference.to_be_bytes()[1..4]);
        buf[19] = self.feedback_count;
        self.feedback_count = self.feedback_count.wrapping_add(1);

        // Status vector chunks of seven 2-bit symbols; deltas after all chunks.
        let chunks = count.div_ceil(7);
        let mut chunk_pos = 20;
        let mut delta_pos = 20 + 2 * chunks;
        let mut seq = start;
        for _ in 0..chunks {
            let mut chunk: u16 = 0b11 << 14;
            for slot in 0..7 {
                if seq > end {
                    break;
                }
                let symbol: u16 = match self.arrival(seq) {
                    None => 0,
                    Some(at) => {
                        let delta_us = if at >= previous {
                            at.duration_since(previous).as_micros() as i64
                        } else {
                            -(previous.duration_since(at).as_micros() as i64)
                        };
                        let units = delta_us / 250;
                        previous = at;
                        if (0..=255).contains(&units) {
                            buf[delta_pos] = units as u8;
                            delta_pos += 1;
                            1
                        } else {
                            let units = units.clamp(i16::MIN as i64, i16::MAX as i64) as i16;
                            buf[delta_pos..delta_pos + 2].copy_from_slice(&units.to_be_bytes());
                            delta_pos += 2;
                            2
                        }
                    }
                };
                chunk |= symbol << (12 - 2 * slot);
                seq += 1;
            }
            buf[chunk_pos..chunk_pos + 2].copy_from_slice(&chunk.to_be_bytes());
            chunk_pos += 2;
        }
        // Pad to 32 bits; the last padding byte holds the count (RFC 3550 §6.4.1).
        let mut len = delta_pos;
        let padding = (4 - len % 4) % 4;
        if padding > 0 {
            for b in &mut buf[len..len + padding] {
                *b = 0;
            }
            len += padding;
            buf[len - 1] = padding as u8;
        }
        buf[0] = 0x80 | if padding > 0 { 0x20 } else { 0 } | 15;
        buf[1] = 205;
        buf[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());

        self.next_report = Some(end + 1);
        Some(len)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use rtc_rtcp::transport_feedbacks::transport_layer_cc::{SymbolTypeTcc, TransportLayerCc};

    fn parse(buf: &[u8]) -> TransportLayerCc {
        let mut slice = buf;
        let pkts = rtc_rtcp::packet::unmarshal(&mut slice).expect("parses");
        pkts[0]
            .as_any()
            .downcast_ref::<TransportLayerCc>()
            .expect("transport-cc")
            .clone()
    }

    #[test]
    fn feedback_reports_arrivals_losses_and_deltas() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(t0);
        // 10 packets, 5 ms apart, #3 and #7 lost; one large gap before #9.
        for i in 0u16..10 {
            if i == 3 || i == 7 {
                continue;
            }
            let at = t0 + Duration::from_millis(100 + 5 * i as u64 + if i == 9 { 200 } else { 0 });
            r.record(65530u16.wrapping_add(i), at);
        }
        let mut buf = [0u8; 1500];
        let n = r.write_feedback(&mut buf, 1, 99).unwrap();
        assert_eq!(n % 4, 0);
        let fb = parse(&buf[..n]);
        assert_eq!(fb.base_sequence_number, 65530);
        assert_eq!(fb.packet_status_count, 10);
        assert_eq!(fb.media_ssrc, 99);
        assert_eq!(fb.recv_deltas.len(), 8);
        // 5 ms apart -> 5000 us deltas, except the 205 ms jump which needs a large delta.
        assert_eq!(fb.recv_deltas[1].delta, 5000);
        let last = fb.recv_deltas.last().unwrap();
        assert_eq!(
            last.type_tcc_packet,
            SymbolTypeTcc::PacketReceivedLargeDelta
        );
        assert_eq!(last.delta, 205_000);
        assert!(
            r.write_feedback(&mut buf, 1, 99).is_none(),
            "everything was reported"
        );
        // The next feedback continues after the wrap.
        r.record(65530u16.wrapping_add(10), t0 + Duration::from_millis(400));
        let n = r.write_feedback(&mut buf, 1, 99).unwrap();
        let fb = parse(&buf[..n]);
        assert_eq!(fb.base_sequence_number, 65530u16.wrapping_add(10));
        assert_eq!(fb.packet_status_count, 1);
        assert_eq!(fb.fb_pkt_count, 1);
    }

    #[test]
    fn arrival_times_stay_exact_across_the_wrap_of_their_32_bit_microseconds() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(t0);
        let mut buf = [0u8; 1500];
        // 5 ms apart across 2^32 µs (71.6 minutes) after the epoch: kept as 32-bit µs, the
        // last two arrivals' low bits are below the first two's. Recorded out of order, so
        // one from before the wrap is recorded after one from after it.
        let first_us: u64 = (1 << 32) - 7_000;
        let base = t0 + Duration::from_micros(first_us);
        for i in [0u16, 2, 1, 3] {
            r.record(i, base + Duration::from_millis(5 * u64::from(i)));
        }
        let n = r.write_feedback(&mut buf, 1, 2).unwrap();
        let fb = parse(&buf[..n]);
        assert_eq!(fb.packet_status_count, 4);
        assert_eq!(fb.recv_deltas.len(), 4);
        assert!(
            fb.recv_deltas[1..].iter().all(|d| d.delta == 5000),
            "{:?}",
            fb.recv_deltas
        );
        // The first arrival's full time: reference (64 ms units) plus its delta.
        let first = u64::from(fb.reference_time) * 64_000 + fb.recv_deltas[0].delta as u64;
        assert_eq!(first / 250, first_us / 250, "{fb:?}");
    }

    #[test]
    fn the_packet_whose_low_32_bits_plus_one_are_zero_is_not_read_from_an_empty_entry() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(t0);
        let mut buf = [0u8; 1500];
        // Four billion packets into a session, the one at 2^32 - 1 lost: its entry stays
        // empty (0), which its own low bits plus one also read as.
        let lost: u64 = (1 << 32) - 1;
        r.highest = Some(lost - 4);
        for ext in (lost - 4..=lost + 2).filter(|&e| e != lost) {
            r.record(ext as u16, t0 + Duration::from_millis(ext - (lost - 4)));
        }
        let n = r.write_feedback(&mut buf, 1, 2).unwrap();
        let fb = parse(&buf[..n]);
        assert_eq!(fb.packet_status_count, 7);
        assert_eq!(
            fb.recv_deltas.len(),
            6,
            "the lost packet reads received: {fb:?}"
        );
    }

    #[test]
    fn an_arrival_after_80_minutes_of_silence_is_reported_at_its_own_time() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(t0);
        let mut buf = [0u8; 1500];
        r.record(0, t0 + Duration::from_secs(1));
        r.write_feedback(&mut buf, 1, 2).unwrap();
        // Past 2^32 µs (71.6 minutes) later, the ring started afresh: the new arrival reads true.
        let later_us: u64 = 80 * 60 * 1_000_000 + 123_000;
        r.record(1, t0 + Duration::from_micros(later_us));
        let n = r.write_feedback(&mut buf, 1, 2).unwrap();
        let fb = parse(&buf[..n]);
        assert_eq!(fb.base_sequence_number, 1);
        assert_eq!(fb.packet_status_count, 1);
        let at = u64::from(fb.reference_time) * 64_000 + fb.recv_deltas[0].delta as u64;
        assert_eq!(at / 250, later_us / 250, "{fb:?}");
        assert!(r.write_feedback(&mut buf, 1, 2).is_none());
    }

    #[test]
    fn losses_at_the_start_of_a_feedback_are_reported() {
        let t0 = Instant::now();
        let mut r = TwccRecorder::new(t0);
        let mut buf = [0u8; 1500];
        r.record(100, t0 + Duration::from_millis(10));
        r.write_feedback(&mut buf, 1, 2).unwrap();
        // 101 and 102 are lost, 103 arrives: the next feedback starts at 101.
        r.record(103, t0 + Duration::from_millis(40));
        let n = r.write_feedback(&mut buf, 1, 2).unwrap();
        let fb = parse(&buf[..n]);
        assert_eq!(fb.base_sequence_number, 101);
        assert_eq!(fb.packet_status_count, 3);
        assert_eq!(fb.recv_deltas.len(), 1);
    }
}
