//! Receiving with the kernel's arrival timestamps (`SO_TIMESTAMPNS`): a packet's one-way
//! latency then ends when the kernel received it, not when the generator's loop got around to
//! it, so a busy generator does not inflate the server's latency.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per `recvmmsg`.
pub const BATCH: usize = 64;
/// Datagrams are at most an MTU: GRO is switched off on these sockets.
const BUF: usize = 2048;
/// Room for a timestamp and a packet-info control message.
const CONTROL: usize = 128;

/// One received datagram's addresses and arrival.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub from: SocketAddr,
    /// The address it was sent to, on a socket with [`enable_destination`] (one socket that
    /// serves many addresses).
    pub to: Option<Ipv4Addr>,
    /// When the kernel received it, ns on the real-time clock.
    pub kernel_ns: Option<u64>,
    /// Datagrams the socket's full receive queue had dropped by then, since it was opened,
    /// on a socket with [`enable_overflow_count`].
    pub dropped: Option<u32>,
}

/// Nanoseconds since the Unix epoch (the clock of kernel timestamps).
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub struct TimestampedRecv {
    bufs: Vec<u8>,
    control: Vec<u8>,
}

impl Default for TimestampedRecv {
    fn default() -> Self {
        Self {
            bufs: vec![0; BATCH * BUF],
            control: vec![0; BATCH * CONTROL],
        }
    }
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed; `fd` is a socket we own.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns on arrival timestamps (and off GRO, so each datagram arrives on its own).
pub fn enable(fd: RawFd) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    let _ = setsockopt(fd, libc::SOL_UDP, libc::UDP_GRO, 0);
    Ok(())
}

/// Reports with each datagram how many the socket dropped so far (`SO_RXQ_OVFL`).
pub fn enable_overflow_count(fd: RawFd) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
}

/// Reports each datagram's destination address (`IP_PKTINFO`).
pub fn enable_destination(fd: RawFd) -> io::Result<()> {
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
}

fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl TimestampedRecv {
    /// One `recvmmsg` on `fd`: calls `f(addresses and arrival, datagram)` for each datagram.
    /// Returns how many arrived (0 when none was waiting).
    pub fn recv(&mut self, fd: RawFd, mut f: impl FnMut(Arrival, &mut [u8])) -> io::Result<usize> {
        // SAFETY: iovec, sockaddr_storage and mmsghdr are plain C structs; zero is valid.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iovs[i].iov_base = self.bufs[i * BUF..].as_mut_ptr().cast();
            iovs[i].iov_len = BUF;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.control[i * CONTROL..].as_mut_ptr().cast();
            h.msg_controllen = CONTROL;
        }
        // SAFETY: every header points into buffers owned by `self` or this frame, each with
        // its length set; they outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for i in 0..n {
            let len = (hdrs[i].msg_len as usize).min(BUF);
            let mut arrival = None;
            let mut to = None;
            let mut dropped = None;
            let h = &hdrs[i].msg_hdr;
            // SAFETY: `h` was filled by recvmmsg; CMSG_* walk its control buffer within
            // `msg_controllen`.
            let mut c = unsafe { libc::CMSG_FIRSTHDR(h) };
            while !c.is_null() {
                // SAFETY: `c` is a valid cmsghdr inside the control buffer.
                let cm = unsafe { &*c };
                if cm.cmsg_level == libc::SOL_SOCKET && cm.cmsg_type == libc::SCM_TIMESTAMPNS {
                    // SAFETY: SCM_TIMESTAMPNS carries a timespec; read unaligned.
                    let ts: libc::timespec =
                        unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
                    arrival = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                } else if cm.cmsg_level == libc::SOL_SOCKET && cm.cmsg_type == libc::SO_RXQ_OVFL {
                    // SAFETY: SO_RXQ_OVFL carries a u32 counter; read unaligned.
                    dropped = Some(unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) });
                } else if cm.cmsg_level == libc::IPPROTO_IP && cm.cmsg_type == libc::IP_PKTINFO {
                    // SAFETY: IP_PKTINFO carries an in_pktinfo; read unaligned.
                    let info: libc::in_pktinfo =
                        unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
                    to = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                }
                // SAFETY: as for CMSG_FIRSTHDR.
                c = unsafe { libc::CMSG_NXTHDR(h, c) };
            }
            let Some(from) = socket_addr(&names[i]) else {
                continue;
            };
            let meta = Arrival {
                from,
                to,
                kernel_ns: arrival,
                dropped,
            };
            f(meta, &mut self.bufs[i * BUF..i * BUF + len]);
        }
        Ok(n)
    }
}
