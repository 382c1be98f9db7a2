//! `Vp8Descriptor::of` on arbitrary payloads (every VP8 packet a publisher sends is read by it
//! before it is forwarded), then the per-subscriber numbering that writes at the offsets it
//! found: a line of packets cut from the input, each forwarded, skipped (a dropped temporal
//! layer) or repaired as the fuzzer's selector bytes say, with a layer switch now and then.
//! Asserts the offsets stay inside the payload and that the rewrite changes nothing but the
//! numbering.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::vp8_continuity::Vp8Continuity;
use sfu_core::vp8_descriptor::Vp8Descriptor;

fuzz_target!(|data: &[u8]| {
    let mut line = Vp8Continuity::default();
    // Packets: a selector byte, a length byte, then that many bytes of payload.
    let mut rest = data;
    while let [select, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        let at = Vp8Descriptor::of(payload);
        if let Some((i, long)) = at.picture_id {
            assert!(i + if long { 2 } else { 1 } <= payload.len());
        }
        if let Some(i) = at.tl0_pic_idx {
            assert!(i < payload.len());
            assert!(at.picture_id.is_none_or(|(p, long)| p + if long { 2 } else { 1 } <= i));
        }
        if at.temporal.is_some() {
            assert!(payload.len() >= 3, "a TID needs X, its byte and the first");
        }
        let mut copy = payload.to_vec();
        match select % 5 {
            0 => line.switch_layer(),
            1 => line.skip_picture(payload, at),
            2 => {
                if line.places(payload, at) {
                    line.rewrite_repair(&mut copy, at);
                }
            }
            _ => line.rewrite(&mut copy, at),
        }
        // Only the PictureID and TL0PICIDX bytes may differ.
        for (k, (a, b)) in payload.iter().zip(&copy).enumerate() {
            let numbering = at.picture_id.is_some_and(|(p, long)| {
                k == p || (long && k == p + 1)
            }) || at.tl0_pic_idx == Some(k);
            assert!(a == b || numbering, "byte {k} changed");
        }
        // The 15-bit form keeps its M bit.
        if let Some((p, true)) = at.picture_id {
            assert_eq!(copy[p] & 0x80, 0x80);
        }
    }
});
