//! One VP8 picture line per subscriber across simulcast layers. Each layer's encoder numbers
//! its pictures (PictureID) and its base-layer pictures (TL0PICIDX) on its own, from its own
//! random start; forwarded as is, a layer switch makes the subscriber's numbering jump,
//! backwards for one direction of switch, and a decoder that orders frames by PictureID takes
//! the new layer's frames for old ones. At each switch (always at a keyframe) the numbering is
//! rebased so it continues where the last layer left off, and every later packet of the layer
//! is shifted by the same amount (RFC 7741 §4.2). Pictures of a temporal layer the subscriber
//! does not get are left out of the numbering the same way (a receiver holds back every picture
//! after a gap in PictureIDs, waiting for the missing one).

use crate::skipped_numbers::SkippedNumbers;
use crate::vp8_descriptor::Vp8Descriptor;

/// A subscription's shift of the numbering of the layer it forwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vp8Continuity {
    picture_delta: u16,
    tl0_delta: u8,
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
    /// A new layer starts: the next packet sets the shifts.
    rebase: bool,
    /// The newest incoming PictureID of the layer (forwarded or skipped), extended.
    newest_in: Option<u64>,
    /// Incoming pictures not forwarded (extended), since the layer started.
    skipped: SkippedNumbers,
}

const PICTURE_ID_15: u16 = 0x7fff;
const PICTURE_ID_7: u16 = 0x7f;

impl Vp8Continuity {
    /// A layer starts with the next packet (a keyframe's first).
    pub fn switch_layer(&mut self) {
        self.rebase = true;
    }

    /// Rewrites a forwarded packet's numbering in place (its descriptor `at`, read once for
    /// all subscribers) and remembers where it is.
    pub fn rewrite(&mut self, payload: &mut [u8], at: Vp8Descriptor) {
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
            self.newest_in = None;
            self.skipped.clear();
            self.rebase = false;
        }
        let Some((picture, tl0)) = self.shift(payload, at) else {
            return;
        };
        // (A late packet leaves the line where the newest one put it.)
        if let Some((out, input)) = picture
            && self.newest_in.is_none_or(|n| input > n)
        {
            self.last_picture = Some(out);
            self.newest_in = Some(input);
        }
        self.last_tl0 = tl0.or(self.last_tl0);
    }

    /// A picture of the layer is not forwarded (called at its first packet): the pictures
    /// after it are numbered as if it never was. (One that comes late, after a newer picture,
    /// already left a gap; nothing is shifted for it.)
    pub fn skip_picture(&mut self, payload: &[u8], at: Vp8Descriptor) {
        let Some((i, long)) = at.picture_id else {
            return;
        };
        if self.rebase {
            // Nothing of the layer went out yet: its first picture sets the shift.
            return;
        }
        let input = self.extend(read_picture_id(payload, i, long), long);
        if self.newest_in.is_none_or(|n| input > n) {
            self.newest_in = Some(input);
            self.skipped.skip(input);
            self.picture_delta = self.picture_delta.wrapping_sub(1);
        }
    }

    /// Whether a repair's picture can be numbered (it is not older than the skips remembered).
    pub fn places(&self, payload: &[u8], at: Vp8Descriptor) -> bool {
        at.picture_id.is_none_or(|(i, long)| {
            let input = self.extend(read_picture_id(payload, i, long), long);
            self.skipped.after(input).is_some()
        })
    }

    /// Rewrites a repair of the current layer the same way, remembering nothing (one that
    /// [`Self::places`] refuses is left as it is).
    pub fn rewrite_repair(&self, payload: &mut [u8], at: Vp8Descriptor) {
        self.shift(payload, at);
    }

    /// Extends a PictureID to the newest one seen (a 7- or 15-bit number wraps).
    fn extend(&self, id: u16, long: bool) -> u64 {
        let mask = if long { PICTURE_ID_15 } else { PICTURE_ID_7 };
        let Some(newest) = self.newest_in else {
            // Far from 0, so that an older picture still extends below it.
            return u64::from(id) + (1 << 32);
        };
        let span = u64::from(mask) + 1;
        let ahead = u64::from(id).wrapping_sub(newest) & u64::from(mask);
        if ahead < span / 2 {
            newest + ahead
        } else {
            newest - (span - ahead)
        }
    }

    /// Applies the layer's shifts; returns what was written (the PictureID with the extended
    /// incoming one, and the TL0PICIDX), or `None` (nothing written) when the picture is older
    /// than the skips remembered.
    #[allow(clippy::type_complexity)]
    fn shift(
        &self,
        payload: &mut [u8],
        at: Vp8Descriptor,
    ) -> Option<(Option<(u16, u64)>, Option<u8>)> {
        let picture = match at.picture_id {
            Some((i, long)) => {
                let mask = if long { PICTURE_ID_15 } else { PICTURE_ID_7 };
                let raw = read_picture_id(payload, i, long);
                let input = self.extend(raw, long);
                let after = self.skipped.after(input)?;
                let out = raw
                    .wrapping_add(self.picture_delta)
                    .wrapping_add(after as u16)
                    & mask;
                write_picture_id(payload, i, long, out);
                Some((out, input))
            }
            None => None,
        };
        let tl0 = at.tl0_pic_idx.map(|i| {
            payload[i] = payload[i].wrapping_add(self.tl0_delta);
            payload[i]
        });
        Some((picture, tl0))
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
        let at = Vp8Descriptor::of(p);
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
        let at = Vp8Descriptor::of(&r);
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

    #[test]
    fn skipped_pictures_leave_no_gap_and_late_repairs_keep_their_number() {
        let mut c = Vp8Continuity::default();
        let mut sent = Vec::new();
        // Pictures 0x7ffc.. (wrapping past 0x7fff); every second one skipped, as a dropped
        // temporal layer.
        for k in 0..12u16 {
            let id = 0x7ffc_u16.wrapping_add(k) & 0x7fff;
            let mut p = packet(id, 9);
            if k % 2 == 1 {
                let at = Vp8Descriptor::of(&p);
                c.skip_picture(&p, at);
            } else {
                rewrite(&mut c, &mut p);
                sent.push(numbering(&p).0);
            }
        }
        let expected: Vec<u16> = (0..6).map(|k| (0x7ffc + k) & 0x7fff).collect();
        assert_eq!(
            sent, expected,
            "forwarded pictures are numbered without gaps"
        );
        // A repair of the third forwarded picture (incoming 0x0000) keeps the number it had.
        let mut r = packet(0x0000, 9);
        let at = Vp8Descriptor::of(&r);
        assert!(c.places(&r, at));
        c.rewrite_repair(&mut r, at);
        assert_eq!(numbering(&r).0, expected[2]);
        // A late copy of a skipped picture is not skipped twice: the next picture follows on.
        let late = packet(0x0001, 9);
        c.skip_picture(&late, Vp8Descriptor::of(&late));
        let mut p = packet(0x0008, 9);
        rewrite(&mut c, &mut p);
        assert_eq!(numbering(&p).0, (0x7ffc + 6) & 0x7fff);
        // After a switch, the new layer continues the line and forgets the old skips.
        c.switch_layer();
        let mut p = packet(500, 1);
        rewrite(&mut c, &mut p);
        assert_eq!(numbering(&p).0, (0x7ffc + 7) & 0x7fff);
    }
}
