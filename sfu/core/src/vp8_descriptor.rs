//! The VP8 payload descriptor (RFC 7741 §4.2) of one RTP packet, read once for every
//! subscriber: where its picture numbering lies (rewritten per subscriber across layer
//! switches and dropped pictures), its temporal layer, and whether a picture starts here.

/// What the forwarding path needs of a VP8 payload descriptor. A truncated descriptor has none
/// of it (no numbering, no temporal layer: such a packet is forwarded as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// Offset of the PictureID and whether it is the 15-bit form (M set).
    pub picture_id: Option<(usize, bool)>,
    pub tl0_pic_idx: Option<usize>,
    /// The temporal layer (TID) when the descriptor carries one (T set).
    pub temporal: Option<u8>,
    /// Y: the picture depends only on base-layer (TID 0) pictures, so a receiver can start
    /// taking its temporal layer here.
    pub layer_sync: bool,
    /// The first packet of a picture (S set, partition 0): where a picture may be dropped or
    /// taken whole.
    pub starts_picture: bool,
}

impl Vp8Descriptor {
    pub fn of(p: &[u8]) -> Self {
        let mut found = Self::default();
        let Some(&first) = p.first() else {
            return found;
        };
        found.starts_picture = first & 0x10 != 0 && first & 0x07 == 0;
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
        if x & 0x40 != 0 {
            if i >= p.len() {
                return found;
            }
            found.tl0_pic_idx = Some(i);
            i += 1;
        }
        // TID(2) Y(1) KEYIDX(5), present when T or K is set; TID and Y mean something only
        // with T.
        if x & 0x20 != 0
            && let Some(&b) = p.get(i)
        {
            found.temporal = Some(b >> 6);
            found.layer_sync = b & 0x20 != 0;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbering_temporal_layer_and_picture_start() {
        // X, I (15-bit), L, T; S on; TID 2 with Y.
        let d = Vp8Descriptor::of(&[0x90, 0xe0, 0x81, 0x02, 0x07, 0xa0, 0x01]);
        assert_eq!(d.picture_id, Some((2, true)));
        assert_eq!(d.tl0_pic_idx, Some(4));
        assert_eq!(d.temporal, Some(2));
        assert!(d.layer_sync && d.starts_picture);
        // Not the start of partition 0, or a later partition: no picture starts.
        assert!(!Vp8Descriptor::of(&[0x80, 0xe0, 0x81, 0x02, 0x07, 0x40]).starts_picture);
        assert!(!Vp8Descriptor::of(&[0x11, 0x00]).starts_picture);
        // K without T: the byte is there, the TID means nothing.
        let k = Vp8Descriptor::of(&[0x90, 0x90, 0x05, 0x1f]);
        assert_eq!((k.picture_id, k.temporal), (Some((2, false)), None));
        // No extensions: a picture start, nothing else.
        let plain = Vp8Descriptor::of(&[0x10, 0x00, 0x9d]);
        assert!(plain.starts_picture && plain.picture_id.is_none() && plain.temporal.is_none());
    }

    #[test]
    fn truncated_descriptors_say_only_what_is_there() {
        assert_eq!(Vp8Descriptor::of(&[]), Vp8Descriptor::default());
        let cut = |p: &[u8]| Vp8Descriptor::of(p);
        assert_eq!(cut(&[0x90]).picture_id, None);
        assert_eq!(
            cut(&[0x90, 0xe0, 0x81]).picture_id,
            None,
            "15-bit id cut short"
        );
        let no_tl0 = cut(&[0x90, 0xe0, 0x81, 0x02]);
        assert_eq!(
            (no_tl0.picture_id, no_tl0.tl0_pic_idx),
            (Some((2, true)), None)
        );
        let no_tid = cut(&[0x90, 0xe0, 0x81, 0x02, 0x07]);
        assert_eq!((no_tid.tl0_pic_idx, no_tid.temporal), (Some(4), None));
    }
}
