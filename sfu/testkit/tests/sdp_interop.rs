//! SDP as other stacks write and read it: Firefox offers its video and data channel as
//! `port 0` + `a=bundle-only` (in use, inside the BUNDLE group), and refuses an answer whose
//! m-sections lack a `c=` line; a rejected line is echoed with its own protocol and formats;
//! stopped sections keep the transport's attributes (aiortc needs them).

use sfu_core::remote_description::RemoteDescription;
use sfu_core::{Sfu, SfuConfig, TransmitBatch, TransportConfig};
use sfu_proto::{Command, Event, ParticipantId, Permissions, RoomId};
use std::time::{Duration, Instant};

/// The shape of a Firefox 153 offer: fingerprint at session level, video and data channel
/// with port 0 and bundle-only.
const FIREFOX_OFFER: &str = "v=0\r\n\
o=mozilla...THIS_IS_SDPARTA-153.0 4294967296 0 IN IP4 0.0.0.0\r\n\
s=-\r\n\
t=0 0\r\n\
a=fingerprint:sha-256 9C:5E:8B:CF:3A:AE:0D:27:21:1C:F6:22:3C:32:C6:DA:7E:EE:52:5B:8B:72:2F:88:49:6A:B6:8C:32:1F:29:81\r\n\
a=group:BUNDLE 0 1 2\r\n\
a=ice-options:trickle\r\n\
a=msid-semantic:WMS *\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101\r\n\
c=IN IP4 0.0.0.0\r\n\
a=sendrecv\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1\r\n\
a=fmtp:101 0-15\r\n\
a=ice-pwd:6f0cd4b5b1c6e1f6a1f1e2b3c4d5e6f7\r\n\
a=ice-ufrag:8a1b2c3d\r\n\
a=mid:0\r\n\
a=msid:{a1} {a2}\r\n\
a=rtcp-mux\r\n\
a=rtpmap:109 opus/48000/2\r\n\
a=rtpmap:9 G722/8000/1\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=setup:actpass\r\n\
a=ssrc:1111 cname:{c}\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 120 124 126 127\r\n\
c=IN IP4 0.0.0.0\r\n\
a=bundle-only\r\n\
a=sendrecv\r\n\
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1\r\n\
a=fmtp:120 max-fs=12288;max-fr=60\r\n\
a=fmtp:124 apt=120\r\n\
a=fmtp:127 apt=126\r\n\
a=ice-pwd:6f0cd4b5b1c6e1f6a1f1e2b3c4d5e6f7\r\n\
a=ice-ufrag:8a1b2c3d\r\n\
a=mid:1\r\n\
a=msid:{a1} {v2}\r\n\
a=rtcp-fb:120 nack\r\n\
a=rtcp-fb:120 nack pli\r\n\
a=rtcp-fb:120 ccm fir\r\n\
a=rtcp-fb:120 transport-cc\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:120 VP8/90000\r\n\
a=rtpmap:124 rtx/90000\r\n\
a=rtpmap:126 H264/90000\r\n\
a=rtpmap:127 rtx/90000\r\n\
a=setup:actpass\r\n\
a=ssrc:2222 cname:{c}\r\n\
a=ssrc:3333 cname:{c}\r\n\
a=ssrc-group:FID 2222 3333\r\n\
m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=bundle-only\r\n\
a=sendrecv\r\n\
a=ice-pwd:6f0cd4b5b1c6e1f6a1f1e2b3c4d5e6f7\r\n\
a=ice-ufrag:8a1b2c3d\r\n\
a=mid:2\r\n\
a=setup:actpass\r\n\
a=sctp-port:5000\r\n\
a=max-message-size:1073741823\r\n";

fn sfu() -> Sfu {
    let transport = TransportConfig::generate(
        "127.0.0.1:5000".parse().unwrap(),
        Duration::from_secs(3),
        Duration::from_secs(10),
    )
    .unwrap();
    Sfu::new(SfuConfig::new(transport))
}

/// Adds a participant with `offer`; returns the SFU's answer and the events before it.
fn answer_to(sfu: &mut Sfu, who: &str, offer: &str) -> (String, Vec<Event>) {
    let mut out = TransmitBatch::with_capacity(8);
    sfu.handle_command(
        Instant::now(),
        Command::AddParticipant {
            room: RoomId("r".into()),
            participant: ParticipantId(who.into()),
            offer_sdp: offer.into(),
            session: 1,
            permissions: Permissions {
                publish: true,
                subscribe: true,
            },
        },
        &mut out,
    );
    let events: Vec<Event> = std::iter::from_fn(|| sfu.poll_event()).collect();
    let answer = events
        .iter()
        .find_map(|e| match e {
            Event::Answer { answer_sdp, .. } => Some(answer_sdp.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no answer: {events:?}"));
    (answer, events)
}

/// The SFU's offer to `who` among `events`.
fn offer_to(events: &[Event], who: &str) -> String {
    events
        .iter()
        .find_map(|e| match e {
            Event::Offer {
                participant,
                offer_sdp,
            } if participant.0 == who => Some(offer_sdp.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no offer to {who}: {events:?}"))
}

/// The m-sections of an SDP, each as its lines.
fn sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            out.push(vec![line]);
        } else if let Some(s) = out.last_mut() {
            s.push(line);
        }
    }
    out
}

#[test]
fn a_firefox_offer_with_bundle_only_lines_is_answered_in_full() {
    let offer = RemoteDescription::parse(FIREFOX_OFFER).unwrap();
    assert!(
        offer.media.iter().all(|m| !m.rejected),
        "bundle-only lines are in use"
    );
    assert_eq!(offer.sending_video_lines(), 1);

    let mut sfu = sfu();
    let (answer, events) = answer_to(&mut sfu, "firefox", FIREFOX_OFFER);
    let lines = sections(&answer);
    assert_eq!(lines.len(), 3);
    for s in &lines {
        assert!(
            s.iter().any(|l| l.starts_with("c=IN IP4")),
            "a section without c=: {s:?}"
        );
    }
    assert!(
        lines[1][0].starts_with("m=video 9 UDP/TLS/RTP/SAVPF 120"),
        "{}",
        lines[1][0]
    );
    assert!(
        lines[2][0].starts_with("m=application 9 UDP/DTLS/SCTP"),
        "{}",
        lines[2][0]
    );
    let published = events
        .iter()
        .filter(|e| matches!(e, Event::TrackPublished { .. }))
        .count();
    assert_eq!(published, 2, "audio and video published: {events:?}");
    // The answer parses as a description of its own (every section has what it needs).
    RemoteDescription::parse(&answer).unwrap();
    // Each section answers only the header extensions its offer section carried: Firefox
    // refuses an answer with transport-cc on audio, where it did not offer it.
    let twcc = "draft-holmer-rmcat-transport-wide-cc-extensions-01";
    assert!(
        !lines[0]
            .iter()
            .any(|l| l.starts_with("a=extmap") && l.contains(twcc)),
        "audio: {:?}",
        lines[0]
    );
    assert!(
        lines[1]
            .iter()
            .any(|l| l.starts_with("a=extmap:7 ") && l.contains(twcc)),
        "video keeps it: {:?}",
        lines[1]
    );
    assert!(
        lines[0]
            .iter()
            .any(|l| l.starts_with("a=extmap:1 ") && l.contains("ssrc-audio-level")),
        "{:?}",
        lines[0]
    );
}

#[test]
fn a_rejected_line_is_echoed_with_its_protocol_and_the_transport() {
    // Firefox's offer with the video line really rejected (port 0, no bundle-only) and a
    // second unknown line: each is answered port 0 with its own protocol and formats.
    let offer = FIREFOX_OFFER
        .replace(
            "m=video 0 UDP/TLS/RTP/SAVPF 120 124 126 127\r\nc=IN IP4 0.0.0.0\r\na=bundle-only\r\n",
            "m=video 0 UDP/TLS/RTP/SAVPF 120 124 126 127\r\nc=IN IP4 0.0.0.0\r\n",
        )
        .replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 0 2");
    let mut sfu = sfu();
    let (answer, _) = answer_to(&mut sfu, "firefox", &offer);
    let lines = sections(&answer);
    let video = &lines[1];
    assert_eq!(video[0], "m=video 0 UDP/TLS/RTP/SAVPF 120 124 126 127");
    for needed in [
        "c=IN IP4",
        "a=ice-ufrag:",
        "a=ice-pwd:",
        "a=fingerprint:",
        "a=rtcp-mux",
        "a=rtpmap:120 VP8/90000",
        "a=inactive",
    ] {
        assert!(
            video.iter().any(|l| l.starts_with(needed)),
            "{needed} missing: {video:?}"
        );
    }
    RemoteDescription::parse(&answer).unwrap();
}

#[test]
fn a_client_mid_at_the_top_of_the_range_leaves_the_sfu_free_mids_for_its_own_lines() {
    let mut sfu = sfu();
    // A client that named its data channel with the largest MID a number can hold, less one:
    // the SFU's next own line takes the largest, and the one after it wraps to the free ones.
    let high = FIREFOX_OFFER
        .replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 0 1 4294967294")
        .replace("a=mid:2\r\n", "a=mid:4294967294\r\n");
    let (answer, _) = answer_to(&mut sfu, "patient", &high);
    assert!(answer.contains("a=mid:4294967294\r\n"), "{answer}");
    // A publisher joins: the patient is given lines for its audio and video.
    let (_, events) = answer_to(&mut sfu, "clinician", FIREFOX_OFFER);
    let offer = offer_to(&events, "patient");
    let mids: Vec<&str> = offer
        .lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .collect();
    assert_eq!(mids, ["0", "1", "4294967294", "4294967295", "2"], "{offer}");
}

/// A publisher's offer with `audio` and `video` m-sections given as their format lines.
fn offer_with(ufrag: &str, audio: &str, video: &str) -> String {
    let transport = format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:6f0cd4b5b1c6e1f6a1f1e2b3c4d5e6f7\r\n\
         a=fingerprint:sha-256 9C:5E:8B:CF:3A:AE:0D:27:21:1C:F6:22:3C:32:C6:DA:7E:EE:52:5B:8B:72:2F:88:49:6A:B6:8C:32:1F:29:81\r\n\
         a=setup:actpass\r\na=rtcp-mux\r\n"
    );
    let pts = |lines: &str| {
        lines
            .lines()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .filter_map(|l| l.split(' ').next())
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\n{transport}a=mid:0\r\na=sendrecv\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n{audio}a=ssrc:{}1 cname:c\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\n{transport}a=mid:1\r\na=sendrecv\r\n\
         a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n{video}\
         a=ssrc-group:FID {}2 {}3\r\na=ssrc:{}2 cname:c\r\na=ssrc:{}3 cname:c\r\n",
        pts(audio),
        ufrag.len(),
        pts(video),
        ufrag.len(),
        ufrag.len(),
        ufrag.len(),
        ufrag.len(),
    )
}

#[test]
fn payload_types_mean_one_format_in_each_subscriber_s_session_whatever_publishers_use() {
    let mut sfu = sfu();
    let opus = "opus/48000/2\r\na=fmtp:{} minptime=10;useinbandfec=1\r\n";
    let with_pt =
        |pt: u8, line: &str| format!("a=rtpmap:{pt} {}", line.replace("{}", &pt.to_string()));
    // A hostile publisher: VP8 on the 111 every Chrome's Opus has, Opus on Chrome's VP8 96.
    let hostile = offer_with(
        "host1",
        &with_pt(96, opus),
        "a=rtpmap:111 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=111\r\n",
    );
    // A phone that sends only H.264, on the 96 that is VP8 in Chrome (Safari numbers so).
    let phone = offer_with(
        "phone1",
        &with_pt(111, opus),
        "a=rtpmap:96 H264/90000\r\na=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
         a=rtpmap:98 rtx/90000\r\na=fmtp:98 apt=96\r\n",
    );
    // And Chrome: Opus 111, VP8 96 with RTX 97, VP9 98 / 99, H.264 102 / 103.
    let chrome = offer_with(
        "chrome1",
        &with_pt(111, opus),
        "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
         a=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\n\
         a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n\
         a=rtpmap:102 H264/90000\r\n\
         a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
         a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n",
    );
    answer_to(&mut sfu, "hostile", &hostile);
    answer_to(&mut sfu, "phone", &phone);
    let (_, events) = answer_to(&mut sfu, "chrome", &chrome);
    let offer = offer_to(&events, "chrome");
    // Every payload type of the bundled m-sections, with what it stands for.
    let mut meaning: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut sending = 0;
    // Chrome's own numbering first: the SFU's offer may not give its numbers other meanings.
    for section in sections(&chrome).into_iter().chain(sections(&offer)) {
        if section[0].starts_with("m=application") || section[0].split(' ').nth(1) == Some("0") {
            continue;
        }
        sending += section.contains(&"a=sendonly") as usize;
        for line in &section {
            for prefix in ["a=rtpmap:", "a=fmtp:"] {
                if let Some((pt, what)) = line.strip_prefix(prefix).and_then(|l| l.split_once(' '))
                {
                    let m = meaning.entry(pt.to_owned()).or_default();
                    let what = format!("{prefix}{what}");
                    if !m.contains(&what) {
                        m.push(what);
                    }
                }
            }
        }
    }
    assert_eq!(
        sending, 4,
        "both publishers' audio and video offered: {offer}"
    );
    // The phone's H.264 is the H.264 Chrome numbered 102.
    assert!(offer.contains("a=rtpmap:102 H264/90000"), "{offer}");
    for (pt, what) in &meaning {
        let rtpmaps = what.iter().filter(|w| w.starts_with("a=rtpmap")).count();
        let fmtps = what.iter().filter(|w| w.starts_with("a=fmtp")).count();
        assert!(
            rtpmaps == 1 && fmtps <= 1,
            "payload type {pt} means {what:?} in one session:\n{offer}"
        );
    }
}
