//! A step up on trial: the seconds after a subscriber's video went up a layer (or resumed),
//! when its link shows whether it carries the step. Loss that was not there before fails the
//! step at once — at the first window of feedback that shows it, not when a window's loss
//! passes the estimate's 10 % — so the picture goes back to what the link carries before the
//! new layer's losses freeze it. Loss while nothing queued marks a *policer*: a rate limit that
//! passes a burst (a probe whole, and the new layer's first seconds) and drops the rest, whose
//! probes are not to be believed for a while.

use crate::bandwidth_estimator::BandwidthEstimator;
use std::time::{Duration, Instant};

/// How long a step is on trial (a policer's bucket may take seconds to run dry).
const TRIAL: Duration = Duration::from_secs(8);
/// Loss is judged over windows of feedback at least this long and this many packets, and a
/// step fails on two lossy windows in a row: a link's random loss reads as a failure in one
/// window now and then (4 of 40 packets lost at 2 % random loss is one window in a hundred),
/// in two in a row seldom.
const WINDOW: Duration = Duration::from_millis(500);
const MIN_PACKETS: u64 = 40;
/// Loss that makes a window lossy: at least `LOSS_FLOOR`, and well above the loss before the
/// step (twice it and `LOSS_MARGIN` more: a link with random loss keeps it whatever the
/// layer). A policer drops what exceeds it: a layer a fifth above its rate loses a sixth.
const LOSS_MARGIN: f64 = 0.03;
const LOSS_FLOOR: f64 = 0.10;
/// Loss this heavy fails a step in one window, and without waiting out its time: a layer
/// twice the link's rate or more (a burst of loss on Wi-Fi, 60 ms of it, is 12 packets of 40
/// at 200 a second; 20 of 40 at 5 % random loss is one in 10¹²).
const LOSS_HEAVY: f64 = 0.50;
/// Below this much queueing delay throughout, a loss is a policer's, not a full queue's.
const POLICER_QUEUE_MS: f64 = 30.0;

#[derive(Debug, Clone, Copy)]
pub struct StepTrial {
    started: Instant,
    /// The window being filled: when it began, and the estimator's counts then.
    window_start: Instant,
    received: u64,
    lost: u64,
    loss_before: f64,
    most_queued_ms: f64,
    /// The last window was lossy (one more fails the step).
    lossy_window: bool,
    /// What was allocated before the step (bits per second): what the link carried.
    pub allocated_before: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialVerdict {
    Pending,
    Passed,
    /// `policed`: lost with nothing queued.
    Failed {
        policed: bool,
    },
}

impl StepTrial {
    pub fn start(now: Instant, estimator: &BandwidthEstimator, allocated_before: u64) -> Self {
        let (received, lost) = estimator.packets_reported();
        Self {
            started: now,
            window_start: now,
            received,
            lost,
            loss_before: estimator.recent_loss(),
            most_queued_ms: 0.0,
            lossy_window: false,
            allocated_before,
        }
    }

    /// Another step while this one is on trial: judged as long again, from the same start
    /// (what was sent, and lost, before the first).
    pub fn extend(&mut self, now: Instant) {
        self.started = now;
    }

    /// Judged after each feedback message.
    pub fn judge(&mut self, now: Instant, estimator: &BandwidthEstimator) -> TrialVerdict {
        self.most_queued_ms = self.most_queued_ms.max(estimator.queue_delay_ms());
        let (received, lost) = estimator.packets_reported();
        let window_lost = lost.saturating_sub(self.lost);
        let total = received.saturating_sub(self.received) + window_lost;
        if total >= MIN_PACKETS {
            let loss = window_lost as f64 / total as f64;
            let lossy = loss >= LOSS_FLOOR.max(2.0 * self.loss_before + LOSS_MARGIN);
            let heavy = loss >= LOSS_HEAVY.max(3.0 * self.loss_before);
            if heavy || (lossy && self.lossy_window && now >= self.window_start + WINDOW) {
                return TrialVerdict::Failed {
                    policed: self.most_queued_ms < POLICER_QUEUE_MS,
                };
            }
            if now >= self.window_start + WINDOW {
                self.lossy_window = lossy;
                (self.window_start, self.received, self.lost) = (now, received, lost);
            }
        }
        if now >= self.started + TRIAL {
            TrialVerdict::Passed
        } else {
            TrialVerdict::Pending
        }
    }

    /// For a step that failed otherwise (the estimate's own loss cut, which may come first, or
    /// a delay that grew): whether it failed as behind a policer — the last window of feedback
    /// lost `LOSS_FLOOR` or more, and nothing queued on the way since the step.
    pub fn policed(&mut self, estimator: &BandwidthEstimator) -> bool {
        self.most_queued_ms = self.most_queued_ms.max(estimator.queue_delay_ms());
        self.most_queued_ms < POLICER_QUEUE_MS && estimator.loss_fraction >= LOSS_FLOOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandwidth_estimator::PacketResult;

    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    /// Feedback every 50 ms for `ms` from `from_ms` on: a 1,000-byte packet every `gap` ms,
    /// each `lose(i)` lost, and the others waiting `queued_ms(i)` in a queue on the way.
    #[allow(clippy::too_many_arguments)]
    fn feed_every(
        gap: u64,
        e: &mut BandwidthEstimator,
        t0: Instant,
        from_ms: u64,
        ms: u64,
        mut lose: impl FnMut(u64) -> bool,
        queued_ms: impl Fn(u64) -> u64,
        mut each: impl FnMut(Instant, &BandwidthEstimator),
    ) {
        for batch in (from_ms..from_ms + ms).step_by(50) {
            let packets: Vec<PacketResult> = (batch.div_ceil(gap) * gap..batch + 50)
                .step_by(gap as usize)
                .map(|t| PacketResult {
                    sent_at: t0 + Duration::from_millis(t),
                    size: 1000,
                    arrival_us: (!lose(t)).then(|| ((t + 20 + queued_ms(t)) * 1000) as i64),
                })
                .collect();
            let now = t0 + Duration::from_millis(batch + 70);
            e.on_feedback(now, packets);
            each(now, e);
        }
    }

    fn feed(
        e: &mut BandwidthEstimator,
        t0: Instant,
        from_ms: u64,
        ms: u64,
        lose: impl FnMut(u64) -> bool,
        queued_ms: impl Fn(u64) -> u64,
        each: impl FnMut(Instant, &BandwidthEstimator),
    ) {
        feed_every(5, e, t0, from_ms, ms, lose, queued_ms, each);
    }

    /// Runs a trial started at `at_ms` over what `feed` reports after it; its verdicts.
    fn trial_of(
        lose: impl FnMut(u64) -> bool + Copy,
        queued_ms: impl Fn(u64) -> u64 + Copy,
    ) -> Vec<TrialVerdict> {
        let t0 = origin();
        let mut e = BandwidthEstimator::new(1_000_000);
        // Two seconds of the link before the step.
        feed(&mut e, t0, 0, 2000, lose, queued_ms, |_, _| {});
        let mut trial = StepTrial::start(t0 + Duration::from_millis(2000), &e, 500_000);
        let mut verdicts = Vec::new();
        feed(&mut e, t0, 2000, 9000, lose, queued_ms, |now, e| {
            verdicts.push(trial.judge(now, e));
        });
        verdicts
    }

    fn first_decided(verdicts: &[TrialVerdict]) -> Option<(usize, TrialVerdict)> {
        verdicts
            .iter()
            .copied()
            .enumerate()
            .find(|(_, v)| *v != TrialVerdict::Pending)
    }

    #[test]
    fn loss_that_came_with_the_step_fails_it_within_a_few_feedback_messages() {
        // A policer: clean before the step, every fifth packet dropped after, nothing queued.
        let verdicts = trial_of(|t| t >= 2000 && t % 25 == 0, |_| 0);
        let (at, verdict) = first_decided(&verdicts).expect("decided");
        assert_eq!(verdict, TrialVerdict::Failed { policed: true });
        // Two lossy windows of half a second (20 messages of 50 ms).
        assert!(at <= 22, "after {} feedback messages", at + 1);
        // Loss several times the link's (a layer far above it) fails it in one.
        let verdicts = trial_of(|t| t >= 2000 && t % 10 != 5, |_| 0);
        let (at, verdict) = first_decided(&verdicts).expect("decided");
        assert_eq!(verdict, TrialVerdict::Failed { policed: true });
        assert!(at <= 3, "after {} feedback messages", at + 1);
    }

    /// Trials of steps on links that lose packets at random (`loss`), as much before the step
    /// as after, a packet every 12 ms (40 a window): how many of `trials` failed.
    fn random_failures(loss: f64, trials: u64) -> usize {
        (0..trials)
            .filter(|&seed| {
                // xorshift64*: the same draws every run.
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut lose = move |_| {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    let draw = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64;
                    draw / ((1u64 << 53) as f64) < loss
                };
                let t0 = origin();
                let mut e = BandwidthEstimator::new(1_000_000);
                feed_every(12, &mut e, t0, 0, 3000, &mut lose, |_| 0, |_, _| {});
                let mut trial = StepTrial::start(t0 + Duration::from_millis(3000), &e, 500_000);
                let mut failed = false;
                feed_every(
                    12,
                    &mut e,
                    t0,
                    3000,
                    8500,
                    &mut lose,
                    |_| 0,
                    |now, e| {
                        failed |= matches!(trial.judge(now, e), TrialVerdict::Failed { .. });
                    },
                );
                failed
            })
            .count()
    }

    #[test]
    fn random_loss_the_link_had_before_seldom_fails_a_step() {
        let at_2 = random_failures(0.02, 200);
        let at_5 = random_failures(0.05, 200);
        println!("steps failed by random loss alone: {at_2} of 200 at 2 %, {at_5} of 200 at 5 %");
        assert!(at_2 <= 1, "{at_2} of 200 at 2 %");
        assert!(at_5 <= 8, "{at_5} of 200 at 5 %");
    }

    #[test]
    fn a_burst_of_loss_now_and_then_does_not_fail_a_step() {
        // Wi-Fi: 60 ms lost every 2 s, before the step and after.
        let verdicts = trial_of(|t| t % 2000 < 60, |_| 0);
        assert_eq!(
            first_decided(&verdicts).map(|(_, v)| v),
            Some(TrialVerdict::Passed)
        );
    }

    #[test]
    fn loss_that_starts_seconds_after_the_step_fails_it_too() {
        // A policer's bucket ran dry 3 s after the step.
        let verdicts = trial_of(|t| t >= 5000 && t % 25 == 0, |_| 0);
        let (at, verdict) = first_decided(&verdicts).expect("decided");
        assert_eq!(verdict, TrialVerdict::Failed { policed: true });
        // 3 s of clean feedback (60 messages of 50 ms) first; then within two or three windows.
        assert!(
            (60..=92).contains(&at),
            "after {} feedback messages",
            at + 1
        );
    }

    #[test]
    fn loss_from_a_full_queue_fails_the_step_but_is_no_policer() {
        // The queue grows 1 ms per packet after the step, then drops.
        let verdicts = trial_of(|t| t >= 2200 && t % 25 == 0, |t| t.saturating_sub(2000) / 5);
        let (_, verdict) = first_decided(&verdicts).expect("decided");
        assert_eq!(verdict, TrialVerdict::Failed { policed: false });
    }

    #[test]
    fn a_link_that_lost_as_much_before_the_step_passes_it() {
        // 5 % random-looking loss throughout: the step brought none of it.
        let verdicts = trial_of(|t| (t / 5) * 7 % 20 == 3, |_| 0);
        let (at, verdict) = first_decided(&verdicts).expect("decided");
        assert_eq!(verdict, TrialVerdict::Passed, "{verdicts:?}");
        // Judged over the whole trial (8 s: 160 feedback messages of 50 ms).
        assert!(at >= 158, "passed after {} messages", at + 1);
        // Three times as much after the step fails it.
        let verdicts = trial_of(
            |t| (t / 5) * 7 % 20 == 3 || (t >= 2000 && (t / 5) * 7 % 20 < 3),
            |_| 0,
        );
        assert!(matches!(
            first_decided(&verdicts),
            Some((_, TrialVerdict::Failed { .. }))
        ));
    }
}
