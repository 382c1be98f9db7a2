//! `sfu`: a standalone SFU node. It dials the signaling service over QUIC (mutual TLS with the
//! cluster CA), runs one worker per core, and forwards media for the rooms signaling places on it.

use clap::Parser;
use sfu_server::cluster_tls::ClusterTls;
use sfu_server::control_client::{self, ControlClientConfig};
use sfu_server::{NodeConfig, SfuNode};
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
struct Args {
    /// Signaling's control address (its --sfu-listen).
    #[arg(long, env = "SFU_SIGNALING_ADDR")]
    signaling: SocketAddr,
    /// The name in signaling's cluster certificate.
    #[arg(long, env = "SFU_SIGNALING_NAME", default_value = "signaling")]
    signaling_name: String,
    #[arg(long, env = "SFU_CLUSTER_CA")]
    cluster_ca: PathBuf,
    #[arg(long, env = "SFU_CLUSTER_CERT")]
    cluster_cert: PathBuf,
    #[arg(long, env = "SFU_CLUSTER_KEY")]
    cluster_key: PathBuf,
    /// This node's name in logs and load reports (defaults to the host name).
    #[arg(long, env = "SFU_NODE_ID")]
    node_id: Option<String>,
    /// Worker threads (0 = one per core).
    #[arg(long, env = "SFU_WORKERS", default_value_t = 0)]
    workers: usize,
    #[arg(long, env = "SFU_BIND_IP", default_value = "0.0.0.0")]
    bind_ip: IpAddr,
    /// First UDP port; worker i uses base + i (0 = ephemeral).
    #[arg(long, env = "SFU_UDP_PORT_BASE", default_value_t = 0)]
    udp_port_base: u16,
    /// The address clients reach this node's UDP ports at.
    #[arg(long, env = "SFU_ADVERTISE_IP")]
    advertise_ip: IpAddr,
    /// Pin worker i to core i.
    #[arg(long, env = "SFU_PIN_CORES")]
    pin_cores: bool,
    #[arg(long, env = "SFU_LOAD_INTERVAL_MS", default_value_t = 2000)]
    load_interval_ms: u64,
    /// Prometheus metrics listen address.
    #[arg(long, env = "SFU_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = ClusterTls::load(&args.cluster_ca, &args.cluster_cert, &args.cluster_key)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if let Some(addr) = args.metrics_listen {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()?;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let node = SfuNode::start(
            &NodeConfig {
                workers: args.workers,
                bind_ip: args.bind_ip,
                udp_port_base: args.udp_port_base,
                advertised_ip: args.advertise_ip,
                pin_cores: args.pin_cores,
                ..Default::default()
            },
            move |e| {
                let _ = tx.send(e);
            },
        )?;
        let node_id = args.node_id.unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "sfu".into())
        });
        control_client::run(
            ControlClientConfig {
                signaling: args.signaling,
                server_name: args.signaling_name,
                node_id,
                load_interval: Duration::from_millis(args.load_interval_ms.max(100)),
            },
            tls,
            Arc::new(node),
            rx,
        )
        .await
    })
}
