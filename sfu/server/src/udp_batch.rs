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
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
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
        (sent, dropped)
    }
}
