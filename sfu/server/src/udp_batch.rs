//! Batched UDP I/O for a worker: `recvmmsg` (with GRO) through `quinn-udp`, and `sendmmsg`
//! across many destinations, which `quinn-udp` does not offer (its GSO batches go to one peer).

use crate::datagram_sink::{DatagramSink, EachDatagram};
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
    /// The batch's datagrams in sending order (grouped by destination with GSO), and their
    /// sort keys.
    order: Vec<usize>,
    keys: Vec<(u64, usize)>,
    sort_salt: u64,
    /// Datagrams one message may carry: 1 without GSO.
    gso_segments: usize,
    /// The last receive filled every buffer: more may be waiting.
    last_batch_full: bool,
    /// System calls made, for the worker's metrics.
    pub calls: IoCalls,
    /// Receives through io_uring instead of `poll` and `recvmmsg` (see `uring_receive`).
    #[cfg(feature = "io-uring")]
    uring: Option<crate::uring_receive::UringReceive>,
}

/// How often a worker meets the kernel: what a forwarded packet costs beyond the core's work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCalls {
    /// Waits for readiness (`poll`/`epoll_wait`) that returned: the worker's wake-ups
    /// (counted by the worker, which does the waiting).
    pub wakeups: u64,
    /// `recvmmsg` calls (`io_uring_enter` with the io_uring receive), and the datagrams they
    /// returned.
    pub receives: u64,
    pub datagrams_received: u64,
    /// `sendmmsg` calls, and the datagrams they took.
    pub sends: u64,
    pub datagrams_sent: u64,
    /// Messages sent with GSO (several datagrams each), and the datagrams they carried
    /// (counted in `datagrams_sent` too).
    pub gso_messages: u64,
    pub gso_datagrams: u64,
}

impl IoCalls {
    /// Metric names and HELP text, in the order of [`Self::named`].
    pub const HELP: [(&'static str, &'static str); 7] = [
        (
            "sfu_worker_wakeups_total",
            "Times the worker's wait for its sockets (poll/epoll_wait) returned.",
        ),
        (
            "sfu_udp_receive_calls_total",
            "Receive system calls on the worker's UDP socket: recvmmsg (io_uring_enter with sfu.udp_receive = \"io-uring\").",
        ),
        (
            "sfu_udp_received_datagrams_total",
            "Datagrams those recvmmsg calls returned (GRO segments counted apart).",
        ),
        (
            "sfu_udp_send_calls_total",
            "Send system calls on the worker's UDP socket: sendmmsg, and sendto for a GSO run the route refused.",
        ),
        (
            "sfu_udp_sent_datagrams_total",
            "Datagrams those sendmmsg calls handed to the kernel.",
        ),
        (
            "sfu_udp_gso_messages_total",
            "Messages sent with UDP GSO: a run of datagrams to one destination the kernel segments.",
        ),
        (
            "sfu_udp_gso_datagrams_total",
            "Datagrams sent within GSO messages (also counted in sfu_udp_sent_datagrams_total).",
        ),
    ];

    pub fn named(&self) -> [(&'static str, u64); 7] {
        let v = [
            self.wakeups,
            self.receives,
            self.datagrams_received,
            self.sends,
            self.datagrams_sent,
            self.gso_messages,
            self.gso_datagrams,
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

/// Messages handed to one `sendmmsg` call at most, and the datagrams (iovecs) they carry.
const SEND_CHUNK: usize = 64;
const SEND_IOVS: usize = 256;
/// Datagrams one GSO message may carry (the kernel's `UDP_MAX_SEGMENTS`), and its bytes (a
/// UDP datagram's limit, less room for the headers).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

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

/// Each worker socket's receive and send buffer, asked of the kernel.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

impl UdpBatch {
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Bursts of video keyframes from many publishers arrive together. The kernel holds
        // a socket to `net.core.rmem_max`/`wmem_max` (≈ 208 KiB unless raised): said once, with
        // what to set, rather than found as loss at the first busy hour.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        let granted = (
            socket.recv_buffer_size().unwrap_or(0),
            socket.send_buffer_size().unwrap_or(0),
        );
        // (Linux reports twice what it grants: its own bookkeeping is counted in.)
        if granted.0 / 2 < SOCKET_BUFFER || granted.1 / 2 < SOCKET_BUFFER {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    receive = granted.0 / 2,
                    send = granted.1 / 2,
                    wanted = SOCKET_BUFFER,
                    "UDP socket buffers are smaller than wanted: set the sysctls \
                     net.core.rmem_max and net.core.wmem_max to at least {SOCKET_BUFFER} \
                     (docs/deployment.md)"
                );
            });
        }
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
            order: Vec::with_capacity(256),
            keys: Vec::with_capacity(256),
            sort_salt: 0,
            gso_segments: 1,
            last_batch_full: false,
            calls: IoCalls::default(),
            #[cfg(feature = "io-uring")]
            uring: None,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives through io_uring from now on (one multishot `recvmsg` into a ring of
    /// buffers), set up now so that a kernel without it is found at start-up. The thread
    /// that receives takes the ring over at its first wait or receive.
    #[cfg(feature = "io-uring")]
    pub fn enable_uring_receive(&mut self) -> io::Result<()> {
        self.enable_uring_receive_with(crate::uring_receive::RING_BUFFERS)
    }

    /// A build without the `io-uring` feature cannot (the configuration's check says so
    /// first, naming the key).
    #[cfg(not(feature = "io-uring"))]
    pub fn enable_uring_receive(&mut self) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this build has no io-uring feature",
        ))
    }

    /// [`Self::enable_uring_receive`] with `buffers` receive buffers (a power of two).
    #[cfg(feature = "io-uring")]
    pub(crate) fn enable_uring_receive_with(&mut self, buffers: u16) -> io::Result<()> {
        self.uring = Some(crate::uring_receive::UringReceive::new(
            self.socket.as_raw_fd(),
            buffers,
        )?);
        Ok(())
    }

    /// Back to `poll` and `recvmmsg` if the io_uring receive was given up (a kernel error):
    /// said once, loudly, rather than a worker that spins or receives nothing.
    #[cfg(feature = "io-uring")]
    fn check_uring(&mut self) {
        if let Some(e) = self.uring.as_ref().and_then(|u| u.broken()) {
            tracing::error!(error = %e, "the io_uring receive failed: receiving with recvmmsg from now on");
            self.uring = None;
        }
    }

    /// What the io_uring receive did, when it is on.
    #[cfg(feature = "io-uring")]
    pub fn uring_counters(&self) -> Option<crate::uring_receive::UringCounters> {
        self.uring.as_ref().map(|u| u.counters)
    }

    /// Datagrams already received and not yet handed out (io_uring's completions): a wait
    /// for the socket would not see them.
    pub fn has_received(&mut self) -> bool {
        #[cfg(feature = "io-uring")]
        if let Some(uring) = self.uring.as_mut() {
            return uring.more_waiting();
        }
        false
    }

    /// Waits until the socket is readable or `timeout` passes. Returns whether it is readable.
    pub fn wait_readable(&mut self, timeout: Duration) -> bool {
        #[cfg(feature = "io-uring")]
        if let Some(uring) = self.uring.as_mut() {
            let enters = uring.counters.enters;
            let ready = uring.wait(timeout);
            self.calls.receives += uring.counters.enters - enters;
            self.check_uring();
            return ready;
        }
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
        on_datagram: impl FnMut(SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        self.recv_batch_into(&mut EachDatagram(on_datagram))
    }

    /// Receives one batch, shows it to `sink` to look ahead at, then hands it each datagram
    /// (GRO segments split). Returns the number of datagrams, 0 when nothing was waiting.
    pub fn recv_batch_into(&mut self, sink: &mut impl DatagramSink) -> io::Result<usize> {
        #[cfg(feature = "io-uring")]
        if let Some(uring) = self.uring.as_mut() {
            let enters = uring.counters.enters;
            // (Its completions are handled as they are read: no look-ahead.)
            let n = uring.recv_batch(quinn_udp::BATCH_SIZE, |from, d| sink.datagram(from, d))?;
            self.calls.receives += uring.counters.enters - enters;
            self.calls.datagrams_received += n as u64;
            self.last_batch_full = uring.more_waiting();
            self.check_uring();
            return Ok(n);
        }
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
        if sink.looks_ahead() {
            let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
            let mut ahead: [(SocketAddr, &[u8]); quinn_udp::BATCH_SIZE] =
                [(nowhere, &[]); quinn_udp::BATCH_SIZE];
            for (i, entry) in ahead.iter_mut().enumerate().take(n) {
                let meta = self.meta[i];
                let len = meta.len.min(RECV_BUF_SIZE).min(meta.stride.max(1));
                *entry = (meta.addr, &self.buf[i * RECV_BUF_SIZE..][..len]);
            }
            sink.look_ahead(&ahead[..n]);
        }
        let mut count = 0;
        for i in 0..n {
            let meta = self.meta[i];
            let stride = meta.stride.max(1);
            let start = i * RECV_BUF_SIZE;
            let buf = &mut self.buf[start..start + meta.len.min(RECV_BUF_SIZE)];
            if buf.is_empty() {
                // An empty datagram is still input: the core counts it as malformed.
                sink.datagram(meta.addr, buf);
                count += 1;
                continue;
            }
            for chunk in buf.chunks_mut(stride) {
                sink.datagram(meta.addr, chunk);
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
    ///
    /// With GSO on, the datagrams are taken grouped by destination (in their order within
    /// each destination) and a run to one destination of equal sizes, the last one possibly
    /// shorter, goes as one message the kernel cuts into datagrams (`UDP_SEGMENT`): one pass
    /// through the socket, route and IP layers instead of one per datagram.
    pub fn send_batch_where(
        &mut self,
        batch: &TransmitBatch,
        include: impl Fn(SocketAddr) -> bool,
    ) -> (usize, usize) {
        self.order.clear();
        if self.gso_segments > 1 && batch.len() > 1 {
            // Keys computed once; unique (the index breaks ties), so an unstable sort keeps
            // each destination's datagrams in order. The salt changes the order of the
            // destinations from one send to the next: were it always by address, a full send
            // buffer would always cost the same subscribers their packets.
            self.sort_salt = self
                .sort_salt
                .wrapping_add(1)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let salt = self.sort_salt;
            self.keys.clear();
            self.keys.extend((0..batch.len()).filter_map(|i| {
                let dest = batch.get(i).0;
                include(dest).then(|| (destination_key(dest) ^ salt, i))
            }));
            self.keys.sort_unstable();
            self.order.extend(self.keys.iter().map(|&(_, i)| i));
        } else {
            self.order
                .extend((0..batch.len()).filter(|&i| include(batch.get(i).0)));
        }
        let mut sent = 0;
        let mut dropped = 0;
        let mut next = 0;
        while next < self.order.len() {
            let (s, d, resume) = self.send_chunk(batch, next);
            sent += s;
            dropped += d;
            next = resume;
        }
        self.calls.datagrams_sent += sent as u64;
        (sent, dropped)
    }

    /// Sends the messages `self.order[first..]` makes, as many as one `sendmmsg` chunk
    /// holds. Returns (sent, dropped, where the next chunk starts).
    fn send_chunk(&mut self, batch: &TransmitBatch, first: usize) -> (usize, usize, usize) {
        // SAFETY: iovec, mmsghdr and cmsghdr-sized byte arrays are plain C data; all-zero is
        // a valid value.
        let mut iovs: [libc::iovec; SEND_IOVS] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; SEND_CHUNK] = unsafe { std::mem::zeroed() };
        let mut controls = [SegmentControl::default(); SEND_CHUNK];
        // Each message: its first position in `self.order` and how many datagrams it carries.
        let mut spans = [(0usize, 0usize); SEND_CHUNK];
        let mut messages = 0;
        let mut used_iovs = 0;
        let mut pos = first;
        self.send_addrs.clear();
        while pos < self.order.len() && messages < SEND_CHUNK && used_iovs < SEND_IOVS {
            let (dest, data) = batch.get(self.order[pos]);
            let segment = data.len();
            let mut count = 1;
            let mut bytes = segment;
            let room = (SEND_IOVS - used_iovs).min(self.gso_segments);
            while count < room && pos + count < self.order.len() {
                let (d, next) = batch.get(self.order[pos + count]);
                let last_len = batch.get(self.order[pos + count - 1]).1.len();
                if d != dest
                    || next.len() > segment
                    || last_len != segment
                    || next.is_empty()
                    || bytes + next.len() > GSO_MAX_BYTES
                {
                    break;
                }
                count += 1;
                bytes += next.len();
            }
            for k in 0..count {
                let data = batch.get(self.order[pos + k]).1;
                iovs[used_iovs + k].iov_base = data.as_ptr() as *mut libc::c_void;
                iovs[used_iovs + k].iov_len = data.len();
            }
            self.send_addrs.push(socket2::SockAddr::from(dest));
            let hdr = &mut hdrs[messages].msg_hdr;
            // SAFETY: `used_iovs + count <= SEND_IOVS`: the pointer stays inside `iovs`.
            hdr.msg_iov = unsafe { iovs.as_mut_ptr().add(used_iovs) };
            hdr.msg_iovlen = count as _;
            if count > 1 {
                controls[messages] = SegmentControl::new(segment as u16);
                hdr.msg_control = controls[messages].0.as_mut_ptr() as *mut libc::c_void;
                hdr.msg_controllen = SegmentControl::LEN as _;
            }
            spans[messages] = (pos, count);
            used_iovs += count;
            messages += 1;
            pos += count;
        }
        for (m, addr) in self.send_addrs.iter().enumerate() {
            hdrs[m].msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            hdrs[m].msg_hdr.msg_namelen = addr.len();
        }
        let mut sent = 0;
        let mut dropped = 0;
        let mut offset = 0;
        while offset < messages {
            // SAFETY: headers `offset..messages` point at addresses in `self.send_addrs`,
            // iovecs in `iovs` and control data in `controls`, all alive and unmoved for the
            // call; the iovecs point into `batch`, borrowed for the whole function; the count
            // stays within `hdrs`.
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    hdrs[offset..].as_mut_ptr(),
                    (messages - offset) as libc::c_uint,
                    0,
                )
            };
            self.calls.sends += 1;
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let (start, count) = spans[offset];
                if count > 1 && err.raw_os_error() == Some(libc::EIO) {
                    // The route's device cannot segment (no checksum offload, as quinn-udp
                    // also finds): send one datagram per message from here on.
                    tracing::warn!(error = %err, "UDP GSO refused by the kernel; sending datagrams one by one");
                    self.gso_segments = 1;
                    return (sent, dropped, start);
                }
                if count > 1 && err.raw_os_error() == Some(libc::EINVAL) {
                    // This destination's route takes no segment this size (its MTU is
                    // smaller): its datagrams go one by one, the others keep GSO.
                    let (s, d) = self.send_each(batch, start, count);
                    sent += s;
                    dropped += d;
                    offset += 1;
                    continue;
                }
                if matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS)) {
                    // The socket's buffer is full: the rest of the chunk would fail the same way,
                    // a system call each. Dropped (counted), as a full queue drops.
                    dropped += spans[offset..messages]
                        .iter()
                        .map(|&(_, c)| c)
                        .sum::<usize>();
                    offset = messages;
                    continue;
                }
                // The first remaining message failed (unreachable): skip it.
                dropped += count;
                offset += 1;
            } else {
                for &(_, count) in &spans[offset..offset + n as usize] {
                    sent += count;
                    if count > 1 {
                        self.calls.gso_messages += 1;
                        self.calls.gso_datagrams += count as u64;
                    }
                }
                offset += n as usize;
            }
        }
        (sent, dropped, pos)
    }

    /// Sends `self.order[start..start + count]` one `send_to` each (a run GSO could not take).
    fn send_each(&mut self, batch: &TransmitBatch, start: usize, count: usize) -> (usize, usize) {
        let mut sent = 0;
        for &i in &self.order[start..start + count] {
            let (dest, data) = batch.get(i);
            self.calls.sends += 1;
            if self.socket.send_to(data, dest).is_ok() {
                sent += 1;
            }
        }
        (sent, count - sent)
    }

    /// Whether runs to one destination go as GSO messages.
    pub fn gso_enabled(&self) -> bool {
        self.gso_segments > 1
    }

    /// Sends runs to one destination as GSO messages, where the kernel can
    /// (`quinn-udp` probes `UDP_SEGMENT`). Returns whether it is on.
    pub fn enable_gso(&mut self) -> bool {
        self.gso_segments = self.state.max_gso_segments().min(GSO_MAX_SEGMENTS);
        self.gso_enabled()
    }
}

/// A sort key that puts one destination's datagrams together (exact for IPv4).
fn destination_key(dest: SocketAddr) -> u64 {
    match dest {
        SocketAddr::V4(a) => (u64::from(a.ip().to_bits()) << 16) | u64::from(a.port()),
        SocketAddr::V6(a) => {
            let ip = a.ip().to_bits();
            ((ip >> 64) as u64 ^ ip as u64).rotate_left(16) ^ u64::from(a.port()) | 1 << 63
        }
    }
}

/// One `UDP_SEGMENT` control message: the size the kernel cuts a GSO message into.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct SegmentControl([u8; Self::LEN]);

impl Default for SegmentControl {
    fn default() -> Self {
        Self([0; Self::LEN])
    }
}

impl SegmentControl {
    // SAFETY (of the calls below): CMSG_SPACE/CMSG_LEN only compute sizes.
    const LEN: usize = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;

    fn new(segment: u16) -> Self {
        let mut c = Self::default();
        let header = libc::cmsghdr {
            cmsg_len: unsafe { libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) } as _,
            cmsg_level: libc::SOL_UDP,
            cmsg_type: libc::UDP_SEGMENT,
        };
        let header_len = std::mem::size_of::<libc::cmsghdr>();
        // SAFETY: `c.0` is 8-aligned and at least a cmsghdr long (CMSG_SPACE of the data);
        // the u16 lands at CMSG_DATA, inside it (CMSG_LEN ≤ LEN).
        unsafe {
            std::ptr::write_unaligned(c.0.as_mut_ptr() as *mut libc::cmsghdr, header);
            std::ptr::write_unaligned(c.0.as_mut_ptr().add(header_len) as *mut u16, segment);
        }
        c
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

    /// Runs to one destination go as GSO messages; every datagram still arrives whole, in
    /// its order within its destination, and the counters say how many went in GSO messages.
    #[test]
    fn runs_to_one_destination_go_as_gso_messages_and_arrive_as_datagrams() {
        let mut a = UdpBatch::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(a.enable_gso(), "this kernel (≥ 4.18) has UDP GSO");
        // Plain sockets: without GRO each datagram is read on its own, as a browser reads.
        let rx: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for r in &rx {
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let to = [rx[0].local_addr().unwrap(), rx[1].local_addr().unwrap()];
        // Interleaved as a fan-out of two writes them: frame packets of 1000, 1000 and a
        // shorter 400 to each, then one larger (not joinable after a shorter one), audio
        // between.
        let plan: [(usize, usize, u8); 9] = [
            (0, 1000, 1),
            (1, 1000, 1),
            (0, 1000, 2),
            (1, 1000, 2),
            (0, 400, 3),
            (1, 400, 3),
            (0, 1001, 4),
            (1, 90, 4),
            (0, 90, 5),
        ];
        let mut batch = TransmitBatch::with_capacity(16);
        for &(dest, len, tag) in &plan {
            batch.push(to[dest], &vec![tag; len]);
        }
        assert_eq!(a.send_batch(&batch), (9, 0));
        for (d, r) in rx.iter().enumerate() {
            let want: Vec<(usize, u8)> = plan
                .iter()
                .filter(|p| p.0 == d)
                .map(|p| (p.1, p.2))
                .collect();
            let mut buf = [0u8; 2048];
            for &(len, tag) in &want {
                let n = r.recv(&mut buf).expect("every datagram arrives");
                assert_eq!((n, buf[0], buf[n - 1]), (len, tag, tag), "destination {d}");
            }
        }
        assert_eq!(a.calls.datagrams_sent, 9);
        // To 0: [1000, 1000, 400], then the larger 1001 starts a run of its own, [1001, 90];
        // to 1: [1000, 1000, 400], then 90 alone.
        assert_eq!(a.calls.gso_messages, 3, "{:?}", a.calls);
        assert_eq!(a.calls.gso_datagrams, 8, "{:?}", a.calls);
        assert_eq!(a.calls.sends, 1);
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

    /// A sink that looks ahead sees the whole batch first, each entry the datagram it is then
    /// handed (a GRO buffer's first segment: a run of equal datagrams may arrive as one).
    #[test]
    fn a_batch_is_shown_whole_before_its_datagrams_are_handed_in() {
        #[derive(Default)]
        struct Recorder {
            ahead: Vec<(SocketAddr, Vec<u8>)>,
            handed: Vec<(SocketAddr, Vec<u8>)>,
            ahead_after_a_datagram: bool,
        }
        impl DatagramSink for Recorder {
            fn looks_ahead(&self) -> bool {
                true
            }
            fn look_ahead(&mut self, batch: &[(SocketAddr, &[u8])]) {
                self.ahead_after_a_datagram |= self.handed.len() > self.ahead.len();
                self.ahead
                    .extend(batch.iter().map(|&(from, d)| (from, d.to_vec())));
            }
            fn datagram(&mut self, from: SocketAddr, buf: &mut [u8]) {
                self.handed.push((from, buf.to_vec()));
            }
        }
        let mut a = UdpBatch::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = UdpBatch::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let mut batch = TransmitBatch::with_capacity(4);
        // Three of different sizes, then a run of four equal ones (sent as one GSO message).
        let sent = [
            (1u8, 20),
            (2, 300),
            (3, 1200),
            (4, 500),
            (5, 500),
            (6, 500),
            (7, 500),
        ];
        for (i, len) in sent {
            batch.push(to, &vec![i; len]);
        }
        assert_eq!(a.send_batch(&batch), (7, 0));
        let mut sink = Recorder::default();
        assert!(b.wait_readable(Duration::from_secs(2)));
        while sink.handed.len() < 7 {
            b.recv_batch_into(&mut sink).unwrap();
            if sink.handed.len() < 7 {
                b.wait_readable(Duration::from_secs(2));
            }
        }
        assert!(
            !sink.ahead_after_a_datagram,
            "each batch shown before it is handed in"
        );
        let from = a.local_addr().unwrap();
        let handed: Vec<_> = sink
            .handed
            .iter()
            .map(|(f, d)| (*f, d[0], d.len()))
            .collect();
        let expected: Vec<_> = sent.iter().map(|&(i, len)| (from, i, len)).collect();
        assert_eq!(handed, expected);
        assert!(sink.ahead.len() >= 4, "{} shown", sink.ahead.len());
        assert!(sink.ahead.iter().all(|a| sink.handed.contains(a)));
        assert_eq!(sink.ahead[..3], sink.handed[..3]);
    }
}
