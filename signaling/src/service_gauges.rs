//! What an operator watches of the signaling service itself, on its `/metrics` beside the
//! SFU's: meetings in progress, people admitted and waiting, WebSockets open and dropped ones
//! waiting for a resume — sampled once a second from the meeting registry — each with its
//! HELP text.

use crate::app_state::AppState;
use metrics::{describe_counter, describe_gauge, describe_histogram, gauge};
use std::sync::Arc;
use std::time::Duration;

/// Buckets of the `_seconds` histograms: from a quick answer (5 ms) to a long wait in the
/// waiting room (an hour).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    1800.0, 3600.0,
];

/// Registers the HELP text of every signaling metric.
pub fn describe() {
    describe_gauge!(
        "signaling_meetings_active",
        "Meetings with at least one person connected (in the waiting room or admitted)."
    );
    describe_gauge!(
        "signaling_participants",
        "People connected to a meeting, by state: admitted or waiting (in the waiting room)."
    );
    describe_gauge!(
        "signaling_websockets",
        "Join WebSockets open, including dropped ones kept for a resume."
    );
    describe_gauge!(
        "signaling_parked_connections",
        "Participants whose WebSocket dropped, kept for a resume (20 s each at most)."
    );
    describe_counter!(
        "signaling_connections_refused_total",
        "Connections refused at the listener's limits (per source or in total)."
    );
    describe_counter!(
        "signaling_connections_too_slow_total",
        "Join WebSockets closed because messages waited past the limit for a client not reading them (4008)."
    );
    describe_counter!(
        "signaling_jwks_refresh_total",
        "Refreshes of the identity provider's signing keys (JWKS), by result."
    );
    describe_gauge!(
        "signaling_sfu_nodes",
        "Standalone SFU nodes linked to this replica, by state: serving or draining."
    );
    describe_counter!(
        "signaling_ws_reads_throttled_total",
        "Join WebSocket messages after which the connection was read more slowly (past its allowance of 200, then 50 a second)."
    );
    describe_counter!(
        "signaling_relayed_websockets_total",
        "Join WebSockets relayed to the replica that owns their meeting (replicas sharing meetings)."
    );
    describe_counter!(
        "signaling_relayed_requests_total",
        "Join checks and meetings-API calls forwarded to the replica that owns their meeting."
    );
    describe_gauge!(
        "signaling_meeting_leases",
        "Meetings whose lease this replica holds (it runs them; other replicas relay to it)."
    );
    describe_counter!(
        "signaling_sfu_nodes_refused_total",
        "SFU nodes refused on the control link (a certificate without the node's name)."
    );
    describe_histogram!(
        "signaling_lobby_wait_seconds",
        metrics::Unit::Seconds,
        "Time people spent in the waiting room (or a drop-in queue) before being admitted."
    );
    describe_histogram!(
        "signaling_join_to_media_seconds",
        metrics::Unit::Seconds,
        "From joining a visit, or being admitted to it, until media flows."
    );
    describe_histogram!(
        "signaling_sfu_answer_seconds",
        metrics::Unit::Seconds,
        "From a client's SDP offer sent to the SFU until the SFU's answer (the control round trip)."
    );
    describe_gauge!(
        "signaling_images_held_bytes",
        metrics::Unit::Bytes,
        "Bytes of shared photos held in memory (each for 10 minutes at most)."
    );
    describe_counter!(
        "signaling_images_shared_total",
        "Photos shared in meetings."
    );
    describe_counter!(
        "signaling_audit_checkpoints_total",
        "Signed checkpoints written to the audit log, by reason."
    );
    describe_counter!(
        "signaling_audit_file_failures_total",
        "Audit lines the log file could not take (kept by the off-host copy when it could)."
    );
    describe_gauge!(
        "signaling_audit_sink_connected",
        "1 while the audit log's off-host copy (Redis) is connected, else 0."
    );
    describe_gauge!(
        "signaling_audit_sink_diverged",
        "1 when the audit log and its off-host copy differ (compare with audit verify --sink)."
    );
    describe_gauge!(
        "signaling_audit_sink_backlog_lines",
        "Audit lines waiting to be copied off the host."
    );
    describe_counter!(
        "signaling_audit_sink_lines_total",
        "Audit lines copied off the host."
    );
    describe_counter!(
        "signaling_audit_sink_lines_requeued_from_file_total",
        "Audit lines let go from the copy's full buffer, to be read again from the file."
    );
}

/// Samples the gauges every second, for as long as the service runs.
pub async fn publish(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (mut active, mut admitted, mut waiting) = (0u64, 0u64, 0u64);
        for room in state.meetings.list() {
            let people = room.lock().participants();
            active += u64::from(!people.is_empty());
            for p in people {
                if p.state == "waiting" {
                    waiting += 1;
                } else {
                    admitted += 1;
                }
            }
        }
        gauge!("signaling_meetings_active").set(active as f64);
        gauge!("signaling_participants", "state" => "admitted").set(admitted as f64);
        gauge!("signaling_participants", "state" => "waiting").set(waiting as f64);
        gauge!("signaling_websockets").set(state.meetings.connection_count() as f64);
        gauge!("signaling_parked_connections").set(state.resume.parked() as f64);
        if let Some(r) = &state.replicas {
            gauge!("signaling_meeting_leases").set(r.leases.held().len() as f64);
        }
        if let Some((serving, draining)) = state.sfu.node_counts() {
            gauge!("signaling_sfu_nodes", "state" => "serving").set(serving as f64);
            gauge!("signaling_sfu_nodes", "state" => "draining").set(draining as f64);
        }
    }
}
