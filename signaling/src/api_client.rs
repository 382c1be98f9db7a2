//! A system allowed on the meetings API (a booking system, a region's integration platform):
//! its name, which every audit line of its calls carries, the care units it may act for, and
//! the SHA-256 of its key — the key itself is never configuration.

use ring::digest::{SHA256, digest};

/// Units a client may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitScope {
    /// Every unit (`units = ["*"]`: a region's central booking system).
    All,
    /// Only these care unit ids.
    Only(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    pub name: String,
    pub units: UnitScope,
    key_sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiClientError {
    #[error("name: 1 to 64 characters of A-Z a-z 0-9 - _ .")]
    Name,
    #[error("units: at least one care unit id, or [\"*\"] for every unit")]
    Units,
    #[error("key_sha256: 64 hex digits (the SHA-256 of the key; `signaling api-key` makes one)")]
    KeyHash,
    #[error("name {0:?} is given to two clients")]
    DuplicateName(String),
    #[error("clients {0:?} and {1:?} have the same key")]
    DuplicateKey(String, String),
}

fn key_digest(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

/// The SHA-256 of a key as configuration holds it (lower-case hex).
pub fn key_sha256_hex(key: &str) -> String {
    key_digest(key).iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiClient {
    /// A client as configured: `key_sha256` in hex.
    pub fn new(name: &str, units: &[String], key_sha256: &str) -> Result<Self, ApiClientError> {
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(ApiClientError::Name);
        }
        let units = if units.iter().any(|u| u == "*") {
            if units.len() != 1 {
                return Err(ApiClientError::Units);
            }
            UnitScope::All
        } else if units.is_empty() || units.iter().any(|u| u.trim().is_empty()) {
            return Err(ApiClientError::Units);
        } else {
            UnitScope::Only(units.to_vec())
        };
        let hex = key_sha256.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiClientError::KeyHash);
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| ApiClientError::KeyHash)?;
        }
        Ok(Self {
            name: name.to_owned(),
            units,
            key_sha256: key,
        })
    }

    /// A client holding a key given in the clear (`--api-key`, development only): every unit.
    pub fn with_key(name: &str, key: &str) -> Self {
        Self {
            name: name.to_owned(),
            units: UnitScope::All,
            key_sha256: key_digest(key),
        }
    }

    /// Whether it may act for `unit`.
    pub fn may_act_for(&self, unit: &str) -> bool {
        match &self.units {
            UnitScope::All => true,
            UnitScope::Only(units) => units.iter().any(|u| u == unit),
        }
    }

    /// The client a presented key belongs to. The key is hashed before any comparison, so how
    /// long a comparison takes says nothing about the key.
    pub fn find<'a>(clients: &'a [ApiClient], presented: &str) -> Option<&'a ApiClient> {
        let given = key_digest(presented);
        clients.iter().find(|c| c.key_sha256 == given)
    }

    /// Checks a configured set: names and keys unique.
    pub fn check_set(clients: &[ApiClient]) -> Result<(), ApiClientError> {
        for (i, a) in clients.iter().enumerate() {
            for b in &clients[i + 1..] {
                if a.name == b.name {
                    return Err(ApiClientError::DuplicateName(a.name.clone()));
                }
                if a.key_sha256 == b.key_sha256 {
                    return Err(ApiClientError::DuplicateKey(a.name.clone(), b.name.clone()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_key_finds_its_client_and_only_its_units() {
        let a = ApiClient::new("cosmic", &units(&["unit-a"]), &key_sha256_hex("key-a")).unwrap();
        let b = ApiClient::new("central", &units(&["*"]), &key_sha256_hex("key-b")).unwrap();
        let set = [a, b];
        ApiClient::check_set(&set).unwrap();
        let found = ApiClient::find(&set, "key-a").unwrap();
        assert_eq!(found.name, "cosmic");
        assert!(found.may_act_for("unit-a") && !found.may_act_for("unit-b"));
        assert!(
            ApiClient::find(&set, "key-b")
                .unwrap()
                .may_act_for("unit-b")
        );
        assert!(ApiClient::find(&set, "key-c").is_none());
        assert!(ApiClient::find(&set, "").is_none());
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let h = key_sha256_hex("k");
        assert_eq!(
            ApiClient::new("", &units(&["u"]), &h),
            Err(ApiClientError::Name)
        );
        assert_eq!(
            ApiClient::new("a b", &units(&["u"]), &h),
            Err(ApiClientError::Name)
        );
        assert_eq!(
            ApiClient::new("a", &units(&[]), &h),
            Err(ApiClientError::Units)
        );
        assert_eq!(
            ApiClient::new("a", &units(&["*", "u"]), &h),
            Err(ApiClientError::Units)
        );
        assert_eq!(
            ApiClient::new("a", &units(&["u"]), "k"),
            Err(ApiClientError::KeyHash)
        );
        assert_eq!(
            ApiClient::new("a", &units(&["u"]), &"z".repeat(64)),
            Err(ApiClientError::KeyHash)
        );
        let a = ApiClient::new("a", &units(&["u"]), &h).unwrap();
        let b = ApiClient::new("b", &units(&["u"]), &h.to_uppercase()).unwrap();
        assert_eq!(
            ApiClient::check_set(&[a.clone(), b]),
            Err(ApiClientError::DuplicateKey("a".into(), "b".into()))
        );
        assert_eq!(
            ApiClient::check_set(&[a.clone(), a]),
            Err(ApiClientError::DuplicateName("a".into()))
        );
    }
}
