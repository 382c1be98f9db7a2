//! The credential a request presents as `Authorization: Bearer …`: an API key on the meetings
//! API, a join token on photos.

use axum::http::{HeaderMap, header};

/// The bearer credential of `headers`, or "" when there is none.
pub fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // (The scheme's name is case-insensitive, RFC 9110 §11.1.)
        .and_then(|v| {
            v.get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_read_in_any_case_and_nothing_else_is_a_credential() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer(&h).to_owned()
        };
        assert_eq!(with("Bearer k1"), "k1");
        assert_eq!(with("bearer k1"), "k1");
        assert_eq!(with("BEARER k1"), "k1");
        assert_eq!(with("Basic k1"), "");
        assert_eq!(with("Bearer"), "");
        assert_eq!(with("Bearerk1"), "");
        assert_eq!(bearer(&HeaderMap::new()), "");
    }
}
