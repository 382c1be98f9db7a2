//! ICE-TCP for one worker (RFC 6544 passive candidates, RFC 4571 framing): a TCP listener on
//! the worker's port, the connections browsers open to it, and the packets framed on them.
//!
//! Each connection is one remote address to the core, never a UDP client's (`stream_address`):
//! a framed packet is handed over exactly like a datagram from that address, and what the core
//! sends to it is framed back. Memory is
//! bounded per connection: a reader that falls behind loses media first (counted), control
//! (STUN, DTLS) only past a hard cap, and a connection that stops reading altogether is closed.

use sfu_core::stream_address;
use sfu_core::tcp_framing::{FrameQueue, FrameReader, Queued};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// A connection with output waiting and no byte written for this long has stopped reading.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Nothing received for this long (browsers check consent every few seconds): closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per worker at most; further ones are refused (closed at once) and counted.
/// Fewer when the node's open files do not allow as many ([`TcpShare`]).
pub const MAX_LINKS: usize = 4096;
/// Connections from one IP address (or IPv6 /64) over all of the node's workers (a hospital's
/// guest Wi-Fi puts many patients behind one address, but not hundreds on one node).
pub const MAX_LINKS_PER_SOURCE: usize = 64;
/// File descriptors the node keeps for everything but ICE-TCP connections: its sockets, the
/// operations listener the kubelet probes, the control link, certificates read at each dial.
pub const FD_RESERVE: u64 = 256;
/// Output queued on one worker's connections together, at most: past it the connections
/// holding the most are closed as slow (each connection's own cap, 1 MiB, times thousands of
/// connections would be gigabytes).
pub const WORKER_QUEUE_BUDGET: usize = 32 * 1024 * 1024;
/// A connection the core never answered (no valid connectivity check on it) is closed after
/// this long: garbage or a stranger's probes do not hold a slot for the idle timeout.
pub const UNANSWERED_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection the core answered once but has sent nothing for this long is closed: its
/// session ended or its path was given up (a browser checks consent on the path it uses every
/// few seconds, and the core answers each). Reading alone does not keep it: a connection kept
/// open with a byte now and then after its session ended held a slot of its address's share,
/// which patients behind the same hospital Wi-Fi or carrier NAT need.
pub const SILENCED_TIMEOUT: Duration = Duration::from_secs(15);
/// Out of file descriptors: stop accepting for this long instead of spinning on a listener
/// that stays readable.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// What happened on a worker's TCP side, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IceTcpCounters {
    pub accepted: u64,
    pub refused: u64,
    pub closed: u64,
    /// Closed because the peer stopped reading (stall or hard cap).
    pub closed_slow: u64,
    pub closed_idle: u64,
    /// Media packets not queued because the connection's queue was full.
    pub media_dropped: u64,
    /// A frame longer than the receive buffer or a zero-length frame: the connection closes.
    pub bad_frames: u64,
}

impl IceTcpCounters {
    /// The HELP text of every counter of [`IceTcpCounters::named`], by name.
    pub const HELP: [(&'static str, &'static str); 7] = [
        (
            "sfu_ice_tcp_accepted_total",
            "ICE-TCP connections accepted.",
        ),
        (
            "sfu_ice_tcp_refused_total",
            "ICE-TCP connections refused (the worker's or one address's limit, or out of file descriptors).",
        ),
        (
            "sfu_ice_tcp_closed_total",
            "ICE-TCP connections closed, for any reason.",
        ),
        (
            "sfu_ice_tcp_closed_slow_total",
            "ICE-TCP connections closed because their reader stopped reading.",
        ),
        (
            "sfu_ice_tcp_closed_idle_total",
            "ICE-TCP connections closed after 30 s without traffic, 10 s without a valid check, or 15 s with nothing sent to them (their session ended).",
        ),
        (
            "sfu_ice_tcp_media_dropped_total",
            "Media packets dropped for a slow ICE-TCP reader (its queue was full).",
        ),
        (
            "sfu_ice_tcp_bad_frames_total",
            "ICE-TCP frames of zero length or longer than the receive buffer (the connection is closed).",
        ),
    ];

    pub fn named(&self) -> [(&'static str, u64); 7] {
        [
            ("sfu_ice_tcp_accepted_total", self.accepted),
            ("sfu_ice_tcp_refused_total", self.refused),
            ("sfu_ice_tcp_closed_total", self.closed),
            ("sfu_ice_tcp_closed_slow_total", self.closed_slow),
            ("sfu_ice_tcp_closed_idle_total", self.closed_idle),
            ("sfu_ice_tcp_media_dropped_total", self.media_dropped),
            ("sfu_ice_tcp_bad_frames_total", self.bad_frames),
        ]
    }
}

#[derive(Debug)]
struct TcpLink {
    stream: TcpStream,
    /// Its key in the worker's epoll set.
    token: u64,
    /// The source it counts against (its address, or its IPv6 /64); the core knows it by
    /// `stream_address`.
    source: std::net::IpAddr,
    /// Registered for writability (its queue holds something the socket did not take).
    writing: bool,
    reader: FrameReader,
    out: FrameQueue,
    opened: Instant,
    last_read: Instant,
    last_progress: Instant,
    /// When the core last sent something here (it answered a check with valid credentials,
    /// or sent media); never: a stranger's connection so far.
    last_answered: Option<Instant>,
}

impl TcpLink {
    /// Watches the connection for writability in `epoll` while its queue holds something
    /// (one system call when that changes, none otherwise).
    fn watch_writes(&mut self, epoll: RawFd) -> io::Result<()> {
        let want = !self.out.is_empty();
        if want != self.writing {
            let events = libc::EPOLLIN as u32 | if want { libc::EPOLLOUT as u32 } else { 0 };
            epoll_ctl(
                epoll,
                libc::EPOLL_CTL_MOD,
                self.stream.as_raw_fd(),
                events,
                self.token,
            )?;
            self.writing = want;
        }
        Ok(())
    }
}

/// Adds, changes or removes `fd` in the epoll set `epoll` (level-triggered, as `poll`).
fn epoll_ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `epoll` is the worker's open epoll descriptor; `fd` is an open descriptor owned
    // by this worker (the UDP socket, the listener or a connection's stream); `event` is a
    // valid epoll_event that outlives the call (ignored for EPOLL_CTL_DEL).
    let rc = unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The worker's listener and connections, and the epoll set that watches them with the
/// worker's UDP socket: a wake-up reports only what is ready, however many connections
/// there are (`poll` over every descriptor cost the worker on each wake-up).
#[derive(Debug)]
pub struct IceTcp {
    listener: TcpListener,
    links: HashMap<SocketAddr, TcpLink>,
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
    tokens: HashMap<u64, SocketAddr>,
    next_token: u64,
    /// The UDP socket registered in the set (it is given with each wait).
    udp_fd: Option<RawFd>,
    /// The listener is registered for readability (not while accepting is paused).
    listener_armed: bool,
    next_expire: Instant,
    /// Connections to close after the turn, by address and token (an address may be a new
    /// connection's by then).
    closing: Vec<(SocketAddr, u64, CloseReason)>,
    share: TcpShare,
    accept_paused_until: Option<Instant>,
    pub counters: IceTcpCounters,
}

/// What the workers' ICE-TCP sides share: the connections of each source over all of them (an
/// address's share of the node, not of each worker), and how many one worker may hold (the
/// node's open files, less a reserve, shared out).
#[derive(Debug, Clone)]
pub struct TcpShare {
    per_source: std::sync::Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
    max_links: usize,
}

impl TcpShare {
    /// For `workers` workers in a process that may open `open_files` descriptors, `reserve` of
    /// them kept for everything else.
    pub fn new(workers: usize, open_files: u64, reserve: u64) -> Self {
        let room = open_files.saturating_sub(reserve) / workers.max(1) as u64;
        Self {
            per_source: Default::default(),
            max_links: usize::try_from(room)
                .unwrap_or(MAX_LINKS)
                .clamp(16, MAX_LINKS),
        }
    }

    pub fn max_links(&self) -> usize {
        self.max_links
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<std::net::IpAddr, usize>> {
        self.per_source.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection of `source` if it has fewer than [`MAX_LINKS_PER_SOURCE`].
    fn take(&self, source: std::net::IpAddr) -> bool {
        let mut counts = self.counts();
        let n = counts.entry(source).or_default();
        if *n >= MAX_LINKS_PER_SOURCE {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, source: std::net::IpAddr) {
        let mut counts = self.counts();
        if let std::collections::hash_map::Entry::Occupied(mut e) = counts.entry(source) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Keys in the epoll set below those of connections.
const UDP_TOKEN: u64 = 0;
const LISTENER_TOKEN: u64 = 1;
/// Ready descriptors taken per wait.
const EVENTS_PER_WAIT: usize = 256;
/// Idle and stalled connections are looked for this often (not on every wake-up).
const EXPIRE_EVERY: Duration = Duration::from_millis(250);
/// Frames handed to the core per turn, all connections together, and bytes read per `read`
/// call: what the core queues in reply is sent only after the turn, so without a bound one
/// peer's connections full of small checks grew the worker's send batch by hundreds of MB
/// and held up its other visits. Connections left unread stay readable for the next turn.
pub const FRAMES_PER_POLL: usize = 512;
pub const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    Peer,
    Slow,
    Idle,
    BadFrame,
}

impl IceTcp {
    /// Listens on `addr` (the worker's UDP port number, so one candidate address serves both),
    /// the only worker of a process that may open 1,024 files.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_shared(addr, TcpShare::new(1, 1024 + FD_RESERVE, FD_RESERVE))
    }

    /// Listens on `addr`, one of the workers sharing `share`.
    pub fn bind_shared(addr: SocketAddr, share: TcpShare) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        // SAFETY: epoll_create1 takes only flags; a non-negative result is a new descriptor
        // that nothing else owns, handed to OwnedFd at once.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let this = Self {
            listener,
            links: HashMap::new(),
            epoll,
            events: Vec::with_capacity(EVENTS_PER_WAIT),
            tokens: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            udp_fd: None,
            listener_armed: true,
            next_expire: Instant::now() + EXPIRE_EVERY,
            closing: Vec::new(),
            share,
            accept_paused_until: None,
            counters: IceTcpCounters::default(),
        };
        this.ctl(
            libc::EPOLL_CTL_ADD,
            this.listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER_TOKEN,
        )?;
        Ok(this)
    }

    /// Adds, changes or removes a descriptor in the epoll set (level-triggered, as `poll`).
    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        epoll_ctl(self.epoll.as_raw_fd(), op, fd, events, token)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn has_links(&self) -> bool {
        !self.links.is_empty()
    }

    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Whether `dest` is one of our connections (what the core sends there goes over TCP).
    pub fn is_link(&self, dest: &SocketAddr) -> bool {
        self.links.contains_key(dest)
    }

    /// Drops the media queued for connection `dest` and not yet begun on the wire (its
    /// participant may no longer receive it); returns how many packets.
    pub fn withdraw_media(&mut self, dest: &SocketAddr) -> usize {
        self.links
            .get_mut(dest)
            .map_or(0, |link| link.out.drop_media())
    }

    /// Queues a packet for a connection; false when `dest` is not one.
    pub fn send(&mut self, now: Instant, dest: SocketAddr, packet: &[u8]) -> bool {
        let epoll = self.epoll.as_raw_fd();
        let Some(link) = self.links.get_mut(&dest) else {
            return false;
        };
        link.last_answered = Some(now);
        let token = link.token;
        let was_empty = link.out.is_empty();
        match link.out.push(packet) {
            Queued::Yes => {
                if was_empty {
                    link.last_progress = now;
                }
                // Most of the time the socket takes it at once.
                match link.out.write_to(&mut link.stream) {
                    Ok(n) if n > 0 => link.last_progress = now,
                    Ok(_) => {}
                    Err(_) => self.closing.push((dest, token, CloseReason::Peer)),
                }
            }
            Queued::MediaDropped => self.counters.media_dropped += 1,
            Queued::Overflow => self.closing.push((dest, token, CloseReason::Slow)),
        }
        if link.watch_writes(epoll).is_err() {
            self.closing.push((dest, token, CloseReason::Peer));
        }
        true
    }

    /// Waits up to `timeout` for the UDP socket `udp_fd`, the listener or a connection, then
    /// accepts, reads (each frame to `on_frame` with its connection's address) and writes.
    /// Returns whether the UDP socket is readable.
    pub fn poll(
        &mut self,
        udp_fd: RawFd,
        timeout: Duration,
        mut on_frame: impl FnMut(SocketAddr, &mut [u8]),
    ) -> bool {
        if self.udp_fd != Some(udp_fd) {
            let op = if self.udp_fd.is_some() {
                libc::EPOLL_CTL_MOD
            } else {
                libc::EPOLL_CTL_ADD
            };
            if self
                .ctl(op, udp_fd, libc::EPOLLIN as u32, UDP_TOKEN)
                .is_ok()
            {
                self.udp_fd = Some(udp_fd);
            }
        }
        let now = Instant::now();
        let accepting = self.accept_paused_until.is_none_or(|t| now >= t);
        if accepting != self.listener_armed {
            let events = if accepting { libc::EPOLLIN as u32 } else { 0 };
            if self
                .ctl(
                    libc::EPOLL_CTL_MOD,
                    self.listener.as_raw_fd(),
                    events,
                    LISTENER_TOKEN,
                )
                .is_ok()
            {
                self.listener_armed = accepting;
            }
        }
        let ms = crate::udp_batch::wait_millis(timeout);
        self.events.clear();
        // SAFETY: the epoll descriptor is ours and open; `events` has capacity for
        // EVENTS_PER_WAIT entries, which is the count passed, and epoll_wait writes at most
        // that many; the length is set to what it reports below.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                EVENTS_PER_WAIT as libc::c_int,
                ms,
            )
        };
        // SAFETY: epoll_wait initialised the first `n` entries (n ≤ capacity); on an error
        // (n < 0, e.g. EINTR) none are used.
        unsafe { self.events.set_len(n.max(0) as usize) };
        let now = Instant::now();
        let mut udp_readable = false;
        let mut budget = FRAMES_PER_POLL;
        let events = std::mem::take(&mut self.events);
        for event in &events {
            let (token, flags) = (event.u64, event.events);
            match token {
                UDP_TOKEN => udp_readable = flags & libc::EPOLLIN as u32 != 0,
                LISTENER_TOKEN => self.accept(now),
                _ => {
                    let Some(&addr) = self.tokens.get(&token) else {
                        continue;
                    };
                    let readable = (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                    if flags & readable != 0 && budget > 0 {
                        self.read(now, addr, &mut budget, &mut on_frame);
                    }
                    if flags & libc::EPOLLOUT as u32 != 0 {
                        self.write(now, addr);
                    }
                }
            }
        }
        self.events = events;
        if now >= self.next_expire {
            self.next_expire = now + EXPIRE_EVERY;
            self.expire(now);
        }
        self.close_pending();
        udp_readable
    }

    fn accept(&mut self, now: Instant) {
        // A bounded number per turn: a connection flood cannot starve media.
        for _ in 0..64 {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    // An IPv6 host may use any address of its /64: the /64 is one source.
                    let source = crate::counted_source::counted_source(peer.ip());
                    // Never a UDP client's path, whatever its address and port.
                    let addr = stream_address::of_stream(peer);
                    // A connection still held under this address (its peer reset it and came
                    // back from the same port within the turn) ends now, with its count — before
                    // the limits, which it would otherwise hold against its own successor.
                    if self.links.contains_key(&addr) {
                        self.close_link(addr, CloseReason::Peer);
                    }
                    if self.links.len() >= self.share.max_links
                        || stream.set_nonblocking(true).is_err()
                        || !self.share.take(source)
                    {
                        self.counters.refused += 1;
                        continue;
                    }
                    let token = self.next_token;
                    if self
                        .ctl(
                            libc::EPOLL_CTL_ADD,
                            stream.as_raw_fd(),
                            libc::EPOLLIN as u32,
                            token,
                        )
                        .is_err()
                    {
                        self.share.give_back(source);
                        self.counters.refused += 1;
                        continue;
                    }
                    self.next_token += 1;
                    self.tokens.insert(token, addr);
                    let _ = stream.set_nodelay(true);
                    limit_send_buffer(&stream);
                    self.counters.accepted += 1;
                    self.links.insert(
                        addr,
                        TcpLink {
                            stream,
                            token,
                            source,
                            writing: false,
                            reader: FrameReader::default(),
                            out: FrameQueue::default(),
                            opened: now,
                            last_read: now,
                            last_progress: now,
                            last_answered: None,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // Most likely out of file descriptors: the listener stays readable, so
                    // accepting pauses rather than spinning the worker's loop.
                    tracing::warn!(error = %e, "ICE-TCP accept failed; pausing accepts");
                    self.counters.refused += 1;
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    break;
                }
            }
        }
    }

    fn read(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        budget: &mut usize,
        on_frame: &mut impl FnMut(SocketAddr, &mut [u8]),
    ) {
        let Some(link) = self.links.get_mut(&addr) else {
            return;
        };
        let token = link.token;
        // A few reads per turn, then the others get theirs.
        for _ in 0..4 {
            if *budget == 0 {
                return;
            }
            let spare = link.reader.spare();
            let chunk = spare.len().min(READ_CHUNK);
            match link.stream.read(&mut spare[..chunk]) {
                Ok(0) => {
                    self.closing.push((addr, token, CloseReason::Peer));
                    return;
                }
                Ok(n) => {
                    link.last_read = now;
                    link.reader.filled(n);
                    let drained = link.reader.drain(|frame| {
                        *budget = budget.saturating_sub(1);
                        on_frame(addr, frame)
                    });
                    // Before its first valid check only small frames make sense (a check is a
                    // few hundred bytes): a stranger's connection does not get to hold a large
                    // frame's buffer.
                    if drained.is_err() || (link.last_answered.is_none() && link.reader.grown()) {
                        self.closing.push((addr, token, CloseReason::BadFrame));
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.closing.push((addr, token, CloseReason::Peer));
                    return;
                }
            }
        }
    }

    fn write(&mut self, now: Instant, addr: SocketAddr) {
        let epoll = self.epoll.as_raw_fd();
        let Some(link) = self.links.get_mut(&addr) else {
            return;
        };
        let token = link.token;
        match link.out.write_to(&mut link.stream) {
            Ok(n) if n > 0 => link.last_progress = now,
            Ok(_) => {}
            Err(_) => self.closing.push((addr, token, CloseReason::Peer)),
        }
        if link.watch_writes(epoll).is_err() {
            self.closing.push((addr, token, CloseReason::Peer));
        }
    }

    fn expire(&mut self, now: Instant) {
        let mut queued = 0;
        for (addr, link) in &self.links {
            if !link.out.is_empty() && now.duration_since(link.last_progress) > STALL_TIMEOUT {
                self.closing.push((*addr, link.token, CloseReason::Slow));
            } else if now.duration_since(link.last_read) > IDLE_TIMEOUT
                || match link.last_answered {
                    None => now.duration_since(link.opened) > UNANSWERED_TIMEOUT,
                    Some(t) => now.saturating_duration_since(t) > SILENCED_TIMEOUT,
                }
            {
                self.closing.push((*addr, link.token, CloseReason::Idle));
            } else {
                queued += link.out.len();
            }
        }
        // Over the worker's budget of queued output (connections that each read just enough
        // not to count as stalled): the ones with the most queued go first, as slow.
        if queued > WORKER_QUEUE_BUDGET {
            let closing: std::collections::HashSet<u64> =
                self.closing.iter().map(|(_, token, _)| *token).collect();
            let mut by_size: Vec<(usize, SocketAddr, u64)> = self
                .links
                .iter()
                .filter(|(_, l)| !l.out.is_empty() && !closing.contains(&l.token))
                .map(|(addr, l)| (l.out.len(), *addr, l.token))
                .collect();
            by_size.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
            for (size, addr, token) in by_size {
                if queued <= WORKER_QUEUE_BUDGET {
                    break;
                }
                queued -= size;
                self.closing.push((addr, token, CloseReason::Slow));
            }
        }
    }

    /// Closes what was marked during the turn (once each, and only the connection marked).
    pub fn close_pending(&mut self) {
        for (addr, token, reason) in std::mem::take(&mut self.closing) {
            if self.links.get(&addr).is_some_and(|l| l.token == token) {
                self.close_link(addr, reason);
            }
        }
    }

    fn close_link(&mut self, addr: SocketAddr, reason: CloseReason) {
        let Some(link) = self.links.remove(&addr) else {
            return;
        };
        self.tokens.remove(&link.token);
        // Closing the stream would drop it from the set as well; said explicitly.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, link.stream.as_raw_fd(), 0, link.token);
        self.share.give_back(link.source);
        self.counters.closed += 1;
        match reason {
            CloseReason::Slow => self.counters.closed_slow += 1,
            CloseReason::Idle => self.counters.closed_idle += 1,
            CloseReason::BadFrame => self.counters.bad_frames += 1,
            CloseReason::Peer => {}
        }
        tracing::debug!(%addr, ?reason, "ICE-TCP connection closed");
    }
}

/// Media over TCP must not sit in a deep kernel buffer (seconds of delay, and a reader that
/// stopped would hide there for long): the queue above is where it waits, bounded and visible.
const KERNEL_SEND_BUFFER: libc::c_int = 128 * 1024;

fn limit_send_buffer(stream: &TcpStream) {
    let value = KERNEL_SEND_BUFFER;
    // SAFETY: the fd is an open socket owned by `stream`; `value` is a c_int that outlives
    // the call and its size is passed as the option length.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "SO_SNDBUF not set");
    }
}
