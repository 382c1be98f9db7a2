//! The rate of one stream over the last second or so: what a simulcast layer or a track costs a
//! subscriber's link, for the allocator. Fed on every packet in, so it stays small; the windows
//! it completes go to a [`RateHistory`](crate::rate_history::RateHistory) kept apart.

use std::time::{Duration, Instant};

/// The meter's window: its rate is over the previous one and the current one so far.
pub const WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default)]
pub struct BitrateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    previous_bytes: u64,
}

/// Windows a packet closed: the one that was current, with its bytes, and the whole windows
/// after it that passed without a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedWindows {
    pub bytes: u64,
    pub then_empty: u32,
}

impl BitrateMeter {
    /// A packet of `bytes`; the windows it closed, if it opened a new one.
    #[inline]
    pub fn add(&mut self, now: Instant, bytes: usize) -> Option<ClosedWindows> {
        // Every packet in comes here; a window closes twice a second.
        if let Some(start) = self.window_start
            && now < start + WINDOW
        {
            self.bytes += bytes as u64;
            return None;
        }
        let closed = self.roll(now);
        self.bytes += bytes as u64;
        closed
    }

    #[cold]
    fn roll(&mut self, now: Instant) -> Option<ClosedWindows> {
        let start = *self.window_start.get_or_insert(now);
        if now >= start + WINDOW * 2 {
            // A whole window (or more) passed without a packet; the new one starts where the
            // windows fall, not at this packet, so the windows stay half a second long.
            let windows =
                (now.saturating_duration_since(start).as_millis() / WINDOW.as_millis()) as u32;
            let closed = ClosedWindows {
                bytes: self.bytes,
                then_empty: windows - 1,
            };
            self.previous_bytes = 0;
            self.bytes = 0;
            self.window_start = Some(start + WINDOW * windows);
            Some(closed)
        } else if now >= start + WINDOW {
            let closed = ClosedWindows {
                bytes: self.bytes,
                then_empty: 0,
            };
            self.previous_bytes = self.bytes;
            self.bytes = 0;
            self.window_start = Some(start + WINDOW);
            Some(closed)
        } else {
            None
        }
    }

    /// The current window: when it started, and its bytes so far.
    pub fn current(&self) -> Option<(Instant, u64)> {
        self.window_start.map(|start| (start, self.bytes))
    }

    /// Bits per second over the previous window and the current one so far.
    pub fn bps(&self, now: Instant) -> u64 {
        let Some(start) = self.window_start else {
            return 0;
        };
        if now >= start + WINDOW * 2 {
            return 0;
        }
        let span = WINDOW + now.saturating_duration_since(start).min(WINDOW);
        ((self.previous_bytes + self.bytes) as f64 * 8.0 / span.as_secs_f64()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn measures_a_steady_stream_and_forgets_a_stopped_one() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        // 1000 bytes every 10 ms: 800 kbit/s.
        for i in 0..300u64 {
            m.add(t0 + Duration::from_millis(i * 10), 1000);
        }
        let now = t0 + Duration::from_millis(2995);
        let bps = m.bps(now);
        assert!((760_000..=840_000).contains(&bps), "{bps}");
        assert_eq!(m.bps(now + Duration::from_secs(2)), 0, "stopped");
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_packet_after_a_silence_closes_the_windows_it_spans() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        assert_eq!(m.add(t0, 100), None);
        assert_eq!(m.add(t0 + Duration::from_millis(400), 100), None);
        let closed = m.add(t0 + Duration::from_millis(1700), 100);
        assert_eq!(
            closed,
            Some(ClosedWindows {
                bytes: 200,
                then_empty: 2
            })
        );
        // The new window started at 1.5 s, where the windows fall.
        assert_eq!(m.current(), Some((t0 + Duration::from_millis(1500), 100)));
    }
}
