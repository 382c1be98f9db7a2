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
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignalingSection {
    /// `host:port`: an address, or a name resolved at each dial (a Kubernetes Service).
    pub addr: Option<String>,
    pub name: Option<String>,
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
        let _ = std::fs::remove_dir_all(dir);
    }
}
