//! `RtpHeader::parse` on arbitrary bytes (the first thing the forwarding path does with a
//! datagram from a participant's address, before any authentication), then every lookup the
//! SFU makes on a parsed header: `extension_value` for ids 0..=15 and `payload_range`.
//! Asserts the invariants the forwarding path relies on when it slices the packet.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::rtp_header::{ExtensionIter, RtpHeader};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = RtpHeader::parse(data) else {
        return;
    };
    let len = data.len();
    assert!(
        (12..=len).contains(&h.header_len),
        "header_len {} of a {len}-byte packet",
        h.header_len
    );
    assert_eq!(h.has_padding, data[0] & 0x20 != 0);

    if let Some((_, start, end)) = h.extension {
        assert!(
            start >= 16 && start <= end,
            "extension block {start}..{end}"
        );
        assert_eq!(end, h.header_len, "the extension block ends the header");
        assert_eq!((end - start) % 4, 0, "extension block is 32-bit words");
    }

    for id in 0..=15u8 {
        let Some(value) = h.extension_value(data, id) else {
            continue;
        };
        let (profile, start, end) = h.extension.expect("a value needs an extension block");
        assert_ne!(id, 0, "id 0 is padding, never an element");
        // The value is a sub-slice of the extension block, nowhere else in the packet.
        let offset = value.as_ptr() as usize - data.as_ptr() as usize;
        assert!(
            offset >= start && offset + value.len() <= end,
            "value of id {id} at {offset}+{} outside the block {start}..{end}",
            value.len()
        );
        if profile == 0xBEDE {
            assert!(id <= 14, "one-byte id 15 is reserved");
            assert!((1..=16).contains(&value.len()));
        }
        // It is the first element with that id, as the iterator sees the block.
        let first = ExtensionIter::new(profile, &data[start..end]).find(|(eid, _)| *eid == id);
        assert_eq!(first.map(|(_, v)| v), Some(value));
    }

    // The plain length the SFU passes is what `open_rtp` returns: the packet without its
    // 16-byte tag, never shorter than the header. Try the whole packet and that.
    for plain_len in [Some(len), len.checked_sub(16)] {
        let Some(plain_len) = plain_len.filter(|&p| p >= h.header_len) else {
            continue;
        };
        match h.payload_range(plain_len, data) {
            Ok((start, end)) => {
                assert_eq!(start, h.header_len);
                assert!(
                    start <= end && end <= plain_len,
                    "payload {start}..{end} of plain length {plain_len}"
                );
                // The slice the forwarding path takes must be valid.
                let _ = &data[start..end];
            }
            Err(_) => assert!(h.has_padding, "only padding can make the payload invalid"),
        }
    }
});
