//! Every way a join is refused, on a running `signaling serve --dev`: the HTTP status and
//! code of each, an audit line with that code, and nobody joined. A malformed message gets an
//! error reply and affects nobody else.

mod support;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use signaling::dev_issuer::{DevIssuer, dev_claims};
use support::{API_KEY, SendText, now, start};

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_code_and_audited() {
    let server = start();
    let good = dev_claims("m1", "s1", "Anna", "patient", None, None, now(), 600);
    let mint = |c: &signaling::session_token::Claims| server.issuer.mint(c).unwrap();

    let mut expired = good.clone();
    expired.nbf = now() - 7200;
    expired.exp = now() - 3600;
    let mut early = good.clone();
    early.nbf = now() + 3600;
    early.exp = now() + 7200;
    let mut iss = good.clone();
    iss.iss = "https://someone-else.example".into();
    let mut aud = good.clone();
    aud.aud = "someone-else".into();
    let mut role = good.clone();
    role.role = "surgeon".into();
    let mut clinician = good.clone();
    clinician.role = "clinician".into();
    let mut pnr = good.clone();
    pnr.sub = "19121212-1212".into();
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(&good).unwrap())
    );
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(server.issuer.kid.clone());
    let hmac = jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(b"guessable")).unwrap();
    let signed = mint(&good);
    let (rest, sig) = signed.rsplit_once('.').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[3] = if sig[3] == b'A' { b'B' } else { b'A' };
    let bad_signature = format!("{rest}.{}", String::from_utf8(sig).unwrap());
    let other_key = DevIssuer::generate().unwrap().mint(&good).unwrap();

    let cases = [
        ("".to_owned(), 401, "token_missing"),
        ("not.a.jwt".to_owned(), 401, "token_malformed"),
        (unsigned, 401, "token_algorithm_not_allowed"),
        (hmac, 401, "token_algorithm_not_allowed"),
        (other_key, 401, "token_unknown_key"),
        (bad_signature, 401, "token_bad_signature"),
        (mint(&iss), 401, "token_wrong_issuer"),
        (mint(&aud), 401, "token_wrong_audience"),
        (mint(&expired), 401, "token_expired"),
        (mint(&early), 401, "token_not_yet_valid"),
        (mint(&role), 403, "token_unknown_role"),
        (mint(&clinician), 403, "token_clinician_without_hsa"),
        (mint(&pnr), 403, "token_subject_not_pseudonymous"),
    ];
    // Each from its own address: one source's refusals past the first are summarised (see
    // connection_abuse.rs); here every code gets its own line.
    for (i, (token, status, code)) in cases.iter().enumerate() {
        let (got, body) = server
            .refused_from(&format!("127.0.1.{}", i + 1), &format!("token={token}"))
            .await;
        assert_eq!((got, body["error"].as_str()), (*status, Some(*code)));
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{code} has a message"
        );
    }

    // Every refusal left an audit line with its code, and the chain verifies.
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["audit", "verify", "--running"])
        .arg(&server.audit)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let refused = server.audit_events("token_refused");
    assert_eq!(refused.len(), cases.len());
    for ((_, _, code), line) in cases.iter().zip(&refused) {
        assert_eq!(line["code"], *code);
    }
    assert!(server.audit_events("join").is_empty(), "nobody joined");
}

#[tokio::test]
async fn meetings_that_take_no_joins_refuse_them_with_a_reason_a_patient_understands() {
    let server = start();
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(3);
    let create = |id: &str, start: jiff::Timestamp, max: Option<u32>| {
        let mut body = json!({"id": id, "unit": "unit-1", "start": start.to_string(),
                              "end": (start + jiff::SignedDuration::from_mins(30)).to_string()});
        if let Some(m) = max {
            body["max_participants"] = m.into();
        }
        body
    };
    let soon = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5);
    for (id, start, max) in [
        ("later", later, None),
        ("cancelled", soon, None),
        ("small", soon, Some(1)),
    ] {
        let (status, body) = server
            .api(
                "POST",
                "/api/v1/meetings",
                Some(API_KEY),
                Some(create(id, start, max)),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = server
        .api(
            "POST",
            "/api/v1/meetings/cancelled/cancel",
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // The link names meeting m1; the token is for m2.
    let t = server.token("m2", "p-mismatch", "Anna", "patient");
    let (status, body) = server.refused(&format!("token={t}&meeting=m1")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("meeting_mismatch"))
    );

    let t = server.token("later", "p-early", "Anna", "patient");
    let (status, body) = server.refused(&format!("token={t}&meeting=later")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("meeting_not_open"))
    );
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Ditt besök börjar") && msg.contains("Väntrummet öppnar"),
        "{msg}"
    );
    assert!(body["opens_at"].as_str().is_some());

    let t = server.token("cancelled", "p-cancel", "Anna", "patient");
    let (status, body) = server.refused(&format!("token={t}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("meeting_cancelled"))
    );

    let c = server.token("small", "c-small", "Dr Berg", "clinician");
    let mut clinician = server.connect(&c).await;
    assert_eq!(clinician.next_of("welcome").await["type"], "welcome");
    let t = server.token("small", "p-full", "Anna", "patient");
    let (status, body) = server.refused(&format!("token={t}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("meeting_full"))
    );

    // A meeting the clinician ended takes nobody back.
    let c = server.token("m-end", "c-end", "Dr Berg", "clinician");
    let mut clinician = server.connect(&c).await;
    clinician.next_of("welcome").await;
    clinician.send(json!({"type": "end_meeting"})).await;
    let (closing, code) = clinician.closed().await;
    assert_eq!(
        (closing["reason"].as_str(), code),
        (Some("meeting_ended"), Some(4003))
    );
    let (status, body) = server.refused(&format!("token={c}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("meeting_over"))
    );

    // The join check before the camera opens gives the same answer.
    let t = server.token("cancelled", "p-cancel", "Anna", "patient");
    let (status, body) = server
        .api(
            "POST",
            "/join",
            None,
            Some(json!({"token": t, "meeting": "cancelled"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("meeting_cancelled"))
    );

    let refused = server.audit_events("join_refused");
    let codes: Vec<&str> = refused.iter().filter_map(|l| l["code"].as_str()).collect();
    assert_eq!(
        codes,
        [
            "meeting_mismatch",
            "meeting_not_open",
            "meeting_cancelled",
            "meeting_full",
            "meeting_over",
            // (p-cancel's second refusal within the minute is counted for its subject's
            // summary line, not written at once: see `token_refusals.rs`.)
        ]
    );
    for sub in ["p-mismatch", "p-early", "p-cancel", "p-full"] {
        assert!(
            !server
                .audit_events("join")
                .iter()
                .any(|l| l["subject"] == sub),
            "{sub} did not join"
        );
    }
}

#[tokio::test]
async fn a_malformed_message_gets_an_error_and_affects_nobody_else() {
    let server = start();
    let mut a = server
        .connect(&server.token("m2", "sa", "Dr Anna", "clinician"))
        .await;
    assert_eq!(a.next_of("welcome").await["state"], "admitted");
    let mut b = server
        .connect(&server.token("m2", "sb", "Dr Bo", "clinician"))
        .await;
    let welcome_b = b.next_of("welcome").await;
    assert_eq!(
        welcome_b["participants"][0]["name"], "Dr Anna",
        "Bo sees who is there"
    );
    assert_eq!(a.next_of("participant_joined").await["name"], "Dr Bo");
    a.drain(std::time::Duration::from_millis(200)).await;
    b.drain(std::time::Duration::from_millis(200)).await;

    for garbage in [
        "{not json",
        r#"{"type":"launch_missiles"}"#,
        r#"{"type":"offer"}"#,
    ] {
        a.ws.send_text(garbage).await;
        let reply = a.next().await;
        assert_eq!(reply["type"], "error", "reply to {garbage}");
        assert_eq!(reply["code"], "bad_message");
    }
    // A bad SDP is read as the SFU would read it and refused before reaching it; the sender
    // is told why.
    a.send(json!({"type": "offer", "sdp": "v=0 nonsense"}))
        .await;
    let reply = a.next().await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_sdp"))
    );
    assert!(
        reply["message"].as_str().unwrap().contains("SDP"),
        "{reply}"
    );

    // Both connections still work, and Bo heard nothing of Anna's mistakes.
    a.send(json!({"type": "ping"})).await;
    assert_eq!(a.next().await["type"], "pong");
    b.send(json!({"type": "ping"})).await;
    assert_eq!(
        b.next().await["type"],
        "pong",
        "Bo's next message is his own pong"
    );
}
