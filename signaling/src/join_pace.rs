//! How often one person may connect to one meeting. Each connection writes fsynced audit lines
//! (`join`, `lobby_enter` or `admit`, the `replaced` or `leave` of the one before), tells the
//! others in the meeting and may start a media session: a valid link in a loop of connect and
//! drop would do all that without bound. A person gets a burst of 30 connections, then one
//! every 2 s — more than a phone that keeps losing coverage needs (a resume counts too). The
//! join check (`POST /join`) spends none of those, but says so when the next connection would
//! be refused; join checks have a budget of their own — a burst of 30, then two a second —
//! since each costs a signature check (two, and a look at the meeting store, with replicas).

use sfu_core::token_bucket::TokenBucket;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

const BURST: f64 = 30.0;
const PER_SECOND: f64 = 0.5;
const CHECKS_BURST: f64 = 30.0;
const CHECKS_PER_SECOND: f64 = 2.0;
/// People remembered at once; past it, those whose burst is whole again are forgotten (and if
/// none is, a new person is let in unpaced rather than anyone refused for the table's sake).
const MAX_PEOPLE: usize = 100_000;

/// Token buckets per person and meeting, at most [`MAX_PEOPLE`] of them.
struct PerPerson {
    buckets: Mutex<HashMap<(String, String), TokenBucket>>,
    per_second: f64,
    burst: f64,
}

impl PerPerson {
    fn new(per_second: f64, burst: f64) -> Self {
        Self {
            buckets: Mutex::default(),
            per_second,
            burst,
        }
    }

    /// Whether subject `sub` has one left for meeting `mtg` now; `spend`: takes it.
    fn admits(&self, sub: &str, mtg: &str, spend: bool, now: Instant) -> bool {
        let mut people = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (sub.to_owned(), mtg.to_owned());
        if !people.contains_key(&key) {
            if !spend {
                return true;
            }
            if people.len() >= MAX_PEOPLE {
                people.retain(|_, b| b.available(now) < self.burst);
                if people.len() >= MAX_PEOPLE {
                    return true;
                }
            }
        }
        let bucket = people
            .entry(key)
            .or_insert_with(|| TokenBucket::new(self.per_second, self.burst));
        if spend {
            bucket.take(now, 1.0)
        } else {
            bucket.available(now) >= 1.0
        }
    }
}

pub struct JoinPace {
    connections: PerPerson,
    checks: PerPerson,
}

impl Default for JoinPace {
    fn default() -> Self {
        Self {
            connections: PerPerson::new(PER_SECOND, BURST),
            checks: PerPerson::new(CHECKS_PER_SECOND, CHECKS_BURST),
        }
    }
}

impl JoinPace {
    /// Whether subject `sub` may have a join check of meeting `mtg` answered now (spends one).
    pub fn check(&self, sub: &str, mtg: &str, now: Instant) -> bool {
        self.checks.admits(sub, mtg, true, now)
    }

    /// Whether subject `sub` may connect to meeting `mtg` now; a connection (`spend`) uses one.
    pub fn admits(&self, sub: &str, mtg: &str, spend: bool, now: Instant) -> bool {
        self.connections.admits(sub, mtg, spend, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn join_checks_a_burst_then_two_a_second_per_person_and_meeting() {
        let pace = JoinPace::default();
        let t0 = Instant::now();
        let answered = (0..100).filter(|_| pace.check("pat", "m", t0)).count();
        assert_eq!(answered, CHECKS_BURST as usize);
        assert!(pace.check("pat", "other", t0), "another meeting");
        assert!(pace.check("doc", "m", t0), "another person");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| pace.check("pat", "m", t1)).count(), 2);
        // Checks spend none of the person's connections.
        assert!(pace.admits("pat", "m", true, t1));
    }

    #[test]
    fn a_burst_then_one_connection_every_two_seconds_per_person_and_meeting() {
        let pace = JoinPace::default();
        let t0 = Instant::now();
        for _ in 0..30 {
            assert!(pace.admits("pat-1", "m1", false, t0));
            assert!(pace.admits("pat-1", "m1", true, t0));
        }
        assert!(!pace.admits("pat-1", "m1", false, t0), "the check says so");
        assert!(!pace.admits("pat-1", "m1", true, t0));
        // Others are not held to it: another person, the same person in another meeting.
        assert!(pace.admits("pat-2", "m1", true, t0));
        assert!(pace.admits("pat-1", "m2", true, t0));
        assert!(pace.admits("pat-1", "m1", true, t0 + Duration::from_secs(2)));
        assert!(!pace.admits("pat-1", "m1", true, t0 + Duration::from_millis(2500)));
    }
}
