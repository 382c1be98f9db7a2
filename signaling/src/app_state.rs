//! What every request handler shares: the token verifier, the meetings, the SFU, the audit
//! log and the service's limits.

use crate::audit_log::AuditLog;
use crate::dev_issuer::DevIssuer;
use crate::meetings::Meetings;
use crate::session_token::TokenVerifier;
use crate::sfu_control::SfuControl;
use crate::token_refusals::TokenRefusals;
use std::sync::Arc;

pub struct AppState {
    /// The TURN relay clients are given credentials for (none: clients get no ICE servers).
    pub turn: Option<crate::turn_credentials::TurnConfig>,
    /// The PDL audit log; every access event is appended (and fsynced) before it takes effect.
    pub audit: Option<Arc<AuditLog>>,
    /// Whether media can be served: true with embedded workers, or once a node connected.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub verifier: TokenVerifier,
    pub meetings: Arc<Meetings>,
    pub sfu: Arc<dyn SfuControl>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The systems allowed on the meetings API, each with its units (none: the API is off).
    pub api_clients: Vec<crate::api_client::ApiClient>,
    /// Signs join tokens minted by the meetings API (regions without their own issuer).
    pub minter: Option<Arc<DevIssuer>>,
    /// The address clients open (for links the API returns), e.g. `https://video.region.se`.
    pub public_url: Option<String>,
    /// Token refusals per source: what is written now, counted, or answered 429.
    pub refusals: TokenRefusals,
    /// How often each person may connect to a meeting.
    pub join_pace: crate::join_pace::JoinPace,
    /// A join WebSocket silent this long (no message, no pong) is closed.
    pub ws_idle: std::time::Duration,
    /// Bytes of messages that may wait for a join WebSocket's client (`crate::outbox`).
    pub outbox_limit_bytes: usize,
    /// A request's body must have arrived within this (as its headers, `http.header_timeout_secs`):
    /// a body sent a byte at a time would otherwise hold its connection's place for good.
    pub body_timeout: std::time::Duration,
    /// Photos shared in meetings, in memory only.
    pub images: crate::image_store::ImageStore,
    /// Participants of dropped WebSockets, kept for a resume, and the live ones' keys.
    pub resume: crate::session_resume::ResumeSlots,
    /// Proxies whose `X-Forwarded-For` names the client (per-address limits, audit source).
    pub trusted_proxies: crate::client_address::TrustedProxies,
    /// Replicas sharing meetings through Redis (ADR 5); none: this process runs every meeting.
    pub replicas: Option<Arc<crate::replica_relay::Replicas>>,
    /// WebSocket connections whose task has not ended: the last audit lines of a connection
    /// (its `leave`) are written after it left its meeting, and the log closes only after.
    pub connection_tasks: TaskCount,
}

/// Tasks running now; each holds a [`TaskGuard`] that counts it until dropped.
#[derive(Debug, Default)]
pub struct TaskCount(Arc<std::sync::atomic::AtomicUsize>);

/// One task counted (until dropped, however the task ends).
#[derive(Debug)]
pub struct TaskGuard(Arc<std::sync::atomic::AtomicUsize>);

impl TaskCount {
    pub fn start(&self) -> TaskGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        TaskGuard(self.0.clone())
    }

    pub fn running(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
