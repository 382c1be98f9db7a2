//! The `sfu` node's TOML config file. Flags and environment variables override it; a mistake
//! in the file is reported with the file and the key.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeFileConfig {
    pub node_id: Option<String>,
    pub signaling: Option<SignalingSection>,
    pub cluster: Option<ClusterSection>,
    pub udp: Option<UdpSection>,
    pub metrics: Option<MetricsSection>,
    pub log: Option<LogSection>,
    pub media: Option<MediaSection>,
}

/// How media is sent to subscribers.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    /// Choose each subscriber's layers by its bandwidth estimate (default true); `false` keeps
    /// the selection by reported loss alone.
    pub bandwidth_estimation: Option<bool>,
    /// The estimate a subscriber starts with, kbit/s (100–20000, default 1500).
    pub start_bitrate_kbps: Option<u64>,
    /// Below this estimate a subscriber gets audio only, kbit/s (0–1000, default 100).
    pub video_floor_kbps: Option<u64>,
}

/// The start bitrate's range, kbit/s: below it a first picture would be the lowest layer on
/// every link; above it the first seconds overflow most phones' links.
pub const START_BITRATE_KBPS: std::ops::RangeInclusive<u64> = 100..=20_000;

/// Checks `video_floor_kbps` (from `source`) and returns bits per second.
pub fn video_floor_bps(kbps: Option<u64>, source: &str) -> anyhow::Result<u64> {
    let kbps = kbps.unwrap_or(100);
    anyhow::ensure!(
        kbps <= 1000,
        "{source}: video_floor_kbps = {kbps} is over 1000 kbit/s (video would pause on links that carry it well)"
    );
    Ok(kbps * 1000)
}

/// Checks `start_bitrate_kbps` (from `source`, a file or a flag) and returns bits per second.
pub fn start_bitrate_bps(kbps: Option<u64>, source: &str) -> anyhow::Result<u64> {
    let kbps = kbps.unwrap_or(1500);
    anyhow::ensure!(
        START_BITRATE_KBPS.contains(&kbps),
        "{source}: start_bitrate_kbps = {kbps} is outside {}–{} kbit/s",
        START_BITRATE_KBPS.start(),
        START_BITRATE_KBPS.end()
    );
    Ok(kbps * 1000)
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignalingSection {
    /// `host:port` entries, comma-separated: addresses, or names resolved every few seconds
    /// (a headless Service listing every signaling replica); the node links to each.
    pub addr: Option<String>,
    pub name: Option<String>,
    /// How long rooms outlive a lost control link, seconds.
    pub grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UdpSection {
    pub workers: Option<usize>,
    pub bind_ip: Option<IpAddr>,
    pub port_base: Option<u16>,
    pub advertise_ip: Option<IpAddr>,
    pub pin_cores: Option<bool>,
    /// ICE-TCP on each worker's port number too (default on).
    pub ice_tcp: Option<bool>,
    /// Runs of datagrams to one destination sent as UDP GSO messages (default on).
    pub gso: Option<bool>,
    /// How workers receive: `recvmmsg` (default) or `io-uring` (a build with that feature).
    pub receive: Option<crate::udp_receive::UdpReceive>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub json: Option<bool>,
}

impl NodeFileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_node_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/sfu-node.toml");
        let c = NodeFileConfig::load(&path).unwrap();
        assert!(c.signaling.and_then(|s| s.addr).is_some());
        assert_eq!(c.udp.and_then(|u| u.port_base), Some(40000));
    }

    #[test]
    fn a_mistake_names_the_file_and_key() {
        let dir = std::env::temp_dir().join(format!("sfu-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[udp]\nport_bsae = 4\n").unwrap();
        let err = NodeFileConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("port_bsae"),
            "{err}"
        );
        std::fs::write(&path, "[udp]\nworkers = \"two\"\n").unwrap();
        let err = NodeFileConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("workers"), "{err}");
        let err = start_bitrate_bps(Some(5), "bad.toml [media]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.toml") && err.contains("start_bitrate_kbps"),
            "{err}"
        );
        assert_eq!(start_bitrate_bps(None, "x").unwrap(), 1_500_000);
        let err = video_floor_bps(Some(5000), "bad.toml [media]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.toml") && err.contains("video_floor_kbps"),
            "{err}"
        );
        assert_eq!(video_floor_bps(None, "x").unwrap(), 100_000);
        let _ = std::fs::remove_dir_all(dir);
    }
}
