//! How many TCP connections the service holds at once, in all and per source address: past
//! either cap a new connection is closed as soon as it is accepted, so a client that opens
//! sockets and never finishes a request (slowloris) cannot take the file descriptors every
//! other visit needs. Connections count until they close, whatever they carry (a page, a
//! join check, a WebSocket).

use axum_server::accept::Accept;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_source: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

pub use sfu_server::counted_source::counted_source;

/// Holds one counted connection; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            open: Mutex::new(Open::default()),
        })
    }

    /// A place for a new connection from `source`, unless a cap is reached.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<ConnectionSlot> {
        let source = counted_source(source);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = open.by_source.get(&source).copied().unwrap_or(0);
        if open.total >= self.max_total || from_source >= self.max_per_source {
            return None;
        }
        open.total += 1;
        *open.by_source.entry(source).or_default() += 1;
        Some(ConnectionSlot {
            limits: self.clone(),
            source,
        })
    }

    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// The acceptor that applies the limits before anything is read (before TLS, too).
#[derive(Debug, Clone)]
pub struct LimitedAcceptor {
    pub limits: Arc<ConnectionLimits>,
    /// How long a new connection may stay silent: the header-read timeout starts at a
    /// request's first byte, so a connection that never sends one would hold its place for
    /// ever (each source's share of the limits, filled with idle sockets from many sources).
    pub first_byte: std::time::Duration,
}

impl<S: Send + 'static> Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = CountedStream;
    type Service = S;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<(CountedStream, S)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = stream
            .peer_addr()
            .ok()
            .and_then(|peer| self.limits.admit(peer.ip()));
        let Some(slot) = slot else {
            metrics::counter!("signaling_connections_refused_total").increment(1);
            // Dropping the stream closes it at once.
            return Box::pin(std::future::ready(Err(io::Error::other(
                "connection limit reached",
            ))));
        };
        let first_byte = self.first_byte;
        // (Each connection is accepted on a task of its own: waiting here holds up no other.)
        Box::pin(async move {
            // (Readiness alone may be reported before a byte is there: a byte is looked at.)
            let mut first = [0u8; 1];
            match tokio::time::timeout(first_byte, stream.peek(&mut first)).await {
                Ok(Ok(_)) => Ok((
                    CountedStream {
                        inner: stream,
                        _slot: slot,
                    },
                    service,
                )),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    metrics::counter!("signaling_connections_idle_closed_total").increment(1);
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "nothing sent on a new connection",
                    ))
                }
            }
        })
    }
}

/// A TCP stream that holds its place in the limits while it is open.
#[derive(Debug)]
pub struct CountedStream {
    inner: TcpStream,
    _slot: ConnectionSlot,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_all_and_per_source_and_frees_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "per source");
        // The IPv4-mapped IPv6 form of the same address is the same source.
        assert!(limits.admit("::ffff:198.18.0.1".parse().unwrap()).is_none());
        let _b1 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "in all");
        drop(a1);
        assert_eq!(limits.open_connections(), 2);
        assert!(limits.admit(b).is_some());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_whole_64() {
        let limits = ConnectionLimits::new(100, 2);
        let _first = limits.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _second = limits
            .admit("2001:db8:1:2:ffff::9".parse().unwrap())
            .unwrap();
        // Any other address of the prefix is the same source...
        assert!(
            limits
                .admit("2001:db8:1:2:abcd::3".parse().unwrap())
                .is_none()
        );
        // ...and the next prefix another.
        assert!(limits.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
    }
}
