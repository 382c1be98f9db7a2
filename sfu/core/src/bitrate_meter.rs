//! The rate of one stream over the last second or so: what a simulcast layer or a track costs a
//! subscriber's link, for the allocator. And its rate over the last few seconds, for a step up:
//! an encoder's rate swings — a keyframe, then frames starved to pay for it — and a layer read
//! in its dip looked half its cost (a 530 kbit/s layer read 274 kbit/s, went up on a 400 kbit/s
//! link and came straight back down).

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_millis(500);
/// Completed windows remembered for the sustained rate: four seconds.
const HISTORY: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct BitrateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    previous_bytes: u64,
    /// Bytes of the completed windows before the current one, newest at `newest` (a ring;
    /// `completed` of them are real, the rest never filled).
    history: [u64; HISTORY],
    newest: usize,
    completed: usize,
}

impl BitrateMeter {
    pub fn add(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.bytes += bytes as u64;
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        if now >= start + WINDOW * 2 {
            // A whole window (or more) passed without a packet: each counts as nothing, and
            // the current one starts where the windows fall, not at this packet.
            let windows =
                (now.saturating_duration_since(start).as_millis() / WINDOW.as_millis()) as u32;
            self.complete(self.bytes);
            for _ in 1..windows.min(HISTORY as u32 + 1) {
                self.complete(0);
            }
            self.previous_bytes = 0;
            self.bytes = 0;
            self.window_start = Some(start + WINDOW * windows);
        } else if now >= start + WINDOW {
            self.complete(self.bytes);
            self.previous_bytes = self.bytes;
            self.bytes = 0;
            self.window_start = Some(start + WINDOW);
        }
    }

    fn complete(&mut self, bytes: u64) {
        self.newest = (self.newest + 1) % HISTORY;
        self.history[self.newest] = bytes;
        self.completed = (self.completed + 1).min(HISTORY);
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

    /// Bits per second over the last four seconds (or since the stream was first measured, if
    /// less; silence counts as nothing).
    pub fn sustained_bps(&self, now: Instant) -> u64 {
        let Some(start) = self.window_start else {
            return 0;
        };
        // Windows that ended within the span (the stream may have gone quiet since).
        let since = now.saturating_duration_since(start);
        let quiet = (since.as_millis() / WINDOW.as_millis()) as usize;
        let windows = self.completed.min(HISTORY.saturating_sub(quiet));
        if windows == 0 {
            return self.bps(now);
        }
        let bytes: u64 = (0..windows)
            .map(|k| self.history[(self.newest + HISTORY - k) % HISTORY])
            .sum::<u64>()
            + self.bytes;
        let span = WINDOW * windows as u32 + since;
        (bytes as f64 * 8.0 / span.as_secs_f64()) as u64
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
        let sustained = m.sustained_bps(now);
        assert!((760_000..=840_000).contains(&sustained), "{sustained}");
        assert_eq!(m.bps(now + Duration::from_secs(2)), 0, "stopped");
        assert_eq!(
            m.sustained_bps(now + Duration::from_secs(5)),
            0,
            "long stopped"
        );
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_dip_after_a_keyframe_does_not_read_as_the_streams_cost() {
        // 500 kbit/s for four seconds, then a second at half that (an encoder paying for a
        // keyframe): the last second reads the dip, the sustained rate the stream.
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        for i in 0..500u64 {
            let size = if i < 400 { 625 } else { 312 };
            m.add(t0 + Duration::from_millis(i * 10), size);
        }
        let now = t0 + Duration::from_millis(4995);
        let recent = m.bps(now);
        assert!(recent < 300_000, "{recent}");
        let sustained = m.sustained_bps(now);
        assert!(sustained > 400_000, "{sustained}");
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_silence_counts_as_nothing_for_as_long_as_it_lasted() {
        // 800 kbit/s for 2 s, 1.25 s of nothing, then 800 kbit/s again for 0.75 s: over the
        // last 4 s, 2.75 s of it, 550 kbit/s.
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for ms in (0..2000).step_by(10).chain((3250..4000).step_by(10)) {
            m.add(at(ms), 1000);
        }
        let sustained = m.sustained_bps(at(4000));
        assert!((520_000..=580_000).contains(&sustained), "{sustained}");
    }
}
