//! The source a connection (or a refused request) counts against, for per-source limits: an
//! IPv4 address (also when mapped into IPv6), or an IPv6 /64 — one subscriber's whole prefix,
//! from which a single host can use any address. Shared by the node's metrics listener and
//! signaling's connection and token-refusal limits.

use std::net::IpAddr;

pub fn counted_source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}
