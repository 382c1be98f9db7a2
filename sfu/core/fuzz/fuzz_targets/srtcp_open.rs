//! `SrtpContext::open_rtcp` and `open_rtp` (fixed keys) on arbitrary input: every RTP/RTCP
//! datagram from a participant's address is opened in place before anything else reads it.
//! `srtcp_index` (the clear trailer the replay check reads first) must agree with `open_rtcp`.
//!
//! The fuzzer cannot forge an AES-GCM tag, so opening random bytes only exercises the length
//! and trailer handling. The input is therefore also sealed with the same keys and opened
//! again (it must round-trip exactly), and one bit of the sealed packet is flipped (it must then
//! fail to open): this reaches the success paths of both functions with arbitrary lengths,
//! header lengths, SSRCs and indices.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::rtp_header::RtpHeader;
use sfu_core::srtp_context::{
    MasterKey, SRTCP_TRAILER_LEN, SRTP_TAG_LEN, SrtpContext, srtcp_index,
};
use std::sync::OnceLock;

fn context() -> &'static SrtpContext {
    static CTX: OnceLock<SrtpContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let provider = rtc_crypto::default_provider().expect("ring crypto provider");
        let master = MasterKey {
            key: [7u8; 16],
            salt: [9u8; 12],
        };
        SrtpContext::new(provider.crypto(), &master).expect("SRTP context")
    })
}

fn be32(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_be_bytes(b)
}

/// A bit of the sealed packet chosen from the input.
fn bit_to_flip(data: &[u8], sealed_len: usize) -> (usize, u8) {
    let h = data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    ((h as usize >> 3) % sealed_len, 1 << (h & 7))
}

fuzz_target!(|data: &[u8]| {
    let ctx = context();
    let len = data.len();

    // --- SRTCP: open the input as received -----------------------------------------------
    // The index the SFU reads from the clear trailer (for its replay check, before opening).
    let clear_index = srtcp_index(data);
    assert_eq!(clear_index.is_some(), len >= 8 + SRTCP_TRAILER_LEN);
    let mut buf = data.to_vec();
    if let Ok((plain_len, index)) = ctx.open_rtcp(&mut buf) {
        assert_eq!(plain_len, len - SRTCP_TRAILER_LEN);
        assert!(plain_len >= 8);
        assert!(index <= 0x7fff_ffff);
        assert_eq!(clear_index, Some(index));
    }

    // --- SRTP: open the input as received, with what the SFU would pass ------------------
    // A parsed header gives header_len/ssrc/seq; otherwise take them from the bytes, so that
    // header lengths beyond the packet are tried too.
    let (header_len, ssrc, seq) = match RtpHeader::parse(data) {
        Ok(h) => (h.header_len, h.ssrc, h.sequence_number),
        Err(_) => (
            data.first().map_or(0, |&b| b as usize),
            be32(data, 8),
            be32(data, 2) as u16,
        ),
    };
    let roc = be32(data, 4) >> 24;
    let mut buf = data.to_vec();
    if let Ok(plain_len) = ctx.open_rtp(&mut buf, header_len, ssrc, roc, seq) {
        assert_eq!(plain_len, len - SRTP_TAG_LEN);
        assert!(plain_len >= header_len);
    }

    // --- SRTP round trip: seal the input, open it back, then a flipped bit must fail -------
    if header_len <= len {
        let mut buf = data.to_vec();
        buf.resize(len + SRTP_TAG_LEN, 0);
        let n = ctx
            .seal_rtp(&mut buf, len, header_len, ssrc, roc, seq)
            .expect("sealing fits a buffer of len + tag");
        assert_eq!(n, len + SRTP_TAG_LEN);
        let sealed = buf.clone();
        let m = ctx
            .open_rtp(&mut buf, header_len, ssrc, roc, seq)
            .expect("what we sealed opens");
        assert_eq!(m, len);
        assert_eq!(&buf[..m], data, "SRTP round trip");
        let (at, bit) = bit_to_flip(data, n);
        let mut tampered = sealed;
        tampered[at] ^= bit;
        assert!(
            ctx.open_rtp(&mut tampered, header_len, ssrc, roc, seq)
                .is_err(),
            "a flipped bit at {at} still opened"
        );
    }

    // --- SRTCP round trip ----------------------------------------------------------------
    if len >= 8 {
        let index = be32(data, len.saturating_sub(4));
        let mut buf = data.to_vec();
        buf.resize(len + SRTCP_TRAILER_LEN, 0);
        let n = ctx
            .seal_rtcp(&mut buf, len, index)
            .expect("sealing fits a buffer of len + trailer");
        assert_eq!(n, len + SRTCP_TRAILER_LEN);
        let sealed = buf.clone();
        assert_eq!(srtcp_index(&sealed), Some(index & 0x7fff_ffff));
        let (m, opened_index) = ctx.open_rtcp(&mut buf).expect("what we sealed opens");
        assert_eq!(m, len);
        assert_eq!(opened_index, index & 0x7fff_ffff);
        assert_eq!(&buf[..m], data, "SRTCP round trip");
        let (at, bit) = bit_to_flip(data, n);
        let mut tampered = sealed;
        tampered[at] ^= bit;
        assert!(
            ctx.open_rtcp(&mut tampered).is_err(),
            "a flipped bit at {at} still opened"
        );
    }
});
