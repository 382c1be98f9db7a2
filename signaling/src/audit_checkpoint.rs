//! Signed checkpoints of the audit chain. A checkpoint line carries an Ed25519 signature over
//! its own sequence number, the hash of the line before it (which the chain makes stand for
//! every earlier line), why it was written and when. Whoever can write the log file cannot
//! make one: the private key is configuration, never in the log, and `audit verify
//! --public-key` checks them. So an edited line with every later hash recomputed no longer
//! matches the next checkpoint's signature, and a log cut short no longer ends with the
//! service's closing checkpoint.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::path::Path;

/// Why a checkpoint was written.
pub const REASON_LINES: &str = "lines";
pub const REASON_INTERVAL: &str = "interval";
pub const REASON_ROTATE: &str = "rotate";
/// The service started: what it found is signed before anything new is written.
pub const REASON_OPEN: &str = "open";
/// The service stopped: nothing follows until it starts again.
pub const REASON_CLOSE: &str = "close";

/// What a checkpoint signs.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointFacts<'a> {
    /// The checkpoint line's own sequence number.
    pub seq: u64,
    /// The hash of the line before it.
    pub prev: &'a str,
    pub reason: &'a str,
    pub ts: &'a str,
    /// The most lines the service lets pass before the next checkpoint: a longer run without
    /// one means checkpoints were removed.
    pub every: u64,
}

impl CheckpointFacts<'_> {
    fn message(&self) -> Vec<u8> {
        format!(
            "hc-audit-checkpoint-v1\n{}\n{}\n{}\n{}\n{}",
            self.seq, self.prev, self.reason, self.ts, self.every
        )
        .into_bytes()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointKeyError {
    #[error("audit signing key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("audit public key: {0}")]
    Public(String),
}

/// The key id written in every checkpoint: the first 16 hex digits of its public key's
/// SHA-256, so a verifier given the wrong key says so.
fn key_id(public: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct CheckpointSigner {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    fn from_pkcs8(bytes: &[u8], path: &Path) -> Result<Self, CheckpointKeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes).map_err(|e| CheckpointKeyError::Key {
            path: path.display().to_string(),
            reason: format!("not an Ed25519 PKCS#8 key ({e})"),
        })?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, key_id })
    }

    /// Loads an existing key (a production key must not appear silently).
    pub fn load(path: &Path) -> Result<Self, CheckpointKeyError> {
        let bytes = std::fs::read(path).map_err(|e| CheckpointKeyError::Key {
            path: path.display().to_string(),
            reason: format!(
                "{e} (make one with `signaling audit keygen --out {}`)",
                path.display()
            ),
        })?;
        Self::from_pkcs8(&bytes, path)
    }

    /// Makes a new key at `path` (mode 0600); refuses to replace one.
    pub fn generate(path: &Path) -> Result<Self, CheckpointKeyError> {
        let fail = |reason: String| CheckpointKeyError::Key {
            path: path.display().to_string(),
            reason,
        };
        if path.exists() {
            return Err(fail(
                "exists already; a key is never replaced silently".into(),
            ));
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| fail("generating an Ed25519 key failed".into()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        crate::private_file::write(path, pkcs8.as_ref()).map_err(|e| fail(e.to_string()))?;
        Self::from_pkcs8(pkcs8.as_ref(), path)
    }

    /// The key at `path`, made when missing (--dev).
    pub fn load_or_create(path: &Path) -> Result<Self, CheckpointKeyError> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::generate(path)
        }
    }

    /// The public key, base64: what `audit verify --public-key` takes.
    pub fn public_key(&self) -> String {
        STANDARD.encode(self.pair.public_key().as_ref())
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The verifier of this key's checkpoints (the service checks its own log at start).
    pub fn verifier(&self) -> CheckpointVerifier {
        let public = self.pair.public_key().as_ref().to_vec();
        CheckpointVerifier {
            key_id: key_id(&public),
            public,
        }
    }

    /// The signature, base64.
    pub fn sign(&self, facts: &CheckpointFacts<'_>) -> String {
        STANDARD.encode(self.pair.sign(&facts.message()).as_ref())
    }
}

/// Checks checkpoints with the public key.
#[derive(Debug, Clone)]
pub struct CheckpointVerifier {
    public: Vec<u8>,
    key_id: String,
}

impl CheckpointVerifier {
    /// The public key as `audit keygen` printed it (base64 of 32 bytes), or a file holding it.
    pub fn parse(given: &str) -> Result<Self, CheckpointKeyError> {
        let text = match std::fs::read_to_string(given) {
            Ok(t) => t,
            Err(_) => given.to_owned(),
        };
        let public = STANDARD
            .decode(text.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| {
                CheckpointKeyError::Public(
                    "expected the base64 Ed25519 public key (32 bytes) `signaling audit \
                     public-key` prints, or a file holding it"
                        .into(),
                )
            })?;
        let key_id = key_id(&public);
        Ok(Self { public, key_id })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifies(&self, facts: &CheckpointFacts<'_>, signature: &str) -> bool {
        let Ok(sig) = STANDARD.decode(signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(&facts.message(), &sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_the_same_facts_and_key() {
        let dir = std::env::temp_dir().join(format!("cp-{}", rand::random::<u64>()));
        let signer = CheckpointSigner::generate(&dir.join("k")).unwrap();
        assert!(CheckpointSigner::generate(&dir.join("k")).is_err());
        let again = CheckpointSigner::load(&dir.join("k")).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        let verifier = CheckpointVerifier::parse(&signer.public_key()).unwrap();
        assert_eq!(verifier.key_id(), signer.key_id());
        let facts = CheckpointFacts {
            seq: 7,
            prev: "ab",
            reason: REASON_LINES,
            ts: "t",
            every: 100,
        };
        let sig = signer.sign(&facts);
        assert!(verifier.verifies(&facts, &sig));
        for other in [
            CheckpointFacts { seq: 8, ..facts },
            CheckpointFacts {
                prev: "ac",
                ..facts
            },
            CheckpointFacts {
                reason: REASON_CLOSE,
                ..facts
            },
        ] {
            assert!(!verifier.verifies(&other, &sig));
        }
        let stranger = CheckpointSigner::generate(&dir.join("k2")).unwrap();
        assert!(!verifier.verifies(&facts, &stranger.sign(&facts)));
        assert!(CheckpointVerifier::parse("not a key").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
