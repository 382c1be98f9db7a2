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
/// Loss is judged over windows of feedback at least this long and this many packets (fewer
/// would read a link's random loss as a failure now and then: 4 of 40 packets lost at 2 %
/// random loss is one window in a hundred).
const WINDOW: Duration = Duration::from_millis(500);
const MIN_PACKETS: u64 = 40;
/// Loss that fails a step: this much above the loss before it, and at least `LOSS_FLOOR` (a
/// link with some random loss keeps it whatever the layer). A policer drops what exceeds it:
/// a layer a fifth above its rate loses a sixth of its packets.
const LOSS_MARGIN: f64 = 0.05;
const LOSS_FLOOR: f64 = 0.10;
/// Loss this heavy fails a step on fewer packets, without waiting out the window (a layer
/// several times the link's rate: 6 of 20 lost at 2 % random loss is one in a million).
const LOSS_HEAVY: f64 = 0.30;
const HEAVY_MIN_PACKETS: u64 = 20;
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
            allocated_before,
        }
    }

    /// Judged after each feedback message.
    pub fn judge(&mut self, now: Instant, estimator: &BandwidthEstimator) -> TrialVerdict {
        self.most_queued_ms = self.most_queued_ms.max(estimator.queue_delay_ms());
        let (received, lost) = estimator.packets_reported();
        let window_lost = lost.saturating_sub(self.lost);
        let total = received.saturating_sub(self.received) + window_lost;
        let loss = window_lost as f64 / total.max(1) as f64;
        let heavy = total >= HEAVY_MIN_PACKETS && loss >= LOSS_HEAVY.max(self.loss_before * 3.0);
        if heavy || (now >= self.window_start + WINDOW && total >= MIN_PACKETS) {
            if loss >= LOSS_FLOOR.max(self.loss_before + LOSS_MARGIN) {
                return TrialVerdict::Failed {
                    policed: self.most_queued_ms < POLICER_QUEUE_MS,
                };
            }
            (self.window_start, self.received, self.lost) = (now, received, lost);
        }
        if now >= self.started + TRIAL {
            TrialVerdict::Passed
        } else {
            TrialVerdict::Pending
        }
    }

    /// Whether nothing queued on the way since the step (for a step that failed otherwise: the
    /// estimate's own loss cut, which may come first, or a delay that grew).
    pub fn nothing_queued(&mut self, estimator: &BandwidthEstimator) -> bool {
        self.most_queued_ms = self.most_queued_ms.max(estimator.queue_delay_ms());
        self.most_queued_ms < POLICER_QUEUE_MS
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

    /// Feedback every 50 ms for `ms` from `from_ms` on: a 1,000-byte packet every 5 ms, each
    /// `lose(i)` lost, and the others waiting `queued_ms(i)` in a queue on the way.
    fn feed(
        e: &mut BandwidthEstimator,
        t0: Instant,
        from_ms: u64,
        ms: u64,
        lose: impl Fn(u64) -> bool,
        queued_ms: impl Fn(u64) -> u64,
        mut each: impl FnMut(Instant, &BandwidthEstimator),
    ) {
        for batch in (from_ms..from_ms + ms).step_by(50) {
            let packets: Vec<PacketResult> = (batch..batch + 50)
                .step_by(5)
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

    /// Runs a trial started at `at_ms` over what `feed` reports after it; its verdicts.
    fn trial_of(
        lose: impl Fn(u64) -> bool + Copy,
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
        assert!(at <= 10, "after {} feedback messages", at + 1);
    }

    #[test]
    fn loss_that_starts_seconds_after_the_step_fails_it_too() {
        // A policer's bucket ran dry 3 s after the step.
        let verdicts = trial_of(|t| t >= 5000 && t % 25 == 0, |_| 0);
        let (at, verdict) = first_decided(&verdicts).expect("decided");
        assert_eq!(verdict, TrialVerdict::Failed { policed: true });
        // 3 s of clean feedback (60 messages of 50 ms) first; then within a window or two.
        assert!(
            (60..=80).contains(&at),
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
