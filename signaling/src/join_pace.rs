//! How often one person may connect to one meeting. Each connection writes fsynced audit lines
//! (`join`, `lobby_enter` or `admit`, the `replaced` or `leave` of the one before), tells the
//! others in the meeting and may start a media session: a valid link in a loop of connect and
//! drop would do all that without bound. A person gets a burst of 30 connections, then one
//! every 2 s — more than a phone that keeps losing coverage needs (a resume counts too). The
//! join check (`POST /join`) spends nothing, but says so when the next connection would be
//! refused.

use sfu_core::token_bucket::TokenBucket;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

const BURST: f64 = 30.0;
const PER_SECOND: f64 = 0.5;
/// People remembered at once; past it, those whose burst is whole again are forgotten (and if
/// none is, a new person is let in unpaced rather than anyone refused for the table's sake).
const MAX_PEOPLE: usize = 100_000;

#[derive(Default)]
pub struct JoinPace {
    people: Mutex<HashMap<(String, String), TokenBucket>>,
}

impl JoinPace {
    /// Whether subject `sub` may connect to meeting `mtg` now; a connection (`spend`) uses one.
    pub fn admits(&self, sub: &str, mtg: &str, spend: bool, now: Instant) -> bool {
        let mut people = self.people.lock().unwrap_or_else(|e| e.into_inner());
        let key = (sub.to_owned(), mtg.to_owned());
        if !people.contains_key(&key) {
            if !spend {
                return true;
            }
            if people.len() >= MAX_PEOPLE {
                people.retain(|_, b| b.available(now) < BURST);
                if people.len() >= MAX_PEOPLE {
                    return true;
                }
            }
        }
        let bucket = people
            .entry(key)
            .or_insert_with(|| TokenBucket::new(PER_SECOND, BURST));
        if spend {
            bucket.take(now, 1.0)
        } else {
            bucket.available(now) >= 1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
