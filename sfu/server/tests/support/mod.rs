//! A stand-in for signaling's control endpoint, and real `sfu` node processes dialling it.

use sfu_server::cluster_tls::{ClusterTls, generate_dev_cluster};
use std::path::{Path, PathBuf};

/// A child process killed when dropped.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A development cluster's certificates in a new directory, removed when dropped.
pub struct ClusterFiles(pub PathBuf);

impl ClusterFiles {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("hc-node-test-{}", rand::random::<u64>()));
        generate_dev_cluster(&dir).unwrap();
        Self(dir)
    }

    /// Signaling's control endpoint on `addr`, with signaling's certificate.
    pub fn signaling_at(&self, addr: &str) -> quinn::Endpoint {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = ClusterTls::load(
            &self.0.join("ca.pem"),
            &self.0.join("signaling.pem"),
            &self.0.join("signaling.key"),
        )
        .unwrap();
        quinn::Endpoint::server(tls.quic_server().unwrap(), addr.parse().unwrap()).unwrap()
    }

    /// A one-worker node named `node_id` on loopback dialling `signaling`, with `extra` flags.
    pub fn node(&self, signaling: &str, node_id: &str, extra: &[&str]) -> Kill {
        let dir: &Path = &self.0;
        Kill(
            std::process::Command::new(env!("CARGO_BIN_EXE_sfu"))
                .args(["--signaling", signaling])
                .arg("--cluster-ca")
                .arg(dir.join("ca.pem"))
                .arg("--cluster-cert")
                .arg(dir.join("sfu.pem"))
                .arg("--cluster-key")
                .arg(dir.join("sfu.key"))
                .args(["--bind-ip", "127.0.0.1", "--advertise-ip", "127.0.0.1"])
                .args(["--workers", "1", "--node-id", node_id])
                .args(extra)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for ClusterFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
