//! Everything about the path toward one participant that the bandwidth estimation needs: what
//! was sent on it, the estimate its feedback gives, a probe in flight, and what the allocator
//! last gave its subscriptions.

use crate::bandwidth_estimator::BandwidthEstimator;
use crate::pacer::Pacer;
use crate::probe_cluster::ProbeCluster;
use crate::send_history::SendHistory;
use crate::step_trial::{StepTrial, TrialVerdict};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Downlink {
    pub history: SendHistory,
    /// From the participant's first transport-wide feedback on.
    pub estimator: Option<BandwidthEstimator>,
    pub probe: Option<ProbeCluster>,
    pub probes_started: u16,
    pub last_probe_at: Option<Instant>,
    /// Consecutive probes that found nothing above the estimate (they then come less often).
    pub fruitless_probes: u8,
    /// What the allocator gave this participant's subscriptions, and what they would take
    /// unconstrained, at its last pass (bits per second).
    pub allocated_bps: u64,
    pub desired_bps: u64,
    /// A probe found twice the estimate: the link changed, and steps that
    /// failed on the old one may be tried at once (the allocator clears it).
    pub link_improved: bool,
    /// What was allocated when a step up last failed: a probe must find well above it to
    /// count as the link having changed.
    pub failed_at_bps: u64,
    /// Spreads video out at the estimate while it binds.
    pub pacer: Pacer,
    /// The estimate is the subscriber's own (REMB): it has sent no transport-wide feedback.
    pub receiver_estimated: bool,
    /// The last step up (or resume), while its link shows whether it carries it.
    pub trial: Option<StepTrial>,
    /// A step failed with loss while nothing queued: a policer, which passes a probe whole.
    /// Until then no probe is sent and one in flight finds nothing (the back-off decides when
    /// a step is tried again).
    pub policed_until: Option<Instant>,
    /// Steps failed in a row behind a policer (the wait doubles with each).
    pub policed_failures: u8,
}

impl Downlink {
    pub fn new(epoch: Instant) -> Self {
        Self {
            history: SendHistory::new(epoch),
            estimator: None,
            probe: None,
            probes_started: 0,
            last_probe_at: None,
            fruitless_probes: 0,
            allocated_bps: 0,
            desired_bps: 0,
            link_improved: false,
            failed_at_bps: 0,
            pacer: Pacer::default(),
            receiver_estimated: false,
            trial: None,
            policed_until: None,
            policed_failures: 0,
        }
    }

    /// A step up (or a resume) was taken: on trial from now, unless one already is.
    pub fn start_trial(&mut self, now: Instant) {
        match (self.trial.as_mut(), self.estimator.as_ref()) {
            (Some(trial), _) => trial.extend(now),
            (None, Some(estimator)) => {
                self.trial = Some(StepTrial::start(now, estimator, self.allocated_bps));
            }
            (None, None) => {}
        }
    }

    /// Judges the step on trial after a feedback message. `true`: it failed, and what may be
    /// sent has fallen to what got through (the allocator is to move down now).
    pub fn judge_trial(&mut self, now: Instant) -> bool {
        let (Some(trial), Some(estimator)) = (self.trial.as_mut(), self.estimator.as_mut()) else {
            return false;
        };
        match trial.judge(now, estimator) {
            TrialVerdict::Pending => false,
            TrialVerdict::Passed => {
                // The link carried the step: no policer holds it back any longer.
                self.trial = None;
                self.policed_failures = 0;
                self.policed_until = None;
                false
            }
            TrialVerdict::Failed { policed } => {
                let before = trial.allocated_before;
                self.trial = None;
                estimator.on_failed_step(now, before);
                if policed {
                    self.policed(now);
                }
                true
            }
        }
    }

    /// A step failed on congestion the estimate saw first (its own loss cut, or delay): the
    /// trial ends with it, and a loss with nothing queued is a policer's all the same. Whether
    /// a step was on trial (a failed step to count).
    pub fn step_failed(&mut self, now: Instant) -> bool {
        let (Some(mut trial), Some(estimator)) = (self.trial.take(), self.estimator.as_ref())
        else {
            return false;
        };
        if trial.policed(estimator) {
            self.policed(now);
        }
        true
    }

    /// Behind a policer: probes are not believed for a while, longer after each failure.
    fn policed(&mut self, now: Instant) {
        self.policed_failures = self.policed_failures.saturating_add(1);
        let wait = POLICED_WAIT * (1u32 << (self.policed_failures.min(3) - 1));
        self.policed_until = Some(now + wait.min(POLICED_WAIT_MAX));
    }

    /// Whether probes are believed now (not behind a policer that fooled one lately): when
    /// they are not, none is sent (each would drain the policer's bucket, and lose packets).
    pub fn probes_believed(&self, now: Instant) -> bool {
        self.policed_until.is_none_or(|t| now >= t)
    }

    /// Judges the probe in flight once its feedback is in (or overdue): a rate above the
    /// estimate raises it; a probe that found nothing makes the next one wait longer.
    pub fn settle_probe(&mut self, now: Instant) -> Option<SettledProbe> {
        let (target_bps, verdict) = self
            .probe
            .as_ref()
            .and_then(|p| Some((p.target_bps, p.result(now)?)))?;
        self.probe = None;
        let settled = SettledProbe {
            target_bps,
            found_bps: verdict.map(|r| r.bps),
            believed: self.probes_believed(now),
        };
        if !settled.believed {
            // Behind a policer the probe passed its bucket whole: it says nothing of the rate.
            self.fruitless_probes = self.fruitless_probes.saturating_add(1);
            return Some(settled);
        }
        let Some(estimator) = self.estimator.as_mut() else {
            return Some(settled);
        };
        let before = estimator.estimate_bps();
        if let Some(result) = verdict {
            estimator.on_probe_result(result);
        }
        // Headroom found is at least a tenth more; less is a link at its capacity.
        if verdict.is_some_and(|r| r.bps > before + before / 10) {
            self.fruitless_probes = 0;
            self.link_improved |=
                verdict.is_some_and(|r| link_improved(before, r.bps, self.failed_at_bps));
        } else {
            self.fruitless_probes = self.fruitless_probes.saturating_add(1);
        }
        Some(settled)
    }

    /// When the next probe may start: soon after one that found headroom, later after each
    /// that did not (a link that cannot carry more is not to be poked every second).
    pub fn next_probe_at(&self) -> Option<Instant> {
        let wait = PROBE_INTERVAL * (1u32 << self.fruitless_probes.min(2));
        self.last_probe_at.map(|t| t + wait.min(PROBE_INTERVAL_MAX))
    }
}

/// What a probe cluster came to, for the log that explains a subscriber's layers.
#[derive(Debug, Clone, Copy)]
pub struct SettledProbe {
    pub target_bps: u64,
    /// None: too few of its packets were acknowledged to say anything.
    pub found_bps: Option<u64>,
    /// False behind a policer, whose bucket passes a probe whole.
    pub believed: bool,
}

/// Whether a probe that found `found_bps` (the estimate was `before`) shows the link changed,
/// so steps that failed on it may be tried again at once: it carries well above where the last
/// step failed (`failed_at_bps`, what was allocated then), or — nothing having failed — twice
/// the estimate. Not twice the estimate *now* once a step failed: each fruitful probe raises
/// the estimate, and a probe aimed at what is held back may never reach twice that, which kept
/// a recovered link's picture paused until the longest back-off ran out (15 s in a browser).
fn link_improved(before: u64, found_bps: u64, failed_at_bps: u64) -> bool {
    if failed_at_bps > 0 {
        found_bps >= failed_at_bps + failed_at_bps / 2
    } else {
        found_bps >= before * 2
    }
}

/// Behind a policer, probes are not believed for this long after a failed step (doubling
/// with each failure in a row, up to the maximum).
const POLICED_WAIT: Duration = Duration::from_secs(10);
const POLICED_WAIT_MAX: Duration = Duration::from_secs(40);

/// Probes of one link, at most this often (doubling after fruitless ones, up to the maximum).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(4);

#[cfg(test)]
mod tests {
    use super::{Downlink, link_improved};
    use crate::bandwidth_estimator::BandwidthEstimator;
    use std::time::{Duration, Instant};

    #[test]
    #[allow(clippy::disallowed_methods)] // a test's origin of time
    fn a_move_down_counts_as_a_failed_step_only_while_a_step_is_on_trial() {
        let t0 = Instant::now();
        let mut downlink = Downlink::new(t0);
        // No estimate yet: nothing is put on trial.
        downlink.start_trial(t0);
        assert!(!downlink.step_failed(t0));
        downlink.estimator = Some(BandwidthEstimator::new(1_000_000));
        downlink.start_trial(t0);
        assert!(downlink.step_failed(t0 + Duration::from_secs(2)));
        // The trial ended with it: a second move down is no second failed step.
        assert!(!downlink.step_failed(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn a_probe_well_above_a_failed_step_unblocks_it_even_below_twice_the_estimate() {
        // Failed at 250 kbit/s; the estimate has since climbed to 600 kbit/s by probing.
        assert!(link_improved(600_000, 900_000, 250_000));
        assert!(
            !link_improved(200_000, 300_000, 250_000),
            "not well above the failure"
        );
        // Nothing failed: only a doubling counts as a changed link.
        assert!(!link_improved(600_000, 900_000, 0));
        assert!(link_improved(600_000, 1_200_000, 0));
    }
}
