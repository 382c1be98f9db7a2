//! A node whose signaling is at an IPv6 address (an IPv6-only cluster) links to it: the node
//! dials from a dual-stack socket, so IPv4 signaling (every other test) and IPv6 both work.
//! Before, IPv6 addresses were filtered out without a word and the node never linked. (Which
//! addresses of a name with both families are dialled is a unit test in control_client.rs:
//! here `localhost` resolves to 127.0.0.1 alone.)

use sfu_proto::ControlMessage;
use sfu_server::cluster_tls::{ClusterTls, generate_dev_cluster};
use sfu_server::control_stream::read_message;
use std::time::Duration;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Signaling's control endpoint on `addr`, and the node's cluster files in a new directory.
fn signaling_at(addr: &str) -> (quinn::Endpoint, std::path::PathBuf) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("hc-node-ipv6-{}", rand::random::<u64>()));
    generate_dev_cluster(&dir).unwrap();
    let signaling = ClusterTls::load(
        &dir.join("ca.pem"),
        &dir.join("signaling.pem"),
        &dir.join("signaling.key"),
    )
    .unwrap();
    let endpoint =
        quinn::Endpoint::server(signaling.quic_server().unwrap(), addr.parse().unwrap()).unwrap();
    (endpoint, dir)
}

fn node(signaling: &str, dir: &std::path::Path) -> Kill {
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
            .args(["--workers", "1", "--node-id", "sfu"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_links_to_signaling_at_an_ipv6_address() {
    let (endpoint, dir) = signaling_at("[::1]:0");
    let control = endpoint.local_addr().unwrap();
    assert!(control.is_ipv6());
    let _node = node(&control.to_string(), &dir);
    let conn = tokio::time::timeout(Duration::from_secs(20), endpoint.accept())
        .await
        .expect("the node dials signaling's IPv6 address")
        .unwrap()
        .await
        .unwrap();
    assert!(conn.remote_address().ip().is_loopback());
    let (_send, mut recv) = conn.accept_bi().await.unwrap();
    let hello = read_message(&mut recv).await.unwrap();
    assert!(
        matches!(&hello, ControlMessage::Hello { node_id, .. } if node_id == "sfu"),
        "{hello:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
