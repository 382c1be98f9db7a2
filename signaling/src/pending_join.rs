//! A `join` written to the audit log for a connection that has not entered its meeting yet.
//! The line is written before the WebSocket upgrade (an access that cannot be recorded does
//! not happen), but a client can vanish before it enters: its connection reset during the
//! upgrade, its socket gone before the first message, the meeting full or ended meanwhile.
//! The meeting writes the `leave` of those who entered; dropped before that, this writes one
//! (`code` `not_entered`), so that every `join` in a patient's record has its end. (Also when
//! the request's handler was dropped while its `join` was being written: a reset connection
//! drops it at once.)

use crate::app_state::AppState;
use crate::audit::session_event;
use crate::audit_log::{AuditEvent, AuditLog};
use crate::session_token::Session;
use sfu_proto::ParticipantId;
use std::sync::Arc;

pub struct PendingJoin {
    audit: Option<Arc<AuditLog>>,
    leave: Option<AuditEvent>,
}

/// Writes the `join` of `id` into `meeting`; `Err` if it could not be (the join does not
/// happen). The line and the pending join are one: a request whose handler is dropped while
/// the line is written (its connection reset) still has its `leave` written, after the `join`.
/// `meeting` is the one entered, which is not the token's for a drop-in patient or clinician
/// following a private visit: the lines the meeting writes (its lobby, the `leave`) name the
/// visit, and a `join` naming the queue read as a stay in the queue first.
pub async fn record_join(
    state: &AppState,
    session: &Session,
    meeting: &str,
    id: &ParticipantId,
) -> Result<PendingJoin, ()> {
    let mut join = session_event("join", session, Some(id));
    join.meeting = Some(meeting.to_owned());
    let mut leave = join.clone();
    leave.event = "leave".into();
    leave.code = Some("not_entered".into());
    let Some(log) = state.audit.clone() else {
        return Ok(PendingJoin {
            audit: None,
            leave: None,
        });
    };
    let pending = PendingJoin {
        audit: Some(log.clone()),
        leave: Some(leave),
    };
    let written = tokio::task::spawn_blocking(move || match log.append(&join) {
        Ok(()) => Ok(pending),
        Err(e) => {
            pending.entered();
            Err(e)
        }
    });
    match written.await {
        Ok(Ok(pending)) => Ok(pending),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "audit log append failed");
            Err(())
        }
        Err(_) => Err(()),
    }
}

impl PendingJoin {
    /// In the meeting (or its waiting room), or never recorded: nothing more to write.
    pub fn entered(mut self) {
        self.leave = None;
    }
}

impl Drop for PendingJoin {
    fn drop(&mut self) {
        let (Some(log), Some(leave)) = (self.audit.take(), self.leave.take()) else {
            return;
        };
        let append = move || {
            if let Err(e) = log.append(&leave) {
                tracing::error!(error = %e, "audit log append failed");
            }
        };
        // Off the async threads (the append fsyncs); without a runtime the process is ending.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(append);
            }
            Err(_) => append(),
        }
    }
}
