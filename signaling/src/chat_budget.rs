//! A participant's allowance of chat messages: a token bucket (a burst of 5, then one a
//! second), so one client cannot flood a meeting.

use std::time::Instant;

const BURST: f64 = 5.0;
const PER_SECOND: f64 = 1.0;

#[derive(Debug, Clone)]
pub struct ChatBudget {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for ChatBudget {
    fn default() -> Self {
        Self {
            tokens: BURST,
            last: None,
        }
    }
}

impl ChatBudget {
    /// Spends one message if the budget allows it.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * PER_SECOND;
            self.tokens = (self.tokens + refill).min(BURST);
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
    use std::time::Duration;

    #[test]
    fn a_burst_then_one_a_second() {
        let mut b = ChatBudget::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        assert!(b.take(t0 + Duration::from_millis(1600)));
        assert!(!b.take(t0 + Duration::from_millis(1700)));
    }
}
