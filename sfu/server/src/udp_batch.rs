//! Batched UDP I/O for a worker: `recvmmsg` (with GRO) through `quinn-udp`, and `sendmmsg`
//! across many destinations, which `quinn-udp` does not offer (its GSO batches go to one peer).

use sfu_core::TransmitBatch;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Receive buffers sized for GRO: the kernel may coalesce several datagrams from one peer.
pub const RECV_BUF_SIZE: usize = 64 * 1024;

pub struct UdpBatch {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    /// `BATCH_SIZE` receive buffers of `RECV_BUF_SIZE`, back to back.
    buf: Vec<u8>,
    meta: [quinn_udp::RecvMeta; quinn_udp::BATCH_SIZE],
    /// Destinations of the chunk being sent, reused between sends.
    send_addrs: Vec<socket2::SockAddr>,
    /// The last receive filled every buffer: more may be waiting.
    last_batch_full: bool,
    /// System calls made, for the worker's metrics.
    pub calls: IoCalls,
}

/// How often a worker meets the kernel: what a forwarded packet costs beyond the core's work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCalls {
    /// Waits for readiness (`poll`/`epoll_wait`) that returned: the worker's wake-ups
    /// (counted by the worker, which does the waiting).
    pub wakeups: u64,
    /// `recvmmsg` calls, and the datagrams they returned.
    pub receives: u64,
    pub datagrams_received: u64,
    /// `sendmmsg` calls, and the datagrams they took.
    pub sends: u64,
    pub datagrams_sent: u64,
}

impl IoCalls {
    /// Metric names and HELP text, in the order of [`Self::named`].
    pub const HELP: [(&'static str, &'static str); 5] = [
        (
            "sfu_worker_wakeups_total",
            "Times the worker's wait for its sockets (poll/epoll_wait) returned.",
        ),
        (
            "sfu_udp_receive_calls_total",
            "recvmmsg system calls on the worker's UDP socket.",
        ),
        (
            "sfu_udp_received_datagrams_total",
            "Datagrams those recvmmsg calls returned (GRO segments counted apart).",
        ),
        (
            "sfu_udp_send_calls_total",
            "sendmmsg system calls on the worker's UDP socket.",
        ),
        (
            "sfu_udp_sent_datagrams_total",
            "Datagrams those sendmmsg calls handed to the kernel.",
        ),
    ];

    pub fn named(&self) -> [(&'static str, u64); 5] {
        let v = [
            self.wakeups,
            self.receives,
            self.datagrams_received,
            self.sends,
            self.datagrams_sent,
        ];
        std::array::from_fn(|i| (Self::HELP[i].0, v[i]))
    }
}

/// A wait in whole milliseconds for `poll`/`epoll_wait`, rounded up. Rounded down, a wait of
/// 0.9 ms became 0: the worker returned at once and spun until its deadline (≈ 8,500
/// wake-ups a second at 30 visits, most of them empty).
pub fn wait_millis(timeout: Duration) -> i32 {
    timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
}

/// Datagrams handed to one `sendmmsg` call at most.
const SEND_CHUNK: usize = 64;

impl std::fmt::Debug for UdpBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpBatch")
            .field("socket", &self.socket)
            .finish()
    }
}

impl AsRawFd for UdpBatch {
    /// For registering the socket with an event loop (the load generator's epoll).
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

impl UdpBatch {
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Bursts of video keyframes from many publishers arrive together.
        let _ = socket.set_recv_buffer_size(8 * 1024 * 1024);
        let _ = socket.set_send_buffer_size(8 * 1024 * 1024);
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        let socket: UdpSocket = socket.into();
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(Self {
            socket,
            state,
            buf: vec![0u8; quinn_udp::BATCH_SIZE * RECV_BUF_SIZE],
            meta: [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE],
            send_addrs: Vec::with_capacity(SEND_CHUNK),
            last_batch_full: false,
            calls: IoCalls::default(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits until the socket is readable or `timeout` passes. Returns whether it is readable.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1.
        let n = unsafe { libc::poll(&mut pfd, 1, wait_millis(timeout)) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// Receives one batch and calls `on_datagram` for each datagram (GRO segments split).
    /// Returns the number of datagrams, 0 when nothing was waiting.
    pub fn recv_batch(
        &mut self,
        mut on_datagram: impl FnMut(SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        // Slices over the worker's own buffer, on the stack: no allocation per batch.
        let mut chunks = self.buf.chunks_mut(RECV_BUF_SIZE);
        let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        self.last_batch_full = false;
        self.calls.receives += 1;
        let n = match self
            .state
            .recv((&self.socket).into(), &mut slices, &mut self.meta)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        self.last_batch_full = n == quinn_udp::BATCH_SIZE;
        let mut count = 0;
        for i in 0..n {
            let meta = self.meta[i];
            let stride = meta.stride.max(1);
            let start = i * RECV_BUF_SIZE;
            let buf = &mut self.buf[start..start + meta.len.min(RECV_BUF_SIZE)];
            if buf.is_empty() {
                // An empty datagram is still input: the core counts it as malformed.
                on_datagram(meta.addr, buf);
                count += 1;
                continue;
            }
            for chunk in buf.chunks_mut(stride) {
                on_datagram(meta.addr, chunk);
                count += 1;
            }
        }
        self.calls.datagrams_received += count as u64;
        Ok(count)
    }

    /// Whether the last receive filled every buffer: the queue was not empty when it returned,
    /// so another receive will find something. After a partial batch, asking again would
    /// most likely be an empty system call (half of them were, at fan-out 100).
    pub fn more_waiting(&self) -> bool {
        self.last_batch_full
    }

    /// Sends the whole batch with `sendmmsg`. Datagrams the kernel refuses (buffer full) are
    /// dropped and counted; returns (sent, dropped). Nothing is allocated once the address
    /// vector has grown to a chunk.
    pub fn send_batch(&mut self, batch: &TransmitBatch) -> (usize, usize) {
        self.send_batch_where(batch, |_| true)
    }

    /// Sends the datagrams of `batch` whose destination `include` accepts (the others go
    /// elsewhere, e.g. ICE-TCP connections), without copying the batch.
    pub fn send_batch_where(
        &mut self,
        batch: &TransmitBatch,
        include: impl Fn(SocketAddr) -> bool,
    ) -> (usize, usize) {
        let total = batch.len();
        let mut sent = 0;
        let mut dropped = 0;
        let mut next = 0;
        let mut picked = [0usize; SEND_CHUNK];
        while next < total {
            let mut count = 0;
            while next < total && count < SEND_CHUNK {
                if include(batch.get(next).0) {
                    picked[count] = next;
                    count += 1;
                }
                next += 1;
            }
            if count == 0 {
                break;
            }
            self.send_addrs.clear();
            self.send_addrs.extend(
                picked[..count]
                    .iter()
                    .map(|&i| socket2::SockAddr::from(batch.get(i).0)),
            );
            // SAFETY: iovec and mmsghdr are plain C structs; all-zero is a valid value.
            let mut iovs: [libc::iovec; SEND_CHUNK] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut hdrs: [libc::mmsghdr; SEND_CHUNK] = unsafe { std::mem::zeroed() };
            for k in 0..count {
                let data = batch.get(picked[k]).1;
                iovs[k].iov_base = data.as_ptr() as *mut libc::c_void;
                iovs[k].iov_len = data.len();
                let addr = &self.send_addrs[k];
                hdrs[k].msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                hdrs[k].msg_hdr.msg_namelen = addr.len();
                hdrs[k].msg_hdr.msg_iov = &mut iovs[k] as *mut libc::iovec;
                hdrs[k].msg_hdr.msg_iovlen = 1;
            }
            let mut offset = 0;
            while offset < count {
                // SAFETY: headers `offset..count` point at addresses in `self.send_addrs` and
                // iovecs in `iovs`, both alive and unmoved for the call; the iovecs point into
                // `batch`, borrowed for the whole function; the count stays within `hdrs`.
                let n = unsafe {
                    libc::sendmmsg(
                        self.socket.as_raw_fd(),
                        hdrs[offset..].as_mut_ptr(),
                        (count - offset) as libc::c_uint,
                        0,
                    )
                };
                self.calls.sends += 1;
                if n < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // The first remaining datagram failed (buffer full, unreachable): skip it.
                    dropped += 1;
                    offset += 1;
                } else {
                    sent += n as usize;
                    offset += n as usize;
                }
            }
        }
        self.calls.datagrams_sent += sent as u64;
        (sent, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        assert_eq!(wait_millis(Duration::ZERO), 0, "no wait stays no wait");
        assert_eq!(wait_millis(Duration::from_nanos(1)), 1);
        assert_eq!(wait_millis(Duration::from_micros(900)), 1);
        assert_eq!(wait_millis(Duration::from_millis(5)), 5);
        assert_eq!(wait_millis(Duration::from_micros(5_100)), 6);
        assert_eq!(wait_millis(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    /// The worker's counters see each system call and what it carried.
    #[test]
    fn system_calls_are_counted_with_their_datagrams() {
        let mut a = UdpBatch::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = UdpBatch::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let mut batch = TransmitBatch::with_capacity(4);
        for i in 0..3u8 {
            batch.push(to, &[i; 20]);
        }
        assert_eq!(a.send_batch(&batch), (3, 0));
        assert_eq!((a.calls.sends, a.calls.datagrams_sent), (1, 3));
        assert!(b.wait_readable(Duration::from_secs(2)));
        let mut got = 0;
        while got < 3 {
            got += b.recv_batch(|_, _| {}).unwrap();
            if got < 3 {
                b.wait_readable(Duration::from_secs(2));
            }
        }
        assert_eq!(b.calls.datagrams_received, 3);
        assert!(b.calls.receives >= 1);
    }
}
