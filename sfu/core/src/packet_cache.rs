//! Recently received plaintext packets of one published stream, for retransmission to
//! subscribers that NACK (RFC 4585). Fixed slots, allocated once, indexed by sequence number.

/// What a cached packet needs to be rewritten again.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedMeta {
    pub ext_seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub audio_level: Option<u8>,
    pub len: u16,
    /// Retransmissions already sent from this slot (capped per packet).
    pub resent: u8,
    pub valid: bool,
}

#[derive(Debug)]
pub struct PacketCache {
    slots: usize,
    payloads: Vec<u8>,
    meta: Vec<CachedMeta>,
}

pub const CACHE_PAYLOAD_MAX: usize = 1400;

impl PacketCache {
    pub fn new(slots: usize) -> Self {
        Self {
            slots,
            payloads: Vec::new(),
            meta: vec![CachedMeta::default(); slots],
        }
    }

    fn index(&self, ext_seq: u64) -> usize {
        (ext_seq % self.slots as u64) as usize
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
        if self.payloads.is_empty() {
            // Lazily: an audio-only or muted track never pays for video-sized slots.
            self.payloads = vec![0; self.slots * CACHE_PAYLOAD_MAX];
        }
        let i = self.index(ext_seq);
        self.payloads[i * CACHE_PAYLOAD_MAX..i * CACHE_PAYLOAD_MAX + payload.len()]
            .copy_from_slice(payload);
        self.meta[i] = CachedMeta {
            ext_seq,
            timestamp,
            marker,
            audio_level,
            len: payload.len() as u16,
            resent: 0,
            valid: true,
        };
    }

    #[cfg(test)]
    fn contains(&self, ext_seq: u64) -> bool {
        let m = &self.meta[self.index(ext_seq)];
        m.valid && m.ext_seq == ext_seq
    }

    /// The packet with `ext_seq` if still cached, counting one more retransmission of it.
    pub fn take_for_resend(
        &mut self,
        ext_seq: u64,
        max_resends: u8,
    ) -> Option<(CachedMeta, &[u8])> {
        if self.slots == 0 {
            return None;
        }
        let i = self.index(ext_seq);
        let m = &mut self.meta[i];
        if !m.valid || m.ext_seq != ext_seq || m.resent >= max_resends {
            return None;
        }
        m.resent += 1;
        let meta = *m;
        let start = i * CACHE_PAYLOAD_MAX;
        Some((meta, &self.payloads[start..start + meta.len as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_packets_until_overwritten_and_caps_resends() {
        let mut c = PacketCache::new(4);
        c.insert(10, 1, false, None, b"ten");
        c.insert(11, 2, true, None, b"eleven");
        let (m, p) = c.take_for_resend(10, 2).unwrap();
        assert_eq!((m.timestamp, p), (1, &b"ten"[..]));
        assert!(c.take_for_resend(10, 2).is_some());
        assert!(c.take_for_resend(10, 2).is_none(), "capped at two resends");
        c.insert(14, 3, false, None, b"fourteen"); // same slot as 10
        assert!(!c.contains(10));
        assert!(c.take_for_resend(10, 2).is_none());
        assert!(c.contains(14));
        assert!(c.contains(11));
    }
}
