//! A subscriber's transport-wide congestion control feedback (RTPFB, FMT 15;
//! draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1), read in place: which of our
//! transport-wide sequence numbers arrived, and when, for the bandwidth estimator.
//!
//! Parsing never allocates: [`TransportFeedback::parse`] checks the whole message once (every
//! chunk and every delta are present, no reserved symbol), then [`TransportFeedback::packets`]
//! walks chunks and deltas side by side.

/// Receive deltas count in units of 250 µs; the reference time in units of 64 ms.
const DELTA_UNIT_US: i64 = 250;
const REFERENCE_UNIT_US: i64 = 64_000;
const HEADER_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error("shorter than its fixed part or its length field")]
    Truncated,
    #[error("not a transport-wide feedback message (RTPFB, FMT 15)")]
    NotTransportFeedback,
    #[error("a status chunk uses the reserved symbol")]
    ReservedSymbol,
    #[error("the chunks describe fewer packets than the status count")]
    MissingChunks,
    #[error("fewer receive deltas than received packets")]
    MissingDeltas,
}

/// One packet a feedback message describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketStatus {
    pub seq: u16,
    /// Arrival on the receiver's clock, in µs (its origin is the receiver's own); `None`: not
    /// received (yet).
    pub arrival_us: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
pub struct TransportFeedback<'a> {
    pub media_ssrc: u32,
    pub base_seq: u16,
    pub status_count: u16,
    /// The receiver's reference time, in µs.
    pub reference_us: i64,
    /// Counts feedback messages, so a lost one is noticed.
    pub feedback_count: u8,
    chunks: &'a [u8],
    deltas: &'a [u8],
}

/// Whether an RTCP packet (header included) is transport-wide feedback.
pub fn is_transport_feedback(packet: &[u8]) -> bool {
    packet.len() >= 2 && packet[1] == 205 && packet[0] & 0x1f == 15
}

/// Symbols of a chunk: (how many, their size in bits), or a run of one symbol.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    Run { symbol: u8, length: u16 },
    Vector { bits: u16, two_bit: bool },
}

impl Chunk {
    fn of(word: u16) -> Self {
        if word & 0x8000 == 0 {
            Chunk::Run {
                symbol: ((word >> 13) & 0x3) as u8,
                length: word & 0x1fff,
            }
        } else {
            Chunk::Vector {
                bits: word & 0x3fff,
                two_bit: word & 0x4000 != 0,
            }
        }
    }

    fn len(self) -> u16 {
        match self {
            Chunk::Run { length, .. } => length,
            Chunk::Vector { two_bit: true, .. } => 7,
            Chunk::Vector { two_bit: false, .. } => 14,
        }
    }

    /// The `i`th symbol (0 = not received, 1 = small delta, 2 = large delta, 3 = reserved).
    fn symbol(self, i: u16) -> u8 {
        match self {
            Chunk::Run { symbol, .. } => symbol,
            Chunk::Vector {
                bits,
                two_bit: true,
            } => ((bits >> (12 - 2 * i)) & 0x3) as u8,
            Chunk::Vector {
                bits,
                two_bit: false,
            } => ((bits >> (13 - i)) & 0x1) as u8,
        }
    }
}

fn delta_len(symbol: u8) -> usize {
    match symbol {
        1 => 1,
        2 => 2,
        _ => 0,
    }
}

impl<'a> TransportFeedback<'a> {
    /// Reads one RTCP packet (its header included; trailing padding allowed).
    pub fn parse(packet: &'a [u8]) -> Result<Self, FeedbackError> {
        if packet.len() < 4 {
            return Err(FeedbackError::Truncated);
        }
        if !is_transport_feedback(packet) {
            return Err(FeedbackError::NotTransportFeedback);
        }
        let len = (u16::from_be_bytes([packet[2], packet[3]]) as usize + 1) * 4;
        if packet.len() < len || len < HEADER_LEN {
            return Err(FeedbackError::Truncated);
        }
        let body = &packet[..len];
        let status_count = u16::from_be_bytes([body[14], body[15]]);
        // 24-bit signed reference time.
        let raw = i32::from_be_bytes([body[16], body[17], body[18], 0]) >> 8;
        let mut at = HEADER_LEN;
        let mut described = 0u32;
        let mut delta_bytes = 0usize;
        while described < status_count as u32 {
            let Some(word) = body.get(at..at + 2) else {
                return Err(FeedbackError::MissingChunks);
            };
            let chunk = Chunk::of(u16::from_be_bytes([word[0], word[1]]));
            at += 2;
            let n = (chunk.len() as u32).min(status_count as u32 - described) as u16;
            match chunk {
                Chunk::Run { symbol: 3, .. } => return Err(FeedbackError::ReservedSymbol),
                Chunk::Run { symbol, .. } => delta_bytes += delta_len(symbol) * n as usize,
                Chunk::Vector { .. } => {
                    for i in 0..n {
                        let symbol = chunk.symbol(i);
                        if symbol == 3 {
                            return Err(FeedbackError::ReservedSymbol);
                        }
                        delta_bytes += delta_len(symbol);
                    }
                }
            }
            described += n as u32;
        }
        if body.len() < at + delta_bytes {
            return Err(FeedbackError::MissingDeltas);
        }
        Ok(Self {
            media_ssrc: u32::from_be_bytes([body[8], body[9], body[10], body[11]]),
            base_seq: u16::from_be_bytes([body[12], body[13]]),
            status_count,
            reference_us: raw as i64 * REFERENCE_UNIT_US,
            feedback_count: body[19],
            chunks: &body[HEADER_LEN..at],
            deltas: &body[at..at + delta_bytes],
        })
    }

    /// Every packet described, in sequence order.
    pub fn packets(&self) -> Packets<'a> {
        Packets {
            chunks: self.chunks,
            deltas: self.deltas,
            chunk: None,
            in_chunk: 0,
            remaining: self.status_count,
            seq: self.base_seq,
            arrival_us: self.reference_us,
        }
    }
}

/// Walks a checked message's chunks and deltas together.
#[derive(Debug)]
pub struct Packets<'a> {
    chunks: &'a [u8],
    deltas: &'a [u8],
    chunk: Option<Chunk>,
    in_chunk: u16,
    remaining: u16,
    seq: u16,
    arrival_us: i64,
}

impl Iterator for Packets<'_> {
    type Item = PacketStatus;

    fn next(&mut self) -> Option<PacketStatus> {
        if self.remaining == 0 {
            return None;
        }
        let chunk = loop {
            match self.chunk {
                Some(c) if self.in_chunk < c.len() => break c,
                _ => {
                    // A run of length 0 describes nothing: the next chunk, as `parse` counted.
                    let (word, rest) = self.chunks.split_first_chunk::<2>()?;
                    self.chunks = rest;
                    self.chunk = Some(Chunk::of(u16::from_be_bytes(*word)));
                    self.in_chunk = 0;
                }
            }
        };
        let symbol = chunk.symbol(self.in_chunk);
        self.in_chunk += 1;
        self.remaining -= 1;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let delta = match symbol {
            1 => {
                let (d, rest) = self.deltas.split_first()?;
                self.deltas = rest;
                Some(*d as i64)
            }
            2 => {
                let (d, rest) = self.deltas.split_first_chunk::<2>()?;
                self.deltas = rest;
                Some(i16::from_be_bytes(*d) as i64)
            }
            _ => None,
        };
        let arrival_us = delta.map(|d| {
            self.arrival_us += d * DELTA_UNIT_US;
            self.arrival_us
        });
        Some(PacketStatus { seq, arrival_us })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twcc_feedback::TwccRecorder;
    use std::time::{Duration, Instant};

    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    #[test]
    fn reads_what_our_own_writer_writes() {
        // The publisher-side writer is an independent encoder of the same format.
        let t0 = origin();
        let mut rec = TwccRecorder::new(t0);
        let arrivals = [(10u16, 0u64), (11, 1), (13, 3), (14, 90), (16, 91)];
        for (seq, ms) in arrivals {
            rec.record(seq, t0 + Duration::from_millis(1000 + ms));
        }
        let mut buf = vec![0u8; 1500];
        let n = rec.write_feedback(&mut buf, 1, 0xabcd).expect("feedback");
        let fb = TransportFeedback::parse(&buf[..n]).expect("parses");
        assert_eq!(
            (fb.base_seq, fb.status_count, fb.media_ssrc),
            (10, 7, 0xabcd)
        );
        let got: Vec<_> = fb.packets().collect();
        assert_eq!(got.len(), 7);
        let received: Vec<u16> = got
            .iter()
            .filter(|p| p.arrival_us.is_some())
            .map(|p| p.seq)
            .collect();
        assert_eq!(received, vec![10, 11, 13, 14, 16]);
        let at = |s: u16| got.iter().find(|p| p.seq == s).unwrap().arrival_us.unwrap();
        // Relative arrival times are kept to the 250 µs unit.
        assert_eq!(at(11) - at(10), 1000);
        assert_eq!(at(14) - at(13), 87_000);
        assert_eq!(at(16) - at(14), 1000);
    }

    fn message(chunks: &[u16], deltas: &[u8], status_count: u16) -> Vec<u8> {
        let mut m = vec![0x8f, 205, 0, 0];
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&2u32.to_be_bytes());
        m.extend_from_slice(&65_530u16.to_be_bytes());
        m.extend_from_slice(&status_count.to_be_bytes());
        m.extend_from_slice(&[0xff, 0xff, 0xff, 7]); // reference time -1 (×64 ms)
        for c in chunks {
            m.extend_from_slice(&c.to_be_bytes());
        }
        m.extend_from_slice(deltas);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        let words = (m.len() / 4 - 1) as u16;
        m[2..4].copy_from_slice(&words.to_be_bytes());
        m
    }

    #[test]
    fn run_length_and_two_bit_vectors_with_large_and_negative_deltas() {
        // A run of 2 small deltas, then a two-bit vector: large, not received, small.
        let vector: u16 = 0xc000 | (2 << 12) | (1 << 8);
        let m = message(&[(1 << 13) | 2, vector], &[4, 8, 0xff, 0xfc, 12], 5);
        let fb = TransportFeedback::parse(&m).expect("parses");
        assert_eq!(fb.reference_us, -64_000);
        assert_eq!(fb.feedback_count, 7);
        let got: Vec<_> = fb.packets().collect();
        let base = -64_000;
        assert_eq!(
            got,
            vec![
                PacketStatus {
                    seq: 65_530,
                    arrival_us: Some(base + 1000)
                },
                PacketStatus {
                    seq: 65_531,
                    arrival_us: Some(base + 3000)
                },
                PacketStatus {
                    seq: 65_532,
                    arrival_us: Some(base + 2000)
                },
                PacketStatus {
                    seq: 65_533,
                    arrival_us: None
                },
                PacketStatus {
                    seq: 65_534,
                    arrival_us: Some(base + 5000)
                },
            ]
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let m = message(&[(1 << 13) | 8], &[1; 8], 8);
        let seqs: Vec<u16> = TransportFeedback::parse(&m)
            .unwrap()
            .packets()
            .map(|p| p.seq)
            .collect();
        assert_eq!(
            seqs,
            vec![65_530, 65_531, 65_532, 65_533, 65_534, 65_535, 0, 1]
        );
    }

    #[test]
    fn refuses_what_does_not_add_up() {
        // Deltas missing for received packets.
        let m = message(&[(1 << 13) | 4], &[1, 1], 4);
        assert_eq!(
            TransportFeedback::parse(&m).unwrap_err(),
            FeedbackError::MissingDeltas
        );
        // Chunks describing fewer packets than counted.
        let m = message(&[2], &[], 9);
        assert_eq!(
            TransportFeedback::parse(&m).unwrap_err(),
            FeedbackError::MissingChunks
        );
        // The reserved symbol, in a run and in a vector.
        let m = message(&[(3 << 13) | 2], &[], 2);
        assert_eq!(
            TransportFeedback::parse(&m).unwrap_err(),
            FeedbackError::ReservedSymbol
        );
        let m = message(&[0xc000 | (3 << 12)], &[], 1);
        assert_eq!(
            TransportFeedback::parse(&m).unwrap_err(),
            FeedbackError::ReservedSymbol
        );
        // Cut short, and another feedback type.
        let m = message(&[(1 << 13) | 2], &[1, 1], 2);
        assert_eq!(
            TransportFeedback::parse(&m[..m.len() - 4]).unwrap_err(),
            FeedbackError::Truncated
        );
        let mut nack = m.clone();
        nack[0] = 0x81;
        assert_eq!(
            TransportFeedback::parse(&nack).unwrap_err(),
            FeedbackError::NotTransportFeedback
        );
        // Runs of length 0 describe nothing (a received-symbol one takes no delta).
        let m = message(&[(1 << 13), 2, (1 << 13) | 1], &[3], 3);
        let got: Vec<_> = TransportFeedback::parse(&m).unwrap().packets().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].arrival_us, Some(-64_000 + 750));
        // A run longer than the status count is clipped, not read past.
        let m = message(&[(1 << 13) | 8000], &[1, 1, 1], 3);
        assert_eq!(TransportFeedback::parse(&m).unwrap().packets().count(), 3);
    }
}
