//! The development issuer: an Ed25519 key, its JWKS, and token minting. For development,
//! tests and regions without an identity provider of their own; production verifies tokens
//! from the region's booking system against its JWKS.

use crate::session_token::Claims;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::path::Path;

pub const DEV_ISSUER: &str = "https://dev-issuer.invalid";
pub const DEV_AUDIENCE: &str = "healthcare-sfu";

pub struct DevIssuer {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    pub kid: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    pub fn generate() -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = format!("dev-{}", hex_prefix(digest.as_ref()));
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            public,
            kid,
        })
    }

    /// Loads an existing key (a production signing key must not appear silently).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "reading signing key {}: {e} (create one with `signaling token jwks --key {}`)",
                path.display(),
                path.display()
            )
        })?;
        Self::from_pkcs8(&bytes).map_err(|e| anyhow::anyhow!("signing key {}: {e}", path.display()))
    }

    /// Loads the key at `path`, creating it (mode 0600) when missing.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading signing key {}: {e}", path.display()))?;
            return Self::from_pkcs8(&bytes)
                .map_err(|e| anyhow::anyhow!("signing key {}: {e}", path.display()));
        }
        let issuer = Self::generate()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::private_file::write(path, &issuer.pkcs8)
            .map_err(|e| anyhow::anyhow!("writing signing key {}: {e}", path.display()))?;
        Ok(issuer)
    }

    pub fn jwks(&self) -> JwkSet {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public);
        let json = serde_json::json!({
            "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig" }]
        });
        serde_json::from_value(json).expect("static JWKS shape")
    }

    pub fn mint(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(encode(
            &header,
            claims,
            &EncodingKey::from_ed_der(&self.pkcs8),
        )?)
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Builds claims for a dev token valid from now for `ttl_secs`.
#[allow(clippy::too_many_arguments)]
pub fn dev_claims(
    meeting: &str,
    sub: &str,
    name: &str,
    role: &str,
    hsa: Option<&str>,
    unit: Option<&str>,
    now_unix: i64,
    ttl_secs: i64,
) -> Claims {
    Claims {
        iss: DEV_ISSUER.into(),
        aud: DEV_AUDIENCE.into(),
        sub: sub.into(),
        name: name.into(),
        mtg: meeting.into(),
        role: role.into(),
        hsa: hsa.map(str::to_owned),
        unit: unit.map(str::to_owned),
        companion_of: None,
        nbf: now_unix - 5,
        exp: now_unix + ttl_secs,
        jti: format!("{:016x}", rand::random::<u64>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_token::{Audience, TokenError, TokenVerifier};

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn verifier(issuer: &DevIssuer) -> TokenVerifier {
        TokenVerifier::from_jwks(&issuer.jwks(), DEV_ISSUER, DEV_AUDIENCE, 30).unwrap()
    }

    #[test]
    fn minted_token_verifies_and_each_refusal_is_distinct() {
        let issuer = DevIssuer::generate().unwrap();
        let v = verifier(&issuer);
        let good = dev_claims("m1", "s1", "Anna", "patient", None, None, now(), 600);
        let session = v.verify(&issuer.mint(&good).unwrap()).unwrap();
        assert_eq!(session.claims.mtg, "m1");

        let mut expired = good.clone();
        expired.exp = now() - 3600;
        expired.nbf = now() - 7200;
        assert_eq!(
            v.verify(&issuer.mint(&expired).unwrap()).unwrap_err(),
            TokenError::Expired
        );

        let mut early = good.clone();
        early.nbf = now() + 3600;
        assert_eq!(
            v.verify(&issuer.mint(&early).unwrap()).unwrap_err(),
            TokenError::NotYetValid
        );

        let mut iss = good.clone();
        iss.iss = "https://evil.invalid".into();
        assert_eq!(
            v.verify(&issuer.mint(&iss).unwrap()).unwrap_err(),
            TokenError::WrongIssuer
        );

        let mut aud = good.clone();
        aud.aud = "other".into();
        assert_eq!(
            v.verify(&issuer.mint(&aud).unwrap()).unwrap_err(),
            TokenError::WrongAudience
        );
        // An array of audiences (RFC 7519) holding ours is ours; one without it is not.
        aud.aud = Audience::Several(vec!["other".into(), DEV_AUDIENCE.into()]);
        assert_eq!(
            v.verify(&issuer.mint(&aud).unwrap()).unwrap().claims.mtg,
            "m1"
        );
        aud.aud = Audience::Several(vec!["other".into(), "another".into()]);
        assert_eq!(
            v.verify(&issuer.mint(&aud).unwrap()).unwrap_err(),
            TokenError::WrongAudience
        );

        let mut role = good.clone();
        role.role = "admin".into();
        assert_eq!(
            v.verify(&issuer.mint(&role).unwrap()).unwrap_err(),
            TokenError::UnknownRole
        );

        let mut clinician = good.clone();
        clinician.role = "clinician".into();
        assert_eq!(
            v.verify(&issuer.mint(&clinician).unwrap()).unwrap_err(),
            TokenError::ClinicianWithoutHsa
        );

        // Another key with the same kid: bad signature. Another kid: unknown key.
        let other = DevIssuer::generate().unwrap();
        let forged = other.mint(&good).unwrap();
        assert_eq!(v.verify(&forged).unwrap_err(), TokenError::UnknownKey);
        let mut parts: Vec<String> = issuer
            .mint(&good)
            .unwrap()
            .split('.')
            .map(str::to_owned)
            .collect();
        parts[2] = other
            .mint(&good)
            .unwrap()
            .split('.')
            .nth(2)
            .unwrap()
            .to_owned();
        assert_eq!(
            v.verify(&parts.join(".")).unwrap_err(),
            TokenError::BadSignature
        );

        // alg none and HMAC are refused outright.
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64("{}"));
        assert!(matches!(
            v.verify(&none),
            Err(TokenError::AlgorithmNotAllowed(_))
        ));
        let hs = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64("{}")
        );
        assert!(matches!(
            v.verify(&hs),
            Err(TokenError::AlgorithmNotAllowed(_))
        ));
        assert_eq!(v.verify("garbage").unwrap_err(), TokenError::Malformed);
        assert_eq!(v.verify("").unwrap_err(), TokenError::Missing);
    }
}
