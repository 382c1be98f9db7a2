//! Writing to the audit log from request handlers: off the async threads, in order, and an
//! access that cannot be recorded does not happen.

use crate::app_state::AppState;
use crate::audit_log::AuditEvent;
use crate::meeting_room::role_name;
use crate::session_token::Session;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sfu_proto::ParticipantId;

pub(crate) fn session_event(
    event: &str,
    session: &Session,
    id: Option<&ParticipantId>,
) -> AuditEvent {
    let c = &session.claims;
    AuditEvent {
        event: event.into(),
        meeting: Some(c.mtg.clone()),
        subject: Some(c.sub.clone()),
        role: Some(role_name(session.role).into()),
        hsa: c.hsa.clone(),
        unit: c.unit.clone(),
        participant: id.map(ToString::to_string),
        ..Default::default()
    }
}

/// Appends several events in order; stops at the first that cannot be recorded, and then
/// says how many were.
pub async fn audit_all(state: &AppState, events: Vec<AuditEvent>) -> Result<(), usize> {
    for (written, e) in events.into_iter().enumerate() {
        audit(state, e).await.map_err(|()| written)?;
    }
    Ok(())
}

/// Appends to the audit log off the async threads (it fsyncs). Without a log configured,
/// nothing is recorded.
pub async fn audit(state: &AppState, event: AuditEvent) -> Result<(), ()> {
    let Some(log) = state.audit.clone() else {
        return Ok(());
    };
    match tokio::task::spawn_blocking(move || log.append(&event)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "audit log append failed");
            Err(())
        }
        Err(_) => Err(()),
    }
}

/// A valid token's subject was refused `what` with `code`: under the subject's refusal budget
/// for that kind, written now (with `target`, what was asked for), counted into the subject's
/// summary line, or past the budget left for the caller to answer 429. `Err` when the line
/// was due and could not be written (the caller answers with it).
pub async fn subject_refused(
    state: &AppState,
    what: crate::token_refusals::SubjectRefusal,
    session: &Session,
    code: &'static str,
    target: Option<String>,
) -> Result<crate::token_refusals::RefusalVerdict, Response> {
    use crate::token_refusals::RefusalVerdict;
    let c = &session.claims;
    let verdict =
        state
            .refusals
            .refused_subject(what, &c.sub, &c.mtg, code, std::time::Instant::now());
    if verdict == RefusalVerdict::Record {
        let mut event = session_event(what.event(), session, None);
        event.code = Some(code.into());
        event.target = target;
        if audit(state, event).await.is_err() {
            return Err(audit_unavailable());
        }
    }
    Ok(verdict)
}

/// An access that cannot be recorded does not happen.
pub(crate) fn audit_unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": "audit_unavailable",
            "reason": "the access could not be recorded; try again",
            "message": "Tjänsten kan inte ta emot dig just nu. Försök igen om en stund.",
        })),
    )
        .into_response()
}
