//! A participant's media session carried across a restart of this service: written to the
//! meeting store when the service stops, so the client that comes back with its resume key is
//! the same participant, with the same media session — which an SFU node kept running
//! meanwhile (its rooms outlive a lost control link).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sfu_proto::ParticipantId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedSession {
    /// SHA-256 of the resume key (hex): the store never holds a key that could take a
    /// participant over.
    pub key_digest: String,
    /// The pseudonymous subject that may come back with it, and its token's meeting.
    pub sub: String,
    pub mtg: String,
    pub participant: ParticipantId,
    /// The media session number the SFU runs for it.
    pub media_session: u32,
    /// Whether that session was connected when the service stopped.
    pub media_connected: bool,
    /// The SFU node it ran on (remote mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Unclaimed after this, the carry is void (the client rejoins afresh).
    pub until: Timestamp,
}

/// A media session a joining connection keeps (carried over, and still run by the SFU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptMedia {
    pub session: u32,
    /// Connected when the service stopped.
    pub connected: bool,
}

/// The digest of a resume key, as carried sessions are found by.
pub fn key_digest(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_sha256_in_hex() {
        assert_eq!(
            key_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
