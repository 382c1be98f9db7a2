//! Whether a request comes from another site's page. Browsers say so: `Sec-Fetch-Site`, and
//! the `Origin` of a WebSocket handshake or a cross-origin fetch. Such a request is refused
//! before any token is read: a hostile page (an advert, another tab) running in browsers
//! behind a shared address (a carrier's or a clinic's NAT) could otherwise spend that
//! address's budget of refused tokens, and the patients behind it would be answered 429.
//! Clients that are not browsers send neither header and are not affected.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Whether `headers` say the request comes from a page of another site than this service
/// (`public_url`, or the `Host` the request was sent to).
pub fn is_cross_site(headers: &HeaderMap, public_url: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        // `same-site` is another origin too (a sibling host of the region's domain).
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return false;
    };
    let authority = |url: &str| {
        url.split_once("://").map(|(_, rest)| {
            rest.split('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        })
    };
    let Some(from) = authority(origin) else {
        // `null`: what a browser without fetch metadata (Safari before 16.4, older WebViews)
        // sends on this service's own POSTs, whose pages send no Referer — an old iPhone's
        // patient would be turned away. Unknown, so not refused.
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let ours = public_url.and_then(authority);
    Some(&from) != host.as_ref() && Some(&from) != ours.as_ref()
}

/// The answer to a request from another site's page.
pub fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({
            "error": "cross_site",
            "reason": "requests from another site's pages are refused",
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_browser_on_another_sites_page_is_told_apart_from_this_services_pages() {
        let ours = Some("https://video.region.se");
        let cross = |pairs: &[(&'static str, &str)]| is_cross_site(&headers(pairs), ours);
        // Fetch metadata decides where a browser sends it.
        assert!(!cross(&[("sec-fetch-site", "same-origin")]));
        assert!(!cross(&[("sec-fetch-site", "none")]));
        assert!(cross(&[("sec-fetch-site", "cross-site")]));
        assert!(cross(&[("sec-fetch-site", "same-site")]));
        // Otherwise the Origin, against the public URL or the Host.
        assert!(!cross(&[("origin", "https://video.region.se")]));
        assert!(!cross(&[("origin", "https://VIDEO.region.se")]));
        assert!(!cross(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ]));
        assert!(cross(&[
            ("origin", "https://ads.example"),
            ("host", "video.region.se")
        ]));
        assert!(cross(&[("origin", "https://video.region.se:8443")]));
        assert!(!cross(&[("origin", "null")]), "an old Safari's own POST");
        // No browser: neither header.
        assert!(!cross(&[("host", "video.region.se")]));
    }
}
