//! HTTP + WebSocket service: the web client, the join WebSocket and health/metrics.

use crate::audit_log::{AuditEvent, AuditLog};
use crate::hub::{Hub, Member};
use crate::session_token::{Session, TokenError, TokenVerifier};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use sfu_proto::{Command, ParticipantId, Permissions, RoomId};
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("../web/index.html");
const CLIENT_JS: &str = include_str!("../web/client.js");
const STYLE_CSS: &str = include_str!("../web/style.css");
/// Shortest time between two media-session restarts of one connection.
const MIN_RESTART_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest client message: an SDP offer with many m-lines fits well within this.
const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// Where commands for the SFU go (embedded workers or a remote node).
pub trait SfuControl: Send + Sync + 'static {
    fn send(&self, command: Command);
}

impl SfuControl for sfu_server::SfuNode {
    fn send(&self, command: Command) {
        sfu_server::SfuNode::send(self, command)
    }
}

pub struct AppState {
    /// The PDL audit log; every join, refusal and leave is appended (and fsynced) first.
    pub audit: Option<Arc<AuditLog>>,
    /// Whether media can be served: true with embedded workers, or once a node connected.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub verifier: TokenVerifier,
    pub hub: Arc<Hub>,
    pub sfu: Arc<dyn SfuControl>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/client.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], CLIENT_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE_CSS) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws_upgrade))
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The token travels in the URL: keep it out of Referer headers.
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX_HTML,
    )
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if (state.ready)() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no SFU node connected").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(h) => h.render().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct WsQuery {
    #[serde(default)]
    token: String,
}

fn refusal(err: &TokenError) -> Response {
    let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    tracing::info!(code = err.code(), "join refused");
    (
        status,
        Json(json!({"error": err.code(), "reason": err.to_string()})),
    )
        .into_response()
}

async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let session = match state.verifier.verify(&q.token) {
        Ok(s) => s,
        Err(e) => {
            // Nothing from an unverified token is trusted enough to log but the reason.
            let event = AuditEvent {
                event: "token_refused".into(),
                code: Some(e.code().into()),
                ..Default::default()
            };
            if audit(&state, event).await.is_err() {
                return audit_unavailable();
            }
            return refusal(&e);
        }
    };
    let id = ParticipantId(format!("p-{:012x}", rand::random::<u64>() >> 16));
    if audit(&state, session_event("join", &session, &id))
        .await
        .is_err()
    {
        return audit_unavailable();
    }
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| connection(state, session, id, socket))
}

fn session_event(event: &str, session: &Session, id: &ParticipantId) -> AuditEvent {
    let c = &session.claims;
    AuditEvent {
        event: event.into(),
        meeting: Some(c.mtg.clone()),
        subject: Some(c.sub.clone()),
        role: Some(c.role.clone()),
        hsa: c.hsa.clone(),
        unit: c.unit.clone(),
        participant: Some(id.to_string()),
        ..Default::default()
    }
}

/// Appends to the audit log off the async threads (it fsyncs). Without a log configured,
/// nothing is recorded.
async fn audit(state: &AppState, event: AuditEvent) -> Result<(), ()> {
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

/// An access that cannot be recorded does not happen.
fn audit_unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "audit_unavailable", "reason": "the access could not be recorded; try again"})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    /// `restart`: the client's media session broke and this offer starts a new one.
    Offer {
        sdp: String,
        #[serde(default)]
        restart: bool,
    },
    Answer {
        sdp: String,
    },
    /// Trickled candidates are accepted and not needed: the SFU is ICE-lite and learns the
    /// client's address from its connectivity checks.
    Candidate {},
    Leave {},
    Ping {},
}

async fn connection(state: Arc<AppState>, session: Session, id: ParticipantId, socket: WebSocket) {
    let meeting = session.claims.mtg.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let others = state.hub.join(
        id.clone(),
        Member {
            meeting: meeting.clone(),
            name: session.claims.name.clone(),
            role: session.claims.role.clone(),
            tx: tx.clone(),
        },
    );
    tracing::info!(participant = %id, meeting = %meeting, role = %session.claims.role, "joined");
    let roster: Vec<_> = others
        .iter()
        .map(|(pid, m)| json!({"participant": pid, "name": m.name, "role": m.role}))
        .collect();
    let _ = tx.send(
        json!({"type": "welcome", "participant": id, "meeting": meeting, "name": session.claims.name,
               "role": session.claims.role, "participants": roster})
        .to_string(),
    );
    state.hub.broadcast(
        &meeting,
        Some(&id),
        &json!({"type": "participant_joined", "participant": id, "name": session.claims.name, "role": session.claims.role}),
    );

    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let mut joined_sfu = false;
    let mut last_restart = None;
    while let Some(Ok(msg)) = stream.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            Message::Binary(_) => {
                let _ = tx.send(json!({"type": "error", "code": "bad_message", "message": "binary messages are not used"}).to_string());
                continue;
            }
            _ => continue,
        };
        let parsed: Result<ClientMessage, _> = serde_json::from_str(&text);
        match parsed {
            Ok(ClientMessage::Offer { sdp, restart }) => {
                // Each restart adds m-lines to everyone else's session: a client that restarts
                // in a loop is slowed down, not followed.
                if restart
                    && joined_sfu
                    && last_restart
                        .is_some_and(|t: std::time::Instant| t.elapsed() < MIN_RESTART_INTERVAL)
                {
                    let _ = tx.send(
                        json!({"type": "error", "code": "restart_too_soon", "message": "wait a few seconds before reconnecting again"})
                            .to_string(),
                    );
                    continue;
                }
                if restart && joined_sfu {
                    last_restart = Some(std::time::Instant::now());
                    // A new media session under the same identity: the old one goes first.
                    state.sfu.send(Command::RemoveParticipant {
                        participant: id.clone(),
                    });
                    joined_sfu = false;
                }
                let command = if joined_sfu {
                    Command::Offer {
                        participant: id.clone(),
                        offer_sdp: sdp,
                    }
                } else {
                    joined_sfu = true;
                    Command::AddParticipant {
                        room: RoomId(meeting.clone()),
                        participant: id.clone(),
                        offer_sdp: sdp,
                        permissions: Permissions {
                            publish: true,
                            subscribe: true,
                        },
                    }
                };
                state.sfu.send(command);
            }
            Ok(ClientMessage::Answer { sdp }) => state.sfu.send(Command::Answer {
                participant: id.clone(),
                answer_sdp: sdp,
            }),
            Ok(ClientMessage::Candidate {}) => {}
            Ok(ClientMessage::Ping {}) => {
                let _ = tx.send(json!({"type": "pong"}).to_string());
            }
            Ok(ClientMessage::Leave {}) => break,
            Err(e) => {
                // Reported to this client only; nobody else is affected.
                let _ = tx.send(
                    json!({"type": "error", "code": "bad_message", "message": format!("unreadable message: {e}")})
                        .to_string(),
                );
            }
        }
    }

    state.hub.leave(&id);
    if joined_sfu {
        state.sfu.send(Command::RemoveParticipant {
            participant: id.clone(),
        });
    }
    state.hub.broadcast(
        &meeting,
        None,
        &json!({"type": "participant_left", "participant": id}),
    );
    let _ = audit(&state, session_event("leave", &session, &id)).await;
    tracing::info!(participant = %id, meeting = %meeting, "left");
    drop(tx);
    writer.abort();
}
