//! `signaling serve` settings: flags (each with an env variable) over an optional TOML file.
//! A mistake in the file is reported with the file and the key.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The TOML file's shape; every field optional, unknown keys refused.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsSection>,
    pub tokens: Option<TokenSection>,
    pub sfu: Option<SfuSection>,
    pub log: Option<LogSection>,
    pub audit: Option<AuditSection>,
    pub meetings: Option<MeetingsSection>,
    pub api: Option<ApiSection>,
    pub http: Option<HttpSection>,
    pub turn: Option<TurnSection>,
    pub replicas: Option<ReplicasSection>,
    /// The address patients and clinicians open, e.g. `https://video.region.se` (links the
    /// meetings API returns).
    pub public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeetingsSection {
    /// Where booked meetings are kept across restarts: a file, or a `redis://` URL.
    pub store: Option<PathBuf>,
    /// How long before a visit's start its waiting room opens (default 15).
    pub lobby_opens_minutes: Option<u32>,
    /// How long after its booked end a visit still takes joins (default 30).
    pub overrun_minutes: Option<u32>,
    /// An admitted participant back within this keeps admission (default 60).
    pub reconnect_grace_secs: Option<u32>,
    /// Connections per visit, waiting and admitted (default 6).
    pub max_participants: Option<u32>,
    /// Patients in one drop-in queue (default 50).
    pub queue_limit: Option<u32>,
    /// Length of a private visit opened from a drop-in queue (default 60).
    pub drop_in_visit_minutes: Option<u32>,
    /// Whether tokens may name meetings the API never created (default true).
    pub allow_unbooked: Option<bool>,
    /// Time zone of times shown to patients (default Europe/Stockholm).
    pub time_zone: Option<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Refused with a message: keys in the clear were replaced by `[[api.clients]]`.
    pub keys: Option<Vec<String>>,
    /// The systems allowed on the meetings API (the API is off without one).
    pub clients: Option<Vec<ApiClientSection>>,
}

/// One system on the meetings API: `[[api.clients]]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiClientSection {
    /// Named in the audit line of every call it makes.
    pub name: String,
    /// Care unit ids it may act for; `["*"]` for every unit.
    pub units: Vec<String>,
    /// SHA-256 of its key, hex (`signaling api-key --name …` makes a key and this line).
    pub key_sha256: String,
}

/// The public listener's limits against clients that hold connections open.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Seconds a client has to send a request's headers, and that an idle keep-alive
    /// connection stays open (default 10).
    pub header_timeout_secs: Option<u64>,
    /// Connections open at once (default 10,000, and never more than the file descriptors
    /// allow).
    pub max_connections: Option<usize>,
    /// Connections open at once from one address (default 500: a hospital's staff may share
    /// one address).
    pub max_connections_per_source: Option<usize>,
    /// A second listener for the region's own network: the meetings API, /metrics and health
    /// move there from the public listener.
    pub internal_listen: Option<SocketAddr>,
    /// Seconds a join WebSocket may stay silent (no message, no answer to the server's pings)
    /// before it is closed (default 45).
    pub ws_idle_secs: Option<u64>,
    /// KiB of messages that may wait for a join WebSocket's client (one that reads slowly, or
    /// not at all) before the connection is closed as `too_slow` (default 1,024; at least 4).
    pub ws_outbox_limit_kib: Option<usize>,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client: the
    /// Ingress controller or load balancer in front of the public listener.
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The PDL audit log file (appended, hash-chained, fsynced).
    pub path: Option<PathBuf>,
    /// Seconds between summary lines of refused tokens per source (default 60).
    pub refusal_summary_secs: Option<u64>,
    /// Ed25519 PKCS#8 key signing checkpoints (required outside --dev).
    pub signing_key: Option<PathBuf>,
    /// A signed checkpoint after this many lines (default 100)…
    pub checkpoint_lines: Option<u64>,
    /// …and once a line has waited this many seconds (default 60).
    pub checkpoint_secs: Option<u64>,
    /// A copy of every line off the host.
    pub sink: Option<AuditSinkSection>,
}

/// `[audit.sink]`: a Redis stream receiving every audit line as it is written.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditSinkSection {
    /// `redis://user:password@host:6379` or `rediss://…` (TLS).
    pub redis_url: Option<String>,
    /// The stream's key (default `healthcare-sfu:audit`).
    pub stream: Option<String>,
    /// Lines held in memory while Redis is away (default 10,000).
    pub buffer_lines: Option<usize>,
    /// Timeout of each Redis call in milliseconds (default 2,000).
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub self_signed: Option<bool>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS (https), refreshed every `jwks_refresh_secs`.
    pub jwks_url: Option<String>,
    /// Extra CA (PEM) trusted for `jwks_url`.
    pub jwks_ca_file: Option<PathBuf>,
    pub jwks_refresh_secs: Option<u64>,
    /// Ed25519 PKCS#8 key with which the meetings API mints join tokens.
    pub signing_key: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: Option<u64>,
    /// Longest validity a token may have left, in hours (default 24).
    pub max_lifetime_hours: Option<u64>,
}

/// Where the SFU workers run (`[sfu] mode`, `--sfu-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SfuMode {
    /// Inside this process (the single-node default).
    Embedded,
    /// In standalone `sfu` nodes that dial in over QUIC (`--sfu-listen`).
    Remote,
    /// On this host, in a companion node process this service starts (or finds running) and
    /// links over loopback: a restart of this service loses no media.
    Companion,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SfuSection {
    /// `embedded` (default), `remote` or `companion`.
    pub mode: Option<SfuMode>,
    /// Companion mode: the directory of the companion's link certificates and pid file.
    pub companion_dir: Option<PathBuf>,
    pub workers: Option<usize>,
    pub bind_ip: Option<IpAddr>,
    pub udp_port_base: Option<u16>,
    pub advertise_ip: Option<IpAddr>,
    /// ICE-TCP on each worker's port number too (default on).
    pub ice_tcp: Option<bool>,
    /// Runs of datagrams to one destination sent as UDP GSO messages (default on).
    pub udp_gso: Option<bool>,
    /// How workers receive: `recvmmsg` (default) or `io-uring` (a build with that feature).
    pub udp_receive: Option<sfu_server::udp_receive::UdpReceive>,
    /// Choose each subscriber's layers by its bandwidth estimate (default true).
    pub bandwidth_estimation: Option<bool>,
    /// The estimate a subscriber starts with, kbit/s (100–20000, default 1500).
    pub start_bitrate_kbps: Option<u64>,
    /// Below this estimate a subscriber gets audio only, kbit/s (0–1000, default 100).
    pub video_floor_kbps: Option<u64>,
}

/// A TURN relay (coturn with `use-auth-secret`) for clients whose networks pass neither UDP nor
/// TCP to the SFU: clients get short-lived credentials for these URLs.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TurnSection {
    /// e.g. `["turns:turn.region.se:443?transport=tcp", "turn:turn.region.se:3478"]`.
    pub urls: Option<Vec<String>>,
    /// File holding the secret shared with the relay (`static-auth-secret`), mode 0600.
    pub secret_file: Option<PathBuf>,
    /// How long credentials stay valid, in hours (default 12: a visit's day).
    pub ttl_hours: Option<u64>,
}

/// `[replicas]`: several signaling replicas sharing meetings through the Redis meeting store
/// (ADR 5).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicasSection {
    /// This replica's internal listener as the other replicas reach it, e.g.
    /// `http://signaling-0.signaling-internal:8081`.
    pub url: Option<String>,
    /// File holding the secret every replica shares (at least 32 characters), mode 0600.
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub json: Option<bool>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // `sfu-*.toml` are standalone node configs, loaded by sfu-server's test.
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.extension().is_some_and(|e| e == "toml") && !name.starts_with("sfu-") {
                FileConfig::load(&path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 1, "configs/ holds at least one example");
    }

    #[test]
    fn a_mistake_names_the_key() {
        let err = FileConfig::parse("[sfu]\nworkerz = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("workerz"), "{err}");
        let err = FileConfig::parse("listen = \"not an address\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
    }
}
