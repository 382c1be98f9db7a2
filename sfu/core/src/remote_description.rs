//! What the SFU needs from a client's SDP (offer or answer), parsed with `rtc-sdp`.

use rtc_sdp::description::session::SessionDescription;
use sfu_proto::MediaKind;
use std::io::Cursor;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Syntax(String),
    #[error("SDP lacks {0}")]
    Missing(&'static str),
    #[error("SDP uses {0}, which this SFU does not support")]
    Unsupported(String),
    #[error("SDP is too large: {0}")]
    TooLarge(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Whether the remote side sends media on this m-line.
    pub fn remote_sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCodec {
    pub payload_type: u8,
    pub name: String,
    pub clock_rate: u32,
    pub channels: String,
    pub fmtp: String,
    pub rtcp_feedback: Vec<String>,
}

impl RemoteCodec {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The payload type this codec is the retransmission format of (`apt=`), for RTX.
    pub fn rtx_apt(&self) -> Option<u8> {
        if !self.is("rtx") {
            return None;
        }
        self.fmtp
            .split(';')
            .find_map(|kv| kv.trim().strip_prefix("apt="))
            .and_then(|v| v.parse().ok())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMedia {
    pub mid: String,
    /// `None` for m-lines the SFU does not carry (application/data channel, unknown kinds).
    pub kind: Option<MediaKind>,
    /// The m= line's media, protocol and formats as offered (echoed when rejecting it).
    pub media: String,
    pub proto: Vec<String>,
    pub formats: Vec<String>,
    /// Port 0 without `a=bundle-only`: the line is not in use. (Port 0 *with* bundle-only is
    /// a line that only works inside the BUNDLE group, as Firefox offers its video and data
    /// channel — in use, RFC 8843 §7.2.)
    pub rejected: bool,
    pub direction: Direction,
    pub codecs: Vec<RemoteCodec>,
    pub extmaps: Vec<(u8, String)>,
    /// Media SSRCs announced with `a=ssrc` (RTX SSRCs are in `rtx_ssrcs`).
    pub ssrcs: Vec<u32>,
    /// `a=ssrc-group:FID primary rtx` pairs.
    pub rtx_ssrcs: Vec<(u32, u32)>,
    pub msid: Option<String>,
    /// Simulcast RIDs the client sends on this m-line (`a=rid:<id> send` named by
    /// `a=simulcast:send`), in the `a=simulcast` order; empty without simulcast.
    pub rids: Vec<String>,
    /// An `m=application … UDP/DTLS/SCTP webrtc-datachannel` line.
    pub is_data_channel: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDescription {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// `sha-256` fingerprint, lower-case hex with colons.
    pub fingerprint: String,
    pub media: Vec<RemoteMedia>,
}

fn attr<'a>(
    session: &'a SessionDescription,
    media_attrs: &'a [rtc_sdp::description::common::Attribute],
    key: &str,
) -> Option<&'a str> {
    media_attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_deref())
        .or_else(|| {
            session
                .attributes
                .iter()
                .find(|a| a.key == key)
                .and_then(|a| a.value.as_deref())
        })
}

/// At most this many simulcast layers are received per track; further RIDs are not accepted.
pub const MAX_SIMULCAST_LAYERS: usize = 3;

/// RFC 8851 `rid-id`: alphanumerics, `-` and `_`, and short (it travels in every packet).
fn is_rid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 16
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The RIDs to receive: the `a=simulcast:send` list (first of each set of alternatives, a
/// paused `~` one included) restricted to declared `a=rid … send` ids, or the declared ids in
/// order when there is no `a=simulcast`. One RID alone is not simulcast.
fn simulcast_rids(simulcast_send: Option<&str>, declared: &[String]) -> Vec<String> {
    let mut rids: Vec<String> = match simulcast_send {
        Some(list) => list
            .split(';')
            .filter_map(|alternatives| alternatives.split(',').next())
            .map(|id| id.trim_start_matches('~'))
            .filter(|id| declared.iter().any(|d| d == id))
            .map(str::to_owned)
            .collect(),
        None => declared.to_vec(),
    };
    let mut seen = Vec::with_capacity(rids.len());
    rids.retain(|r| {
        let first = !seen.contains(r);
        seen.push(r.clone());
        first
    });
    rids.truncate(MAX_SIMULCAST_LAYERS);
    if rids.len() < 2 {
        rids.clear();
    }
    rids
}

/// Largest SDP accepted: a session's 64 m-lines of a browser fit well within it.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Most lines in one SDP (a browser's 64-line answer has about 1,500).
pub const MAX_SDP_LINES: usize = 2_000;
/// Most `a=ssrc` and `a=ssrc-group` lines on one m-line: a sender with three legacy simulcast
/// layers and RTX writes about 20.
pub const MAX_SSRC_LINES_PER_MEDIA: usize = 64;

impl RemoteMedia {
    /// The `a=rtpmap` value of the line's first format, when it has one.
    pub fn first_rtpmap(&self) -> Option<String> {
        let pt: u8 = self.formats.first()?.parse().ok()?;
        let c = self.codecs.iter().find(|c| c.payload_type == pt)?;
        Some(if c.channels.is_empty() {
            format!("{pt} {}/{}", c.name, c.clock_rate)
        } else {
            format!("{pt} {}/{}/{}", c.name, c.clock_rate, c.channels)
        })
    }

    /// Whether the remote side publishes media on this line: in use (a port other than 0) and
    /// not `recvonly`/`inactive` (a line without a direction attribute is `sendrecv`,
    /// RFC 4566 §6). The SFU publishes a track for exactly these lines, and signaling counts
    /// a participant's cameras by the same rule.
    pub fn publishes(&self) -> bool {
        !self.rejected && self.direction.remote_sends()
    }
}

impl RemoteDescription {
    /// Video lines the remote side publishes on (its cameras and screen shares).
    pub fn sending_video_lines(&self) -> usize {
        self.media
            .iter()
            .filter(|m| m.kind == Some(MediaKind::Video) && m.publishes())
            .count()
    }

    pub fn parse(sdp: &str) -> Result<Self, SdpError> {
        if sdp.len() > MAX_SDP_BYTES {
            return Err(SdpError::TooLarge(format!(
                "{} bytes (at most {MAX_SDP_BYTES})",
                sdp.len()
            )));
        }
        // Counted before parsing, so an offer built to be expensive costs one pass over it.
        let mut lines = 0;
        let mut ssrc_lines = 0;
        for line in sdp.lines() {
            lines += 1;
            if line.starts_with("m=") {
                ssrc_lines = 0;
            } else if line.starts_with("a=ssrc") {
                ssrc_lines += 1;
                if ssrc_lines > MAX_SSRC_LINES_PER_MEDIA {
                    return Err(SdpError::TooLarge(format!(
                        "more than {MAX_SSRC_LINES_PER_MEDIA} a=ssrc lines on one m-line"
                    )));
                }
            }
        }
        if lines > MAX_SDP_LINES {
            return Err(SdpError::TooLarge(format!(
                "{lines} lines (at most {MAX_SDP_LINES})"
            )));
        }
        let session = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
            .map_err(|e| SdpError::Syntax(e.to_string()))?;
        // Transport attributes come from the first m-line in use (a stopped one, port 0, may
        // carry none) or the session level.
        let first = session
            .media_descriptions
            .iter()
            .find(|m| m.media_name.port.value != 0 || m.has_attribute("bundle-only"))
            .or(session.media_descriptions.first());
        let first_attrs = first.map(|m| m.attributes.as_slice()).unwrap_or(&[]);
        let ice_ufrag = attr(&session, first_attrs, "ice-ufrag")
            .ok_or(SdpError::Missing("a=ice-ufrag"))?
            .to_owned();
        let ice_pwd = attr(&session, first_attrs, "ice-pwd")
            .ok_or(SdpError::Missing("a=ice-pwd"))?
            .to_owned();
        // The sha-256 one of the fingerprints given (a stack may list several algorithms, RFC
        // 8122 §5): the m-line's, else the session's.
        fn fingerprints(attrs: &[rtc_sdp::description::common::Attribute]) -> Vec<(&str, &str)> {
            attrs
                .iter()
                .filter(|a| a.key == "fingerprint")
                .filter_map(|a| a.value.as_deref())
                .filter_map(|v| v.split_once(' '))
                .collect()
        }
        let mut given = fingerprints(first_attrs);
        if given.is_empty() {
            given = fingerprints(&session.attributes);
        }
        if given.is_empty() {
            return Err(SdpError::Missing("a=fingerprint"));
        }
        let Some((_, value)) = given
            .iter()
            .find(|(algo, _)| algo.eq_ignore_ascii_case("sha-256"))
        else {
            let algos: Vec<&str> = given.iter().map(|(a, _)| *a).collect();
            return Err(SdpError::Unsupported(format!(
                "fingerprint algorithm {} (sha-256 is needed)",
                algos.join(", ")
            )));
        };
        let fingerprint = value.trim().to_ascii_lowercase();

        let mut media = Vec::with_capacity(session.media_descriptions.len());
        for m in &session.media_descriptions {
            let mid = m
                .attribute("mid")
                .flatten()
                .ok_or(SdpError::Missing("a=mid on every m-line (BUNDLE)"))?
                .to_owned();
            // A mid is written into every other participant's SDP (their track ids): a token of
            // at most 32 characters, once per offer.
            if !valid_mid(&mid) {
                return Err(SdpError::Syntax(
                    "a=mid: 1 to 32 characters, no spaces or separators (RFC 4566 token)".into(),
                ));
            }
            if media.iter().any(|other: &RemoteMedia| other.mid == mid) {
                return Err(SdpError::Syntax(format!("a=mid:{mid} on two m-lines")));
            }
            let kind = match m.media_name.media.as_str() {
                "audio" => Some(MediaKind::Audio),
                "video" => Some(MediaKind::Video),
                _ => None,
            };
            let direction = if m.has_attribute("sendonly") {
                Direction::SendOnly
            } else if m.has_attribute("recvonly") {
                Direction::RecvOnly
            } else if m.has_attribute("inactive") {
                Direction::Inactive
            } else {
                Direction::SendRecv
            };
            let mut codecs: Vec<RemoteCodec> = m
                .codecs()
                .into_values()
                .map(|c| RemoteCodec {
                    payload_type: c.payload_type,
                    name: c.name,
                    clock_rate: c.clock_rate,
                    channels: c.encoding_parameters,
                    fmtp: c.fmtp,
                    rtcp_feedback: c.rtcp_feedback,
                })
                .collect();
            // Keep the offerer's preference order (the m= format list), not hash order.
            let order: Vec<u8> = m
                .media_name
                .formats
                .iter()
                .filter_map(|f| f.parse().ok())
                .collect();
            codecs.sort_by_key(|c| {
                order
                    .iter()
                    .position(|p| *p == c.payload_type)
                    .unwrap_or(usize::MAX)
            });
            let mut extmaps = Vec::new();
            let mut ssrcs = Vec::new();
            // Sets beside the lists keep the dedup and RTX filtering linear in the lines.
            let mut seen_ssrcs = std::collections::HashSet::<u32>::new();
            let mut rtx_ssrcs = Vec::new();
            let mut msid = None;
            let mut send_rids = Vec::new();
            let mut simulcast_send = None;
            for a in &m.attributes {
                let Some(value) = a.value.as_deref() else {
                    continue;
                };
                match a.key.as_str() {
                    "extmap" => {
                        let mut parts = value.split_whitespace();
                        if let (Some(id), Some(uri)) = (parts.next(), parts.next()) {
                            let id = id.split('/').next().unwrap_or(id);
                            if let Ok(id) = id.parse::<u8>() {
                                extmaps.push((id, uri.to_owned()));
                            }
                        }
                    }
                    "ssrc" => {
                        if let Some(Ok(ssrc)) =
                            value.split_whitespace().next().map(str::parse::<u32>)
                            && seen_ssrcs.insert(ssrc)
                        {
                            ssrcs.push(ssrc);
                        }
                    }
                    "ssrc-group" => {
                        let mut parts = value.split_whitespace();
                        if parts.next() == Some("FID")
                            && let (Some(Ok(p)), Some(Ok(r))) = (
                                parts.next().map(str::parse::<u32>),
                                parts.next().map(str::parse::<u32>),
                            )
                        {
                            rtx_ssrcs.push((p, r));
                        }
                    }
                    "msid" => msid = Some(value.to_owned()),
                    "rid" => {
                        let mut parts = value.split_whitespace();
                        if let (Some(id), Some("send")) = (parts.next(), parts.next())
                            && is_rid(id)
                        {
                            send_rids.push(id.to_owned());
                        }
                    }
                    "simulcast" => {
                        let mut parts = value.split_whitespace();
                        while let Some(dir) = parts.next() {
                            let list = parts.next().unwrap_or_default();
                            if dir == "send" {
                                simulcast_send = Some(list.to_owned());
                            }
                        }
                    }
                    _ => {}
                }
            }
            let repairs: std::collections::HashSet<u32> =
                rtx_ssrcs.iter().map(|(_, r)| *r).collect();
            ssrcs.retain(|s| !repairs.contains(s));
            let rids = simulcast_rids(simulcast_send.as_deref(), &send_rids);
            media.push(RemoteMedia {
                mid,
                kind,
                media: m.media_name.media.clone(),
                proto: m.media_name.protos.clone(),
                formats: m.media_name.formats.clone(),
                rejected: m.media_name.port.value == 0 && !m.has_attribute("bundle-only"),
                direction,
                codecs,
                extmaps,
                ssrcs,
                rtx_ssrcs,
                msid,
                rids,
                is_data_channel: m.media_name.media == "application"
                    && m.media_name.protos.iter().any(|p| p == "SCTP")
                    && m.media_name
                        .formats
                        .iter()
                        .any(|f| f == "webrtc-datachannel"),
            });
        }
        Ok(Self {
            ice_ufrag,
            ice_pwd,
            fingerprint,
            media,
        })
    }
}

/// An identification tag (RFC 5888: an RFC 4566 token) short enough for a track id.
fn valid_mid(mid: &str) -> bool {
    (1..=32).contains(&mid.len())
        && mid.bytes().all(|b| {
            matches!(b, 0x21 | 0x23..=0x27 | 0x2a | 0x2b | 0x2d | 0x2e | 0x30..=0x39 | 0x41..=0x5a | 0x5e..=0x7e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_SIMULCAST: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=rid:x recv\r\n\
a=simulcast:send q;~h,h2;f;x recv x\r\n";

    #[test]
    fn reads_simulcast_rids_in_offer_order() {
        let d = RemoteDescription::parse(CHROME_SIMULCAST).unwrap();
        let m = &d.media[0];
        assert_eq!(m.rids, ["q", "h", "f"]);
        assert!(
            m.ssrcs.is_empty(),
            "simulcast streams are bound by RID, not a=ssrc"
        );
        // Without a=simulcast the declared send RIDs count, in order; one alone is no simulcast.
        let no_list = CHROME_SIMULCAST.replace("a=simulcast:send q;~h,h2;f;x recv x\r\n", "");
        assert_eq!(
            RemoteDescription::parse(&no_list).unwrap().media[0].rids,
            ["q", "h", "f"]
        );
        let single = no_list
            .replace("a=rid:h send\r\n", "")
            .replace("a=rid:f send\r\n", "");
        assert!(
            RemoteDescription::parse(&single).unwrap().media[0]
                .rids
                .is_empty()
        );
        // A RID listed twice is one layer.
        let twice = CHROME_SIMULCAST.replace("q;~h,h2;f;x", "q;h;q;f");
        assert_eq!(
            RemoteDescription::parse(&twice).unwrap().media[0].rids,
            ["q", "h", "f"]
        );
        // An invalid RID (it would travel in every packet) is not accepted.
        let bad = CHROME_SIMULCAST.replace("a=rid:f send", "a=rid:f%$ send");
        assert_eq!(
            RemoteDescription::parse(&bad).unwrap().media[0].rids,
            ["q", "h"]
        );
    }

    fn offer(lines: &str) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
             a=fingerprint:sha-256 AA:BB\r\n{lines}"
        )
    }

    /// A stack that lists several fingerprint algorithms, sha-256 not first, is read by its
    /// sha-256 one; one without sha-256 is refused naming what it gave.
    #[test]
    fn the_sha_256_fingerprint_is_found_among_several() {
        let line = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n";
        let several = offer(line).replace(
            "a=fingerprint:sha-256 AA:BB\r\n",
            "a=fingerprint:sha-512 CC:DD\r\na=fingerprint:sha-256 AA:BB\r\n",
        );
        assert_eq!(
            RemoteDescription::parse(&several).unwrap().fingerprint,
            "aa:bb"
        );
        let without =
            offer(line).replace("a=fingerprint:sha-256 AA:BB", "a=fingerprint:sha-384 CC");
        let err = RemoteDescription::parse(&without).unwrap_err().to_string();
        assert!(err.contains("sha-384"), "{err}");
    }

    #[test]
    fn a_mid_that_would_not_fit_a_track_id_or_names_two_lines_is_refused() {
        let line = |mid: &str| {
            format!("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{mid}\r\na=rtpmap:96 VP8/90000\r\n")
        };
        for ok in ["0", "sdparta_1", "{7e2f}", &"m".repeat(32)] {
            assert!(RemoteDescription::parse(&offer(&line(ok))).is_ok(), "{ok}");
        }
        let long = "m".repeat(33);
        for bad in ["0 x", "a/b", "x\"y", long.as_str()] {
            let refused = RemoteDescription::parse(&offer(&line(bad)));
            assert!(
                matches!(&refused, Err(SdpError::Syntax(m)) if m.contains("a=mid")),
                "{bad}: {refused:?}"
            );
        }
        let twice = offer(&[line("1"), line("1")].concat());
        assert!(matches!(
            RemoteDescription::parse(&twice),
            Err(SdpError::Syntax(m)) if m.contains("two m-lines")
        ));
    }

    #[test]
    fn a_line_without_a_direction_sends_and_counts_as_a_camera() {
        let line = |kind: &str, port: u16, mid: u32, dir: &str| {
            format!(
                "m={kind} {port} UDP/TLS/RTP/SAVPF 96\r\na=mid:{mid}\r\na=rtpmap:96 VP8/90000\r\n{dir}"
            )
        };
        let sdp = offer(
            &[
                line("audio", 9, 0, "a=sendonly\r\n"),
                line("video", 9, 1, "a=sendonly\r\n"),
                line("video", 9, 2, "a=recvonly\r\n"),
                line("video", 0, 3, "a=sendonly\r\n"),
                line("video", 9, 4, "a=inactive\r\n"),
            ]
            .concat(),
        );
        assert_eq!(
            RemoteDescription::parse(&sdp)
                .unwrap()
                .sending_video_lines(),
            1
        );
        // No direction attribute is sendrecv (RFC 4566 §6): it publishes.
        let undirected = format!("{sdp}{}", line("video", 9, 5, ""));
        let d = RemoteDescription::parse(&undirected).unwrap();
        assert_eq!(d.sending_video_lines(), 2);
        assert!(d.media[5].publishes() && !d.media[2].publishes() && !d.media[3].publishes());
        let sendrecv = format!("{sdp}{}", line("video", 9, 5, "a=sendrecv\r\n"));
        assert_eq!(
            RemoteDescription::parse(&sendrecv)
                .unwrap()
                .sending_video_lines(),
            2
        );
    }

    #[test]
    fn oversized_offers_are_refused_before_parsing() {
        let mut ssrcs = String::new();
        for i in 0..1_200u32 {
            ssrcs.push_str(&format!("a=ssrc:{} cname:x\r\n", 1000 + i));
        }
        let flood = offer(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n{ssrcs}"
        ));
        let err = RemoteDescription::parse(&flood).unwrap_err();
        assert!(
            matches!(err, SdpError::TooLarge(ref m) if m.contains("a=ssrc")),
            "{err}"
        );
        let lines = offer(&"a=x-filler:1\r\n".repeat(MAX_SDP_LINES));
        assert!(
            matches!(RemoteDescription::parse(&lines), Err(SdpError::TooLarge(m)) if m.contains("lines"))
        );
        let big = offer(&format!("a=x-filler:{}\r\n", "x".repeat(MAX_SDP_BYTES)));
        assert!(
            matches!(RemoteDescription::parse(&big), Err(SdpError::TooLarge(m)) if m.contains("bytes"))
        );
        // Within the limits, SSRCs are read once each and RTX pairs leave the media list.
        let mut ok = String::from("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n");
        for i in 0..20u32 {
            ok.push_str(&format!(
                "a=ssrc:{} cname:x\r\na=ssrc:{} cname:x\r\n",
                10 + i,
                10 + i
            ));
        }
        ok.push_str("a=ssrc-group:FID 10 11\r\n");
        let d = RemoteDescription::parse(&offer(&ok)).unwrap();
        assert_eq!(d.media[0].ssrcs.len(), 19);
        assert_eq!(d.media[0].rtx_ssrcs, [(10, 11)]);
    }
}
