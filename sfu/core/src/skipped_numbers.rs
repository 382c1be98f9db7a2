//! The numbers of a stream a subscription did not forward (packets and pictures of a dropped
//! temporal layer), remembered so that what it does forward stays numbered without gaps: a
//! receiver takes a gap in sequence numbers for loss (and asks for repairs that cannot come),
//! and one in VP8 picture ids for a missing reference (and holds every later picture back).
//!
//! Numbers are extended (never wrapping). Whoever owns the shift lowers it by one at each skip
//! of a number newer than any before; a number that comes late (a repair, a reordered packet)
//! is shifted by what was in force then: the current shift plus the skips after it.

use std::collections::VecDeque;

/// Skips remembered: beyond this, the oldest are forgotten, and numbers older than the oldest
/// remembered skip can no longer be placed (at a few dozen skips a second, seconds of them).
const REMEMBERED: usize = 128;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkippedNumbers {
    /// Ascending.
    recent: VecDeque<u64>,
    /// Numbers at or below this were skipped and forgotten: nothing that old maps any more.
    forgotten_to: Option<u64>,
}

impl SkippedNumbers {
    /// `n`, newer than every number seen so far, was not forwarded.
    pub fn skip(&mut self, n: u64) {
        debug_assert!(self.recent.back().is_none_or(|&b| n > b));
        if self.recent.len() == REMEMBERED
            && let Some(oldest) = self.recent.pop_front()
        {
            self.forgotten_to = Some(oldest);
        }
        self.recent.push_back(n);
    }

    /// How many skips came after `n`: add them to the current shift to place `n`. `None` when
    /// `n` is older than what is remembered.
    pub fn after(&self, n: u64) -> Option<u64> {
        if self.forgotten_to.is_some_and(|f| n <= f) {
            return None;
        }
        // Nearly always 0: `n` is the newest.
        Some(self.recent.iter().rev().take_while(|&&s| s > n).count() as u64)
    }

    /// The number that went out as `shifted` (its number under the current shift, i.e. the
    /// outgoing number minus the current shift): the inverse of `n + after(n)`. Never a
    /// skipped number; `None` when it is older than what is remembered.
    pub fn unshift(&self, shifted: u64) -> Option<u64> {
        let mut n = shifted;
        for &s in self.recent.iter().rev() {
            if s >= n {
                n = n.checked_sub(1)?;
            } else {
                break;
            }
        }
        self.after(n).map(|_| n)
    }

    pub fn clear(&mut self) {
        self.recent.clear();
        self.forgotten_to = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mapping a subscription makes with a base shift of 1000, lowered at each skip.
    fn out(s: &SkippedNumbers, n: u64) -> Option<u64> {
        s.after(n).map(|a| n + 1000 - s.recent.len() as u64 + a)
    }

    #[test]
    fn what_is_forwarded_stays_contiguous_and_maps_back() {
        let mut s = SkippedNumbers::default();
        // 10, 11 forwarded; 12, 13 skipped; 14 forwarded; 15 skipped; 16, 17 forwarded.
        let forwarded = [10u64, 11, 14, 16, 17];
        for n in [12, 13, 15] {
            s.skip(n);
        }
        let outs: Vec<u64> = forwarded.iter().map(|&n| out(&s, n).unwrap()).collect();
        assert_eq!(outs, vec![1010, 1011, 1012, 1013, 1014]);
        for (&n, &o) in forwarded.iter().zip(&outs) {
            // The outgoing number minus the current shift (1000 - 3).
            assert_eq!(s.unshift(o - 997), Some(n));
        }
    }

    #[test]
    fn forgotten_skips_make_old_numbers_unplaceable() {
        let mut s = SkippedNumbers::default();
        for i in 0..(REMEMBERED as u64 + 10) {
            s.skip(2 * i + 1);
        }
        assert_eq!(s.after(4), None, "older than what is remembered");
        assert_eq!(s.after(2 * (REMEMBERED as u64 + 10)), Some(0));
        assert_eq!(s.after(2 * (REMEMBERED as u64 + 9)), Some(1));
        assert_eq!(s.unshift(2), None);
        s.clear();
        assert_eq!(s.after(4), Some(0));
    }
}
