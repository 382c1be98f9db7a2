//! The last four seconds of one stream's rate, half-second window by window, for a step up: an
//! encoder's rate swings — a keyframe, then frames starved to pay for it — and a layer read in
//! its dip looks half its cost (a 530 kbit/s layer read 274 kbit/s over its last second, went
//! up on a 400 kbit/s link and came straight back down). Kept apart from its
//! [`BitrateMeter`], which every packet in touches; this only when a window closes.

use crate::bitrate_meter::{BitrateMeter, ClosedWindows, WINDOW};
use std::time::Instant;

/// Closed windows remembered: four seconds.
const WINDOWS: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct RateHistory {
    /// Bytes of each closed window, newest at `newest` (a ring; `closed` of them are real).
    bytes: [u32; WINDOWS],
    newest: u8,
    closed: u8,
}

impl RateHistory {
    /// Windows the meter closed.
    pub fn record(&mut self, closed: ClosedWindows) {
        self.push(closed.bytes);
        for _ in 0..closed.then_empty.min(WINDOWS as u32) {
            self.push(0);
        }
    }

    fn push(&mut self, bytes: u64) {
        self.newest = ((usize::from(self.newest) + 1) % WINDOWS) as u8;
        self.bytes[usize::from(self.newest)] = bytes.min(u64::from(u32::MAX)) as u32;
        self.closed = (self.closed + 1).min(WINDOWS as u8);
    }

    /// Bits per second over the last four seconds — or since the stream was first measured, if
    /// less; a silence counts as nothing — of the stream `meter` measures.
    pub fn sustained_bps(&self, meter: &BitrateMeter, now: Instant) -> u64 {
        let Some((start, current)) = meter.current() else {
            return 0;
        };
        // Windows that closed within the span (the stream may have gone quiet since).
        let since = now.saturating_duration_since(start);
        let quiet = (since.as_millis() / WINDOW.as_millis()) as usize;
        let windows = usize::from(self.closed).min(WINDOWS.saturating_sub(quiet));
        if windows == 0 {
            return meter.bps(now);
        }
        let bytes: u64 = (0..windows)
            .map(|k| u64::from(self.bytes[(usize::from(self.newest) + WINDOWS - k) % WINDOWS]))
            .sum::<u64>()
            + current;
        let span = WINDOW * windows as u32 + since;
        (bytes as f64 * 8.0 / span.as_secs_f64()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `bytes` every 10 ms at each of `ms`; the meter and its history.
    fn stream(
        at: impl Fn(u64) -> Instant,
        ms: impl Iterator<Item = (u64, usize)>,
    ) -> (BitrateMeter, RateHistory) {
        let mut meter = BitrateMeter::default();
        let mut history = RateHistory::default();
        for (t, bytes) in ms {
            if let Some(closed) = meter.add(at(t), bytes) {
                history.record(closed);
            }
        }
        (meter, history)
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_dip_after_a_keyframe_does_not_read_as_the_streams_cost() {
        // 500 kbit/s for four seconds, then a second at half that (an encoder paying for a
        // keyframe): the last second reads the dip, the last four the stream.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (meter, history) = stream(
            at,
            (0..500u64).map(|i| (i * 10, if i < 400 { 625 } else { 312 })),
        );
        let now = at(4995);
        let recent = meter.bps(now);
        assert!(recent < 300_000, "{recent}");
        let sustained = history.sustained_bps(&meter, now);
        assert!(sustained > 400_000, "{sustained}");
        // A stream long stopped costs nothing.
        assert_eq!(
            history.sustained_bps(&meter, now + Duration::from_secs(5)),
            0
        );
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_silence_counts_as_nothing_for_as_long_as_it_lasted() {
        // 800 kbit/s for 2 s, 1.25 s of nothing, then 800 kbit/s again for 0.75 s: over the
        // last 4 s, 2.75 s of it, 550 kbit/s.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (meter, history) = stream(
            at,
            (0..2000)
                .step_by(10)
                .chain((3250..4000).step_by(10))
                .map(|t| (t, 1000)),
        );
        let sustained = history.sustained_bps(&meter, at(4000));
        assert!((520_000..=580_000).contains(&sustained), "{sustained}");
    }
}
