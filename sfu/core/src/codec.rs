//! The codec the SFU negotiates for a published m-line, and how it is described to subscribers.

use crate::remote_description::RemoteCodec;
use sfu_proto::MediaKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecParams {
    pub payload_type: u8,
    pub name: String,
    pub clock_rate: u32,
    pub channels: String,
    pub fmtp: String,
    /// RTX (RFC 4588) payload type paired with this codec, when negotiated.
    pub rtx_payload_type: Option<u8>,
}

/// Video codecs in the order the SFU prefers them. VP8 and H.264 are what every browser
/// decodes; VP9 and AV1 pass through when a publisher offers nothing else.
const VIDEO_PREFERENCE: [&str; 4] = ["VP8", "H264", "VP9", "AV1"];

pub const AUDIO_FEEDBACK: &[&str] = &["transport-cc"];
/// `goog-remb` too: a client that estimates its own downlink (REMB) rather than acknowledging
/// each packet gets its estimate heard; transport-wide feedback wins when both come.
pub const VIDEO_FEEDBACK: &[&str] = &["nack", "nack pli", "ccm fir", "goog-remb", "transport-cc"];

impl CodecParams {
    /// The `a=rtpmap` value: `<pt> <name>/<clock>[/<channels>]`.
    pub fn rtpmap(&self) -> String {
        if self.channels.is_empty() {
            format!("{} {}/{}", self.payload_type, self.name, self.clock_rate)
        } else {
            format!(
                "{} {}/{}/{}",
                self.payload_type, self.name, self.clock_rate, self.channels
            )
        }
    }

    /// Picks the codec to receive on a publisher's m-line from its offer.
    pub fn choose(kind: MediaKind, offered: &[RemoteCodec]) -> Option<Self> {
        let chosen = match kind {
            // (RFC 7587: Opus is always described as 48 kHz, two channels.)
            MediaKind::Audio => offered
                .iter()
                .find(|c| c.is("opus") && c.clock_rate == 48_000 && c.channels == "2")?,
            MediaKind::Video => VIDEO_PREFERENCE.iter().find_map(|name| {
                // RTP's video formats all run a 90 kHz clock; another would be a client's
                // invention (and the jitter arithmetic's to overflow).
                let mut candidates = offered
                    .iter()
                    .filter(|c| c.is(name) && c.clock_rate == 90_000);
                if *name == "H264" {
                    // Packetization mode 1 with the constrained-baseline profile decodes
                    // everywhere, phones included.
                    let all: Vec<&RemoteCodec> = candidates.collect();
                    all.iter()
                        .find(|c| {
                            c.fmtp.contains("packetization-mode=1") && c.fmtp.contains("42e01f")
                        })
                        .or_else(|| all.iter().find(|c| c.fmtp.contains("packetization-mode=1")))
                        .copied()
                } else {
                    candidates.next()
                }
            })?,
        };
        let rtx_payload_type = match kind {
            MediaKind::Audio => None,
            MediaKind::Video => offered
                .iter()
                .find(|c| c.rtx_apt() == Some(chosen.payload_type))
                .map(|c| c.payload_type),
        };
        Some(Self {
            payload_type: chosen.payload_type,
            name: chosen.name.clone(),
            clock_rate: chosen.clock_rate,
            // (Never the offer's text for video: the parser keeps whatever follows a third
            // `/`, and it went into every subscriber's offer — 60 KB of it, line after line.)
            channels: match kind {
                MediaKind::Audio => "2".to_owned(),
                MediaKind::Video => String::new(),
            },
            fmtp: passed_on_fmtp(&chosen.name, &chosen.fmtp),
            rtx_payload_type,
        })
    }

    pub fn feedback(&self, kind: MediaKind) -> &'static [&'static str] {
        match kind {
            MediaKind::Audio => AUDIO_FEEDBACK,
            MediaKind::Video => VIDEO_FEEDBACK,
        }
    }
}

/// The format parameters of a publisher's offer that go on, in every subscriber's offer, and
/// back in its answer: only those of the format's own definition a decoder needs, each with a
/// value of the form it defines, each once. What a publisher writes there reaches everyone
/// else's browser, which may refuse a whole offer over one it does not like.
pub(crate) fn passed_on_fmtp(name: &str, fmtp: &str) -> String {
    fn flag(v: &str) -> bool {
        v == "0" || v == "1"
    }
    fn number(v: &str) -> bool {
        (1..=9).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit())
    }
    fn profile_level_id(v: &str) -> bool {
        v.len() == 6 && v.bytes().all(|b| b.is_ascii_hexdigit())
    }
    type Check = fn(&str) -> bool;
    let known: &[(&str, Check)] = match name.to_ascii_uppercase().as_str() {
        // RFC 6184 §8.1.
        "H264" => &[
            ("packetization-mode", flag),
            ("profile-level-id", profile_level_id),
            ("level-asymmetry-allowed", flag),
        ],
        // RTP payload format for VP9 §6; AV1's §7.
        "VP9" => &[("profile-id", number)],
        "AV1" => &[("profile", number), ("level-idx", number), ("tier", flag)],
        // RFC 7587 §6.1.
        "OPUS" => &[
            ("minptime", number),
            ("useinbandfec", flag),
            ("usedtx", flag),
            ("stereo", flag),
            ("sprop-stereo", flag),
            ("maxaveragebitrate", number),
            ("maxplaybackrate", number),
        ],
        _ => &[],
    };
    let mut kept: Vec<String> = Vec::new();
    for param in fmtp.split(';') {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        let fits = known.iter().any(|(k, check)| *k == key && check(value));
        if fits
            && !kept
                .iter()
                .any(|p| p.split('=').next() == Some(key.as_str()))
        {
            kept.push(format!("{key}={value}"));
        }
    }
    kept.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(pt: u8, name: &str, fmtp: &str) -> RemoteCodec {
        RemoteCodec {
            payload_type: pt,
            name: name.into(),
            clock_rate: if name == "opus" { 48_000 } else { 90_000 },
            channels: if name == "opus" { "2" } else { "" }.into(),
            fmtp: fmtp.into(),
            rtcp_feedback: vec![],
        }
    }

    #[test]
    fn only_a_formats_own_parameters_in_their_own_form_are_passed_on() {
        let h264 = codec(
            102,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        );
        let c = CodecParams::choose(MediaKind::Video, &[h264]).unwrap();
        assert_eq!(
            c.fmtp,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
        );
        let hostile = codec(
            102,
            "H264",
            "packetization-mode=1;profile-level-id=zzzzzz;packetization-mode=0;\
             x-google-start-bitrate=99999999;sprop-parameter-sets=Z0IAH5WoFAFuQA==,aM48gA==;\
             profile-level-id=42e01f",
        );
        let c = CodecParams::choose(MediaKind::Video, &[hostile]).unwrap();
        assert_eq!(c.fmtp, "packetization-mode=1;profile-level-id=42e01f");
        let vp8 = codec(96, "VP8", "max-fs=12288;max-fr=60");
        assert_eq!(
            CodecParams::choose(MediaKind::Video, &[vp8]).unwrap().fmtp,
            ""
        );
        let mut opus = codec(111, "opus", "minptime=10;useinbandfec=1;stereo=1000");
        opus.channels = "2".into();
        let c = CodecParams::choose(MediaKind::Audio, &[opus.clone()]).unwrap();
        assert_eq!(c.fmtp, "minptime=10;useinbandfec=1");
        opus.channels = "99".into();
        assert!(CodecParams::choose(MediaKind::Audio, &[opus]).is_none());
    }

    /// Whatever a publisher wrote after a third `/` in a video `rtpmap` (the parser keeps it)
    /// went into every subscriber's offer: 60 KB of it, on each line of that publisher's.
    #[test]
    fn a_video_rtpmap_passes_on_no_encoding_parameters() {
        let mut vp8 = codec(96, "VP8", "");
        vp8.channels = "\"".repeat(60_000);
        let c = CodecParams::choose(MediaKind::Video, &[vp8]).unwrap();
        assert_eq!(c.rtpmap(), "96 VP8/90000");
        let opus = codec(111, "opus", "");
        let c = CodecParams::choose(MediaKind::Audio, &[opus]).unwrap();
        assert_eq!(c.rtpmap(), "111 opus/48000/2");
    }

    #[test]
    fn a_video_format_on_another_clock_than_90_khz_is_not_chosen() {
        let mut odd = codec(96, "VP8", "");
        odd.clock_rate = u32::MAX;
        let offered = vec![odd, codec(98, "VP9", "")];
        let c = CodecParams::choose(MediaKind::Video, &offered).unwrap();
        assert_eq!((c.name.as_str(), c.clock_rate), ("VP9", 90_000));
        assert!(CodecParams::choose(MediaKind::Video, &offered[..1]).is_none());
    }

    #[test]
    fn prefers_vp8_then_constrained_baseline_h264_with_rtx() {
        let offered = vec![
            codec(98, "VP9", ""),
            codec(102, "H264", "packetization-mode=1;profile-level-id=640c1f"),
            codec(104, "H264", "packetization-mode=1;profile-level-id=42e01f"),
            codec(105, "rtx", "apt=104"),
        ];
        let c = CodecParams::choose(MediaKind::Video, &offered).unwrap();
        assert_eq!((c.payload_type, c.rtx_payload_type), (104, Some(105)));
        let mut with_vp8 = offered.clone();
        with_vp8.push(codec(96, "VP8", ""));
        with_vp8.push(codec(97, "rtx", "apt=96"));
        let c = CodecParams::choose(MediaKind::Video, &with_vp8).unwrap();
        assert_eq!((c.name.as_str(), c.rtx_payload_type), ("VP8", Some(97)));
        assert!(CodecParams::choose(MediaKind::Audio, &offered).is_none());
    }
}
