//! A receiver's downlink shaped in the generator, as `tc tbf` shapes a phone's link: a token
//! bucket at the current capacity draining a drop-tail queue of a fixed delay, the capacity
//! stepping through a schedule (`3000:10,400:20,3000:20`: kbit/s for seconds). Every packet
//! the server sends the receiver passes through it before the receiver (its feedback, its
//! statistics) sees it, and each phase of the schedule is measured: what the server offered
//! and what got through, what the queue dropped (audio and video apart), how long packets
//! queued, how long the video stopped, and how soon the server adapted to the step.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Offered rate is judged over bins this long when finding when the server adapted.
const BIN: Duration = Duration::from_millis(250);
/// The video counts as stopped after this long without a packet.
const VIDEO_STALL: Duration = Duration::from_millis(500);

/// The capacities a downlink steps through.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkSchedule {
    /// (capacity in bits per second, how long).
    pub phases: Vec<(u64, Duration)>,
}

impl std::str::FromStr for LinkSchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let phases = s
            .split(',')
            .map(|step| {
                let (kbps, secs) = step
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| format!("`{step}`: expected kbit/s:seconds, e.g. 400:20"))?;
                let kbps: u64 = kbps
                    .parse()
                    .map_err(|_| format!("`{kbps}`: capacity must be whole kbit/s"))?;
                let secs: f64 = secs
                    .parse()
                    .map_err(|_| format!("`{secs}`: duration must be seconds"))?;
                if kbps == 0 || !(secs > 0.0 && secs.is_finite()) {
                    return Err(format!("`{step}`: capacity and duration must be above 0"));
                }
                Ok((kbps * 1000, Duration::from_secs_f64(secs)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if phases.is_empty() {
            return Err("an empty schedule".into());
        }
        Ok(Self { phases })
    }
}

impl LinkSchedule {
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|p| p.1).sum()
    }

    /// The phase at `elapsed` (the last one after the schedule's end).
    fn phase_at(&self, elapsed: Duration) -> usize {
        let mut end = Duration::ZERO;
        for (i, (_, d)) in self.phases.iter().enumerate() {
            end += *d;
            if elapsed < end {
                return i;
            }
        }
        self.phases.len() - 1
    }
}

/// What one receiver's link did in one phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseTally {
    pub offered_bytes: u64,
    pub delivered_bytes: u64,
    pub audio_offered: u64,
    pub audio_dropped: u64,
    pub video_offered: u64,
    pub video_dropped: u64,
    /// How long each delivered packet waited in the queue, microseconds.
    pub queue_us: Vec<u32>,
    /// Bytes offered per [`BIN`], from the phase's start.
    pub offered_bins: Vec<u64>,
    /// Bytes that got through per [`BIN`], by when they arrived.
    pub delivered_bins: Vec<u64>,
    /// Time without video over [`VIDEO_STALL`] (the whole gap counts).
    pub video_stalled: Duration,
    last_video: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Queued {
    deliver_at: Instant,
    queued_at: Instant,
    from: SocketAddr,
    audio: bool,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ShapedDownlink {
    schedule: LinkSchedule,
    queue_limit: Duration,
    started: Instant,
    /// When the link is next free to start a packet.
    free_at: Instant,
    queue: VecDeque<Queued>,
    pub phases: Vec<PhaseTally>,
}

impl ShapedDownlink {
    pub fn new(schedule: LinkSchedule, queue_limit: Duration, now: Instant) -> Self {
        let phases = vec![PhaseTally::default(); schedule.phases.len()];
        Self {
            schedule,
            queue_limit,
            started: now,
            free_at: now,
            queue: VecDeque::new(),
            phases,
        }
    }

    fn phase(&self, now: Instant) -> usize {
        self.schedule
            .phase_at(now.saturating_duration_since(self.started))
    }

    fn phase_start(&self, phase: usize) -> Instant {
        self.started
            + self.schedule.phases[..phase]
                .iter()
                .map(|p| p.1)
                .sum::<Duration>()
    }

    /// A packet from the server: queued behind what waits, or dropped when the queue already
    /// holds `queue_limit` of traffic at the current capacity.
    pub fn offer(&mut self, now: Instant, from: SocketAddr, packet: &[u8], audio: bool) {
        let p = self.phase(now);
        let rate = self.schedule.phases[p].0;
        let bin = (now
            .saturating_duration_since(self.phase_start(p))
            .as_nanos()
            / BIN.as_nanos()) as usize;
        let tally = &mut self.phases[p];
        tally.offered_bytes += packet.len() as u64;
        if tally.offered_bins.len() <= bin {
            tally.offered_bins.resize(bin + 1, 0);
        }
        tally.offered_bins[bin] += packet.len() as u64;
        if audio {
            tally.audio_offered += 1;
        } else {
            tally.video_offered += 1;
        }
        let start = self.free_at.max(now);
        if start.saturating_duration_since(now) > self.queue_limit {
            if audio {
                tally.audio_dropped += 1;
            } else {
                tally.video_dropped += 1;
            }
            return;
        }
        let on_wire = Duration::from_nanos(packet.len() as u64 * 8 * 1_000_000_000 / rate);
        self.free_at = start + on_wire;
        self.queue.push_back(Queued {
            deliver_at: self.free_at,
            queued_at: now,
            from,
            audio,
            bytes: packet.to_vec(),
        });
    }

    /// The next packet through the link by `now`, tallied in the phase it arrives in.
    pub fn deliver(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>, Instant)> {
        if self.queue.front()?.deliver_at > now {
            return None;
        }
        let q = self.queue.pop_front()?;
        let p = self.phase(q.deliver_at);
        let bin = (q
            .deliver_at
            .saturating_duration_since(self.phase_start(p))
            .as_nanos()
            / BIN.as_nanos()) as usize;
        let tally = &mut self.phases[p];
        tally.delivered_bytes += q.bytes.len() as u64;
        if tally.delivered_bins.len() <= bin {
            tally.delivered_bins.resize(bin + 1, 0);
        }
        tally.delivered_bins[bin] += q.bytes.len() as u64;
        let waited = q.deliver_at.saturating_duration_since(q.queued_at);
        tally
            .queue_us
            .push(waited.as_micros().min(u32::MAX as u128) as u32);
        if !q.audio {
            if let Some(last) = tally.last_video {
                let gap = q.deliver_at.saturating_duration_since(last);
                if gap > VIDEO_STALL {
                    tally.video_stalled += gap;
                }
            }
            tally.last_video = Some(q.deliver_at);
        }
        Some((q.from, q.bytes, q.deliver_at))
    }

    /// Closes each phase's stall count at its end (video that never came back counts).
    pub fn finish(&mut self, now: Instant) {
        for p in 0..self.phases.len() {
            let end = self.phase_start(p) + self.schedule.phases[p].1;
            let end = end.min(now);
            let start = self.phase_start(p);
            if end <= start {
                continue;
            }
            let tally = &mut self.phases[p];
            let last = tally.last_video.unwrap_or(start).max(start);
            let gap = end.saturating_duration_since(last);
            if gap > VIDEO_STALL {
                tally.video_stalled += gap;
            }
            tally.last_video = Some(end);
        }
    }
}

/// The phases of several receivers' links, summed up.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseReport {
    pub capacity_kbps: u64,
    pub seconds: f64,
    /// What got through per receiver over the capacity.
    pub utilisation_pct: f64,
    /// What the server offered per receiver.
    pub offered_kbps: f64,
    pub video_loss_pct: f64,
    pub audio_loss_pct: f64,
    pub queue_p95_ms: f64,
    /// Mean per receiver.
    pub video_stalled_s: f64,
    /// After a step: how soon the server's offered rate fitted the new capacity (down) or
    /// came back to 80 % of what it sent on the first, unconstrained phase (up); the median
    /// and the slowest receiver, `None` when it never did in the phase.
    pub adapt_median_s: Option<f64>,
    pub adapt_max_s: Option<f64>,
    pub adapted: usize,
    pub receivers: usize,
    /// Per 250 ms from the phase's start, mean per receiver: what the server sent, and what
    /// got through (kbit/s), for the plot.
    pub sent_kbps_bins: Vec<f64>,
    pub through_kbps_bins: Vec<f64>,
}

/// Sums up the phases of every receiver's link (all on one schedule).
pub fn summarise(links: &[ShapedDownlink]) -> Vec<PhaseReport> {
    let Some(first) = links.first() else {
        return Vec::new();
    };
    let schedule = first.schedule.clone();
    let n = links.len() as f64;
    let bin_rate = |bytes: u64| bytes as f64 * 8.0 / BIN.as_secs_f64();
    // What each receiver was sent on the first phase: its unconstrained rate.
    let reference: Vec<f64> = links
        .iter()
        .map(|l| {
            let t = &l.phases[0];
            t.offered_bytes as f64 * 8.0 / schedule.phases[0].1.as_secs_f64()
        })
        .collect();
    schedule
        .phases
        .iter()
        .enumerate()
        .map(|(p, &(rate, dur))| {
            let secs = dur.as_secs_f64();
            let sum =
                |f: &dyn Fn(&PhaseTally) -> u64| links.iter().map(|l| f(&l.phases[p])).sum::<u64>();
            let pct = |a: u64, b: u64| {
                if b == 0 {
                    0.0
                } else {
                    a as f64 * 100.0 / b as f64
                }
            };
            let mut queue: Vec<u32> = links
                .iter()
                .flat_map(|l| l.phases[p].queue_us.iter().copied())
                .collect();
            queue.sort_unstable();
            let queue_p95_ms = queue
                .get(((queue.len() as f64 * 0.95) as usize).min(queue.len().saturating_sub(1)))
                .map_or(0.0, |&us| us as f64 / 1000.0);
            let step = (p > 0).then(|| schedule.phases[p - 1].0);
            let mut adapt: Vec<f64> = Vec::new();
            if let Some(before) = step {
                for (l, reference) in links.iter().zip(&reference) {
                    let bins = &l.phases[p].offered_bins;
                    let fits = |b: &u64| {
                        if rate < before {
                            bin_rate(*b) <= rate as f64
                        } else {
                            bin_rate(*b) >= reference * 0.8
                        }
                    };
                    if let Some(i) = bins.iter().position(fits) {
                        adapt.push((i + 1) as f64 * BIN.as_secs_f64());
                    }
                }
            }
            adapt.sort_by(f64::total_cmp);
            let bins = (dur.as_nanos() / BIN.as_nanos()) as usize;
            let mean_bins = |f: &dyn Fn(&PhaseTally) -> &Vec<u64>| -> Vec<f64> {
                (0..bins)
                    .map(|i| {
                        links
                            .iter()
                            .map(|l| f(&l.phases[p]).get(i).copied().unwrap_or(0))
                            .map(bin_rate)
                            .sum::<f64>()
                            / n
                            / 1000.0
                    })
                    .collect()
            };
            PhaseReport {
                sent_kbps_bins: mean_bins(&|t| &t.offered_bins),
                through_kbps_bins: mean_bins(&|t| &t.delivered_bins),
                capacity_kbps: rate / 1000,
                seconds: secs,
                utilisation_pct: sum(&|t| t.delivered_bytes) as f64 * 8.0 / n / secs * 100.0
                    / rate as f64,
                offered_kbps: sum(&|t| t.offered_bytes) as f64 * 8.0 / n / secs / 1000.0,
                video_loss_pct: pct(sum(&|t| t.video_dropped), sum(&|t| t.video_offered)),
                audio_loss_pct: pct(sum(&|t| t.audio_dropped), sum(&|t| t.audio_offered)),
                queue_p95_ms,
                video_stalled_s: links
                    .iter()
                    .map(|l| l.phases[p].video_stalled.as_secs_f64())
                    .sum::<f64>()
                    / n,
                adapt_median_s: (!adapt.is_empty()).then(|| adapt[adapt.len() / 2]),
                adapt_max_s: (step.is_some() && adapt.len() == links.len())
                    .then(|| adapt.last().copied())
                    .flatten(),
                adapted: adapt.len(),
                receivers: links.len(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn schedules_parse_and_name_their_mistakes() {
        let s: LinkSchedule = "3000:10, 400:20,3000:2.5".parse().unwrap();
        assert_eq!(s.phases[1], (400_000, Duration::from_secs(20)));
        assert_eq!(s.total(), Duration::from_secs_f64(32.5));
        assert_eq!(s.phase_at(Duration::from_secs(10)), 1);
        assert_eq!(s.phase_at(Duration::from_secs(99)), 2);
        for bad in ["", "400", "x:1", "400:0", "0:5", "400:-1"] {
            assert!(bad.parse::<LinkSchedule>().is_err(), "{bad}");
        }
    }

    /// 1 Mbit/s offered into 400 kbit/s with 250 ms of queue: the queue fills to its limit,
    /// then drops what does not fit; what gets through is the capacity.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_link_carries_its_capacity_queues_up_to_its_limit_and_drops_the_rest() {
        let t0 = Instant::now();
        let mut link =
            ShapedDownlink::new("400:4".parse().unwrap(), Duration::from_millis(250), t0);
        let mut delivered = 0usize;
        // 1,250-byte packets every 10 ms: 1 Mbit/s, for 4 s.
        for ms in 0..4000u64 {
            let now = t0 + Duration::from_millis(ms);
            if ms % 10 == 0 {
                link.offer(now, addr(), &[0u8; 1250], false);
            }
            while let Some((_, bytes, _)) = link.deliver(now) {
                delivered += bytes.len();
            }
        }
        link.finish(t0 + Duration::from_secs(4));
        let r = summarise(&[link]);
        assert_eq!(r.len(), 1);
        let carried = delivered as f64 * 8.0 / 4.0;
        assert!((370_000.0..=410_000.0).contains(&carried), "{carried}");
        assert!((90.0..=102.0).contains(&r[0].utilisation_pct), "{:?}", r[0]);
        assert!((50.0..=65.0).contains(&r[0].video_loss_pct), "{:?}", r[0]);
        // Up to 250 ms waiting to start, plus its own 25 ms on the wire.
        assert!((200.0..=280.0).contains(&r[0].queue_p95_ms), "{:?}", r[0]);
        assert_eq!(r[0].video_stalled_s, 0.0);
    }

    #[allow(clippy::disallowed_methods)]
    #[test]
    fn adapting_is_timed_from_the_step_and_a_stopped_video_is_counted() {
        let t0 = Instant::now();
        let mut link = ShapedDownlink::new(
            "3000:2,400:2".parse().unwrap(),
            Duration::from_millis(250),
            t0,
        );
        // 800 kbit/s until 2.6 s (0.6 s into the step down), then 200 kbit/s; no video
        // from 3 s to the end.
        for ms in 0..4000u64 {
            let now = t0 + Duration::from_millis(ms);
            let (every, audio) = match ms {
                0..2600 => (10, false),
                2600..3000 => (40, false),
                _ => (40, true),
            };
            if ms % every == 0 {
                link.offer(now, addr(), &[0u8; 1000], audio);
            }
            while link.deliver(now).is_some() {}
        }
        link.finish(t0 + Duration::from_secs(4));
        let r = summarise(&[link]);
        assert_eq!(r[0].adapt_median_s, None, "no step into the first phase");
        // The bin of 2.5–2.75 s still holds 448 kbit/s (800 until 2.6); the next is within
        // 400: adapted by the end of it, 1 s after the step.
        assert_eq!(r[1].adapt_median_s, Some(1.0));
        assert!(
            (0.9..=1.1).contains(&r[1].video_stalled_s),
            "{}",
            r[1].video_stalled_s
        );
    }
}
