//! A subscription (consumer): one published track sent to one subscriber, with its own SSRC and
//! the sequence-number and timestamp offsets that keep the subscriber's stream continuous.

use sfu_proto::MediaKind;

/// What identifies a subscription's streams toward its subscriber.
#[derive(Debug, Clone, Copy)]
pub struct OutStreamIds {
    pub ssrc: u32,
    pub rtx_ssrc: u32,
    pub payload_type: u8,
    pub rtx_payload_type: Option<u8>,
}

#[derive(Debug)]
pub struct Subscription {
    pub track: usize,
    /// Fixed for the m-line's life, even after the track is gone (an m-line never changes kind).
    pub kind: MediaKind,
    pub mid: String,
    pub ssrc: u32,
    pub rtx_ssrc: u32,
    pub payload_type: u8,
    pub rtx_payload_type: Option<u8>,
    /// `out = in + seq_delta` on extended sequence numbers; fixed at the first forwarded packet.
    pub seq_delta: Option<i64>,
    pub ts_delta: u32,
    /// Where the stream starts (random, per RFC 3550 §5.1).
    pub first_ext_seq: u64,
    pub first_timestamp: u32,
    pub highest_out: u64,
    pub rtx_ext_seq: u64,
    pub packets: u32,
    pub octets: u32,
    /// False once the track went away or the subscriber lost permission; the m-line goes
    /// inactive at the next renegotiation.
    pub active: bool,
    /// Included in an SFU offer that is now outstanding.
    pub offered: bool,
    /// The subscriber answered an offer with this m-line: media may flow (before that, its
    /// browser could not map the SSRC to a transceiver).
    pub negotiated: bool,
}

impl Subscription {
    pub fn new(track: usize, kind: MediaKind, mid: String, ids: OutStreamIds, seed: u32) -> Self {
        Self {
            track,
            kind,
            mid,
            ssrc: ids.ssrc,
            rtx_ssrc: ids.rtx_ssrc,
            payload_type: ids.payload_type,
            rtx_payload_type: ids.rtx_payload_type,
            seq_delta: None,
            ts_delta: 0,
            // Rollover counter 0 at the start, as the receiver assumes (RFC 3711 §3.3.1).
            first_ext_seq: (seed & 0x7fff) as u64,
            first_timestamp: seed.rotate_left(13),
            highest_out: 0,
            rtx_ext_seq: (seed >> 17) as u64,
            packets: 0,
            octets: 0,
            active: true,
            offered: false,
            negotiated: false,
        }
    }

    /// Maps a publisher extended sequence number to this subscriber's, fixing the offsets on
    /// the first packet. Returns (out extended seq, out timestamp), or `None` for a packet from
    /// before the subscription began: it has no place in the subscriber's stream, and giving it
    /// one would reuse an SRTP nonce.
    pub fn map(&mut self, in_ext: u64, in_ts: u32) -> Option<(u64, u32)> {
        let delta = *self.seq_delta.get_or_insert_with(|| {
            self.ts_delta = self.first_timestamp.wrapping_sub(in_ts);
            self.first_ext_seq as i64 - in_ext as i64
        });
        let out = in_ext as i64 + delta;
        if out < self.first_ext_seq as i64 {
            return None;
        }
        let out = out as u64;
        if out > self.highest_out {
            self.highest_out = out;
        }
        Some((out, in_ts.wrapping_add(self.ts_delta)))
    }

    /// The publisher's extended sequence number for a subscriber's 16-bit one (from a NACK).
    pub fn unmap(&self, out_seq: u16) -> Option<u64> {
        let delta = self.seq_delta?;
        let d = out_seq.wrapping_sub(self.highest_out as u16) as i16 as i64;
        let out_ext = self.highest_out as i64 + d;
        if out_ext < self.first_ext_seq as i64 {
            // Before this subscriber's stream began.
            return None;
        }
        let in_ext = out_ext - delta;
        (in_ext >= 0).then_some(in_ext as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_continuous_and_reversible() {
        let ids = OutStreamIds {
            ssrc: 5,
            rtx_ssrc: 6,
            payload_type: 96,
            rtx_payload_type: Some(97),
        };
        let mut s = Subscription::new(0, MediaKind::Video, "1".into(), ids, 12345);
        let (a, ta) = s.map(70_000, 1000).unwrap();
        assert_eq!(a >> 16, 0, "subscribers start at rollover 0");
        let (b, tb) = s.map(70_001, 4000).unwrap();
        assert_eq!(b, a + 1);
        assert_eq!(tb.wrapping_sub(ta), 3000);
        assert_eq!(s.unmap(a as u16), Some(70_000));
        assert_eq!(s.unmap(b as u16), Some(70_001));
        // A packet from before the subscription began is not forwarded.
        assert_eq!(s.map(69_999, 0), None);
        // A late repair inside the stream maps into the gap it belongs to.
        let (d, _) = s.map(70_005, 0).unwrap();
        let (c, _) = s.map(70_003, 0).unwrap();
        assert_eq!(c + 2, d);
    }
}
