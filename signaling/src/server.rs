//! HTTP + WebSocket service: the web client, the join check and WebSocket, the meetings API,
//! and health/metrics.

use crate::app_state::AppState;
use crate::audit::{audit, audit_unavailable, session_event};
use crate::audit_log::AuditEvent;
use crate::client_address::ClientAddress;
use crate::connection::{MAX_MESSAGE_BYTES, Start, connection};
use crate::join_refusal::JoinRefusal;
use crate::meeting_room::MeetingRoom;
use crate::replica_relay::Routed;
use crate::session_token::Session;
use crate::token_refusals::{RefusalVerdict, TokenRefusals};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sfu_proto::ParticipantId;
use std::net::IpAddr;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("../web/index.html");
const CLIENT_JS: &str = include_str!("../web/client.js");
const TEXTS_JS: &str = include_str!("../web/texts.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// Everything on one listener (the single-node default).
pub fn router(state: Arc<AppState>) -> Router {
    public_routes(&state)
        .merge(internal_routes(&state))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// What browsers need: the web client, the join check and WebSocket, photos, health.
pub fn public_router(state: Arc<AppState>) -> Router {
    public_routes(&state)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// What only the region's own systems reach (`http.internal_listen`): the meetings API,
/// metrics and health.
pub fn internal_router(state: Arc<AppState>) -> Router {
    internal_routes(&state)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

fn public_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/m/{meeting}", get(index))
        .route(
            "/client.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], CLIENT_JS) }),
        )
        .route(
            "/texts.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], TEXTS_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE_CSS) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/join",
            post(join_check).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                body_within,
            )),
        )
        .route("/ws", get(ws_upgrade))
        .merge(
            crate::image_sharing::routes().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::image_sharing::to_owner,
            )),
        )
}

fn internal_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // What another replica relays here (its secret checked): joins of meetings this one
        // owns.
        .route(
            "/relay/join",
            post(join_check).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                body_within,
            )),
        )
        .route("/relay/ws", get(ws_upgrade))
        .nest(
            "/relay",
            crate::image_sharing::routes().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                only_replicas,
            )),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(
            crate::meetings_api::routes()
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::meetings_api::to_owner,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    body_within,
                )),
        )
}

/// Largest body of the routes that read a small one (a join check, a meetings API call).
const SMALL_BODY_BYTES: usize = 1024 * 1024;

/// For routes that read a small body (photos have a time of their own, `image_sharing`): the
/// body is read whole within `AppState::body_timeout`, else the request is answered 408 and
/// the connection closed — not drained for as long as the client trickles.
async fn body_within(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, SMALL_BODY_BYTES);
    let (status, code, reason) = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(bytes)) => {
            let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            return next.run(request).await;
        }
        // (The code the meetings API's forwarding to another replica gives it too.)
        Ok(Err(_)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is over 1 MiB",
        ),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        ),
    };
    (
        status,
        [(header::CONNECTION, "close")],
        Json(json!({"error": code, "reason": reason})),
    )
        .into_response()
}

/// What every response tells the browser: load scripts, styles and connections from this
/// origin only, never be framed (clickjacking an "admit" button), send no Referer (the join
/// link carries the token), use camera, microphone and screen capture here only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self'; \
    font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";
const PERMISSIONS_POLICY: &str = "camera=(self), microphone=(self), display-capture=(self), \
    fullscreen=(self), autoplay=(self), geolocation=(), payment=(), usb=()";

async fn security_headers(mut response: Response) -> Response {
    use axum::http::HeaderValue;
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::HeaderName::from_static("permissions-policy"),
            PERMISSIONS_POLICY,
        ),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        // Browsers keep to https once told over https (and ignore it over plain http): a
        // patient's next link typed or followed as http:// is not sent in the clear.
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // An older link carries its token in the query: keep it out of Referer headers.
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

#[derive(Deserialize, Serialize)]
struct JoinQuery {
    #[serde(default)]
    token: String,
    /// The meeting named by the link (`/m/<meeting>`); the token must be for it.
    #[serde(default)]
    meeting: Option<String>,
    /// A WebSocket only: the key of the `resume_key` message of a connection that dropped, to
    /// continue as that participant.
    #[serde(default)]
    resume: Option<String>,
}

fn refusal(r: &JoinRefusal) -> Response {
    let status = StatusCode::from_u16(r.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    tracing::info!(code = r.code(), "join refused");
    let mut response = (status, Json(r.body())).into_response();
    if let JoinRefusal::TooManyJoins = r {
        // (A connection's worth comes back every 2 s.)
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    }
    response
}

/// Where a join goes when replicas share meetings.
enum Route {
    /// This process runs the meeting (or there are no replicas): served here.
    Here,
    /// Another replica owns the meeting: relayed to its internal URL.
    Owner(Arc<crate::replica_relay::Replicas>, String),
}

impl AppState {
    /// Which replica runs the meeting a join's token names. A token that does not verify is
    /// refused here, as everywhere. A request relayed to this replica that it does not own
    /// (the lease moved on the way) is refused for a retry rather than relayed again.
    /// `checking`: a join check (`POST /join`), held to the person's budget of them here,
    /// before the meeting store is asked who runs the meeting.
    fn route(
        &self,
        q: &JoinQuery,
        headers: &HeaderMap,
        source: IpAddr,
        checking: bool,
    ) -> Result<Route, Box<Response>> {
        let Some(replicas) = &self.replicas else {
            return Ok(Route::Here);
        };
        // A source over its refusal budget gets few signature checks (token_refusals.rs): one
        // past them is answered here, counted once (not handed on, where a check freed
        // meanwhile could admit it on a replica that does not run the meeting).
        if !self.refusals.may_check(source, std::time::Instant::now()) {
            return Err(Box::new(too_many_refusals(self.refusals.interval())));
        }
        let Ok(session) = self.verifier.verify(&q.token) else {
            return Ok(Route::Here);
        };
        if checking
            && !self.join_pace.check(
                &session.claims.sub,
                &session.claims.mtg,
                std::time::Instant::now(),
            )
        {
            return Err(Box::new(refusal(&JoinRefusal::TooManyJoins)));
        }
        let meeting = session.claims.mtg;
        if q.meeting
            .as_ref()
            .is_some_and(|m| !m.is_empty() && *m != meeting)
        {
            return Ok(Route::Here);
        }
        match replicas.route(&self.meetings, &meeting, self.sfu.as_ref(), headers, || {
            refusal(&JoinRefusal::StoreUnavailable)
        }) {
            Routed::Here => Ok(Route::Here),
            Routed::Owner(owner) => Ok(Route::Owner(replicas.clone(), owner)),
            Routed::Refused(r) => Err(Box::new(r)),
        }
    }

    /// Every check a join passes: the token, the meeting it names, the meeting's window and
    /// state. Refusals are audited; an access that cannot be recorded is refused.
    /// Whether `q` may join; `connecting`: a WebSocket, which spends one of the person's
    /// connections (`join_pace.rs`), rather than the join check.
    async fn admission(
        &self,
        q: &JoinQuery,
        source: IpAddr,
        connecting: bool,
    ) -> Result<(Session, Arc<MeetingRoom>), Response> {
        let now = Timestamp::now();
        // A source over its refusal budget gets few signature checks (token_refusals.rs).
        if !self.refusals.may_check(source, std::time::Instant::now()) {
            return Err(too_many_refusals(self.refusals.interval()));
        }
        let session = match self.verifier.verify(&q.token) {
            Ok(s) => s,
            Err(e) => {
                // Nothing from an unverified token is trusted enough to log but the reason
                // and where it came from; a source's refusals are summarised, not each
                // written (see token_refusals.rs).
                let code = e.code();
                return Err(
                    match self
                        .refusals
                        .refused(source, code, std::time::Instant::now())
                    {
                        RefusalVerdict::Record => {
                            self.refuse(
                                TokenRefusals::first_line(source, code),
                                &JoinRefusal::Token(e),
                            )
                            .await
                        }
                        RefusalVerdict::Counted => refusal(&JoinRefusal::Token(e)),
                        RefusalVerdict::Limited => too_many_refusals(self.refusals.interval()),
                    },
                );
            }
        };
        let entered = || match &q.meeting {
            Some(m) if !m.is_empty() && *m != session.claims.mtg => {
                Err(JoinRefusal::MeetingMismatch)
            }
            _ => self.meetings.room_for(&session, now).and_then(|room| {
                room.lock()
                    .check_entry(&session, now, self.meetings.policy())
                    .map(|()| room.clone())
            }),
        };
        let mut checked = entered();
        if let Some(replicas) = &self.replicas
            && let Ok(room) = &checked
            && !self.meetings.runs(&room.id)
        {
            // With replicas a join is served only where the lease of the meeting it enters is
            // held: a private visit a queue's link leads to, whose lease went when it emptied
            // (another replica's copy of it, loaded at its start, may lack a denial or an
            // end), or a meeting whose token verified here only after routing found it not
            // yet valid. Taken here if nobody holds it — the meeting read again from the
            // store — else the client tries again and is routed to its owner.
            use crate::meeting_lease::Owner;
            let id = room.id.clone();
            let owner = tokio::task::block_in_place(|| {
                self.meetings
                    .owner_of(&replicas.leases, &id, self.sfu.as_ref())
            });
            checked = match owner {
                Ok(Owner::Here { .. }) => entered(),
                Ok(Owner::Elsewhere(_)) => return Err(crate::replica_relay::owner_unreachable()),
                Err(e) => {
                    tracing::warn!(error = %e, "reading a meeting's lease failed");
                    Err(JoinRefusal::StoreUnavailable)
                }
            };
            if checked
                .as_ref()
                .is_ok_and(|room| !self.meetings.runs(&room.id))
            {
                return Err(crate::replica_relay::owner_unreachable());
            }
        }
        let c = &session.claims;
        let checked = checked.and_then(|room| {
            let now = std::time::Instant::now();
            // (With replicas a join check was held to its budget where it arrived.)
            let check_paced =
                connecting || self.replicas.is_some() || self.join_pace.check(&c.sub, &c.mtg, now);
            (check_paced && self.join_pace.admits(&c.sub, &c.mtg, connecting, now))
                .then_some(room)
                .ok_or(JoinRefusal::TooManyJoins)
        });
        match checked {
            Ok(room) => Ok((session, room)),
            // Under a budget per subject: a valid token asked again and again for a meeting
            // it may not enter (another meeting, denied, not open yet) would otherwise write an
            // fsynced line each time. The first of an interval is written, the rest counted in
            // the subject's summary line, and past the budget, 429.
            // (The store being out is the service's fault, not the patient's: not counted.)
            Err(r @ JoinRefusal::StoreUnavailable) => {
                let mut event = session_event("join_refused", &session, None);
                event.code = Some(r.code().into());
                Err(self.refuse(event, &r).await)
            }
            Err(r) => {
                let what = crate::token_refusals::SubjectRefusal::Join;
                match crate::audit::subject_refused(self, what, &session, r.code(), None).await {
                    Err(unrecorded) => Err(unrecorded),
                    Ok(RefusalVerdict::Limited) => Err(too_many_refusals(self.refusals.interval())),
                    Ok(_) => Err(refusal(&r)),
                }
            }
        }
    }

    /// A resume key that resumed nothing: if it is another person's (a session held or
    /// carried for another subject), the attempt on their session is on record — the first
    /// of an interval at once, the rest in the subject's summary line (`resume_refused`) —
    /// and the connection goes on as a new participant of its own token.
    async fn another_ones_key(&self, session: &Session, key: &str) -> Result<(), Response> {
        let sub = &session.claims.sub;
        let Some(target) = self
            .resume
            .held_by_another(key, sub)
            .or_else(|| self.meetings.carried_for_another(key, sub))
        else {
            return Ok(());
        };
        // (Past the budget, counted all the same; the connection goes on as itself.)
        crate::audit::subject_refused(
            self,
            crate::token_refusals::SubjectRefusal::Resume,
            session,
            "resume_key_of_another",
            Some(target.to_string()),
        )
        .await
        .map(|_| ())
    }

    async fn refuse(&self, event: AuditEvent, r: &JoinRefusal) -> Response {
        if audit(self, event).await.is_err() {
            return audit_unavailable();
        }
        refusal(r)
    }
}

/// A source past its budget of refused tokens: answered before anything is verified further
/// or written.
fn too_many_refusals(retry_after: std::time::Duration) -> Response {
    tracing::info!(code = "too_many_refusals", "join refused");
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(
            header::RETRY_AFTER,
            retry_after.as_secs().max(1).to_string(),
        )],
        Json(json!({
            "error": "too_many_refusals",
            "reason": "too many refused join attempts from this address; wait a minute",
            "message": "För många försök att ansluta härifrån. Vänta en minut och försök igen.",
        })),
    )
        .into_response()
}

/// Tells a client, before it asks for camera and microphone, whether it may join and as
/// what: the same checks as the WebSocket (a browser cannot read a refused upgrade's body).
async fn join_check(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Result<Json<JoinQuery>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(refused) = unrelayed(&state, &uri, &headers) {
        return refused;
    }
    if !uri.path().starts_with("/relay/")
        && crate::request_site::is_cross_site(&headers, state.public_url.as_deref())
    {
        return crate::request_site::refused();
    }
    // (A body that is not the check's JSON gets a JSON answer too, naming what is wrong.)
    let Json(q) = match body {
        Ok(b) => b,
        Err(e) => {
            return (
                e.status(),
                Json(json!({"error": "bad_request", "reason": e.body_text()})),
            )
                .into_response();
        }
    };
    match state.route(&q, &headers, source, true) {
        Ok(Route::Here) => {}
        Ok(Route::Owner(replicas, owner)) => {
            let body = serde_json::to_vec(&q).unwrap_or_default();
            let mut headers = headers;
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            return replicas
                .forward(
                    &owner,
                    axum::http::Method::POST,
                    "/relay/join",
                    &headers,
                    body.into(),
                    source,
                )
                .await;
        }
        Err(refused) => return *refused,
    }
    match state.admission(&q, source, false).await {
        Ok((session, room)) => {
            let s = room.lock();
            let policy = state.meetings.policy();
            Json(json!({
                "meeting": s.record.id,
                "kind": s.record.kind,
                "name": session.claims.name,
                "role": session.role,
                "starts_at": s.record.start.to_string(),
                "status": s.record.status(Timestamp::now(), policy),
            }))
            .into_response()
        }
        Err(response) => response,
    }
}

/// A `/relay/…` request without the replicas' secret: refused (only replicas relay).
fn unrelayed(state: &AppState, uri: &axum::http::Uri, headers: &HeaderMap) -> Option<Response> {
    if !uri.path().starts_with("/relay/") {
        return None;
    }
    match &state.replicas {
        Some(r) if r.is_relayed(headers) => None,
        _ => Some(not_a_replica()),
    }
}

fn not_a_replica() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"error": "not_a_replica", "reason": "only signaling replicas relay here"})),
    )
        .into_response()
}

/// Guards what only replicas may call (`/relay/…`).
async fn only_replicas(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // (Nested routes see their path without the prefix: the secret is checked whatever it.)
    match &state.replicas {
        Some(r) if r.is_relayed(request.headers()) => next.run(request).await,
        _ => not_a_replica(),
    }
}

async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    ClientAddress(source): ClientAddress,
    headers: HeaderMap,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
    Query(q): Query<JoinQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refused) = unrelayed(&state, &uri, &headers) {
        return refused;
    }
    // (A replica's relay was judged where the client came in.)
    if !uri.path().starts_with("/relay/")
        && crate::request_site::is_cross_site(&headers, state.public_url.as_deref())
    {
        return crate::request_site::refused();
    }
    let q = match with_offered_credentials(q, &headers) {
        Ok(q) => q,
        Err(refused) => return *refused,
    };
    // (Selected only when offered: a client with its token in the query offers none.)
    let ws = ws.protocols([crate::socket_credentials::PROTOCOL]);
    match state.route(&q, &headers, source, false) {
        Ok(Route::Here) => {}
        Ok(Route::Owner(replicas, owner)) => {
            // The credentials go to the owner in its handshake's Sec-WebSocket-Protocol, as
            // the browser sends them, whichever way they came: a request line is written
            // by whatever logs the cluster's own traffic (a mesh's sidecar, an internal
            // balancer), and a token or resume key there lets its reader into the visit.
            let (query, credentials) = relayed_request(raw.as_deref(), &q);
            return replicas
                .relay_websocket(
                    &owner,
                    query.as_deref(),
                    credentials.as_deref(),
                    source,
                    ws,
                    state.ws_idle,
                )
                .await;
        }
        Err(refused) => return *refused,
    }
    let (session, room) = match state.admission(&q, source, true).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    // Resumed: recorded once the participant is in hand (a still open connection first lets go).
    let resumable = q.resume.as_deref().and_then(|key| {
        state
            .resume
            .take(key, &session.claims.sub, &session.claims.mtg)
    });
    if let Some(r) = resumable {
        let key = q.resume.as_deref().unwrap_or_default();
        let pending =
            crate::pending_resume::PendingResume::new(state.clone(), &session, &room, key, r);
        return ws
            .max_message_size(MAX_MESSAGE_BYTES)
            .max_frame_size(crate::connection::MAX_FRAME_BYTES)
            .on_upgrade(move |socket| {
                let r = pending.into_resumable();
                connection(state, session, room, Start::Resume(r), socket)
            });
    }
    // Back after a restart of this service: the same participant, whose media session the
    // SFU may have kept running meanwhile.
    let carried = q.resume.as_deref().and_then(|key| {
        state.meetings.take_carried(
            key,
            &session.claims.sub,
            &session.claims.mtg,
            &room.id,
            Timestamp::now(),
        )
    });
    if carried.is_none()
        && let Some(key) = q.resume.as_deref()
        && let Err(refused) = state.another_ones_key(&session, key).await
    {
        return refused;
    }
    // (Put back if the connection never starts.)
    let carried = carried
        .map(|c| crate::pending_carry::PendingCarry::new(state.meetings.clone(), &room.id, c));
    let id = carried
        .as_ref()
        .map_or_else(|| new_participant_id(rand::random()), |c| c.participant());
    // (Its `leave` is written if the connection never enters the meeting.)
    let Ok(join) = crate::pending_join::record_join(&state, &session, &room.id, &id).await else {
        return audit_unavailable();
    };
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(crate::connection::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            let start = match carried {
                Some(c) => Start::Carried(c.into_carried(), join),
                None => Start::Join(id, join),
            };
            connection(state, session, room, start, socket)
        })
}

/// `q` with the token and resume key the handshake's `Sec-WebSocket-Protocol` offers
/// (`socket_credentials.rs`); one given both there and in the query is refused, as are
/// credentials offered without the protocol the server answers with.
fn with_offered_credentials(
    mut q: JoinQuery,
    headers: &HeaderMap,
) -> Result<JoinQuery, Box<Response>> {
    let bad = |reason: String| {
        tracing::info!(code = "bad_request", "join refused: {reason}");
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": "bad_request",
                    "reason": reason,
                    "message": "Anslutningen kunde inte öppnas. Ladda om sidan.",
                })),
            )
                .into_response(),
        )
    };
    let offered = crate::socket_credentials::SocketCredentials::offered(headers)
        .map_err(|e| bad(e.to_string()))?;
    if let Some(token) = offered.token {
        if !q.token.is_empty() {
            return Err(bad(
                "the token is given both in the query and in Sec-WebSocket-Protocol".into(),
            ));
        }
        q.token = token;
    }
    if let Some(key) = offered.resume {
        if q.resume.is_some() {
            return Err(bad(
                "the resume key is given both in the query and in Sec-WebSocket-Protocol".into(),
            ));
        }
        q.resume = Some(key);
    }
    Ok(q)
}

/// What a join WebSocket is relayed to its meeting's owner with: the client's query without
/// its credentials, and the credentials (`q`'s: from the query or the client's header) as a
/// `Sec-WebSocket-Protocol` value. A credential that cannot be one (a comma, a space: no token
/// or key this service makes) stays in the query, for the owner to refuse as it is.
fn relayed_request(raw: Option<&str>, q: &JoinQuery) -> (Option<String>, Option<String>) {
    use crate::socket_credentials::{Credential, PROTOCOL, as_offered};
    let token = (!q.token.is_empty()).then_some(q.token.as_str());
    let (token_offered, resume_offered) = (
        token.and_then(|t| as_offered(Credential::Token, t)),
        q.resume
            .as_deref()
            .and_then(|k| as_offered(Credential::Resume, k)),
    );
    let mut parts: Vec<String> = raw
        .unwrap_or_default()
        .split('&')
        .filter(|p| {
            let key = p.split('=').next().unwrap_or_default();
            !p.is_empty() && key != "token" && key != "resume"
        })
        .map(str::to_owned)
        .collect();
    if let (Some(t), None) = (token, &token_offered) {
        parts.push(format!("token={}", query_value(t)));
    }
    if let (Some(k), None) = (q.resume.as_deref(), &resume_offered) {
        parts.push(format!("resume={}", query_value(k)));
    }
    let offered: Vec<String> = [token_offered, resume_offered]
        .into_iter()
        .flatten()
        .collect();
    let header = (!offered.is_empty()).then(|| {
        std::iter::once(PROTOCOL.to_owned())
            .chain(offered)
            .collect::<Vec<_>>()
            .join(", ")
    });
    ((!parts.is_empty()).then(|| parts.join("&")), header)
}

/// `value` encoded for a query (a subprotocol may hold `&`, `#`, `%` or `+`, which would
/// change the query's meaning).
fn query_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

pub(crate) fn new_participant_id(random: u64) -> ParticipantId {
    ParticipantId(crate::generated_id::generated_id("p", random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_reach_the_owner_in_its_handshake_header_never_in_its_url() {
        let join = |raw: &str, headers: &HeaderMap| {
            let uri: axum::http::Uri = format!("/ws?{raw}").parse().unwrap();
            let Query(q) = Query::<JoinQuery>::try_from_uri(&uri).unwrap();
            let q = with_offered_credentials(q, headers).unwrap();
            relayed_request(Some(raw), &q)
        };
        // Offered in the header, as the web client does.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "hc.v1, hc.token.a.b-c_d, hc.resume.00ff".parse().unwrap(),
        );
        let (query, offered) = join("token=&meeting=m1", &headers);
        assert_eq!(query.as_deref(), Some("meeting=m1"));
        assert_eq!(
            offered.as_deref(),
            Some("hc.v1, hc.token.a.b-c_d, hc.resume.00ff")
        );
        // In the query (an older client): moved to the header all the same.
        let (query, offered) = join("token=e.f.g&resume=beef&meeting=m1", &HeaderMap::new());
        assert_eq!(query.as_deref(), Some("meeting=m1"));
        assert_eq!(
            offered.as_deref(),
            Some("hc.v1, hc.token.e.f.g, hc.resume.beef")
        );
        // What cannot be a subprotocol stays in the query, one value, for the owner to refuse.
        let (query, offered) = join("token=a%2Cb%26meeting%3Dx", &HeaderMap::new());
        assert_eq!(query.as_deref(), Some("token=a%2Cb%26meeting%3Dx"));
        assert_eq!(offered, None);
        let (query, offered) = join("meeting=m1", &HeaderMap::new());
        assert_eq!((query.as_deref(), offered), (Some("meeting=m1"), None));
    }

    #[test]
    fn participant_ids_never_look_like_identity_numbers() {
        let pnr = regex_lite::Regex::new(r"(19|20)\d{6}[-+]?\d{4}").unwrap();
        // All-digit hexadecimal once read as 199001011234; the same bits now read as letters.
        let id = new_participant_id(0x1990_0101_1234);
        assert!(!pnr.is_match(&id.0), "{}", id.0);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u64 {
            let id = new_participant_id(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert!(!pnr.is_match(&id.0) && !id.0[2..].contains(['0', '1', '8', '9']));
            assert_eq!(id.0.len(), 14);
            seen.insert(id.0);
        }
        assert_eq!(seen.len(), 10_000, "distinct bits give distinct ids");
    }
}
