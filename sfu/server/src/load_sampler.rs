//! The node's load — packet rates and its process's CPU — over windows long enough to mean
//! something and recent enough to describe now, shared by the load reports of every control
//! link.
//!
//! Each link used to measure from its own last report, and from the moment it came up for
//! its first: that first report, sent at once, covered microseconds, so its CPU figure was
//! whatever the node's threads happened to do in them (0 % or 180 %), and rooms are placed by
//! those figures. With several links, two reports a few microseconds apart did the same. Now
//! a window is measured only once it is `min_window` long; a report in between repeats the
//! last window's figures, and one before the first window says the node has done nothing yet.
//! The control client also takes figures every `min_window` with no link up, so a window
//! never spans an outage of every link.

use crate::process_cpu::own_cpu_time;
use sfu_core::counters::Counters;
use std::time::{Duration, Instant};

/// One window's load.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct LoadFigures {
    pub packets_in_per_s: u64,
    pub packets_out_per_s: u64,
    pub dropped_per_s: u64,
    /// The node process's CPU, % of one core (all its threads).
    pub cpu_percent: f32,
}

#[derive(Debug)]
pub struct LoadSampler {
    min_window: Duration,
    /// Where the current window began: the counters and the process's CPU time then, and when.
    start: (Counters, Option<Duration>, Instant),
    /// The last window measured; none before the first.
    latest: Option<LoadFigures>,
}

impl LoadSampler {
    /// Starts the first window now, with the node's counters as they are.
    pub fn new(counters: Counters, min_window: Duration) -> Self {
        Self {
            min_window,
            start: (counters, own_cpu_time(), Instant::now()),
            latest: None,
        }
    }

    /// The load over the window that ends now if it is at least `min_window` long; otherwise
    /// the last window's, or none at all (zeros) before the first: a node that has just
    /// started has no rooms, and start-up work over a few milliseconds is not its load.
    pub fn figures(&mut self, counters: Counters) -> LoadFigures {
        let now = Instant::now();
        let elapsed = now.duration_since(self.start.2);
        if elapsed < self.min_window {
            return self.latest.unwrap_or_default();
        }
        let cpu = own_cpu_time();
        let secs = elapsed.as_secs_f64();
        let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs) as u64;
        let (last, last_cpu, _) = self.start;
        let figures = LoadFigures {
            packets_in_per_s: rate(counters.packets_in, last.packets_in),
            packets_out_per_s: rate(counters.packets_out, last.packets_out),
            dropped_per_s: rate(counters.dropped(), last.dropped()),
            // 0 where the clock cannot be read (it always can on Linux).
            cpu_percent: match (last_cpu, cpu) {
                (Some(a), Some(b)) => (b.saturating_sub(a).as_secs_f64() * 100.0 / secs) as f32,
                _ => 0.0,
            },
        };
        self.start = (counters, cpu, now);
        self.latest = Some(figures);
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < d {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
    }

    fn with_packets(packets_in: u64, packets_out: u64) -> Counters {
        Counters {
            packets_in,
            packets_out,
            ..Counters::default()
        }
    }

    /// Other tests in this process may spin at the same time (CPU time is the process's).
    fn at_most_every_core() -> f32 {
        std::thread::available_parallelism().map_or(1, |n| n.get()) as f32 * 100.0 + 25.0
    }

    #[test]
    fn a_report_just_after_another_repeats_the_last_full_window() {
        let mut sampler = LoadSampler::new(with_packets(0, 0), Duration::from_millis(200));
        spin(Duration::from_millis(300));
        let first = sampler.figures(with_packets(3_000, 6_000));
        assert!(
            first.cpu_percent > 30.0 && first.cpu_percent < at_most_every_core(),
            "{} % while spinning",
            first.cpu_percent
        );
        assert!(
            (2_000..=10_000).contains(&first.packets_in_per_s),
            "{} packets/s in over 0.3 s and what scheduling added",
            first.packets_in_per_s
        );
        // Another link's report, or the first of a link that just came up, microseconds
        // later: the same figures, not a window of microseconds.
        let second = sampler.figures(with_packets(3_001, 6_002));
        assert_eq!(second, first);
    }

    #[test]
    fn before_its_first_window_the_node_reports_nothing_done() {
        let mut sampler = LoadSampler::new(with_packets(0, 0), Duration::from_millis(500));
        spin(Duration::from_millis(20));
        // A link that came up 20 ms after the start, mid-handshake work: not a figure of
        // 20 ms, and no packet rate from 7 packets.
        assert_eq!(sampler.figures(with_packets(7, 7)), LoadFigures::default());
    }

    #[test]
    fn a_new_window_is_measured_once_the_last_is_old_enough() {
        let mut sampler = LoadSampler::new(with_packets(0, 0), Duration::from_millis(100));
        spin(Duration::from_millis(150));
        let busy = sampler.figures(with_packets(1_000, 1_000));
        std::thread::sleep(Duration::from_millis(150));
        // Not the last window's figures again: nothing arrived in this one. (Its CPU is not
        // asserted: other tests' threads in this process may spin meanwhile.)
        let idle = sampler.figures(with_packets(1_000, 1_000));
        assert!(
            busy.cpu_percent > 30.0,
            "{} % while spinning",
            busy.cpu_percent
        );
        assert!(busy.packets_in_per_s > 0);
        assert_eq!(idle.packets_in_per_s, 0);
        assert_eq!(idle.packets_out_per_s, 0);
    }
}
