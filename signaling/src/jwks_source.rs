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
                parse_jwks(&text).map_err(|e| format!("{self} is not a JSON Web Key Set: {e}"))
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
                let text = response.text().await.map_err(|e| format!("{self}: {e}"))?;
                parse_jwks(&text).map_err(|e| format!("{self} is not a JSON Web Key Set: {e}"))
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

/// A JSON Web Key Set, keeping the keys that parse: a key of a type the library does not know
/// (an identity provider may publish any) is passed over, not a reason to refuse the set.
fn parse_jwks(text: &str) -> Result<JwkSet, String> {
    #[derive(serde::Deserialize)]
    struct Keys {
        keys: Vec<serde_json::Value>,
    }
    let all: Keys = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let keys = all
        .keys
        .into_iter()
        .filter_map(|k| match serde_json::from_value(k) {
            Ok(jwk) => Some(jwk),
            Err(e) => {
                tracing::warn!(error = %e, "a JWKS key of a kind not known passed over");
                None
            }
        })
        .collect();
    Ok(JwkSet { keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region's identity provider publishes an RSA key, P-256 keys for encryption or key
    /// agreement (by `use`, `alg` or `key_ops`), a P-384 key and one of a kind no library
    /// knows beside its Ed25519 signing key: the set is taken, and
    /// only that key is used — a refresh that drops a withdrawn key is never refused for them.
    #[test]
    fn keys_not_used_are_passed_over_not_a_reason_to_refuse_the_set() {
        let ed = r#"{"kty":"OKP","crv":"Ed25519","kid":"ed-1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let text = format!(
            r#"{{"keys":[
                {{"kty":"RSA","kid":"rsa-1","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB"}},
                {{"kty":"EC","crv":"P-256","kid":"enc-1","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
                {{"kty":"EC","crv":"P-256","kid":"ecdh-1","alg":"ECDH-ES","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
                {{"kty":"EC","crv":"P-256","kid":"derive-1","key_ops":["deriveKey"],"x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
                {{"kty":"EC","crv":"P-384","kid":"p384-1","x":"iA7lWQLzVrKGEFjfGcfMHfTEZ2KnLhMwANuhbTNrCv51XxLnnnbFpabyTgP6TLZm","y":"CYTKMvPIPbwNt17Y3_SQxzVSN3Bi8JQDNXH7YnfvkXtfQNtvWhXhl1s4o0QKJZaP"}},
                {{"kty":"PQ","kid":"future-1","pub":"AAAA"}},
                {ed}
            ]}}"#
        );
        let jwks = parse_jwks(&text).unwrap();
        assert_eq!(jwks.keys.len(), 6, "the unknown kind passed over");
        let verifier = TokenVerifier::from_jwks(&jwks, "iss", "aud", 0).unwrap();
        assert_eq!(verifier.kids(), ["ed-1"]);
        // A set with none of its keys usable is still refused, naming why.
        let none = parse_jwks(r#"{"keys":[{"kty":"EC","crv":"P-384","kid":"p","x":"iA7lWQLzVrKGEFjfGcfMHfTEZ2KnLhMwANuhbTNrCv51XxLnnnbFpabyTgP6TLZm","y":"CYTKMvPIPbwNt17Y3_SQxzVSN3Bi8JQDNXH7YnfvkXtfQNtvWhXhl1s4o0QKJZaP"}]}"#).unwrap();
        let refused = verifier.replace_keys(&none).unwrap_err();
        assert!(refused.contains("P-256"), "{refused}");
        assert_eq!(verifier.kids(), ["ed-1"], "the last good set kept");
    }
}
