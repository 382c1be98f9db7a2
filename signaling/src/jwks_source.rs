//! Where the region's token-signing keys come from: a JWKS file, or an https URL (the
//! identity provider's `jwks_uri`). Loaded at start (a failure stops the service, naming the
//! source), then refreshed periodically; a failed refresh keeps the last good set.

use crate::session_token::TokenVerifier;
use jsonwebtoken::jwk::JwkSet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "JWKS file {}", p.display()),
            JwksSource::Url { url, .. } => write!(f, "JWKS URL {url}"),
        }
    }
}

impl JwksSource {
    /// An https URL, trusting the system's web PKI roots plus `extra_ca` (a PEM file, for a
    /// region's internal CA).
    pub fn url(url: &str, extra_ca: Option<&std::path::Path>) -> Result<Self, String> {
        if !url.starts_with("https://") {
            return Err(format!("{url}: a JWKS URL must be https"));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .timeout(Duration::from_secs(10));
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        Ok(JwksSource::Url {
            url: url.to_owned(),
            client,
        })
    }

    pub async fn load(&self) -> Result<JwkSet, String> {
        match self {
            JwksSource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("{self}: {e}"))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{self} is not a JSON Web Key Set: {e}"))
            }
            JwksSource::Url { url, client } => {
                let response = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("{self}: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("{self}: HTTP {}", response.status()));
                }
                response
                    .json::<JwkSet>()
                    .await
                    .map_err(|e| format!("{self} is not a JSON Web Key Set: {e}"))
            }
        }
    }

    /// Reloads the key set into `verifier` every `every`; a failure is logged and the last
    /// good set stays in use.
    pub fn spawn_refresh(self, verifier: TokenVerifier, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match self
                    .load()
                    .await
                    .and_then(|jwks| verifier.replace_keys(&jwks))
                {
                    Ok(n) => {
                        metrics::counter!("signaling_jwks_refresh_total", "result" => "ok")
                            .increment(1);
                        tracing::debug!(source = %self, keys = n, "JWKS refreshed");
                    }
                    Err(e) => {
                        metrics::counter!("signaling_jwks_refresh_total", "result" => "failed")
                            .increment(1);
                        tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good key set");
                    }
                }
            }
        });
    }
}
