//! Roles on a running service: a companion admitted with their patient, an interpreter
//! admitted first, and a consultant of another unit who joins by the clinician's invitation
//! — with their own HSA-id and unit in the patient's audit extract.

mod support;

use serde_json::json;
use signaling::dev_issuer::dev_claims;
use support::{now, start};

#[tokio::test]
async fn companion_interpreter_and_consultant_each_come_in_their_own_way() {
    let server = start();
    let meeting = "visit-roles";
    let doctor = server.token(meeting, "doc-1", "Dr Berg", "clinician");
    let patient = server.token(meeting, "pat-31", "Anna", "patient");
    let interpreter = server.token(meeting, "tolk-7", "Tolk Ali", "interpreter");
    let mut companion_claims = dev_claims(
        meeting,
        "rel-9",
        "Bo",
        "companion",
        None,
        Some("unit-1"),
        now(),
        600,
    );
    companion_claims.companion_of = Some("pat-31".into());
    let companion = server.issuer.mint(&companion_claims).unwrap();

    let mut doc = server.connect(&doctor).await;
    let welcome = doc.next_of("welcome").await;
    assert_eq!(welcome["state"], "admitted");
    let mut pat = server.connect(&patient).await;
    let pat_id = pat.next_of("welcome").await["participant"].clone();
    let mut rel = server.connect(&companion).await;
    let rel_id = rel.next_of("welcome").await["participant"].clone();
    let mut tolk = server.connect(&interpreter).await;
    let tolk_id = tolk.next_of("welcome").await["participant"].clone();

    // The clinician sees the companion with their patient, and the interpreter.
    let lobby = loop {
        let l = doc.next_of("lobby").await;
        if l["waiting"].as_array().unwrap().len() == 3 {
            break l;
        }
    };
    let waiting = lobby["waiting"].as_array().unwrap();
    let rel_entry = waiting.iter().find(|w| w["participant"] == rel_id).unwrap();
    assert_eq!(
        (&rel_entry["with"], rel_entry["with_name"].as_str()),
        (&pat_id, Some("Anna"))
    );
    assert!(
        waiting
            .iter()
            .any(|w| w["participant"] == tolk_id && w["role"] == "interpreter")
    );

    // The interpreter first: admitted while the patient still waits.
    doc.send(json!({"type": "admit", "participant": tolk_id}))
        .await;
    tolk.next_of("admitted").await;
    // Then the patient with their companion, in one action.
    doc.send(json!({"type": "admit", "participant": pat_id, "with_companions": true}))
        .await;
    let admitted = pat.next_of("admitted").await;
    assert!(
        admitted["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["role"] == "interpreter")
    );
    rel.next_of("admitted").await;

    // A consultant of another unit: refused before the invitation, in after it.
    let consultant_claims = |hsa: &str| {
        dev_claims(
            meeting,
            hsa,
            "Dr Konsult",
            "consultant",
            Some(hsa),
            Some("unit-9"),
            now(),
            600,
        )
    };
    let uninvited = server
        .issuer
        .mint(&consultant_claims("SE2321000016-K9"))
        .unwrap();
    let (status, body) = server.refused(&format!("token={uninvited}")).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("not_invited")));
    doc.send(json!({"type": "invite_consultant", "hsa": "SE2321000016-K9", "unit": "unit-9", "name": "Dr Konsult"})).await;
    let invited = doc.next_of("consultant_invited").await;
    let url = invited["url"]
        .as_str()
        .expect("a link from this service's minter");
    let token = url.split("token=").nth(1).unwrap();
    let mut consultant = server.connect(token).await;
    let w = consultant.next_of("welcome").await;
    assert_eq!(
        (w["state"].as_str(), w["role"].as_str()),
        (Some("admitted"), Some("consultant"))
    );
    // The patient sees the companion come in, then the consultant.
    assert_eq!(pat.next_of("participant_joined").await["role"], "companion");
    assert_eq!(
        pat.next_of("participant_joined").await["role"],
        "consultant"
    );

    // Removed, the consultant's invitation is withdrawn: the same link is refused.
    let consultant_id = w["participant"].clone();
    doc.send(json!({"type": "remove", "participant": consultant_id}))
        .await;
    consultant.closed().await;
    let (status, body) = server.refused(&format!("token={token}")).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("not_invited")));

    // The patient's extract names the consultant's HSA-id and their own unit (from a log
    // whose checkpoints hold under the service's public key).
    let public = server.audit_public_key();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args([
            "audit",
            "extract",
            "--subject",
            "pat-31",
            "--public-key",
            &public,
        ])
        .arg(&server.audit)
        .output()
        .unwrap();
    let extract = String::from_utf8_lossy(&out.stdout);
    assert!(
        extract.contains("staff: SE2321000016-K9 (unit-9)"),
        "{extract}"
    );
    let invites = server.audit_events("consultant_invited");
    assert_eq!(invites.len(), 1);
    assert_eq!(invites[0]["actor_hsa"], "SE2321000016-doc1");
    let admits = server.audit_events("admit");
    assert!(
        admits.iter().any(|a| a["subject"] == "rel-9"
            && a["code"] == format!("with {}", pat_id.as_str().unwrap()))
    );
}
