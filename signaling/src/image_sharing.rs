//! Sharing a photo in a meeting (a rash, a wound, a medication label): an admitted participant
//! posts it, the others admitted are told and fetch it. Both requests carry the person's join
//! token (`Authorization: Bearer`), never in the URL. The photo is checked for metadata
//! (shared_image.rs), held in memory only (image_store.rs), and the sharing is audited with
//! the sender and the recipients — never the picture.

use crate::app_state::AppState;
use crate::audit::{audit, audit_unavailable, session_event};
use crate::image_store::{MAX_IMAGE_BYTES, StoreRefusal};
use crate::session_token::Session;
use crate::shared_image::inspect;
use crate::token_refusals::{RefusalVerdict, TokenRefusals};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sfu_proto::ParticipantId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/images",
            post(share).layer(DefaultBodyLimit::max(MAX_IMAGE_BYTES)),
        )
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
    peer: SocketAddr,
) -> Result<Session, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match state.verifier.verify(token) {
        Ok(s) => Ok(s),
        Err(e) => {
            let code = e.code();
            let refused = error(StatusCode::UNAUTHORIZED, code, e.to_string());
            match state.refusals.refused(peer.ip(), code, Instant::now()) {
                RefusalVerdict::Record => {
                    if audit(state, TokenRefusals::first_line(peer.ip(), code))
                        .await
                        .is_err()
                    {
                        return Err(audit_unavailable());
                    }
                    Err(refused)
                }
                RefusalVerdict::Counted => Err(refused),
                RefusalVerdict::Limited => Err(error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_refusals",
                    "too many refused tokens from this address",
                )),
            }
        }
    }
}

/// `POST /images` (`X-Participant: <the sender's participant id>`, the photo as the body).
async fn share(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let session = match session(&state, &headers, peer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "image_too_large",
                format!(
                    "a photo may be {} MB at most",
                    MAX_IMAGE_BYTES / (1024 * 1024)
                ),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "image_unreadable", e.body_text()),
    };
    let sender = ParticipantId(
        headers
            .get("x-participant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
    );
    let room = match state.meetings.room_of(&sender) {
        Some(r) if r.id == session.claims.mtg => r,
        _ => {
            return error(
                StatusCode::FORBIDDEN,
                "not_in_meeting",
                "X-Participant names no connection of this token's meeting",
            );
        }
    };
    let kind = match inspect(&body) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string()),
    };
    let recipients = match room.lock().image_recipients(&sender, &session.claims.sub) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::FORBIDDEN, e.code(), e.to_string()),
    };
    // Recorded before anyone is told: who shared with whom, never the picture.
    let mut event = session_event("image_shared", &session, Some(&sender));
    event.recipients = Some(recipients.iter().map(|(_, sub)| sub.clone()).collect());
    if audit(&state, event).await.is_err() {
        return audit_unavailable();
    }
    let size = body.len();
    let subjects = recipients.iter().map(|(_, s)| s.clone()).collect();
    let id = match state.images.put(
        &room.id,
        kind.mime(),
        body.to_vec(),
        subjects,
        Instant::now(),
    ) {
        Ok(id) => id,
        Err(StoreRefusal::Full) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "images_busy",
                StoreRefusal::Full.to_string(),
            );
        }
    };
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

/// `GET /images/<id>`: the photo, for one of its recipients.
async fn fetch(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match session(&state, &headers, peer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match state.images.get(
        &id,
        &session.claims.mtg,
        &session.claims.sub,
        Instant::now(),
    ) {
        Some((mime, bytes)) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "no-store"),
                (header::CONTENT_DISPOSITION, "inline"),
            ],
            bytes.as_ref().clone(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "image_unknown",
            "no such photo for you (expired, or shared with others)",
        ),
    }
}
