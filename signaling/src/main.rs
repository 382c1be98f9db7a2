//! `signaling`: serve, mint development tokens.

use anyhow::Context;
use clap::{Parser, Subcommand};
use signaling::api_client::ApiClient;
use signaling::app_state::AppState;
use signaling::audit::audit_all;
use signaling::audit_log::{self, AuditLog};
use signaling::companion_node::{Companion, CompanionFiles, NODE_NAME};
use signaling::config::{self, FileConfig, SfuMode};
use signaling::connection_limits::{ConnectionLimits, LimitedAcceptor};
use signaling::dev_issuer::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer, dev_claims};
use signaling::jwks_source::JwksSource;
use signaling::meeting::MeetingPolicy;
use signaling::meetings::Meetings;
use signaling::server::{internal_router, public_router, router};
use signaling::session_token::TokenVerifier;
use signaling::sfu_control::SfuControl;
use signaling::sfu_gateway::RemoteSfu;
use signaling::token_refusals::{RefusalBudget, TokenRefusals};
use signaling::turn_credentials;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

sfu_server::huge_page_heap!();

/// How often the cluster certificate files are checked for a renewal.
const CLUSTER_CERT_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "signaling",
    version,
    about = "Healthcare video meetings: session service and single-node SFU"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service (with --dev: the single-node default with a built-in dev issuer).
    Serve(Box<ServeArgs>),
    /// Run an SFU node, as the `sfu` binary does (the same flags): the companion node that
    /// `serve --sfu-mode companion` starts.
    SfuNode(Box<sfu_server::node_cli::NodeArgs>),
    /// Development tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// The PDL audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Make a key for a system on the meetings API: prints the key (give it to the system; it
    /// is not kept) and the `[[api.clients]]` entry, holding only its SHA-256, for the config.
    ApiKey {
        /// The system's name, as the audit log will name it.
        #[arg(long)]
        name: String,
        /// A care unit it may act for (repeat the flag; `*` for every unit).
        #[arg(long = "unit", required = true)]
        units: Vec<String>,
    },
    /// Check a config file (every key known, every value of its type) without starting:
    /// exits 0 and prints `ok`, or names the key and the file.
    CheckConfig {
        /// The TOML file (configs/single-node.toml documents every key).
        config: PathBuf,
    },
    /// The SFU control link's certificates: a cluster CA (kept in `--out`, key mode 0600), one
    /// for signaling, and one per node (`--node sfu-1 --node sfu-2`; a node's `node_id` must be
    /// its name). Run again with new names to add nodes from the same CA.
    ClusterCerts {
        #[arg(long)]
        out: PathBuf,
        /// A node's name (repeat; default `sfu`).
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and env variables override it.
    #[arg(long, env = "SIGNALING_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: a dev issuer signs tokens, and two join URLs are printed.
    #[arg(long, env = "SIGNALING_DEV")]
    dev: bool,
    /// Where the dev issuer keeps its key (created when missing).
    #[arg(long, env = "SIGNALING_DEV_KEY", default_value = ".dev/issuer.key")]
    dev_key: PathBuf,
    #[arg(long, env = "SIGNALING_LISTEN")]
    listen: Option<SocketAddr>,
    #[arg(long, env = "SIGNALING_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "SIGNALING_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve https with a generated self-signed certificate (phones on a LAN).
    #[arg(long, env = "SIGNALING_TLS_SELF_SIGNED")]
    tls_self_signed: bool,
    /// JWKS file with the keys that sign session tokens.
    #[arg(long, env = "SIGNALING_JWKS_FILE")]
    jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS URL (https), refreshed periodically.
    #[arg(long, env = "SIGNALING_JWKS_URL")]
    jwks_url: Option<String>,
    /// Extra CA certificate (PEM) trusted for --jwks-url.
    #[arg(long, env = "SIGNALING_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// Seconds between JWKS reloads (default 300).
    #[arg(long, env = "SIGNALING_JWKS_REFRESH_SECS")]
    jwks_refresh_secs: Option<u64>,
    /// Ed25519 key (PKCS#8) with which the meetings API mints join tokens.
    #[arg(long, env = "SIGNALING_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// With --dev only: an API key in the clear for the meetings API, acting for every unit as
    /// the system `dev` (comma-separated in the env). Production keys are `[[api.clients]]`.
    #[arg(long = "api-key", env = "SIGNALING_API_KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// The address users open, e.g. https://video.region.se (for links the API returns).
    #[arg(long, env = "SIGNALING_PUBLIC_URL")]
    public_url: Option<String>,
    /// Minutes before a visit's start its waiting room opens (meetings.lobby_opens_minutes, 15).
    #[arg(long, env = "SIGNALING_LOBBY_OPENS_MINUTES")]
    lobby_opens_minutes: Option<u32>,
    /// Minutes after a visit's end it still takes joins (meetings.overrun_minutes, 30).
    #[arg(long, env = "SIGNALING_OVERRUN_MINUTES")]
    overrun_minutes: Option<u32>,
    /// Seconds a dropped admitted participant keeps admission (meetings.reconnect_grace_secs, 60).
    #[arg(long, env = "SIGNALING_RECONNECT_GRACE_SECS")]
    reconnect_grace_secs: Option<u32>,
    /// Connections per visit (meetings.max_participants, 6).
    #[arg(long, env = "SIGNALING_MAX_PARTICIPANTS")]
    max_participants: Option<u32>,
    /// Patients waiting in one drop-in queue at most (meetings.queue_limit, 50).
    #[arg(long, env = "SIGNALING_QUEUE_LIMIT")]
    queue_limit: Option<u32>,
    /// Length of the private visit a drop-in take opens (meetings.drop_in_visit_minutes, 60).
    #[arg(long, env = "SIGNALING_DROP_IN_VISIT_MINUTES")]
    drop_in_visit_minutes: Option<u32>,
    /// Whether a token may name a meeting the API never created (meetings.allow_unbooked, true).
    #[arg(long, env = "SIGNALING_ALLOW_UNBOOKED")]
    allow_unbooked: Option<bool>,
    /// Time zone of the times patients are shown (meetings.time_zone, Europe/Stockholm).
    #[arg(long, env = "SIGNALING_TIME_ZONE")]
    time_zone: Option<String>,
    /// Where booked meetings are kept across restarts: a file, or `redis://…` /
    /// `rediss://…` (shared by replicas; give Redis append-only persistence).
    #[arg(long, env = "SIGNALING_MEETING_STORE", hide_env_values = true)]
    meeting_store: Option<PathBuf>,
    #[arg(long, env = "SIGNALING_TOKEN_ISSUER")]
    issuer: Option<String>,
    #[arg(long, env = "SIGNALING_TOKEN_AUDIENCE")]
    audience: Option<String>,
    #[arg(long, env = "SIGNALING_TOKEN_LEEWAY_SECS")]
    leeway_secs: Option<u64>,
    /// Longest validity a token may have left, in hours (default 24): longer ones are refused.
    #[arg(long, env = "SIGNALING_TOKEN_MAX_LIFETIME_HOURS")]
    max_token_lifetime_hours: Option<u64>,
    /// SFU worker threads (0 = one per core).
    #[arg(long, env = "SFU_WORKERS")]
    workers: Option<usize>,
    #[arg(long, env = "SFU_BIND_IP")]
    udp_bind_ip: Option<IpAddr>,
    /// First UDP port; worker i uses base + i (0 = ephemeral).
    #[arg(long, env = "SFU_UDP_PORT_BASE")]
    udp_port_base: Option<u16>,
    /// The address clients reach the SFU's UDP ports at.
    #[arg(long, env = "SFU_ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
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
    udp_receive: Option<sfu_server::udp_receive::UdpReceive>,
    /// Choose subscribers' layers by their bandwidth estimate: `true` (default) or `false`.
    #[arg(long, env = "SFU_BANDWIDTH_ESTIMATION")]
    bandwidth_estimation: Option<bool>,
    /// The bandwidth estimate a subscriber starts with, kbit/s (default 1500).
    #[arg(long, env = "SFU_START_BITRATE_KBPS")]
    start_bitrate_kbps: Option<u64>,
    /// Below this bandwidth estimate a subscriber gets audio only, kbit/s (default 100).
    #[arg(long, env = "SFU_VIDEO_FLOOR_KBPS")]
    video_floor_kbps: Option<u64>,
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
    /// The PDL audit log (JSON lines, hash-chained); `.dev/audit.jsonl` with --dev.
    #[arg(long, env = "SIGNALING_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Ed25519 key (PKCS#8) signing the audit log's checkpoints (audit.signing_key; required
    /// outside --dev; `signaling audit keygen` makes one).
    #[arg(long, env = "SIGNALING_AUDIT_SIGNING_KEY")]
    audit_signing_key: Option<PathBuf>,
    /// A signed checkpoint after this many lines (audit.checkpoint_lines, 100).
    #[arg(long, env = "SIGNALING_AUDIT_CHECKPOINT_LINES")]
    audit_checkpoint_lines: Option<u64>,
    /// …and once a line has waited this many seconds (audit.checkpoint_secs, 60).
    #[arg(long, env = "SIGNALING_AUDIT_CHECKPOINT_SECS")]
    audit_checkpoint_secs: Option<u64>,
    /// Redis receiving a copy of every audit line (audit.sink.redis_url), `redis://` or
    /// `rediss://` (TLS).
    #[arg(long, env = "SIGNALING_AUDIT_REDIS_URL", hide_env_values = true)]
    audit_redis_url: Option<String>,
    /// The Redis stream of the copy (audit.sink.stream, `healthcare-sfu:audit`).
    #[arg(long, env = "SIGNALING_AUDIT_REDIS_STREAM")]
    audit_redis_stream: Option<String>,
    /// Lines held in memory while Redis is away (audit.sink.buffer_lines, 10,000); older ones
    /// are read again from the file.
    #[arg(long, env = "SIGNALING_AUDIT_SINK_BUFFER_LINES")]
    audit_sink_buffer_lines: Option<usize>,
    /// Seconds to send a request's headers, and that an idle keep-alive connection stays open
    /// (default 10).
    #[arg(long, env = "SIGNALING_HEADER_TIMEOUT_SECS")]
    header_timeout_secs: Option<u64>,
    /// A second listener, for the region's own network only, serving the meetings API,
    /// /metrics and health (http.internal_listen); the public listener then serves neither.
    #[arg(long, env = "SIGNALING_INTERNAL_LISTEN")]
    internal_listen: Option<SocketAddr>,
    /// Connections open at once (default 10,000, within the file-descriptor limit).
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Connections open at once from one address (default 500).
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS_PER_SOURCE")]
    max_connections_per_source: Option<usize>,
    /// Seconds a join WebSocket may stay silent before it is closed (default 45; the server
    /// pings every third of it).
    #[arg(long, env = "SIGNALING_WS_IDLE_SECS")]
    ws_idle_secs: Option<u64>,
    /// KiB of messages that may wait for a join WebSocket's client before it is closed as
    /// too slow (http.ws_outbox_limit_kib; default 1,024, at least 4).
    #[arg(long, env = "SIGNALING_WS_OUTBOX_LIMIT_KIB")]
    ws_outbox_limit_kib: Option<usize>,
    /// Proxies in front of the public listener whose X-Forwarded-For names the client
    /// (http.trusted_proxies; addresses or CIDR ranges, comma-separated), e.g. the Ingress
    /// controller's pod network. Per-address limits and the audit log then see browsers.
    #[arg(
        long = "trusted-proxy",
        env = "SIGNALING_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<String>,
    /// TURN relay URLs handed to clients with short-lived credentials (comma-separated), e.g.
    /// `turns:turn.region.se:443?transport=tcp,turn:turn.region.se:3478`.
    #[arg(long = "turn-url", env = "TURN_URLS", value_delimiter = ',')]
    turn_urls: Vec<String>,
    /// File with the secret shared with the TURN relay (coturn `static-auth-secret`).
    #[arg(long, env = "TURN_SECRET_FILE")]
    turn_secret_file: Option<PathBuf>,
    /// The TURN shared secret itself (prefer the file; never logged).
    #[arg(long, env = "TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Hours TURN credentials stay valid (default 12).
    #[arg(long, env = "TURN_TTL_HOURS")]
    turn_ttl_hours: Option<u64>,
    /// This replica's internal listener as other replicas reach it (replicas.url), e.g.
    /// `http://signaling-0.signaling-internal:8081`: with a Redis meeting store, replicas then
    /// share meetings — each run by the one holding its lease, the others relaying to it.
    #[arg(long, env = "SIGNALING_REPLICA_URL")]
    replica_url: Option<String>,
    /// File with the secret every replica shares (replicas.secret_file; 32 characters or more).
    #[arg(long, env = "SIGNALING_REPLICA_SECRET_FILE")]
    replica_secret_file: Option<PathBuf>,
    /// The replicas' secret itself (prefer the file; never logged).
    #[arg(long, env = "SIGNALING_REPLICA_SECRET", hide_env_values = true)]
    replica_secret: Option<String>,
    /// Seconds between passes that forget meetings nobody needs any more (default 60).
    #[arg(long, env = "SIGNALING_SWEEP_SECS", hide = true)]
    sweep_secs: Option<u64>,
    /// Seconds between the audit log's summary lines of refused tokens per source (default 60).
    #[arg(long, env = "SIGNALING_REFUSAL_SUMMARY_SECS")]
    refusal_summary_secs: Option<u64>,
    /// Where the SFU workers run: `embedded` (in this process; the default), `remote`
    /// (standalone nodes dial in at --sfu-listen) or `companion` (a node process on this host
    /// that outlives a restart of this service) — `[sfu] mode`.
    #[arg(long, env = "SIGNALING_SFU_MODE", value_enum)]
    sfu_mode: Option<SfuMode>,
    /// QUIC address where standalone SFU nodes connect (remote mode); `[::]:7443` is every
    /// address of both families.
    #[arg(long, env = "SIGNALING_SFU_LISTEN")]
    sfu_listen: Option<SocketAddr>,
    /// Cluster CA, and this service's certificate and key, for the SFU control link.
    #[arg(long, env = "SIGNALING_CLUSTER_CA")]
    cluster_ca: Option<PathBuf>,
    #[arg(long, env = "SIGNALING_CLUSTER_CERT")]
    cluster_cert: Option<PathBuf>,
    #[arg(long, env = "SIGNALING_CLUSTER_KEY")]
    cluster_key: Option<PathBuf>,
    /// Companion mode: the directory of the companion node's link certificates and pid file
    /// (made mode 0700; `[sfu] companion_dir`; default `.dev/companion` with --dev).
    #[arg(long, env = "SIGNALING_COMPANION_DIR")]
    companion_dir: Option<PathBuf>,
    /// Companion mode: the node's Prometheus listener (`/metrics`, `/healthz`, `/readyz`),
    /// e.g. 127.0.0.1:9465. Unset: none.
    #[arg(long, env = "SIGNALING_COMPANION_METRICS_LISTEN")]
    companion_metrics_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain across the daily files; exits 1 naming the first line edited,
    /// removed or reordered (or, with --public-key, a checkpoint that does not hold; or, with
    /// --sink, a copy that differs from the file or holds none of it), and 2
    /// when the log does not end with the service's closing checkpoint (running, crashed, or
    /// its tail removed).
    Verify {
        /// The current log file (`audit.jsonl`); its rotated files beside it are read too.
        file: PathBuf,
        /// The checkpoint key's public half (base64, or a file holding it).
        #[arg(long, env = "SIGNALING_AUDIT_PUBLIC_KEY")]
        public_key: Option<String>,
        /// Compare with the off-host copy in this Redis (its lines must match the file's, and
        /// it must hold nothing past the file's end). From the environment, the password stays
        /// out of the process list.
        #[arg(long, env = "SIGNALING_AUDIT_REDIS_URL", hide_env_values = true)]
        sink: Option<String>,
        /// The copy's stream (as the service's own `SIGNALING_AUDIT_REDIS_STREAM`: a pod's
        /// copy is its own stream).
        #[arg(
            long,
            env = "SIGNALING_AUDIT_REDIS_STREAM",
            default_value = "healthcare-sfu:audit"
        )]
        stream: String,
        /// The service is writing this log now: its end without a closing checkpoint is
        /// expected (exit 0, not 2).
        #[arg(long)]
        running: bool,
    },
    /// Make a checkpoint signing key (mode 0600) and print its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of a checkpoint signing key.
    PublicKey {
        #[arg(long)]
        key: PathBuf,
    },
    /// A patient's log extract: the care units and staff that took part in their meetings.
    /// The chain and its checkpoints' signatures are checked first: an extract is only given
    /// from a log that holds.
    Extract {
        #[arg(long)]
        subject: String,
        /// The checkpoint key's public half (base64, or a file holding it).
        #[arg(long, env = "SIGNALING_AUDIT_PUBLIC_KEY")]
        public_key: String,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a token with the dev issuer's key.
    Mint {
        #[arg(long, env = "SIGNALING_DEV_KEY", default_value = ".dev/issuer.key")]
        key: PathBuf,
        #[arg(long)]
        meeting: String,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "patient")]
        role: String,
        #[arg(long)]
        hsa: Option<String>,
        #[arg(long)]
        unit: Option<String>,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
    /// Print the dev issuer's JWKS.
    Jwks {
        #[arg(long, env = "SIGNALING_DEV_KEY", default_value = ".dev/issuer.key")]
        key: PathBuf,
    },
}

/// Prints to stdout, ignoring a closed pipe: a supervisor that stopped reading must not kill
/// the service.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Token { command } => match command {
            TokenCmd::Mint {
                key,
                meeting,
                sub,
                name,
                role,
                hsa,
                unit,
                ttl_secs,
            } => {
                let issuer = DevIssuer::load_or_create(&key)?;
                let claims = dev_claims(
                    &meeting,
                    &sub,
                    &name,
                    &role,
                    hsa.as_deref(),
                    unit.as_deref(),
                    unix_now(),
                    ttl_secs,
                );
                println!("{}", issuer.mint(&claims)?);
                Ok(())
            }
            TokenCmd::Jwks { key } => {
                let issuer = DevIssuer::load_or_create(&key)?;
                println!("{}", serde_json::to_string_pretty(&issuer.jwks())?);
                Ok(())
            }
        },
        Cmd::Audit { command } => match command {
            AuditCmd::Verify {
                file,
                public_key,
                sink,
                stream,
                running,
            } => {
                let verifier = public_key
                    .map(|k| signaling::audit_checkpoint::CheckpointVerifier::parse(&k))
                    .transpose()?;
                let code = audit_verify_command(
                    &file,
                    verifier.as_ref(),
                    sink.as_deref(),
                    &stream,
                    running,
                )?;
                std::process::exit(code);
            }
            AuditCmd::Keygen { out } => {
                let signer = signaling::audit_checkpoint::CheckpointSigner::generate(&out)?;
                say!(
                    "wrote {} (keep it on the signaling host, mode 0600)",
                    out.display()
                );
                say!("public key (for `audit verify --public-key`):");
                say!("{}", signer.public_key());
                Ok(())
            }
            AuditCmd::PublicKey { key } => {
                let signer = signaling::audit_checkpoint::CheckpointSigner::load(&key)?;
                say!("{}", signer.public_key());
                Ok(())
            }
            AuditCmd::Extract {
                subject,
                public_key,
                file,
            } => {
                let verifier = signaling::audit_checkpoint::CheckpointVerifier::parse(&public_key)?;
                let meetings = signaling::audit_extract::extract(&file, &subject, &verifier)?;
                println!(
                    "Log extract for {subject} ({} stays in meetings)",
                    meetings.len()
                );
                // (Values come from tokens and bookings: a line break in one must not print as
                // a line of the extract.)
                let shown = |s: &str| s.escape_debug().to_string();
                for m in meetings {
                    println!(
                        "meeting {} from {} to {}",
                        shown(&m.meeting),
                        m.first,
                        m.last
                    );
                    for unit in &m.units {
                        println!("  care unit: {}", shown(unit));
                    }
                    for (hsa, unit) in &m.staff {
                        println!("  staff: {} ({})", shown(hsa), shown(unit));
                    }
                }
                Ok(())
            }
        },
        Cmd::ApiKey { name, units } => {
            let key = format!(
                "hc_{}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    rand::random::<[u8; 32]>()
                )
            );
            let hash = signaling::api_client::key_sha256_hex(&key);
            signaling::api_client::ApiClient::new(&name, &units, &hash)?;
            say!("Key for {name} (give it to the system; it is shown only now):");
            say!("  {key}");
            say!("Add to the service's config:");
            say!("[[api.clients]]");
            say!("name = {}", toml::Value::from(name.as_str()));
            say!(
                "units = {}",
                toml::Value::from(units.iter().map(String::as_str).collect::<Vec<_>>())
            );
            say!("key_sha256 = \"{hash}\"");
            Ok(())
        }
        Cmd::CheckConfig { config } => {
            let file = FileConfig::load(&config)?;
            check_dependent_settings(|setting| {
                if (setting.in_file)(&file) {
                    Some(format!("{} in {}", setting.key, config.display()))
                } else {
                    setting.by_variable().then(|| setting.named())
                }
            })?;
            file_api_clients(&config.display().to_string(), &file.api.unwrap_or_default())?;
            // The media keys' ranges, as `serve` checks them.
            let sfu = file.sfu.unwrap_or_default();
            let section = format!("{} [sfu]", config.display());
            sfu_server::node_file_config::start_bitrate_bps(sfu.start_bitrate_kbps, &section)?;
            sfu_server::node_file_config::video_floor_bps(sfu.video_floor_kbps, &section)?;
            // (Standalone nodes read their own; remote mode only warns that it is unused.)
            if sfu.mode != Some(SfuMode::Remote) {
                sfu_server::udp_receive::UdpReceive::checked(
                    sfu.udp_receive,
                    &section,
                    "udp_receive",
                )?;
            }
            // The values `serve` refuses by their form alone (files and servers it reaches
            // are for `serve` to find).
            let at = |key: &str| format!("{key} in {}", config.display());
            let meetings = file.meetings.unwrap_or_default();
            if let Some(store) = &meetings.store {
                signaling::meeting_store::MeetingStore::check_spec(&store.to_string_lossy())
                    .with_context(|| at("meetings.store"))?;
            }
            meeting_policy(&meetings)
                .with_context(|| format!("[meetings] in {}", config.display()))?;
            if let Some(entries) = file.http.as_ref().and_then(|h| h.trusted_proxies.as_ref()) {
                signaling::client_address::TrustedProxies::parse(entries)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at("http.trusted_proxies")))?;
            }
            let lifetime = file.tokens.as_ref().and_then(|t| t.max_lifetime_hours);
            check_token_lifetime(lifetime, &at("tokens.max_lifetime_hours"))?;
            if let Some(url) = &file.public_url {
                check_public_url(url, &at("public_url"))?;
            }
            if let Some(ip) = sfu.advertise_ip {
                check_announced(ip, &at("sfu.advertise_ip"))?;
            }
            say!("{}: ok", config.display());
            Ok(())
        }
        Cmd::ClusterCerts { out, nodes } => {
            let nodes = if nodes.is_empty() {
                vec!["sfu".to_owned()]
            } else {
                nodes
            };
            let written = sfu_server::cluster_tls::issue_cluster(&out, &nodes)?;
            for path in written {
                say!("wrote {}", path.display());
            }
            Ok(())
        }
        Cmd::SfuNode(args) => sfu_server::node_cli::run(*args),
        Cmd::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let served = runtime.block_on(serve(*args));
            // A worker of the SFU in this process panicked, and the process stopped as on
            // SIGTERM: the supervisor is told by the exit status.
            if sfu_server::worker::panicked() {
                std::process::exit(sfu_server::worker::WORKER_PANICKED);
            }
            served
        }
    }
}

/// The control-link settings given that `mode` does not use (a flag, or its `[sfu]` key), so
/// that one given for another mode is not taken for one that acts.
fn unused_in_mode(
    args: &ServeArgs,
    sfu: &signaling::config::SfuSection,
    mode: SfuMode,
) -> Vec<&'static str> {
    use SfuMode::{Companion, Remote};
    [
        (
            args.sfu_listen.is_some(),
            &[Remote, Companion][..],
            "--sfu-listen",
        ),
        (args.cluster_ca.is_some(), &[Remote], "--cluster-ca"),
        (args.cluster_cert.is_some(), &[Remote], "--cluster-cert"),
        (args.cluster_key.is_some(), &[Remote], "--cluster-key"),
        (
            args.companion_dir.is_some() || sfu.companion_dir.is_some(),
            &[Companion],
            "companion_dir (--companion-dir)",
        ),
        (
            args.companion_metrics_listen.is_some(),
            &[Companion],
            "--companion-metrics-listen",
        ),
    ]
    .into_iter()
    .filter(|(given, modes, _)| *given && !modes.contains(&mode))
    .map(|(_, _, name)| name)
    .collect()
}

/// The QUIC endpoint SFU nodes dial in at: `[::]` is every address of both families (every
/// IPv4 address on a host without IPv6).
fn control_endpoint(
    config: quinn::ServerConfig,
    addr: SocketAddr,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        sfu_server::control_socket::control_socket(addr)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// The loopback port the companion node links to by default (`--sfu-listen` sets another).
const DEFAULT_COMPANION_CONTROL_PORT: u16 = 7440;

/// Bytes a connection may leave unsent in the kernel (`TCP_NOTSENT_LOWAT`).
const UNSENT_LIMIT_BYTES: u32 = 64 * 1024;

/// Signaling's side of the SFU nodes' control links, accepting on `endpoint`: placement, the
/// take-over of sessions carried over from the last run (or, replicas sharing the nodes, of a
/// meeting's when its lease is taken), and the tick that ends what its window ran out for.
fn remote_sfu(
    endpoint: quinn::Endpoint,
    event_tx: tokio::sync::mpsc::UnboundedSender<sfu_proto::Event>,
    meetings: &Arc<Meetings>,
    shared: bool,
) -> anyhow::Result<Arc<RemoteSfu>> {
    let bound = endpoint.local_addr()?;
    say!("SFU control listening on {bound}");
    tracing::info!(%bound, "SFU control listener up");
    let remote = RemoteSfu::new(event_tx);
    if shared {
        // The nodes are every replica's: each takes over the sessions of a meeting when it
        // takes the meeting (its lease), not at start.
        let meetings = Arc::downgrade(meetings);
        remote.share(move |id| meetings.upgrade().is_some_and(|m| m.runs(id)));
    } else {
        // Sessions carried over from the last run: the nodes that kept them report them.
        remote.expect_sessions(&meetings.carried_sessions());
    }
    tokio::spawn(remote.clone().accept(endpoint));
    let ticking = Arc::downgrade(&remote);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        while let Some(remote) = ticking.upgrade() {
            remote.tick(std::time::Instant::now());
            drop(remote);
            tick.tick().await;
        }
    });
    Ok(remote)
}

/// A setting as the dependency check sees it: its key, flag and variable ("" where it has
/// none), and whether the file or a flag (or its variable) sets it.
struct Setting {
    key: &'static str,
    flag: &'static str,
    variable: &'static str,
    in_file: fn(&FileConfig) -> bool,
    by_flag: fn(&ServeArgs) -> bool,
}

impl Setting {
    /// Named with its flag and variable: `turn.urls (--turn-url, TURN_URLS)`.
    fn named(&self) -> String {
        match (self.flag, self.variable) {
            ("", "") => self.key.to_owned(),
            ("", v) | (v, "") => format!("{} ({v})", self.key),
            (f, v) => format!("{} ({f}, {v})", self.key),
        }
    }

    /// Set by its variable in this environment (what `check-config` can know of what `serve`
    /// will get beside the file: a Redis URL with its password, say, is given that way).
    fn by_variable(&self) -> bool {
        !self.variable.is_empty() && std::env::var_os(self.variable).is_some_and(|v| !v.is_empty())
    }
}

fn sink(f: &FileConfig) -> Option<&signaling::config::AuditSinkSection> {
    f.audit.as_ref().and_then(|a| a.sink.as_ref())
}

const JWKS_URL: Setting = Setting {
    key: "tokens.jwks_url",
    flag: "--jwks-url",
    variable: "SIGNALING_JWKS_URL",
    in_file: |f| f.tokens.as_ref().is_some_and(|t| t.jwks_url.is_some()),
    by_flag: |a| a.jwks_url.is_some(),
};
const TURN_URLS: Setting = Setting {
    key: "turn.urls",
    flag: "--turn-url",
    variable: "TURN_URLS",
    in_file: |f| {
        f.turn
            .as_ref()
            .is_some_and(|t| t.urls.as_ref().is_some_and(|u| !u.is_empty()))
    },
    by_flag: |a| !a.turn_urls.is_empty(),
};
const SINK_URL: Setting = Setting {
    key: "audit.sink.redis_url",
    flag: "--audit-redis-url",
    variable: "SIGNALING_AUDIT_REDIS_URL",
    in_file: |f| sink(f).is_some_and(|s| s.redis_url.is_some()),
    by_flag: |a| a.audit_redis_url.is_some(),
};
const TLS_CERT: Setting = Setting {
    key: "tls.cert",
    flag: "--tls-cert",
    variable: "SIGNALING_TLS_CERT",
    in_file: |f| f.tls.as_ref().is_some_and(|t| t.cert.is_some()),
    by_flag: |a| a.tls_cert.is_some(),
};

/// Settings that act only beside another, or that another takes the place of: (the setting,
/// the other, whether it needs the other (else: is overridden by it)).
const DEPENDENT_SETTINGS: &[(Setting, Setting, bool)] = &[
    (
        Setting {
            key: "tokens.jwks_ca_file",
            flag: "--jwks-ca-file",
            variable: "SIGNALING_JWKS_CA_FILE",
            in_file: |f| f.tokens.as_ref().is_some_and(|t| t.jwks_ca_file.is_some()),
            by_flag: |a| a.jwks_ca_file.is_some(),
        },
        JWKS_URL,
        true,
    ),
    (
        Setting {
            key: "turn.secret_file",
            flag: "--turn-secret-file",
            variable: "TURN_SECRET_FILE",
            in_file: |f| f.turn.as_ref().is_some_and(|t| t.secret_file.is_some()),
            by_flag: |a| a.turn_secret_file.is_some(),
        },
        TURN_URLS,
        true,
    ),
    (
        Setting {
            key: "turn.secret",
            flag: "--turn-secret",
            variable: "TURN_SECRET",
            in_file: |_| false,
            by_flag: |a| a.turn_secret.is_some(),
        },
        TURN_URLS,
        true,
    ),
    (
        Setting {
            key: "turn.ttl_hours",
            flag: "--turn-ttl-hours",
            variable: "TURN_TTL_HOURS",
            in_file: |f| f.turn.as_ref().is_some_and(|t| t.ttl_hours.is_some()),
            by_flag: |a| a.turn_ttl_hours.is_some(),
        },
        TURN_URLS,
        true,
    ),
    (
        Setting {
            key: "audit.sink.stream",
            flag: "--audit-redis-stream",
            variable: "SIGNALING_AUDIT_REDIS_STREAM",
            in_file: |f| sink(f).is_some_and(|s| s.stream.is_some()),
            by_flag: |a| a.audit_redis_stream.is_some(),
        },
        SINK_URL,
        true,
    ),
    (
        Setting {
            key: "audit.sink.buffer_lines",
            flag: "--audit-sink-buffer-lines",
            variable: "SIGNALING_AUDIT_SINK_BUFFER_LINES",
            in_file: |f| sink(f).is_some_and(|s| s.buffer_lines.is_some()),
            by_flag: |a| a.audit_sink_buffer_lines.is_some(),
        },
        SINK_URL,
        true,
    ),
    (
        Setting {
            key: "audit.sink.timeout_ms",
            flag: "",
            variable: "",
            in_file: |f| sink(f).is_some_and(|s| s.timeout_ms.is_some()),
            by_flag: |_| false,
        },
        SINK_URL,
        true,
    ),
    (
        Setting {
            key: "tls.self_signed",
            flag: "--tls-self-signed",
            variable: "SIGNALING_TLS_SELF_SIGNED",
            in_file: |f| f.tls.as_ref().is_some_and(|t| t.self_signed == Some(true)),
            by_flag: |a| a.tls_self_signed,
        },
        TLS_CERT,
        false,
    ),
];

/// A setting given where it does nothing is refused, not ignored: an operator who set a TURN
/// secret, an audit copy's stream or a CA for the key set believes it acts. `given(setting)`
/// names where it was set (the flag, or the key and its file), `None` when it was not.
fn check_dependent_settings(given: impl Fn(&Setting) -> Option<String>) -> anyhow::Result<()> {
    for (setting, other, needs) in DEPENDENT_SETTINGS {
        let Some(at) = given(setting) else { continue };
        let other_given = given(other).is_some();
        if *needs && !other_given {
            anyhow::bail!(
                "{at} does nothing without {}: set that too, or remove it",
                other.named()
            );
        }
        if !needs && other_given {
            anyhow::bail!(
                "{at} does nothing beside {}, which is used instead: give one",
                other.named()
            );
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    check_dependent_settings(|setting| {
        if (setting.by_flag)(&args) {
            Some(match setting.flag {
                "" => setting.key.to_owned(),
                flag => format!("{flag} ({})", setting.key),
            })
        } else if (setting.in_file)(&file) {
            let path = args
                .config
                .as_deref()
                .unwrap_or(std::path::Path::new("the config"));
            Some(format!("{} in {}", setting.key, path.display()))
        } else {
            None
        }
    })?;
    let file_audit_section = file.audit.unwrap_or_default();
    let file_audit = file_audit_section.path.clone();
    // Every access to a meeting is recorded (PDL): outside --dev (which keeps its own log under
    // .dev/) the service does not start without a place to record it.
    if !args.dev && args.audit_log.is_none() && file_audit.is_none() {
        let config = match &args.config {
            Some(p) => format!("`audit.path` in {}", p.display()),
            None => "`audit.path` in the config file (--config)".to_owned(),
        };
        anyhow::bail!(
            "no audit log configured: set {config}, or --audit-log (SIGNALING_AUDIT_LOG); \
             every access to a meeting must be recorded, so only --dev runs without one"
        );
    }
    let tls = file.tls.unwrap_or_default();
    let tokens = file.tokens.unwrap_or_default();
    let meetings_file = file.meetings.unwrap_or_default();
    let api = file.api.unwrap_or_default();
    let api_clients = api_clients(&args, &api)?;
    let audit_options = audit_options(&args, &file_audit_section, args.config.as_deref())?;
    let http = file.http.unwrap_or_default();
    let trusted_proxies = {
        let (entries, key) = if args.trusted_proxies.is_empty() {
            let file = args
                .config
                .as_ref()
                .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
            (
                http.trusted_proxies.clone().unwrap_or_default(),
                format!("http.trusted_proxies in {file}"),
            )
        } else {
            (
                args.trusted_proxies.clone(),
                "--trusted-proxy (SIGNALING_TRUSTED_PROXIES)".to_owned(),
            )
        };
        signaling::client_address::TrustedProxies::parse(&entries)
            .map_err(|e| anyhow::anyhow!("{key}: {e}"))?
    };
    let sfu = file.sfu.unwrap_or_default();
    let sfu_mode = args.sfu_mode.or(sfu.mode).unwrap_or(SfuMode::Embedded);
    let turn_file = file.turn.unwrap_or_default();
    let replicas_file = file.replicas.unwrap_or_default();
    let log_json = args.log_json || file.log.and_then(|l| l.json).unwrap_or(false);
    sfu_server::logging::init(log_json);
    let unused = unused_in_mode(&args, &sfu, sfu_mode);
    if !unused.is_empty() {
        tracing::warn!(
            settings = ?unused,
            mode = ?sfu_mode,
            "settings given that this SFU mode does not use: they have no effect"
        );
    }
    if matches!(sfu_mode, SfuMode::Embedded) {
        sfu_server::huge_page_heap::HeapPages::read().log();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();

    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let issuer_name = args.issuer.or(tokens.issuer);
    let audience = args.audience.or(tokens.audience);
    let leeway = args.leeway_secs.or(tokens.leeway_secs).unwrap_or(30);

    // A production config with --dev (a SIGNALING_DEV left in a deployment's environment)
    // would accept the dev issuer's tokens beside the region's and print a clinician's join
    // link to the log.
    if args.dev
        && let Some(config) = &args.config
        && let Some(key) = [
            ("tokens.jwks_file", tokens.jwks_file.is_some()),
            ("tokens.jwks_url", tokens.jwks_url.is_some()),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    {
        anyhow::bail!(
            "{}: {key} names the region's token keys, and --dev (SIGNALING_DEV) runs the \
             built-in development issuer, whose tokens would be accepted beside the region's \
             and whose join links are printed: run this config without --dev",
            config.display()
        );
    }
    let dev_issuer = if args.dev {
        Some(DevIssuer::load_or_create(&args.dev_key)?)
    } else {
        None
    };
    let minter = match args.signing_key.or(tokens.signing_key) {
        Some(path) => Some(Arc::new(DevIssuer::load(&path)?)),
        None => dev_issuer
            .as_ref()
            .map(|_| DevIssuer::load_or_create(&args.dev_key).map(Arc::new))
            .transpose()?,
    };
    let source = match (
        args.jwks_file.or(tokens.jwks_file),
        args.jwks_url.or(tokens.jwks_url),
    ) {
        (Some(_), Some(_)) => {
            anyhow::bail!(
                "give one of tokens.jwks_file (--jwks-file) and tokens.jwks_url (--jwks-url)"
            )
        }
        (Some(path), None) => Some(JwksSource::File(path)),
        (None, Some(url)) => Some(
            JwksSource::url(&url, args.jwks_ca_file.or(tokens.jwks_ca_file).as_deref())
                .map_err(|e| anyhow::anyhow!("tokens.jwks_url: {e}"))?,
        ),
        (None, None) => None,
    };
    let mut verifier = match (&source, &dev_issuer) {
        (Some(source), _) => {
            let jwks = source.load().await.map_err(|e| anyhow::anyhow!(e))?;
            TokenVerifier::from_jwks(
                &jwks,
                issuer_name
                    .as_deref()
                    .context("tokens.issuer (--issuer) is required with a JWKS")?,
                audience
                    .as_deref()
                    .context("tokens.audience (--audience) is required with a JWKS")?,
                leeway,
            )
            .map_err(|e| anyhow::anyhow!("{source}: {e}"))?
        }
        (None, Some(dev)) => TokenVerifier::from_jwks(
            &dev.jwks(),
            issuer_name.as_deref().unwrap_or(DEV_ISSUER),
            audience.as_deref().unwrap_or(DEV_AUDIENCE),
            leeway,
        )
        .map_err(|e| anyhow::anyhow!(e))?,
        (None, None) => {
            anyhow::bail!(
                "no token keys: give --jwks-file (tokens.jwks_file), --jwks-url (tokens.jwks_url) or run with --dev"
            )
        }
    };
    let max_lifetime_hours = args.max_token_lifetime_hours.or(tokens.max_lifetime_hours);
    check_token_lifetime(
        max_lifetime_hours,
        "tokens.max_lifetime_hours (--max-token-lifetime-hours)",
    )?;
    let max_lifetime_secs = max_lifetime_hours
        .map(|h| h.saturating_mul(3600))
        .unwrap_or(signaling::session_token::DEFAULT_MAX_LIFETIME_SECS);
    verifier = verifier.with_max_lifetime(max_lifetime_secs);
    if let Some(m) = &minter {
        verifier = verifier
            .pin(&m.jwks())
            .map_err(|e| anyhow::anyhow!("tokens.signing_key: {e}"))?;
    }
    if let Some(source) = source {
        let every = args
            .jwks_refresh_secs
            .or(tokens.jwks_refresh_secs)
            .unwrap_or(300)
            .max(1);
        source.spawn_refresh(verifier.clone(), std::time::Duration::from_secs(every));
    }
    // Flags and env over the file's [meetings].
    let mut meetings_file = meetings_file;
    {
        let m = &mut meetings_file;
        m.lobby_opens_minutes = args.lobby_opens_minutes.or(m.lobby_opens_minutes);
        m.overrun_minutes = args.overrun_minutes.or(m.overrun_minutes);
        m.reconnect_grace_secs = args.reconnect_grace_secs.or(m.reconnect_grace_secs);
        m.max_participants = args.max_participants.or(m.max_participants);
        m.queue_limit = args.queue_limit.or(m.queue_limit);
        m.drop_in_visit_minutes = args.drop_in_visit_minutes.or(m.drop_in_visit_minutes);
        m.allow_unbooked = args.allow_unbooked.or(m.allow_unbooked);
        m.time_zone = args.time_zone.clone().or(m.time_zone.take());
    }
    let mut policy = meeting_policy(&meetings_file).with_context(|| match &args.config {
        Some(path) => format!("[meetings] in {} (or its flag)", path.display()),
        None => "meetings settings (flags)".to_owned(),
    })?;
    // A denial or an end is remembered while any token that could undo it may still be valid.
    policy.remember_decisions_for = jiff::SignedDuration::from_secs(
        i64::try_from(max_lifetime_secs.saturating_add(leeway)).unwrap_or(i64::MAX),
    );
    // Companion mode with --dev keeps its meetings (and the sessions carried through a
    // restart) in .dev/ unless told otherwise.
    let store_spec = args
        .meeting_store
        .clone()
        .or(meetings_file.store.clone())
        .or_else(|| {
            (args.dev && sfu_mode == SfuMode::Companion)
                .then(|| PathBuf::from(".dev/meetings.json"))
        });
    let meeting_store_given = store_spec.is_some();
    let meeting_store = store_spec
        .map(|spec| signaling::meeting_store::MeetingStore::open(&spec.to_string_lossy()))
        .transpose()
        .context("meetings.store (--meeting-store)")?;
    if let Some(store) = &meeting_store {
        tracing::info!(store = %store.name(), "meeting store open");
    }
    let replicas = replicas_config(
        args.config.as_deref(),
        replicas_file,
        args.replica_url.clone(),
        args.replica_secret_file.clone(),
        args.replica_secret.clone(),
        meeting_store.as_ref().and_then(|s| s.redis_url()),
        args.internal_listen.or(http.internal_listen).is_some(),
    )?;
    let meetings = Arc::new(Meetings::new(policy, meeting_store).map_err(|e| anyhow::anyhow!(e))?);
    if let Some(r) = &replicas {
        meetings.share_with(r.leases.clone());
        say!(
            "Replica {} (meetings shared through the meeting store)",
            r.leases.me()
        );
    }

    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        // Durations as histograms (not summaries), so replicas can be added up.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            signaling::service_gauges::SECONDS_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    "sfu_downlink_estimate_bytes_per_second".into(),
                ),
                sfu_server::metric_descriptions::ESTIMATE_BUCKETS,
            )
        })
        .and_then(|b| {
            // Finer than the other durations: a timer pass is microseconds to milliseconds.
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("sfu_timer_pass_seconds".into()),
                sfu_server::metric_descriptions::TIMER_PASS_BUCKETS,
            )
        })
        .and_then(|b| b.install_recorder())
        .ok();
    signaling::service_gauges::describe();
    sfu_server::metric_descriptions::describe();

    // The address the media server announces to clients: given, else the address it binds,
    // else the listener's — never an unspecified one, which no phone can send to (media would
    // never connect, and nothing would say why).
    let announced_ip = || -> anyhow::Result<std::net::IpAddr> {
        let ip = args
            .advertise_ip
            .or(sfu.advertise_ip)
            .or(args.udp_bind_ip)
            .or(sfu.bind_ip)
            .unwrap_or(listen.ip());
        let key = match &args.config {
            Some(path) if args.advertise_ip.is_none() => {
                format!("sfu.advertise_ip in {}", path.display())
            }
            _ => "--advertise-ip".to_owned(),
        };
        check_announced(ip, &key)?;
        Ok(ip)
    };
    let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel();
    let (sfu, ready): (Arc<dyn SfuControl>, Arc<dyn Fn() -> bool + Send + Sync>) = match sfu_mode {
        SfuMode::Embedded => {
            // Where a media value came from, for its error: the flag when one was given, else
            // the config file's [sfu] section.
            let media_source = |flag_given: bool, flag: &str| match &args.config {
                Some(path) if !flag_given => format!("{} [sfu]", path.display()),
                _ => flag.to_owned(),
            };
            // This process's own connections (both listeners at their cap, and its files) are
            // kept back from the SFU's ICE-TCP connections, which share its open files.
            let connections = args
                .max_connections
                .or(http.max_connections)
                .unwrap_or(10_000) as u64;
            let node_config = sfu_server::NodeConfig {
                fd_reserve: sfu_server::ice_tcp::FD_RESERVE + 2 * connections + 128,
                workers: args.workers.or(sfu.workers).unwrap_or(0),
                bind_ip: args.udp_bind_ip.or(sfu.bind_ip).unwrap_or(listen.ip()),
                udp_port_base: args.udp_port_base.or(sfu.udp_port_base).unwrap_or(0),
                advertised_ip: announced_ip()?,
                ice_tcp: args.ice_tcp.or(sfu.ice_tcp).unwrap_or(true),
                udp_gso: args.udp_gso.or(sfu.udp_gso).unwrap_or(true),
                udp_receive: sfu_server::udp_receive::UdpReceive::checked(
                    args.udp_receive.or(sfu.udp_receive),
                    &media_source(args.udp_receive.is_some(), "--udp-receive"),
                    "udp_receive",
                )?,
                bandwidth_estimation: args
                    .bandwidth_estimation
                    .or(sfu.bandwidth_estimation)
                    .unwrap_or(true),
                start_bitrate_bps: sfu_server::node_file_config::start_bitrate_bps(
                    args.start_bitrate_kbps.or(sfu.start_bitrate_kbps),
                    &media_source(args.start_bitrate_kbps.is_some(), "--start-bitrate-kbps"),
                )?,
                video_floor_bps: sfu_server::node_file_config::video_floor_bps(
                    args.video_floor_kbps.or(sfu.video_floor_kbps),
                    &media_source(args.video_floor_kbps.is_some(), "--video-floor-kbps"),
                )?,
                ..Default::default()
            };
            let node = Arc::new(sfu_server::SfuNode::start(&node_config, move |e| {
                let _ = event_tx.send(e);
            })?);
            // Ready while every worker thread runs.
            let probe = node.clone();
            (node, Arc::new(move || probe.workers_running()))
        }
        SfuMode::Companion => {
            // The companion's media settings are this service's [sfu] ones, checked here so
            // an error names the key and the file.
            let media_source = |flag_given: bool, flag: &str| match &args.config {
                Some(path) if !flag_given => format!("{} [sfu]", path.display()),
                _ => flag.to_owned(),
            };
            let start_bitrate = args.start_bitrate_kbps.or(sfu.start_bitrate_kbps);
            sfu_server::node_file_config::start_bitrate_bps(
                start_bitrate,
                &media_source(args.start_bitrate_kbps.is_some(), "--start-bitrate-kbps"),
            )?;
            let video_floor = args.video_floor_kbps.or(sfu.video_floor_kbps);
            sfu_server::node_file_config::video_floor_bps(
                video_floor,
                &media_source(args.video_floor_kbps.is_some(), "--video-floor-kbps"),
            )?;
            anyhow::ensure!(
                replicas.is_none(),
                "companion SFU mode is for one signaling process on one host; replicas share \
                 standalone SFU nodes (sfu.mode = \"remote\")"
            );
            anyhow::ensure!(
                meeting_store_given,
                "companion SFU mode keeps media through a restart only with a meeting store: set \
                 meetings.store (--meeting-store, SIGNALING_MEETING_STORE)"
            );
            let dir = match (
                args.companion_dir.as_ref().or(sfu.companion_dir.as_ref()),
                args.dev,
            ) {
                (Some(dir), _) => dir.clone(),
                (None, true) => PathBuf::from(".dev/companion"),
                (None, false) => anyhow::bail!(
                    "companion SFU mode needs sfu.companion_dir (--companion-dir, SIGNALING_COMPANION_DIR): where its link certificates and pid file are kept"
                ),
            };
            let files = CompanionFiles::prepare(&dir)?;
            let control = args.sfu_listen.unwrap_or(SocketAddr::from((
                [127, 0, 0, 1],
                DEFAULT_COMPANION_CONTROL_PORT,
            )));
            let bind_ip = args.udp_bind_ip.or(sfu.bind_ip).unwrap_or(listen.ip());
            let advertise_ip = announced_ip()?;
            let grace = sfu_server::control_client::DEFAULT_GRACE;
            let mut node_args: Vec<std::ffi::OsString> = Vec::new();
            let mut arg = |flag: &str, value: String| {
                node_args.push(flag.into());
                node_args.push(value.into());
            };
            arg("--signaling", control.to_string());
            arg("--cluster-ca", files.ca.display().to_string());
            arg("--cluster-cert", files.node_cert.display().to_string());
            arg("--cluster-key", files.node_key.display().to_string());
            arg("--node-id", NODE_NAME.to_owned());
            arg(
                "--workers",
                args.workers.or(sfu.workers).unwrap_or(0).to_string(),
            );
            arg("--bind-ip", bind_ip.to_string());
            arg(
                "--udp-port-base",
                args.udp_port_base
                    .or(sfu.udp_port_base)
                    .unwrap_or(0)
                    .to_string(),
            );
            arg("--advertise-ip", advertise_ip.to_string());
            arg(
                "--ice-tcp",
                args.ice_tcp.or(sfu.ice_tcp).unwrap_or(true).to_string(),
            );
            arg(
                "--udp-gso",
                args.udp_gso.or(sfu.udp_gso).unwrap_or(true).to_string(),
            );
            arg(
                "--udp-receive",
                sfu_server::udp_receive::UdpReceive::checked(
                    args.udp_receive.or(sfu.udp_receive),
                    &media_source(args.udp_receive.is_some(), "--udp-receive"),
                    "udp_receive",
                )?
                .to_string(),
            );
            arg(
                "--bandwidth-estimation",
                args.bandwidth_estimation
                    .or(sfu.bandwidth_estimation)
                    .unwrap_or(true)
                    .to_string(),
            );
            if let Some(kbps) = start_bitrate {
                arg("--start-bitrate-kbps", kbps.to_string());
            }
            if let Some(kbps) = video_floor {
                arg("--video-floor-kbps", kbps.to_string());
            }
            arg("--control-grace-secs", grace.as_secs().to_string());
            arg(
                "--exit-unlinked-secs",
                (grace + signaling::companion_node::LINGER_AFTER_GRACE)
                    .as_secs()
                    .to_string(),
            );
            if let Some(m) = args.companion_metrics_listen {
                arg("--metrics-listen", m.to_string());
            }
            if log_json {
                node_args.push("--log-json".into());
            }
            let tls =
                sfu_server::cluster_tls::ClusterTls::load(&files.ca, &files.cert, &files.key)?;
            let endpoint = control_endpoint(tls.quic_server()?, control).with_context(|| {
                format!("binding the companion's control listener {control} (--sfu-listen)")
            })?;
            let remote = remote_sfu(endpoint, event_tx, &meetings, false)?;
            // Started (or found) once the listener is up: it links at its first dial.
            let exe =
                std::env::current_exe().context("locating this program to start the companion")?;
            let companion = Companion::find_or_start(files, exe, node_args)?;
            say!(
                "SFU workers in the companion node (pid {}), linked on {control}",
                companion.pid()
            );
            tokio::spawn(companion.supervise());
            let probe = remote.clone();
            (remote, Arc::new(move || probe.node_count() > 0))
        }
        SfuMode::Remote => {
            // The nodes' own configs set their workers and ports: say so rather than
            // ignore what was set here.
            let mut unused: Vec<&str> = Vec::new();
            for (set, key) in [
                (args.workers.is_some() || sfu.workers.is_some(), "workers"),
                (
                    args.udp_bind_ip.is_some() || sfu.bind_ip.is_some(),
                    "bind_ip",
                ),
                (
                    args.udp_port_base.is_some() || sfu.udp_port_base.is_some(),
                    "udp_port_base",
                ),
                (
                    args.advertise_ip.is_some() || sfu.advertise_ip.is_some(),
                    "advertise_ip",
                ),
                (args.ice_tcp.is_some() || sfu.ice_tcp.is_some(), "ice_tcp"),
                (args.udp_gso.is_some() || sfu.udp_gso.is_some(), "udp_gso"),
                (
                    args.udp_receive.is_some() || sfu.udp_receive.is_some(),
                    "udp_receive",
                ),
                (
                    args.bandwidth_estimation.is_some() || sfu.bandwidth_estimation.is_some(),
                    "bandwidth_estimation",
                ),
                (
                    args.start_bitrate_kbps.is_some() || sfu.start_bitrate_kbps.is_some(),
                    "start_bitrate_kbps",
                ),
                (
                    args.video_floor_kbps.is_some() || sfu.video_floor_kbps.is_some(),
                    "video_floor_kbps",
                ),
            ] {
                if set {
                    unused.push(key);
                }
            }
            if !unused.is_empty() {
                tracing::warn!(
                    keys = ?unused,
                    "[sfu] settings (and their flags) are not used in remote mode: each sfu node's own config sets its workers, ports and address"
                );
            }
            let control = args
                .sfu_listen
                .context("remote SFU mode needs --sfu-listen (SIGNALING_SFU_LISTEN)")?;
            let (Some(ca), Some(cert), Some(key)) =
                (&args.cluster_ca, &args.cluster_cert, &args.cluster_key)
            else {
                anyhow::bail!(
                    "remote SFU mode needs --cluster-ca, --cluster-cert and --cluster-key"
                );
            };
            let files = sfu_server::cluster_tls::ClusterTlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            };
            let loaded = files.version();
            let endpoint =
                control_endpoint(files.load()?.quic_server()?, control).with_context(|| {
                    format!("binding SFU control listener {control} (--sfu-listen)")
                })?;
            // A certificate renewed in place is served from the next handshake on.
            tokio::spawn(files.keep_serving(endpoint.clone(), loaded, CLUSTER_CERT_CHECK));
            let remote = remote_sfu(endpoint, event_tx, &meetings, replicas.is_some())?;
            let probe = remote.clone();
            (remote, Arc::new(move || probe.node_count() > 0))
        }
    };
    let audit_path = args.audit_log.or(file_audit).or_else(|| {
        dev_issuer
            .as_ref()
            .map(|_| PathBuf::from(".dev/audit.jsonl"))
    });
    let audit = match audit_path {
        Some(path) => {
            let log = Arc::new(AuditLog::open_with(&path, audit_options)?);
            tracing::info!(path = %path.display(), "audit log open");
            meetings.record_to(log.clone());
            Some(log)
        }
        // Refused above outside --dev, and --dev has its own.
        None => None,
    };
    // Lines that waited a checkpoint interval get one, even when no more lines come.
    if let Some(log) = audit.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let log = log.clone();
                let _ = tokio::task::spawn_blocking(move || log.checkpoint_if_due()).await;
            }
        });
    }
    let tls_config = match (args.tls_cert.or(tls.cert), args.tls_key.or(tls.key)) {
        (Some(cert), Some(key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .with_context(|| format!("TLS cert {} / key {}", cert.display(), key.display()))?,
        ),
        (None, None) if args.tls_self_signed || tls.self_signed.unwrap_or(false) => {
            let names = vec!["localhost".to_owned(), listen.ip().to_string()];
            let cert = rcgen::generate_simple_self_signed(names)?;
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem(
                    cert.cert.pem().into_bytes(),
                    cert.signing_key.serialize_pem().into_bytes(),
                )
                .await?,
            )
        }
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both tls.cert (--tls-cert) and tls.key (--tls-key)"),
    };
    // Every connection is a file descriptor: take all the process may have, and keep the
    // connection cap inside it (with room for the audit log, sockets of the SFU, …).
    let fd_limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let fd_room = usize::try_from(fd_limit.saturating_sub(128).max(16)).unwrap_or(usize::MAX);
    let max_connections = args
        .max_connections
        .or(http.max_connections)
        .unwrap_or(10_000);
    if max_connections > fd_room {
        tracing::warn!(
            max_connections,
            fd_limit,
            "http.max_connections exceeds the open-files limit; capped at {fd_room}"
        );
    }
    let limits = ConnectionLimits::new(
        max_connections.min(fd_room),
        args.max_connections_per_source
            .or(http.max_connections_per_source)
            .unwrap_or(500),
    );
    let header_timeout = std::time::Duration::from_secs(
        args.header_timeout_secs
            .or(http.header_timeout_secs)
            .unwrap_or(10)
            .max(1),
    );
    tracing::info!(
        fd_limit,
        max_connections = max_connections.min(fd_room),
        ?header_timeout,
        "connection limits"
    );
    let std_listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    std_listener.set_nonblocking(true)?;
    // A client that stops reading holds at most this much of the kernel's memory unsent (its
    // connections take it from the listener); beyond it messages wait in the connection's
    // bounded outbox. Without it the send buffer grew to 4 MiB for a socket not read (seen
    // on loopback). What is in flight is not counted: no transfer is slowed.
    socket2::SockRef::from(&std_listener)
        .set_tcp_notsent_lowat(UNSENT_LIMIT_BYTES)
        .with_context(|| format!("TCP_NOTSENT_LOWAT on {listen}"))?;
    let bound = std_listener.local_addr()?;
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = args
        .public_url
        .or(file.public_url)
        .unwrap_or_else(|| format!("{scheme}://{bound}"));
    check_public_url(&public_url, "public_url (--public-url)")?;
    let turn = turn_config(
        args.config.as_deref(),
        turn_file,
        args.turn_urls,
        args.turn_secret_file,
        args.turn_secret,
        args.turn_ttl_hours,
    )?;
    let state = Arc::new(AppState {
        turn,
        audit,
        ready,
        verifier,
        meetings: meetings.clone(),
        sfu,
        metrics,
        api_clients: api_clients.clients,
        minter,
        public_url: Some(public_url.clone()),
        join_pace: Default::default(),
        refusals: TokenRefusals::new(RefusalBudget {
            interval: std::time::Duration::from_secs(
                args.refusal_summary_secs
                    .or(file_audit_section.refusal_summary_secs)
                    .unwrap_or(60)
                    .max(1),
            ),
            ..Default::default()
        }),
        ws_idle: std::time::Duration::from_secs(
            args.ws_idle_secs.or(http.ws_idle_secs).unwrap_or(45).max(3),
        ),
        outbox_limit_bytes: args
            .ws_outbox_limit_kib
            .or(http.ws_outbox_limit_kib)
            .map_or(signaling::outbox::DEFAULT_OUTBOX_LIMIT_BYTES, |kib| {
                kib.max(4) * 1024
            }),
        body_timeout: header_timeout,
        // Photos shared in meetings, all together at most this much memory.
        images: signaling::image_store::ImageStore::new(64 * 1024 * 1024),
        resume: Default::default(),
        trusted_proxies,
        replicas: replicas.clone(),
        connection_tasks: Default::default(),
    });
    // The leases of meetings in use here are renewed; the others are let go, and a meeting
    // another replica took meanwhile (this one was cut off from Redis) is left to it.
    if let Some(r) = replicas {
        let renewing = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(signaling::meeting_lease::RENEW_EVERY);
            let mut ticks = 0u64;
            loop {
                tick.tick().await;
                ticks += 1;
                // Who is admitted is written again every 10 s: after a crash of this replica
                // its meetings' admissions hold for the reconnect grace from then, not from
                // the last admission.
                let write_admissions = ticks.is_multiple_of(5);
                let leases = r.leases.clone();
                let state = renewing.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let now = std::time::Instant::now();
                    let needed = state.meetings.needed_here();
                    let idle = leases.idle(|m| needed.contains(m), now);
                    for m in &idle {
                        if let Err(e) = leases.release(m, now) {
                            tracing::warn!(error = %e, "letting a meeting's lease go failed");
                        }
                    }
                    let kept: Vec<String> = leases
                        .held()
                        .into_iter()
                        .filter(|m| !idle.contains(m))
                        .collect();
                    match leases.renew(&kept) {
                        Ok(lost) => {
                            for m in lost {
                                state.meetings.let_go(&m, state.sfu.as_ref());
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing meeting leases failed"),
                    }
                    if write_admissions && !kept.is_empty() {
                        state.meetings.persist();
                    }
                })
                .await;
            }
        });
    } else {
        // One process: its meetings in use are written again every 10 s too, so after a crash
        // admissions and the media sessions carried for resume keys hold for the reconnect
        // grace from then.
        let refreshing = state.meetings.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let meetings = refreshing.clone();
                let _ = tokio::task::spawn_blocking(move || meetings.write_in_use()).await;
            }
        });
    }
    tokio::spawn(signaling::service_gauges::publish(state.clone()));
    let pump = state.clone();
    tokio::spawn(async move {
        while let Some(e) = event_rx.recv().await {
            let events = pump.meetings.deliver(e, pump.sfu.as_ref());
            let _ = audit_all(&pump, events).await;
        }
    });
    // Token refusals counted but not yet written go out as one line per source and interval.
    let summaries = state.clone();
    tokio::spawn(async move {
        let every = summaries.refusals.interval();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let mut lines = summaries.refusals.end_interval(std::time::Instant::now());
            if let Err(written) = audit_all(&summaries, lines.clone()).await {
                summaries.refusals.carry(lines.split_off(written));
            }
        }
    });
    let at_exit = state.clone();
    let sweep_secs = args.sweep_secs.unwrap_or(60).max(1);
    let sweeper = meetings.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(sweep_secs));
        loop {
            tick.tick().await;
            sweeper.sweep(jiff::Timestamp::now());
        }
    });
    // With an internal listener the meetings API and metrics leave the public one.
    let internal_listen = args.internal_listen.or(http.internal_listen);
    let (app, internal_base) = match internal_listen {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding http.internal_listen {addr}"))?;
            listener.set_nonblocking(true)?;
            let internal = listener.local_addr()?;
            let service =
                internal_router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
            // The same header timeout and cap on connections as the public listener: whoever
            // may reach it (the namespace's pods, Prometheus's) cannot hold idle connections
            // open for ever. Per source as many as in all: another replica relays every
            // client of the meetings this one runs.
            let cap = max_connections.min(fd_room);
            let limited = LimitedAcceptor {
                limits: ConnectionLimits::new(cap, cap),
                first_byte: header_timeout,
            };
            let server = http_server(listener, header_timeout).acceptor(limited);
            tokio::spawn(async move {
                if let Err(e) = server.serve(service).await {
                    tracing::error!(error = %e, "internal listener stopped");
                }
            });
            tracing::info!(%internal, "internal listener (meetings API, metrics)");
            say!("Internal (meetings API, metrics): http://{internal}");
            (public_router(state), format!("http://{internal}"))
        }
        None => (router(state), public_url.clone()),
    };

    tracing::info!(%bound, scheme, "signaling listening");

    if let Some(dev) = &dev_issuer {
        let meeting = format!("dev-visit-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let now = unix_now();
        let clinician = dev.mint(&dev_claims(
            &meeting,
            "dev-clinician",
            "Dr. Dev",
            "clinician",
            Some("SE2321000016-DEV1"),
            Some("dev-unit"),
            now,
            8 * 3600,
        ))?;
        let patient = dev.mint(&dev_claims(
            &meeting,
            "dev-patient",
            "Patient Dev",
            "patient",
            None,
            Some("dev-unit"),
            now,
            8 * 3600,
        ))?;
        say!("Meeting {meeting} is ready. Open these two URLs (each in its own tab or device):");
        say!("  clinician: {public_url}/m/{meeting}#token={clinician}");
        say!("  patient:   {public_url}/m/{meeting}#token={patient}");
        say!(
            "Meetings API: {internal_base}/api/v1/openapi.json (API key: {})",
            api_clients
                .dev_key
                .as_deref()
                .unwrap_or("see [[api.clients]]")
        );
        say!("Metrics: {internal_base}/metrics   Stop with Ctrl-C.");
    }

    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    let stopping = at_exit.clone();
    let stopper = tokio::spawn(async move {
        // Ctrl-C, or SIGTERM from systemd, Docker or Kubernetes: stop the same way — new
        // connections refused, who is admitted kept in the meeting store, every client told to
        // connect again, and the audit log closed with its checkpoint.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        shutdown.graceful_shutdown(Some(std::time::Duration::from_secs(2)));
        tracing::info!("stopping: clients are told to connect again");
        // (Their keys go into the hand-over first: they may resume after the restart.)
        let keys = stopping.resume.held();
        let parked = stopping.resume.take_parked();
        let lines = stopping.meetings.hand_over(&*stopping.sfu, &keys, &parked);
        // The dropped ones' ends, which their resume windows would have written.
        let _ = audit_all(&stopping, lines).await;
    });
    let limited = LimitedAcceptor {
        limits,
        first_byte: header_timeout,
    };
    let server = http_server(std_listener, header_timeout).handle(handle);
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls_config {
        Some(tls) => {
            let tls = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                .handshake_timeout(header_timeout)
                .acceptor(limited);
            server.acceptor(tls).serve(service).await?
        }
        None => server.acceptor(limited).serve(service).await?,
    }
    // The hand-over's own lines are written before the log closes (a moment at most: the
    // service may also have stopped for another reason, with no hand-over coming).
    // (The hand-over writes the store, which may take seconds when Redis is slow to answer.)
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stopper).await;
    // The connections told to reconnect write their last audit lines (leave, media stop) as
    // they close: wait for them (a moment at most) before the log closes.
    let drained = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while (at_exit.meetings.connection_count() > 0 || at_exit.connection_tasks.running() > 0)
        && std::time::Instant::now() < drained
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Refusals counted since the last summary are written before the process ends, then the
    // closing checkpoint, and the off-host copy gets a moment to catch up.
    let lines = at_exit.refusals.end_interval(std::time::Instant::now());
    let _ = audit_all(&at_exit, lines).await;
    if let Some(log) = at_exit.audit.clone() {
        let closed =
            tokio::task::spawn_blocking(move || log.close(std::time::Duration::from_secs(5))).await;
        if let Ok(Err(e)) = closed {
            tracing::error!(error = %e, "audit log: the closing checkpoint could not be written");
        }
    }
    Ok(())
}

/// An HTTP/1.1 server on `listener` (WebSocket runs over it), with a timer so the header-read
/// timeout fires: it bounds both a request's headers and an idle keep-alive connection.
fn http_server(
    listener: std::net::TcpListener,
    header_timeout: std::time::Duration,
) -> axum_server::Server {
    let mut server = axum_server::from_tcp(listener);
    let builder = server.http_builder();
    *builder = std::mem::take(builder).http1_only();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    server
}

/// Signing and the off-host copy of the audit log, from flags over `[audit]`.
fn audit_options(
    args: &ServeArgs,
    section: &signaling::config::AuditSection,
    config: Option<&std::path::Path>,
) -> anyhow::Result<audit_log::AuditOptions> {
    use signaling::audit_checkpoint::CheckpointSigner;
    let file = config.map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
    let key = args
        .audit_signing_key
        .clone()
        .or(section.signing_key.clone());
    let signer = match key {
        Some(path) => CheckpointSigner::load(&path).map_err(|e| {
            anyhow::anyhow!("{e} (audit.signing_key in {file}, or --audit-signing-key)")
        })?,
        None if args.dev => {
            CheckpointSigner::load_or_create(&args.dev_key.with_file_name("audit-signing.key"))?
        }
        None => anyhow::bail!(
            "no audit signing key: set `audit.signing_key` in {file}, or --audit-signing-key \
             (SIGNALING_AUDIT_SIGNING_KEY); `signaling audit keygen --out <path>` makes one. \
             Without signed checkpoints whoever can write the log could rewrite it unseen"
        ),
    };
    let sink_section = section.sink.clone().unwrap_or_default();
    let url = args.audit_redis_url.clone().or(sink_section.redis_url);
    let sink = match url {
        Some(url) => {
            if sink_section.timeout_ms == Some(0) {
                anyhow::bail!("audit.sink.timeout_ms in {file}: at least 1");
            }
            Some(signaling::audit_sink::SinkConfig {
                url,
                stream: args
                    .audit_redis_stream
                    .clone()
                    .or(sink_section.stream)
                    .unwrap_or_else(|| "healthcare-sfu:audit".into()),
                buffer_lines: args
                    .audit_sink_buffer_lines
                    .or(sink_section.buffer_lines)
                    .unwrap_or(10_000),
                timeout: std::time::Duration::from_millis(sink_section.timeout_ms.unwrap_or(2000)),
            })
        }
        None => None,
    };
    Ok(audit_log::AuditOptions {
        signer: Some(signer),
        checkpoint_lines: args
            .audit_checkpoint_lines
            .or(section.checkpoint_lines)
            .unwrap_or(100),
        checkpoint_every: std::time::Duration::from_secs(
            args.audit_checkpoint_secs
                .or(section.checkpoint_secs)
                .unwrap_or(60),
        ),
        sink,
    })
}

/// `audit verify`: 0 sound and closed, 1 broken (or the copy disagrees), 2 sound but not
/// closed by the service.
fn audit_verify_command(
    file: &std::path::Path,
    verifier: Option<&signaling::audit_checkpoint::CheckpointVerifier>,
    sink: Option<&str>,
    stream: &str,
    running: bool,
) -> anyhow::Result<i32> {
    let report = match signaling::audit_chain::verify_chain(file, verifier) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("BROKEN: {e}");
            return Ok(1);
        }
    };
    say!(
        "{}: lines {}–{} in {} file(s), chain intact{}",
        file.display(),
        report.first_seq,
        report.last_seq,
        report.files,
        if verifier.is_some() {
            format!(", {} checkpoint signature(s) hold", report.checkpoints)
        } else {
            format!(
                ", {} checkpoint(s) (signatures not checked: give --public-key)",
                report.checkpoints
            )
        }
    );
    if let Some(url) = sink {
        // The copy and the file side by side in order, a page of the copy at a time: a copy
        // of years is compared without either being held in memory (this runs beside the
        // service, within its memory limit).
        let mut copy = signaling::audit_copy_reader::CopyReader::open(
            url,
            stream,
            0,
            std::time::Duration::from_secs(5),
        )?;
        let mut file_lines = signaling::audit_chain::chain_lines(file)?.peekable();
        let (mut matched, mut missing, mut before_copy) = (0u64, 0u64, 0u64);
        let (mut removed, mut first_removed) = (0u64, None);
        let (mut differ, mut first_differ) = (0u64, None);
        let mut beyond: Option<(u64, u64)> = None;
        let mut seen_copy = false;
        loop {
            let page = copy.next_page()?;
            if page.is_empty() {
                break;
            }
            for (seq, line) in page {
                // The file's lines before this one are not in the copy (yet).
                while let Some(Ok((q, _))) = file_lines.peek() {
                    if *q >= seq {
                        break;
                    }
                    // Before the copy's first line: archived from it. Between two of its lines:
                    // removed from it (it is written in order).
                    if !seen_copy {
                        before_copy += 1;
                    } else {
                        removed += 1;
                        first_removed.get_or_insert(*q);
                    }
                    file_lines.next();
                }
                match file_lines.peek() {
                    Some(Err(_)) => {
                        if let Some(Err(e)) = file_lines.next() {
                            return Err(e.into());
                        }
                    }
                    Some(Ok((q, l))) if *q == seq => {
                        if *l == line {
                            matched += 1;
                        } else {
                            differ += 1;
                            first_differ.get_or_insert(seq);
                        }
                        file_lines.next();
                    }
                    // Past the file's end: cut from it. (Below its first line: in older files
                    // taken away from this host, nothing to compare.)
                    _ if seq > report.last_seq => {
                        beyond = Some((beyond.map_or(seq, |(first, _)| first), seq));
                    }
                    _ => {}
                }
                seen_copy = true;
            }
        }
        for rest in file_lines {
            rest?;
            missing += 1;
        }
        if !seen_copy && missing > 0 {
            // Nothing to compare is no agreement: a wrong stream (a pod's copy is its own) or
            // a copy that never took a line would otherwise pass as "not copied yet".
            eprintln!(
                "EMPTY: the off-host copy (stream `{stream}`) holds none of the file's {missing} \
                 line(s): is it the stream this log's service writes (its \
                 SIGNALING_AUDIT_REDIS_STREAM)? A service running with the sink copies each \
                 line as it writes it"
            );
            return Ok(1);
        }
        if differ > 0 || beyond.is_some() || removed > 0 {
            if let Some(first) = first_removed {
                eprintln!(
                    "GAP: the off-host copy lacks {removed} line(s) it should hold (it holds later \
                     ones), first line {first}: they were removed from it"
                );
            }
            if let Some((first, last)) = beyond {
                eprintln!(
                    "TRUNCATED: the off-host copy holds lines {first}–{last} past the file's end \
                     (line {}): they were removed from the file",
                    report.last_seq
                );
            }
            if let Some(first) = first_differ {
                eprintln!(
                    "BROKEN: {differ} line(s) differ from the off-host copy, first at line {first}"
                );
            }
            return Ok(1);
        }
        say!(
            "off-host copy: {matched} line(s) match the file{}{}",
            if before_copy > 0 {
                format!(
                    "; the file's first {before_copy} line(s) precede the copy's first (archived from it)"
                )
            } else {
                String::new()
            },
            if missing > 0 {
                format!("; {missing} line(s) not copied yet")
            } else {
                String::new()
            }
        );
    }
    match report.signed_through {
        Some(s) if s == report.last_seq => {}
        Some(s) => say!(
            "lines {}–{} follow the last checkpoint (line {s}) and are not yet signed",
            s + 1,
            report.last_seq
        ),
        None => say!("no checkpoint: nothing is signed"),
    }
    if report.closed {
        say!(
            "ends with the service's closing checkpoint ({})",
            report.last_ts
        );
        Ok(0)
    } else if running {
        say!(
            "ends at line {} ({}), written by the running service",
            report.last_seq,
            report.last_ts
        );
        Ok(0)
    } else {
        say!(
            "NOT CLOSED: the log ends at line {} ({}) without the service's closing checkpoint: \
             the service is running, stopped without closing (a crash or kill: its next start \
             records `after_unclean_stop`), or lines after it were removed",
            report.last_seq,
            report.last_ts
        );
        Ok(2)
    }
}

/// The `[meetings]` section over the defaults; a wrong time zone names itself.
/// A token lifetime of 0 hours would refuse every link (`key`: where the value came from).
fn check_token_lifetime(hours: Option<u64>, key: &str) -> anyhow::Result<()> {
    if hours == Some(0) {
        anyhow::bail!("{key}: 0 would refuse every link; at least 1");
    }
    Ok(())
}

/// Join links are made from the public URL: without a scheme they would be relative, and
/// lead nowhere.
fn check_public_url(url: &str, key: &str) -> anyhow::Result<()> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        anyhow::bail!(
            "{key}: {url:?} is not an http(s):// URL; give the address patients open, e.g. https://video.region.se"
        );
    }
    Ok(())
}

/// The media server's announced address must be one a client can send to: `0.0.0.0` or `::`
/// would leave every call unconnected, with nothing said.
fn check_announced(ip: std::net::IpAddr, key: &str) -> anyhow::Result<()> {
    if ip.is_unspecified() {
        anyhow::bail!(
            "{key}: media would be announced at {ip}, an address no client can reach; give the address clients reach this host at"
        );
    }
    Ok(())
}

fn meeting_policy(m: &signaling::config::MeetingsSection) -> anyhow::Result<MeetingPolicy> {
    use jiff::SignedDuration;
    let d = MeetingPolicy::default();
    let mins = |v: Option<u32>, default: SignedDuration| {
        v.map(|m| SignedDuration::from_mins(i64::from(m)))
            .unwrap_or(default)
    };
    Ok(MeetingPolicy {
        lobby_opens_before: mins(m.lobby_opens_minutes, d.lobby_opens_before),
        overrun: mins(m.overrun_minutes, d.overrun),
        reconnect_grace: m
            .reconnect_grace_secs
            .map(|s| SignedDuration::from_secs(i64::from(s)))
            .unwrap_or(d.reconnect_grace),
        // (0 would refuse every join as full, and shut every drop-in queue.)
        default_max_participants: match m.max_participants {
            Some(0) => anyhow::bail!("max_participants = 0: at least 1"),
            v => v.unwrap_or(d.default_max_participants),
        },
        queue_limit: match m.queue_limit {
            Some(0) => anyhow::bail!("queue_limit = 0: at least 1"),
            v => v.unwrap_or(d.queue_limit),
        },
        drop_in_visit_length: mins(m.drop_in_visit_minutes, d.drop_in_visit_length),
        allow_unbooked: m.allow_unbooked.unwrap_or(d.allow_unbooked),
        remember_decisions_for: d.remember_decisions_for,
        time_zone: match &m.time_zone {
            Some(name) => jiff::tz::TimeZone::get(name)
                .with_context(|| format!("time_zone = {name:?} is not a known time zone"))?,
            None => d.time_zone,
        },
    })
}

/// The TURN relay's settings from flags over the file; `None` when no URL is configured. A
/// mistake names the key (and the file it came from).
fn turn_config(
    file_path: Option<&std::path::Path>,
    file: config::TurnSection,
    urls: Vec<String>,
    secret_file: Option<PathBuf>,
    secret: Option<String>,
    ttl_hours: Option<u64>,
) -> anyhow::Result<Option<turn_credentials::TurnConfig>> {
    let from_file = |key: &str| match file_path {
        Some(p) => format!("turn.{key} in {}", p.display()),
        None => format!("turn.{key}"),
    };
    let (urls, urls_key) = if urls.is_empty() {
        (file.urls.unwrap_or_default(), from_file("urls"))
    } else {
        (urls, "--turn-url / TURN_URLS".to_owned())
    };
    if urls.is_empty() {
        return Ok(None);
    }
    // (A mistake names where the value came from: the flag or its variable, else the file.)
    let secret_key = match (&secret, &secret_file) {
        (Some(_), _) => "--turn-secret (TURN_SECRET)".to_owned(),
        (None, Some(_)) => "--turn-secret-file (TURN_SECRET_FILE)".to_owned(),
        (None, None) => from_file("secret_file"),
    };
    let ttl_key = match ttl_hours {
        Some(_) => "--turn-ttl-hours (TURN_TTL_HOURS)".to_owned(),
        None => from_file("ttl_hours"),
    };
    let secret = match (secret, secret_file.or(file.secret_file)) {
        (Some(s), _) => s.into_bytes(),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading the TURN secret file {}", path.display()))?
            .trim()
            .as_bytes()
            .to_vec(),
        (None, None) => Vec::new(),
    };
    let ttl = std::time::Duration::from_secs(
        ttl_hours
            .or(file.ttl_hours)
            .unwrap_or(12)
            .saturating_mul(3600),
    );
    turn_credentials::TurnConfig::new(urls, secret, ttl)
        .map_err(|e| match e {
            turn_credentials::TurnConfigError::BadUrl(_) => anyhow::anyhow!("{urls_key}: {e}"),
            turn_credentials::TurnConfigError::BadTtl => anyhow::anyhow!("{ttl_key}: {e}"),
            _ => anyhow::anyhow!("{secret_key}: {e}"),
        })
        .map(Some)
}

/// Replicas sharing meetings (ADR 5), from flags over `[replicas]`: a mistake names the key.
fn replicas_config(
    file_path: Option<&std::path::Path>,
    file: config::ReplicasSection,
    url: Option<String>,
    secret_file: Option<PathBuf>,
    secret: Option<String>,
    store: Option<&str>,
    internal_listener: bool,
) -> anyhow::Result<Option<Arc<signaling::replica_relay::Replicas>>> {
    use signaling::replica_relay::MIN_SECRET_LEN;
    let key = |k: &str, flag: &str| match file_path {
        Some(p) => format!("replicas.{k} in {} (or {flag})", p.display()),
        None => format!("replicas.{k} ({flag})"),
    };
    let secret_given = secret.is_some() || secret_file.is_some() || file.secret_file.is_some();
    let Some(url) = url.or(file.url) else {
        anyhow::ensure!(
            !secret_given,
            "{} is set but {} is not: a replica needs its own internal URL to share meetings",
            key("secret_file", "--replica-secret-file"),
            key("url", "--replica-url")
        );
        return Ok(None);
    };
    let url_key = key("url", "--replica-url");
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        anyhow::bail!(
            "{url_key} {url:?}: expected this replica's internal URL, e.g. http://signaling-0.signaling-internal:8081"
        );
    }
    let Some(store) = store else {
        anyhow::bail!(
            "{url_key} is set: replicas share meetings through a Redis meeting store — set meetings.store (--meeting-store) to a redis:// URL"
        );
    };
    if !internal_listener {
        anyhow::bail!(
            "{url_key} is set: replicas reach each other on the internal listener — set http.internal_listen (--internal-listen)"
        );
    }
    let secret_key = key("secret_file", "--replica-secret-file");
    let secret = match (secret, secret_file.or(file.secret_file)) {
        (Some(s), _) => s,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("{secret_key}: reading {}", path.display()))?
            .trim()
            .to_owned(),
        (None, None) => anyhow::bail!(
            "{url_key} is set but {secret_key} is not: replicas prove themselves to each other with a shared secret"
        ),
    };
    if secret.len() < MIN_SECRET_LEN || secret.chars().any(|c| c.is_control()) {
        anyhow::bail!(
            "{secret_key}: the secret must be at least {MIN_SECRET_LEN} printable characters (e.g. `openssl rand -hex 32`)"
        );
    }
    let leases = signaling::meeting_lease::MeetingLeases::open(store, &url)
        .context("meetings.store (--meeting-store) for the meeting leases")?;
    Ok(Some(Arc::new(signaling::replica_relay::Replicas::new(
        Arc::new(leases),
        secret,
    ))))
}

/// The `[[api.clients]]` of a config file (`file` names it in errors).
fn file_api_clients(
    file: &str,
    api: &signaling::config::ApiSection,
) -> anyhow::Result<Vec<ApiClient>> {
    if api.keys.is_some() {
        anyhow::bail!(
            "`api.keys` in {file}: API keys are no longer configured in the clear; give each \
             system an `[[api.clients]]` entry with its name, care units and key_sha256 \
             (`signaling api-key --name … --unit …` makes one)"
        );
    }
    let mut clients = Vec::new();
    for (i, c) in api.clients.iter().flatten().enumerate() {
        let client = ApiClient::new(&c.name, &c.units, &c.key_sha256)
            .map_err(|e| anyhow::anyhow!("api.clients[{i}].{e} (in {file})"))?;
        clients.push(client);
    }
    ApiClient::check_set(&clients).map_err(|e| anyhow::anyhow!("api.clients in {file}: {e}"))?;
    Ok(clients)
}

/// The systems on the meetings API, and (with --dev) the key printed for trying it.
struct ConfiguredClients {
    clients: Vec<ApiClient>,
    dev_key: Option<String>,
}

fn api_clients(
    args: &ServeArgs,
    api: &signaling::config::ApiSection,
) -> anyhow::Result<ConfiguredClients> {
    let file = args
        .config
        .as_ref()
        .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
    let mut clients = file_api_clients(&file, api)?;
    let keys: Vec<&String> = args.api_keys.iter().filter(|k| !k.is_empty()).collect();
    if !keys.is_empty() && !args.dev {
        anyhow::bail!(
            "--api-key (SIGNALING_API_KEYS) is for --dev only: a production key is an \
             `[[api.clients]]` entry holding its SHA-256 (`signaling api-key` makes one)"
        );
    }
    let mut dev_key = keys.first().map(|k| k.to_string());
    for key in keys {
        clients.push(ApiClient::with_key("dev", key));
    }
    if args.dev && clients.is_empty() {
        let path = args.dev_key.with_file_name("api.key");
        let key = match std::fs::read_to_string(&path) {
            Ok(k) => {
                signaling::private_file::restrict(&path)
                    .with_context(|| format!("restricting {}", path.display()))?;
                k.trim().to_owned()
            }
            Err(_) => {
                let k = format!("dev-{:032x}", rand::random::<u128>());
                signaling::private_file::write(&path, k.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                k
            }
        };
        clients.push(ApiClient::with_key("dev", &key));
        dev_key = Some(key);
    }
    Ok(ConfiguredClients { clients, dev_key })
}
