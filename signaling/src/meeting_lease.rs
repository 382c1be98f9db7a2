//! Which signaling replica owns a meeting (ADR 5): the one holding its lease, a Redis key
//! (`healthcare-sfu:lease:<meeting>`) whose value is the owner's internal URL and a number of
//! its process. The owner runs
//! the meeting in memory; every other replica relays the meeting's WebSockets and API calls
//! to it. A lease is taken by whoever first needs the meeting while nobody holds it, renewed
//! while the owner has the meeting in use, and let go when it has not — or runs out when its
//! owner died, so the next replica to need the meeting takes it over.

use crate::redis_connection::{RedisLink, redacted};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const KEY_PREFIX: &str = "healthcare-sfu:lease:";

/// How long a lease lasts unrenewed: a dead owner's meetings wait this long at most before
/// another replica takes them.
pub const LEASE: Duration = Duration::from_secs(6);

/// How often the owner renews what it holds (three chances within one lease).
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Each Redis call gives up after this.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Takes the lease when nobody holds it, renews it when this replica does; answers the holder.
const TAKE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
";

/// Renews the lease while this replica holds it, or takes it again if it lapsed with nobody
/// taking it (a renewal came late, Redis lost it): 1; held by another replica: 0.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Lets the lease go only if this replica holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This replica holds the lease. `taken`: it did not before this call (what it knew of the
    /// meeting may be stale: read it again from the store).
    Here { taken: bool },
    /// Another replica does, reachable at this internal URL.
    Elsewhere(String),
}

#[derive(Debug, thiserror::Error)]
#[error("meeting leases in {store}: {reason}")]
pub struct LeaseError {
    pub store: String,
    pub reason: String,
}

pub struct MeetingLeases {
    /// This replica's internal URL.
    me: String,
    /// The lease's value: the URL and a number of this process's own (`<url>#<n>`), so two
    /// replicas given one URL by mistake never both take a lease as theirs.
    value: String,
    url: String,
    link: RedisLink,
    /// The meetings whose lease this replica holds, with when each was last needed (a join
    /// or an API call, or found in use at a renewal).
    held: Mutex<HashMap<String, Instant>>,
    /// When Redis last confirmed each lease as this replica's (taken or renewed; the time
    /// the request was sent, so the lease surely ran from no earlier).
    confirmed: Mutex<HashMap<String, Instant>>,
    /// Set when the replica stops: it takes no lease any more.
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for MeetingLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeetingLeases")
            .field("me", &self.me)
            .field("store", &redacted(&self.url))
            .finish()
    }
}

impl MeetingLeases {
    /// Leases in the Redis at `url`, held under `me` (this replica's internal URL).
    pub fn open(url: &str, me: &str) -> Result<Self, LeaseError> {
        let link = RedisLink::open(url, TIMEOUT).map_err(|e| LeaseError {
            store: redacted(url),
            reason: e.to_string(),
        })?;
        let me = me.trim_end_matches('/').to_owned();
        Ok(Self {
            value: format!("{me}#{:016x}", rand::random::<u64>()),
            me,
            url: url.to_owned(),
            link,
            held: Mutex::new(HashMap::new()),
            confirmed: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This replica's internal URL.
    pub fn me(&self) -> &str {
        &self.me
    }

    fn error(&self, e: impl ToString) -> LeaseError {
        LeaseError {
            store: redacted(&self.url),
            reason: e.to_string(),
        }
    }

    /// Who owns `meeting`, taking its lease when nobody does. Leases are taken, and let go,
    /// one at a time (under `held`), so a lease is never let go under a join that needs it.
    pub fn owner(&self, meeting: &str) -> Result<Owner, LeaseError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let asked = Instant::now();
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(LeaseError {
                store: redacted(&self.url),
                reason: "this replica is stopping".into(),
            });
        }
        let holder: String = self
            .link
            .call(|con| {
                redis::cmd("EVAL")
                    .arg(TAKE)
                    .arg(1)
                    .arg(key(meeting))
                    .arg(&self.value)
                    .arg(LEASE.as_millis() as u64)
                    .query(con)
            })
            .map_err(|e| self.error(e))?;
        if holder == self.value {
            let taken = held.insert(meeting.to_owned(), Instant::now()).is_none();
            self.confirm(meeting, asked);
            Ok(Owner::Here { taken })
        } else {
            held.remove(meeting);
            self.unconfirm(meeting);
            let url = holder.split('#').next().unwrap_or_default().to_owned();
            Ok(Owner::Elsewhere(url))
        }
    }

    /// Whether this replica holds `meeting`'s lease (as of its last renewal).
    pub fn holds(&self, meeting: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(meeting)
    }

    /// Whether `meeting`'s lease is this replica's for certain at `now`: held, and confirmed
    /// by Redis less than a lease less a renewal period ago — so no other replica can have
    /// taken it yet, even if this one has been cut off from Redis or stalled since. What it
    /// writes of the meeting is guarded by this (a stale copy must not overwrite the new
    /// owner's).
    pub fn surely_holds(&self, meeting: &str, now: Instant) -> bool {
        self.holds(meeting)
            && self
                .confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(meeting)
                .is_some_and(|at| now.saturating_duration_since(*at) < LEASE - RENEW_EVERY)
    }

    fn confirm(&self, meeting: &str, at: Instant) {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(meeting.to_owned(), at);
    }

    fn unconfirm(&self, meeting: &str) {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(meeting);
    }

    /// The meetings whose lease this replica holds.
    pub fn held(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Of the leases held, those not needed for a whole lease (`in_use` says whether anyone is
    /// in a meeting now; those that are count as needed now). A join that has just taken a
    /// lease and not yet entered its meeting is not let go under it.
    pub fn idle(&self, in_use: impl Fn(&str) -> bool, now: Instant) -> Vec<String> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut idle = Vec::new();
        for (meeting, needed) in held.iter_mut() {
            if in_use(meeting) {
                *needed = now;
            } else if now.duration_since(*needed) >= LEASE {
                idle.push(meeting.clone());
            }
        }
        idle.sort();
        idle
    }

    /// Renews the leases of `meetings` (held here). Returns those found held by another
    /// replica meanwhile (this one was cut off from Redis past a lease): they are no longer
    /// this replica's to run.
    pub fn renew(&self, meetings: &[String]) -> Result<Vec<String>, LeaseError> {
        if meetings.is_empty() {
            return Ok(Vec::new());
        }
        let asked = Instant::now();
        let renewed: Vec<i64> = self
            .link
            .call(|con| {
                // Every renewal in one round trip.
                let mut pipe = redis::pipe();
                for m in meetings {
                    pipe.cmd("EVAL")
                        .arg(RENEW)
                        .arg(1)
                        .arg(key(m))
                        .arg(&self.value)
                        .arg(LEASE.as_millis() as u64);
                }
                pipe.query(con)
            })
            .map_err(|e| self.error(e))?;
        let mut lost = Vec::new();
        for (m, r) in meetings.iter().zip(renewed) {
            if r == 0 {
                lost.push(m.clone());
            } else {
                self.confirm(m, asked);
            }
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for m in &lost {
            held.remove(m);
            self.unconfirm(m);
        }
        Ok(lost)
    }

    /// Lets every lease held go (this replica stops; another takes its meetings over).
    pub fn release_all(&self) {
        let meetings: Vec<String> = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            self.stopping
                .store(true, std::sync::atomic::Ordering::Release);
            self.confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            held.drain().map(|(m, _)| m).collect()
        };
        for m in meetings {
            let released = self.link.call(|con| {
                redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(key(&m))
                    .arg(&self.value)
                    .query::<i64>(con)
            });
            if let Err(e) = released {
                tracing::warn!(error = %e, meeting = %m, "letting a lease go at stop failed: it runs out");
            }
        }
    }

    /// Lets `meeting`'s lease go if it is still idle (not needed since `idle_since`'s
    /// check, a lease ago).
    pub fn release(&self, meeting: &str, now: Instant) -> Result<(), LeaseError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get(meeting) {
            Some(needed) if now.duration_since(*needed) >= LEASE => {}
            _ => return Ok(()),
        }
        held.remove(meeting);
        self.unconfirm(meeting);
        self.link
            .call(|con| {
                redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(key(meeting))
                    .arg(&self.value)
                    .query::<i64>(con)
            })
            .map(|_| ())
            .map_err(|e| self.error(e))
    }
}

fn key(meeting: &str) -> String {
    format!("{KEY_PREFIX}{meeting}")
}
