//! The delay half of the bandwidth estimate: whether packets toward a subscriber queue up on
//! the way. Packets are grouped into send bursts; each group's arrival spacing minus its send
//! spacing is the queueing delay it added; the slope of the accumulated delay over a window
//! (least squares) compared with an adaptive threshold says over-use, under-use or normal.
//! After draft-ietf-rmcat-gcc-02 §5 and libwebrtc's trendline estimator (goog_cc), whose
//! constants these are.

use std::time::{Duration, Instant};

/// Packets sent within this long of a group's first are one burst.
const GROUP_SPAN: Duration = Duration::from_millis(5);
/// Delay samples in the regression.
const WINDOW: usize = 20;
const SMOOTHING: f64 = 0.9;
const TREND_GAIN: f64 = 4.0;
const MAX_DELTAS: f64 = 60.0;
const THRESHOLD_START_MS: f64 = 12.5;
const THRESHOLD_MIN_MS: f64 = 6.0;
const THRESHOLD_MAX_MS: f64 = 600.0;
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
/// Over-use is signalled after the trend stays above the threshold this long.
const OVERUSE_TIME_MS: f64 = 10.0;
/// Queueing delay (above the lowest one-way delay seen lately) that, growing, is over-use.
const QUEUE_OVERUSE_MS: f64 = 60.0;
/// The lowest one-way delay is remembered over two such periods (a route may change).
const BASE_PERIOD: Duration = Duration::from_secs(5);
/// A group arriving this much later than its send spacing says is a route change or a stall,
/// not queueing: the filter starts over.
const RESET_GAP_MS: f64 = 3000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandwidthUsage {
    Normal,
    Overusing,
    Underusing,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    first_sent: Instant,
    last_sent: Instant,
    /// Arrival of its last packet (receiver clock, µs).
    last_arrival_us: i64,
}

#[derive(Debug)]
pub struct DelayTrend {
    current: Option<Group>,
    previous: Option<Group>,
    first_arrival_us: Option<i64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    /// (arrival ms since the first, smoothed delay ms): a fixed ring.
    samples: [(f64, f64); WINDOW],
    sample_count: usize,
    deltas: u32,
    threshold_ms: f64,
    last_threshold_update_us: Option<i64>,
    previous_trend: f64,
    overuse_ms: f64,
    overuse_count: u32,
    usage: BandwidthUsage,
    /// The last computed (gain-scaled) trend, for observability.
    pub modified_trend: f64,
    queue: QueueDelay,
}

impl Default for DelayTrend {
    fn default() -> Self {
        Self {
            current: None,
            previous: None,
            first_arrival_us: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            samples: [(0.0, 0.0); WINDOW],
            sample_count: 0,
            deltas: 0,
            threshold_ms: THRESHOLD_START_MS,
            last_threshold_update_us: None,
            previous_trend: 0.0,
            overuse_ms: -1.0,
            overuse_count: 0,
            usage: BandwidthUsage::Normal,
            modified_trend: 0.0,
            queue: QueueDelay::default(),
        }
    }
}

impl DelayTrend {
    pub fn usage(&self) -> BandwidthUsage {
        self.usage
    }

    /// How long the newest packet waited in queues on the way, above the quickest of late.
    pub fn queue_delay_ms(&self) -> f64 {
        self.queue.delay_ms()
    }

    /// One received packet, in arrival order (feedback lists packets by sequence, which for a
    /// single sender is send order; reordered arrivals only start no new group).
    pub fn on_packet(&mut self, sent_at: Instant, arrival_us: i64) -> BandwidthUsage {
        self.queue.on_packet(sent_at, arrival_us);
        match self.current.as_mut() {
            None => {
                self.current = Some(Group {
                    first_sent: sent_at,
                    last_sent: sent_at,
                    last_arrival_us: arrival_us,
                });
            }
            Some(g) if sent_at < g.first_sent + GROUP_SPAN && sent_at >= g.first_sent => {
                g.last_sent = g.last_sent.max(sent_at);
                g.last_arrival_us = g.last_arrival_us.max(arrival_us);
            }
            Some(g) if sent_at < g.first_sent => {
                // Sent before the group began: it belongs to an older one; ignore.
            }
            Some(&mut g) => {
                if let Some(prev) = self.previous {
                    let send_ms = (g.last_sent - prev.last_sent).as_secs_f64() * 1000.0;
                    let arrival_ms = (g.last_arrival_us - prev.last_arrival_us) as f64 / 1000.0;
                    self.on_group_delta(send_ms, arrival_ms, g.last_arrival_us);
                }
                self.previous = Some(g);
                self.current = Some(Group {
                    first_sent: sent_at,
                    last_sent: sent_at,
                    last_arrival_us: arrival_us,
                });
            }
        }
        self.usage
    }

    fn on_group_delta(&mut self, send_ms: f64, arrival_ms: f64, arrival_us: i64) {
        let delta_ms = arrival_ms - send_ms;
        if delta_ms.abs() > RESET_GAP_MS || arrival_ms < 0.0 {
            *self = Self {
                threshold_ms: self.threshold_ms,
                queue: std::mem::take(&mut self.queue),
                ..Self::default()
            };
            return;
        }
        self.deltas = self.deltas.saturating_add(1);
        self.accumulated_ms += delta_ms;
        self.smoothed_ms = SMOOTHING * self.smoothed_ms + (1.0 - SMOOTHING) * self.accumulated_ms;
        let first = *self.first_arrival_us.get_or_insert(arrival_us);
        let x = (arrival_us - first) as f64 / 1000.0;
        self.samples[self.sample_count % WINDOW] = (x, self.smoothed_ms);
        self.sample_count += 1;
        let trend = if self.sample_count >= WINDOW {
            slope(&self.samples).unwrap_or(self.previous_trend)
        } else {
            self.previous_trend
        };
        self.detect(trend, send_ms, arrival_us);
    }

    fn detect(&mut self, trend: f64, send_ms: f64, now_us: i64) {
        let modified = (self.deltas as f64).min(MAX_DELTAS) * trend * TREND_GAIN;
        self.modified_trend = modified;
        // A queue already this deep and still growing is over-use whatever the filtered
        // trend says yet: at a phone's few hundred kbit/s the trend needs ten or more packets
        // to move, while the bottleneck's queue fills (and drops) in a few.
        let standing = self.queue.delay_ms() > QUEUE_OVERUSE_MS && trend > 0.0;
        if standing && self.usage != BandwidthUsage::Overusing {
            self.overuse_ms = 0.0;
            self.overuse_count = 0;
            self.usage = BandwidthUsage::Overusing;
            self.previous_trend = trend;
            self.modified_trend = modified;
            return;
        }
        if modified > self.threshold_ms {
            if self.overuse_ms < 0.0 {
                self.overuse_ms = send_ms / 2.0;
            } else {
                self.overuse_ms += send_ms;
            }
            self.overuse_count += 1;
            if self.overuse_ms > OVERUSE_TIME_MS
                && self.overuse_count > 1
                && trend >= self.previous_trend
            {
                self.overuse_ms = 0.0;
                self.overuse_count = 0;
                self.usage = BandwidthUsage::Overusing;
            }
        } else if modified < -self.threshold_ms {
            self.overuse_ms = -1.0;
            self.overuse_count = 0;
            self.usage = BandwidthUsage::Underusing;
        } else {
            self.overuse_ms = -1.0;
            self.overuse_count = 0;
            self.usage = BandwidthUsage::Normal;
        }
        self.previous_trend = trend;
        self.adapt_threshold(modified, now_us);
    }

    /// The threshold follows the trend slowly, so a delay level that holds (a standing queue
    /// elsewhere, a competing flow) does not read as over-use forever.
    fn adapt_threshold(&mut self, modified: f64, now_us: i64) {
        let last = *self.last_threshold_update_us.get_or_insert(now_us);
        // Far outside the threshold: a spike, not a trend to follow.
        if modified.abs() > self.threshold_ms + 15.0 {
            self.last_threshold_update_us = Some(now_us);
            return;
        }
        let k = if modified.abs() < self.threshold_ms {
            K_DOWN
        } else {
            K_UP
        };
        let dt_ms = ((now_us - last) as f64 / 1000.0).clamp(0.0, 100.0);
        self.threshold_ms += k * (modified.abs() - self.threshold_ms) * dt_ms;
        self.threshold_ms = self.threshold_ms.clamp(THRESHOLD_MIN_MS, THRESHOLD_MAX_MS);
        self.last_threshold_update_us = Some(now_us);
    }
}

/// How long packets wait in queues on the way: the one-way delay (send and arrival clocks
/// differ by an unknown offset) above the lowest seen over the last 5–10 s.
#[derive(Debug, Default)]
struct QueueDelay {
    epoch: Option<Instant>,
    period_start: Option<Instant>,
    min_this_period: Option<i64>,
    min_last_period: Option<i64>,
    last_one_way_us: i64,
}

impl QueueDelay {
    fn on_packet(&mut self, sent_at: Instant, arrival_us: i64) {
        let epoch = *self.epoch.get_or_insert(sent_at);
        let sent_us = if sent_at >= epoch {
            (sent_at - epoch).as_micros() as i64
        } else {
            -((epoch - sent_at).as_micros() as i64)
        };
        let one_way = arrival_us - sent_us;
        self.last_one_way_us = one_way;
        let start = *self.period_start.get_or_insert(sent_at);
        if sent_at >= start + BASE_PERIOD {
            self.min_last_period = self.min_this_period.take();
            self.period_start = Some(sent_at);
        }
        self.min_this_period = Some(self.min_this_period.map_or(one_way, |m| m.min(one_way)));
    }

    fn delay_ms(&self) -> f64 {
        let base = match (self.min_this_period, self.min_last_period) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return 0.0,
        };
        (self.last_one_way_us - base) as f64 / 1000.0
    }
}

/// Least-squares slope of the samples.
fn slope(samples: &[(f64, f64)]) -> Option<f64> {
    let n = samples.len() as f64;
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = samples.iter().fold((0.0, 0.0), |(num, den), &(x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den != 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    /// 1200-byte packets every `send_every` through a bottleneck of `capacity_bps`
    /// (arrival = max(send, previous departure) + transmission time); the usages seen.
    fn run(capacity_bps: f64, send_every: Duration, packets: u32) -> Vec<BandwidthUsage> {
        let t0 = origin();
        let mut trend = DelayTrend::default();
        let tx_us = 1200.0 * 8.0 / capacity_bps * 1e6;
        let mut free_at = 0.0f64;
        let mut seen = Vec::new();
        for i in 0..packets {
            let sent_us = i as f64 * send_every.as_micros() as f64;
            let arrival = sent_us.max(free_at) + tx_us;
            free_at = arrival;
            seen.push(trend.on_packet(
                t0 + Duration::from_micros(sent_us as u64),
                arrival as i64 + 20_000,
            ));
        }
        seen
    }

    #[test]
    fn a_link_with_room_is_normal() {
        // 1 Mbit/s offered (1200 B every 9.6 ms) into 3 Mbit/s.
        let seen = run(3e6, Duration::from_micros(9600), 600);
        assert!(!seen.contains(&BandwidthUsage::Overusing));
    }

    #[test]
    fn a_growing_queue_is_overuse_within_a_fraction_of_a_second() {
        // 1 Mbit/s offered into 600 kbit/s: the queue grows 40 % of the sending time.
        let seen = run(600e3, Duration::from_micros(9600), 600);
        let first = seen
            .iter()
            .position(|u| *u == BandwidthUsage::Overusing)
            .expect("over-use seen");
        // Packets are 9.6 ms apart: detection within ~40 of them is under 0.4 s.
        assert!(first < 40, "over-use only after {first} packets");
    }

    #[test]
    fn a_draining_queue_is_underuse() {
        let t0 = origin();
        let mut trend = DelayTrend::default();
        // Arrivals come closer together than sends: a queue built earlier drains.
        let mut seen = Vec::new();
        for i in 0..200i64 {
            let sent = t0 + Duration::from_millis(i as u64 * 10);
            let arrival_us = 500_000 + i * 10_000 - (i.min(100) * 3_000);
            seen.push(trend.on_packet(sent, arrival_us));
        }
        assert!(seen.contains(&BandwidthUsage::Underusing));
    }
}
