//! What a join costs before any media: verifying its session token (EdDSA and ES256).
//! Run: `cargo bench -p bench --bench session_token`.

use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use signaling::dev_issuer::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer, dev_claims};
use signaling::session_token::TokenVerifier;
use std::hint::black_box;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn token_verification(c: &mut Criterion) {
    let issuer = DevIssuer::generate().expect("key");
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut jwks = serde_json::to_value(issuer.jwks()).expect("jwks");
    jwks["keys"].as_array_mut().expect("keys").push(
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]),
                                 "y": b64(&point[33..65]), "kid": "es", "alg": "ES256"}),
    );
    let verifier = TokenVerifier::from_jwks(
        &serde_json::from_value(jwks).expect("jwks"),
        DEV_ISSUER,
        DEV_AUDIENCE,
        30,
    )
    .expect("verifier");
    let claims = dev_claims(
        "m1",
        "pat-1",
        "Anna",
        "patient",
        None,
        Some("unit-1"),
        now(),
        3600,
    );
    let ed = issuer.mint(&claims).expect("mint");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("es".into());
    let es = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref()))
        .expect("mint");
    assert!(verifier.verify(&ed).is_ok() && verifier.verify(&es).is_ok());

    let mut g = c.benchmark_group("session_token_verify");
    g.bench_function("eddsa", |b| b.iter(|| verifier.verify(black_box(&ed))));
    g.bench_function("es256", |b| b.iter(|| verifier.verify(black_box(&es))));
    g.finish();
}

criterion_group!(benches, token_verification);
criterion_main!(benches);
