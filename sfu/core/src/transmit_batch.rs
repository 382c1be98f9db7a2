//! Outgoing datagrams of one worker iteration, in buffers the worker reuses.
//!
//! The core writes rewritten, sealed packets straight into slots here; the I/O layer hands the
//! whole batch to `sendmmsg` and clears it. Slots grow to the high-water mark once, then no
//! packet allocates.

use std::net::SocketAddr;

/// Room for an MTU-sized datagram plus SRTP/SRTCP trailers and a rewritten header.
pub const SLOT_SIZE: usize = 1600;
/// Slots a batch keeps however little it held (6.4 MB): a busy worker's usual batch.
const KEPT_SLOTS: usize = 4096;

#[derive(Debug, Default)]
pub struct TransmitBatch {
    data: Vec<u8>,
    meta: Vec<(SocketAddr, usize)>,
    /// Destinations whose media still queued in the I/O layer (an ICE-TCP connection's
    /// send queue) must not go out: their participant may no longer receive it.
    withdrawn: Vec<SocketAddr>,
}

impl TransmitBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(slots: usize) -> Self {
        Self {
            data: vec![0; slots * SLOT_SIZE],
            meta: Vec::with_capacity(slots),
            withdrawn: Vec::new(),
        }
    }

    /// Asks the I/O layer to drop the media it still holds for `dest` (after this batch's).
    pub fn withdraw_media(&mut self, dest: SocketAddr) {
        self.withdrawn.push(dest);
    }

    /// The destinations [`Self::withdraw_media`] named since the last clear.
    pub fn withdrawn(&self) -> &[SocketAddr] {
        &self.withdrawn
    }

    /// The next free slot; write into it, then [`Self::commit`].
    pub fn slot(&mut self) -> &mut [u8] {
        let start = self.meta.len() * SLOT_SIZE;
        if self.data.len() < start + SLOT_SIZE {
            self.data.resize(start + SLOT_SIZE, 0);
        }
        &mut self.data[start..start + SLOT_SIZE]
    }

    pub fn commit(&mut self, dest: SocketAddr, len: usize) {
        debug_assert!(len <= SLOT_SIZE);
        self.meta.push((dest, len.min(SLOT_SIZE)));
    }

    /// Copies a ready datagram into the batch (slow-path packets: STUN, DTLS).
    pub fn push(&mut self, dest: SocketAddr, datagram: &[u8]) {
        if datagram.len() > SLOT_SIZE {
            return;
        }
        let slot = self.slot();
        slot[..datagram.len()].copy_from_slice(datagram);
        self.commit(dest, datagram.len());
    }

    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (dest, len) = self.meta[i];
        let start = i * SLOT_SIZE;
        (dest, &self.data[start..start + len])
    }

    /// Empties the batch. Buffers grown far past what the batch just held (a burst) are given
    /// back, so that one burst does not hold its memory for the worker's life.
    pub fn clear(&mut self) {
        let used = self.meta.len();
        self.meta.clear();
        self.withdrawn.clear();
        let kept = (used * 2).max(KEPT_SLOTS) * SLOT_SIZE;
        if self.data.len() > kept && used < self.data.len() / SLOT_SIZE / 8 {
            self.data.truncate(kept);
            self.data.shrink_to_fit();
            self.meta.shrink_to(used.max(KEPT_SLOTS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst grows the batch; a later, ordinary batch gives the memory back, and a busy
    /// worker's usual batch keeps its buffers.
    #[test]
    fn a_burst_does_not_hold_its_memory() {
        let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut batch = TransmitBatch::new();
        for _ in 0..40_000 {
            batch.push(dest, &[0x80; 100]);
        }
        batch.clear();
        assert_eq!(batch.data.len(), 40_000 * SLOT_SIZE, "kept: as full again");
        batch.push(dest, &[0x80; 100]);
        batch.clear();
        assert_eq!(batch.data.len(), KEPT_SLOTS * SLOT_SIZE);
        for _ in 0..KEPT_SLOTS {
            batch.push(dest, &[0x80; 100]);
        }
        batch.clear();
        batch.push(dest, &[1]);
        assert_eq!(batch.get(0).1, &[1]);
        assert_eq!(batch.data.len(), KEPT_SLOTS * SLOT_SIZE);
    }
}
