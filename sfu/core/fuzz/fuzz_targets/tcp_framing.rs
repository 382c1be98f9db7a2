//! The ICE-TCP frame reader on an arbitrary byte stream, delivered in arbitrary pieces: every
//! byte a browser (or anyone) sends to a worker's TCP port passes through it. The first input
//! byte picks the piece size.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::tcp_framing::{FrameQueue, FrameReader, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut reader = FrameReader::default();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut refused = false;
    'read: for chunk in stream.chunks(piece) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let spare = reader.spare();
            assert!(!spare.is_empty(), "a frame that fits always leaves room");
            let n = spare.len().min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            reader.filled(n);
            rest = &rest[n..];
            if reader.drain(|f| frames.push(f.to_vec())).is_err() {
                refused = true;
                break 'read;
            }
        }
    }
    // Framing the packets again gives back exactly the bytes they came from.
    let mut again = FrameQueue::default();
    let mut framed = Vec::new();
    for f in &frames {
        assert!(!f.is_empty() && f.len() <= MAX_FRAME);
        framed.extend_from_slice(&(f.len() as u16).to_be_bytes());
        framed.extend_from_slice(f);
        let _ = again.push(f);
    }
    assert_eq!(&stream[..framed.len()], &framed[..]);
    if !refused {
        assert!(stream.len() - framed.len() < 2 + MAX_FRAME, "only an incomplete frame is held");
    }
});
