//! Session tokens: JWTs (EdDSA or ES256, `kid` selects the key) verified against a JWKS.
//! Every refusal has its own code and HTTP status so clients and the audit trail can tell
//! them apart.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Clinician,
    Patient,
    Companion,
    Interpreter,
    /// A clinician of another care unit invited into a visit by its clinician (a
    /// multidisciplinary conference): staff, audited with their own HSA-id and unit.
    Consultant,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "clinician" => Ok(Role::Clinician),
            "patient" => Ok(Role::Patient),
            "companion" => Ok(Role::Companion),
            "interpreter" => Ok(Role::Interpreter),
            "consultant" => Ok(Role::Consultant),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

/// A token's `aud`: one audience, or several (RFC 7519 §4.1.3, as many identity providers
/// write it). Verification requires this service's audience among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Several(Vec<String>),
}

impl From<&str> for Audience {
    fn from(audience: &str) -> Self {
        Audience::One(audience.to_owned())
    }
}

/// Claims of a session token. `sub` is pseudonymous, never a personal identity number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: Audience,
    pub sub: String,
    pub name: String,
    pub mtg: String,
    /// Kept as a string so an unknown role is refused with its own error, not a parse error.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsa: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// A companion's patient: the `sub` of the patient they come with (a clinician can admit
    /// them together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub companion_of: Option<String>,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Session {
    pub claims: Claims,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no session token was given")]
    Missing,
    #[error("the session token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm {0} is not accepted (EdDSA or ES256 only)")]
    AlgorithmNotAllowed(String),
    #[error("the token's key id is not in the configured key set")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token was issued by an issuer this service does not trust")]
    WrongIssuer,
    #[error("the token is meant for another service")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error(
        "the token's role is not one of clinician, patient, companion, interpreter, consultant"
    )]
    UnknownRole,
    #[error("a clinician or consultant token must carry an HSA-id")]
    ClinicianWithoutHsa,
    #[error("a consultant token must carry the consultant's care unit")]
    ConsultantWithoutUnit,
    #[error("companion_of belongs in a companion's token only")]
    CompanionOfWithoutCompanion,
    #[error("the token's subject looks like a personal identity number; it must be pseudonymous")]
    SubjectNotPseudonymous,
    #[error("the token lacks a required claim: {0}")]
    MissingClaim(String),
    #[error("the token's {0} claim looks like it holds a personal identity number")]
    ClaimNotPseudonymous(&'static str),
    #[error("the token is valid for longer than this service accepts ({0} h at most)")]
    LifetimeTooLong(u64),
    #[error(
        "the token's hsa is not an HSA-id (SE, an organisation number, a dash and an extension)"
    )]
    BadHsa,
}

impl TokenError {
    /// Stable machine-readable code, sent to clients and written to the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed => "token_malformed",
            TokenError::AlgorithmNotAllowed(_) => "token_algorithm_not_allowed",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::WrongIssuer => "token_wrong_issuer",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::UnknownRole => "token_unknown_role",
            TokenError::ClinicianWithoutHsa => "token_clinician_without_hsa",
            TokenError::ConsultantWithoutUnit => "token_consultant_without_unit",
            TokenError::CompanionOfWithoutCompanion => "token_companion_of_not_companion",
            TokenError::SubjectNotPseudonymous => "token_subject_not_pseudonymous",
            TokenError::MissingClaim(_) => "token_missing_claim",
            TokenError::ClaimNotPseudonymous(_) => "token_claim_not_pseudonymous",
            TokenError::LifetimeTooLong(_) => "token_lifetime_too_long",
            TokenError::BadHsa => "token_bad_hsa",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            TokenError::UnknownRole
            | TokenError::ClinicianWithoutHsa
            | TokenError::ConsultantWithoutUnit
            | TokenError::CompanionOfWithoutCompanion
            | TokenError::SubjectNotPseudonymous
            | TokenError::ClaimNotPseudonymous(_)
            | TokenError::BadHsa => 403,
            _ => 401,
        }
    }
}

type KeyMap = HashMap<String, (DecodingKey, Algorithm)>;

/// Verifies session tokens. Clones share the key set, which a JWKS refresh replaces whole.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<RwLock<Arc<KeyMap>>>,
    /// The keys the last load passed over, and why: a refresh names only keys newly passed
    /// over (the same ones every few minutes would bury the log).
    passed_over: Arc<Mutex<Vec<(String, String)>>>,
    /// Keys of this service's own minter, kept across refreshes of the region's JWKS.
    pinned: Arc<KeyMap>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
    /// Longest validity a token may have left (`exp` minus the later of `nbf` and now).
    max_lifetime_secs: u64,
}

/// Tokens valid for longer than this are refused unless configured otherwise: a link for a
/// visit today, not one that opens a meeting for years.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// An HSA-id: `SE`, the organisation number (10 digits, or 12 with the `16` prefix), a dash
/// and an alphanumeric extension; 31 characters at most.
pub fn is_hsa_id(s: &str) -> bool {
    static HSA: std::sync::LazyLock<regex_lite::Regex> = std::sync::LazyLock::new(|| {
        regex_lite::Regex::new(r"^SE(?:16)?[0-9]{10}-[A-Za-z0-9]{1,17}$").expect("HSA pattern")
    });
    s.len() <= 31 && HSA.is_match(s)
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kids", &self.kids())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The keys of `jwks` this service verifies with: Ed25519 (EdDSA) and P-256 (ES256) signing
/// keys with a `kid`. Others a region's identity provider publishes beside them (RSA, other
/// curves, encryption keys, keys without a `kid`, one that does not decode) are passed over
/// and named in the log — not a reason to refuse the whole set, which at a refresh would keep
/// trusting a key the region has withdrawn.
fn key_map(jwks: &JwkSet) -> (KeyMap, Vec<(String, String)>) {
    use jsonwebtoken::jwk::{
        AlgorithmParameters, EllipticCurve, KeyAlgorithm, KeyOperations, PublicKeyUse,
    };
    let mut keys = HashMap::new();
    let mut passed_over = Vec::new();
    for jwk in &jwks.keys {
        let kid = jwk.common.key_id.clone();
        let common = &jwk.common;
        let alg = match &jwk.algorithm {
            _ if common.public_key_use == Some(PublicKeyUse::Encryption) => {
                Err("an encryption key")
            }
            _ if common
                .key_operations
                .as_ref()
                .is_some_and(|ops| !ops.contains(&KeyOperations::Verify)) =>
            {
                Err("its key_ops do not include verify")
            }
            _ if common
                .key_algorithm
                .is_some_and(|a| !matches!(a, KeyAlgorithm::EdDSA | KeyAlgorithm::ES256)) =>
            {
                Err("its alg is neither EdDSA nor ES256")
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Ok(Algorithm::EdDSA)
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Ok(Algorithm::ES256)
            }
            _ => Err("neither an Ed25519 nor a P-256 key"),
        };
        let key = match (kid, alg) {
            (None, _) => Err(("(none)".to_owned(), "no \"kid\"".to_owned())),
            (Some(kid), Err(why)) => Err((kid, why.to_owned())),
            (Some(kid), Ok(alg)) => match DecodingKey::from_jwk(jwk) {
                Ok(key) => Ok((kid, key, alg)),
                Err(e) => Err((kid, e.to_string())),
            },
        };
        match key {
            Ok((kid, key, alg)) => {
                keys.insert(kid, (key, alg));
            }
            Err(passed) => passed_over.push(passed),
        }
    }
    (keys, passed_over)
}

/// Names in the log the keys passed over that `before` did not hold; returns their kids.
fn name_passed_over<'a>(now: &'a [(String, String)], before: &[(String, String)]) -> Vec<&'a str> {
    let mut named = Vec::new();
    for (kid, why) in now.iter().filter(|k| !before.contains(k)) {
        tracing::warn!(kid = %kid, %why, "a JWKS key passed over (not used to verify tokens)");
        named.push(kid.as_str());
    }
    named
}

impl TokenVerifier {
    pub fn from_jwks(
        jwks: &JwkSet,
        issuer: &str,
        audience: &str,
        leeway_secs: u64,
    ) -> Result<Self, String> {
        let (keys, passed_over) = key_map(jwks);
        let _ = name_passed_over(&passed_over, &[]);
        if keys.is_empty() {
            return Err("the JWKS holds no Ed25519 or P-256 signing key with a \"kid\"".into());
        }
        Ok(Self {
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            passed_over: Arc::new(Mutex::new(passed_over)),
            pinned: Arc::new(HashMap::new()),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_secs,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        })
    }

    /// The longest validity a token may have left (`tokens.max_lifetime_hours`).
    pub fn with_max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime_secs = secs.max(60);
        self
    }

    pub fn max_lifetime_secs(&self) -> u64 {
        self.max_lifetime_secs
    }

    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Also accepts tokens signed by these keys (this service's own minter), whatever the
    /// region's JWKS holds.
    pub fn pin(mut self, jwks: &JwkSet) -> Result<Self, String> {
        let (pinned, passed_over) = key_map(jwks);
        let _ = name_passed_over(&passed_over, &[]);
        if pinned.is_empty() {
            return Err("no key to pin".into());
        }
        self.pinned = Arc::new(pinned);
        Ok(self)
    }

    /// Replaces the key set (a JWKS refresh). A set that does not parse or holds no key it
    /// can use is refused and the current one kept; keys it cannot use are passed over.
    pub fn replace_keys(&self, jwks: &JwkSet) -> Result<usize, String> {
        let (keys, passed_over) = key_map(jwks);
        {
            let mut before = self.passed_over.lock().unwrap_or_else(|e| e.into_inner());
            let _ = name_passed_over(&passed_over, &before);
            *before = passed_over;
        }
        if keys.is_empty() {
            return Err("the JWKS holds no Ed25519 or P-256 signing key with a \"kid\"".into());
        }
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    pub fn kids(&self) -> Vec<String> {
        let keys = self.current();
        let mut kids: Vec<String> = keys.keys().chain(self.pinned.keys()).cloned().collect();
        kids.sort();
        kids
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    fn current(&self) -> Arc<KeyMap> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn verify(&self, token: &str) -> Result<Session, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        // The header is checked by hand first so `alg: none` and HMAC get their own refusal
        // (jsonwebtoken would only say "invalid algorithm").
        let header_alg = raw_header_alg(token).ok_or(TokenError::Malformed)?;
        if !matches!(header_alg.as_str(), "EdDSA" | "ES256") {
            return Err(TokenError::AlgorithmNotAllowed(header_alg));
        }
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let keys = self.current();
        let (key, alg) = keys
            .get(&kid)
            .or_else(|| self.pinned.get(&kid))
            .ok_or(TokenError::UnknownKey)?;
        if header.alg != *alg {
            return Err(TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let mut v = Validation::new(*alg);
        v.leeway = self.leeway_secs;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        use jsonwebtoken::errors::ErrorKind as K;
        let data = decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            K::InvalidSignature => TokenError::BadSignature,
            K::InvalidIssuer => TokenError::WrongIssuer,
            K::InvalidAudience => TokenError::WrongAudience,
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
            K::InvalidAlgorithm => TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)),
            K::Json(_) => {
                TokenError::MissingClaim("a claim is missing or has the wrong type".into())
            }
            _ => TokenError::Malformed,
        })?;
        let claims = data.claims;
        // A link for years would keep an unbooked meeting (and the link's holder) going.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let remaining = claims.exp.saturating_sub(claims.nbf.max(now));
        if remaining > self.max_lifetime_secs as i64 + self.leeway_secs as i64 {
            return Err(TokenError::LifetimeTooLong(self.max_lifetime_secs / 3600));
        }
        // Nothing downstream (the audit log, the API, the service's own log) may ever hold an
        // identity number, whichever claim carries it.
        if crate::identity_number::looks_like_identity_number(&claims.sub) {
            return Err(TokenError::SubjectNotPseudonymous);
        }
        let mut fields = vec![("mtg", claims.mtg.as_str()), ("name", claims.name.as_str())];
        fields.extend(claims.unit.as_deref().map(|u| ("unit", u)));
        fields.extend(claims.hsa.as_deref().map(|h| ("hsa", h)));
        fields.extend(claims.companion_of.as_deref().map(|c| ("companion_of", c)));
        crate::identity_number::check_fields(fields)
            .map_err(|e| TokenError::ClaimNotPseudonymous(e.field))?;
        let role: Role = claims.role.parse().map_err(|_| TokenError::UnknownRole)?;
        let staff = matches!(role, Role::Clinician | Role::Consultant);
        if staff && claims.hsa.as_deref().is_none_or(str::is_empty) {
            return Err(TokenError::ClinicianWithoutHsa);
        }
        if role == Role::Consultant && claims.unit.as_deref().is_none_or(str::is_empty) {
            return Err(TokenError::ConsultantWithoutUnit);
        }
        if claims.companion_of.is_some() && role != Role::Companion {
            return Err(TokenError::CompanionOfWithoutCompanion);
        }
        if claims
            .hsa
            .as_deref()
            .is_some_and(|h| !h.is_empty() && !is_hsa_id(h))
        {
            return Err(TokenError::BadHsa);
        }
        Ok(Session { claims, role })
    }
}

fn raw_header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refresh names in the log only keys passed over that the load before did not pass over:
    /// an RSA key the region always publishes is named once, not every few minutes.
    #[test]
    fn keys_passed_over_are_named_once_not_at_every_refresh() {
        let over = |kids: &[&str]| -> Vec<(String, String)> {
            kids.iter()
                .map(|k| ((*k).to_owned(), "an encryption key".to_owned()))
                .collect()
        };
        let first = over(&["rsa-1", "enc-1"]);
        assert_eq!(name_passed_over(&first, &[]), ["rsa-1", "enc-1"]);
        assert!(name_passed_over(&first, &first).is_empty());
        let later = over(&["rsa-1", "enc-1", "p384-1"]);
        assert_eq!(name_passed_over(&later, &first), ["p384-1"]);
        // A key passed over for another reason than before is named again.
        let mut changed = later.clone();
        changed[0].1 = "no \"kid\"".into();
        assert_eq!(name_passed_over(&changed, &later), ["rsa-1"]);
    }
}
