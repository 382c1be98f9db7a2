//! The rate of one stream over the last second or so: what a simulcast layer or a track costs a
//! subscriber's link, for the allocator.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default)]
pub struct BitrateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    previous_bytes: u64,
}

impl BitrateMeter {
    pub fn add(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.bytes += bytes as u64;
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        if now >= start + WINDOW * 2 {
            // A whole window passed without a packet.
            self.previous_bytes = 0;
            self.bytes = 0;
            self.window_start = Some(now);
        } else if now >= start + WINDOW {
            self.previous_bytes = self.bytes;
            self.bytes = 0;
            self.window_start = Some(start + WINDOW);
        }
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
}
