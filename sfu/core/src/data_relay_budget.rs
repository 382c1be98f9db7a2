//! How much one participant may have relayed on data channels: a token bucket in messages and
//! one in bytes. Relayed messages bypass the bandwidth estimate and the pacer and go to
//! everyone in the room, so one sender without a limit could crowd out the others' video on
//! their downlinks (and fill their pages).

use std::time::Instant;

/// Messages a second, and the burst allowed.
pub const DATA_MESSAGES_PER_SECOND: f64 = 10.0;
pub const DATA_MESSAGES_BURST: f64 = 20.0;
/// Bytes a second (256 kbit/s), and the burst allowed.
pub const DATA_BYTES_PER_SECOND: f64 = 32.0 * 1024.0;
pub const DATA_BYTES_BURST: f64 = 64.0 * 1024.0;

#[derive(Debug)]
pub struct DataRelayBudget {
    messages: f64,
    bytes: f64,
    last: Option<Instant>,
}

impl Default for DataRelayBudget {
    fn default() -> Self {
        Self {
            messages: DATA_MESSAGES_BURST,
            bytes: DATA_BYTES_BURST,
            last: None,
        }
    }
}

impl DataRelayBudget {
    /// Whether a message of `len` bytes may be relayed now; takes it from the budget if so.
    pub fn take(&mut self, now: Instant, len: usize) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.messages =
                (self.messages + elapsed * DATA_MESSAGES_PER_SECOND).min(DATA_MESSAGES_BURST);
            self.bytes = (self.bytes + elapsed * DATA_BYTES_PER_SECOND).min(DATA_BYTES_BURST);
        }
        self.last = Some(now);
        let len = len as f64;
        if self.messages < 1.0 || self.bytes < len {
            return false;
        }
        self.messages -= 1.0;
        self.bytes -= len;
        true
    }
}

#[cfg(test)]
// Tests start virtual time at one real instant.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_in_messages_and_in_bytes() {
        let t0 = Instant::now();
        let mut b = DataRelayBudget::default();
        // Small messages: 20 at once, then 10 a second.
        let taken = (0..100).filter(|_| b.take(t0, 40)).count();
        assert_eq!(taken, 20);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| b.take(t1, 40)).count(), 10);
        // Large ones: 64 KiB at once, then 32 KiB a second, whatever the message count.
        let mut b = DataRelayBudget::default();
        assert_eq!((0..100).filter(|_| b.take(t0, 16 * 1024)).count(), 4);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!((0..100).filter(|_| b.take(t2, 16 * 1024)).count(), 4);
        // A raised hand every few seconds never meets the limit.
        let mut b = DataRelayBudget::default();
        assert!((0..1000).all(|i| b.take(t0 + Duration::from_secs(3 * i), 60)));
    }
}
