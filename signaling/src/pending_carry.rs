//! A media session carried over a restart, taken for a new WebSocket until its upgrade
//! completes. The carry is spent before the upgrade (one key, one connection), but a client that
//! resets the connection right after its request — or an audit log that refuses the join —
//! never gets the upgrade: the carry would be lost, and with it the participant's way back to
//! its running media session past the waiting room. Dropped unused, it is put back for the
//! client's next try (until its own expiry).

use crate::carried_session::CarriedSession;
use crate::meetings::Meetings;
use sfu_proto::ParticipantId;
use std::sync::Arc;

pub struct PendingCarry {
    meetings: Arc<Meetings>,
    meeting: String,
    carried: Option<CarriedSession>,
}

impl PendingCarry {
    pub fn new(meetings: Arc<Meetings>, meeting: &str, carried: CarriedSession) -> Self {
        Self {
            meetings,
            meeting: meeting.to_owned(),
            carried: Some(carried),
        }
    }

    pub fn participant(&self) -> ParticipantId {
        self.carried
            .as_ref()
            .map(|c| c.participant.clone())
            .expect("held until taken")
    }

    /// The upgrade completed: the new connection takes the carry.
    pub fn into_carried(mut self) -> CarriedSession {
        self.carried.take().expect("taken once")
    }
}

impl Drop for PendingCarry {
    fn drop(&mut self) {
        if let Some(c) = self.carried.take() {
            self.meetings.return_carried(&self.meeting, c);
        }
    }
}
