//! What receivers measure, per incoming stream, from the clear RTP header (every subscriber)
//! and from the decrypted payload's stamp (a sample): packets, loss, reordering, interarrival
//! jitter (RFC 3550 §6.4.1), one-way latency.

use hdrhistogram::Histogram;
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct StreamRx {
    first_ext: u64,
    highest_ext: u64,
    pub received: u64,
    pub reordered: u64,
    started: bool,
    /// Previous (arrival ns, RTP timestamp) and the running jitter in timestamp units.
    last: Option<(u64, u32)>,
    jitter: f64,
    clock_hz: u32,
}

impl StreamRx {
    fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival_ns: u64, clock_hz: u32) {
        self.clock_hz = clock_hz;
        if !self.started {
            self.started = true;
            self.first_ext = seq as u64 + (1 << 32);
            self.highest_ext = self.first_ext;
        } else {
            let d = seq.wrapping_sub(self.highest_ext as u16) as i16 as i64;
            let ext = (self.highest_ext as i64 + d) as u64;
            if ext > self.highest_ext {
                self.highest_ext = ext;
            } else {
                self.reordered += 1;
            }
        }
        self.received += 1;
        if let Some((prev_arrival, prev_ts)) = self.last {
            let arrival_units = (arrival_ns as f64 - prev_arrival as f64) * clock_hz as f64 / 1e9;
            let ts_units = rtp_ts.wrapping_sub(prev_ts) as i32 as f64;
            let d = (arrival_units - ts_units).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last = Some((arrival_ns, rtp_ts));
    }

    pub fn expected(&self) -> u64 {
        if self.started {
            self.highest_ext - self.first_ext + 1
        } else {
            0
        }
    }

    pub fn jitter_ms(&self) -> f64 {
        if self.clock_hz == 0 {
            0.0
        } else {
            self.jitter / self.clock_hz as f64 * 1000.0
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    pub streams: HashMap<u32, StreamRx>,
    /// One-way latency in microseconds; only sampled receivers have one (merging thousands of
    /// empty histograms would stall the generator).
    pub latency_us: Option<Histogram<u64>>,
    pub bytes: u64,
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("histogram bounds")
}

impl ReceiveStats {
    pub fn on_header(
        &mut self,
        ssrc: u32,
        seq: u16,
        rtp_ts: u32,
        arrival_ns: u64,
        clock_hz: u32,
        len: usize,
    ) {
        self.streams
            .entry(ssrc)
            .or_default()
            .on_packet(seq, rtp_ts, arrival_ns, clock_hz);
        self.bytes += len as u64;
    }

    pub fn on_latency(&mut self, sent_ns: u64, arrival_ns: u64) {
        let us = arrival_ns.saturating_sub(sent_ns) / 1000;
        let _ = self
            .latency_us
            .get_or_insert_with(latency_histogram)
            .record(us.max(1));
    }

    pub fn packets(&self) -> u64 {
        self.streams.values().map(|s| s.received).sum()
    }

    pub fn expected(&self) -> u64 {
        self.streams.values().map(StreamRx::expected).sum()
    }

    pub fn loss_pct(&self) -> f64 {
        loss_pct(self.expected(), self.packets())
    }

    pub fn mean_jitter_ms(&self) -> f64 {
        let n = self.streams.len();
        if n == 0 {
            return 0.0;
        }
        self.streams.values().map(StreamRx::jitter_ms).sum::<f64>() / n as f64
    }
}

fn loss_pct(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    expected.saturating_sub(received) as f64 * 100.0 / expected as f64
}

/// Receive figures summed over many clients.
#[derive(Debug, Clone)]
pub struct RxTotals {
    pub packets: u64,
    pub expected: u64,
    pub bytes: u64,
    pub streams: u64,
    pub reordered: u64,
    jitter_sum_ms: f64,
    pub latency_us: Histogram<u64>,
}

impl Default for RxTotals {
    fn default() -> Self {
        Self {
            packets: 0,
            expected: 0,
            bytes: 0,
            streams: 0,
            reordered: 0,
            jitter_sum_ms: 0.0,
            latency_us: latency_histogram(),
        }
    }
}

impl RxTotals {
    pub fn add(&mut self, s: &ReceiveStats) {
        self.packets += s.packets();
        self.expected += s.expected();
        self.bytes += s.bytes;
        self.streams += s.streams.len() as u64;
        self.jitter_sum_ms += s.streams.values().map(StreamRx::jitter_ms).sum::<f64>();
        self.reordered += s.streams.values().map(|x| x.reordered).sum::<u64>();
        if let Some(h) = &s.latency_us {
            let _ = self.latency_us.add(h);
        }
    }

    pub fn loss_pct(&self) -> f64 {
        loss_pct(self.expected, self.packets)
    }

    pub fn mean_jitter_ms(&self) -> f64 {
        if self.streams == 0 {
            0.0
        } else {
            self.jitter_sum_ms / self.streams as f64
        }
    }

    /// A latency quantile in milliseconds (0 without samples).
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            0.0
        } else {
            self.latency_us.value_at_quantile(q) as f64 / 1000.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_reordering_and_wraparound_are_counted() {
        let mut s = ReceiveStats::default();
        let mut t = 0u64;
        // 65530..=65535, 0..=9 with 3 missing and 5 late.
        let mut seqs: Vec<u16> = (65530..=65535).chain(0..10).filter(|&q| q != 3).collect();
        let five = seqs.iter().position(|&q| q == 5).unwrap();
        seqs.remove(five);
        seqs.push(5);
        for q in seqs {
            t += 20_000_000;
            s.on_header(7, q, (t / 1_000_000 * 48) as u32, t, 48_000, 100);
        }
        let st = &s.streams[&7];
        assert_eq!(st.expected(), 16);
        assert_eq!(st.received, 15);
        assert_eq!(st.reordered, 1);
        assert!((s.loss_pct() - 100.0 / 16.0).abs() < 1e-9);
        assert!(s.mean_jitter_ms() < 1.0, "steady arrivals have ~no jitter");
    }
}
