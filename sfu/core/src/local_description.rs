//! The SDP the SFU writes: answers to client offers and its own renegotiation offers,
//! built with `rtc-sdp`'s description types.

use crate::codec::CodecParams;
use rtc_sdp::description::common::{Address, Attribute, ConnectionInformation};
use rtc_sdp::description::media::{MediaDescription, MediaName, RangedPort};
use rtc_sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};
use sfu_proto::MediaKind;
use std::net::SocketAddr;

pub const EXT_AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const EXT_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// RFC 8852: the simulcast stream (RID) a packet belongs to, and the one an RTX packet repairs.
pub const EXT_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
pub const EXT_REPAIRED_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
pub const EXT_TRANSPORT_CC: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    Offer,
    Answer,
}

/// What the SFU sends on an m-line it offers to a subscriber.
#[derive(Debug, Clone)]
pub struct SendSource {
    pub ssrc: u32,
    pub rtx_ssrc: Option<u32>,
    /// `msid` stream id (the publisher) and track id.
    pub stream_id: String,
    pub track_id: String,
}

#[derive(Debug, Clone)]
pub enum LineContent {
    /// An audio/video m-line with a negotiated codec.
    Media {
        kind: MediaKind,
        codec: CodecParams,
        direction: &'static str,
        extmaps: Vec<(u8, &'static str)>,
        send: Option<SendSource>,
        /// Simulcast RIDs received on this line (a publisher's), answered `a=rid:<id> recv`.
        simulcast_rids: Vec<String>,
    },
    /// The data channel m-line (SCTP over the same DTLS).
    Data,
    /// An m-line the SFU does not carry, or no longer: port 0, echoed media type, protocol
    /// and formats, with a `c=` line, the transport's attributes and the format's `rtpmap`
    /// where known (browsers ignore them in a stopped section; other stacks need them).
    Rejected {
        media: String,
        proto: Vec<String>,
        formats: Vec<String>,
        rtpmap: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct LineSpec {
    pub mid: String,
    pub content: LineContent,
}

#[derive(Debug, Clone)]
pub struct TransportSpec<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    pub fingerprint: &'a str,
    pub candidate: SocketAddr,
    /// The worker's ICE-TCP listener (RFC 6544 passive), offered below the UDP candidate.
    pub tcp_candidate: Option<SocketAddr>,
    /// How many times the session's ICE was restarted: raises the candidates' priority.
    pub ice_generation: u32,
}

/// Restarts after which the UDP candidate's priority stops rising (its local preference stays
/// below the browsers' own UDP host candidates').
const GENERATION_STEPS: u32 = 28;

/// Host-type candidate priority (RFC 8445 §5.1.2.1: type 126, component 1) of the UDP
/// candidate after `generation` ICE restarts. Why low and rising: a browser ranks a candidate
/// pair by `2^32 * min(G, D) + …`, G its own candidate's priority and D ours. Chromium keeps
/// sending on its selected pair after an ICE restart unless a new pair ranks higher (or the old
/// one has been silent for 2.5 + 1 s). With our D below every browser UDP host candidate
/// (local preference 1–29; theirs is at least 30: network preference × 256 + 30 for IPv4),
/// `min` is ours, so a restart's pairs outrank the dead path's and the browser moves its media
/// as soon as the new path answers. The ordering among the browser's own candidates is
/// unchanged.
pub fn udp_priority(generation: u32) -> u32 {
    (126 << 24) | ((1 + generation.min(GENERATION_STEPS)) << 8) | 255
}

/// The ICE-TCP (RFC 6544, passive) candidate's: below every UDP candidate, so browsers try UDP
/// first. It does not rise: browsers rank their own TCP candidates far lower (type 90 in
/// Chromium), so theirs sets a TCP pair's rank.
pub const TCP_PASSIVE_PRIORITY: u32 = (126 << 24) | 255;

fn attr(key: &str, value: impl Into<String>) -> Attribute {
    Attribute::new(key.to_owned(), Some(value.into()))
}

fn flag(key: &str) -> Attribute {
    Attribute::new(key.to_owned(), None)
}

pub fn write(
    kind: SdpKind,
    session_id: u64,
    version: u64,
    t: &TransportSpec<'_>,
    lines: &[LineSpec],
) -> String {
    let bundle: Vec<&str> = lines
        .iter()
        .filter(|l| matches!(l.content, LineContent::Media { .. } | LineContent::Data))
        .map(|l| l.mid.as_str())
        .collect();
    let mut session_attrs = vec![flag("ice-lite"), attr("msid-semantic", " WMS *")];
    if bundle.is_empty() {
        // Every m-line stopped (a subscriber-only session whose publishers all left): the
        // transport still has to be described, so at the session level.
        session_attrs.push(attr("ice-ufrag", t.ice_ufrag));
        session_attrs.push(attr("ice-pwd", t.ice_pwd));
        session_attrs.push(attr("fingerprint", format!("sha-256 {}", t.fingerprint)));
    } else {
        session_attrs.insert(0, attr("group", format!("BUNDLE {}", bundle.join(" "))));
    }
    let ip = t.candidate.ip();
    let addr_type = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut desc = SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".into(),
            session_id,
            session_version: version,
            network_type: "IN".into(),
            address_type: "IP4".into(),
            unicast_address: "0.0.0.0".into(),
        },
        session_name: "-".into(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: None,
        bandwidth: vec![],
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        time_zones: vec![],
        encryption_key: None,
        attributes: session_attrs,
        media_descriptions: vec![],
    };
    let candidate = format!(
        "1 1 udp {} {} {} typ host generation 0",
        udp_priority(t.ice_generation),
        ip,
        t.candidate.port()
    );
    let tcp_candidate = t.tcp_candidate.map(|a| {
        format!(
            "2 1 tcp {} {} {} typ host tcptype passive generation 0",
            TCP_PASSIVE_PRIORITY,
            a.ip(),
            a.port()
        )
    });
    for line in lines {
        let transport_attrs = || {
            vec![
                attr("ice-ufrag", t.ice_ufrag),
                attr("ice-pwd", t.ice_pwd),
                attr("ice-options", "ice2"),
                attr("fingerprint", format!("sha-256 {}", t.fingerprint)),
                attr(
                    "setup",
                    match kind {
                        SdpKind::Offer => "actpass",
                        SdpKind::Answer => "passive",
                    },
                ),
            ]
        };
        let connection = || ConnectionInformation {
            network_type: "IN".into(),
            address_type: addr_type.into(),
            address: Some(Address {
                address: if ip.is_ipv4() {
                    "0.0.0.0".into()
                } else {
                    "::".into()
                },
                ttl: None,
                range: None,
            }),
        };
        let md = match &line.content {
            LineContent::Data => {
                let mut a = transport_attrs();
                a.push(attr("mid", line.mid.clone()));
                a.push(attr("sctp-port", "5000"));
                // What is relayed: the browser then refuses a bigger send itself
                // (`RTCDataChannel.send` throws) rather than the SFU dropping it unseen.
                a.push(attr(
                    "max-message-size",
                    crate::data_channel_link::MAX_MESSAGE.to_string(),
                ));
                a.push(attr("candidate", candidate.clone()));
                if let Some(tcp) = &tcp_candidate {
                    a.push(attr("candidate", tcp.clone()));
                }
                a.push(flag("end-of-candidates"));
                MediaDescription {
                    media_name: MediaName {
                        media: "application".into(),
                        port: RangedPort {
                            value: 9,
                            range: None,
                        },
                        protos: vec!["UDP".into(), "DTLS".into(), "SCTP".into()],
                        formats: vec!["webrtc-datachannel".into()],
                    },
                    media_title: None,
                    connection_information: Some(connection()),
                    bandwidth: vec![],
                    encryption_key: None,
                    attributes: a,
                }
            }
            LineContent::Rejected {
                media,
                proto,
                formats,
                rtpmap,
            } => {
                let mut a = transport_attrs();
                a.push(attr("mid", line.mid.clone()));
                a.push(flag("inactive"));
                if proto.iter().any(|p| p == "RTP") {
                    a.push(flag("rtcp-mux"));
                }
                if let Some(map) = rtpmap {
                    a.push(attr("rtpmap", map.clone()));
                }
                MediaDescription {
                    media_name: MediaName {
                        media: media.clone(),
                        port: RangedPort {
                            value: 0,
                            range: None,
                        },
                        protos: proto.clone(),
                        formats: formats.clone(),
                    },
                    media_title: None,
                    // Every m-section needs a connection line when the session has none
                    // (RFC 4566 §5.7); Firefox refuses an SDP without it.
                    connection_information: Some(connection()),
                    bandwidth: vec![],
                    encryption_key: None,
                    attributes: a,
                }
            }
            LineContent::Media {
                kind: media_kind,
                codec,
                direction,
                extmaps,
                send,
                simulcast_rids,
            } => {
                let mut formats = vec![codec.payload_type.to_string()];
                let rtx_pt = match media_kind {
                    MediaKind::Video => codec.rtx_payload_type,
                    MediaKind::Audio => None,
                };
                if let Some(rtx) = rtx_pt {
                    formats.push(rtx.to_string());
                }
                let mut a = vec![attr("rtcp", format!("9 IN {addr_type} 0.0.0.0"))];
                a.extend(transport_attrs());
                a.push(attr("mid", line.mid.clone()));
                for (id, uri) in extmaps {
                    a.push(attr("extmap", format!("{id} {uri}")));
                }
                a.push(flag(direction));
                if let Some(s) = send {
                    a.push(attr("msid", format!("{} {}", s.stream_id, s.track_id)));
                }
                a.push(flag("rtcp-mux"));
                a.push(flag("rtcp-rsize"));
                a.push(attr("rtpmap", codec.rtpmap()));
                for fb in codec.feedback(*media_kind) {
                    a.push(attr("rtcp-fb", format!("{} {}", codec.payload_type, fb)));
                }
                if !codec.fmtp.is_empty() {
                    a.push(attr(
                        "fmtp",
                        format!("{} {}", codec.payload_type, codec.fmtp),
                    ));
                }
                if let Some(rtx) = rtx_pt {
                    a.push(attr("rtpmap", format!("{rtx} rtx/{}", codec.clock_rate)));
                    a.push(attr("fmtp", format!("{rtx} apt={}", codec.payload_type)));
                }
                if !simulcast_rids.is_empty() {
                    for rid in simulcast_rids {
                        a.push(attr("rid", format!("{rid} recv")));
                    }
                    a.push(attr(
                        "simulcast",
                        format!("recv {}", simulcast_rids.join(";")),
                    ));
                }
                if let Some(s) = send {
                    let rtx_ssrc = s.rtx_ssrc.filter(|_| rtx_pt.is_some());
                    if let Some(rtx_ssrc) = rtx_ssrc {
                        a.push(attr("ssrc-group", format!("FID {} {}", s.ssrc, rtx_ssrc)));
                    }
                    for ssrc in std::iter::once(s.ssrc).chain(rtx_ssrc) {
                        a.push(attr("ssrc", format!("{ssrc} cname:sfu-{}", s.stream_id)));
                        a.push(attr(
                            "ssrc",
                            format!("{ssrc} msid:{} {}", s.stream_id, s.track_id),
                        ));
                    }
                }
                a.push(attr("candidate", candidate.clone()));
                if let Some(tcp) = &tcp_candidate {
                    a.push(attr("candidate", tcp.clone()));
                }
                a.push(flag("end-of-candidates"));
                MediaDescription {
                    media_name: MediaName {
                        media: match media_kind {
                            MediaKind::Audio => "audio".into(),
                            MediaKind::Video => "video".into(),
                        },
                        port: RangedPort {
                            value: 9,
                            range: None,
                        },
                        protos: vec!["UDP".into(), "TLS".into(), "RTP".into(), "SAVPF".into()],
                        formats,
                    },
                    media_title: None,
                    connection_information: Some(connection()),
                    bandwidth: vec![],
                    encryption_key: None,
                    attributes: a,
                }
            }
        };
        desc.media_descriptions.push(md);
    }
    desc.marshal()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lowest priority a browser gives a host candidate of its own: IPv4 (precedence 30)
    /// on its least preferred network (0), e.g. Safari's and Chromium's mDNS candidates.
    const LOWEST_BROWSER_HOST: u32 = (126 << 24) | (30 << 8) | 255;

    #[test]
    fn each_restart_ranks_the_candidates_higher_and_udp_stays_above_tcp() {
        for g in 0..GENERATION_STEPS {
            assert!(udp_priority(g + 1) > udp_priority(g), "generation {g}");
        }
        for g in 0..=GENERATION_STEPS + 5 {
            assert!(udp_priority(g) > TCP_PASSIVE_PRIORITY);
            // Even the last step stays below every browser's UDP host candidates, so the
            // pair's rank is set by ours; and above every server-reflexive one (type 100).
            assert!(udp_priority(g) < LOWEST_BROWSER_HOST, "generation {g}");
        }
        const { assert!(TCP_PASSIVE_PRIORITY > 100 << 24) };
        // Past the last step it holds still rather than overflowing into the type bits.
        assert_eq!(udp_priority(u32::MAX), udp_priority(GENERATION_STEPS));
    }
}
