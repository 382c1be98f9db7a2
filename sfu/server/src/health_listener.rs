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
            // (A peer gone before it was accepted: nothing to wait for.)
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue;
            }
            Err(e) => {
                // (Out of file descriptors: wait rather than spin.)
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        // The kubelet probes a host-network pod at the node's own address, from it.
        let local = peer.ip().to_canonical().is_loopback()
            || stream.local_addr().is_ok_and(|here| here.ip() == peer.ip());
        let Some(slot) = held.take(peer.ip(), local) else {
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
/// so this port answers whoever the host's firewall lets through: connections are bounded per
/// source and, from other hosts, in all; each must send its request's headers within
/// [`HEADER_TIMEOUT`] and is closed after [`CONNECTION_LIFE`] — a probe or a scrape is one
/// short request. The node's own sources (the kubelet's probes) are not counted in the total,
/// so other hosts filling it cannot fail the probes and have the pod restarted.
const MAX_CONNECTIONS: usize = 256;
/// Per source address (an IPv6 source is its /64, from which one host can use any address):
/// enough for a Prometheus or two.
const MAX_PER_SOURCE: usize = 8;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFE: Duration = Duration::from_secs(30);

/// The connections open now: by source, and in all from other hosts.
#[derive(Default)]
struct HeldConnections {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_source: HashMap<IpAddr, usize>,
    from_elsewhere: usize,
}

impl HeldConnections {
    /// A place for a connection from `source` (`local`: from the node itself), given back
    /// when dropped; `None` past a limit.
    fn take(self: &Arc<Self>, source: IpAddr, local: bool) -> Option<HeldConnection> {
        let key = crate::counted_source::counted_source(source);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let from_it = counts.by_source.get(&key).copied().unwrap_or(0);
        if from_it >= MAX_PER_SOURCE || (!local && counts.from_elsewhere >= MAX_CONNECTIONS) {
            return None;
        }
        counts.by_source.insert(key, from_it + 1);
        if !local {
            counts.from_elsewhere += 1;
        }
        Some(HeldConnection {
            held: self.clone(),
            key,
            local,
        })
    }
}

struct HeldConnection {
    held: Arc<HeldConnections>,
    key: IpAddr,
    local: bool,
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let mut counts = self.held.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.by_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&self.key);
            }
        }
        if !self.local {
            counts.from_elsewhere -= 1;
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
        let mut from_a: Vec<_> = (0..MAX_PER_SOURCE)
            .map(|_| held.take(a, false).unwrap())
            .collect();
        assert!(
            held.take(a, false).is_none(),
            "one source holds at most {MAX_PER_SOURCE}"
        );
        // The same address mapped into IPv6 is the same source.
        assert!(
            held.take("::ffff:198.51.100.1".parse().unwrap(), false)
                .is_none()
        );
        // Another source is not crowded out by the first.
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let one_b = held.take(b, false).unwrap();
        from_a.pop();
        assert!(
            held.take(a, false).is_some(),
            "a place given back is free again"
        );
        drop(one_b);
        // In all, from many hosts.
        let many: Vec<_> = (0..)
            .map(|i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .map_while(|ip| held.take(ip, false))
            .collect();
        assert_eq!(many.len() + MAX_PER_SOURCE - 1, MAX_CONNECTIONS);
        // The node's own probes still get in, up to their own per-source bound.
        let node: IpAddr = "192.0.2.10".parse().unwrap();
        let probes: Vec<_> = (0..MAX_PER_SOURCE)
            .map(|_| held.take(node, true).expect("a probe from the node itself"))
            .collect();
        assert!(held.take(node, true).is_none());
        drop((many, from_a, probes));
        let counts = held.counts.lock().unwrap();
        assert!(
            counts.by_source.is_empty() && counts.from_elsewhere == 0,
            "nothing kept"
        );
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let held = Arc::new(HeldConnections::default());
        let kept: Vec<_> = (0..MAX_PER_SOURCE as u16)
            .map(|i| {
                let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0, i + 1);
                held.take(IpAddr::V6(ip), false).unwrap()
            })
            .collect();
        assert!(
            held.take("2001:db8:0:7:ffff::1".parse().unwrap(), false)
                .is_none()
        );
        assert!(
            held.take("2001:db8:0:8::1".parse().unwrap(), false)
                .is_some()
        );
        drop(kept);
    }
}
