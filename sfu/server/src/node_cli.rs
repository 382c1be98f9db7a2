//! The `sfu` node's command line and run loop: the `sfu` binary, and the companion node the
//! single-node signaling service starts (`signaling sfu-node`, the same flags). This is a
//! binary's edge: errors are `anyhow` with the key or flag they concern.

use crate::cluster_tls::ClusterTlsFiles;
use crate::control_client::{self, ControlClientConfig};
use crate::node_file_config::NodeFileConfig;
use crate::{NodeConfig, SfuNode};
use anyhow::Context;
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sfu",
    version,
    about = "Standalone SFU media node, driven by the signaling service over QUIC"
)]
pub struct NodeArgs {
    /// TOML config file (configs/sfu-node.toml shows every key); flags override it.
    #[arg(long, env = "SFU_CONFIG")]
    config: Option<PathBuf>,
    /// Signaling's control address (its --sfu-listen) as `host:port`, or several,
    /// comma-separated; names are resolved again every few seconds and every address found
    /// is linked (a headless Service lists every signaling replica).
    #[arg(long, env = "SFU_SIGNALING_ADDR")]
    signaling: Option<String>,
    /// The name in signaling's cluster certificate (default "signaling").
    #[arg(long, env = "SFU_SIGNALING_NAME")]
    signaling_name: Option<String>,
    #[arg(long, env = "SFU_CLUSTER_CA")]
    cluster_ca: Option<PathBuf>,
    #[arg(long, env = "SFU_CLUSTER_CERT")]
    cluster_cert: Option<PathBuf>,
    #[arg(long, env = "SFU_CLUSTER_KEY")]
    cluster_key: Option<PathBuf>,
    /// This node's name in logs and load reports (defaults to the host name).
    #[arg(long, env = "SFU_NODE_ID")]
    node_id: Option<String>,
    /// Worker threads (0 = one per core).
    #[arg(long, env = "SFU_WORKERS")]
    workers: Option<usize>,
    /// Address the UDP sockets bind to (default 0.0.0.0).
    #[arg(long, env = "SFU_BIND_IP")]
    bind_ip: Option<IpAddr>,
    /// First UDP port; worker i uses base + i (0 = ephemeral).
    #[arg(long, env = "SFU_UDP_PORT_BASE")]
    udp_port_base: Option<u16>,
    /// The address clients reach this node's UDP ports at.
    #[arg(long, env = "SFU_ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
    /// Pin worker i to core i.
    #[arg(long, env = "SFU_PIN_CORES")]
    pin_cores: bool,
    /// Offer ICE-TCP on each worker's port number too (for networks that block UDP):
    /// `true` (default) or `false`.
    #[arg(long, env = "SFU_ICE_TCP")]
    ice_tcp: Option<bool>,
    /// Send a run of datagrams to one destination as one UDP GSO message where the kernel
    /// can: `true` (default) or `false`.
    #[arg(long, env = "SFU_UDP_GSO")]
    udp_gso: Option<bool>,
    /// How workers receive from their UDP sockets: `recvmmsg` (default) or `io-uring` (an
    /// experiment; needs a build with the io-uring feature).
    #[arg(long, env = "SFU_UDP_RECEIVE", value_enum)]
    udp_receive: Option<crate::udp_receive::UdpReceive>,
    /// Choose subscribers' layers by their bandwidth estimate: `true` (default) or `false`
    /// (by reported loss alone, for comparison).
    #[arg(long, env = "SFU_BANDWIDTH_ESTIMATION")]
    bandwidth_estimation: Option<bool>,
    /// The bandwidth estimate a subscriber starts with, kbit/s (default 1500).
    #[arg(long, env = "SFU_START_BITRATE_KBPS")]
    start_bitrate_kbps: Option<u64>,
    /// Below this bandwidth estimate a subscriber gets audio only, kbit/s (default 100).
    #[arg(long, env = "SFU_VIDEO_FLOOR_KBPS")]
    video_floor_kbps: Option<u64>,
    /// How long the node's rooms outlive a lost link to signaling, seconds (default 30): media
    /// flows on through a signaling restart or failover, and the signaling reached next takes
    /// the sessions over. 0 ends them at once.
    #[arg(long, env = "SFU_CONTROL_GRACE_SECS")]
    control_grace_secs: Option<u64>,
    /// End the node when no signaling has been linked for this long, seconds (more than the
    /// control grace): a companion node whose single-node signaling was stopped for good, not
    /// restarted, does not linger. Unset: the node redials for ever.
    #[arg(long, env = "SFU_EXIT_UNLINKED_SECS")]
    exit_unlinked_secs: Option<u64>,
    #[arg(long, env = "SFU_LOAD_INTERVAL_MS", default_value_t = 2000)]
    load_interval_ms: u64,
    /// On SIGTERM the node takes no new rooms and serves its own until they are empty, for at
    /// most this long (match Kubernetes' terminationGracePeriodSeconds); a second signal ends
    /// it at once.
    #[arg(long, env = "SFU_DRAIN_TIMEOUT_SECS", default_value_t = 600)]
    drain_timeout_secs: u64,
    /// Prometheus metrics listen address.
    #[arg(long, env = "SFU_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

/// Runs the node until it is stopped (SIGTERM drains it) or its link gives up.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => NodeFileConfig::load(path)?,
        None => NodeFileConfig::default(),
    };
    let signaling = file.signaling.unwrap_or_default();
    let cluster = file.cluster.unwrap_or_default();
    let udp = file.udp.unwrap_or_default();
    let media = file.media.unwrap_or_default();
    // Where a media value came from, for its error: its flag when given, else the file.
    let from = |flag: &str, given: bool| match &args.config {
        Some(path) if !given => format!("{} [media]", path.display()),
        _ => flag.to_owned(),
    };
    let start_bitrate_bps = crate::node_file_config::start_bitrate_bps(
        args.start_bitrate_kbps.or(media.start_bitrate_kbps),
        &from("--start-bitrate-kbps", args.start_bitrate_kbps.is_some()),
    )?;
    let video_floor_bps = crate::node_file_config::video_floor_bps(
        args.video_floor_kbps.or(media.video_floor_kbps),
        &from("--video-floor-kbps", args.video_floor_kbps.is_some()),
    )?;
    let udp_receive = crate::udp_receive::UdpReceive::checked(
        args.udp_receive.or(udp.receive),
        &match &args.config {
            Some(path) if args.udp_receive.is_none() => format!("{} [udp]", path.display()),
            _ => "--udp-receive".to_owned(),
        },
        "receive",
    )?;
    let bandwidth_estimation = args
        .bandwidth_estimation
        .or(media.bandwidth_estimation)
        .unwrap_or(true);
    let signaling_addr = args
        .signaling
        .or(signaling.addr)
        .context("signaling.addr (--signaling) is required")?;
    for entry in signaling_addr.split(',').map(str::trim) {
        let has_port = entry
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        anyhow::ensure!(
            has_port,
            "signaling.addr (--signaling) {entry:?}: expected host:port (comma-separated for several), e.g. 10.0.0.5:7443 or signaling-control:7443"
        );
    }
    let signaling_name = args
        .signaling_name
        .or(signaling.name)
        .unwrap_or_else(|| "signaling".into());
    let control_grace_secs = args
        .control_grace_secs
        .or(signaling.grace_secs)
        .unwrap_or(crate::control_client::DEFAULT_GRACE.as_secs());
    anyhow::ensure!(
        control_grace_secs <= 3600,
        "signaling.grace_secs (--control-grace-secs) {control_grace_secs}: at most 3600 (an hour \
         of media nobody can manage)"
    );
    if let Some(secs) = args.exit_unlinked_secs {
        anyhow::ensure!(
            secs > control_grace_secs,
            "--exit-unlinked-secs {secs}: must exceed the control grace ({control_grace_secs} s), \
             or the node would end before its rooms do"
        );
    }
    let ca = args
        .cluster_ca
        .or(cluster.ca)
        .context("cluster.ca (--cluster-ca) is required")?;
    let cert = args
        .cluster_cert
        .or(cluster.cert)
        .context("cluster.cert (--cluster-cert) is required")?;
    let key = args
        .cluster_key
        .or(cluster.key)
        .context("cluster.key (--cluster-key) is required")?;
    let advertise_ip = args
        .advertise_ip
        .or(udp.advertise_ip)
        .context("udp.advertise_ip (--advertise-ip) is required")?;
    if advertise_ip.is_unspecified() {
        anyhow::bail!(
            "udp.advertise_ip (--advertise-ip): {advertise_ip} is no address a client can reach; \
             give the one clients reach this node at"
        );
    }
    let metrics_listen = args.metrics_listen.or(file.metrics.and_then(|m| m.listen));
    let log_json = args.log_json || file.log.and_then(|l| l.json).unwrap_or(false);
    let node_id = args.node_id.or(file.node_id);
    crate::logging::init(log_json);
    crate::huge_page_heap::HeapPages::read().log();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // (Read once here so a mistake stops the start; read again at each dial.)
    let tls_files = ClusterTlsFiles { ca, cert, key };
    tls_files.load()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let readiness = Arc::new(crate::health_listener::Readiness::default());
        if let Some(addr) = metrics_listen {
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "sfu_downlink_estimate_bytes_per_second".into(),
                    ),
                    crate::metric_descriptions::ESTIMATE_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("sfu_timer_pass_seconds".into()),
                        crate::metric_descriptions::TIMER_PASS_BUCKETS,
                    )
                })
                .context("metrics buckets")?
                .install_recorder()
                .context("installing the metrics recorder")?;
            crate::metric_descriptions::describe();
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen {addr}"))?;
            tokio::spawn(crate::health_listener::serve(
                listener,
                metrics,
                readiness.clone(),
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let node = SfuNode::start(
            &NodeConfig {
                workers: args.workers.or(udp.workers).unwrap_or(0),
                bind_ip: args
                    .bind_ip
                    .or(udp.bind_ip)
                    .unwrap_or(IpAddr::from([0, 0, 0, 0])),
                udp_port_base: args.udp_port_base.or(udp.port_base).unwrap_or(0),
                advertised_ip: advertise_ip,
                pin_cores: args.pin_cores || udp.pin_cores.unwrap_or(false),
                ice_tcp: args.ice_tcp.or(udp.ice_tcp).unwrap_or(true),
                udp_gso: args.udp_gso.or(udp.gso).unwrap_or(true),
                udp_receive,
                bandwidth_estimation,
                start_bitrate_bps,
                video_floor_bps,
                ..Default::default()
            },
            move |e| {
                let _ = tx.send(e);
            },
        )?;
        let node_id = node_id.unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "sfu".into())
        });
        let node = Arc::new(node);
        let probe = node.clone();
        readiness.watch_workers(move || probe.workers_running());
        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let link = control_client::run(
            ControlClientConfig {
                signaling: signaling_addr,
                server_name: signaling_name,
                node_id,
                load_interval: Duration::from_millis(args.load_interval_ms.max(100)),
                grace: Duration::from_secs(control_grace_secs),
            },
            tls_files,
            node.clone(),
            rx,
            readiness.clone(),
            drain_rx,
            stop_rx,
        );
        tokio::pin!(link);
        let orphaned = async {
            match args.exit_unlinked_secs {
                Some(secs) => unlinked_for(&readiness, Duration::from_secs(secs)).await,
                None => std::future::pending().await,
            }
        };
        let drain = drain_on_signal(
            node,
            readiness.clone(),
            drain_tx,
            Duration::from_secs(args.drain_timeout_secs),
        );
        tokio::select! {
            ended = &mut link => ended,
            () = orphaned => {
                tracing::warn!(
                    secs = args.exit_unlinked_secs,
                    "no signaling linked for --exit-unlinked-secs: ending"
                );
                let _ = stop_tx.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(2), link).await;
                Ok(())
            }
            ended = drain => {
                // Signaling hears the link close now, not after its idle timeout, and moves
                // whoever is still here to another node.
                let _ = stop_tx.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(2), link).await;
                ended
            }
        }
    })
}

/// SIGTERM (or Ctrl-C): the node drains — it tells signaling it takes no new rooms, serves the
/// ones it has until they are empty (or `timeout` passes), then ends. A second signal ends it
/// at once. Returns when the process should exit.
async fn drain_on_signal(
    node: Arc<SfuNode>,
    readiness: Arc<crate::health_listener::Readiness>,
    draining: tokio::sync::watch::Sender<bool>,
    timeout: Duration,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let (_, rooms, participants) = node.counters();
    tracing::info!(
        rooms,
        participants,
        ?timeout,
        "draining: no new rooms; ending when the last one empties"
    );
    readiness.set_draining();
    let _ = draining.send(true);
    let deadline = tokio::time::Instant::now() + timeout;
    // The workers' counts are exported about once a second: wait for a fresh one first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    loop {
        let (_, rooms, participants) = node.counters();
        if participants == 0 {
            tracing::info!(rooms, "drained: no participants left");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                participants,
                "drain timed out: ending with participants still here"
            );
            return Ok(());
        }
        tokio::select! {
            _ = term.recv() => { tracing::warn!("second signal: ending now"); return Ok(()); }
            _ = int.recv() => { tracing::warn!("second signal: ending now"); return Ok(()); }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Returns once no control link has been up for `limit` (checked every second).
async fn unlinked_for(readiness: &crate::health_listener::Readiness, limit: Duration) {
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if readiness.control_link_up() {
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health_listener::Readiness;

    #[tokio::test(start_paused = true)]
    async fn an_unlinked_node_ends_the_limit_after_its_last_link() {
        let readiness = Arc::new(Readiness::default());
        let limit = Duration::from_secs(90);
        let started = tokio::time::Instant::now();
        // Linked for the first 60 s, then never again.
        readiness.set_control_link_up(true);
        let toggler = readiness.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            toggler.set_control_link_up(false);
        });
        unlinked_for(&readiness, limit).await;
        let ended = started.elapsed();
        assert!(
            ended >= Duration::from_secs(150) && ended <= Duration::from_secs(152),
            "ended {ended:?} after the start: 90 s after the link went at 60 s"
        );
    }
}
