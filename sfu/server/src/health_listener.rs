//! The node's operations listener: `/metrics` (Prometheus), `/healthz` (the process answers)
//! and `/readyz` (it can take rooms: its workers run and its control link to signaling is
//! up). Anything else is 404, so a probe aimed at the wrong path fails instead of passing.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    let held = Arc::new(HeldConnections::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // (Out of file descriptors: wait rather than spin.)
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let Some(slot) = held.take(peer.ip()) else {
            metrics::counter!("sfu_ops_connections_refused_total").increment(1);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false);
            let builder = builder.http1_only();
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFE, connection).await;
            drop(slot);
        });
    }
}

/// The node sits on the host network, often at a public address (its media ports must be),
/// so this port answers whoever the host's firewall lets through: connections are bounded in
/// all and per source, each must send its request within [`HEADER_TIMEOUT`] and is closed after
/// [`CONNECTION_LIFE`] — a probe or a scrape is one short request.
const MAX_CONNECTIONS: usize = 256;
/// Per source address: enough for the kubelet's probes and a Prometheus or two, which one
/// holder of many idle connections elsewhere cannot crowd out.
const MAX_PER_SOURCE: usize = 8;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFE: Duration = Duration::from_secs(30);

/// The connections open now, in all and by source address.
#[derive(Default)]
struct HeldConnections {
    by_source: Mutex<HashMap<IpAddr, usize>>,
}

impl HeldConnections {
    /// A place for a connection from `source`, given back when dropped; `None` past a limit.
    fn take(self: &Arc<Self>, source: IpAddr) -> Option<HeldConnection> {
        let mut by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = by_source.values().sum();
        let from_it = by_source.entry(source).or_default();
        if total >= MAX_CONNECTIONS || *from_it >= MAX_PER_SOURCE {
            if *from_it == 0 {
                by_source.remove(&source);
            }
            return None;
        }
        *from_it += 1;
        Some(HeldConnection {
            held: self.clone(),
            source,
        })
    }
}

struct HeldConnection {
    held: Arc<HeldConnections>,
    source: IpAddr,
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let mut by_source = self
            .held
            .by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_source_and_in_all_and_given_back() {
        let held = Arc::new(HeldConnections::default());
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let mut from_a: Vec<_> = (0..MAX_PER_SOURCE).map(|_| held.take(a).unwrap()).collect();
        assert!(
            held.take(a).is_none(),
            "one source holds at most {MAX_PER_SOURCE}"
        );
        // Another source is not crowded out by the first.
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let one_b = held.take(b).unwrap();
        from_a.pop();
        assert!(held.take(a).is_some(), "a place given back is free again");
        drop(one_b);
        // In all, from many sources.
        let many: Vec<_> = (0..)
            .map(|i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .map_while(|ip| held.take(ip))
            .collect();
        assert_eq!(many.len() + MAX_PER_SOURCE - 1, MAX_CONNECTIONS);
        drop(many);
        drop(from_a);
        assert!(
            held.by_source.lock().unwrap().is_empty(),
            "nothing kept for closed ones"
        );
    }
}
