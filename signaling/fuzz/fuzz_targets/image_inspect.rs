//! The metadata check of shared photos (`src/shared_image.rs`, compiled here on its own):
//! arbitrary bytes, and arbitrary bytes behind a JPEG or PNG signature. Checks: no panic; a
//! photo accepted as JPEG starts with SOI and ends with EOI, and holds no `Exif\0` APP1 block
//! before its image data; one accepted as PNG ends with its IEND chunk and holds no text,
//! EXIF or time chunk.
//!
//! Input: the first byte chooses the signature put in front (0: none, 1: JPEG SOI, 2: PNG).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/shared_image.rs"]
#[allow(dead_code)]
mod shared_image;

use shared_image::{ImageKind, inspect};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = match choice % 3 {
        1 => vec![0xFF, 0xD8, 0xFF],
        2 => b"\x89PNG\r\n\x1a\n".to_vec(),
        _ => Vec::new(),
    };
    bytes.extend_from_slice(rest);
    match inspect(&bytes) {
        Ok(ImageKind::Jpeg) => {
            assert!(bytes.starts_with(&[0xFF, 0xD8]) && bytes.ends_with(&[0xFF, 0xD9]));
            // Walk the segments again, independently: none before SOS is EXIF.
            let mut at = 2;
            while at + 4 <= bytes.len() && bytes[at] == 0xFF {
                let marker = bytes[at + 1];
                if marker == 0xFF || marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
                    at += if marker == 0xFF { 1 } else { 2 };
                    continue;
                }
                if marker == 0xDA {
                    break;
                }
                let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
                let body = &bytes[at + 4..(at + 2 + len).min(bytes.len())];
                assert!(!(marker == 0xE1 && body.starts_with(b"Exif\0")), "EXIF accepted");
                at += 2 + len;
            }
        }
        Ok(ImageKind::Png) => {
            assert_eq!(&bytes[bytes.len() - 8..bytes.len() - 4], b"IEND");
            for kind in [&b"tEXt"[..], b"zTXt", b"iTXt", b"eXIf", b"tIME"] {
                let mut at = 8;
                while at + 8 <= bytes.len() {
                    let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                    assert_ne!(&bytes[at + 4..at + 8], kind, "a metadata chunk accepted");
                    at += 12 + len;
                }
            }
        }
        Err(_) => {}
    }
});
