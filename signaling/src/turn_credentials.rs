//! Short-lived TURN credentials for the web client (the "TURN REST API" scheme coturn checks
//! with `use-auth-secret`): the username is `<expiry, Unix seconds>:<participant id>` and the
//! password is base64(HMAC-SHA1(shared secret, username)). The relay verifies them with the
//! same secret and refuses them after the expiry; nothing is stored per participant.

use base64::Engine;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the service is configured with: the relay's URLs and the secret shared with it.
#[derive(Clone)]
pub struct TurnConfig {
    urls: Vec<String>,
    secret: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TurnConfigError {
    #[error("`{0}` is not a TURN URL (turn:host[:port][?transport=udp|tcp] or turns:…)")]
    BadUrl(String),
    #[error("TURN URLs are set but no shared secret (turn.secret_file, --turn-secret-file)")]
    NoSecret,
    #[error("the TURN shared secret is shorter than 16 bytes")]
    ShortSecret,
    #[error("the TURN credential lifetime must be between 1 minute and 48 hours")]
    BadTtl,
}

/// One entry of `RTCConfiguration.iceServers`, as the client uses it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// Checks a `turn:`/`turns:` URL (RFC 7065): a host, an optional port, an optional transport.
fn is_turn_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("turns:")
        .or_else(|| url.strip_prefix("turn:"))
    else {
        return false;
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    if let Some(q) = query
        && q != "transport=udp"
        && q != "transport=tcp"
    {
        return false;
    }
    let host = match hostport.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || hostport.starts_with('[') => {
            if h.contains(':') && !h.starts_with('[') {
                // A bare IPv6 address without brackets: the whole thing is the host.
                hostport
            } else {
                if port.parse::<u16>().map_or(true, |p| p == 0) {
                    return false;
                }
                h
            }
        }
        _ => hostport,
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
}

impl TurnConfig {
    pub fn new(urls: Vec<String>, secret: Vec<u8>, ttl: Duration) -> Result<Self, TurnConfigError> {
        if let Some(bad) = urls.iter().find(|u| !is_turn_url(u)) {
            return Err(TurnConfigError::BadUrl(bad.clone()));
        }
        if secret.is_empty() {
            return Err(TurnConfigError::NoSecret);
        }
        if secret.len() < 16 {
            return Err(TurnConfigError::ShortSecret);
        }
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(48 * 3600) {
            return Err(TurnConfigError::BadTtl);
        }
        Ok(Self { urls, secret, ttl })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Credentials for `participant` valid from `now` for the configured lifetime.
    pub fn credentials(&self, participant: &str, now: SystemTime) -> IceServer {
        let expiry = now
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        self.credentials_until(participant, expiry)
    }

    /// Credentials that expire at `expiry` (Unix seconds).
    pub fn credentials_until(&self, participant: &str, expiry: u64) -> IceServer {
        let username = format!("{expiry}:{participant}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.secret);
        let tag = ring::hmac::sign(&key, username.as_bytes());
        IceServer {
            urls: self.urls.clone(),
            username,
            credential: base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TurnConfig {
        TurnConfig::new(
            vec![
                "turns:turn.region.se:443?transport=tcp".into(),
                "turn:turn.region.se:3478".into(),
            ],
            b"0123456789abcdef-shared".to_vec(),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[test]
    fn the_password_is_the_rest_api_hmac_of_the_username() {
        // Computed independently: printf '1796169600:p-abc' | openssl dgst -sha1 -hmac
        // '0123456789abcdef-shared' -binary | base64
        let c = config().credentials_until("p-abc", 1_796_169_600);
        assert_eq!(c.username, "1796169600:p-abc");
        assert_eq!(c.credential, "4NGU8lB0bQBy4vjuOhbvycYL/z4=");
        assert_eq!(c.urls.len(), 2);
    }

    #[test]
    fn credentials_expire_after_the_lifetime() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let c = config().credentials("p-x", now);
        assert_eq!(c.username, "1800003600:p-x");
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let ttl = Duration::from_secs(3600);
        let secret = b"0123456789abcdef".to_vec();
        for bad in [
            "stun:turn.region.se",
            "turn:",
            "turns:host:0",
            "turns:host:99999",
            "turn:host?transport=sctp",
            "turn:ho st",
            "https://turn.region.se",
        ] {
            assert_eq!(
                TurnConfig::new(vec![bad.into()], secret.clone(), ttl).unwrap_err(),
                TurnConfigError::BadUrl(bad.into()),
                "{bad}"
            );
        }
        for good in [
            "turn:198.18.0.1",
            "turns:turn.region.se:443?transport=tcp",
            "turn:[2001:db8::1]:3478?transport=udp",
        ] {
            assert!(
                TurnConfig::new(vec![good.into()], secret.clone(), ttl).is_ok(),
                "{good}"
            );
        }
        let url = vec!["turn:x".to_owned()];
        assert_eq!(
            TurnConfig::new(url.clone(), vec![], ttl).unwrap_err(),
            TurnConfigError::NoSecret
        );
        assert_eq!(
            TurnConfig::new(url.clone(), b"short".to_vec(), ttl).unwrap_err(),
            TurnConfigError::ShortSecret
        );
        assert_eq!(
            TurnConfig::new(url, secret, Duration::from_secs(5)).unwrap_err(),
            TurnConfigError::BadTtl
        );
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let text = format!("{:?}", config());
        assert!(!text.contains("0123456789abcdef"));
    }
}
