//! When each item of an arena next needs the timer, in one min-heap, so the timer visits the
//! items that are due and not every item (a pass over every participant, three times per
//! 10 ms tick, was most of a busy worker's timer pass).
//!
//! An item has at most one live entry: its earliest. Entries left behind — the item was
//! scheduled earlier since, or it went and its slot was reused — are recognised by their time
//! and dropped when they come up. Whoever pops an item re-reads what it is waiting for and
//! schedules it again, so an entry earlier than needed costs one look, never a missed deadline.

use crate::arena::ArenaIndex;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::marker::PhantomData;
use std::time::Instant;

/// Entries left behind are swept out when they outnumber the live ones by more than this, so
/// deadlines that keep moving earlier cannot grow the heap without bound.
const SLACK: usize = 64;

#[derive(Debug)]
pub struct DeadlineQueue<I> {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// By slot: the time of the item's live entry.
    live: Vec<Option<Instant>>,
    live_count: usize,
    _index: PhantomData<I>,
}

impl<I> Default for DeadlineQueue<I> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            live: Vec::new(),
            live_count: 0,
            _index: PhantomData,
        }
    }
}

impl<I: ArenaIndex> DeadlineQueue<I> {
    /// Asks for `index` to come up at `at`, unless it already comes up no later.
    pub fn schedule(&mut self, index: I, at: Instant) {
        let slot = index.slot();
        if slot >= self.live.len() {
            self.live.resize(slot + 1, None);
        }
        match self.live[slot] {
            Some(earlier) if earlier <= at => return,
            Some(_) => {}
            None => self.live_count += 1,
        }
        self.live[slot] = Some(at);
        self.heap.push(Reverse((at, slot)));
        if self.heap.len() > 2 * self.live_count + SLACK {
            self.sweep();
        }
    }

    /// The item went (its slot may be reused): its entry is dropped when it comes up.
    pub fn forget(&mut self, index: I) {
        if let Some(live) = self.live.get_mut(index.slot())
            && live.take().is_some()
        {
            self.live_count -= 1;
        }
    }

    /// The next item due by `now`, taken off the queue (schedule it again for later).
    pub fn pop_due(&mut self, now: Instant) -> Option<I> {
        while let Some(&Reverse((at, slot))) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if self.live[slot] == Some(at) {
                self.live[slot] = None;
                self.live_count -= 1;
                return Some(I::from_slot(slot));
            }
        }
        None
    }

    /// When the earliest item comes up (an entry left behind may make this early, never late).
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.live_count
    }

    pub fn is_empty(&self) -> bool {
        self.live_count == 0
    }

    fn sweep(&mut self) {
        let live = &self.live;
        self.heap
            .retain(|Reverse((at, slot))| live[*slot] == Some(*at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::ParticipantIdx;
    use std::time::Duration;

    // Tests start the clock somewhere; the queue only compares instants.
    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    fn p(slot: usize) -> ParticipantIdx {
        ParticipantIdx::from_slot(slot)
    }

    fn drain(q: &mut DeadlineQueue<ParticipantIdx>, now: Instant) -> Vec<usize> {
        std::iter::from_fn(|| q.pop_due(now))
            .map(ArenaIndex::slot)
            .collect()
    }

    #[test]
    fn items_come_up_in_time_order_and_only_when_due() {
        let t0 = origin();
        let ms = Duration::from_millis;
        let mut q = DeadlineQueue::default();
        q.schedule(p(3), t0 + ms(30));
        q.schedule(p(1), t0 + ms(10));
        q.schedule(p(2), t0 + ms(20));
        assert_eq!(q.len(), 3);
        assert_eq!(q.next_due(), Some(t0 + ms(10)));
        assert_eq!(drain(&mut q, t0 + ms(5)), Vec::<usize>::new());
        assert_eq!(drain(&mut q, t0 + ms(20)), [1, 2]);
        assert_eq!(drain(&mut q, t0 + ms(20)), Vec::<usize>::new(), "taken off");
        assert_eq!(drain(&mut q, t0 + ms(100)), [3]);
        assert!(q.is_empty());
    }

    #[test]
    fn the_earliest_deadline_wins_and_the_later_one_waits_for_a_reschedule() {
        let t0 = origin();
        let ms = Duration::from_millis;
        let mut q = DeadlineQueue::default();
        q.schedule(p(0), t0 + ms(50));
        q.schedule(p(0), t0 + ms(20));
        q.schedule(p(0), t0 + ms(80));
        assert_eq!(q.len(), 1);
        assert_eq!(drain(&mut q, t0 + ms(20)), [0]);
        // The entry at 50 was left behind by the earlier one: it does not bring the item up.
        assert_eq!(drain(&mut q, t0 + ms(60)), Vec::<usize>::new());
        q.schedule(p(0), t0 + ms(80));
        assert_eq!(drain(&mut q, t0 + ms(80)), [0]);
    }

    #[test]
    fn a_forgotten_item_does_not_come_up_for_the_next_holder_of_its_slot() {
        let t0 = origin();
        let ms = Duration::from_millis;
        let mut q = DeadlineQueue::default();
        q.schedule(p(4), t0 + ms(10));
        q.forget(p(4));
        assert!(q.is_empty());
        q.schedule(p(4), t0 + ms(40));
        assert_eq!(drain(&mut q, t0 + ms(30)), Vec::<usize>::new());
        assert_eq!(drain(&mut q, t0 + ms(40)), [4]);
        q.forget(p(9));
        assert!(q.is_empty(), "forgetting an unknown slot is harmless");
    }

    #[test]
    fn deadlines_that_keep_moving_earlier_do_not_grow_the_heap() {
        let t0 = origin();
        let mut q = DeadlineQueue::default();
        for i in 0..10_000u64 {
            q.schedule(p(0), t0 + Duration::from_secs(100_000 - i));
        }
        assert!(q.heap.len() <= 3 + SLACK, "{} entries", q.heap.len());
        assert_eq!(
            drain(&mut q, t0 + Duration::from_secs(100_000)),
            [0],
            "comes up once, at the earliest"
        );
    }
}
