//! Per-worker counters: plain integers on the hot path, exported periodically by the I/O layer.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    /// Datagrams from a 5-tuple or ICE ufrag we do not know: dropped before any crypto.
    pub dropped_unknown_source: u64,
    pub dropped_malformed: u64,
    pub dropped_not_ready: u64,
    pub dropped_unknown_ssrc: u64,
    pub dropped_replay: u64,
    pub dropped_auth: u64,
    /// Media from a participant without publish permission (the waiting room).
    pub dropped_blocked: u64,
    pub seal_failures: u64,
    pub nacks_in: u64,
    pub nacks_out: u64,
    pub nacks_unrepairable: u64,
    pub retransmissions_out: u64,
    pub repairs_received: u64,
    pub duplicate_repairs: u64,
    pub keyframe_requests_in: u64,
    pub keyframe_requests_out: u64,
    pub keyframe_requests_throttled: u64,
}

impl Counters {
    pub fn dropped(&self) -> u64 {
        self.dropped_unknown_source
            + self.dropped_malformed
            + self.dropped_not_ready
            + self.dropped_unknown_ssrc
            + self.dropped_replay
            + self.dropped_auth
    }
}
