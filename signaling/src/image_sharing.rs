//! Sharing a photo in a meeting (a rash, a wound, a medication label): an admitted participant
//! posts it, the others admitted are told and fetch it. Both requests carry the person's join
//! token (`Authorization: Bearer`), never in the URL. The photo is checked for metadata
//! (shared_image.rs), held in memory only (image_store.rs), and the sharing is audited with
//! the sender and the recipients — never the picture.

use crate::app_state::AppState;
use crate::audit::{audit, audit_unavailable, session_event};
use crate::bearer::bearer;
use crate::client_address::ClientAddress;
use crate::image_store::{ImageOrigin, MAX_IMAGE_BYTES, StoreRefusal};
use crate::replica_relay::{RelayedBody, Routed};
use crate::session_token::Session;
use crate::shared_image::inspect;
use crate::token_refusals::{RefusalVerdict, SubjectRefusal, TokenRefusals};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sfu_proto::ParticipantId;
use std::sync::Arc;
use std::time::Instant;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        // The body's limit is `to_bytes`'s in `share` (it reads the raw request).
        .route("/images", post(share))
        .route("/images/{id}", get(fetch))
}

fn error(status: StatusCode, code: &str, reason: impl Into<String>) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": code, "reason": reason.into()})),
    )
        .into_response()
}

/// The session of the request's join token; a bad token is refused (and audited per source,
/// like a refused join).
async fn session(
    state: &AppState,
    headers: &HeaderMap,
    source: std::net::IpAddr,
) -> Result<Session, Response> {
    // Another site's page (an <img> or a no-cors POST, which needs no preflight) is refused
    // before its missing token counts against the address it shares with patients.
    if crate::request_site::is_cross_site(headers, state.public_url.as_deref()) {
        return Err(crate::request_site::refused());
    }
    // A source over its refusal budget gets few signature checks (token_refusals.rs), here as
    // at a join.
    if !state.refusals.may_check(source, Instant::now()) {
        return Err(too_many_refusals(&state.refusals));
    }
    match state.verifier.verify(bearer(headers)) {
        Ok(s) => Ok(s),
        Err(e) => {
            let code = e.code();
            let refused = error(StatusCode::UNAUTHORIZED, code, e.to_string());
            match state.refusals.refused(source, code, Instant::now()) {
                RefusalVerdict::Record => {
                    if audit(state, TokenRefusals::first_line(source, code))
                        .await
                        .is_err()
                    {
                        return Err(audit_unavailable());
                    }
                    Err(refused)
                }
                RefusalVerdict::Counted => Err(refused),
                RefusalVerdict::Limited => Err(too_many_refusals(&state.refusals)),
            }
        }
    }
}

fn too_many_refusals(refusals: &TokenRefusals) -> Response {
    too_many(refusals, "too many refused tokens from this address")
}

fn too_many(refusals: &TokenRefusals, reason: &str) -> Response {
    let mut limited = error(StatusCode::TOO_MANY_REQUESTS, "too_many_refusals", reason);
    // As a refused join says: when the budget has refilled.
    if let Ok(after) = refusals.interval().as_secs().max(1).to_string().parse() {
        limited.headers_mut().insert(header::RETRY_AFTER, after);
    }
    limited
}

/// A valid token refused a photo (its connection not in the meeting, still waiting, a photo
/// not theirs or no longer there): an access refused, so on record — the subject's first of
/// an interval at once (`image_refused`), the rest in their summary line, and past the budget
/// 429, as a refused join is.
async fn refused(
    state: &AppState,
    session: &Session,
    code: &'static str,
    target: Option<String>,
    refusal: Response,
) -> Response {
    match crate::audit::subject_refused(state, SubjectRefusal::Image, session, code, target).await {
        Err(unrecorded) => unrecorded,
        Ok(RefusalVerdict::Limited) => too_many(&state.refusals, "too many refused photo requests"),
        Ok(_) => refusal,
    }
}

/// Replicas: a photo goes to, and is fetched from, the replica running the meeting of the
/// request's token (photos live in that replica's memory only).
pub async fn to_owner(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(replicas) = state.replicas.clone() else {
        return next.run(request).await;
    };
    // Another site's page is refused before it spends a check of the address it shares with
    // patients (as `session` does).
    if crate::request_site::is_cross_site(request.headers(), state.public_url.as_deref()) {
        return crate::request_site::refused();
    }
    // A token that does not verify is refused here, as on any replica — and a source past its
    // refusal budget's checks is answered here, counted once.
    if !state.refusals.may_check(source, Instant::now()) {
        return too_many_refusals(&state.refusals);
    }
    let claims = state
        .verifier
        .verify(bearer(request.headers()))
        .ok()
        .map(|s| (s.claims.mtg, s.claims.sub));
    let Some((meeting, sub)) = claims else {
        return next.run(request).await;
    };
    // A photo sent (not one fetched) is an upload.
    let uploader =
        (request.method() == axum::http::Method::POST).then(|| format!("{sub}\u{0}{meeting}"));
    let routed = replicas.route(
        &state.meetings,
        &meeting,
        state.sfu.as_ref(),
        request.headers(),
        || {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the meeting store cannot be reached; try again",
            )
        },
    );
    match routed {
        Routed::Here => next.run(request).await,
        // The owner serves relayed photos on its internal listener, under /relay.
        Routed::Owner(owner) => {
            replicas
                .forward_request(
                    &owner,
                    request,
                    RelayedBody {
                        limit: MAX_IMAGE_BYTES + 64 * 1024,
                        too_large: "image_too_large",
                        too_slow: "image_too_slow",
                        uploader,
                    },
                    "/relay",
                    source,
                )
                .await
        }
        Routed::Refused(r) => r,
    }
}

/// Time a sender has to deliver a photo's body.
const UPLOAD_TIME: std::time::Duration = std::time::Duration::from_secs(60);

fn store_refusal(e: StoreRefusal) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    error(status, e.code(), e.to_string())
}

/// `POST /images` (`X-Participant: <the sender's participant id>`, the photo as the body).
/// Everything about the sender is checked before the body is read.
async fn share(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let session = match session(&state, &headers, source).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // The connection named as the sender, as recorded: only an id this service could have
    // made (the header is the client's to fill).
    let named = headers
        .get("x-participant")
        .and_then(|v| v.to_str().ok())
        .map(|p| {
            if crate::generated_id::is_generated("p", p) {
                p.to_owned()
            } else {
                "(not a participant id)".to_owned()
            }
        });
    let not_in_meeting = || {
        refused(
            &state,
            &session,
            "not_in_meeting",
            named.clone(),
            error(
                StatusCode::FORBIDDEN,
                "not_in_meeting",
                "X-Participant names no connection of this token's subject and meeting",
            ),
        )
    };
    let sender = ParticipantId(
        headers
            .get("x-participant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
    );
    // The connection's room: the token's meeting, or the visit its drop-in queue led to.
    let Some(room) = state.meetings.room_of(&sender) else {
        return not_in_meeting().await;
    };
    let queue = room.lock().record.from_queue.clone();
    if room.id != session.claims.mtg && queue.as_deref() != Some(session.claims.mtg.as_str()) {
        return not_in_meeting().await;
    }
    let recipients = room.lock().image_recipients(&sender, &session.claims.sub);
    if let Err(e) = recipients {
        return match e {
            crate::meeting_room::RequestError::WaitingForAdmission => {
                let refusal = error(StatusCode::FORBIDDEN, e.code(), e.to_string());
                refused(&state, &session, e.code(), named.clone(), refusal).await
            }
            _ => not_in_meeting().await,
        };
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
            format!(
                "a photo may be {} MB at most",
                MAX_IMAGE_BYTES / (1024 * 1024)
            ),
        )
    };
    // What the request says it carries: too much is refused before anything is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if declared > MAX_IMAGE_BYTES {
        return too_large();
    }
    // One upload at a time per sender, a few at once in all (slow bodies hold memory), and
    // none that could not be kept: all decided before the body is read.
    let _slot =
        match state
            .images
            .begin_upload(&room.id, &session.claims.sub, declared, Instant::now())
        {
            Ok(slot) => slot,
            Err(e) => return store_refusal(e),
        };
    let body = match tokio::time::timeout(
        UPLOAD_TIME,
        axum::body::to_bytes(request.into_body(), MAX_IMAGE_BYTES),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "image_too_slow",
                "the photo did not arrive in time",
            );
        }
    };
    let kind = match inspect(&body) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string()),
    };
    // Who is admitted now (the read may have taken a while).
    let recipients = room.lock().image_recipients(&sender, &session.claims.sub);
    let recipients = match recipients {
        Ok(r) => r,
        Err(e) => {
            let refusal = error(StatusCode::FORBIDDEN, e.code(), e.to_string());
            return refused(&state, &session, e.code(), named.clone(), refusal).await;
        }
    };
    let size = body.len();
    let origin = ImageOrigin {
        meeting: room.id.clone(),
        queue,
        sender: session.claims.sub.clone(),
    };
    let subjects: Vec<String> = recipients.iter().map(|(_, s)| s.clone()).collect();
    let id = match state
        .images
        .put(origin, kind.mime(), body, subjects.clone(), Instant::now())
    {
        Ok(id) => id,
        Err(e) => return store_refusal(e),
    };
    // Recorded before anyone is told: who shared with whom, never the picture. A sharing
    // that cannot be recorded does not happen.
    let mut event = session_event("image_shared", &session, Some(&sender));
    event.meeting = Some(room.id.clone());
    event.recipients = Some(subjects);
    if audit(&state, event).await.is_err() {
        state.images.remove(&id);
        return audit_unavailable();
    }
    metrics::counter!("signaling_images_shared_total").increment(1);
    let (told, events) = state
        .meetings
        .with_room(&room, state.sfu.as_ref(), |s, fx| {
            s.announce_image(&sender, &id, kind.mime(), size, &recipients, fx)
        });
    let _ = crate::audit::audit_all(&state, events).await;
    (
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"image": id, "recipients": told})),
    )
        .into_response()
}

/// `GET /images/<id>`: the photo, for one of its recipients while they are admitted to the
/// meeting and it is open; each recipient's first fetch is audited (`image_viewed`).
async fn fetch(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match session(&state, &headers, source).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // The photo asked for, as recorded: only a photo this service holds (anything else is the
    // client's text, and may be anything — a personal identity number too).
    let asked = if state.images.holds(&id) {
        id.clone()
    } else {
        "(no such photo)".to_owned()
    };
    let unknown = || {
        refused(
            &state,
            &session,
            "image_unknown",
            Some(asked.clone()),
            error(
                StatusCode::NOT_FOUND,
                "image_unknown",
                "no such photo for you (expired, shared with others, or you are not in the meeting now)",
            ),
        )
    };
    let Some((meeting, mime, bytes)) = state.images.get(
        &id,
        &session.claims.mtg,
        &session.claims.sub,
        Instant::now(),
    ) else {
        return unknown().await;
    };
    let Some(room) = state.meetings.get(&meeting) else {
        return unknown().await;
    };
    let here = {
        let s = room.lock();
        let open = s
            .record
            .status(jiff::Timestamp::now(), state.meetings.policy())
            == crate::meeting::MeetingStatus::Open;
        open && s.admitted_subject(&session.claims.sub)
    };
    if !here {
        return unknown().await;
    }
    // A viewing is recorded once per person and photo: fetching it again (a reload, or a
    // flood of requests, even all at once) adds no line to the audit log, and no fetch is
    // answered before the line is written.
    let Some(viewing) = state.images.viewing(&id, &session.claims.sub) else {
        return unknown().await;
    };
    let mut recorded = viewing.lock().await;
    if !*recorded {
        let mut event = session_event("image_viewed", &session, None);
        event.meeting = Some(meeting);
        event.code = Some(id.clone());
        if audit(&state, event).await.is_err() {
            return audit_unavailable();
        }
        *recorded = true;
    }
    drop(recorded);
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_DISPOSITION, "inline"),
        ],
        bytes,
    )
        .into_response()
}
