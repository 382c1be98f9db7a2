//! The address the core knows an ICE-TCP connection by. The core keys a session's path by
//! the address its packets come from, and UDP's and TCP's port numbers are separate spaces: a
//! UDP client and a TCP connection from the same IP address and port number (two people
//! behind one carrier NAT) would be one path, and the UDP client's media would go into the
//! TCP connection. So the I/O layer gives an IPv4 connection an address in IPv6's
//! discard-only prefix (RFC 6666, `100::/64`), which no datagram comes from, with the real
//! address in its last 32 bits and the real port. What the peer is told (STUN's mapped
//! address) is the real one. (An IPv6 connection keeps its own: IPv6 has no shared NATs.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `100::/96`: the discard-only prefix, with 32 bits left for an IPv4 address.
const PREFIX: u128 = 0x0100_u128 << 112;
const PREFIX_MASK: u128 = !(u32::MAX as u128);

/// The address the core knows the ICE-TCP connection from `peer` by.
pub fn of_stream(peer: SocketAddr) -> SocketAddr {
    match peer.ip().to_canonical() {
        IpAddr::V4(v4) => SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from_bits(PREFIX | u128::from(v4.to_bits()))),
            peer.port(),
        ),
        IpAddr::V6(_) => peer,
    }
}

/// Whether `addr` is an ICE-TCP connection's (of an IPv4 peer): never a datagram's destination.
pub fn is_stream(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V6(v6) if v6.to_bits() & PREFIX_MASK == PREFIX)
}

/// The address a path's peer sends from, as it would see it (the real one of a connection).
pub fn as_seen_by_peer(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) if is_stream(addr) => SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from_bits(v6.to_bits() as u32)),
            addr.port(),
        ),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_and_a_datagram_from_one_address_are_two_paths_told_the_same_address() {
        let shared: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let stream = of_stream(shared);
        assert_ne!(stream, shared);
        assert!(is_stream(stream) && !is_stream(shared));
        assert_eq!(
            stream,
            "[100::cb00:7109]:40000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(as_seen_by_peer(stream), shared);
        // (Also when the listener hands over an IPv4-mapped address.)
        assert_eq!(
            of_stream("[::ffff:203.0.113.9]:40000".parse::<SocketAddr>().unwrap()),
            stream
        );
        // Datagrams' addresses are told as they are.
        assert_eq!(as_seen_by_peer(shared), shared);
        let v6: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
        assert_eq!(as_seen_by_peer(v6), v6);
        assert_eq!(of_stream(v6), v6);
        // Only the /96 is read back: a neighbour in the prefix is no connection's.
        let near: SocketAddr = "[100::1:cb00:7109]:40000".parse().unwrap();
        assert_eq!(as_seen_by_peer(near), near);
    }
}
