//! Behind an Ingress or load balancer every browser arrives from the proxy's address: with
//! the proxy trusted (`--trusted-proxy`), the client's address it records in
//! `X-Forwarded-For` is what the per-address refusal budget counts and the audit log names —
//! so one hostile client's bad tokens do not lock out everyone behind the same proxy — and
//! without that trust the header is ignored, so nobody picks the address they are counted
//! under.

mod support;

use serde_json::{Value, json};

async fn join_from(server: &support::Server, forwarded_for: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/join", server.http_base))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"token": "not-a-token"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn sources(server: &support::Server) -> Vec<String> {
    server
        .audit_events("token_refused")
        .iter()
        .filter_map(|l: &Value| l["source"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_trusted_proxys_client_address_is_counted_and_audited() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = support::start_with(&["--trusted-proxy", "127.0.0.0/8"]);
    // One client spends its budget of refused tokens...
    let mut last = 0;
    for _ in 0..12 {
        last = join_from(&server, "198.51.100.66, 203.0.113.9").await;
    }
    assert_eq!(last, 429, "the hostile client is limited");
    // ...another browser behind the same proxy is not.
    assert_eq!(join_from(&server, "203.0.113.10").await, 401);
    // The audit log names the browsers, not the proxy (nor what the client wrote itself).
    assert_eq!(sources(&server), ["203.0.113.9", "203.0.113.10"]);
}

#[tokio::test]
async fn without_trust_the_header_is_ignored() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = support::start();
    assert_eq!(join_from(&server, "203.0.113.9").await, 401);
    assert_eq!(sources(&server), ["127.0.0.1"]);
}
