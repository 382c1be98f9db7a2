//! How many times one subscriber has had each recent packet resent, so that its NACKs are
//! capped per packet without touching another subscriber's repairs (a cap shared by everyone
//! on a layer let one subscriber's repeated NACKs use up the others').

/// Counts per packet of the subscriber's own numbering (its extended sequence numbers, which
/// run on across layer switches), in slots as many as the repair cache has: a packet further
/// back than that is no longer cached. Allocated on the first NACK.
#[derive(Debug, Default)]
pub struct ResendRecord {
    /// (low 32 bits of the extended sequence number, resends so far) per slot; one past the
    /// cap once a request past it was answered [`Resend::UsedUp`].
    slots: Vec<(u32, u8)>,
}

/// What a request for one packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Resent once more (counted).
    Allowed,
    /// Asked for again after its last allowed resend: the link lost every copy. Said once
    /// per packet (the subscriber's picture needs a keyframe; its further requests for the
    /// packet are [`Resend::Refused`]).
    UsedUp,
    /// Not resent: asked for past [`Resend::UsedUp`], or its count is gone.
    Refused,
}

impl ResendRecord {
    /// Whether packet `out_ext` may be resent once more (at most `max` times); counts it if so.
    /// A packet older than the one whose count holds its slot is refused: its count is gone,
    /// and letting it start again would let NACKs alternating between two packets a slot
    /// apart repeat both without end.
    pub fn allow(&mut self, out_ext: u64, max: u8, slots: usize) -> Resend {
        if self.slots.len() != slots {
            if slots == 0 {
                return Resend::Refused;
            }
            self.slots = vec![(0, 0); slots];
        }
        let tag = out_ext as u32;
        // (A cap of 255 has no count past it: the last resend then says nothing.)
        let max = max.min(u8::MAX - 1);
        let entry = &mut self.slots[(out_ext % slots as u64) as usize];
        if entry.1 > 0 && entry.0 == tag {
            return match entry.1.cmp(&max) {
                std::cmp::Ordering::Less => {
                    entry.1 += 1;
                    Resend::Allowed
                }
                std::cmp::Ordering::Equal => {
                    entry.1 += 1;
                    Resend::UsedUp
                }
                std::cmp::Ordering::Greater => Resend::Refused,
            };
        }
        // Newer than what holds the slot (or the slot is unused): its count starts.
        if entry.1 == 0 || (tag.wrapping_sub(entry.0) as i32) > 0 {
            *entry = (tag, 1);
            return if max == 0 {
                Resend::UsedUp
            } else {
                Resend::Allowed
            };
        }
        Resend::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::{Resend, ResendRecord};

    #[test]
    fn each_packet_is_resent_at_most_max_times_and_older_ones_cannot_start_again() {
        let mut r = ResendRecord::default();
        let mut allow = |ext: u64, max: u8| r.allow(ext, max, 8);
        assert_eq!(allow(1000, 3), Resend::Allowed);
        assert_eq!(allow(1000, 3), Resend::Allowed);
        assert_eq!(allow(1000, 3), Resend::Allowed);
        assert_eq!(allow(1000, 3), Resend::UsedUp, "capped at three");
        assert_eq!(allow(1000, 3), Resend::Refused, "used up is said once");
        assert_eq!(
            allow(1001, 3),
            Resend::Allowed,
            "another packet has its own count"
        );
        // A packet a slot further on takes the slot; the older one's count is gone and it is
        // refused rather than counted afresh.
        assert_eq!(allow(1008, 3), Resend::Allowed);
        for _ in 0..10 {
            assert_eq!(allow(1000, 3), Resend::Refused);
            allow(1008, 3);
        }
        assert_eq!(allow(1008, 3), Resend::Refused);
        // Across the 32-bit wrap of the tag.
        let base = (1u64 << 32) - 4;
        assert_eq!(allow(base, 1), Resend::Allowed);
        assert_eq!(allow(base + 8, 1), Resend::Allowed, "newer across the wrap");
        assert_eq!(allow(base, 1), Resend::Refused);
    }

    #[test]
    fn with_no_resends_allowed_the_first_request_finds_the_packet_used_up() {
        let mut r = ResendRecord::default();
        assert_eq!(r.allow(7, 0, 8), Resend::UsedUp);
        assert_eq!(r.allow(7, 0, 8), Resend::Refused);
        assert_eq!(
            r.allow(0, 3, 0),
            Resend::Refused,
            "no cache, nothing to count"
        );
    }

    #[test]
    fn the_largest_cap_still_says_used_up_once() {
        let mut r = ResendRecord::default();
        let verdicts: Vec<Resend> = (0..256).map(|_| r.allow(5, u8::MAX, 8)).collect();
        assert!(verdicts[..254].iter().all(|v| *v == Resend::Allowed));
        assert_eq!(verdicts[254], Resend::UsedUp);
        assert_eq!(verdicts[255], Resend::Refused);
    }
}
