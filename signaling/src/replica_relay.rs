//! The hop between signaling replicas (ADR 5): a WebSocket, join check or meetings-API call
//! that lands on a replica not owning its meeting is carried to the owner's internal
//! listener, with the client's address and a secret every replica shares. The client cannot
//! tell: the owner's answer — a refusal with its status and body, or the WebSocket's frames
//! both ways — is passed back as it is.

use crate::meeting_lease::MeetingLeases;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_tungstenite::tungstenite;

/// The secret proving a request came from another replica.
pub const RELAY_HEADER: &str = "x-healthcare-relay";
/// The client's address as the replica it reached saw it.
pub const RELAYED_FOR_HEADER: &str = "x-healthcare-relayed-for";

/// Shortest replica secret accepted (it guards who may name a client's address).
pub const MIN_SECRET_LEN: usize = 32;

/// Largest message from the owner to a client the hop carries.
const MAX_DOWNSTREAM_BYTES: usize = 4 * 1024 * 1024;

/// Replicas sharing meetings: who owns which, and how to reach the others.
pub struct Replicas {
    pub leases: Arc<MeetingLeases>,
    secret: String,
    http: reqwest::Client,
    /// MiB of uploads (photos) being read for relaying, at most [`RELAYED_UPLOAD_MIB`]: bodies
    /// are read whole before the owner sees them, so without a bound a client holding many
    /// half-sent photos would hold as many megabytes here.
    relayed_uploads: Arc<tokio::sync::Semaphore>,
    /// Who is uploading through this replica now: one at a time each, as the owner takes
    /// them, so that one person cannot take the others' share.
    uploaders: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// MiB of uploads a replica reads for relaying at once (eight photos of 8 MB).
const RELAYED_UPLOAD_MIB: u32 = 64;

/// What a relayed request's body may be.
pub struct RelayedBody<'a> {
    /// Its most bytes (past it, 413 `too_large`).
    pub limit: usize,
    pub too_large: &'a str,
    /// The code of a 408 when it takes more than a minute.
    pub too_slow: &'a str,
    /// For an upload (a photo), whose (subject and meeting): uploads share a bounded amount of
    /// memory here, one at a time per uploader. Other bodies (the meetings API's) are small.
    pub uploader: Option<String>,
}

/// An uploader's place while its body is read.
struct UploadSlot {
    uploaders: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    who: String,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.uploaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.who);
    }
}
/// Time a client has to send a relayed request's body (as long as the owner gives an upload).
const RELAYED_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("leases", &self.leases)
            .finish_non_exhaustive()
    }
}

impl Replicas {
    pub fn new(leases: Arc<MeetingLeases>, secret: String) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(10))
            // Well within the owner's header timeout (1 s at the least), which closes an idle
            // kept-alive connection: a request is never sent on one being closed under it.
            .pool_idle_timeout(std::time::Duration::from_millis(500))
            .build()
            .unwrap_or_default();
        Self {
            leases,
            secret,
            http,
            relayed_uploads: Arc::new(tokio::sync::Semaphore::new(RELAYED_UPLOAD_MIB as usize)),
            uploaders: Arc::default(),
        }
    }

    /// Whether a request carries this cluster's replica secret (compared in constant time).
    pub fn is_relayed(&self, headers: &HeaderMap) -> bool {
        headers
            .get(RELAY_HEADER)
            .is_some_and(|v| same_secret(v.as_bytes(), self.secret.as_bytes()))
    }

    /// The client's address a relayed request names (only believed with the secret).
    pub fn relayed_for(&self, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.is_relayed(headers) {
            return None;
        }
        headers.get(RELAYED_FOR_HEADER)?.to_str().ok()?.parse().ok()
    }

    fn hop_headers(&self, source: IpAddr) -> [(&'static str, String); 2] {
        [
            (RELAY_HEADER, self.secret.clone()),
            (RELAYED_FOR_HEADER, source.to_string()),
        ]
    }

    /// Carries a join WebSocket to the owner at `owner` (its internal URL): the owner's
    /// handshake first, so a refusal reaches the client as the owner gave it; then every frame
    /// both ways until either side closes. `credentials` is the `Sec-WebSocket-Protocol` that
    /// carries the client's token and resume key (never the URL).
    pub async fn relay_websocket(
        &self,
        owner: &str,
        query: Option<&str>,
        credentials: Option<&str>,
        source: IpAddr,
        ws: WebSocketUpgrade,
        idle: std::time::Duration,
    ) -> Response {
        let mut url = format!("{}/relay/ws", ws_url(owner));
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        let mut request = match tungstenite::client::IntoClientRequest::into_client_request(url) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, %owner, "the owning replica's address is not a URL");
                return owner_unreachable();
            }
        };
        for (name, value) in self.hop_headers(source) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                request.headers_mut().insert(name, v);
            }
        }
        // (Made of visible ASCII only: `socket_credentials::as_offered`.)
        if let Some(v) = credentials.and_then(|c| HeaderValue::from_str(c).ok()) {
            request
                .headers_mut()
                .insert(axum::http::header::SEC_WEBSOCKET_PROTOCOL, v);
        }
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_DOWNSTREAM_BYTES))
            .max_frame_size(Some(MAX_DOWNSTREAM_BYTES));
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let upstream = match tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
            .await
        {
            Ok(Ok((upstream, _))) => upstream,
            Ok(Err(tungstenite::Error::Http(refused))) => {
                let status = StatusCode::from_u16(refused.status().as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let mut response =
                    Response::new(Body::from(refused.body().clone().unwrap_or_default()));
                *response.status_mut() = status;
                for name in [
                    axum::http::header::CONTENT_TYPE,
                    axum::http::header::RETRY_AFTER,
                ] {
                    if let Some(v) = refused.headers().get(name.as_str())
                        && let Ok(v) = HeaderValue::from_bytes(v.as_bytes())
                    {
                        response.headers_mut().insert(name, v);
                    }
                }
                return response;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %owner, "relaying a WebSocket to the owning replica failed");
                return owner_unreachable();
            }
            Err(_) => {
                tracing::warn!(%owner, "the owning replica did not answer a relayed WebSocket");
                return owner_unreachable();
            }
        };
        metrics::counter!("signaling_relayed_websockets_total").increment(1);
        ws.max_message_size(crate::connection::MAX_MESSAGE_BYTES)
            .max_frame_size(crate::connection::MAX_FRAME_BYTES)
            .on_upgrade(move |client| pump(client, upstream, idle))
    }

    /// Carries a meetings-API call or a join check to the owner at `owner`, and its answer back.
    pub async fn forward(
        &self,
        owner: &str,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: axum::body::Bytes,
        source: IpAddr,
    ) -> Response {
        let url = format!("{owner}{path_and_query}");
        let mut request = self.http.request(method, url).body(body);
        for name in [
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            axum::http::header::ACCEPT,
            axum::http::header::HeaderName::from_static("x-participant"),
        ] {
            if let Some(v) = headers.get(&name) {
                request = request.header(name, v.clone());
            }
        }
        for (name, value) in self.hop_headers(source) {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(answer) => {
                metrics::counter!("signaling_relayed_requests_total").increment(1);
                let status = answer.status();
                let kept: Vec<(axum::http::HeaderName, HeaderValue)> = PASSED_BACK
                    .iter()
                    .filter_map(|name| {
                        let v = answer.headers().get(*name)?;
                        Some((
                            axum::http::HeaderName::from_static(name),
                            HeaderValue::from_bytes(v.as_bytes()).ok()?,
                        ))
                    })
                    .collect();
                let body = answer.bytes().await.unwrap_or_default();
                let mut response = Response::new(Body::from(body));
                *response.status_mut() = status;
                for (name, v) in kept {
                    response.headers_mut().insert(name, v);
                }
                response
            }
            Err(e) => {
                tracing::warn!(error = %e, %owner, "forwarding a request to the owning replica failed");
                owner_unreachable()
            }
        }
    }
}

/// Where a request about one meeting is served (see [`Replicas::route`]).
pub enum Routed {
    /// Here: this replica runs the meeting.
    Here,
    /// By the replica that runs it, at this internal URL.
    Owner(String),
    /// Not now: answered with this.
    Refused(Response),
}

impl Replicas {
    /// Where a request about meeting `id` with `headers` is served: here (taking the meeting's
    /// lease, and the meeting, when nobody holds it), or by its owner. One relayed here whose
    /// lease moved on the way is refused for a retry rather than relayed again; a store that
    /// cannot say is answered `store_unavailable()`, in the caller's words.
    pub fn route(
        &self,
        meetings: &crate::meetings::Meetings,
        id: &str,
        sfu: &dyn crate::sfu_control::SfuControl,
        headers: &HeaderMap,
        store_unavailable: impl FnOnce() -> Response,
    ) -> Routed {
        use crate::meeting_lease::Owner;
        match tokio::task::block_in_place(|| meetings.owner_of(&self.leases, id, sfu)) {
            Ok(Owner::Here { .. }) => Routed::Here,
            Ok(Owner::Elsewhere(_)) if self.is_relayed(headers) => {
                Routed::Refused(owner_unreachable())
            }
            Ok(Owner::Elsewhere(owner)) => Routed::Owner(owner),
            Err(e) => {
                tracing::warn!(error = %e, "reading a meeting's lease failed");
                Routed::Refused(store_unavailable())
            }
        }
    }

    /// Forwards `request` (its body read whole, as `body` allows: 413 past its limit — refused
    /// before reading when declared so —, 408 past a minute) to the owner at `owner`, under
    /// `prefix` + its own path, and its answer back. An upload waits for nothing: while this
    /// replica reads 64 MiB of uploads (as declared, else the limit), or one of the same
    /// uploader, 503 `replica_busy`.
    pub async fn forward_request(
        &self,
        owner: &str,
        request: axum::extract::Request,
        body_rules: RelayedBody<'_>,
        prefix: &str,
        source: IpAddr,
    ) -> Response {
        let RelayedBody {
            limit,
            too_large,
            too_slow,
            uploader,
        } = body_rules;
        let (parts, body) = request.into_parts();
        let too_large = || {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(
                    json!({"error": too_large, "reason": "the request is larger than allowed"}),
                ),
            )
                .into_response()
        };
        let declared = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return too_large();
        }
        let busy = || {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "5")],
                axum::Json(json!({
                    "error": "replica_busy",
                    "reason": "this replica is relaying as many uploads as it may; try again in a moment",
                    "message": "Tjänsten är upptagen. Försök igen om en stund.",
                })),
            )
                .into_response()
        };
        // Held while the body is read, not while the owner answers.
        let mut reading = None;
        if let Some(who) = uploader {
            if !self
                .uploaders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(who.clone())
            {
                return busy();
            }
            let slot = UploadSlot {
                uploaders: self.uploaders.clone(),
                who,
            };
            let mib = declared.unwrap_or(limit).div_ceil(1024 * 1024).max(1);
            let Ok(permits) = self
                .relayed_uploads
                .clone()
                .try_acquire_many_owned(u32::try_from(mib).unwrap_or(u32::MAX))
            else {
                return busy();
            };
            reading = Some((slot, permits));
        }
        let body = match tokio::time::timeout(RELAYED_BODY_TIME, axum::body::to_bytes(body, limit))
            .await
        {
            Ok(Ok(body)) => {
                drop(reading);
                body
            }
            Ok(Err(_)) => return too_large(),
            Err(_) => {
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    axum::Json(json!({
                        "error": too_slow,
                        "reason": "the request's body did not arrive in time",
                    })),
                )
                    .into_response();
            }
        };
        let path = format!(
            "{prefix}{}",
            parts
                .uri
                .path_and_query()
                .map_or(parts.uri.path(), |p| p.as_str())
        );
        self.forward(
            owner,
            parts.method.clone(),
            &path,
            &parts.headers,
            body,
            source,
        )
        .await
    }
}

/// The owner's answer headers a forwarded request passes back (the rest — security headers —
/// the replica that answers the client sets itself).
const PASSED_BACK: &[&str] = &[
    "content-type",
    "retry-after",
    "cache-control",
    "www-authenticate",
    "content-disposition",
];

/// The owner's WebSocket URL for its internal `http(s)://` one.
fn ws_url(owner: &str) -> String {
    if let Some(rest) = owner.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = owner.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        owner.to_owned()
    }
}

/// The owner holds the lease but cannot be reached (it died, and its lease has not run out
/// yet): try again in a moment, when another replica will have taken the meeting over.
pub fn owner_unreachable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "2")],
        axum::Json(json!({
            "error": "replica_unavailable",
            "reason": "the meeting's service is moving to another replica; try again in a moment",
            "message": "Besöket flyttas just nu. Försök igen om en stund.",
        })),
    )
        .into_response()
}

/// Whether two secrets are equal: their digests compared whole, so the time taken says
/// nothing of where a guess went wrong.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use ring::digest::{SHA256, digest};
    let (a, b) = (digest(&SHA256, a), digest(&SHA256, b));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Copies frames both ways until one side closes. A client that drops without a close (its
/// network went) is dropped towards the owner the same way — no close frame — so the owner
/// parks it for a resume as it would a direct connection; a side silent for `idle` (the owner
/// pings every third of it, and the client answers) is taken as gone. The owner gone without a
/// close (it died): the client is told to connect again, as at a restart (`closing`, reason
/// `restarting`, close 1012), and reaches the replica that takes the meeting over.
async fn pump(client: WebSocket, upstream: Upstream, idle: std::time::Duration) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_owner, mut from_owner) = upstream.split();
    let mut heard_client = tokio::time::Instant::now();
    let mut heard_owner = tokio::time::Instant::now();
    let mut check = tokio::time::interval(idle / 3);
    loop {
        tokio::select! {
            msg = from_client.next() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    // Too large: refused as the owner would refuse it (1009), and the
                    // connection ends as it would there.
                    Some(Err(e)) => {
                        if crate::connection::is_too_large(e) {
                            let text = json!({"type": "closing", "reason": "message_too_large",
                                "message": format!("a message is at most {} KiB", crate::connection::MAX_MESSAGE_BYTES / 1024)});
                            let _ = crate::connection::send_within(&mut to_client, Message::Text(text.to_string().into())).await;
                            let _ = crate::connection::send_within(&mut to_client, Message::Close(Some(CloseFrame {
                                    code: 1009,
                                    reason: "message too large".into(),
                                })))
                                .await;
                            let _ = tokio::time::timeout(crate::connection::SEND_TIMEOUT, to_owner.close()).await;
                        }
                        // Otherwise dropped, not closed: the owner sees the socket go as a
                        // dropped one.
                        return;
                    }
                    None => return,
                };
                heard_client = tokio::time::Instant::now();
                let closing = matches!(msg, Message::Close(_));
                if crate::connection::send_within(&mut to_owner, upstream_message(msg)).await.is_err() || closing {
                    return;
                }
            }
            msg = from_owner.next() => {
                match msg {
                    Some(Ok(msg)) => {
                        heard_owner = tokio::time::Instant::now();
                        let Some(msg) = downstream_message(msg) else { continue };
                        let closing = matches!(msg, Message::Close(_));
                        if crate::connection::send_within(&mut to_client, msg).await.is_err() || closing {
                            return;
                        }
                    }
                    _ => {
                        tell_to_reconnect(&mut to_client).await;
                        return;
                    }
                }
            }
            _ = check.tick() => {
                let now = tokio::time::Instant::now();
                if now.duration_since(heard_client) > idle {
                    return;
                }
                if now.duration_since(heard_owner) > idle {
                    tracing::warn!("the owning replica went silent on a relayed WebSocket");
                    tell_to_reconnect(&mut to_client).await;
                    return;
                }
            }
        }
    }
}

async fn tell_to_reconnect(to_client: &mut futures_util::stream::SplitSink<WebSocket, Message>) {
    let text = json!({"type": "closing", "reason": "restarting"}).to_string();
    let _ = crate::connection::send_within(to_client, Message::Text(text.into())).await;
    let _ = crate::connection::send_within(
        to_client,
        Message::Close(Some(CloseFrame {
            code: 1012,
            reason: "restarting".into(),
        })),
    )
    .await;
}

fn upstream_message(msg: Message) -> tungstenite::Message {
    match msg {
        Message::Text(t) => tungstenite::Message::text(t.as_str()),
        Message::Binary(b) => tungstenite::Message::binary(b),
        Message::Ping(b) => tungstenite::Message::Ping(b),
        Message::Pong(b) => tungstenite::Message::Pong(b),
        Message::Close(c) => {
            tungstenite::Message::Close(c.map(|c| tungstenite::protocol::CloseFrame {
                code: c.code.into(),
                reason: c.reason.as_str().to_owned().into(),
            }))
        }
    }
}

fn downstream_message(msg: tungstenite::Message) -> Option<Message> {
    Some(match msg {
        tungstenite::Message::Text(t) => Message::Text(t.as_str().to_owned().into()),
        tungstenite::Message::Binary(b) => Message::Binary(b),
        tungstenite::Message::Ping(b) => Message::Ping(b),
        tungstenite::Message::Pong(b) => Message::Pong(b),
        tungstenite::Message::Close(c) => Message::Close(c.map(|c| CloseFrame {
            code: c.code.into(),
            reason: c.reason.as_str().to_owned().into(),
        })),
        tungstenite::Message::Frame(_) => return None,
    })
}
