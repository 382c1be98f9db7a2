//! A running deployment as the target (`bench run --url …`): instead of starting a server,
//! the harness books its meetings through the deployment's meetings API with a tester's key,
//! has the API mint each simulated participant's join token (the deployment needs
//! `tokens.signing_key`), joins over the public address as browsers do, and cancels the
//! meetings when the run ends.

use crate::scenario::Planned;
use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Deployment {
    /// The address browsers open (`https://video.region.example`); joins go to `<url>/ws`.
    pub url: String,
    /// The meetings API's base (the internal listener; the same as `url` on a single node
    /// without one).
    pub api_url: String,
    /// The tester's API key (an `[[api.clients]]` entry allowed `unit`).
    pub api_key: String,
    /// The care unit the meetings are booked for.
    pub unit: String,
    /// A CA to trust besides the public roots (the region's internal CA), PEM.
    pub ca_file: Option<PathBuf>,
}

impl Deployment {
    /// TLS for https and wss: the public roots plus the region's CA.
    pub fn tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.ca_file {
            let pem =
                std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.with_context(|| format!("--ca-file {}", path.display()))?)
                    .with_context(|| format!("--ca-file {}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// An HTTP client trusting what [`Deployment::tls`] trusts.
    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls()?).clone())
            .build()?)
    }

    /// The WebSocket address of a join with `token`.
    pub fn ws_url(&self, token: &str) -> String {
        let base = self.url.trim_end_matches('/');
        let ws = base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{ws}/ws?token={token}")
    }

    /// POSTs `body` to the meetings API's `path` (under `/api/v1`) with the tester's key.
    pub async fn api(
        &self,
        http: &reqwest::Client,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.api_url.trim_end_matches('/'));
        let response = http
            .post(&url)
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {url}: {status} {body}");
        }
        Ok(body)
    }

    /// Books one meeting per planned meeting (ids `<run>-<n>`, from now for two hours, room
    /// for all its participants) and mints a clinician's token for each participant (so
    /// nobody waits in a waiting room). Returns the meeting ids and each participant's token,
    /// in plan order.
    pub async fn book(
        &self,
        http: &reqwest::Client,
        plan: &[Planned],
        run: &str,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let rfc3339 = |secs: u64| jiff::Timestamp::from_second(secs as i64).map(|t| t.to_string());
        let (start, end) = (rfc3339(now.as_secs())?, rfc3339(now.as_secs() + 7200)?);
        let meetings: std::collections::BTreeSet<usize> = plan.iter().map(|p| p.meeting).collect();
        let mut ids = Vec::new();
        for m in meetings {
            let id = format!("{run}-{m}");
            let size = plan.iter().filter(|p| p.meeting == m).count();
            self.book_meeting(http, &id, (&start, &end), size).await?;
            ids.push(id);
        }
        let mut tokens = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            let id = format!("{run}-{}", p.meeting);
            let sub = format!("{run}-{}", p.name);
            let hsa = format!("SE2321000016-B{i:05}");
            tokens.push(self.mint_clinician(http, &id, &sub, &p.name, &hsa).await?);
        }
        Ok((ids, tokens))
    }

    /// Books meeting `id` for `window` (RFC 3339 start and end) with room for `size`.
    pub async fn book_meeting(
        &self,
        http: &reqwest::Client,
        id: &str,
        window: (&str, &str),
        size: usize,
    ) -> anyhow::Result<()> {
        self.api(
            http,
            "/meetings",
            json!({"id": id, "unit": self.unit, "start": window.0, "end": window.1,
                   "max_participants": size}),
        )
        .await
        .context("booking a meeting (the tester's key must be allowed --unit)")?;
        Ok(())
    }

    /// A clinician's join token for meeting `id` (nobody waits in a waiting room).
    pub async fn mint_clinician(
        &self,
        http: &reqwest::Client,
        id: &str,
        sub: &str,
        name: &str,
        hsa: &str,
    ) -> anyhow::Result<String> {
        let minted = self
            .api(
                http,
                &format!("/meetings/{id}/tokens"),
                json!({"sub": sub, "name": name, "role": "clinician", "hsa": hsa}),
            )
            .await
            .context("minting a join token (the deployment needs tokens.signing_key)")?;
        Ok(minted["token"]
            .as_str()
            .context("the API's token answer has no token")?
            .to_owned())
    }

    /// Cancels the run's meetings (whoever is still connected is disconnected).
    pub async fn cancel(&self, http: &reqwest::Client, ids: &[String]) -> anyhow::Result<()> {
        for id in ids {
            self.api(http, &format!("/meetings/{id}/cancel"), json!({}))
                .await?;
        }
        Ok(())
    }
}
