//! A borrowed, allocation-free view of an RTP header (RFC 3550 §5.1, RFC 8285 extensions) and the
//! writer for rewritten headers.
//!
//! `rtc-rtp`'s `Header` collects extensions into a `Vec` on every unmarshal; the forwarding path
//! parses every packet once and rewrites it per subscriber, so it works on the bytes directly.
//! Slower paths (tests, tools) keep using `rtc-rtp`.

/// Identifies a packet's protocol by its first byte (RFC 7983 demultiplexing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Unknown,
}

pub fn classify(datagram: &[u8]) -> PacketClass {
    match datagram.first() {
        Some(0..=3) => PacketClass::Stun,
        Some(20..=63) => PacketClass::Dtls,
        Some(128..=191) => {
            // RTCP packet types 192..=223 share the range with RTP (RFC 5761 §4).
            match datagram.get(1).copied() {
                Some(192..=223) => PacketClass::Rtcp,
                Some(_) => PacketClass::Rtp,
                None => PacketClass::Unknown,
            }
        }
        _ => PacketClass::Unknown,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtpError {
    #[error("RTP packet too short")]
    TooShort,
    #[error("not RTP version 2")]
    Version,
    #[error("RTP header extension overruns the packet")]
    Extension,
    #[error("RTP padding longer than the payload")]
    Padding,
}

/// Header fields of one RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Length of the fixed header, CSRCs and extension block.
    pub header_len: usize,
    /// The extension block's profile (0xBEDE one-byte, 0x100x two-byte) and its byte range.
    pub extension: Option<(u16, usize, usize)>,
    pub has_padding: bool,
}

impl RtpHeader {
    pub fn parse(buf: &[u8]) -> Result<Self, RtpError> {
        if buf.len() < 12 {
            return Err(RtpError::TooShort);
        }
        if buf[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let has_padding = buf[0] & 0x20 != 0;
        let has_ext = buf[0] & 0x10 != 0;
        let cc = (buf[0] & 0x0f) as usize;
        let mut header_len = 12 + 4 * cc;
        if buf.len() < header_len {
            return Err(RtpError::TooShort);
        }
        let mut extension = None;
        if has_ext {
            if buf.len() < header_len + 4 {
                return Err(RtpError::Extension);
            }
            let profile = u16::from_be_bytes([buf[header_len], buf[header_len + 1]]);
            let words = u16::from_be_bytes([buf[header_len + 2], buf[header_len + 3]]) as usize;
            let start = header_len + 4;
            let end = start + 4 * words;
            if end > buf.len() {
                return Err(RtpError::Extension);
            }
            extension = Some((profile, start, end));
            header_len = end;
        }
        Ok(Self {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7f,
            sequence_number: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            header_len,
            extension,
            has_padding,
        })
    }

    /// Finds extension element `id` in the packet's extension block.
    pub fn extension_value<'a>(&self, buf: &'a [u8], id: u8) -> Option<&'a [u8]> {
        let (profile, start, end) = self.extension?;
        if id == 0 {
            return None;
        }
        let block = buf.get(start..end)?;
        ExtensionIter::new(profile, block)
            .find(|(eid, _)| *eid == id)
            .map(|(_, v)| v)
    }

    /// Payload length without padding (the padding count is in the last byte, RFC 3550 §5.1).
    pub fn payload_range(&self, plain_len: usize, buf: &[u8]) -> Result<(usize, usize), RtpError> {
        let mut end = plain_len;
        if self.has_padding {
            let pad = *buf
                .get(plain_len.wrapping_sub(1))
                .ok_or(RtpError::Padding)? as usize;
            if pad == 0 || self.header_len + pad > plain_len {
                return Err(RtpError::Padding);
            }
            end -= pad;
        }
        Ok((self.header_len, end))
    }
}

/// Iterates the elements of an RFC 8285 extension block.
pub struct ExtensionIter<'a> {
    two_byte: bool,
    block: &'a [u8],
    pos: usize,
    valid: bool,
}

impl<'a> ExtensionIter<'a> {
    pub fn new(profile: u16, block: &'a [u8]) -> Self {
        Self {
            two_byte: profile & 0xfff0 == 0x1000,
            block,
            pos: 0,
            valid: profile == 0xBEDE || profile & 0xfff0 == 0x1000,
        }
    }
}

impl<'a> Iterator for ExtensionIter<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if !self.valid {
            return None;
        }
        loop {
            let b = *self.block.get(self.pos)?;
            if b == 0 {
                // Padding between elements.
                self.pos += 1;
                continue;
            }
            if self.two_byte {
                let len = *self.block.get(self.pos + 1)? as usize;
                let start = self.pos + 2;
                let value = self.block.get(start..start + len)?;
                self.pos = start + len;
                return Some((b, value));
            }
            let id = b >> 4;
            if id == 15 {
                // Reserved: stop parsing (RFC 8285 §4.2).
                return None;
            }
            let len = (b & 0x0f) as usize + 1;
            let start = self.pos + 1;
            let value = self.block.get(start..start + len)?;
            self.pos = start + len;
            return Some((id, value));
        }
    }
}

/// Builds a rewritten RTP header (with one-byte extensions) into a buffer.
pub struct HeaderWriter<'a> {
    buf: &'a mut [u8],
    ext_start: usize,
    pos: usize,
}

impl<'a> HeaderWriter<'a> {
    /// Writes the fixed header. `buf` must hold at least 12 + 4 + extension bytes.
    pub fn new(
        buf: &'a mut [u8],
        marker: bool,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
    ) -> Self {
        buf[0] = 0x90; // V=2, X=1; X is cleared in finish() when no element was written.
        buf[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
        buf[12] = 0xBE;
        buf[13] = 0xDE;
        Self {
            buf,
            ext_start: 16,
            pos: 16,
        }
    }

    /// Appends a one-byte-header element (`id` 1..=14, 1..=16 bytes of value). Returns where
    /// its value lies (`None`: not written), for a value filled in later.
    pub fn extension(&mut self, id: u8, value: &[u8]) -> Option<usize> {
        if id == 0 || id > 14 || value.is_empty() || value.len() > 16 {
            return None;
        }
        self.buf[self.pos] = (id << 4) | (value.len() as u8 - 1);
        let at = self.pos + 1;
        self.buf[at..at + value.len()].copy_from_slice(value);
        self.pos += 1 + value.len();
        Some(at)
    }

    /// Pads the extension block to 32 bits and returns the header length.
    pub fn finish(mut self) -> usize {
        if self.pos == self.ext_start {
            self.buf[0] = 0x80;
            return 12;
        }
        while !(self.pos - self.ext_start).is_multiple_of(4) {
            self.buf[self.pos] = 0;
            self.pos += 1;
        }
        let words = ((self.pos - self.ext_start) / 4) as u16;
        self.buf[14..16].copy_from_slice(&words.to_be_bytes());
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0, 1]), PacketClass::Stun);
        assert_eq!(classify(&[22, 254]), PacketClass::Dtls);
        assert_eq!(classify(&[0x80, 96]), PacketClass::Rtp);
        assert_eq!(classify(&[0x81, 200]), PacketClass::Rtcp);
        assert_eq!(classify(&[0x80]), PacketClass::Unknown);
        assert_eq!(classify(&[]), PacketClass::Unknown);
        assert_eq!(classify(&[70]), PacketClass::Unknown);
    }

    #[test]
    fn written_header_parses_back_with_its_extensions() {
        let mut buf = [0u8; 64];
        let mut w = HeaderWriter::new(&mut buf, true, 111, 65535, 1234, 42);
        w.extension(3, &[0x12, 0x34]);
        w.extension(1, &[0x85]);
        let len = w.finish();
        assert_eq!(len, 12 + 4 + 8);
        let h = RtpHeader::parse(&buf[..len]).unwrap();
        assert!(h.marker);
        assert_eq!(h.payload_type, 111);
        assert_eq!(h.sequence_number, 65535);
        assert_eq!(h.timestamp, 1234);
        assert_eq!(h.ssrc, 42);
        assert_eq!(h.header_len, len);
        assert_eq!(h.extension_value(&buf, 3), Some(&[0x12, 0x34][..]));
        assert_eq!(h.extension_value(&buf, 1), Some(&[0x85][..]));
        assert_eq!(h.extension_value(&buf, 2), None);

        // The same bytes through rtc-rtp agree.
        use rtc_shared::marshal::Unmarshal;
        let mut slice = &buf[..len];
        let theirs = rtc_rtp::header::Header::unmarshal(&mut slice).unwrap();
        assert_eq!(theirs.sequence_number, 65535);
        assert_eq!(
            theirs.get_extension(3).as_deref(),
            Some(&[0x12u8, 0x34][..])
        );
    }

    #[test]
    fn header_without_extensions_is_twelve_bytes() {
        let mut buf = [0u8; 32];
        let len = HeaderWriter::new(&mut buf, false, 96, 1, 2, 3).finish();
        assert_eq!(len, 12);
        assert_eq!(buf[0], 0x80);
    }

    #[test]
    fn truncated_and_overrunning_headers_are_refused() {
        assert_eq!(RtpHeader::parse(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(RtpHeader::parse(&[0x40; 12]), Err(RtpError::Version));
        // X bit set, extension length says 100 words.
        let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xBE, 0xDE, 0, 100];
        p.extend_from_slice(&[0; 8]);
        assert_eq!(RtpHeader::parse(&p), Err(RtpError::Extension));
        // CSRC count beyond the packet.
        assert_eq!(RtpHeader::parse(&[0x8f; 20]), Err(RtpError::TooShort));
    }

    #[test]
    fn two_byte_extensions_are_read() {
        let block = [5u8, 2, 0xaa, 0xbb, 0, 0, 7, 1, 0xcc, 0, 0, 0];
        let items: Vec<_> = ExtensionIter::new(0x1000, &block).collect();
        assert_eq!(items, vec![(5, &[0xaa, 0xbb][..]), (7, &[0xcc][..])]);
        // A garbage block never reads past its end.
        let items: Vec<_> = ExtensionIter::new(0xBEDE, &[0x3f, 1, 2]).collect();
        assert!(items.is_empty());
    }
}
