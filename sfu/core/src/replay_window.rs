//! A sliding window of the last 1024 packet indices seen (RFC 3711 §3.3.2), for SRTP sequence
//! numbers and SRTCP indices alike.

/// Wide enough that a repair of anything still tracked as missing (and cached for
/// subscribers) is let in: a large keyframe on a slow uplink can be hundreds of packets.
pub const REPLAY_WINDOW: u64 = 1024;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    /// One bit per index modulo `REPLAY_WINDOW`: seen or not.
    bits: [u64; REPLAY_WINDOW as usize / 64],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            highest: None,
            bits: [0; REPLAY_WINDOW as usize / 64],
        }
    }
}

impl ReplayWindow {
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Whether `index` was seen already or is too old to tell (checked before decrypting).
    pub fn is_replay(&self, index: u64) -> bool {
        match self.highest {
            None => false,
            Some(h) if index > h => false,
            Some(h) => h - index >= REPLAY_WINDOW || self.seen(index),
        }
    }

    /// Records an authenticated index.
    pub fn accept(&mut self, index: u64) {
        match self.highest {
            Some(h) if index <= h => {
                if h - index < REPLAY_WINDOW {
                    self.mark(index);
                }
            }
            Some(h) => {
                // The window slides: the slots of the skipped indices are free again.
                if index - h >= REPLAY_WINDOW {
                    self.bits = [0; REPLAY_WINDOW as usize / 64];
                } else {
                    for skipped in h + 1..index {
                        self.unmark(skipped);
                    }
                }
                self.mark(index);
                self.highest = Some(index);
            }
            None => {
                self.mark(index);
                self.highest = Some(index);
            }
        }
    }

    fn slot(index: u64) -> (usize, u64) {
        let i = (index % REPLAY_WINDOW) as usize;
        (i / 64, 1 << (i % 64))
    }

    fn seen(&self, index: u64) -> bool {
        let (word, bit) = Self::slot(index);
        self.bits[word] & bit != 0
    }

    fn mark(&mut self, index: u64) {
        let (word, bit) = Self::slot(index);
        self.bits[word] |= bit;
    }

    fn unmark(&mut self, index: u64) {
        let (word, bit) = Self::slot(index);
        self.bits[word] &= !bit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_index_once_within_the_window() {
        let mut w = ReplayWindow::default();
        assert!(!w.is_replay(5));
        w.accept(5);
        assert!(w.is_replay(5));
        w.accept(700);
        assert!(!w.is_replay(6), "skipped indices may still arrive");
        w.accept(6);
        assert!(w.is_replay(6));
        w.accept(5000);
        assert!(w.is_replay(700), "too old now");
        assert!(!w.is_replay(4999));
        assert!(w.is_replay(5000 - REPLAY_WINDOW));
    }
}
