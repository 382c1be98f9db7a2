//! The meetings API for booking systems: create, read, list and cancel meetings, see who is
//! in one and who waits, and (for regions without an identity provider of their own) mint
//! join tokens. JSON over HTTP, authenticated with an API key (`Authorization: Bearer`);
//! described by the OpenAPI document at `/api/v1/openapi.json`.

use crate::api_client::ApiClient;
use crate::app_state::AppState;
use crate::audit::{audit, audit_all, audit_unavailable};
use crate::audit_log::AuditEvent;
use crate::bearer::bearer;
use crate::client_address::ClientAddress;
use crate::meeting::{MeetingKind, MeetingRecord, MeetingStatus};
use crate::meeting_room::MeetingRoom;
use crate::meetings::CreateError;
use crate::replica_relay::Routed;
use crate::session_token::{Claims, Role};
use crate::token_refusals::{RefusalVerdict, TokenRefusals};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::IpAddr;
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

/// The system a call comes from, once its key checked out; refused keys are audited per
/// source (summarised like refused tokens, 429 past the source's budget).
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    source: IpAddr,
) -> Result<ApiClient, Box<Response>> {
    if state.api_clients.is_empty() {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_disabled",
            "no system is configured for the meetings API ([[api.clients]])",
        )));
    }
    if let Some(client) = ApiClient::find(&state.api_clients, bearer(headers)) {
        return Ok(client.clone());
    }
    let code = "api_key_invalid";
    let unauthorized = || {
        let mut r = error(StatusCode::UNAUTHORIZED, code, "missing or unknown API key");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        Box::new(r)
    };
    match state
        .refusals
        .refused(source, code, std::time::Instant::now())
    {
        RefusalVerdict::Record => {
            let event = AuditEvent {
                event: "api_key_refused".into(),
                ..TokenRefusals::first_line(source, code)
            };
            if audit(state, event).await.is_err() {
                return Err(Box::new(audit_unavailable()));
            }
            Err(unauthorized())
        }
        RefusalVerdict::Counted => Err(unauthorized()),
        RefusalVerdict::Limited => Err(Box::new(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(
                    header::RETRY_AFTER,
                    state.refusals.interval().as_secs().max(1).to_string(),
                )],
                Json(json!({"error": "too_many_refusals", "reason": "too many refused keys from this address; try again later"})),
            )
                .into_response(),
        )),
    }
}

/// An audit line of a call by `client`.
fn called(client: &ApiClient, event: &str) -> AuditEvent {
    AuditEvent {
        event: event.into(),
        api_client: Some(client.name.clone()),
        ..Default::default()
    }
}

/// What a unit a system may not act for was found in: the meeting it asked about, or what it
/// asked for (a booking's unit, a list's filter, a token's unit claim), in `meeting` if any.
enum UnitIn<'a> {
    Meeting(&'a str),
    Request(Option<&'a str>),
}

/// A system acts only for its own care units: anything else is refused (403) and audited.
async fn within_units(
    state: &AppState,
    client: &ApiClient,
    unit: &str,
    found_in: UnitIn<'_>,
) -> Result<(), Box<Response>> {
    let meeting = match found_in {
        UnitIn::Meeting(m) => Some(m),
        UnitIn::Request(m) => m,
    };
    if client.may_act_for(unit) {
        return Ok(());
    }
    let event = AuditEvent {
        meeting: meeting.map(str::to_owned),
        unit: Some(unit.to_owned()),
        code: Some("unit_not_allowed".into()),
        ..called(client, "api_refused")
    };
    if audit(state, event).await.is_err() {
        return Err(Box::new(audit_unavailable()));
    }
    Err(Box::new(error(
        StatusCode::FORBIDDEN,
        "unit_not_allowed",
        match found_in {
            UnitIn::Meeting(_) => {
                "the meeting belongs to a care unit this API key does not act for"
            }
            UnitIn::Request(_) => "this API key does not act for that care unit",
        },
    )))
}

/// The most connections a booking may allow: what a room's forwarding costs grows with the
/// square of its size, on a node other units' visits share (a drop-in queue of patients
/// waiting, its largest use, is 50 by default).
const MAX_BOOKED_PARTICIPANTS: u32 = 200;

/// The longest meeting id a path may name (a booking's is at most 64 characters).
const MAX_PATH_ID: usize = 256;

/// The meeting `id` if it exists and `client` acts for its unit.
async fn find_for(
    state: &AppState,
    client: &ApiClient,
    id: &str,
) -> Result<Arc<MeetingRoom>, Box<Response>> {
    if id.len() > MAX_PATH_ID || crate::identity_number::looks_like_identity_number(id) {
        // No meeting has such an id (bookings and tokens are checked), and the text is not
        // written — to the audit log, nor (`to_owner`) as a lease's key in Redis: a personal
        // identity number used as a visit's key would stay in the signed, copied log for good. (Not held to a booking's characters: a meeting opened by a
        // region's token, unbooked, has the token's id.)
        let event = AuditEvent {
            code: Some("invalid_meeting".into()),
            ..called(client, "api_refused")
        };
        if audit(state, event).await.is_err() {
            return Err(Box::new(audit_unavailable()));
        }
        return Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_meeting",
            "the meeting id in the path: at most 256 bytes, and no personal identity number",
        )));
    }
    let room = match state.meetings.find(id) {
        Ok(Some(room)) => room,
        Ok(None) => {
            // Recorded as another unit's meeting is, so that the two answers cannot be told
            // apart by their time (an fsynced line) or by an audit outage.
            let event = AuditEvent {
                meeting: Some(id.to_owned()),
                code: Some("meeting_unknown".into()),
                ..called(client, "api_refused")
            };
            if audit(state, event).await.is_err() {
                return Err(Box::new(audit_unavailable()));
            }
            return Err(Box::new(unknown_meeting(id)));
        }
        Err(e) => {
            tracing::error!(error = %e, "reading a meeting failed: the store is unreachable");
            return Err(Box::new(store_unavailable()));
        }
    };
    let unit = room.lock().record.unit.clone();
    if let Err(refused) = within_units(state, client, &unit, UnitIn::Meeting(id)).await {
        // Recorded as refused; answered as if there were no such meeting, so that a unit's
        // key cannot learn which of another unit's visits exist (a 403 would say it does).
        if refused.status() == StatusCode::FORBIDDEN {
            return Err(Box::new(unknown_meeting(id)));
        }
        return Err(refused);
    }
    Ok(room)
}

fn valid_id(id: &str) -> bool {
    (1..=crate::generated_id::MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn view(state: &AppState, room: &MeetingRoom) -> Value {
    let s = room.lock();
    let participants = s.participants();
    let waiting = participants.iter().filter(|p| p.state == "waiting").count();
    record_view(
        state,
        &s.record,
        Some((waiting, participants.len() - waiting)),
    )
}

/// A meeting as the API shows it; `counts` (waiting, admitted) when this process runs it.
fn record_view(state: &AppState, r: &MeetingRecord, counts: Option<(usize, usize)>) -> Value {
    let policy = state.meetings.policy();
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
        "waiting": counts.map(|c| c.0),
        "admitted": counts.map(|c| c.1),
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
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    body: Result<Json<CreateMeeting>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let client = match authorize(&state, &headers, source).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if state.meetings.handing_over() {
        return restarting();
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
    if req.unit.trim().is_empty()
        || req.unit.chars().count() > MAX_UNIT_CHARS
        || req.unit.chars().any(char::is_control)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_meeting",
            "unit: 1 to 64 characters, no control characters",
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
    if let Err(r) = within_units(&state, &client, &req.unit, UnitIn::Request(None)).await {
        return *r;
    }
    if let Err(reason) = bookable_window(req.start, req.end, Timestamp::now()) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_meeting", reason);
    }
    if req
        .max_participants
        .is_some_and(|n| n == 0 || n > MAX_BOOKED_PARTICIPANTS)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_meeting",
            format!("max_participants: 1 to {MAX_BOOKED_PARTICIPANTS}"),
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
        invited: Vec::new(),
        remember_until: None,
        readmit: Vec::new(),
        carried: Vec::new(),
        queue: Vec::new(),
        forwards: Vec::new(),
    };
    let event = AuditEvent {
        meeting: Some(id.clone()),
        unit: Some(record.unit.clone()),
        ..called(&client, "meeting_created")
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
    let unit = record.unit.clone();
    // Recorded as made, and then not (booked meanwhile elsewhere, the store unreachable).
    let not_applied = |code: &str| AuditEvent {
        meeting: Some(id.clone()),
        unit: Some(unit.clone()),
        code: Some(code.into()),
        ..called(&client, "meeting_created_not_applied")
    };
    match state.meetings.create(record) {
        Ok(room) => (StatusCode::CREATED, Json(view(&state, &room))).into_response(),
        Err(CreateError::Exists(_)) => {
            let _ = audit(&state, not_applied("meeting_exists")).await;
            exists()
        }
        Err(CreateError::Store(e)) => {
            tracing::error!(error = %e, "booking a meeting failed: the store is unreachable");
            let _ = audit(&state, not_applied("store_unavailable")).await;
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the meeting store cannot be reached; nothing was booked, try again",
            )
        }
    }
}

/// A care unit's name or HSA-id: it reaches every audit line of its meetings.
const MAX_UNIT_CHARS: usize = 64;
/// How far ahead a meeting may be booked, and how long it may last (a visit, or a drop-in
/// queue's day).
const MAX_BOOKING_AHEAD: SignedDuration = SignedDuration::from_hours(2 * 366 * 24);
const MAX_MEETING_LENGTH: SignedDuration = SignedDuration::from_hours(24);

/// Whether a meeting from `start` to `end` may be booked `now`; else which field is wrong.
fn bookable_window(start: Timestamp, end: Timestamp, now: Timestamp) -> Result<(), &'static str> {
    if end <= start {
        return Err("end: must be after start");
    }
    if end <= now {
        return Err("end: in the past (a meeting that is over cannot be booked)");
    }
    if start.duration_since(now) > MAX_BOOKING_AHEAD {
        return Err("start: at most two years ahead");
    }
    if end.duration_since(start) > MAX_MEETING_LENGTH {
        return Err("end: at most 24 hours after start");
    }
    Ok(())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    unit: Option<String>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let client = match authorize(&state, &headers, source).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    // (Before anything is audited: the unit asked for goes into the line.)
    if let Some(unit) = &q.unit {
        if unit.chars().count() > MAX_UNIT_CHARS {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                "unit: at most 64 characters",
            );
        }
        if let Err(e) = crate::identity_number::check_fields([("unit", unit.as_str())]) {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                e.to_string(),
            );
        }
        if let Err(r) = within_units(&state, &client, unit, UnitIn::Request(None)).await {
            return *r;
        }
    }
    // Reads are accesses too: recorded before anything is returned.
    let event = AuditEvent {
        unit: q.unit.clone(),
        ..called(&client, "api_meetings_listed")
    };
    if audit(&state, event).await.is_err() {
        return audit_unavailable();
    }
    let wanted = |r: &MeetingRecord| {
        r.booked && client.may_act_for(&r.unit) && q.unit.as_ref().is_none_or(|u| *u == r.unit)
    };
    let meetings: Vec<Value> = match &state.replicas {
        // Replicas: every booking is in the store; who waits and who is in is known where the
        // meeting runs (here, or null: read the meeting itself, which its owner answers).
        Some(replicas) => {
            let records = match state.meetings.stored_records() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "listing meetings failed: the store is unreachable");
                    return store_unavailable();
                }
            };
            let mut v: Vec<Value> = records
                .iter()
                .filter(|r| wanted(r))
                .map(|r| match state.meetings.get(&r.id) {
                    Some(room) if replicas.leases.holds(&r.id) => view(&state, &room),
                    _ => record_view(&state, r, None),
                })
                .collect();
            v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            v
        }
        None => state
            .meetings
            .list()
            .iter()
            .filter(|room| wanted(&room.lock().record))
            .map(|room| view(&state, room))
            .collect(),
    };
    Json(json!({ "meetings": meetings })).into_response()
}

/// Replicas: a call about one meeting (`/api/v1/meetings/{id}…`) is answered by the replica
/// that runs it — here, taking its lease if nobody holds it, or forwarded to its owner.
pub async fn to_owner(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let segment = request
        .uri()
        .path()
        .strip_prefix("/api/v1/meetings/")
        .map(|rest| rest.split('/').next().unwrap_or_default().to_owned());
    // Ids are written plain: a percent-encoded one would be routed by its spelling here and
    // handled by its decoding (a replica that does not run the meeting acting on it).
    if segment.as_deref().is_some_and(|id| id.contains('%')) {
        return error(
            StatusCode::NOT_FOUND,
            "meeting_unknown",
            "meeting ids are written plain in paths (A-Z a-z 0-9 - _ .), not percent-encoded",
        );
    }
    let Some(replicas) = state.replicas.clone() else {
        return next.run(request).await;
    };
    // (An id that holds an identity number is refused here as it is without replicas, not
    // made the name of a lease in Redis first.)
    let Some(id) = segment
        .filter(|id| valid_id(id) && !crate::identity_number::looks_like_identity_number(id))
    else {
        return next.run(request).await;
    };
    // Only a known system's call takes a lease (and asks the nodes what they run): one with a
    // missing or unknown key is refused here, by the handler, like any other.
    if ApiClient::find(&state.api_clients, bearer(request.headers())).is_none() {
        return next.run(request).await;
    }
    let routed = replicas.route(
        &state.meetings,
        &id,
        state.sfu.as_ref(),
        request.headers(),
        store_unavailable,
    );
    match routed {
        Routed::Here => next.run(request).await,
        Routed::Owner(owner) => {
            replicas
                .forward_request(
                    &owner,
                    request,
                    crate::replica_relay::RelayedBody {
                        limit: 1024 * 1024,
                        too_large: "too_large",
                        too_slow: "request_timeout",
                        uploader: None,
                    },
                    "",
                    source,
                )
                .await
        }
        Routed::Refused(r) => r,
    }
}

fn store_unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the meeting store cannot be reached; try again",
    )
}

/// The service has handed its meetings over for a restart: a booking or cancellation now
/// would not be in what the next run (or another replica) starts from.
fn restarting() -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "restarting",
        "the service is restarting; try again in a few seconds",
    );
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    r
}

fn unknown_meeting(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "meeting_unknown",
        format!("no meeting {id}"),
    )
}

fn find(state: &AppState, id: &str) -> Result<Arc<MeetingRoom>, Box<Response>> {
    match state.meetings.find(id) {
        Ok(Some(room)) => Ok(room),
        Ok(None) => Err(Box::new(unknown_meeting(id))),
        Err(e) => {
            tracing::error!(error = %e, "reading a meeting failed: the store is unreachable");
            Err(Box::new(store_unavailable()))
        }
    }
}

/// Records a read of one meeting (`event`) before it is answered.
async fn read_recorded(
    state: &AppState,
    client: &ApiClient,
    event: &str,
    room: &MeetingRoom,
) -> Result<(), ()> {
    let (meeting, unit) = {
        let s = room.lock();
        (s.record.id.clone(), s.record.unit.clone())
    };
    let event = AuditEvent {
        meeting: Some(meeting),
        unit: Some(unit),
        ..called(client, event)
    };
    audit(state, event).await
}

async fn read(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let client = match authorize(&state, &headers, source).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match find_for(&state, &client, &id).await {
        Ok(room) => {
            if read_recorded(&state, &client, "api_meeting_read", &room)
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
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let client = match authorize(&state, &headers, source).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match find_for(&state, &client, &id).await {
        Ok(room) => {
            if read_recorded(&state, &client, "api_participants_read", &room)
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
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let client = match authorize(&state, &headers, source).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if state.meetings.handing_over() {
        return restarting();
    }
    let unit = match find_for(&state, &client, &id).await {
        Ok(room) => room.lock().record.unit.clone(),
        Err(r) => return *r,
    };
    let event = AuditEvent {
        meeting: Some(id.clone()),
        unit: Some(unit.clone()),
        ..called(&client, "meeting_cancel_requested")
    };
    if audit(&state, event).await.is_err() {
        return audit_unavailable();
    }
    match state
        .meetings
        .cancel(&id, Timestamp::now(), state.sfu.as_ref())
    {
        Some((events, stored)) => {
            state.images.forget_meeting(&id);
            // (The cancellation's line names the system that made it, and the unit.)
            let events = events.into_iter().map(|e| match e.event.as_str() {
                "meeting_cancelled" => AuditEvent {
                    api_client: Some(client.name.clone()),
                    unit: Some(unit.clone()),
                    ..e
                },
                _ => e,
            });
            let _ = audit_all(&state, events.collect()).await;
            if stored.is_err() {
                // Cancelled here, but a restart would bring it back: the booking system is to
                // ask again (the cancellation is written again then).
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the meeting is cancelled on this service, but the meeting store did not \
                     take it and a restart would undo it; cancel again",
                );
            }
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

/// The claims every minted link shares: this service as issuer, the meeting, and a validity
/// from now — or, for a visit further ahead than a token may last, from the longest lifetime
/// before its end (opened earlier, the link says it is not valid yet) — to the meeting's close.
pub(crate) fn link_claims(state: &AppState, meeting: &str, expires: Timestamp) -> Claims {
    let now = Timestamp::now();
    Claims {
        iss: state.verifier.issuer().to_owned(),
        aud: state.verifier.audience().into(),
        sub: String::new(),
        name: String::new(),
        mtg: meeting.to_owned(),
        role: String::new(),
        hsa: None,
        unit: None,
        companion_of: None,
        nbf: (now.as_second() - 5)
            .max(expires.as_second() - state.verifier.max_lifetime_secs() as i64),
        exp: expires.as_second(),
        jti: format!("{:016x}", rand::random::<u64>()),
    }
}

/// The link a minted token opens.
pub(crate) fn link_url(state: &AppState, meeting: &str, token: &str) -> String {
    // In the fragment: a browser never sends it, so no server or proxy on the way logs it.
    format!("{}#token={token}", join_url(state, meeting))
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
    /// A companion's patient (`sub`).
    #[serde(default)]
    companion_of: Option<String>,
}

async fn mint(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<MintRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let client = match authorize(&state, &headers, source).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
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
    let room = match find_for(&state, &client, &id).await {
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
        return invalid("role: one of clinician, patient, companion, interpreter, consultant");
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
    if req
        .unit
        .as_deref()
        .is_some_and(|u| u.chars().count() > MAX_UNIT_CHARS)
    {
        return invalid("unit: at most 64 characters");
    }
    if req.companion_of.as_deref().is_some_and(|c| c.len() > 128) {
        return invalid("companion_of: at most 128 bytes");
    }
    // (Line breaks and the like would reach the audit log's readers and the pages as they are.)
    let texts = [
        ("sub", Some(req.sub.as_str())),
        ("name", Some(req.name.as_str())),
        ("hsa", req.hsa.as_deref()),
        ("unit", req.unit.as_deref()),
        ("companion_of", req.companion_of.as_deref()),
    ];
    if let Some((field, _)) = texts
        .iter()
        .find(|(_, v)| v.is_some_and(|v| v.chars().any(char::is_control)))
    {
        return invalid(&format!(
            "{field}: no control characters (line breaks, tabs)"
        ));
    }
    let mut fields = vec![("name", req.name.as_str())];
    fields.extend(req.hsa.as_deref().map(|h| ("hsa", h)));
    fields.extend(req.unit.as_deref().map(|u| ("unit", u)));
    fields.extend(req.companion_of.as_deref().map(|c| ("companion_of", c)));
    if let Err(e) = crate::identity_number::check_fields(fields) {
        return invalid(&e.to_string());
    }
    // A token's unit claim speaks for that unit: only one the system acts for (a consultant's
    // names their own unit, of another provider, and comes only by a clinician's invitation).
    if let Some(unit) = &req.unit
        && role != Role::Consultant
        && let Err(r) = within_units(&state, &client, unit, UnitIn::Request(Some(&id))).await
    {
        return *r;
    }
    if matches!(role, Role::Clinician | Role::Consultant)
        && req.hsa.as_deref().is_none_or(str::is_empty)
    {
        return invalid("hsa: required for a clinician or consultant");
    }
    if role == Role::Consultant && req.unit.as_deref().is_none_or(str::is_empty) {
        return invalid("unit: required for a consultant (their own care unit)");
    }
    if req.companion_of.is_some() && role != Role::Companion {
        return invalid("companion_of: only for a companion");
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
        // (Also one past its close: a link to it would be refused at once.)
        if matches!(
            s.record.status(Timestamp::now(), policy),
            MeetingStatus::Ended | MeetingStatus::Cancelled
        ) {
            return error(
                StatusCode::GONE,
                "meeting_over",
                "the meeting is cancelled or over",
            );
        }
        // A queue's link also brings back whoever was taken into a private visit, which may
        // run (and be rejoined) past the queue's close: at most a visit's length and its
        // overrun after it.
        // — but never so far that the link would not be valid yet when the queue opens (a
        // token lasts at most the longest lifetime, counted back from its expiry).
        let closes = s.record.closes_at(policy);
        let expires = match s.record.kind {
            MeetingKind::DropIn => {
                let longest = jiff::SignedDuration::from_secs(
                    i64::try_from(state.verifier.max_lifetime_secs()).unwrap_or(i64::MAX),
                );
                let opens = s.record.start.max(Timestamp::now());
                (closes + policy.drop_in_visit_length + policy.overrun)
                    .min(opens.checked_add(longest).unwrap_or(Timestamp::MAX))
                    .max(closes)
            }
            MeetingKind::Visit => closes,
        };
        // Anyone but a consultant comes in with the meeting's own unit (check_entry refuses
        // another): a link that would always be refused is not made.
        if role != Role::Consultant
            && let Some(unit) = &req.unit
            && !s.record.unit.is_empty()
            && *unit != s.record.unit
        {
            return invalid("unit: the meeting's own care unit (or none), except for a consultant");
        }
        (req.unit.unwrap_or_else(|| s.record.unit.clone()), expires)
    };
    let claims = Claims {
        sub: req.sub,
        name: req.name,
        role: req.role,
        hsa: req.hsa,
        unit: Some(unit),
        companion_of: req.companion_of,
        ..link_claims(&state, &id, expires)
    };
    let event = AuditEvent {
        meeting: Some(id.clone()),
        subject: Some(claims.sub.clone()),
        role: Some(claims.role.clone()),
        hsa: claims.hsa.clone(),
        unit: claims.unit.clone(),
        ..called(&client, "token_minted")
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
        "url": link_url(&state, &id, &token),
        "expires_at": expires.to_string(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_booking_is_within_two_years_at_most_a_day_long_and_not_over() {
        let now: Timestamp = "2030-05-17T12:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let ok = |start: &str, end: &str| bookable_window(at(start), at(end), now);
        assert_eq!(ok("2030-05-17T12:30:00Z", "2030-05-17T13:00:00Z"), Ok(()));
        // Begun a little before now (booked as it starts): fine.
        assert_eq!(ok("2030-05-17T11:55:00Z", "2030-05-17T12:30:00Z"), Ok(()));
        assert_eq!(ok("2032-05-17T08:00:00Z", "2032-05-17T16:00:00Z"), Ok(()));
        for (start, end, field) in [
            (
                "2030-05-17T13:00:00Z",
                "2030-05-17T12:30:00Z",
                "end: must be after",
            ),
            (
                "2030-05-17T10:00:00Z",
                "2030-05-17T11:00:00Z",
                "end: in the past",
            ),
            (
                "2032-06-17T08:00:00Z",
                "2032-06-17T09:00:00Z",
                "start: at most two years",
            ),
            (
                "2030-05-18T08:00:00Z",
                "2030-05-19T08:00:01Z",
                "end: at most 24 hours",
            ),
            // The end of time: refused, not a panic at the next save.
            (
                "9999-12-29T00:00:00Z",
                "9999-12-30T21:45:00Z",
                "start: at most two years",
            ),
        ] {
            let refused = ok(start, end).unwrap_err();
            assert!(refused.starts_with(field), "{start}–{end}: {refused}");
        }
    }

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
        // Every route naming a meeting may refuse its id (422); minting may fail (500).
        for (p, route) in paths.iter().filter(|(p, _)| p.contains("{id}")) {
            let op = route
                .as_object()
                .unwrap()
                .values()
                .find(|v| v.get("responses").is_some());
            let responses = &op.unwrap()["responses"];
            assert!(responses.get("422").is_some(), "{p}: no 422");
        }
        let tokens = &paths["/api/v1/meetings/{id}/tokens"]["post"]["responses"];
        assert!(tokens.get("500").is_some(), "minting_failed not listed");
    }
}
