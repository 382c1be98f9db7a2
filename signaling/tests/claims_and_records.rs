//! What tokens may carry and what the service keeps, against the running service: identity
//! numbers in any claim and any spelling, tokens valid for years, malformed HSA-ids, files
//! readable by others, and denials or ends forgotten once the token that made the meeting
//! expired (or the service restarted).

mod support;

use serde_json::{Value, json};
use signaling::dev_issuer::dev_claims;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use support::{API_KEY, Server, now, start, start_command, start_with};

fn mint(server: &Server, f: impl FnOnce(&mut signaling::session_token::Claims)) -> String {
    let mut c = dev_claims(
        "visit-c",
        "pat-1",
        "Anna",
        "patient",
        None,
        Some("unit-1"),
        now(),
        600,
    );
    f(&mut c);
    server.issuer.mint(&c).unwrap()
}

const SPELLINGS: [&str; 8] = [
    "19900101-1234",
    "1990-01-01-1234",
    "19900101 1234",
    "19900101_1234",
    "19900101\u{2013}1234",
    "19900101\u{00a0}1234",
    "\u{ff11}\u{ff19}\u{ff19}\u{ff10}\u{ff10}\u{ff11}\u{ff10}\u{ff11}\u{ff11}\u{ff12}\u{ff13}\u{ff14}",
    "900101.1234",
];

#[tokio::test]
async fn identity_numbers_are_refused_in_every_claim_and_spelling() {
    let server = start();
    let mut case = 0;
    for pnr in SPELLINGS {
        // Each refusal from its own address, so every one is audited on its own line.
        let mut refused = |token: String, expect: &'static str, claim: &'static str| {
            case += 1;
            let from = format!("127.0.2.{case}");
            let server = &server;
            async move {
                let (status, body) = server.refused_from(&from, &format!("token={token}")).await;
                assert_eq!(
                    (status, body["error"].as_str()),
                    (403, Some(expect)),
                    "{pnr:?} in {claim}"
                );
                if claim != "sub" {
                    assert!(body["reason"].as_str().unwrap().contains(claim), "{body}");
                }
            }
        };
        refused(
            mint(&server, |c| c.sub = pnr.into()),
            "token_subject_not_pseudonymous",
            "sub",
        )
        .await;
        refused(
            mint(&server, |c| c.mtg = format!("visit-{pnr}")),
            "token_claim_not_pseudonymous",
            "mtg",
        )
        .await;
        refused(
            mint(&server, |c| c.name = format!("Anna {pnr}")),
            "token_claim_not_pseudonymous",
            "name",
        )
        .await;
        refused(
            mint(&server, |c| c.unit = Some(format!("unit {pnr}"))),
            "token_claim_not_pseudonymous",
            "unit",
        )
        .await;
    }
    // A date in a meeting id is not a number: still fine.
    let ok = mint(&server, |c| c.mtg = "visit-2030-05-02".into());
    let mut client = server.connect(&ok).await;
    assert_eq!(
        client.next_of("welcome").await["meeting"],
        "visit-2030-05-02"
    );

    // The meetings API: neither a meeting id or unit nor a minted name may hold one.
    for pnr in SPELLINGS {
        let start = jiff::Timestamp::now();
        let end = start + jiff::SignedDuration::from_mins(30);
        let (status, body) = server
            .api("POST", "/api/v1/meetings", Some(API_KEY),
                 Some(json!({"id": format!("m-{pnr}").replace([' ', '\u{a0}', '\u{2013}'], "-"), "unit": "unit-1", "start": start.to_string(), "end": end.to_string()})))
            .await;
        assert_eq!(status, 422, "{pnr:?}: {body}");
        let (status, body) = server
            .api("POST", "/api/v1/meetings", Some(API_KEY),
                 Some(json!({"unit": format!("unit {pnr}"), "start": start.to_string(), "end": end.to_string()})))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some("invalid_meeting")),
            "{pnr:?}: {body}"
        );
        assert!(
            body["reason"].to_string().contains("unit") || body.to_string().contains("unit"),
            "{body}"
        );
    }
    let start = jiff::Timestamp::now();
    let (status, created) = server
        .api("POST", "/api/v1/meetings", Some(API_KEY),
             Some(json!({"unit": "unit-1", "start": start.to_string(), "end": (start + jiff::SignedDuration::from_mins(30)).to_string()})))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    for pnr in SPELLINGS {
        let (status, body) = server
            .api(
                "POST",
                &format!("/api/v1/meetings/{id}/tokens"),
                Some(API_KEY),
                Some(json!({"sub": "pat-9", "name": format!("Anna {pnr}"), "role": "patient"})),
            )
            .await;
        assert_eq!(status, 422, "{pnr:?}: {body}");
    }

    // None of it reached a log. (The audit chain's digests and the checkpoints' key id and
    // signature are left out of the search: random hex digits end in 1234 once in 65,536.)
    let audit: String = server
        .audit_text()
        .lines()
        .map(|l| {
            let mut line: Value = serde_json::from_str(l).unwrap();
            if let Some(fields) = line.as_object_mut() {
                for digest in ["hash", "prev", "key", "sig"] {
                    fields.remove(digest);
                }
            }
            line.to_string() + "\n"
        })
        .collect();
    let logs = [
        audit,
        std::fs::read_to_string(&server.log).unwrap(),
        server.stdout.lock().unwrap().clone(),
    ];
    for text in logs {
        for pnr in SPELLINGS {
            assert!(!text.contains(pnr), "{pnr:?} reached a log");
        }
        assert!(!text.contains("1234\""), "digits of it reached a log");
    }
}

#[tokio::test]
async fn tokens_valid_for_too_long_are_refused() {
    let server = start();
    let hundred_years = mint(&server, |c| c.exp = now() + 100 * 365 * 24 * 3600);
    let (status, body) = server
        .refused_from("127.0.3.1", &format!("token={hundred_years}"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_lifetime_too_long"))
    );
    // Valid since yesterday and for two more days: too long as well.
    let later = mint(&server, |c| {
        c.nbf = now() - 24 * 3600;
        c.exp = now() + 2 * 24 * 3600;
    });
    let (_, body) = server
        .refused_from("127.0.3.2", &format!("token={later}"))
        .await;
    assert_eq!(body["error"], "token_lifetime_too_long");
    // 23 hours is fine.
    let day = mint(&server, |c| c.exp = now() + 23 * 3600);
    server.connect(&day).await.next_of("welcome").await;

    // A deployment may allow less.
    let strict = start_with(&["--max-token-lifetime-hours", "1"]);
    let two_hours = strict
        .issuer
        .mint(&dev_claims(
            "v",
            "pat-1",
            "Anna",
            "patient",
            None,
            None,
            now(),
            7200,
        ))
        .unwrap();
    let (_, body) = strict
        .refused_from("127.0.3.3", &format!("token={two_hours}"))
        .await;
    assert_eq!(body["error"], "token_lifetime_too_long");
}

#[tokio::test]
async fn a_clinician_needs_a_real_hsa_id() {
    let server = start();
    let clinician = |hsa: &str| {
        server
            .issuer
            .mint(&dev_claims(
                "visit-h",
                "doc-1",
                "Dr Berg",
                "clinician",
                Some(hsa),
                Some("unit-1"),
                now(),
                600,
            ))
            .unwrap()
    };
    for (i, bad) in [
        " ",
        "x",
        "SE2321000016",
        "SE2321000016-",
        "SE232100001-D1",
        "SE2321000016-D 1",
        "se2321000016-D1",
    ]
    .iter()
    .enumerate()
    {
        let (status, body) = server
            .refused_from(
                &format!("127.0.4.{}", i + 1),
                &format!("token={}", clinician(bad)),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("token_bad_hsa")),
            "{bad:?}"
        );
    }
    for good in ["SE2321000016-D1", "SE162321000255-O12345"] {
        server
            .connect(&clinician(good))
            .await
            .next_of("welcome")
            .await;
    }
    // The API mints no token with a bad HSA-id either.
    let start = jiff::Timestamp::now();
    let (_, created) = server
        .api("POST", "/api/v1/meetings", Some(API_KEY),
             Some(json!({"unit": "unit-1", "start": start.to_string(), "end": (start + jiff::SignedDuration::from_mins(30)).to_string()})))
        .await;
    let (status, body) = server
        .api(
            "POST",
            &format!(
                "/api/v1/meetings/{}/tokens",
                created["id"].as_str().unwrap()
            ),
            Some(API_KEY),
            Some(json!({"sub": "doc-1", "name": "Dr Berg", "role": "clinician", "hsa": " "})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn the_audit_log_meeting_store_and_api_key_are_private_files() {
    let dir = std::env::temp_dir().join(format!("hc-modes-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("meetings.json");
    let server = start_command(&[], &["--meeting-store", store.to_str().unwrap()]);
    // --dev without --api-key makes a key beside the dev issuer's key.
    let key_file = server.dir.join("api.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let start = jiff::Timestamp::now();
    let (status, _) = server
        .api("POST", "/api/v1/meetings", Some(key.trim()),
             Some(json!({"unit": "unit-1", "start": start.to_string(), "end": (start + jiff::SignedDuration::from_mins(30)).to_string()})))
        .await;
    assert_eq!(status, 201);
    for file in [&server.audit, &store, &key_file] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A clinician token valid 5 s makes the unbooked meeting (its window); a patient's is valid
/// for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_and_end_outlive_the_token_that_made_the_meeting_and_a_restart() {
    let dir = std::env::temp_dir().join(format!("hc-remember-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("meetings.json");
    // A short reconnect grace, so only what is remembered keeps an empty meeting.
    let config = dir.join("signaling.toml");
    std::fs::write(&config, "[meetings]\nreconnect_grace_secs = 1\n").unwrap();
    let mut server = start_with(&[
        "--sweep-secs",
        "1",
        "--meeting-store",
        store.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let short = |meeting: &str| {
        server
            .issuer
            .mint(&dev_claims(
                meeting,
                "doc-1",
                "Dr Berg",
                "clinician",
                Some("SE2321000016-D1"),
                Some("unit-1"),
                now(),
                5,
            ))
            .unwrap()
    };
    let patient = |meeting: &str| {
        server
            .issuer
            .mint(&dev_claims(
                meeting,
                "pat-1",
                "Anna",
                "patient",
                None,
                Some("unit-1"),
                now(),
                3600,
            ))
            .unwrap()
    };
    // Denied in one meeting, the other ended.
    let (denied_token, ended_token) = (patient("visit-deny"), patient("visit-end"));
    let mut doctor = server.connect(&short("visit-deny")).await;
    doctor.next_of("welcome").await;
    let mut p = server.connect(&denied_token).await;
    p.next_of("welcome").await;
    let who = doctor.first_waiting().await;
    doctor
        .send(json!({"type": "deny", "participant": who}))
        .await;
    assert_eq!(p.closed().await.0["reason"], "denied");
    let mut doctor2 = server.connect(&short("visit-end")).await;
    doctor2.next_of("welcome").await;
    doctor2.send(json!({"type": "end_meeting"})).await;
    doctor2.closed().await;
    drop((doctor, doctor2));

    // The clinicians' tokens expire and the sweeper runs: the meetings are still remembered.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let refused = |code: &str| code == "denied" || code == "meeting_over";
    let (_, body) = server.refused(&format!("token={denied_token}")).await;
    assert!(
        refused(body["error"].as_str().unwrap()),
        "denied patient back in: {body}"
    );
    let (_, body) = server.refused(&format!("token={ended_token}")).await;
    assert_eq!(body["error"], "meeting_over");

    // And after a restart.
    server.restart();
    let (_, body) = server.refused(&format!("token={denied_token}")).await;
    assert!(
        refused(body["error"].as_str().unwrap()),
        "after restart: {body}"
    );
    let (_, body) = server.refused(&format!("token={ended_token}")).await;
    assert_eq!(body["error"], "meeting_over", "after restart");
    std::fs::remove_dir_all(&dir).unwrap();
}
