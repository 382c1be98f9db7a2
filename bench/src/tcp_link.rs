//! A simulated participant's ICE-TCP link (RFC 6544, active side): one TCP connection to the
//! SFU's media address, opened by the first packet to it, carrying the participant's datagrams
//! in RFC 4571 frames — as a browser on a network that blocks UDP does.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use sfu_core::tcp_framing::{FrameQueue, FrameReader, Queued};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};

pub struct TcpLink {
    /// The participant's own address: the SFU admits only so many ICE-TCP connections from one
    /// address, so simulated participants each come from their own (any of 127/8 on Linux).
    local: IpAddr,
    stream: Option<TcpStream>,
    server: Option<SocketAddr>,
    reader: FrameReader,
    queue: FrameQueue,
    /// The connection failed or the server closed it; nothing more is sent or read.
    pub closed: bool,
}

impl TcpLink {
    pub fn new(local: IpAddr) -> Self {
        Self {
            local,
            stream: None,
            server: None,
            reader: FrameReader::default(),
            queue: FrameQueue::default(),
            closed: false,
        }
    }

    /// Queues `packet` for `dest`, connecting on first use (registered under `token`). Returns
    /// whether it was queued (`false`: media dropped because the connection is behind, or the
    /// link is closed).
    pub fn push(
        &mut self,
        registry: &Registry,
        token: Token,
        dest: SocketAddr,
        packet: &[u8],
    ) -> io::Result<bool> {
        if self.closed {
            return Ok(false);
        }
        if self.stream.is_none() {
            let mut stream = self.connect(dest)?;
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            self.stream = Some(stream);
            self.server = Some(dest);
        }
        if self.server != Some(dest) {
            // One connection, to the one candidate the participant uses.
            return Ok(false);
        }
        match self.queue.push(packet) {
            Queued::Yes => Ok(true),
            Queued::MediaDropped => Ok(false),
            Queued::Overflow => {
                self.closed = true;
                Ok(false)
            }
        }
    }

    /// A non-blocking connection from the participant's address to `dest`.
    fn connect(&self, dest: SocketAddr) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&SocketAddr::new(self.local, 0).into())?;
        match socket.connect(&dest.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    /// Writes what the socket takes now.
    pub fn write(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        match self.queue.write_to(stream) {
            Ok(_) => {}
            // Still connecting: the writable event comes when it is done.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(_) => self.closed = true,
        }
    }

    /// Reads everything available and hands each received packet, with the server's address,
    /// to `on_packet`.
    pub fn read(&mut self, mut on_packet: impl FnMut(SocketAddr, &mut [u8])) {
        let (Some(stream), Some(server)) = (self.stream.as_mut(), self.server) else {
            return;
        };
        loop {
            match stream.read(self.reader.spare()) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    self.reader.filled(n);
                    if self.reader.drain(|p| on_packet(server, p)).is_err() {
                        self.closed = true;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }
}
