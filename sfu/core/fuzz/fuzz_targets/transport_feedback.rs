//! `TransportFeedback::parse` on arbitrary bytes (a subscriber's transport-wide feedback, read
//! in place for its bandwidth estimate), then the walk over every packet it describes, fed to
//! a send history and an estimator as the SFU does. Asserts that a parsed message yields
//! exactly its status count of consecutive sequence numbers, and that the estimate stays a
//! sane number whatever the arrival times say.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::bandwidth_estimator::{BandwidthEstimator, PacketResult};
use sfu_core::send_history::SendHistory;
use sfu_core::transport_feedback::TransportFeedback;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Ok(feedback) = TransportFeedback::parse(data) else {
        return;
    };
    let mut count = 0u32;
    let mut expected = feedback.base_seq;
    for status in feedback.packets() {
        assert_eq!(status.seq, expected, "sequence numbers are consecutive");
        expected = expected.wrapping_add(1);
        count += 1;
    }
    assert_eq!(count, feedback.status_count as u32, "every status is walked");

    // As the SFU uses it: every sequence number was sent 1 ms apart.
    let t0 = Instant::now();
    let mut history = SendHistory::new(t0);
    for i in 0..feedback.status_count.min(4096) {
        let seq = feedback.base_seq.wrapping_add(i);
        history.record(seq, t0 + Duration::from_millis(i as u64), 1200, None);
    }
    let mut estimator = BandwidthEstimator::new(1_000_000);
    let now = t0 + Duration::from_secs(5);
    estimator.on_feedback(
        now,
        feedback.packets().filter_map(|s| {
            let sent = history.lookup(s.seq)?;
            Some(PacketResult {
                sent_at: sent.sent_at,
                size: sent.size,
                arrival_us: s.arrival_us,
            })
        }),
    );
    let estimate = estimator.estimate_bps();
    assert!((30_000..=30_000_000).contains(&estimate), "estimate {estimate}");
});
