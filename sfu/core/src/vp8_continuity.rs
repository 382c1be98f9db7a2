//! One VP8 picture line per subscriber across simulcast layers. Each layer's encoder numbers
//! its pictures (PictureID) and its base-layer pictures (TL0PICIDX) on its own, from its own
//! random start; forwarded as is, a layer switch makes the subscriber's numbering jump,
//! backwards for one direction of switch, and a decoder that orders frames by PictureID takes
//! the new layer's frames for old ones. At each switch (always at a keyframe) the numbering is
//! rebased so it continues where the last layer left off, and every later packet of the layer
//! is shifted by the same amount (RFC 7741 §4.2).

/// Where a VP8 payload descriptor keeps its numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Indices {
    /// Offset of the PictureID and whether it is the 15-bit form (M set).
    pub picture_id: Option<(usize, bool)>,
    pub tl0_pic_idx: Option<usize>,
}

impl Vp8Indices {
    /// Reads the descriptor's layout; a truncated one has no indices.
    pub fn of(p: &[u8]) -> Self {
        let mut found = Self::default();
        let Some(&first) = p.first() else {
            return found;
        };
        if first & 0x80 == 0 {
            return found;
        }
        let Some(&x) = p.get(1) else {
            return found;
        };
        let mut i = 2;
        if x & 0x80 != 0 {
            let Some(&pid) = p.get(i) else {
                return found;
            };
            let long = pid & 0x80 != 0;
            if p.len() < i + if long { 2 } else { 1 } {
                return found;
            }
            found.picture_id = Some((i, long));
            i += if long { 2 } else { 1 };
        }
        if x & 0x40 != 0 && i < p.len() {
            found.tl0_pic_idx = Some(i);
        }
        found
    }
}

/// A subscription's shift of the numbering of the layer it forwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Continuity {
    picture_delta: u16,
    tl0_delta: u8,
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
    /// A new layer starts: the next packet sets the shifts.
    rebase: bool,
}

const PICTURE_ID_15: u16 = 0x7fff;
const PICTURE_ID_7: u16 = 0x7f;

impl Vp8Continuity {
    /// A layer starts with the next packet (a keyframe's first).
    pub fn switch_layer(&mut self) {
        self.rebase = true;
    }

    /// Rewrites a forwarded packet's numbering in place (its descriptor's layout `at`, read
    /// once for all subscribers) and remembers where it is.
    pub fn rewrite(&mut self, payload: &mut [u8], at: Vp8Indices) {
        if self.rebase {
            // The new layer's first packet continues right after the last one sent.
            if let Some((i, long)) = at.picture_id {
                let mask = if long { PICTURE_ID_15 } else { PICTURE_ID_7 };
                let input = read_picture_id(payload, i, long);
                self.picture_delta = self
                    .last_picture
                    .map_or(0, |last| last.wrapping_add(1).wrapping_sub(input) & mask);
            }
            if let Some(i) = at.tl0_pic_idx {
                self.tl0_delta = self
                    .last_tl0
                    .map_or(0, |last| last.wrapping_add(1).wrapping_sub(payload[i]));
            }
            self.rebase = false;
        }
        let (picture, tl0) = self.shift(payload, at);
        self.last_picture = picture.or(self.last_picture);
        self.last_tl0 = tl0.or(self.last_tl0);
    }

    /// Rewrites a repair of the current layer the same way, remembering nothing.
    pub fn rewrite_repair(&self, payload: &mut [u8], at: Vp8Indices) {
        self.shift(payload, at);
    }

    /// Applies the layer's shifts; returns the numbers written.
    fn shift(&self, payload: &mut [u8], at: Vp8Indices) -> (Option<u16>, Option<u8>) {
        let picture = at.picture_id.map(|(i, long)| {
            let mask = if long { PICTURE_ID_15 } else { PICTURE_ID_7 };
            let out = read_picture_id(payload, i, long).wrapping_add(self.picture_delta) & mask;
            write_picture_id(payload, i, long, out);
            out
        });
        let tl0 = at.tl0_pic_idx.map(|i| {
            payload[i] = payload[i].wrapping_add(self.tl0_delta);
            payload[i]
        });
        (picture, tl0)
    }
}

fn read_picture_id(p: &[u8], i: usize, long: bool) -> u16 {
    if long {
        u16::from_be_bytes([p[i] & 0x7f, p[i + 1]])
    } else {
        u16::from(p[i] & 0x7f)
    }
}

fn write_picture_id(p: &mut [u8], i: usize, long: bool, id: u16) {
    if long {
        let [hi, lo] = id.to_be_bytes();
        p[i] = 0x80 | (hi & 0x7f);
        p[i + 1] = lo;
    } else {
        p[i] = id as u8 & 0x7f;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(c: &mut Vp8Continuity, p: &mut [u8]) {
        let at = Vp8Indices::of(p);
        c.rewrite(p, at);
    }

    /// X, I (15-bit), L, T set; S on; then the payload header.
    fn packet(pid: u16, tl0: u8) -> Vec<u8> {
        let [hi, lo] = pid.to_be_bytes();
        vec![0x90, 0xe0, 0x80 | hi, lo, tl0, 0x00, 0x00, 0xab]
    }

    fn numbering(p: &[u8]) -> (u16, u8) {
        (u16::from_be_bytes([p[2] & 0x7f, p[3]]), p[4])
    }

    #[test]
    fn the_numbering_continues_across_a_switch_in_either_direction() {
        let mut c = Vp8Continuity::default();
        // The first layer goes out as it comes.
        let mut p = packet(30_000, 200);
        rewrite(&mut c, &mut p);
        assert_eq!(numbering(&p), (30_000, 200));
        let mut p = packet(30_001, 200);
        rewrite(&mut c, &mut p);
        assert_eq!(numbering(&p), (30_001, 200));
        // A switch to a layer numbered far below: the next picture, the next TL0.
        c.switch_layer();
        let mut p = packet(17, 3);
        rewrite(&mut c, &mut p);
        assert_eq!(numbering(&p), (30_002, 201));
        let mut p = packet(18, 3);
        rewrite(&mut c, &mut p);
        assert_eq!(numbering(&p), (30_003, 201));
        // The 15-bit PictureID wraps as the decoder expects; the M bit stays.
        c.switch_layer();
        let mut p = packet(0x7fff - 30_003 + 5_000, 255);
        rewrite(&mut c, &mut p);
        assert_eq!(numbering(&p), (30_004, 202));
        assert_eq!(p[2] & 0x80, 0x80);
        // A repair of the current layer is shifted alike.
        let mut r = packet(0x7fff - 30_003 + 5_000, 255);
        let at = Vp8Indices::of(&r);
        c.rewrite_repair(&mut r, at);
        assert_eq!(numbering(&r), (30_004, 202));
    }

    #[test]
    fn descriptors_without_numbering_are_left_alone() {
        let mut c = Vp8Continuity::default();
        c.switch_layer();
        for p in [vec![0x10, 0x00, 0x9d], vec![0x90], vec![0x90, 0x80], vec![]] {
            let mut q = p.clone();
            rewrite(&mut c, &mut q);
            assert_eq!(q, p);
        }
        // 7-bit PictureID, no TL0PICIDX.
        let mut short = vec![0x90, 0x80, 0x05, 0x00];
        rewrite(&mut c, &mut short);
        assert_eq!(short[2], 0x05);
        c.switch_layer();
        let mut next = vec![0x90, 0x80, 0x70, 0x00];
        rewrite(&mut c, &mut next);
        assert_eq!(next[2], 0x06);
    }
}
