//! A worker's UDP receive through io_uring (cargo feature `io-uring`, chosen with
//! `sfu.udp_receive = "io-uring"`; see docs/adr/0006): one multishot `recvmsg` stays armed
//! on the socket and the kernel fills buffers of a provided-buffer ring, so one
//! `io_uring_enter` collects every datagram that arrived, where the default path makes
//! `recvmmsg` calls of at most 32.
//!
//! The ring is set up single-issuer with deferred task work: the kernel copies datagrams into
//! buffers only when the worker enters (no interrupt of a busy worker per arrival, and no
//! write to a buffer while the worker reads one), all that arrived by then at once.

use io_uring::types::{BufRingEntry, CancelBuilder, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, types};
use std::alloc::Layout;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// Buffers in the provided-buffer ring (a power of two): datagrams that may arrive between
/// two enters. Few enough that they stay in cache as the kernel cycles through them; what
/// arrives beyond them waits in the socket's queue until the receive is armed again.
pub const RING_BUFFERS: u16 = 512;
/// One buffer: the kernel's `io_uring_recvmsg_out` header, the source address and a datagram
/// up to this size less those (WebRTC keeps datagrams under 1,500 bytes; longer ones are
/// counted and dropped).
pub const BUFFER_SIZE: usize = 2048;
/// The buffer group the multishot receive selects from.
const BUFFER_GROUP: u16 = 7;
/// `user_data` of the multishot receive's completions.
const RECEIVE: u64 = 1;
/// Room for either address family's `sockaddr` in each buffer.
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// Where a datagram starts in its buffer: after the kernel's `struct io_uring_recvmsg_out`
/// (namelen, controllen, payloadlen, flags: four u32) and the name (no control data).
const PAYLOAD_AT: usize = 16 + NAME_LEN;
/// `IORING_ENTER_GETEVENTS`: run deferred work and collect completions.
const ENTER_GETEVENTS: u32 = 1;
/// Receives ended by an error (not a lack of buffers) in a row, with no datagram between,
/// before the io_uring receive is given up (the worker goes back to `recvmmsg`).
const MAX_FAILED_RECEIVES: u32 = 8;

/// What the io_uring receive did, for the worker's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UringCounters {
    /// `io_uring_enter` calls (each a wait, or a collection of what arrived).
    pub enters: u64,
    /// Times the multishot receive was armed again after it ended: out of buffers, an empty
    /// datagram (the kernel ends a multishot receive on one), or an error.
    pub rearms: u64,
    /// Of those, the times the buffers ran out: the worker fell behind by a ring's worth.
    pub out_of_buffers: u64,
    /// Datagrams longer than a buffer: dropped.
    pub truncated: u64,
}

impl UringCounters {
    /// Metric names and HELP text, in the order of [`Self::named`] (`enters` are counted in
    /// `sfu_udp_receive_calls_total`).
    pub const HELP: [(&'static str, &'static str); 2] = [
        (
            "sfu_uring_receive_out_of_buffers_total",
            "Times the worker's io_uring receive ran out of buffers (it fell behind by a ring of datagrams; they waited in the socket's queue).",
        ),
        (
            "sfu_udp_truncated_datagrams_total",
            "Datagrams longer than an io_uring receive buffer, dropped.",
        ),
    ];

    pub fn named(&self) -> [(&'static str, u64); 2] {
        let v = [self.out_of_buffers, self.truncated];
        std::array::from_fn(|i| (Self::HELP[i].0, v[i]))
    }
}

/// Memory shared with the kernel, page aligned: the ring of buffer descriptors, or the
/// buffers. Freed only after the ring that uses it (see `UringReceive`'s field order).
struct SharedMemory {
    at: *mut u8,
    layout: Layout,
}

impl SharedMemory {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let layout =
            Layout::from_size_align(len.next_multiple_of(page), page).map_err(io::Error::other)?;
        // SAFETY: the layout's size is non-zero (at least a page).
        let at = unsafe { std::alloc::alloc_zeroed(layout) };
        if at.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Self { at, layout })
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the kernel no longer uses it (the
        // receive is cancelled, the buffer ring unregistered, the ring dropped before).
        unsafe { std::alloc::dealloc(self.at, self.layout) }
    }
}

pub struct UringReceive {
    // Dropped first, after `Drop::drop` cancelled the receive and unregistered the buffers:
    // then the memory below is no longer the kernel's.
    ring: IoUring,
    /// The ring of buffer descriptors: `buffer_count` entries, the tail in entry 0's
    /// reserved field.
    descriptors: SharedMemory,
    /// `buffer_count` buffers of `BUFFER_SIZE`, back to back.
    buffers: SharedMemory,
    buffer_count: u16,
    /// The receive's `msghdr`: only its name and control lengths matter to the kernel.
    msghdr: Box<libc::msghdr>,
    fd: RawFd,
    /// The ring's tail as written so far (published after each batch).
    tail: u16,
    /// The multishot receive is to be armed (again) at the next enter.
    arm_pending: bool,
    armed_once: bool,
    /// Enabled by the receiving thread.
    started: bool,
    failed_receives: u32,
    /// Why the io_uring receive was given up, if it was.
    broken: Option<io::Error>,
    pub counters: UringCounters,
}

// SAFETY: the raw pointers inside (the shared memory, the msghdr's null name and iovec
// pointers) point into memory this value owns, or nowhere; nothing of it is shared with
// another thread, and the ring it moves with is Send. It is made on one thread and used on the
// worker's only, which enables the ring (`start`).
unsafe impl Send for UringReceive {}

impl std::fmt::Debug for UringReceive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringReceive")
            .field("fd", &self.fd)
            .field("counters", &self.counters)
            .finish()
    }
}

impl UringReceive {
    /// Sets up the ring for the (bound, non-blocking) UDP socket `fd` with `buffer_count`
    /// buffers (a power of two, [`RING_BUFFERS`] for a worker) and registers them; the thread
    /// that receives calls [`Self::start`] (or its first wait does). UDP GRO is turned off on
    /// the socket: a coalesced run would not fit a buffer.
    pub fn new(fd: RawFd, buffer_count: u16) -> io::Result<Self> {
        if !buffer_count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the buffer count must be a power of two",
            ));
        }
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // Enabled by the worker thread in `start`: a single-issuer ring belongs to the
            // thread that enables it, and this one is made where the sockets are bound.
            .setup_r_disabled()
            .setup_cqsize(2 * buffer_count as u32)
            .build(8)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring cannot wait with a timeout (IORING_FEAT_EXT_ARG, Linux 5.11)",
            ));
        }
        let off: libc::c_int = 0;
        // SAFETY: `off` is a c_int alive for the call, its size passed alongside.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_UDP,
                libc::UDP_GRO,
                &off as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // A kernel without UDP GRO never coalesces.
            if err.raw_os_error() != Some(libc::ENOPROTOOPT) {
                return Err(err);
            }
        }
        let descriptors =
            SharedMemory::new(buffer_count as usize * std::mem::size_of::<BufRingEntry>())?;
        let buffers = SharedMemory::new(buffer_count as usize * BUFFER_SIZE)?;
        // SAFETY: msghdr is plain C data; all-zero is valid (no name, no control, no iovecs).
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let mut this = Self {
            ring,
            descriptors,
            buffers,
            buffer_count,
            msghdr,
            fd,
            tail: 0,
            arm_pending: true,
            armed_once: false,
            started: false,
            failed_receives: 0,
            broken: None,
            counters: UringCounters::default(),
        };
        for bid in 0..buffer_count {
            this.give_back(bid);
        }
        this.publish();
        // SAFETY: the descriptor ring is page aligned, `buffer_count` entries long, and
        // outlives the registration (unregistered in `drop`, freed after the ring); the
        // buffers it points at likewise.
        unsafe {
            this.ring.submitter().register_buf_ring_with_flags(
                this.descriptors.at as u64,
                buffer_count,
                BUFFER_GROUP,
                0,
            )?;
        }
        Ok(this)
    }

    /// Makes the calling thread the ring's only user and arms the receive.
    pub fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.ring.submitter().register_enable_rings()?;
            self.started = true;
            self.enter(0, None)?;
        }
        Ok(())
    }

    /// Why the receive was given up (the caller goes back to `recvmmsg`), if it was.
    pub fn broken(&self) -> Option<&io::Error> {
        self.broken.as_ref()
    }

    /// The ring's tail, which the kernel reads (entry 0's reserved field).
    fn tail(&self) -> &AtomicU16 {
        // SAFETY: `descriptors.at` is the ring's first entry, allocated, zeroed and aligned
        // for BufRingEntry in `SharedMemory::new`, alive as long as `self`; the tail field is
        // a naturally aligned u16 the kernel reads concurrently, so it is only accessed
        // atomically.
        unsafe {
            AtomicU16::from_ptr(
                BufRingEntry::tail(self.descriptors.at as *const BufRingEntry) as *mut u16,
            )
        }
    }

    /// Buffer `bid`, which the kernel has handed over (a completion named it) or not yet
    /// been given.
    fn buffer(&mut self, bid: u16) -> &mut [u8] {
        debug_assert!(bid < self.buffer_count);
        // SAFETY: `bid < buffer_count`, so the slice lies inside `buffers`. The kernel writes
        // a buffer only between being given it (`give_back`, `publish`) and naming it in a
        // completion, and with deferred task work only inside this thread's enter: this one
        // it named and has not been given back, so nothing else reads or writes it.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buffers.at.add(bid as usize * BUFFER_SIZE),
                BUFFER_SIZE,
            )
        }
    }

    /// Puts buffer `bid` at the ring's tail (visible to the kernel at `publish`).
    fn give_back(&mut self, bid: u16) {
        let slot = (self.tail & (self.buffer_count - 1)) as usize;
        // SAFETY: inside `buffers`, as in `buffer`.
        let addr = unsafe { self.buffers.at.add(bid as usize * BUFFER_SIZE) };
        // SAFETY: `slot < buffer_count`, inside the descriptor ring. The kernel reads only
        // slots between its head and the published tail; this one is past the tail until
        // `publish`, and never inside the kernel's range since at most `buffer_count`
        // buffers are out (this one was in our hands). The tail lives in entry 0's `resv`,
        // which set_addr/len/bid do not touch.
        let entry = unsafe { &mut *(self.descriptors.at as *mut BufRingEntry).add(slot) };
        entry.set_addr(addr as u64);
        entry.set_len(BUFFER_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back so far visible to the kernel.
    fn publish(&self) {
        self.tail().store(self.tail, Ordering::Release);
    }

    /// Queues the multishot receive (submitted at the next enter).
    fn arm(&mut self) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(types::Fd(self.fd), &*self.msghdr, BUFFER_GROUP)
            .build()
            .user_data(RECEIVE);
        // SAFETY: the msghdr is boxed and lives as long as the ring (the kernel copies it
        // when it takes the entry); the buffers it selects from are registered for as long.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        if self.armed_once {
            self.counters.rearms += 1;
        }
        self.armed_once = true;
        self.arm_pending = false;
        Ok(())
    }

    /// Submits what is queued and runs the kernel's deferred work (the copies of what
    /// arrived), waiting up to `timeout` for at least one completion when given one.
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        if self.arm_pending {
            self.arm()?;
        }
        self.counters.enters += 1;
        let result = match timeout {
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            None => {
                let queued = self.ring.submission().len() as u32;
                // SAFETY: no argument structure is passed; GETEVENTS with a minimum of 0 only
                // runs the deferred work and returns.
                unsafe {
                    self.ring
                        .submitter()
                        .enter::<libc::sigset_t>(queued, 0, ENTER_GETEVENTS, None)
                }
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the receive up for `error`.
    fn give_up(&mut self, error: io::Error) {
        if self.broken.is_none() {
            self.broken = Some(error);
        }
    }

    /// Waits until a datagram has arrived or `timeout` passes; returns whether any is ready.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if self.broken.is_some() {
            return false;
        }
        if let Err(e) = self.start() {
            self.give_up(e);
            return false;
        }
        if !self.ring.completion().is_empty() {
            return true;
        }
        let result = if timeout.is_zero() {
            self.enter(0, None)
        } else {
            self.enter(1, Some(timeout))
        };
        if let Err(e) = result {
            self.give_up(e);
        }
        !self.ring.completion().is_empty()
    }

    /// Whether completions are ready without entering the kernel.
    pub fn more_waiting(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Hands up to `max` received datagrams to `on_datagram` (collecting what arrived first
    /// when nothing is ready), and gives their buffers back to the kernel. Returns how many.
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut on_datagram: impl FnMut(SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        if self.broken.is_some() {
            return Ok(0);
        }
        if let Err(e) = self.start() {
            self.give_up(e);
            return Ok(0);
        }
        if self.ring.completion().is_empty()
            && let Err(e) = self.enter(0, None)
        {
            self.give_up(e);
            return Ok(0);
        }
        let mut count = 0;
        for _ in 0..max {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            if cqe.user_data() != RECEIVE {
                continue;
            }
            let (flags, result) = (cqe.flags(), cqe.result());
            if !cqueue::more(flags) {
                // Ended (out of buffers, an empty datagram, an error): armed again at the next
                // enter; what arrives meanwhile waits in the socket's queue.
                self.arm_pending = true;
            }
            let bid = cqueue::buffer_select(flags);
            if result < 0 {
                if result == -libc::ENOBUFS {
                    self.counters.out_of_buffers += 1;
                } else {
                    self.failed_receives += 1;
                    if self.failed_receives >= MAX_FAILED_RECEIVES {
                        self.give_up(io::Error::from_raw_os_error(-result));
                    }
                }
            } else if let Some(bid) = bid {
                let msghdr = &*self.msghdr as *const libc::msghdr;
                let buffer = self.buffer(bid);
                // SAFETY: `msghdr` points at the boxed msghdr, alive and unchanged.
                let parsed = RecvMsgOut::parse(&buffer[..result as usize], unsafe { &*msghdr })
                    .ok()
                    .map(|out| {
                        (
                            source_address(out.name_data()),
                            out.payload_data().len(),
                            out.is_payload_truncated(),
                        )
                    });
                match parsed {
                    Some((_, _, true)) => self.counters.truncated += 1,
                    Some((Some(from), len, false)) => {
                        on_datagram(from, &mut buffer[PAYLOAD_AT..PAYLOAD_AT + len]);
                        count += 1;
                        self.failed_receives = 0;
                    }
                    _ => {}
                }
            }
            // Whatever the result, a buffer the completion carries goes back to the kernel.
            if let Some(bid) = bid {
                self.give_back(bid);
            }
        }
        self.publish();
        Ok(count)
    }
}

impl Drop for UringReceive {
    fn drop(&mut self) {
        // Synchronously, before the memory goes: the receive cancelled (it also holds the
        // socket, whose port a restart may bind again at once) and the buffers unregistered.
        if self.started {
            let _ = self
                .ring
                .submitter()
                .register_sync_cancel(None, CancelBuilder::user_data(RECEIVE).all());
            // The cancelled receive is finished (and lets go of the socket) by deferred work,
            // which runs only when this thread enters.
            self.arm_pending = false;
            let _ = self.enter(0, None);
        }
        let _ = self.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
    }
}

/// A `sockaddr_in` or `sockaddr_in6` as the kernel wrote it.
fn source_address(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match family as libc::c_int {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp_batch::UdpBatch;
    use std::net::UdpSocket;

    fn receive_all(
        rx: &mut UdpBatch,
        expected: usize,
        within: Duration,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let deadline = std::time::Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < expected && std::time::Instant::now() < deadline {
            if rx.wait_readable(Duration::from_millis(50)) {
                rx.recv_batch(|from, d| got.push((from, d.to_vec())))
                    .expect("receive");
            }
        }
        got
    }

    /// Datagrams arrive whole, in order, from the address they were sent from; more than the
    /// ring has buffers, sent before any is read, end the multishot receive, which is armed
    /// again and loses nothing (the rest waited in the socket's queue).
    #[test]
    fn datagrams_arrive_in_order_even_past_the_ring_of_buffers() {
        const BUFFERS: u16 = 32;
        let mut rx = UdpBatch::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        rx.enable_uring_receive_with(BUFFERS)
            .expect("io_uring receive on this kernel");
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Small enough that all of them fit a default socket buffer (net.core.rmem_max).
        let total = 3 * BUFFERS as usize + 17;
        // The ring is armed by the receiving thread's first wait.
        assert!(!rx.wait_readable(Duration::from_millis(10)));
        for i in 0..total {
            let mut d = (i as u32).to_be_bytes().to_vec();
            d.resize(100 + i % 300, (i % 251) as u8);
            tx.send_to(&d, to).unwrap();
        }
        let got = receive_all(&mut rx, total, Duration::from_secs(5));
        assert_eq!(got.len(), total, "every datagram arrives");
        for (i, (from, d)) in got.iter().enumerate() {
            assert_eq!(*from, tx.local_addr().unwrap());
            assert_eq!(d.len(), 100 + i % 300, "datagram {i}'s length");
            assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), i as u32);
            assert!(d[4..].iter().all(|b| *b == (i % 251) as u8));
        }
        let counters = rx.uring_counters().unwrap();
        assert!(
            counters.out_of_buffers >= 1 && counters.rearms >= counters.out_of_buffers,
            "{counters:?}"
        );
        assert_eq!(counters.truncated, 0);
        // One enter collects up to a ring of datagrams: far fewer calls than datagrams.
        assert!(
            (rx.calls.receives as usize) < total / 4,
            "{} receive calls for {total} datagrams",
            rx.calls.receives
        );
    }

    /// A datagram too long for a buffer is counted and dropped; an empty one reaches the
    /// caller (the core counts it); IPv6 sources keep their address.
    #[test]
    fn oversized_datagrams_are_counted_empty_ones_delivered_and_ipv6_works() {
        let mut rx = UdpBatch::bind("[::1]:0".parse().unwrap()).unwrap();
        rx.enable_uring_receive()
            .expect("io_uring receive on this kernel");
        assert!(!rx.wait_readable(Duration::ZERO));
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        tx.send_to(&[1u8; BUFFER_SIZE + 100], to).unwrap();
        tx.send_to(&[], to).unwrap();
        tx.send_to(b"after", to).unwrap();
        let got = receive_all(&mut rx, 2, Duration::from_secs(2));
        let from = tx.local_addr().unwrap();
        assert_eq!(
            got,
            vec![(from, Vec::new()), (from, b"after".to_vec())],
            "the oversized one dropped, the others whole"
        );
        let counters = rx.uring_counters().unwrap();
        assert_eq!(counters.truncated, 1);
        // The kernel ends a multishot receive at an empty datagram: armed again, and not
        // taken for a worker out of buffers.
        assert!(counters.rearms >= 1, "{counters:?}");
        assert_eq!(counters.out_of_buffers, 0);
    }

    /// Dropped, the receive lets go of the socket at once: its port can be bound again (a
    /// restarted node binds its fixed ports).
    #[test]
    fn a_dropped_receive_releases_its_port_at_once() {
        let mut rx = UdpBatch::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        rx.enable_uring_receive()
            .expect("io_uring receive on this kernel");
        let addr = rx.local_addr().unwrap();
        assert!(!rx.wait_readable(Duration::ZERO), "armed, nothing sent");
        drop(rx);
        let again = UdpBatch::bind(addr).expect("the port is free again");
        assert_eq!(again.local_addr().unwrap(), addr);
    }

    #[test]
    fn source_addresses_of_both_families_are_read() {
        let v4 = SocketAddr::from(([192, 0, 2, 7], 5004));
        let v6: SocketAddr = "[2001:db8::9]:443".parse().unwrap();
        // As the kernel lays out sockaddr_in and sockaddr_in6.
        let mut name4 = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        name4.extend(5004u16.to_be_bytes());
        name4.extend([192, 0, 2, 7]);
        name4.resize(16, 0);
        assert_eq!(source_address(&name4), Some(v4));
        let mut name6 = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        name6.extend(443u16.to_be_bytes());
        name6.extend(0u32.to_be_bytes());
        name6.extend("2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        name6.extend(0u32.to_ne_bytes());
        assert_eq!(source_address(&name6), Some(v6));
        assert_eq!(source_address(&[0u8; 3]), None);
        assert_eq!(source_address(&[0u8; 28]), None, "AF_UNSPEC");
    }
}
