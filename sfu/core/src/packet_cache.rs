//! Recently received plaintext packets of one published stream, for retransmission to
//! subscribers that NACK (RFC 4585). Metadata in fixed slots indexed by sequence number;
//! payloads back to back in one byte ring (allocated on the first packet), so the cache costs
//! what packets actually weigh rather than a full-size slot each.

/// What a cached packet needs to be rewritten again.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedMeta {
    pub ext_seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub audio_level: Option<u8>,
    pub len: u16,
    pub valid: bool,
    /// Where the payload starts, counted in bytes ever written to the ring.
    start: u64,
}

#[derive(Debug)]
pub struct PacketCache {
    slots: usize,
    ring: Vec<u8>,
    /// Bytes ever written to the ring (including the tails skipped to avoid wrapping a packet).
    written: u64,
    meta: Vec<CachedMeta>,
}

pub const CACHE_PAYLOAD_MAX: usize = 1400;
/// Ring bytes per slot: video packets average well under the 1,400-byte maximum, so the ring
/// still holds about as many packets as there are slots.
const RING_BYTES_PER_SLOT: usize = 700;

impl PacketCache {
    pub fn new(slots: usize) -> Self {
        Self {
            slots,
            ring: Vec::new(),
            written: 0,
            meta: vec![CachedMeta::default(); slots],
        }
    }

    fn index(&self, ext_seq: u64) -> usize {
        (ext_seq % self.slots as u64) as usize
    }

    fn ring_len(&self) -> usize {
        (self.slots * RING_BYTES_PER_SLOT).max(CACHE_PAYLOAD_MAX)
    }

    pub fn insert(
        &mut self,
        ext_seq: u64,
        timestamp: u32,
        marker: bool,
        audio_level: Option<u8>,
        payload: &[u8],
    ) {
        if payload.len() > CACHE_PAYLOAD_MAX || self.slots == 0 {
            return;
        }
        if self.ring.is_empty() {
            // Lazily: an audio-only or muted track never pays for it.
            self.ring = vec![0; self.ring_len()];
        }
        let ring = self.ring.len() as u64;
        // A payload never wraps around the end of the ring: the tail is skipped.
        let pos = self.written % ring;
        if pos + payload.len() as u64 > ring {
            self.written += ring - pos;
        }
        let start = self.written;
        let at = (start % ring) as usize;
        self.ring[at..at + payload.len()].copy_from_slice(payload);
        self.written += payload.len() as u64;
        let i = self.index(ext_seq);
        self.meta[i] = CachedMeta {
            ext_seq,
            timestamp,
            marker,
            audio_level,
            len: payload.len() as u16,
            valid: true,
            start,
        };
    }

    /// Whether a slot's payload is still in the ring (not overwritten by later packets).
    fn intact(&self, m: &CachedMeta) -> bool {
        m.valid && self.written <= m.start + self.ring.len() as u64
    }

    #[cfg(test)]
    fn contains(&self, ext_seq: u64) -> bool {
        let m = &self.meta[self.index(ext_seq)];
        m.ext_seq == ext_seq && self.intact(m)
    }

    /// The packet with `ext_seq` if still cached (how often each subscriber may have it
    /// resent is counted per subscriber, `ResendRecord`).
    pub fn get(&self, ext_seq: u64) -> Option<(CachedMeta, &[u8])> {
        if self.slots == 0 {
            return None;
        }
        let meta = self.meta[self.index(ext_seq)];
        if meta.ext_seq != ext_seq || !self.intact(&meta) {
            return None;
        }
        let at = (meta.start % self.ring.len() as u64) as usize;
        Some((meta, &self.ring[at..at + meta.len as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_packets_until_overwritten() {
        let mut c = PacketCache::new(4);
        c.insert(10, 1, false, None, b"ten");
        c.insert(11, 2, true, None, b"eleven");
        let (m, p) = c.get(10).unwrap();
        assert_eq!((m.timestamp, p), (1, &b"ten"[..]));
        assert!(c.get(12).is_none());
        c.insert(14, 3, false, None, b"fourteen"); // same slot as 10
        assert!(!c.contains(10));
        assert!(c.get(10).is_none());
        assert!(c.contains(14));
        assert!(c.contains(11));
    }

    #[test]
    fn large_packets_overwrite_older_ones_in_the_ring() {
        // 8 slots → a 5,600-byte ring: four 1,400-byte packets fill it.
        let mut c = PacketCache::new(8);
        let big = [7u8; 1400];
        for seq in 0..4 {
            c.insert(seq, 0, false, None, &big);
        }
        assert!((0..4).all(|s| c.contains(s)));
        c.insert(4, 0, false, None, &big);
        assert!(!c.contains(0), "its bytes were reused");
        assert!(c.contains(1) && c.contains(4));
        assert!(c.get(0).is_none());
        // Payloads of any size come back whole.
        c.insert(5, 0, false, None, &[1u8; 100]);
        c.insert(6, 0, false, None, &[2u8; 1400]);
        let (_, p) = c.get(6).unwrap();
        assert_eq!(p, &[2u8; 1400][..]);
        let (_, p) = c.get(5).unwrap();
        assert_eq!(p, &[1u8; 100][..]);
    }
}
