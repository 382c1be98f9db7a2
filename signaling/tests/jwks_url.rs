//! Keys from the identity provider's JWKS URL (https): loaded at start, refreshed, and kept
//! when a refresh fails. The rotated-in key is ES256, the other accepted algorithm.

mod support;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use signaling::dev_issuer::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer, dev_claims};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{now, start_with};

/// What the identity provider serves: a key set, or an error.
type Served = Arc<Mutex<Result<Value, StatusCode>>>;

async fn jwks(State(served): State<Served>) -> axum::response::Response {
    match served.lock().unwrap().clone() {
        Ok(v) => axum::Json(v).into_response(),
        Err(status) => status.into_response(),
    }
}

fn es256_key() -> (Vec<u8>, Value) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                     "kid": "idp-es256", "alg": "ES256", "use": "sig"});
    (pkcs8.as_ref().to_vec(), jwk)
}

// Multi-threaded: the identity provider serves while the service starts (a blocking read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_an_https_url_are_refreshed_and_survive_a_failed_refresh() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let idp_ed = DevIssuer::generate().unwrap();
    let (es_pkcs8, es_jwk) = es256_key();
    let served: Served = Arc::new(Mutex::new(Ok(serde_json::to_value(idp_ed.jwks()).unwrap())));

    // The identity provider: https with its own CA (a self-signed certificate).
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("hc-idp-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("idp-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.signing_key.serialize_pem().into_bytes(),
    )
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/jwks.json", get(jwks))
        .with_state(served.clone());
    tokio::spawn(axum_server::from_tcp_rustls(listener, tls).serve(app.into_make_service()));

    let url = format!("https://localhost:{port}/jwks.json");
    let server = start_with(&[
        "--jwks-url",
        &url,
        "--jwks-ca-file",
        ca.to_str().unwrap(),
        "--jwks-refresh-secs",
        "1",
        "--issuer",
        DEV_ISSUER,
        "--audience",
        DEV_AUDIENCE,
    ]);

    let claims = |sub: &str| dev_claims("m-idp", sub, "Anna", "patient", None, None, now(), 600);
    let ed_token = idp_ed.mint(&claims("p-ed")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("idp-es256".into());
    let es_token = jsonwebtoken::encode(
        &header,
        &claims("p-es"),
        &EncodingKey::from_ec_der(&es_pkcs8),
    )
    .unwrap();

    // Loaded at start: the provider's Ed25519 key is accepted, the ES256 one not yet.
    let mut c = server.connect(&ed_token).await;
    c.next_of("welcome").await;
    let (status, body) = server.refused(&format!("token={es_token}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_unknown_key"))
    );

    // The provider rotates to ES256: accepted after the next refresh.
    *served.lock().unwrap() = Ok(json!({"keys": [es_jwk]}));
    let mut accepted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let url = format!("{}/ws?token={es_token}", server.ws_base);
        if tokio_tungstenite::connect_async(&url).await.is_ok() {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the rotated key was picked up");
    let (status, body) = server.refused(&format!("token={ed_token}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_unknown_key")),
        "the retired key is gone"
    );

    // The provider fails: the last good set stays.
    *served.lock().unwrap() = Err(StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut c = server.connect(&es_token).await;
    c.next_of("welcome").await;
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("JWKS refresh failed"), "the failure is logged");
    let _ = std::fs::remove_dir_all(dir);
}
