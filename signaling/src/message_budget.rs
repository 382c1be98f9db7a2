//! A participant's allowance of messages of one sort: a token bucket (a burst, then a steady
//! rate), so one client cannot flood a meeting with chat or the SFU with layer requests.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

const SOCKET_READS_PER_SECOND: f64 = 50.0;

/// Time is the caller's (the rules of a meeting are a function of time); a clock that steps
/// back refills nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageBudget {
    tokens: f64,
    last: Option<Timestamp>,
    burst: f64,
    per_second: f64,
}

impl MessageBudget {
    /// Chat: a burst of 5, then one a second.
    pub fn chat() -> Self {
        Self::new(5.0, 1.0)
    }

    /// Simulcast layer requests: a page with many tiles resizes them all at once (a burst of
    /// 20), then 5 a second.
    pub fn layer_requests() -> Self {
        Self::new(20.0, 5.0)
    }

    /// Offers and answers of one connection: a call's start and a burst of renegotiations
    /// (people joining, a screen share) fit in 20; then 2 a second.
    pub fn sdp() -> Self {
        Self::new(20.0, 2.0)
    }

    /// Every message of one connection, whatever its sort: a page's start (its trickled
    /// candidates, a screen of tiles' layer requests) fits in the burst of 200; then 50 a
    /// second, far above what a person's page sends.
    pub fn socket_reads() -> Self {
        Self::new(200.0, SOCKET_READS_PER_SECOND)
    }

    /// How long a connection past its allowance waits before its next message is read.
    pub fn socket_read_interval() -> std::time::Duration {
        std::time::Duration::from_secs_f64(1.0 / SOCKET_READS_PER_SECOND)
    }

    fn new(burst: f64, per_second: f64) -> Self {
        Self {
            tokens: burst,
            last: None,
            burst,
            per_second,
        }
    }

    /// Spends one message if the budget allows it.
    pub fn take(&mut self, now: Timestamp) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.duration_since(last).as_secs_f64().max(0.0);
            let refill = elapsed * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration as Duration;

    #[test]
    fn a_burst_then_one_a_second() {
        let mut b = MessageBudget::chat();
        let t0 = Timestamp::now();
        for _ in 0..5 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        assert!(b.take(t0 + Duration::from_millis(1600)));
        assert!(!b.take(t0 + Duration::from_millis(1700)));
        // Layer requests: 20 at once, then one per 200 ms.
        let mut l = MessageBudget::layer_requests();
        for _ in 0..20 {
            assert!(l.take(t0));
        }
        assert!(!l.take(t0));
        assert!(l.take(t0 + Duration::from_millis(210)));
    }
}
