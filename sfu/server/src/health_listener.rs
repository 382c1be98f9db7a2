//! The node's operations listener: `/metrics` (Prometheus), `/healthz` (the process answers)
//! and `/readyz` (it can take rooms: its workers run and its control link to signaling is
//! up). Anything else is 404, so a probe aimed at the wrong path fails instead of passing.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports, shared with the control link.
#[derive(Default)]
pub struct Readiness {
    control_link_up: AtomicBool,
    draining: AtomicBool,
    /// Whether the workers run (set once the node has started them).
    workers: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("control_link_up", &self.control_link_up)
            .field("draining", &self.draining)
            .finish()
    }
}

impl Readiness {
    pub fn set_control_link_up(&self, up: bool) {
        self.control_link_up.store(up, Ordering::Relaxed);
    }

    /// Whether a control link to signaling is up now.
    pub fn control_link_up(&self) -> bool {
        self.control_link_up.load(Ordering::Relaxed)
    }

    /// The node is stopping: not ready for new rooms any more.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// How to tell whether the node's workers run.
    pub fn watch_workers(&self, running: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.workers.set(Box::new(running));
    }

    pub fn is_ready(&self) -> bool {
        self.control_link_up.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && self.workers.get().is_none_or(|running| running())
    }
}

/// Serves on `listener` (bound by the caller, so a taken address fails at start-up) until the
/// process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
) -> std::io::Result<()> {
    // What the exporter's own listener did: histograms are trimmed now and then.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if readiness.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no control link to signaling",
                    )
                }
            }),
        );
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics and health listening");
    }
    axum::serve(listener, app).await
}
