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
    pub rejected: bool,
    pub direction: Direction,
    pub codecs: Vec<RemoteCodec>,
    pub extmaps: Vec<(u8, String)>,
    /// Media SSRCs announced with `a=ssrc` (RTX SSRCs are in `rtx_ssrcs`).
    pub ssrcs: Vec<u32>,
    /// `a=ssrc-group:FID primary rtx` pairs.
    pub rtx_ssrcs: Vec<(u32, u32)>,
    pub msid: Option<String>,
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

impl RemoteDescription {
    pub fn parse(sdp: &str) -> Result<Self, SdpError> {
        if sdp.len() > 64 * 1024 {
            return Err(SdpError::Unsupported("an SDP larger than 64 KiB".into()));
        }
        let session = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
            .map_err(|e| SdpError::Syntax(e.to_string()))?;
        let first = session.media_descriptions.first();
        let first_attrs = first.map(|m| m.attributes.as_slice()).unwrap_or(&[]);
        let ice_ufrag = attr(&session, first_attrs, "ice-ufrag")
            .ok_or(SdpError::Missing("a=ice-ufrag"))?
            .to_owned();
        let ice_pwd = attr(&session, first_attrs, "ice-pwd")
            .ok_or(SdpError::Missing("a=ice-pwd"))?
            .to_owned();
        let fingerprint =
            attr(&session, first_attrs, "fingerprint").ok_or(SdpError::Missing("a=fingerprint"))?;
        let (algo, value) = fingerprint
            .split_once(' ')
            .ok_or(SdpError::Missing("a=fingerprint value"))?;
        if !algo.eq_ignore_ascii_case("sha-256") {
            return Err(SdpError::Unsupported(format!(
                "fingerprint algorithm {algo}"
            )));
        }
        let fingerprint = value.trim().to_ascii_lowercase();

        let mut media = Vec::with_capacity(session.media_descriptions.len());
        for m in &session.media_descriptions {
            let mid = m
                .attribute("mid")
                .flatten()
                .ok_or(SdpError::Missing("a=mid on every m-line (BUNDLE)"))?
                .to_owned();
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
            let mut rtx_ssrcs = Vec::new();
            let mut msid = None;
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
                            && !ssrcs.contains(&ssrc)
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
                    _ => {}
                }
            }
            ssrcs.retain(|s| !rtx_ssrcs.iter().any(|(_, r)| r == s));
            media.push(RemoteMedia {
                mid,
                kind,
                rejected: m.media_name.port.value == 0,
                direction,
                codecs,
                extmaps,
                ssrcs,
                rtx_ssrcs,
                msid,
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
