//! The join WebSocket's token and resume key in `Sec-WebSocket-Protocol`, not in the URL a
//! proxy logs: a join with them there, the protocol the server answers with, and each way of
//! offering them wrongly refused with a precise error before anything is written.

mod support;

use serde_json::Value;
use signaling::dev_issuer::dev_claims;
use support::{now, start};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// Opens `/ws?query` offering `protocols`: the answer's selected protocol, or the refusal's
/// status and JSON body.
async fn handshake(
    ws_base: &str,
    query: &str,
    protocols: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Option<String>,
    ),
    (u16, Value),
> {
    let mut request = format!("{ws_base}/ws{query}")
        .into_client_request()
        .unwrap();
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, answer)) => {
            let selected = answer
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((ws, selected))
        }
        Err(tungstenite::Error::Http(refused)) => Err((
            refused.status().as_u16(),
            serde_json::from_slice(&refused.body().clone().unwrap_or_default())
                .expect("a JSON refusal"),
        )),
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[tokio::test]
async fn the_token_and_resume_key_ride_in_the_offered_subprotocols() {
    let server = start();
    let claims = dev_claims("m1", "pat-1", "Anna", "patient", None, None, now(), 600);
    let token = server.issuer.mint(&claims).unwrap();

    // No token in the URL: the join is the token's, and the server selects hc.v1.
    let (ws, selected) = handshake(
        &server.ws_base,
        "?meeting=m1",
        &format!("hc.v1, hc.token.{token}"),
    )
    .await
    .expect("joined with the token in Sec-WebSocket-Protocol");
    assert_eq!(selected.as_deref(), Some("hc.v1"));
    let mut first = support::Client { ws };
    let key = first.next_of("resume_key").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let w = first.next_of("welcome").await;
    assert_eq!(w["state"], "waiting", "{w}");
    let participant = w["participant"].clone();
    drop(first);

    // Back after the drop with the resume key offered the same way: the same participant.
    let (ws, _) = handshake(
        &server.ws_base,
        "",
        &format!("hc.v1, hc.token.{token}, hc.resume.{key}"),
    )
    .await
    .expect("resumed");
    let mut again = support::Client { ws };
    let w = again.next_of("resumed").await;
    assert_eq!(w["participant"], participant, "{w}");

    // A client that cannot offer subprotocols still joins by the query, and is offered none.
    let (_, selected) = handshake(&server.ws_base, &format!("?token={token}"), "")
        .await
        .expect("joined by the query");
    assert_eq!(selected, None);
}

#[tokio::test]
async fn credentials_offered_wrongly_are_refused_naming_what_is_wrong() {
    let server = start();
    let claims = dev_claims("m1", "pat-1", "Anna", "patient", None, None, now(), 600);
    let token = server.issuer.mint(&claims).unwrap();
    let refused = |query: String, protocols: String| {
        let base = server.ws_base.clone();
        async move {
            match handshake(&base, &query, &protocols).await {
                Ok(_) => panic!("accepted: {query} / {protocols:.40}"),
                Err(r) => r,
            }
        }
    };

    // Without hc.v1 a browser would fail the connection on an answer it did not offer.
    let (status, body) = refused(String::new(), format!("hc.token.{token}")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    assert!(body["reason"].as_str().unwrap().contains("hc.v1"), "{body}");
    // Every refusal before the upgrade has a message for the patient (protocol.md).
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );

    // Given twice, in the URL and the header, or two tokens: which one would be meant?
    let (status, body) = refused(
        format!("?token={token}"),
        format!("hc.v1, hc.token.{token}"),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    assert!(body["reason"].as_str().unwrap().contains("both"), "{body}");
    let (status, _) = refused(
        String::new(),
        format!("hc.v1, hc.token.{token}, hc.token.x"),
    )
    .await;
    assert_eq!(status, 400);

    // A token there is checked like any other: refused with its own code.
    let (status, body) = refused(String::new(), "hc.v1, hc.token.not.a.jwt".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_malformed"))
    );
    let (status, body) = refused(String::new(), "hc.v1".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_missing"))
    );

    // Nobody joined; the first refused token is in the audit log with its code (the rest are
    // summarised), the token itself is not.
    assert!(server.audit_events("join").is_empty(), "nobody joined");
    let codes: Vec<Value> = server
        .audit_events("token_refused")
        .into_iter()
        .map(|e| e["code"].clone())
        .collect();
    assert!(codes.contains(&"token_malformed".into()), "{codes:?}");
    assert!(
        !server.audit_text().contains(&token),
        "the token itself is never written"
    );
}
