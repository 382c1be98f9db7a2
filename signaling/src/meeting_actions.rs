//! A clinician's action on a meeting, in the one order every action keeps: check it and
//! describe it under the meeting's lock (plan), record it in the audit log (an action that
//! cannot be recorded does not happen), apply it under the lock and deliver what follows
//! (messages, SFU commands), record what followed, and store what must outlive a restart.

use crate::app_state::AppState;
use crate::audit::{audit, audit_all};
use crate::audit_log::AuditEvent;
use crate::meeting_room::{Action, MeetingRoom, RequestError};
use jiff::Timestamp;
use sfu_proto::ParticipantId;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionError {
    /// The rules refused it (nothing happened, nothing was recorded).
    Refused(RequestError),
    /// It could not be recorded, so it did not happen.
    AuditUnavailable,
}

/// Admit, deny, back to the lobby, remove, end the meeting.
pub async fn act(
    state: &AppState,
    room: &MeetingRoom,
    actor: &ParticipantId,
    action: Action,
    now: Timestamp,
) -> Result<(), ActionError> {
    // After the hand-over for a restart nothing taken now would be stored: refused, and done
    // again once reconnected.
    if state.meetings.handing_over() {
        return Err(ActionError::Refused(RequestError::Restarting));
    }
    // Resolved and planned under one lock: what is recorded is what is carried out.
    let (action, planned, target_sub) = {
        let s = room.lock();
        let action = s.resolved(action);
        let planned = s.plan(actor, &action);
        let target = action.target().and_then(|t| s.member(t));
        let target_sub = target.map(|m| m.sub.clone());
        let target_consultant = target
            .filter(|m| m.role == crate::session_token::Role::Consultant)
            .and_then(|m| m.hsa.clone());
        (action, planned, (target_sub, target_consultant))
    };
    let (target_sub, target_consultant) = target_sub;
    let events = planned.map_err(ActionError::Refused)?;
    let (name, target) = audit_name(&action, actor);
    if let Err(written) = audit_all(state, events).await {
        // Some of its lines were written (an admission with companions has one per person):
        // the record says it did not happen, if it can still be written.
        if written > 0 {
            not_applied(state, room, actor, name, target, "audit_unavailable").await;
        }
        return Err(ActionError::AuditUnavailable);
    }
    // (The target may have reconnected while the line was written: the action follows it.)
    let (applied, events) = state.meetings.with_room(room, state.sfu.as_ref(), |s, fx| {
        // Handed over while the line was written: recorded as not applied, below.
        if state.meetings.handing_over() {
            return Err(RequestError::Restarting);
        }
        let action = s.followed(action.clone(), target_sub.as_deref());
        match s.apply(actor, &action, now, fx) {
            // The person's connection closed while the line was written: the action takes
            // their standing all the same (no reconnect past the waiting room).
            // (Only while the clinician who acted is still here: an actor gone meanwhile —
            // removed, the meeting ended — acts no more.)
            Err(RequestError::NoSuchParticipant)
                if s.member(actor).is_some()
                    && target_sub.as_deref().is_some_and(|sub| {
                        s.apply_to_absent(&action, sub, target_consultant.as_deref())
                    }) =>
            {
                Ok(())
            }
            applied => applied,
        }
    });
    let _ = audit_all(state, events).await;
    match applied {
        Ok(()) => {
            // An end, a denial or an invitation must outlive the tokens that could undo or
            // use it, and a restart.
            if matches!(
                action,
                Action::EndMeeting
                    | Action::Deny(_)
                    | Action::Remove(_)
                    | Action::InviteConsultant { .. }
            ) {
                state.meetings.remember_decision(room, now);
            }
            // Who is admitted is stored too: a restart (even a crash) lets them back in past
            // the waiting room within their grace.
            if matches!(
                action,
                Action::Admit(_)
                    | Action::AdmitWithCompanions(_)
                    | Action::AdmitGroup { .. }
                    | Action::ToLobby(_)
            ) {
                state.meetings.persist();
            }
            // Photos shared in it go with the meeting.
            if action == Action::EndMeeting {
                state.images.forget_meeting(&room.id);
            }
            Ok(())
        }
        Err(e) => {
            not_applied(state, room, actor, name, target, e.code()).await;
            Err(ActionError::Refused(e))
        }
    }
}

/// The name an action is recorded under, and whom it concerns.
fn audit_name<'a>(
    action: &'a Action,
    actor: &'a ParticipantId,
) -> (&'static str, &'a ParticipantId) {
    match action {
        Action::Admit(t)
        | Action::AdmitWithCompanions(t)
        | Action::AdmitGroup { patient: t, .. } => ("admit", t),
        Action::InviteConsultant { .. } => ("consultant_invited", actor),
        Action::Deny(t) => ("deny", t),
        Action::ToLobby(t) => ("back_to_lobby", t),
        Action::Remove(t) => ("remove", t),
        Action::EndMeeting => ("meeting_end", actor),
    }
}

/// Drop-in: the first patient in the queue and the clinician move into a new private visit.
pub async fn take_next(
    state: &AppState,
    queue: &Arc<MeetingRoom>,
    actor: &ParticipantId,
    now: Timestamp,
) -> Result<(), ActionError> {
    if state.meetings.handing_over() {
        return Err(ActionError::Refused(RequestError::Restarting));
    }
    let (patient, to, event) = state
        .meetings
        .plan_take(queue, actor)
        .map_err(ActionError::Refused)?;
    if audit(state, event).await.is_err() {
        return Err(ActionError::AuditUnavailable);
    }
    match state
        .meetings
        .take(queue, actor, &patient, &to, now, state.sfu.as_ref())
    {
        Ok(events) => {
            // The private visit runs where its queue does: this replica holds its lease too.
            if let Some(replicas) = &state.replicas
                && let Err(e) = replicas.leases.owner(&to)
            {
                tracing::warn!(error = %e, "taking a private visit's lease failed");
            }
            let _ = audit_all(state, events).await;
            Ok(())
        }
        Err(e) => {
            not_applied(state, queue, actor, "admit", &patient, e.code()).await;
            Err(ActionError::Refused(e))
        }
    }
}

/// The meeting changed between recording an action and carrying it out (the person left,
/// another clinician acted first), or only some of its lines could be recorded: the record
/// says it did not happen after all.
async fn not_applied(
    state: &AppState,
    room: &MeetingRoom,
    actor: &ParticipantId,
    action: &str,
    target: &ParticipantId,
    code: &str,
) {
    let event = {
        let s = room.lock();
        let a = s.member(actor);
        AuditEvent {
            event: format!("{action}_not_applied"),
            meeting: Some(room.id.clone()),
            participant: Some(target.to_string()),
            actor_hsa: a.and_then(|a| a.hsa.clone()),
            actor_unit: a.and_then(|a| a.unit.clone()),
            code: Some(code.into()),
            ..Default::default()
        }
    };
    let _ = audit(state, event).await;
}
