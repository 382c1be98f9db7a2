//! How many times one subscriber has had each recent packet resent, so that its NACKs are
//! capped per packet without touching another subscriber's repairs (a cap shared by everyone
//! on a layer let one subscriber's repeated NACKs use up the others').

/// Counts per packet of the subscriber's own numbering (its extended sequence numbers, which
/// run on across layer switches), in slots as many as the repair cache has: a packet further
/// back than that is no longer cached. Allocated on the first NACK.
#[derive(Debug, Default)]
pub struct ResendRecord {
    /// (low 32 bits of the extended sequence number, resends so far) per slot.
    slots: Vec<(u32, u8)>,
}

impl ResendRecord {
    /// Whether packet `out_ext` may be resent once more (at most `max` times); counts it if so.
    /// A packet older than the one whose count holds its slot is refused: its count is gone,
    /// and letting it start again would let NACKs alternating between two packets a slot
    /// apart repeat both without end.
    pub fn allow(&mut self, out_ext: u64, max: u8, slots: usize) -> bool {
        if self.slots.len() != slots {
            if slots == 0 {
                return false;
            }
            self.slots = vec![(0, 0); slots];
        }
        let tag = out_ext as u32;
        let entry = &mut self.slots[(out_ext % slots as u64) as usize];
        if entry.1 > 0 && entry.0 == tag {
            if entry.1 >= max {
                return false;
            }
            entry.1 += 1;
            return true;
        }
        // Newer than what holds the slot (or the slot is unused): its count starts.
        if entry.1 == 0 || (tag.wrapping_sub(entry.0) as i32) > 0 {
            if max == 0 {
                return false;
            }
            *entry = (tag, 1);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::ResendRecord;

    #[test]
    fn each_packet_is_resent_at_most_max_times_and_older_ones_cannot_start_again() {
        let mut r = ResendRecord::default();
        assert!(r.allow(1000, 3, 8));
        assert!(r.allow(1000, 3, 8));
        assert!(r.allow(1000, 3, 8));
        assert!(!r.allow(1000, 3, 8), "capped at three");
        assert!(r.allow(1001, 3, 8), "another packet has its own count");
        // A packet a slot further on takes the slot; the older one's count is gone and it is
        // refused rather than counted afresh.
        assert!(r.allow(1008, 3, 8));
        for _ in 0..10 {
            assert!(!r.allow(1000, 3, 8));
            r.allow(1008, 3, 8);
        }
        assert!(!r.allow(1008, 3, 8));
        // Across the 32-bit wrap of the tag.
        let base = (1u64 << 32) - 4;
        assert!(r.allow(base, 1, 8));
        assert!(r.allow(base + 8, 1, 8), "newer across the wrap");
        assert!(!r.allow(base, 1, 8));
    }
}
