//! The join WebSocket's credentials carried in its `Sec-WebSocket-Protocol` header.
//!
//! A query string is written to the access log of every proxy on the way (the region's own
//! load balancer, a WAF), with the session token and the resume key in it. Browsers cannot
//! set an `Authorization` header on a WebSocket, but they can offer subprotocols: the client
//! offers [`PROTOCOL`], `hc.token.<JWT>` and, back after a drop, `hc.resume.<key>`, and the
//! server answers with [`PROTOCOL`] alone. An access log's request line does not hold that
//! header (a proxy set to log every header would; docs/deployment.md says not to).

use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;

/// The protocol the server selects; a client that offers credentials offers it too.
pub const PROTOCOL: &str = "hc.v1";
const TOKEN_PREFIX: &str = "hc.token.";
const RESUME_PREFIX: &str = "hc.resume.";

/// What a handshake's offered subprotocols carry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SocketCredentials {
    pub token: Option<String>,
    pub resume: Option<String>,
}

/// Why a handshake's offered subprotocols are refused (`400 bad_request`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "Sec-WebSocket-Protocol offers credentials but not {PROTOCOL}, which the server answers with"
    )]
    NoProtocol,
    #[error("Sec-WebSocket-Protocol offers more than one {0}")]
    Repeated(&'static str),
    #[error("Sec-WebSocket-Protocol is not text")]
    NotText,
}

impl SocketCredentials {
    /// The credentials the handshake's `Sec-WebSocket-Protocol` headers offer (none offered:
    /// both `None`, and the query's are used, as before).
    pub fn offered(headers: &HeaderMap) -> Result<Self, CredentialsError> {
        let mut found = Self::default();
        let mut protocol = false;
        for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
            let value = value.to_str().map_err(|_| CredentialsError::NotText)?;
            for offered in value.split(',').map(str::trim) {
                if offered == PROTOCOL {
                    protocol = true;
                } else if let Some(token) = offered.strip_prefix(TOKEN_PREFIX) {
                    set_once(&mut found.token, token, "hc.token")?;
                } else if let Some(key) = offered.strip_prefix(RESUME_PREFIX) {
                    set_once(&mut found.resume, key, "hc.resume")?;
                }
            }
        }
        if (found.token.is_some() || found.resume.is_some()) && !protocol {
            return Err(CredentialsError::NoProtocol);
        }
        Ok(found)
    }
}

/// Which credential a subprotocol carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Token,
    Resume,
}

/// `value` as the subprotocol that offers it (`hc.token.<value>`), if it can be one: visible
/// ASCII without a comma (a header's list separator) — every token and key this service or a
/// region's issuer makes.
pub fn as_offered(what: Credential, value: &str) -> Option<String> {
    let fits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    let prefix = match what {
        Credential::Token => TOKEN_PREFIX,
        Credential::Resume => RESUME_PREFIX,
    };
    fits.then(|| format!("{prefix}{value}"))
}

fn set_once(
    slot: &mut Option<String>,
    value: &str,
    what: &'static str,
) -> Result<(), CredentialsError> {
    if slot.is_some() {
        return Err(CredentialsError::Repeated(what));
    }
    *slot = Some(value.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(values: &[&str]) -> Result<SocketCredentials, CredentialsError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(SEC_WEBSOCKET_PROTOCOL, v.parse().unwrap());
        }
        SocketCredentials::offered(&headers)
    }

    #[test]
    fn the_token_and_resume_key_are_read_from_the_offered_subprotocols() {
        assert_eq!(
            offered(&["hc.v1, hc.token.aa.bb-_.cc", "hc.resume.00ff"]),
            Ok(SocketCredentials {
                token: Some("aa.bb-_.cc".into()),
                resume: Some("00ff".into())
            })
        );
        // Nothing offered, or other protocols: the query's credentials are used.
        assert_eq!(offered(&[]), Ok(SocketCredentials::default()));
        assert_eq!(offered(&["chat, hc.v1"]), Ok(SocketCredentials::default()));
    }

    #[test]
    fn credentials_without_the_protocol_or_given_twice_are_refused() {
        assert_eq!(
            offered(&["hc.token.abc"]),
            Err(CredentialsError::NoProtocol)
        );
        assert_eq!(
            offered(&["hc.v1, hc.token.a", "hc.token.b"]),
            Err(CredentialsError::Repeated("hc.token"))
        );
        assert_eq!(
            offered(&["hc.v1,hc.resume.a,hc.resume.a"]),
            Err(CredentialsError::Repeated("hc.resume"))
        );
    }
}
