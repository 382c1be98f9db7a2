//! `RemoteDescription::parse` on arbitrary text: every offer and answer a browser sends over
//! the WebSocket reaches it (via `Command::AddParticipant`, `Offer` and `Answer`). Invalid
//! UTF-8 is replaced (lossy), as signaling only ever hands it a `String`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu_core::remote_description::RemoteDescription;

fuzz_target!(|data: &[u8]| {
    let sdp = String::from_utf8_lossy(data);
    let Ok(desc) = RemoteDescription::parse(&sdp) else {
        return;
    };
    // What the SFU then reads from a parsed description.
    assert!(sdp.len() <= 64 * 1024, "larger SDPs are refused");
    assert!(
        !desc.fingerprint.chars().any(|c| c.is_ascii_uppercase()),
        "fingerprint is lower-cased"
    );
    for m in &desc.media {
        let _ = m.direction.remote_sends();
        for c in &m.codecs {
            let _ = c.rtx_apt();
            let _ = c.is("opus");
        }
        for (_, rtx) in &m.rtx_ssrcs {
            assert!(
                !m.ssrcs.contains(rtx),
                "an RTX SSRC is not also a media SSRC"
            );
        }
    }
});
