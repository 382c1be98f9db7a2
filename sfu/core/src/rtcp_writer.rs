//! Builds the RTCP packets the SFU originates (RFC 3550, RFC 4585, RFC 5104) into a buffer.
//! Fixed layouts, written directly: these go out on timers and per NACK, and the buffer is the
//! worker's own.

/// The SSRC the SFU uses as RTCP sender toward publishers.
pub const SFU_RTCP_SSRC: u32 = 1;

fn header(buf: &mut [u8], fmt_or_count: u8, pt: u8, words_minus_one: u16) {
    buf[0] = 0x80 | (fmt_or_count & 0x1f);
    buf[1] = pt;
    buf[2..4].copy_from_slice(&words_minus_one.to_be_bytes());
}

/// Picture Loss Indication (RFC 4585 §6.3.1). 12 bytes.
pub fn pli(buf: &mut [u8], media_ssrc: u32) -> usize {
    header(buf, 1, 206, 2);
    buf[4..8].copy_from_slice(&SFU_RTCP_SSRC.to_be_bytes());
    buf[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    12
}

/// Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb-03): what a receiver
/// estimates its downlink carries, for `ssrcs`. 20 + 4 per SSRC bytes (at most 8 SSRCs here).
pub fn remb(buf: &mut [u8], sender_ssrc: u32, bitrate_bps: u64, ssrcs: &[u32]) -> usize {
    let ssrcs = &ssrcs[..ssrcs.len().min(8)];
    // An 18-bit mantissa and a 6-bit exponent.
    let mut exp = 0u32;
    let mut mantissa = bitrate_bps;
    while mantissa >= 1 << 18 {
        mantissa >>= 1;
        exp += 1;
    }
    let len = 20 + 4 * ssrcs.len();
    header(buf, 15, 206, (len / 4 - 1) as u16);
    buf[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    buf[8..12].copy_from_slice(&0u32.to_be_bytes());
    buf[12..16].copy_from_slice(b"REMB");
    let word = (ssrcs.len() as u32) << 24 | (exp.min(63)) << 18 | mantissa as u32;
    buf[16..20].copy_from_slice(&word.to_be_bytes());
    for (i, s) in ssrcs.iter().enumerate() {
        buf[20 + 4 * i..24 + 4 * i].copy_from_slice(&s.to_be_bytes());
    }
    len
}

/// Generic NACK (RFC 4585 §6.2.1) for the given sequence numbers, packed into PID+BLP pairs.
/// Returns 0 when `seqs` is empty or the buffer is too small.
pub fn nack(buf: &mut [u8], media_ssrc: u32, seqs: &[u16]) -> usize {
    if seqs.is_empty() {
        return 0;
    }
    let mut pos = 12;
    let mut i = 0;
    while i < seqs.len() {
        if pos + 4 > buf.len() {
            return 0;
        }
        let pid = seqs[i];
        let mut blp: u16 = 0;
        i += 1;
        while i < seqs.len() {
            let d = seqs[i].wrapping_sub(pid);
            if d == 0 || d > 16 {
                break;
            }
            blp |= 1 << (d - 1);
            i += 1;
        }
        buf[pos..pos + 2].copy_from_slice(&pid.to_be_bytes());
        buf[pos + 2..pos + 4].copy_from_slice(&blp.to_be_bytes());
        pos += 4;
    }
    header(buf, 1, 205, (pos / 4 - 1) as u16);
    buf[4..8].copy_from_slice(&SFU_RTCP_SSRC.to_be_bytes());
    buf[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    pos
}

/// One report block of a receiver report.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    pub total_lost: u32,
    pub highest_ext_seq: u32,
    pub jitter: u32,
    pub last_sr: u32,
    pub delay_since_last_sr: u32,
}

/// Receiver report (RFC 3550 §6.4.2) with one block. 32 bytes.
pub fn receiver_report(buf: &mut [u8], block: &ReportBlock) -> usize {
    header(buf, 1, 201, 7);
    buf[4..8].copy_from_slice(&SFU_RTCP_SSRC.to_be_bytes());
    let b = &mut buf[8..32];
    b[0..4].copy_from_slice(&block.ssrc.to_be_bytes());
    let lost = block.total_lost.min(0x7f_ffff);
    b[4] = block.fraction_lost;
    b[5..8].copy_from_slice(&lost.to_be_bytes()[1..4]);
    b[8..12].copy_from_slice(&block.highest_ext_seq.to_be_bytes());
    b[12..16].copy_from_slice(&block.jitter.to_be_bytes());
    b[16..20].copy_from_slice(&block.last_sr.to_be_bytes());
    b[20..24].copy_from_slice(&block.delay_since_last_sr.to_be_bytes());
    32
}

/// Sender report (RFC 3550 §6.4.1) without report blocks. 28 bytes.
pub fn sender_report(
    buf: &mut [u8],
    ssrc: u32,
    ntp: u64,
    rtp_timestamp: u32,
    packets: u32,
    octets: u32,
) -> usize {
    header(buf, 0, 200, 6);
    buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
    buf[8..16].copy_from_slice(&ntp.to_be_bytes());
    buf[16..20].copy_from_slice(&rtp_timestamp.to_be_bytes());
    buf[20..24].copy_from_slice(&packets.to_be_bytes());
    buf[24..28].copy_from_slice(&octets.to_be_bytes());
    28
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_rtcp::packet::unmarshal;

    #[test]
    fn a_remb_parses_with_rtc_rtcp_and_keeps_its_bitrate() {
        use rtc_rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
        let mut buf = [0u8; 64];
        for bps in [30_000u64, 262_143, 400_000, 2_500_000, 1 << 40] {
            let n = remb(&mut buf, 7, bps, &[11, 12]);
            assert_eq!(n, 28);
            let mut slice = &buf[..n];
            let pkts = unmarshal(&mut slice).unwrap();
            let r = pkts[0]
                .as_any()
                .downcast_ref::<ReceiverEstimatedMaximumBitrate>()
                .expect("a REMB");
            assert_eq!(r.ssrcs, vec![11, 12]);
            // The 18-bit mantissa keeps it within a part in 2^17.
            let got = r.bitrate as f64;
            assert!(
                (got - bps as f64).abs() <= bps as f64 / 131_072.0 + 1.0,
                "{bps} → {got}"
            );
        }
    }

    #[test]
    fn written_packets_parse_with_rtc_rtcp() {
        let mut buf = [0u8; 256];
        let n = nack(&mut buf, 42, &[100, 101, 116, 117, 300]);
        let mut slice = &buf[..n];
        let pkts = unmarshal(&mut slice).unwrap();
        let nack = pkts[0]
            .as_any()
            .downcast_ref::<rtc_rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
            .unwrap();
        let seqs: Vec<u16> = nack.nacks.iter().flat_map(|p| p.packet_list()).collect();
        assert_eq!(seqs, vec![100, 101, 116, 117, 300]);
        assert_eq!(nack.media_ssrc, 42);

        let n = pli(&mut buf, 7);
        let mut slice = &buf[..n];
        let pkts = unmarshal(&mut slice).unwrap();
        assert_eq!(pkts[0].destination_ssrc(), vec![7]);

        let n = receiver_report(
            &mut buf,
            &ReportBlock {
                ssrc: 9,
                fraction_lost: 12,
                total_lost: 3,
                highest_ext_seq: 70000,
                jitter: 5,
                last_sr: 1,
                delay_since_last_sr: 2,
            },
        );
        let mut slice = &buf[..n];
        let pkts = unmarshal(&mut slice).unwrap();
        let rr = pkts[0]
            .as_any()
            .downcast_ref::<rtc_rtcp::receiver_report::ReceiverReport>()
            .unwrap();
        assert_eq!(rr.reports[0].total_lost, 3);
        assert_eq!(rr.reports[0].last_sequence_number, 70000);

        let n = sender_report(&mut buf, 5, 0x1122_3344_5566_7788, 900, 10, 1000);
        let mut slice = &buf[..n];
        let pkts = unmarshal(&mut slice).unwrap();
        let sr = pkts[0]
            .as_any()
            .downcast_ref::<rtc_rtcp::sender_report::SenderReport>()
            .unwrap();
        assert_eq!((sr.ssrc, sr.rtp_time, sr.packet_count), (5, 900, 10));
    }
}
