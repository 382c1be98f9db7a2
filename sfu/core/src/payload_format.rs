//! The RTP payload format of a video codec, read only as far as the SFU needs: whether a packet
//! starts a keyframe, the one place a subscriber can switch simulcast layers without a broken
//! picture.

/// Video payload formats whose keyframes the SFU recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// RFC 7741.
    Vp8,
    /// RFC 9628.
    Vp9,
    /// RFC 6184 (packetization mode 1).
    H264,
    /// The AOM AV1 RTP specification.
    Av1,
    /// Audio, or a codec the SFU does not look into.
    Opaque,
}

impl PayloadFormat {
    pub fn from_codec_name(name: &str) -> Self {
        match name.to_ascii_uppercase().as_str() {
            "VP8" => Self::Vp8,
            "VP9" => Self::Vp9,
            "H264" => Self::H264,
            "AV1" => Self::Av1,
            _ => Self::Opaque,
        }
    }

    /// Whether `payload` (one RTP packet's) is the first packet of a keyframe. Truncated or
    /// unknown payloads are not keyframes.
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Self::Vp8 => vp8_starts_keyframe(payload),
            Self::Vp9 => vp9_starts_keyframe(payload),
            Self::H264 => h264_starts_keyframe(payload),
            // Aggregation header Z Y W W N: N marks the first packet of a coded video sequence.
            Self::Av1 => payload.first().is_some_and(|b| b & 0x08 != 0),
            Self::Opaque => false,
        }
    }
}

fn vp8_starts_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    // X R N S R PID: the start (S) of partition 0.
    if first & 0x10 == 0 || first & 0x07 != 0 {
        return false;
    }
    let mut i = 1;
    if first & 0x80 != 0 {
        let Some(&x) = p.get(1) else {
            return false;
        };
        i = 2;
        if x & 0x80 != 0 {
            // PictureID, one byte or two (M bit).
            let Some(&pid) = p.get(i) else {
                return false;
            };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / Y / KEYIDX
        }
    }
    // VP8 payload header: the inverse key frame flag P is its lowest bit.
    p.get(i).is_some_and(|b| b & 0x01 == 0)
}

fn vp9_starts_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    // I P L F B E V Z: not inter-predicted (P = 0) and the beginning of a frame (B).
    if first & 0x40 != 0 || first & 0x08 == 0 {
        return false;
    }
    if first & 0x20 == 0 {
        return true;
    }
    // With layer indices (L): the keyframe starts at the base spatial layer (SID 0), after
    // the picture id (I; 7 or 15 bits).
    let mut i = 1;
    if first & 0x80 != 0 {
        let Some(&pid) = p.get(1) else {
            return false;
        };
        i += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    // TID(3) U(1) SID(3) D(1).
    p.get(i).is_some_and(|b| (b >> 1) & 0x07 == 0)
}

/// A decoder can start only where the sequence parameters come (an IDR alone refers to a
/// sequence parameter set the subscriber may not have, of another layer's resolution):
/// Chrome sends SPS and PPS ahead of every IDR, alone or in a STAP-A.
fn h264_starts_keyframe(p: &[u8]) -> bool {
    const SPS: u8 = 7;
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        t @ 1..=23 => t == SPS,
        // STAP-A: (16-bit size, NAL unit)*.
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if p[i + 2] & 0x1f == SPS {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_with_and_without_extensions() {
        let f = PayloadFormat::Vp8;
        // S=1 PID=0, payload header with P=0.
        assert!(f.starts_keyframe(&[0x10, 0x00, 0x9d, 0x01]));
        // Same with P=1: an inter frame.
        assert!(!f.starts_keyframe(&[0x10, 0x01]));
        // Not the start of the partition.
        assert!(!f.starts_keyframe(&[0x00, 0x00]));
        // X with I (15-bit PictureID), L and T: descriptor is 1 + 1 + 2 + 1 + 1 bytes.
        assert!(f.starts_keyframe(&[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x00]));
        assert!(!f.starts_keyframe(&[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x01]));
        // Truncated.
        assert!(!f.starts_keyframe(&[0x90, 0xe0, 0x80]));
        assert!(!f.starts_keyframe(&[]));
    }

    #[test]
    fn h264_keyframes_start_at_the_sequence_parameters() {
        let f = PayloadFormat::H264;
        // SPS alone, and SPS + PPS in a STAP-A.
        assert!(f.starts_keyframe(&[0x67, 0x42]));
        assert!(f.starts_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]));
        // An IDR without them is no place to start, nor is a non-IDR slice.
        assert!(!f.starts_keyframe(&[0x65, 0x88]));
        assert!(!f.starts_keyframe(&[0x7c, 0x85, 0x00]));
        assert!(!f.starts_keyframe(&[0x41, 0x9a]));
        // STAP-A with only a non-IDR slice, and a size that runs past the end.
        assert!(!f.starts_keyframe(&[0x78, 0x00, 0x02, 0x41, 0x00, 0xff, 0xff]));
    }

    #[test]
    fn vp9_av1_and_opaque() {
        assert!(PayloadFormat::Vp9.starts_keyframe(&[0x08]));
        assert!(!PayloadFormat::Vp9.starts_keyframe(&[0x48]));
        // With L and a 15-bit picture id: SID 0 starts, SID 1 does not; truncated does not.
        assert!(PayloadFormat::Vp9.starts_keyframe(&[0xa8, 0x81, 0x02, 0x00]));
        assert!(!PayloadFormat::Vp9.starts_keyframe(&[0xa8, 0x81, 0x02, 0x02]));
        assert!(!PayloadFormat::Vp9.starts_keyframe(&[0xa8, 0x81]));
        assert!(PayloadFormat::Av1.starts_keyframe(&[0x18]));
        assert!(!PayloadFormat::Av1.starts_keyframe(&[0x10]));
        assert!(!PayloadFormat::Opaque.starts_keyframe(&[0x10, 0x00]));
        assert_eq!(PayloadFormat::from_codec_name("vp8"), PayloadFormat::Vp8);
    }
}
