//! A participant taken out of its resume slot for a new WebSocket, until the upgrade completes.
//! The slot is spent before the upgrade (the key must not resume twice), but a client that
//! resets the connection right after its request never gets the upgrade: the participant would
//! then be dropped unparked — still a member, admitted, in everyone's roster until the meeting
//! ends, and no `leave` ever written. Dropped unused, this parks it again under its key for a
//! window of its own (the first window's expiry may have looked while it was out), after
//! which it leaves unless a later resume took it; a key taken from a connection still open is
//! that connection's again.

use crate::app_state::AppState;
use crate::meeting_room::MeetingRoom;
use crate::session_resume::Resumable;
use crate::session_token::Session;
use std::sync::Arc;

pub struct PendingResume {
    state: Arc<AppState>,
    session: Session,
    room: Arc<MeetingRoom>,
    key: String,
    resumable: Option<Resumable>,
}

impl PendingResume {
    pub fn new(
        state: Arc<AppState>,
        session: &Session,
        room: &Arc<MeetingRoom>,
        key: &str,
        resumable: Resumable,
    ) -> Self {
        Self {
            state,
            session: session.clone(),
            room: room.clone(),
            key: key.to_owned(),
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
        let taken = self.resumable.take();
        // A live connection was never asked to let go: it goes on, its key again its own
        // (unless it dropped and parked itself meanwhile).
        if let Some(Resumable::Live(takeover, id)) = taken {
            let c = &self.session.claims;
            self.state
                .resume
                .live_again(&self.key, &c.sub, &c.mtg, &id, takeover);
            return;
        }
        if let Some(Resumable::Parked(parked)) = taken {
            let (state, session, room) =
                (self.state.clone(), self.session.clone(), self.room.clone());
            let key = std::mem::take(&mut self.key);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        crate::connection::park(&state, &session, &room, parked, &key).await;
                    });
                }
                // (No runtime: the process is ending; parked without a window of its own.)
                Err(_) => {
                    let c = &session.claims;
                    state.resume.park(&key, &c.sub, &c.mtg, parked);
                }
            }
        }
    }
}
