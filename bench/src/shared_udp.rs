//! One UDP socket for many simulated participants on loopback, each with an address of its
//! own (127.1.0.1, 127.1.0.2, …; all of 127/8 is local on Linux).
//!
//! A socket per participant costs the generator an epoll event, a `recvmmsg` and a
//! `sendmmsg` per participant per burst: at a few hundred participants that is most of its
//! CPU and it saturates before the server does. Here everything the participants send in one
//! pass goes out in one `sendmmsg`, each datagram with its source address in an `IP_PKTINFO`
//! control message, and everything the server sends them comes in through one `recvmmsg`,
//! each datagram's destination (`IP_PKTINFO` on receive) naming its participant.

use crate::timestamped_recv;
use sfu_core::TransmitBatch;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams per `sendmmsg`.
const SEND_CHUNK: usize = 64;
/// Participants per 127.1.x.0/24 block (.1 to .250, as the ICE-TCP participants' addresses).
const PER_BLOCK: usize = 250;
/// Participants the address plan can name (127.1.0.1 … 127.1.255.250).
pub const MAX_PARTICIPANTS: usize = 256 * PER_BLOCK;

/// The address participant `idx` sends from and receives at.
pub fn source_ip(idx: usize) -> Option<Ipv4Addr> {
    (idx < MAX_PARTICIPANTS)
        .then(|| Ipv4Addr::new(127, 1, (idx / PER_BLOCK) as u8, 1 + (idx % PER_BLOCK) as u8))
}

/// The participant that has address `ip`, if it is one of [`source_ip`]'s.
pub fn participant(ip: Ipv4Addr) -> Option<usize> {
    let [a, b, c, d] = ip.octets();
    (a == 127 && b == 1 && (1..=PER_BLOCK as u8).contains(&d))
        .then(|| usize::from(c) * PER_BLOCK + usize::from(d - 1))
}

/// An `IP_PKTINFO` control message naming a datagram's source address.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SourceControl([u8; SourceControl::LEN]);

impl SourceControl {
    // SAFETY (of the calls below): CMSG_SPACE/CMSG_LEN only compute sizes.
    const LEN: usize = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;

    fn new(source: Ipv4Addr) -> Self {
        let mut c = Self([0; Self::LEN]);
        let header = libc::cmsghdr {
            // SAFETY: CMSG_LEN only computes a size.
            cmsg_len: unsafe { libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) } as _,
            cmsg_level: libc::IPPROTO_IP,
            cmsg_type: libc::IP_PKTINFO,
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(source).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        // SAFETY: `c.0` is CMSG_SPACE(in_pktinfo) long: a cmsghdr, then the in_pktinfo at
        // CMSG_DATA's offset (the header's size, already aligned); both writes stay inside it.
        unsafe {
            std::ptr::write_unaligned(c.0.as_mut_ptr().cast::<libc::cmsghdr>(), header);
            std::ptr::write_unaligned(
                c.0.as_mut_ptr()
                    .add(size_of::<libc::cmsghdr>())
                    .cast::<libc::in_pktinfo>(),
                info,
            );
        }
        c
    }
}

pub struct SharedUdp {
    socket: UdpSocket,
    out: TransmitBatch,
    sources: Vec<Ipv4Addr>,
    /// `sendmmsg` calls made.
    pub sends: u64,
}

impl SharedUdp {
    /// A socket on every local address (`0.0.0.0`), an ephemeral port, with arrival
    /// timestamps and destination addresses on receive.
    pub fn bind() -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // All participants' bursts meet here: as deep as the server's socket.
        let _ = socket.set_recv_buffer_size(8 * 1024 * 1024);
        let _ = socket.set_send_buffer_size(8 * 1024 * 1024);
        socket.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())?;
        socket.set_nonblocking(true)?;
        let socket: UdpSocket = socket.into();
        // Above the host's `rmem_max` too where we may (root): all participants share this
        // one queue, and what overflows it would read as the server's loss.
        let rcvbuf: libc::c_int = 8 * 1024 * 1024;
        // SAFETY: `rcvbuf` outlives the call and its size is passed; the socket is ours.
        let _ = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&rcvbuf as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        timestamped_recv::enable(socket.as_raw_fd())?;
        timestamped_recv::enable_overflow_count(socket.as_raw_fd())?;
        timestamped_recv::enable_destination(socket.as_raw_fd())?;
        // Don't-fragment, as the server's and the per-participant sockets send (quinn-udp
        // probes the path MTU): without it the kernel picks each datagram's IP ID from a
        // shared hashed table, a few per cent of the generator's time.
        let probe: libc::c_int = libc::IP_PMTUDISC_PROBE;
        // SAFETY: `probe` outlives the call and its size is passed; the socket is ours.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&probe as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            out: TransmitBatch::with_capacity(SEND_CHUNK * 4),
            sources: Vec::with_capacity(SEND_CHUNK * 4),
            sends: 0,
        })
    }

    pub fn port(&self) -> io::Result<u16> {
        Ok(self.socket.local_addr()?.port())
    }

    /// Queues a datagram from `source` (one of [`source_ip`]'s) to `dest`.
    pub fn queue(&mut self, source: Ipv4Addr, dest: SocketAddr, datagram: &[u8]) {
        self.out.push(dest, datagram);
        self.sources.push(source);
    }

    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Sends what is queued; returns how many datagrams the kernel refused (a full buffer,
    /// an IPv6 destination this IPv4 socket cannot reach).
    pub fn send(&mut self) -> usize {
        let mut dropped = 0;
        let mut first = 0;
        while first < self.out.len() {
            let end = (first + SEND_CHUNK).min(self.out.len());
            dropped += self.send_chunk(first, end);
            first = end;
        }
        self.out.clear();
        self.sources.clear();
        dropped
    }

    fn send_chunk(&mut self, first: usize, end: usize) -> usize {
        // SAFETY: iovec, sockaddr_in and mmsghdr are plain C structs; all-zero is valid.
        let mut iovs: [libc::iovec; SEND_CHUNK] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut names: [libc::sockaddr_in; SEND_CHUNK] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; SEND_CHUNK] = unsafe { std::mem::zeroed() };
        let mut controls = [SourceControl([0; SourceControl::LEN]); SEND_CHUNK];
        let mut messages = 0;
        let mut dropped = 0;
        for i in first..end {
            let (dest, data) = self.out.get(i);
            let SocketAddr::V4(dest) = dest else {
                dropped += 1;
                continue;
            };
            names[messages] = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: dest.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*dest.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            iovs[messages].iov_base = data.as_ptr() as *mut libc::c_void;
            iovs[messages].iov_len = data.len();
            controls[messages] = SourceControl::new(self.sources[i]);
            messages += 1;
        }
        for m in 0..messages {
            let h = &mut hdrs[m].msg_hdr;
            h.msg_name = (&mut names[m] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[m];
            h.msg_iovlen = 1;
            h.msg_control = controls[m].0.as_mut_ptr().cast();
            h.msg_controllen = SourceControl::LEN as _;
        }
        let mut offset = 0;
        while offset < messages {
            // SAFETY: headers `offset..messages` point at `names`, `iovs` and `controls` of
            // this frame, and the iovecs into `self.out`, none moved or freed during the call;
            // the count stays within `hdrs`.
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    hdrs[offset..].as_mut_ptr(),
                    (messages - offset) as libc::c_uint,
                    0,
                )
            };
            self.sends += 1;
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first remaining datagram failed (buffer full): skip it.
                dropped += 1;
                offset += 1;
            } else {
                offset += n as usize;
            }
        }
        dropped
    }
}

impl AsRawFd for SharedUdp {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamped_recv::TimestampedRecv;
    use std::time::{Duration, Instant};

    #[test]
    fn addresses_and_participants_map_both_ways() {
        for idx in [0, 1, 249, 250, 251, 12_345, MAX_PARTICIPANTS - 1] {
            let ip = source_ip(idx).unwrap();
            assert_eq!(participant(ip), Some(idx), "{ip}");
        }
        assert_eq!(source_ip(MAX_PARTICIPANTS), None);
        assert_eq!(source_ip(0), Some(Ipv4Addr::new(127, 1, 0, 1)));
        for ip in [
            "127.0.0.1",
            "127.1.0.0",
            "127.1.0.251",
            "127.2.0.1",
            "10.1.0.1",
        ] {
            assert_eq!(participant(ip.parse().unwrap()), None, "{ip}");
        }
    }

    /// Datagrams go out from each participant's own address and come back to it through the
    /// one socket, each told apart by the address it was sent to.
    #[test]
    fn each_participant_sends_from_and_receives_at_its_own_address() {
        let mut shared = SharedUdp::bind().unwrap();
        let port = shared.port().unwrap();
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        echo.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let participants = [0usize, 7, 250, 600];
        for (n, &idx) in participants.iter().enumerate() {
            shared.queue(source_ip(idx).unwrap(), echo_addr, &[n as u8; 100]);
        }
        assert_eq!(shared.send(), 0);
        assert_eq!(shared.pending(), 0);
        // The echo sees each from its participant's address and the shared port, and answers.
        for _ in participants {
            let mut buf = [0u8; 200];
            let (len, from) = echo.recv_from(&mut buf).unwrap();
            let SocketAddr::V4(from) = from else {
                panic!("IPv4 expected")
            };
            assert_eq!(from.port(), port);
            let idx = participant(*from.ip()).expect("a participant's address");
            let n = participants.iter().position(|&p| p == idx).unwrap();
            assert_eq!(&buf[..len], &[n as u8; 100]);
            echo.send_to(&[idx as u8, (idx >> 8) as u8], from).unwrap();
        }
        let mut recv = TimestampedRecv::default();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < participants.len() && Instant::now() < deadline {
            recv.recv(shared.as_raw_fd(), |a, buf| {
                assert_eq!(a.from, echo_addr);
                assert!(a.kernel_ns.is_some(), "kernel timestamp");
                let idx = participant(a.to.expect("destination")).unwrap();
                assert_eq!(buf, &[idx as u8, (idx >> 8) as u8]);
                got.push(idx);
            })
            .unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, participants);
    }
}
