//! A participant taken out of its resume slot for a new WebSocket, until the upgrade completes.
//! The slot is spent before the upgrade (the key must not resume twice), but a client that
//! resets the connection right after its request never gets the upgrade: the participant would
//! then be dropped unparked — still a member, admitted, in everyone's roster until the meeting
//! ends, and no `leave` ever written. Dropped unused, this parks it again under its key, where
//! the resume window's expiry (or a later resume) finds it.

use crate::app_state::AppState;
use crate::session_resume::Resumable;
use std::sync::Arc;

pub struct PendingResume {
    state: Arc<AppState>,
    key: String,
    sub: String,
    meeting: String,
    resumable: Option<Resumable>,
}

impl PendingResume {
    pub fn new(
        state: Arc<AppState>,
        key: &str,
        sub: &str,
        meeting: &str,
        resumable: Resumable,
    ) -> Self {
        Self {
            state,
            key: key.to_owned(),
            sub: sub.to_owned(),
            meeting: meeting.to_owned(),
            resumable: Some(resumable),
        }
    }

    /// The upgrade completed: the new connection takes the participant.
    pub fn into_resumable(mut self) -> Resumable {
        self.resumable.take().expect("taken once")
    }
}

impl Drop for PendingResume {
    fn drop(&mut self) {
        // (A live connection asked to let go was never asked: it goes on under its own key,
        // and parks itself when it drops.)
        if let Some(Resumable::Parked(parked)) = self.resumable.take() {
            self.state
                .resume
                .park(&self.key, &self.sub, &self.meeting, parked);
        }
    }
}
