//! The meetings API for booking systems: create, read, list and cancel meetings, see who is
//! in one and who waits, and (for regions without an identity provider of their own) mint
//! join tokens. JSON over HTTP, authenticated with an API key (`Authorization: Bearer`);
//! described by the OpenAPI document at `/api/v1/openapi.json`.

use crate::app_state::AppState;
use crate::audit::{audit, audit_all, audit_unavailable};
use crate::audit_log::AuditEvent;
use crate::meeting::{MeetingKind, MeetingRecord};
use crate::meeting_room::MeetingRoom;
use crate::session_token::{Claims, Role};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

const OPENAPI: &str = include_str!("openapi.json");

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/meetings", post(create).get(list))
        .route("/api/v1/meetings/{id}", get(read))
        .route("/api/v1/meetings/{id}/cancel", post(cancel))
        .route("/api/v1/meetings/{id}/participants", get(participants))
        .route("/api/v1/meetings/{id}/tokens", post(mint))
}

fn error(status: StatusCode, code: &str, reason: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "reason": reason.into()})),
    )
        .into_response()
}

/// Checks the API key. Keys are compared through their SHA-256 so the comparison's time
/// says nothing about the key.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if state.api_keys.is_empty() {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_disabled",
            "no API key is configured (api.keys / --api-key)",
        )));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let digest = |k: &str| ring::digest::digest(&ring::digest::SHA256, k.as_bytes());
    let given = digest(given);
    if state
        .api_keys
        .iter()
        .any(|k| digest(k).as_ref() == given.as_ref())
    {
        Ok(())
    } else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "api_key_invalid",
            "missing or unknown API key",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        Err(Box::new(r))
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn view(state: &AppState, room: &MeetingRoom) -> Value {
    let s = room.lock();
    let policy = state.meetings.policy();
    let r = &s.record;
    let participants = s.participants();
    let waiting = participants.iter().filter(|p| p.state == "waiting").count();
    json!({
        "id": r.id,
        "unit": r.unit,
        "kind": r.kind,
        "start": r.start.to_string(),
        "end": r.end.to_string(),
        "status": r.status(Timestamp::now(), policy),
        "lobby_opens_at": r.opens_at(policy).to_string(),
        "closes_at": r.closes_at(policy).to_string(),
        "max_participants": r.max_participants(policy),
        "cancelled_at": r.cancelled_at.map(|t| t.to_string()),
        "ended_at": r.ended_at.map(|t| t.to_string()),
        "booked": r.booked,
        "from_queue": r.from_queue,
        "join_url": join_url(state, &r.id),
        "waiting": waiting,
        "admitted": participants.len() - waiting,
    })
}

fn join_url(state: &AppState, meeting: &str) -> String {
    format!(
        "{}/m/{meeting}",
        state
            .public_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMeeting {
    #[serde(default)]
    id: Option<String>,
    unit: String,
    #[serde(default = "visit")]
    kind: MeetingKind,
    start: Timestamp,
    end: Timestamp,
    #[serde(default)]
    max_participants: Option<u32>,
}

fn visit() -> MeetingKind {
    MeetingKind::Visit
}

async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<CreateMeeting>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_meeting",
                e.body_text(),
            );
        }
    };
    let id = req
        .id
        .unwrap_or_else(|| crate::generated_id::generated_id("mtg", rand::random()));
    if !valid_id(&id) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_meeting",
            "id: 1 to 64 characters of A-Z a-z 0-9 - _ .",
        );
    }
    if req.unit.trim().is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_meeting",
            "unit: required",
        );
    }
    // Both reach the audit log and the meeting store.
    if let Err(e) = crate::identity_number::check_fields([("id", id.as_str()), ("unit", &req.unit)])
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_meeting",
            e.to_string(),
        );
    }
    if req.end <= req.start {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_meeting",
            "end: must be after start",
        );
    }
    if req.max_participants == Some(0) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_meeting",
            "max_participants: at least 1",
        );
    }
    let record = MeetingRecord {
        id: id.clone(),
        unit: req.unit,
        kind: req.kind,
        start: req.start,
        end: req.end,
        max_participants: req.max_participants,
        cancelled_at: None,
        ended_at: None,
        booked: true,
        from_queue: None,
        denied: Vec::new(),
        remember_until: None,
    };
    let event = AuditEvent {
        event: "meeting_created".into(),
        meeting: Some(id.clone()),
        unit: Some(record.unit.clone()),
        ..Default::default()
    };
    let exists = || {
        error(
            StatusCode::CONFLICT,
            "meeting_exists",
            format!("a meeting {id} exists"),
        )
    };
    if state.meetings.get(&id).is_some() {
        return exists();
    }
    // Recorded first: a booking that cannot be recorded is not made.
    if audit(&state, event).await.is_err() {
        return audit_unavailable();
    }
    match state.meetings.create(record) {
        Ok(room) => (StatusCode::CREATED, Json(view(&state, &room))).into_response(),
        Err(_) => exists(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    unit: Option<String>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    // Reads are accesses too: recorded before anything is returned.
    let event = AuditEvent {
        event: "api_meetings_listed".into(),
        unit: q.unit.clone(),
        ..Default::default()
    };
    if audit(&state, event).await.is_err() {
        return audit_unavailable();
    }
    let meetings: Vec<Value> = state
        .meetings
        .list()
        .iter()
        .filter(|room| {
            let s = room.lock();
            s.record.booked && q.unit.as_ref().is_none_or(|u| *u == s.record.unit)
        })
        .map(|room| view(&state, room))
        .collect();
    Json(json!({ "meetings": meetings })).into_response()
}

fn find(state: &AppState, id: &str) -> Result<Arc<MeetingRoom>, Box<Response>> {
    state.meetings.get(id).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "meeting_unknown",
            format!("no meeting {id}"),
        ))
    })
}

/// Records a read of one meeting (`event`) before it is answered.
async fn read_recorded(state: &AppState, event: &str, room: &MeetingRoom) -> Result<(), ()> {
    let (meeting, unit) = {
        let s = room.lock();
        (s.record.id.clone(), s.record.unit.clone())
    };
    let event = AuditEvent {
        event: event.into(),
        meeting: Some(meeting),
        unit: Some(unit),
        ..Default::default()
    };
    audit(state, event).await
}

async fn read(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match find(&state, &id) {
        Ok(room) => {
            if read_recorded(&state, "api_meeting_read", &room)
                .await
                .is_err()
            {
                return audit_unavailable();
            }
            Json(view(&state, &room)).into_response()
        }
        Err(r) => *r,
    }
}

async fn participants(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match find(&state, &id) {
        Ok(room) => {
            if read_recorded(&state, "api_participants_read", &room)
                .await
                .is_err()
            {
                return audit_unavailable();
            }
            let list = room.lock().participants();
            Json(json!({ "meeting": id, "participants": list })).into_response()
        }
        Err(r) => *r,
    }
}

async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    if let Err(r) = find(&state, &id) {
        return *r;
    }
    let event = AuditEvent {
        event: "meeting_cancel_requested".into(),
        meeting: Some(id.clone()),
        ..Default::default()
    };
    if audit(&state, event).await.is_err() {
        return audit_unavailable();
    }
    match state
        .meetings
        .cancel(&id, Timestamp::now(), state.sfu.as_ref())
    {
        Some(events) => {
            let _ = audit_all(&state, events).await;
            match find(&state, &id) {
                Ok(room) => Json(view(&state, &room)).into_response(),
                Err(r) => *r,
            }
        }
        None => error(
            StatusCode::NOT_FOUND,
            "meeting_unknown",
            format!("no meeting {id}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    /// Pseudonymous participant id (never a personal identity number).
    sub: String,
    name: String,
    role: String,
    #[serde(default)]
    hsa: Option<String>,
    #[serde(default)]
    unit: Option<String>,
}

async fn mint(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<MintRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let Some(minter) = state.minter.clone() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "minting_disabled",
            "this service has no signing key (tokens.signing_key): tokens come from the region's issuer",
        );
    };
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_token_request",
                e.body_text(),
            );
        }
    };
    let room = match find(&state, &id) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let invalid = |reason: &str| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_token_request",
            reason,
        )
    };
    let Ok(role) = req.role.parse::<Role>() else {
        return invalid("role: one of clinician, patient, companion, interpreter");
    };
    if req.sub.trim().is_empty() || req.sub.len() > 128 {
        return invalid("sub: 1 to 128 characters");
    }
    if crate::identity_number::looks_like_identity_number(&req.sub) {
        return invalid("sub: must be pseudonymous, not a personal identity number");
    }
    if req.name.trim().is_empty() || req.name.chars().count() > 100 {
        return invalid("name: 1 to 100 characters");
    }
    let mut fields = vec![("name", req.name.as_str())];
    fields.extend(req.unit.as_deref().map(|u| ("unit", u)));
    if let Err(e) = crate::identity_number::check_fields(fields) {
        return invalid(&e.to_string());
    }
    if role == Role::Clinician && req.hsa.as_deref().is_none_or(str::is_empty) {
        return invalid("hsa: required for a clinician");
    }
    if req
        .hsa
        .as_deref()
        .is_some_and(|h| !crate::session_token::is_hsa_id(h))
    {
        return invalid("hsa: an HSA-id such as SE2321000016-ABC1");
    }
    let (unit, expires) = {
        let s = room.lock();
        let policy = state.meetings.policy();
        if s.record.cancelled_at.is_some() || s.record.ended_at.is_some() {
            return error(
                StatusCode::GONE,
                "meeting_over",
                "the meeting is cancelled or over",
            );
        }
        (
            req.unit.unwrap_or_else(|| s.record.unit.clone()),
            s.record.closes_at(policy),
        )
    };
    let now = Timestamp::now();
    let claims = Claims {
        iss: state.verifier.issuer().to_owned(),
        aud: state.verifier.audience().to_owned(),
        sub: req.sub,
        name: req.name,
        mtg: id.clone(),
        role: req.role,
        hsa: req.hsa,
        unit: Some(unit),
        // Valid from now, or — for a visit further ahead than a token may last — from the
        // longest lifetime before its end (opened earlier, the link says it is not valid yet).
        nbf: (now.as_second() - 5)
            .max(expires.as_second() - state.verifier.max_lifetime_secs() as i64),
        exp: expires.as_second(),
        jti: format!("{:016x}", rand::random::<u64>()),
    };
    let event = AuditEvent {
        event: "token_minted".into(),
        meeting: Some(id.clone()),
        subject: Some(claims.sub.clone()),
        role: Some(claims.role.clone()),
        hsa: claims.hsa.clone(),
        unit: claims.unit.clone(),
        ..Default::default()
    };
    let token = match minter.mint(&claims) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "minting_failed",
                e.to_string(),
            );
        }
    };
    if audit(&state, event).await.is_err() {
        return audit_unavailable();
    }
    Json(json!({
        "token": token,
        "url": format!("{}?token={token}", join_url(&state, &id)),
        "expires_at": expires.to_string(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/meetings",
            "/api/v1/meetings/{id}",
            "/api/v1/meetings/{id}/cancel",
            "/api/v1/meetings/{id}/participants",
            "/api/v1/meetings/{id}/tokens",
        ] {
            assert!(paths.contains_key(p), "{p} missing from openapi.json");
        }
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
