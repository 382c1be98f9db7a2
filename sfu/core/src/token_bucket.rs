//! A token bucket: a rate and the burst allowed above it. What one participant may make the SFU
//! do on its own input — relay data channel messages to everyone in the room (they bypass the
//! bandwidth estimate and the pacer, so one sender without a limit could crowd out the others'
//! video), or answer connectivity checks (two HMACs each, and an answer and a check of ours to
//! whatever source address the check claims).

use std::time::Instant;

/// Data channel messages a sender may have relayed: a second's worth, and the burst.
pub const DATA_MESSAGES_PER_SECOND: f64 = 10.0;
pub const DATA_MESSAGES_BURST: f64 = 20.0;
/// Data channel bytes a sender may have relayed (256 kbit/s), and the burst.
pub const DATA_BYTES_PER_SECOND: f64 = 32.0 * 1024.0;
pub const DATA_BYTES_BURST: f64 = 64.0 * 1024.0;
/// Connectivity checks a session's client may have handled: far above what an ICE agent sends
/// (a check per pair every 50 ms or so while it connects — a few pairs: host, reflexive and
/// relayed candidates to the SFU's UDP and TCP ones — then consent every few seconds).
pub const STUN_CHECKS_PER_SECOND: f64 = 100.0;
pub const STUN_CHECKS_BURST: f64 = 200.0;
/// Checks under a session's credentials from before its last ICE restart (a browser's last
/// few on the network it left), from addresses other than its path in use.
pub const STUN_CHECKS_BEFORE_RESTART_PER_SECOND: f64 = 10.0;
pub const STUN_CHECKS_BEFORE_RESTART_BURST: f64 = 20.0;
/// A restart sooner than this after the last one continues its budget rather than starting
/// a new one: restarting in a loop must not multiply what a session may have answered.
pub const STUN_BUDGET_RENEWAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Sequence numbers a subscriber's NACKs may have looked up, over all it receives: each is a
/// search of the cache and of the subscription's renumbering, and one NACK packet can name
/// thousands. A phone losing a tenth of 2 Mbit/s of video names some 20 a second, asking again
/// for each every round trip until it comes: a few hundred a second, for several videos.
pub const NACKED_PER_SECOND: f64 = 2000.0;
pub const NACKED_BURST: f64 = 4000.0;

/// RTCP datagrams with keyframe requests or receiver estimates a session's client may have
/// read: a browser sends a keyframe request when its picture breaks and an estimate every
/// second or so — a few a second. Each can cost a keyframe of a publisher's encoder or a new
/// allocation of the subscriber's bandwidth, from the waiting room on.
pub const RTCP_DATAGRAMS_PER_SECOND: f64 = 200.0;
pub const RTCP_DATAGRAMS_BURST: f64 = 400.0;
/// Packet statuses a session's transport-wide feedback may have matched to what was sent to
/// it: one per packet it got (10 Mbit/s of video is some 1,000 a second), some twice. One
/// message can claim 65,535 of them in a few bytes.
pub const FEEDBACK_STATUSES_PER_SECOND: f64 = 5000.0;
pub const FEEDBACK_STATUSES_BURST: f64 = 10_000.0;

/// Audio a publisher's track may have forwarded: Opus sends 50 packets a second (100 with 10 ms
/// frames) of at most a few hundred bytes (up to 510 kbit/s at its highest, with redundancy
/// on top), so 576 kbit/s and 150 packets a second pass any real microphone with room to
/// spare, with the burst of a phone whose uplink held its audio for a second. Audio is
/// forwarded ahead of video and outside the pacer: past this, one participant's "audio" would
/// fill every subscriber's link and take the others' video from its estimate. (A bigger burst,
/// a second's worth of bytes, was itself enough to pause a 2 Mbit/s subscriber's picture for
/// 3 s in the scenario test.)
pub const AUDIO_PACKETS_PER_SECOND: f64 = 150.0;
pub const AUDIO_PACKETS_BURST: f64 = 150.0;
pub const AUDIO_BYTES_PER_SECOND: f64 = 72_000.0;
pub const AUDIO_BYTES_BURST: f64 = 16_000.0;

/// SCTP packets a session's data channels may have handled: well above what its own messages
/// (the limits above: some 30 full packets a second) and the acknowledgements of everyone
/// else's need, and far below what would let one session's SCTP crowd its worker.
pub const SCTP_PACKETS_PER_SECOND: f64 = 400.0;
pub const SCTP_PACKETS_BURST: f64 = 800.0;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// What is available at `now`.
    pub fn available(&mut self, now: Instant) -> f64 {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(now);
        self.tokens
    }

    /// Takes `amount` if available at `now`.
    pub fn take(&mut self, now: Instant, amount: f64) -> bool {
        if self.available(now) < amount {
            return false;
        }
        self.tokens -= amount;
        true
    }
}

/// What a participant may still have relayed: messages (or packets) and bytes.
#[derive(Debug, Clone)]
pub struct RelayBudget {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl RelayBudget {
    /// Data channel messages.
    pub fn data() -> Self {
        Self {
            messages: TokenBucket::new(DATA_MESSAGES_PER_SECOND, DATA_MESSAGES_BURST),
            bytes: TokenBucket::new(DATA_BYTES_PER_SECOND, DATA_BYTES_BURST),
        }
    }

    /// One audio track's packets.
    pub fn audio() -> Self {
        Self {
            messages: TokenBucket::new(AUDIO_PACKETS_PER_SECOND, AUDIO_PACKETS_BURST),
            bytes: TokenBucket::new(AUDIO_BYTES_PER_SECOND, AUDIO_BYTES_BURST),
        }
    }

    /// Whether a message of `len` bytes may be relayed now; takes it from both if so.
    pub fn take(&mut self, now: Instant, len: usize) -> bool {
        let len = len as f64;
        if self.messages.available(now) < 1.0 || self.bytes.available(now) < len {
            return false;
        }
        self.messages.take(now, 1.0) && self.bytes.take(now, len)
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
        let mut b = RelayBudget::data();
        // Small messages: 20 at once, then 10 a second.
        let taken = (0..100).filter(|_| b.take(t0, 40)).count();
        assert_eq!(taken, 20);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| b.take(t1, 40)).count(), 10);
        // Large ones: 64 KiB at once, then 32 KiB a second, whatever the message count.
        let mut b = RelayBudget::data();
        assert_eq!((0..100).filter(|_| b.take(t0, 16 * 1024)).count(), 4);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!((0..100).filter(|_| b.take(t2, 16 * 1024)).count(), 4);
        // A raised hand every few seconds never meets the limit.
        let mut b = RelayBudget::data();
        assert!((0..1000).all(|i| b.take(t0 + Duration::from_secs(3 * i), 60)));
    }

    #[test]
    fn checks_at_an_agent_s_pace_pass_and_a_flood_is_held_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(STUN_CHECKS_PER_SECOND, STUN_CHECKS_BURST);
        // Eight candidate pairs checked every 50 ms for 1.5 s while the agent connects, then
        // each every 2.5 s (consent) for 10 s: all pass...
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let connecting = (0..30u64).flat_map(|i| (0..8).map(move |_| i * 50));
        let consent = (1..=4u64).flat_map(|i| (0..8).map(move |_| 1_500 + i * 2_500));
        let sent: Vec<u64> = connecting.chain(consent).collect();
        let passed = sent.iter().filter(|&&at| b.take(ms(at), 1.0)).count();
        assert_eq!(passed, sent.len());
        // ...and of a flood of 10,000 in one instant a while later, the burst does.
        let flood = (0..10_000).filter(|_| b.take(ms(20_000), 1.0)).count();
        assert_eq!(flood, 200);
    }
}
