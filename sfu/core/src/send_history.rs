//! What we sent one subscriber, by transport-wide sequence number: when and how large, and
//! whether it was a probe. Feedback names packets by that number; the estimator needs their
//! send times and sizes beside the arrival times.

use std::time::{Duration, Instant};

/// Packets remembered: a fixed ring (a few seconds at a subscriber's rates; feedback comes
/// every 50–250 ms), so recording on the forwarding path never allocates.
pub const RING: usize = 2048;

/// 16 bytes, so the ring is 32 KiB a subscriber and recording a packet touches a new cache
/// line only every fourth one (it is written on every packet out, cold since the ring last
/// came round).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// Low 32 bits of the extended sequence number + 1 (0: empty slot). A slot is rewritten
    /// every `RING` packets, so its low bits name one packet.
    seq_plus_one: u32,
    /// Low 32 bits of the send time in µs since the epoch (wraps every 71 minutes): the ring
    /// spans seconds, so the full time is the newest record's less the wrapped difference.
    sent_us: u32,
    size: u16,
    probe: Option<u16>,
}

/// A packet the feedback matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentPacket {
    pub ext_seq: u64,
    pub sent_at: Instant,
    /// Bytes on the wire (SRTP included).
    pub size: usize,
    /// The probe cluster it belongs to.
    pub probe: Option<u16>,
}

#[derive(Debug)]
pub struct SendHistory {
    epoch: Instant,
    ring: Vec<Entry>,
    /// Highest extended sequence number sent.
    highest: Option<u64>,
    /// Highest extended sequence number feedback has named (for extending 16-bit ones).
    highest_acked: Option<u64>,
    /// The latest send time recorded, µs since the epoch: every entry's full time is this
    /// less the wrapped difference of their low 32 bits (exact while the entry is under 71
    /// minutes older, which the reset in `record` and feedback's naming of packets just
    /// received keep so).
    newest_sent_us: u64,
}

impl SendHistory {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            ring: Vec::new(),
            highest: None,
            highest_acked: None,
            newest_sent_us: 0,
        }
    }

    fn extend(reference: Option<u64>, seq: u16) -> u64 {
        match reference {
            None => seq as u64 + (1 << 16),
            Some(h) => (h as i64 + seq.wrapping_sub(h as u16) as i16 as i64).max(0) as u64,
        }
    }

    pub fn record(&mut self, seq: u16, now: Instant, size: usize, probe: Option<u16>) {
        if self.ring.is_empty() {
            self.ring = vec![Entry::default(); RING];
        }
        let ext = Self::extend(self.highest, seq);
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        let sent_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        if sent_us.saturating_sub(self.newest_sent_us) >= 1 << 31 {
            // Nothing sent for over 35 minutes (a long wait, a paused stream): what the ring
            // holds is too old for feedback, and its times would soon read wrapped.
            self.ring.fill(Entry::default());
        }
        self.newest_sent_us = self.newest_sent_us.max(sent_us);
        self.ring[(ext % RING as u64) as usize] = Entry {
            seq_plus_one: (ext + 1) as u32,
            sent_us: sent_us as u32,
            size: size.min(u16::MAX as usize) as u16,
            probe,
        };
    }

    /// Names to `prefetch_line` the entry the next send will be recorded in.
    pub fn prefetch_next(&self, prefetch_line: &impl Fn(*const u8)) {
        if let Some(h) = self.highest
            && let Some(entry) = self.ring.get(((h + 1) % RING as u64) as usize)
        {
            prefetch_line(std::ptr::from_ref(entry).cast());
        }
    }

    /// The packet sent as `seq` (16 bits, as feedback names it), if still remembered.
    pub fn lookup(&mut self, seq: u16) -> Option<SentPacket> {
        let reference = self.highest_acked.or(self.highest);
        let ext = Self::extend(reference, seq);
        let e = self.ring.get((ext % RING as u64) as usize)?;
        if e.seq_plus_one != (ext + 1) as u32 {
            return None;
        }
        if self.highest_acked.is_none_or(|h| ext > h) {
            self.highest_acked = Some(ext);
        }
        Some(SentPacket {
            ext_seq: ext,
            sent_at: self.epoch
                + Duration::from_micros(
                    self.newest_sent_us
                        - u64::from((self.newest_sent_us as u32).wrapping_sub(e.sent_us)),
                ),
            size: e.size as usize,
            probe: e.probe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn remembers_across_the_16_bit_wrap_and_forgets_the_old() {
        let t0 = Instant::now();
        let mut h = SendHistory::new(t0);
        for i in 0..3000u32 {
            let seq = (65_000 + i) as u16;
            let probe = (i % 100 == 0).then_some(3);
            h.record(
                seq,
                t0 + Duration::from_micros(i as u64 * 100),
                1000 + i as usize,
                probe,
            );
        }
        // The newest 2048 are there, across the wrap, with their times and sizes.
        let p = h.lookup((65_000u32 + 2999) as u16).expect("newest");
        assert_eq!(
            (p.size, p.sent_at - t0),
            (3999, Duration::from_micros(299_900))
        );
        let p = h.lookup((65_000u32 + 1000) as u16).expect("after the wrap");
        assert_eq!((p.size, p.probe), (2000, Some(3)));
        assert_eq!(h.lookup((65_000u32 + 900) as u16), None, "overwritten");
        assert_eq!(h.lookup(12_345), None, "never sent");
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn send_times_survive_the_wrap_of_their_stored_32_bits() {
        // 2^32 µs is 71.6 minutes: a visit outlasts it.
        let t0 = Instant::now();
        let mut h = SendHistory::new(t0);
        let wrap = Duration::from_micros(1 << 32);
        let start = wrap - Duration::from_millis(50);
        for i in 0..100u16 {
            h.record(i, t0 + start + Duration::from_millis(i as u64), 900, None);
        }
        for i in [0u16, 49, 50, 51, 99] {
            let p = h.lookup(i).expect("remembered");
            assert_eq!(
                p.sent_at,
                t0 + start + Duration::from_millis(i as u64),
                "{i}"
            );
        }
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn records_out_of_time_order_and_after_a_long_silence_keep_their_times() {
        let t0 = Instant::now();
        let mut h = SendHistory::new(t0);
        let ms = Duration::from_millis;
        // A pacer's packet may be recorded with a time before the one recorded last.
        h.record(1, t0 + ms(20), 900, None);
        h.record(2, t0 + ms(10), 900, None);
        assert_eq!(h.lookup(2).expect("remembered").sent_at, t0 + ms(10));
        assert_eq!(h.lookup(1).expect("remembered").sent_at, t0 + ms(20));
        // Nothing for 80 minutes (past the 71-minute wrap), then media again: the old
        // entries are gone rather than read with a wrapped time.
        let later = t0 + Duration::from_secs(80 * 60);
        h.record(3, later, 900, None);
        assert_eq!(h.lookup(3).expect("remembered").sent_at, later);
        assert_eq!(h.lookup(1), None, "forgotten, not misdated");
    }
}
