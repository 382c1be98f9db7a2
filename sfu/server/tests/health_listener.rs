//! The `sfu` node's operations listener, as a Kubernetes probe and Prometheus see it: `/healthz`
//! answers while the process runs, `/readyz` only while the control link to signaling is up
//! (here a QUIC endpoint of the test, speaking the control protocol's hello), `/metrics`
//! carries the node's metrics, and any other path is 404.

mod support;

use sfu_proto::ControlMessage;
use sfu_server::control_stream::read_message;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Status code and body of `GET path`.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_while_the_control_link_is_up_healthy_throughout_and_nothing_else_answers() {
    let cluster = support::ClusterFiles::new();
    let endpoint = cluster.signaling_at("127.0.0.1:0");
    let control = endpoint.local_addr().unwrap();
    let metrics: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let _node = cluster.node(
        &control.to_string(),
        "probe-node",
        &["--metrics-listen", &metrics.to_string()],
    );

    // Up, but not yet linked: healthy, not ready.
    until("the listener answers", || {
        get(metrics, "/healthz").is_some()
    });
    assert_eq!(get(metrics, "/healthz").unwrap().0, 200);
    let (status, body) = get(metrics, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("control link"), "{body}");
    assert_eq!(get(metrics, "/").unwrap().0, 404);
    assert_eq!(get(metrics, "/health").unwrap().0, 404);

    // The node dials in and says hello: ready.
    let conn = tokio::time::timeout(Duration::from_secs(20), endpoint.accept())
        .await
        .expect("the node dials")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let hello = read_message(&mut recv).await.unwrap();
    assert!(
        matches!(&hello, ControlMessage::Hello { node_id, .. } if node_id == "probe-node"),
        "{hello:?}"
    );
    let probe = tokio::task::spawn_blocking(move || {
        until("ready once linked", || {
            get(metrics, "/readyz").is_some_and(|(s, _)| s == 200)
        });
        // Workers publish their counters once a second.
        until("the node's metrics", || {
            get(metrics, "/metrics")
                .is_some_and(|(s, t)| s == 200 && t.contains("sfu_packets_in_total"))
        });
    });
    probe.await.unwrap();

    // A command of a newer signaling that this node does not know: skipped and counted, and
    // the link (with every room on it) stays up.
    let body = br#"{"type":"command","cmd":"from_a_newer_version","participant":"p-x"}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    send.write_all(&frame).await.unwrap();
    tokio::task::spawn_blocking(move || {
        until("the unknown command counted", || {
            get(metrics, "/metrics").is_some_and(|(_, t)| {
                t.lines().any(|l| {
                    l.starts_with("sfu_control_messages_skipped_total") && l.ends_with(" 1")
                })
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            get(metrics, "/readyz").unwrap().0,
            200,
            "still linked after a message it did not understand"
        );
    })
    .await
    .unwrap();

    // The listener is on the host network, often at a public address: a source that holds
    // idle connections gets 8, the next is closed at once, the probes from elsewhere (here
    // 127.0.0.2) still answer, and the idle ones are closed once their request is 5 s late.
    tokio::task::spawn_blocking(move || {
        let idle: Vec<TcpStream> = (0..8)
            .map(|_| TcpStream::connect(metrics).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut ninth = TcpStream::connect(metrics).unwrap();
        ninth
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            ninth.read(&mut byte).unwrap(),
            0,
            "the ninth is closed at once"
        );
        let from_elsewhere = || {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
                .unwrap();
            s.connect(&metrics.into()).unwrap();
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(s, "GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        };
        assert!(
            from_elsewhere().starts_with("HTTP/1.1 200"),
            "a probe from elsewhere answers"
        );
        let started = Instant::now();
        for mut s in idle {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(s.read(&mut byte).unwrap_or(0), 0);
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "idle connections held {took:?}"
        );
        assert!(get(metrics, "/metrics").is_some_and(|(_, t)| {
            t.lines()
                .any(|l| l.starts_with("sfu_ops_connections_refused_total") && !l.ends_with(" 0"))
        }));
    })
    .await
    .unwrap();

    // The link goes: not ready again, still healthy.
    conn.close(0u32.into(), b"test");
    tokio::task::spawn_blocking(move || {
        until("not ready once the link is gone", || {
            get(metrics, "/readyz").is_some_and(|(s, _)| s == 503)
        });
        assert_eq!(get(metrics, "/healthz").unwrap().0, 200);
    })
    .await
    .unwrap();
}
