//! A node whose signaling is at an IPv6 address (an IPv6-only cluster) links to it: the node
//! dials from a dual-stack socket, so IPv4 signaling (every other test) and IPv6 both work.
//! Before, IPv6 addresses were filtered out without a word and the node never linked. (Which
//! addresses of a name with both families are dialled is a unit test in control_client.rs:
//! here `localhost` resolves to 127.0.0.1 alone.)

mod support;

use sfu_proto::ControlMessage;
use sfu_server::control_stream::read_message;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_links_to_signaling_at_an_ipv6_address() {
    let cluster = support::ClusterFiles::new();
    let endpoint = cluster.signaling_at("[::1]:0");
    let control = endpoint.local_addr().unwrap();
    assert!(control.is_ipv6());
    let _node = cluster.node(&control.to_string(), "sfu", &[]);
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
}
