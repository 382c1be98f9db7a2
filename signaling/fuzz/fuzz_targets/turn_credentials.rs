//! TURN configuration and credentials (`src/turn_credentials.rs`, compiled here on its own):
//! arbitrary URLs, secrets and lifetimes to `TurnConfig::new`; every accepted configuration
//! then makes credentials for an arbitrary participant id at an arbitrary time. Checks: no
//! panic; an accepted URL has a scheme, a host and at most a known transport; the username is
//! `<expiry>:<participant>` with the expiry the lifetime after the time given; the password is
//! the base64 of a 20-byte HMAC-SHA1 and differs for another participant.
//!
//! Input: the first byte is the lifetime in minutes × 16 (0..=4080 min), the second the
//! participant id's length; the rest is split at `\n` into the id, the secret and the URLs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};

#[path = "../../src/turn_credentials.rs"]
#[allow(dead_code)]
mod turn_credentials;

use turn_credentials::TurnConfig;

fuzz_target!(|data: &[u8]| {
    let [ttl, id_len, rest @ ..] = data else {
        return;
    };
    let ttl = Duration::from_secs(u64::from(*ttl) * 16 * 60);
    let (id, rest) = rest.split_at(usize::from(*id_len).min(rest.len()));
    let participant = String::from_utf8_lossy(id);
    let mut parts = rest.split(|&b| b == b'\n');
    let secret = parts.next().unwrap_or_default().to_vec();
    let urls: Vec<String> = parts
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .collect();
    let Ok(config) = TurnConfig::new(urls.clone(), secret, ttl) else {
        return;
    };
    for url in config.urls() {
        let rest = url
            .strip_prefix("turns:")
            .or_else(|| url.strip_prefix("turn:"))
            .expect("a TURN scheme");
        assert!(
            !rest.is_empty() && !rest.starts_with('?'),
            "a host: {url:?}"
        );
        if let Some((_, q)) = rest.split_once('?') {
            assert!(q == "transport=udp" || q == "transport=tcp", "{url:?}");
        }
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ice = config.credentials(&participant, now);
    let expected_expiry = (now + ttl).duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(ice.username, format!("{expected_expiry}:{participant}"));
    assert_eq!(ice.credential.len(), 28, "base64 of 20 bytes");
    assert_eq!(ice.urls, urls);
    let other = config.credentials(&format!("{participant}x"), now);
    assert_ne!(ice.credential, other.credential);
});
