//! The address a request came from: the peer's, or — when the peer is a proxy the region
//! trusts (an Ingress controller, a load balancer) — the client's as that proxy recorded it in
//! `X-Forwarded-For`. Per-address limits and the audit log's `source` see the browser then,
//! not the proxy every browser shares. Only trusted proxies are believed: anyone else's
//! header is ignored, so a client cannot pick the address it is counted under.

use crate::app_state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From CIDRs (`10.0.0.0/8`) or single addresses; the error names the bad entry.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                let e = e.trim();
                let net = e
                    .parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{e:?} is not an address or a CIDR range"))?;
                // Everyone a proxy: any client would choose the address it is counted and
                // audited under.
                if net.prefix_len() == 0 {
                    return Err(format!(
                        "{e:?} trusts every address as a proxy: list the proxies' own addresses"
                    ));
                }
                Ok(net)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`: walking
    /// `X-Forwarded-For` from the nearest hop back, the first address that is not a trusted
    /// proxy (each proxy appends the address it saw).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // From the nearest hop back: what a client wrote itself comes first and is never
        // reached while the proxies' entries are untrusted addresses.
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                break;
            };
            client = ip.to_canonical();
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// The request's client address (see the module's note).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<Arc<AppState>> for ClientAddress {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        // Relayed by another replica: the address that replica saw (its secret says so).
        if let Some(relayed) = state
            .replicas
            .as_ref()
            .and_then(|r| r.relayed_for(&parts.headers))
        {
            return Ok(Self(relayed));
        }
        Ok(Self(state.trusted_proxies.client(peer, &parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_proxys_header_is_believed() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.7".into()]).unwrap();
        // From the Ingress controller: the browser's address it recorded.
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &headers(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
        // A client that sends its own header ahead of the proxy's cannot choose its address:
        // the proxy appended the real one, and that is the first untrusted hop from the end.
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &headers(&["198.51.100.1, 203.0.113.9"])),
            ip("203.0.113.9")
        );
        // Nor by writing something unreadable in it.
        assert_eq!(
            trusted.client(
                ip("10.1.2.3"),
                &headers(&["198.51.100.1, zzz, 203.0.113.9"])
            ),
            ip("203.0.113.9")
        );
        // Two proxies (a load balancer, then the Ingress), headers split over lines.
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &headers(&["203.0.113.9", "192.0.2.7"])),
            ip("203.0.113.9")
        );
        // Straight from a browser: its header is ignored.
        assert_eq!(
            trusted.client(ip("203.0.113.50"), &headers(&["10.9.9.9"])),
            ip("203.0.113.50")
        );
        // A trusted proxy without the header, or with garbage: the proxy itself.
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &headers(&[])),
            ip("10.1.2.3")
        );
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &headers(&["not-an-address"])),
            ip("10.1.2.3")
        );
        // IPv4 seen as IPv6-mapped is the same address.
        assert_eq!(
            trusted.client(ip("::ffff:10.1.2.3"), &headers(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
        // No proxies trusted: always the peer.
        assert_eq!(
            TrustedProxies::default().client(ip("10.1.2.3"), &headers(&["203.0.113.9"])),
            ip("10.1.2.3")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
