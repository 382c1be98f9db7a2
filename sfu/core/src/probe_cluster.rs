//! A probe: a short burst of padding toward a subscriber at a rate above its estimate, sent
//! before a layer goes up. What its packets' feedback says the link carried (the slower of the
//! send and the receive rate) becomes a floor for the estimate; a burst that queues shows up
//! as a receive rate below the send rate, which is then the answer. After libwebrtc's probe
//! controller and probe bitrate estimator, with one difference: the receive rate of a burst
//! that queued is taken from its queued packets only. A token bucket (`tc tbf`, a cellular
//! link's scheduler) passes what it saved up at once after a quiet moment; over a 30 ms probe
//! at a phone's rate that is a third of the burst or more, and a receive rate over the whole
//! burst read a 400 kbit/s link as 500–665 kbit/s (the picture went up, then down again).

use crate::send_history::SentPacket;
use std::time::{Duration, Instant};

/// How long a cluster sends.
pub const PROBE_DURATION: Duration = Duration::from_millis(30);
/// Feedback for a cluster is awaited this long before it is judged on what came back.
const RESULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Packets at least, so one burst's spacing is measured over several.
const MIN_PACKETS: u32 = 5;
/// The smallest probe packet (header, transport-wide sequence number, padding, tag): a cluster
/// is at least `MIN_PACKETS` of them, whatever its rate.
const MIN_PACKET_BYTES: usize = 280;
/// A cluster with fewer of its packets acknowledged than this share is no evidence.
const MIN_RECEIVED_SHARE: f64 = 0.8;
/// Arrivals kept of packets sent during a cluster, beyond twice its own padding packets: the
/// media beside it (a dozen or two in 30 ms at 3 Mbit/s) ...
const MEDIA_SAMPLES: usize = 32;
/// ... and at most this many in all.
const MAX_SAMPLES: usize = 512;
/// Queued packets at least, for their rate to stand for the link's (a stall of the receiver
/// near a probe's end delays one or two).
const MIN_QUEUED: usize = 3;
/// A packet that took this much longer to arrive than the quickest of its cluster waited in
/// the bottleneck's queue (feedback gives arrivals in 250 µs steps).
const QUEUED_US: i64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    pub cluster: u16,
    pub bps: u64,
}

#[derive(Debug, Clone)]
pub struct ProbeCluster {
    pub id: u16,
    pub target_bps: u64,
    started: Instant,
    bytes_sent: usize,
    packets_sent: u32,
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
    received: u32,
    received_bytes: usize,
    first_arrival: Option<(i64, usize)>,
    last_arrival_us: Option<i64>,
    lost: u32,
    /// Every packet sent during the cluster that arrived, by arrival: (arrival µs on the
    /// receiver's clock, µs after the cluster's first send, bytes, sequence number).
    arrivals: Vec<(i64, i64, usize, u64)>,
    /// How many `arrivals` may hold.
    arrivals_cap: usize,
}

impl ProbeCluster {
    pub fn new(id: u16, target_bps: u64, now: Instant) -> Self {
        Self {
            id,
            target_bps,
            started: now,
            bytes_sent: 0,
            packets_sent: 0,
            first_sent: None,
            last_sent: None,
            received: 0,
            received_bytes: 0,
            first_arrival: None,
            last_arrival_us: None,
            lost: 0,
            arrivals: Vec::with_capacity(Self::samples_for(target_bps)),
            arrivals_cap: Self::samples_for(target_bps),
        }
    }

    /// Arrivals to keep for a cluster at `target_bps`: twice its padding packets and the media
    /// beside them.
    fn samples_for(target_bps: u64) -> usize {
        let padding =
            target_bps as f64 * PROBE_DURATION.as_secs_f64() / 8.0 / MIN_PACKET_BYTES as f64;
        ((padding as usize).max(MIN_PACKETS as usize) * 2 + MEDIA_SAMPLES).min(MAX_SAMPLES)
    }

    /// Bytes to send now to keep to the target rate (the burst of the current tick).
    pub fn bytes_due(&self, now: Instant, tick: Duration) -> usize {
        let elapsed = now.saturating_duration_since(self.started) + tick;
        let done = now >= self.started + PROBE_DURATION && self.packets_sent >= MIN_PACKETS;
        if done {
            return 0;
        }
        let share = elapsed.min(PROBE_DURATION).as_secs_f64() / PROBE_DURATION.as_secs_f64();
        let total = (self.target_bps as f64 * PROBE_DURATION.as_secs_f64() / 8.0)
            .max((MIN_PACKETS as usize * MIN_PACKET_BYTES) as f64);
        let planned = (total * share) as usize;
        if now >= self.started + PROBE_DURATION && self.packets_sent < MIN_PACKETS {
            // Packets larger than planned: the last ones still go, one each.
            return planned.saturating_sub(self.bytes_sent).max(1);
        }
        planned.saturating_sub(self.bytes_sent)
    }

    /// Whether it has sent all it will.
    pub fn is_sent(&self, now: Instant) -> bool {
        now >= self.started + PROBE_DURATION && self.packets_sent >= MIN_PACKETS
    }

    pub fn on_sent(&mut self, now: Instant, size: usize) {
        self.bytes_sent += size;
        self.packets_sent += 1;
        self.first_sent.get_or_insert(now);
        self.last_sent = Some(now);
    }

    /// A packet of the subscriber's feedback: the cluster's own padding counts toward its
    /// evidence, and every packet sent while it ran — media beside it too — toward the rate.
    /// A packet reported as arrived again (a receiver may repeat itself) counts once.
    pub fn on_feedback(&mut self, sent: &SentPacket, arrival_us: Option<i64>) {
        let Some(first) = self.first_sent else {
            return;
        };
        // The send history keeps whole microseconds: the cluster's first packets read up to
        // one earlier than the instant they were sent at. (Up to the cluster's end, not its
        // last packet so far — feedback may come while it still sends — or its last packet,
        // if a slow one sent its fifth late.)
        let earliest = first.checked_sub(Duration::from_micros(1)).unwrap_or(first);
        let end = self
            .last_sent
            .map_or(first, |last| last.max(self.started + PROBE_DURATION));
        if !(earliest..=end).contains(&sent.sent_at) {
            return;
        }
        let Some(at) = arrival_us else {
            if sent.probe == Some(self.id) {
                self.lost += 1;
            }
            return;
        };
        if self.arrivals.iter().any(|a| a.3 == sent.ext_seq) {
            return;
        }
        if sent.probe == Some(self.id) {
            self.received += 1;
            self.received_bytes += sent.size;
            match self.first_arrival {
                Some((first, _)) if first <= at => {}
                _ => self.first_arrival = Some((at, sent.size)),
            }
            self.last_arrival_us = Some(self.last_arrival_us.map_or(at, |l| l.max(at)));
        }
        if self.arrivals.len() < self.arrivals_cap {
            let offset = sent.sent_at.saturating_duration_since(first).as_micros() as i64;
            let i = self.arrivals.partition_point(|a| a.0 <= at);
            self.arrivals
                .insert(i, (at, offset, sent.size, sent.ext_seq));
        }
    }

    /// The rate at which what queued during the cluster left the bottleneck: from the first
    /// packet that waited (its one-way delay above the cluster's quickest) to the last, over
    /// the time since the arrival before it. `None`: nothing waited (or too little to tell).
    fn queued_rate_bps(&self) -> Option<f64> {
        let quickest = self
            .arrivals
            .iter()
            .map(|&(at, sent, ..)| at - sent)
            .min()?;
        let first = self
            .arrivals
            .iter()
            .position(|&(at, sent, ..)| at - sent > quickest + QUEUED_US)?;
        let queued = &self.arrivals[first..];
        if first == 0 || queued.len() < MIN_QUEUED {
            return None;
        }
        let span_us = queued[queued.len() - 1].0 - self.arrivals[first - 1].0;
        let bytes: usize = queued.iter().map(|&(_, _, size, _)| size).sum();
        (span_us > 0).then(|| bytes as f64 * 8.0 * 1e6 / span_us as f64)
    }

    /// Judged once all its packets are accounted for (or the wait is over): `Some(Some(r))` a
    /// rate, `Some(None)` no evidence, `None` still waiting.
    pub fn result(&self, now: Instant) -> Option<Option<ProbeResult>> {
        if !self.is_sent(now) {
            // One that could not send all it would (no stream left to pad) is given up.
            return (now >= self.started + RESULT_TIMEOUT).then_some(None);
        }
        let accounted = self.received + self.lost;
        if accounted < self.packets_sent && now < self.started + RESULT_TIMEOUT {
            return None;
        }
        if (self.received as f64) < self.packets_sent as f64 * MIN_RECEIVED_SHARE
            || self.received < 2
        {
            return Some(None);
        }
        // The send rate over the cluster's duration (its bursts are a tick apart), the
        // receive rate from first to last arrival without the first packet's bytes.
        let send_span = PROBE_DURATION.as_secs_f64();
        let send_bps = self.bytes_sent as f64 * 8.0 / send_span;
        let (first_at, first_size) = self.first_arrival?;
        let recv_span_us = (self.last_arrival_us? - first_at).max(1) as f64;
        let whole_bps = (self.received_bytes - first_size) as f64 * 8.0 * 1e6 / recv_span_us;
        // Once a queue formed, the bottleneck set the pace: what it saved up and let through
        // before is not its rate.
        let recv_bps = self.queued_rate_bps().unwrap_or(whole_bps);
        let bps = if recv_bps < 0.9 * send_bps {
            // It queued: the receive rate is what the bottleneck let through.
            recv_bps * 0.95
        } else {
            send_bps.min(recv_bps)
        };
        Some(Some(ProbeResult {
            cluster: self.id,
            bps: bps as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    /// Sends a cluster in 10 ms bursts through a bottleneck of `capacity_bps`; its result.
    fn probe(target_bps: u64, capacity_bps: f64) -> Option<ProbeResult> {
        probe_through(target_bps, capacity_bps, 0.0)
    }

    /// The same through a token bucket `burst_bytes` deep, full when the cluster starts (as
    /// `tc tbf … burst` shapes a link).
    fn probe_through(target_bps: u64, capacity_bps: f64, burst_bytes: f64) -> Option<ProbeResult> {
        let (mut c, sent, now) = send_through(target_bps, capacity_bps, burst_bytes);
        assert_eq!(c.result(now), None, "waits for its feedback");
        for (p, at) in &sent {
            c.on_feedback(p, Some(*at));
        }
        c.result(now).expect("judged")
    }

    /// A cluster sent through such a link: the cluster, each packet with its arrival, and
    /// when it was done sending.
    fn send_through(
        target_bps: u64,
        capacity_bps: f64,
        burst_bytes: f64,
    ) -> (ProbeCluster, Vec<(SentPacket, i64)>, Instant) {
        let t0 = origin();
        let burst_us = burst_bytes * 8.0 / capacity_bps * 1e6;
        let tick = Duration::from_millis(10);
        let mut c = ProbeCluster::new(1, target_bps, t0);
        let mut free_at = 0.0f64;
        let mut sent = Vec::new();
        let mut now = t0;
        while !c.is_sent(now) {
            let mut due = c.bytes_due(now, tick);
            while due > 0 {
                let size = 280usize;
                c.on_sent(now, size);
                due = due.saturating_sub(size);
                let at_us = (now - t0).as_micros() as f64;
                // `free_at`: when the link has sent all it was given at its rate; the bucket
                // lets a packet leave that much early.
                free_at = at_us.max(free_at) + size as f64 * 8.0 / capacity_bps * 1e6;
                let arrival = at_us.max(free_at - burst_us);
                sent.push((
                    SentPacket {
                        ext_seq: sent.len() as u64,
                        // As the send history gives it back: in whole microseconds of its
                        // own epoch, so up to one before the instant it was sent at.
                        sent_at: now - Duration::from_nanos(500),
                        size,
                        probe: Some(1),
                    },
                    arrival as i64,
                ));
            }
            now += tick;
        }
        (c, sent, now)
    }

    #[test]
    fn a_link_with_room_measures_the_target() {
        let r = probe(1_500_000, 10e6).expect("rate");
        assert!((1_300_000..=1_800_000).contains(&r.bps), "{r:?}");
    }

    #[test]
    fn a_narrow_link_measures_its_capacity() {
        let r = probe(2_000_000, 600e3).expect("rate");
        assert!((450_000..=650_000).contains(&r.bps), "{r:?}");
    }

    #[test]
    fn a_token_bucket_s_saved_up_burst_is_not_read_as_headroom() {
        // What `tc tbf rate 400kbit burst 1600` lets through: the first 1,600 bytes at once,
        // the rest at 400 kbit/s. Read over the whole burst, a probe at 850 kbit/s measured
        // 665 kbit/s (as probes did in Chromium behind such a link).
        let r = probe_through(850_000, 400e3, 1600.0).expect("rate");
        assert!((300_000..=440_000).contains(&r.bps), "{r:?}");
        // With room for the whole probe, the bucket changes nothing.
        let r = probe_through(850_000, 3e6, 3000.0).expect("rate");
        assert!((750_000..=950_000).contains(&r.bps), "{r:?}");
    }

    #[test]
    fn repeated_reports_and_packets_of_before_it_leave_the_result_as_it_was() {
        let (mut c, sent, now) = send_through(850_000, 400e3, 1600.0);
        let before = sent[0].0.sent_at - Duration::from_millis(5);
        for (p, at) in sent.iter().chain(&sent) {
            c.on_feedback(p, Some(*at));
        }
        // A packet sent before the cluster, reported as arriving amid it, is not of it.
        let stale = SentPacket {
            ext_seq: 1000,
            sent_at: before,
            size: 1200,
            probe: None,
        };
        c.on_feedback(&stale, Some(sent[sent.len() / 2].1));
        let r = c.result(now).expect("judged").expect("rate");
        assert_eq!(Some(r), probe_through(850_000, 400e3, 1600.0));
        assert_eq!(c.received as usize, sent.len(), "each packet counted once");
    }

    #[test]
    fn a_lost_cluster_is_no_evidence() {
        let t0 = origin();
        let mut c = ProbeCluster::new(1, 1_000_000, t0);
        for _ in 0..10 {
            c.on_sent(t0, 300);
        }
        let later = t0 + Duration::from_millis(40);
        for i in 0..10 {
            let p = SentPacket {
                ext_seq: i,
                sent_at: t0,
                size: 300,
                probe: Some(1),
            };
            c.on_feedback(&p, (i < 5).then_some(i as i64 * 1000));
        }
        assert_eq!(c.result(later), Some(None));
    }

    #[test]
    fn a_slow_target_still_sends_five_packets_and_a_stuck_one_is_given_up() {
        let t0 = origin();
        let tick = Duration::from_millis(10);
        // 100 kbit/s for 30 ms is 375 bytes: fewer than five padding packets.
        let mut c = ProbeCluster::new(1, 100_000, t0);
        let mut now = t0;
        while !c.is_sent(now) && now < t0 + Duration::from_millis(200) {
            let mut due = c.bytes_due(now, tick);
            while due > 0 {
                c.on_sent(now, 291);
                due = due.saturating_sub(291);
            }
            now += tick;
        }
        assert!(c.is_sent(now), "five packets went out");
        assert_eq!(c.packets_sent, MIN_PACKETS);
        // A cluster that never sent (no stream to pad) is judged, empty, after the timeout.
        let idle = ProbeCluster::new(2, 1_000_000, t0);
        assert_eq!(idle.result(t0 + Duration::from_millis(500)), None);
        assert_eq!(idle.result(t0 + RESULT_TIMEOUT), Some(None));
    }
}
