//! The UDP socket under a control-link QUIC endpoint (signaling's listener, a node's dialler).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// A socket bound to `addr`. The unspecified IPv6 address (`[::]`) means every address of both
/// families, whatever the host's `net.ipv6.bindv6only`: IPv4 peers arrive mapped. On a host
/// without IPv6 it falls back to every IPv4 address (`0.0.0.0`), logged: one setting then fits
/// IPv4-only, dual-stack and IPv6-only clusters. Any other address is bound as it is.
pub fn control_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    if addr.ip() != Ipv6Addr::UNSPECIFIED {
        return UdpSocket::bind(addr);
    }
    match dual_stack(addr) {
        Ok(socket) => Ok(socket),
        Err(e) => {
            tracing::info!(error = %e, port = addr.port(), "no dual-stack socket: the control link is on IPv4 only");
            UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())))
        }
    }
}

/// Whether peers at IPv6 addresses can be reached from `socket`.
pub fn carries_ipv6(socket: &UdpSocket) -> bool {
    socket.local_addr().is_ok_and(|a| a.is_ipv6())
}

/// An error where the host has no IPv6 or will not mix the two families.
fn dual_stack(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_only_v6(false)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[::]` takes datagrams sent to an IPv4 address and to an IPv6 one, on one port.
    #[test]
    fn every_address_of_both_families_reaches_one_socket() {
        let socket = control_socket("[::]:0".parse().unwrap()).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.send_to(b"four", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 8];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"four");
        if carries_ipv6(&socket) {
            let v6 = UdpSocket::bind("[::1]:0").unwrap();
            v6.send_to(b"six", ("::1", port)).unwrap();
            let (n, _) = socket.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"six");
        }
        // Any other address is taken as given.
        let v4_only = control_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(!carries_ipv6(&v4_only));
    }
}
