//! Where a receive hands its datagrams: first the whole batch to look ahead at, then each
//! datagram to handle.

use std::net::SocketAddr;

pub trait DatagramSink {
    /// Whether [`DatagramSink::look_ahead`] wants the batch (else it is not even listed).
    fn looks_ahead(&self) -> bool {
        false
    }

    /// The batch about to be handed in (read-only; one entry per received buffer, its first
    /// GRO segment), so what the datagrams will need can be asked for before any is handled.
    fn look_ahead(&mut self, _batch: &[(SocketAddr, &[u8])]) {}

    fn datagram(&mut self, from: SocketAddr, buf: &mut [u8]);
}

/// A closure handles each datagram and looks at nothing ahead.
pub struct EachDatagram<F>(pub F);

impl<F: FnMut(SocketAddr, &mut [u8])> DatagramSink for EachDatagram<F> {
    fn datagram(&mut self, from: SocketAddr, buf: &mut [u8]) {
        (self.0)(from, buf)
    }
}
