//! Which VP8 temporal layers a subscription forwards. A publisher's encoder (Chrome sends each
//! simulcast layer as L1T3) marks each picture with its temporal layer: base pictures (TID 0)
//! refer only to base pictures, and no picture refers to one of a higher layer, so dropping
//! the higher layers leaves a stream at a half or a quarter of the frame rate that still
//! decodes — the step below a simulcast layer's full rate, before a pause.
//!
//! Going down takes effect at the next picture. Going up waits for a picture the encoder
//! marks as a layer sync (it refers only to base pictures, which the subscriber has) or a
//! keyframe: a picture of the layer before that may refer to one the subscriber never got.

/// Every temporal layer.
pub const ALL_TEMPORAL: u8 = u8::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalFilter {
    /// The highest temporal layer forwarded now.
    current: u8,
    /// The highest one the allocator gives the subscription.
    target: u8,
    /// The incoming sequence number from which `current` holds: packets before it went out
    /// (or not) under an earlier choice.
    since: u64,
}

impl Default for TemporalFilter {
    fn default() -> Self {
        Self {
            current: ALL_TEMPORAL,
            target: ALL_TEMPORAL,
            since: 0,
        }
    }
}

impl TemporalFilter {
    pub fn target(&self) -> u8 {
        self.target
    }

    pub fn current(&self) -> u8 {
        self.current
    }

    pub fn set_target(&mut self, target: u8) {
        self.target = target;
    }

    /// A keyframe (incoming sequence number `seq`): every layer can start here.
    pub fn at_keyframe(&mut self, seq: u64) {
        if self.current != self.target {
            self.current = self.target;
            self.since = seq;
        }
    }

    /// Whether a packet (`seq`) of temporal layer `tid` goes out. Changes happen only where a
    /// picture starts (`starts_picture`), so a picture goes out whole or not at all; up one
    /// layer at a time, each at its own layer-sync picture (a sync picture of layer 2 may be
    /// followed by a layer-1 picture that refers to one not sent).
    pub fn admits(&mut self, tid: u8, layer_sync: bool, starts_picture: bool, seq: u64) -> bool {
        if starts_picture {
            if self.target < self.current {
                self.current = self.target;
                self.since = seq;
            } else if tid == self.current.saturating_add(1) && tid <= self.target && layer_sync {
                self.current = tid;
                self.since = seq;
            }
        }
        tid <= self.current
    }

    /// Whether a repair of packet `seq` of layer `tid` may be sent: its layer is forwarded,
    /// or it came before the last change (it went out then; a skipped one maps to no repair).
    pub fn passes(&self, tid: u8, seq: u64) -> bool {
        tid <= self.current || seq < self.since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L1T3 pictures, one packet each: (TID, layer sync).
    const PATTERN: [(u8, bool); 4] = [(0, false), (2, true), (1, true), (2, false)];

    fn run(f: &mut TemporalFilter, pictures: usize) -> Vec<u8> {
        (0..pictures)
            .map(|i| PATTERN[i % 4])
            .filter(|&(tid, sync)| f.admits(tid, sync, true, 0))
            .map(|(tid, _)| tid)
            .collect()
    }

    #[test]
    fn down_at_the_next_picture_up_at_a_layer_sync() {
        let mut f = TemporalFilter::default();
        assert_eq!(run(&mut f, 4), vec![0, 2, 1, 2]);
        f.set_target(0);
        assert_eq!(run(&mut f, 8), vec![0, 0]);
        // Up to TID 1: its sync picture is the third of the pattern.
        f.set_target(1);
        assert_eq!(run(&mut f, 4), vec![0, 1]);
        // Up to all: the TID 2 picture after a base one is a sync.
        f.set_target(ALL_TEMPORAL);
        assert_eq!(run(&mut f, 4), vec![0, 2, 1, 2]);
        // From the base alone up to all: one layer at a time, layer 1 at its sync, then 2.
        f.set_target(0);
        run(&mut f, 4);
        f.set_target(ALL_TEMPORAL);
        assert_eq!(run(&mut f, 8), vec![0, 1, 0, 2, 1, 2]);
    }

    #[test]
    fn a_picture_is_never_cut_and_a_keyframe_takes_the_target_at_once() {
        let mut f = TemporalFilter::default();
        // A TID 2 picture of two packets (10, 11): the target drops after its first packet.
        assert!(f.admits(2, false, true, 10));
        f.set_target(0);
        assert!(
            f.admits(2, false, false, 11),
            "the rest of the picture goes out"
        );
        assert!(
            !f.admits(2, false, true, 12),
            "the next TID 2 picture does not"
        );
        // A repair of what went out before the change may go; of what came after, not.
        assert!(f.passes(2, 11));
        assert!(!f.passes(2, 12));
        // Up without a sync picture waits; a keyframe does not.
        f.set_target(ALL_TEMPORAL);
        assert!(!f.admits(2, false, true, 13));
        f.at_keyframe(14);
        assert!(f.admits(2, false, true, 15));
    }
}
