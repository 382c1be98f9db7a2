//! How long a join takes through signaling — WebSocket opened until the `welcome` — on a
//! running deployment (`bench joins --url …`): what a store in Redis, a meeting's lease and a
//! relay between replicas add to what a person waits before their waiting room shows.
//!
//! Each meeting is booked through the meetings API, a clinician's token minted for each join,
//! and the joins made one after the other (each closed before the next). The first join of a
//! meeting is counted apart: it may take the meeting's lease and read it from the store.
//! With `hold_via`, a first participant joins through that address and stays for the
//! meeting's joins — so the meeting runs there, and the joins through `url` are relayed when
//! the two are different replicas.

use crate::deployment::Deployment;
use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, serde::Serialize)]
pub struct JoinLatency {
    /// Joins measured, first of a meeting and later ones.
    pub first_joins: usize,
    pub later_joins: usize,
    /// Milliseconds, p50 / p95 / max.
    pub first_ms: [f64; 3],
    pub later_ms: [f64; 3],
}

fn quantiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    [at(0.5), at(0.95), v[v.len() - 1]]
}

/// Opens a join with `token` through `url` and waits for its `welcome`; returns the socket
/// (to keep or drop) and the time it took.
async fn join(
    dep: &Deployment,
    url: &str,
    token: &str,
) -> anyhow::Result<(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Duration,
)> {
    let at = Deployment {
        url: url.to_owned(),
        ..dep.clone()
    };
    let connector = tokio_tungstenite::Connector::Rustls(dep.tls()?);
    let started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        at.ws_url(token),
        None,
        false,
        Some(connector),
    )
    .await
    .with_context(|| format!("joining through {url}"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "welcome" {
                    return Ok((ws, started.elapsed()));
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => bail!("the join through {url} closed before its welcome"),
            Err(_) => bail!("no welcome through {url} within 10 s"),
        }
    }
}

/// `meetings` meetings, `joins` measured joins each, through `dep.url`.
pub async fn measure(
    dep: &Deployment,
    hold_via: Option<&str>,
    meetings: usize,
    joins: usize,
    run: &str,
) -> anyhow::Result<JoinLatency> {
    let http = dep.http()?;
    let now = jiff::Timestamp::now();
    let (mut first, mut later) = (Vec::new(), Vec::new());
    for m in 0..meetings {
        let id = format!("{run}-{m}");
        let (start, end) = (
            now.to_string(),
            (now + jiff::SignedDuration::from_hours(2)).to_string(),
        );
        dep.book_meeting(&http, &id, (&start, &end), joins + 2)
            .await?;
        let mut tokens = Vec::new();
        for j in 0..=joins {
            let (sub, name) = (format!("{run}-{m}-{j}"), format!("Tester {j}"));
            let hsa = format!("SE2321000016-J{m:03}{j:03}");
            tokens.push(dep.mint_clinician(&http, &id, &sub, &name, &hsa).await?);
        }
        let _held = match hold_via {
            Some(via) => Some(join(dep, via, &tokens[0]).await?.0),
            None => None,
        };
        for (j, token) in tokens[1..].iter().enumerate() {
            let (mut ws, took) = join(dep, &dep.url, token).await?;
            // Left as a person leaves (not dropped: that would hold a place for a resume).
            let _ = ws.close(None).await;
            let ms = took.as_secs_f64() * 1000.0;
            if j == 0 && hold_via.is_none() {
                first.push(ms);
            } else {
                later.push(ms);
            }
        }
        dep.api(&http, &format!("/meetings/{id}/cancel"), json!({}))
            .await?;
    }
    Ok(JoinLatency {
        first_joins: first.len(),
        later_joins: later.len(),
        first_ms: quantiles(first),
        later_ms: quantiles(later),
    })
}
