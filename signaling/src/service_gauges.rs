//! What an operator watches of the signaling service itself, on its `/metrics` beside the
//! SFU's: meetings in progress, people admitted and waiting, WebSockets open and dropped ones
//! waiting for a resume — sampled once a second from the meeting registry — each with its
//! HELP text.

use crate::app_state::AppState;
use metrics::{describe_counter, describe_gauge, gauge};
use std::sync::Arc;
use std::time::Duration;

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
        "signaling_jwks_refresh_total",
        "Refreshes of the identity provider's signing keys (JWKS), by result."
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
    }
}
