//! What of a participant's SCTP reaches the association. `rtc-sctp` makes a stream for any
//! stream id a DATA chunk names, up to 65,536, and then walks every stream for each chunk it
//! takes in (its receive window's credit): a peer naming thousands of ids, which needs no
//! permission (a patient in the waiting room has a DTLS session), would stall the worker that
//! carries its room and every other room there. So chunks naming a stream past the few a
//! session's channels need are refused before the association sees them, as are packets whose
//! chunks do not parse, and packets past a session's budget.

/// Stream ids a session may use: its channels (at most 16 open at once, browsers taking the
/// lowest free id of their parity) fit with room to spare. Also what the SFU offers in its
/// INIT-ACK, so a peer knows.
pub const MAX_STREAMS: u16 = 64;

/// SCTP chunk types that name streams (RFC 9260, RFC 3758, RFC 8260).
const DATA: u8 = 0;
const I_DATA: u8 = 64;
const FORWARD_TSN: u8 = 192;
const I_FORWARD_TSN: u8 = 194;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SctpRefusal {
    /// Shorter than its common header, or a chunk whose length runs past the packet.
    Malformed,
    /// A chunk names a stream id of [`MAX_STREAMS`] or above.
    StreamOutOfRange,
}

/// Whether `packet` (one SCTP packet, as DTLS application data carries it) may reach the
/// association.
pub fn admit(packet: &[u8]) -> Result<(), SctpRefusal> {
    const COMMON_HEADER: usize = 12;
    let mut rest = packet.get(COMMON_HEADER..).ok_or(SctpRefusal::Malformed)?;
    while !rest.is_empty() {
        let header = rest.get(..4).ok_or(SctpRefusal::Malformed)?;
        let kind = header[0];
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let chunk = rest
            .get(..length)
            .filter(|_| length >= 4)
            .ok_or(SctpRefusal::Malformed)?;
        let check = |stream: Option<u16>| match stream {
            None => Err(SctpRefusal::Malformed),
            Some(id) if id >= MAX_STREAMS => Err(SctpRefusal::StreamOutOfRange),
            Some(_) => Ok(()),
        };
        // After the TSN (the new cumulative TSN for the FORWARD-TSNs).
        let entries = || chunk.get(8..).ok_or(SctpRefusal::Malformed);
        match kind {
            // DATA and I-DATA: the TSN, then the stream id.
            DATA | I_DATA => check(read_u16(chunk, 8))?,
            // FORWARD-TSN: (stream id, sequence) pairs.
            FORWARD_TSN => {
                for e in entries()?.chunks(4) {
                    check(read_u16(e, 0))?;
                }
            }
            // I-FORWARD-TSN: (stream id, flags, MID) entries.
            I_FORWARD_TSN => {
                for e in entries()?.chunks(8) {
                    check(read_u16(e, 0))?;
                }
            }
            _ => {}
        }
        // Chunks are padded to four bytes; the last one's padding may be left off.
        let padded = length.next_multiple_of(4).min(rest.len());
        rest = &rest[padded..];
    }
    Ok(())
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0x13, 0x88, 0x13, 0x88, 0, 0, 0, 1, 0, 0, 0, 0];
        for c in chunks {
            p.extend(c);
            p.resize(p.len().next_multiple_of(4), 0);
        }
        p
    }

    fn data(stream: u16, payload: &[u8]) -> Vec<u8> {
        let mut c = vec![DATA, 0x03, 0, 0];
        c.extend(7u32.to_be_bytes()); // TSN
        c.extend(stream.to_be_bytes());
        c.extend([0, 0]); // stream sequence
        c.extend(51u32.to_be_bytes()); // PPI: string
        c.extend(payload);
        let len = c.len() as u16;
        c[2..4].copy_from_slice(&len.to_be_bytes());
        c
    }

    fn forward_tsn(streams: &[u16]) -> Vec<u8> {
        let mut c = vec![FORWARD_TSN, 0, 0, 0];
        c.extend(9u32.to_be_bytes());
        for s in streams {
            c.extend(s.to_be_bytes());
            c.extend([0, 1]);
        }
        let len = c.len() as u16;
        c[2..4].copy_from_slice(&len.to_be_bytes());
        c
    }

    #[test]
    fn data_on_the_streams_channels_use_passes() {
        assert_eq!(admit(&packet(&[data(0, b"{}"), data(63, b"hi")])), Ok(()));
        // A SACK (type 3) and a chunk type the gate does not know pass untouched.
        let sack = vec![3, 0, 0, 16, 0, 0, 0, 7, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(admit(&packet(&[sack, vec![0xc1, 0, 0, 4]])), Ok(()));
        assert_eq!(admit(&packet(&[forward_tsn(&[1, 3])])), Ok(()));
    }

    #[test]
    fn a_stream_past_the_cap_refuses_the_whole_packet() {
        for chunks in [
            vec![data(64, b"x")],
            vec![data(0, b"ok"), data(65_535, b"x")],
            vec![forward_tsn(&[2, 4000])],
        ] {
            assert_eq!(admit(&packet(&chunks)), Err(SctpRefusal::StreamOutOfRange));
        }
        let mut idata = vec![I_DATA, 0x03, 0, 20];
        idata.extend(1u32.to_be_bytes());
        idata.extend(500u16.to_be_bytes());
        idata.extend([0; 10]);
        assert_eq!(admit(&packet(&[idata])), Err(SctpRefusal::StreamOutOfRange));
    }

    #[test]
    fn framing_that_does_not_parse_is_refused() {
        assert_eq!(admit(&[0; 11]), Err(SctpRefusal::Malformed));
        // A chunk longer than the packet, one shorter than its own header, and a DATA chunk
        // too short to hold its stream id.
        let mut long = packet(&[data(1, b"x")]);
        long[14..16].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(admit(&long), Err(SctpRefusal::Malformed));
        assert_eq!(
            admit(&packet(&[vec![3, 0, 0, 2]])),
            Err(SctpRefusal::Malformed)
        );
        assert_eq!(
            admit(&packet(&[vec![DATA, 0, 0, 8, 0, 0, 0, 1]])),
            Err(SctpRefusal::Malformed)
        );
        assert_eq!(
            admit(&packet(&[vec![FORWARD_TSN, 0, 0, 4]])),
            Err(SctpRefusal::Malformed)
        );
        // Every cut of a good packet is refused or passes; none panics.
        let good = packet(&[data(2, b"hello"), forward_tsn(&[1])]);
        for n in 0..good.len() {
            let _ = admit(&good[..n]);
        }
    }
}
