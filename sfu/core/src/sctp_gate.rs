//! What of a participant's SCTP reaches the association. `rtc-sctp` runs loops whose length
//! its peer picks: it makes a stream for any stream id a DATA chunk names (up to 65,536) and
//! then walks every stream for each chunk it takes in; it walks every TSN a FORWARD-TSN skips
//! (up to 2³¹) and every TSN a SACK's gap blocks span (65,536 a block); and it keeps every
//! stream-reset request it cannot finish at once, replaying them all — each with a response
//! packet — for each TSN that arrives. None of it needs a permission (a patient in the
//! waiting room has a DTLS session), and one packet could stall the worker that carries its
//! room and every other room there.
//!
//! So a packet is refused before the association sees it when a chunk does not parse, names a
//! stream past the few a session's channels need, skips TSNs further than a window past what
//! the association has acknowledged (the gate reads the SFU's own SACKs: the association's
//! real state, not a guess at it), acknowledges more TSNs by gap blocks than a window, or asks
//! a stream reset the association could not finish at once (its data not all acknowledged),
//! or past a pace. Every loop the association runs for one packet is then bounded.

use crate::token_bucket::TokenBucket;
use std::time::Instant;

/// Stream ids a session may use: its channels (at most 16 open at once, browsers taking the
/// lowest free id of their parity) fit with room to spare. Also what the SFU offers in its
/// INIT-ACK, so a peer knows.
pub const MAX_STREAMS: u16 = 64;
/// How far past the association's acknowledged TSN a FORWARD-TSN may move it: more chunks
/// than a session's small messages leave in flight, and the bound on the association's walk
/// over the TSNs skipped.
pub const TSN_WINDOW: u32 = 1024;
/// How far behind the acknowledged TSN a FORWARD-TSN or a reset's last TSN may lie: far more
/// than any retransmission trails, and far less than half the serial space — a value "behind"
/// by 2³¹ is, to the association, as far ahead (a DATA chunk in the same packet moves it on
/// by one), and would have it walk 2³¹ TSNs after all.
pub const TSN_BEHIND: u32 = 1 << 20;
/// TSNs one packet's SACKs may acknowledge by gap blocks (the association walks each).
pub const MAX_SACK_SPAN: u32 = 4096;
/// Streams one reset request may name, and how often a peer may ask resets (a browser asks
/// one as it closes a channel).
const MAX_RESET_STREAMS: usize = 16;
const RESETS_PER_SECOND: f64 = 1.0;
const RESETS_BURST: f64 = 16.0;

/// SCTP chunk types the gate reads (RFC 9260, RFC 3758, RFC 6525, RFC 8260).
const DATA: u8 = 0;
const INIT: u8 = 1;
const SACK: u8 = 3;
const I_DATA: u8 = 64;
const RE_CONFIG: u8 = 130;
const FORWARD_TSN: u8 = 192;
const I_FORWARD_TSN: u8 = 194;
/// RE-CONFIG parameters a peer may send: a request to reset its outgoing streams (closing a
/// channel), and the response to the SFU's own.
const OUTGOING_RESET_REQUEST: u16 = 13;
const RECONFIG_RESPONSE: u16 = 16;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SctpRefusal {
    /// Shorter than its common header, or a chunk whose length runs past the packet or whose
    /// fields do not fit it.
    Malformed,
    /// A chunk names a stream id of [`MAX_STREAMS`] or above.
    StreamOutOfRange,
    /// A FORWARD-TSN more than [`TSN_WINDOW`] past the TSN the association acknowledged, or
    /// before it acknowledged any.
    TsnOutOfWindow,
    /// SACK gap blocks spanning more than [`MAX_SACK_SPAN`] TSNs, or running backwards.
    SackTooWide,
    /// A RE-CONFIG the gate does not take: not an outgoing reset or a response, too many
    /// streams, data up to its last TSN not all acknowledged, or past the pace of resets.
    ResetRefused,
}

/// How far `tsn` lies past `from` in serial number arithmetic (RFC 1982); negative: behind.
fn ahead(tsn: u32, from: u32) -> i64 {
    i64::from(tsn.wrapping_sub(from) as i32)
}

/// Whether `tsn` lies within `-TSN_BEHIND..=most_ahead` of `from`.
fn near(tsn: u32, from: u32, most_ahead: u32) -> bool {
    (-i64::from(TSN_BEHIND)..=i64::from(most_ahead)).contains(&ahead(tsn, from))
}

/// The gate of one participant's SCTP.
#[derive(Debug)]
pub struct SctpGate {
    /// The cumulative TSN ack of the last SACK the SFU sent in this association: every TSN up
    /// to it has been taken in.
    acknowledged: Option<u32>,
    resets: TokenBucket,
}

impl Default for SctpGate {
    fn default() -> Self {
        Self::new()
    }
}

impl SctpGate {
    pub fn new() -> Self {
        Self {
            acknowledged: None,
            resets: TokenBucket::new(RESETS_PER_SECOND, RESETS_BURST),
        }
    }

    /// A packet the SFU's association sends: its SACKs say what it has taken in.
    pub fn sent(&mut self, packet: &[u8]) {
        for (kind, chunk) in chunks(packet).map_while(Result::ok) {
            if kind == SACK
                && let Some(ack) = read_u32(chunk, 4)
                && self.acknowledged.is_none_or(|a| ahead(ack, a) > 0)
            {
                self.acknowledged = Some(ack);
            }
        }
    }

    /// Whether `packet` (one SCTP packet, as DTLS application data carries it) may reach the
    /// association.
    pub fn admit(&mut self, now: Instant, packet: &[u8]) -> Result<(), SctpRefusal> {
        let check = |stream: Option<u16>| match stream {
            None => Err(SctpRefusal::Malformed),
            Some(id) if id >= MAX_STREAMS => Err(SctpRefusal::StreamOutOfRange),
            Some(_) => Ok(()),
        };
        let acknowledged = self.acknowledged;
        // What the association will have taken in by the packet's end: the acknowledged TSN,
        // and the DATA in this packet that continues it (senders put control chunks such as a
        // reset before their DATA; a reset the DATA after it completes is kept by the
        // association only until that DATA, a moment later).
        let mut through = acknowledged;
        if let Some(t) = through.as_mut() {
            for (kind, chunk) in chunks(packet).map_while(Result::ok) {
                if matches!(kind, DATA | I_DATA) && read_u32(chunk, 4) == Some(t.wrapping_add(1)) {
                    *t = t.wrapping_add(1);
                }
            }
        }
        let mut sack_span = 0u32;
        let mut resets = 0u32;
        let mut init = false;
        if packet.len() < COMMON_HEADER {
            return Err(SctpRefusal::Malformed);
        }
        for c in chunks(packet) {
            let (kind, chunk) = c?;
            // The new cumulative TSN (FORWARD-TSNs), after the header; then their entries.
            let entries = || chunk.get(8..).ok_or(SctpRefusal::Malformed);
            match kind {
                // A new association: its TSNs start afresh.
                INIT => init = true,
                // DATA and I-DATA: the TSN, then the stream id.
                DATA | I_DATA => check(read_u16(chunk, 8))?,
                // FORWARD-TSN: (stream id, sequence) pairs; I-FORWARD-TSN: (stream id, flags,
                // MID) entries.
                FORWARD_TSN | I_FORWARD_TSN => {
                    let size = if kind == FORWARD_TSN { 4 } else { 8 };
                    for e in entries()?.chunks(size) {
                        check(read_u16(e, 0))?;
                    }
                    let to = read_u32(chunk, 4).ok_or(SctpRefusal::Malformed)?;
                    if acknowledged.is_none_or(|a| !near(to, a, TSN_WINDOW)) {
                        return Err(SctpRefusal::TsnOutOfWindow);
                    }
                }
                // SACK: cumulative ack, window, the counts, then (start, end) gap blocks as
                // offsets from the cumulative ack, then duplicate TSNs.
                SACK => {
                    let gaps = usize::from(read_u16(chunk, 12).ok_or(SctpRefusal::Malformed)?);
                    let dups = usize::from(read_u16(chunk, 14).ok_or(SctpRefusal::Malformed)?);
                    if chunk.len() < 16 + 4 * (gaps + dups) {
                        return Err(SctpRefusal::Malformed);
                    }
                    for b in chunk[16..16 + 4 * gaps].chunks(4) {
                        let from = u16::from_be_bytes([b[0], b[1]]);
                        let to = u16::from_be_bytes([b[2], b[3]]);
                        if from > to {
                            return Err(SctpRefusal::SackTooWide);
                        }
                        sack_span += u32::from(to - from) + 1;
                    }
                    if sack_span > MAX_SACK_SPAN {
                        return Err(SctpRefusal::SackTooWide);
                    }
                }
                RE_CONFIG => {
                    let mut params = chunk.get(4..).ok_or(SctpRefusal::Malformed)?;
                    while !params.is_empty() {
                        let kind = read_u16(params, 0).ok_or(SctpRefusal::Malformed)?;
                        let length =
                            usize::from(read_u16(params, 2).ok_or(SctpRefusal::Malformed)?);
                        let param = params
                            .get(..length)
                            .filter(|_| length >= 4)
                            .ok_or(SctpRefusal::Malformed)?;
                        match kind {
                            RECONFIG_RESPONSE => {}
                            // Request and response sequence numbers, the sender's last TSN,
                            // then the streams.
                            OUTGOING_RESET_REQUEST => {
                                let last = read_u32(param, 12).ok_or(SctpRefusal::Malformed)?;
                                let streams = param.get(16..).ok_or(SctpRefusal::Malformed)?;
                                if streams.len() / 2 > MAX_RESET_STREAMS
                                    || through.is_none_or(|t| !near(last, t, 0))
                                {
                                    return Err(SctpRefusal::ResetRefused);
                                }
                                for s in streams.chunks(2) {
                                    check(read_u16(s, 0))?;
                                }
                                resets += 1;
                            }
                            _ => return Err(SctpRefusal::ResetRefused),
                        }
                        params = &params[length.next_multiple_of(4).min(params.len())..];
                    }
                }
                _ => {}
            }
        }
        if resets > 0 && !self.resets.take(now, f64::from(resets)) {
            return Err(SctpRefusal::ResetRefused);
        }
        if init {
            self.acknowledged = None;
        }
        Ok(())
    }
}

const COMMON_HEADER: usize = 12;

/// A packet's chunks (type, the chunk with its header); an `Err` where the framing breaks.
fn chunks(packet: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), SctpRefusal>> {
    let mut rest = packet.get(COMMON_HEADER..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let length = usize::from(read_u16(rest, 2).unwrap_or(0));
        let Some(chunk) = rest.get(..length).filter(|_| length >= 4) else {
            rest = &[];
            return Some(Err(SctpRefusal::Malformed));
        };
        // Chunks are padded to four bytes; the last one's padding may be left off.
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
        Some(Ok((chunk[0], chunk)))
    })
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the tests' starting points in time
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

    fn chunk(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut c = vec![kind, 0, 0, 0];
        c.extend(value);
        let len = c.len() as u16;
        c[2..4].copy_from_slice(&len.to_be_bytes());
        c
    }

    fn data(stream: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = 7u32.to_be_bytes().to_vec(); // TSN
        v.extend(stream.to_be_bytes());
        v.extend([0, 0]); // stream sequence
        v.extend(51u32.to_be_bytes()); // PPI: string
        v.extend(payload);
        let mut c = chunk(DATA, &v);
        c[1] = 0x03;
        c
    }

    fn forward_tsn(to: u32, streams: &[u16]) -> Vec<u8> {
        let mut v = to.to_be_bytes().to_vec();
        for s in streams {
            v.extend(s.to_be_bytes());
            v.extend([0, 1]);
        }
        chunk(FORWARD_TSN, &v)
    }

    fn sack(cumulative: u32, gaps: &[(u16, u16)]) -> Vec<u8> {
        let mut v = cumulative.to_be_bytes().to_vec();
        v.extend(65_536u32.to_be_bytes());
        v.extend((gaps.len() as u16).to_be_bytes());
        v.extend(0u16.to_be_bytes());
        for (a, b) in gaps {
            v.extend(a.to_be_bytes());
            v.extend(b.to_be_bytes());
        }
        chunk(SACK, &v)
    }

    fn reset(request: u32, last_tsn: u32, streams: &[u16]) -> Vec<u8> {
        let mut p = vec![0, OUTGOING_RESET_REQUEST as u8, 0, 0];
        p.extend(request.to_be_bytes());
        p.extend(0u32.to_be_bytes());
        p.extend(last_tsn.to_be_bytes());
        for s in streams {
            p.extend(s.to_be_bytes());
        }
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p.resize(p.len().next_multiple_of(4), 0);
        chunk(RE_CONFIG, &p)
    }

    /// A gate whose association has acknowledged every TSN up to `tsn`.
    fn acknowledged(tsn: u32) -> SctpGate {
        let mut g = SctpGate::new();
        g.sent(&packet(&[sack(tsn, &[])]));
        g
    }

    #[test]
    fn data_on_the_streams_channels_use_passes() {
        let mut g = acknowledged(8);
        let now = Instant::now();
        assert_eq!(
            g.admit(now, &packet(&[data(0, b"{}"), data(63, b"hi")])),
            Ok(())
        );
        // A SACK and a chunk type the gate does not know pass untouched.
        assert_eq!(
            g.admit(now, &packet(&[sack(7, &[(2, 3)]), vec![0xc1, 0, 0, 4]])),
            Ok(())
        );
        assert_eq!(g.admit(now, &packet(&[forward_tsn(9, &[1, 3])])), Ok(()));
    }

    #[test]
    fn a_stream_past_the_cap_refuses_the_whole_packet() {
        let mut g = acknowledged(8);
        let now = Instant::now();
        for chunks in [
            vec![data(64, b"x")],
            vec![data(0, b"ok"), data(65_535, b"x")],
            vec![forward_tsn(9, &[2, 4000])],
        ] {
            assert_eq!(
                g.admit(now, &packet(&chunks)),
                Err(SctpRefusal::StreamOutOfRange)
            );
        }
        let mut v = 1u32.to_be_bytes().to_vec();
        v.extend(500u16.to_be_bytes());
        v.extend([0; 10]);
        assert_eq!(
            g.admit(now, &packet(&[chunk(I_DATA, &v)])),
            Err(SctpRefusal::StreamOutOfRange)
        );
    }

    /// The association walks every TSN a FORWARD-TSN skips: a jump of 2³¹ from one packet
    /// would stall its worker for seconds.
    #[test]
    fn a_forward_tsn_skips_at_most_a_window_past_what_the_association_acknowledged() {
        let now = Instant::now();
        let mut g = SctpGate::new();
        assert_eq!(
            g.admit(now, &packet(&[forward_tsn(5, &[])])),
            Err(SctpRefusal::TsnOutOfWindow),
            "before the association acknowledged anything"
        );
        let base = u32::MAX - 10; // across the wrap
        let mut g = acknowledged(base);
        let far = base.wrapping_add(0x7fff_ffff);
        assert_eq!(
            g.admit(now, &packet(&[forward_tsn(far, &[])])),
            Err(SctpRefusal::TsnOutOfWindow)
        );
        assert_eq!(
            g.admit(
                now,
                &packet(&[forward_tsn(base.wrapping_add(TSN_WINDOW + 1), &[])])
            ),
            Err(SctpRefusal::TsnOutOfWindow)
        );
        // "Behind" by half the serial space is, to the association, as far ahead — with a
        // DATA chunk in the same packet moving its point on by one, it would walk 2³¹ TSNs.
        let mut next = data(1, b"x");
        next[4..8].copy_from_slice(&base.wrapping_add(1).to_be_bytes());
        for behind in [
            0x8000_0000u32,
            0x8000_0001,
            0xa000_0000,
            u32::MAX - TSN_BEHIND - 1,
        ] {
            assert_eq!(
                g.admit(
                    now,
                    &packet(&[next.clone(), forward_tsn(base.wrapping_add(behind), &[])])
                ),
                Err(SctpRefusal::TsnOutOfWindow),
                "{behind:#x} past"
            );
        }
        // A little behind (a late retransmission) is nothing to walk.
        assert_eq!(
            g.admit(now, &packet(&[forward_tsn(base.wrapping_sub(5), &[])])),
            Ok(())
        );
        // Many in one packet are held to the same window.
        let many: Vec<_> = (1..=150)
            .map(|i| forward_tsn(base.wrapping_add(i * 1000), &[]))
            .collect();
        assert_eq!(
            g.admit(now, &packet(&many)),
            Err(SctpRefusal::TsnOutOfWindow)
        );
        assert_eq!(
            g.admit(
                now,
                &packet(&[forward_tsn(base.wrapping_add(TSN_WINDOW), &[])])
            ),
            Ok(())
        );
        // Its next SACK moves the window; an older one does not move it back.
        g.sent(&packet(&[sack(base.wrapping_add(2000), &[])]));
        g.sent(&packet(&[sack(base, &[])]));
        assert_eq!(
            g.admit(now, &packet(&[forward_tsn(base.wrapping_add(3000), &[])])),
            Ok(())
        );
        // A new association (the peer's INIT) starts its TSNs afresh.
        let init = chunk(INIT, &[0; 16]);
        assert_eq!(g.admit(now, &packet(&[init])), Ok(()));
        assert_eq!(
            g.admit(now, &packet(&[forward_tsn(base.wrapping_add(2001), &[])])),
            Err(SctpRefusal::TsnOutOfWindow)
        );
    }

    /// The association walks every TSN a SACK's gap blocks span.
    #[test]
    fn sack_gap_blocks_span_at_most_a_window() {
        let mut g = SctpGate::new();
        let now = Instant::now();
        assert_eq!(g.admit(now, &packet(&[sack(9, &[(1, 4), (6, 6)])])), Ok(()));
        assert_eq!(
            g.admit(now, &packet(&[sack(9, &[(1, 65_535)])])),
            Err(SctpRefusal::SackTooWide)
        );
        let many = vec![(1u16, 100u16); 41];
        assert_eq!(
            g.admit(now, &packet(&[sack(9, &many)])),
            Err(SctpRefusal::SackTooWide),
            "41 blocks of 100"
        );
        assert_eq!(
            g.admit(now, &packet(&[sack(9, &[(5, 2)])])),
            Err(SctpRefusal::SackTooWide),
            "backwards"
        );
        // Counts that promise more than the chunk holds.
        let mut short = sack(9, &[(1, 2)]);
        short[13] = 9;
        assert_eq!(g.admit(now, &packet(&[short])), Err(SctpRefusal::Malformed));
    }

    /// A reset the association cannot finish at once is kept by it and replayed, with a
    /// response packet, for every TSN that arrives after.
    #[test]
    fn a_stream_reset_passes_only_once_its_data_is_acknowledged_and_at_a_pace() {
        let now = Instant::now();
        let mut g = SctpGate::new();
        assert_eq!(
            g.admit(now, &packet(&[reset(1, 5, &[1])])),
            Err(SctpRefusal::ResetRefused),
            "nothing acknowledged yet"
        );
        let mut g = acknowledged(100);
        assert_eq!(
            g.admit(now, &packet(&[reset(1, 101, &[1])])),
            Err(SctpRefusal::ResetRefused),
            "its last TSN not acknowledged"
        );
        // Its data in the same packet, before or after it, is taken in with it.
        let mut next = data(1, b"last");
        next[4..8].copy_from_slice(&101u32.to_be_bytes());
        assert_eq!(g.admit(now, &packet(&[reset(1, 101, &[1]), next])), Ok(()));
        assert_eq!(
            g.admit(
                now,
                &packet(&[reset(2, 100u32.wrapping_add(0x8000_0000), &[1])])
            ),
            Err(SctpRefusal::ResetRefused),
            "half the serial space behind: to the association, ahead"
        );
        assert_eq!(
            g.admit(now, &packet(&[reset(1, 100, &(0..17).collect::<Vec<_>>())])),
            Err(SctpRefusal::ResetRefused),
            "17 streams"
        );
        assert_eq!(
            g.admit(now, &packet(&[reset(1, 100, &[1, 70])])),
            Err(SctpRefusal::StreamOutOfRange)
        );
        // Another parameter (an incoming reset request, 14) is not taken.
        let mut other = reset(1, 100, &[1]);
        other[5] = 14;
        assert_eq!(
            g.admit(now, &packet(&[other])),
            Err(SctpRefusal::ResetRefused)
        );
        // A burst of 16 (one went above), then one a second.
        for i in 0..15 {
            assert_eq!(
                g.admit(now, &packet(&[reset(i, 100, &[1])])),
                Ok(()),
                "reset {i}"
            );
        }
        assert_eq!(
            g.admit(now, &packet(&[reset(16, 100, &[1])])),
            Err(SctpRefusal::ResetRefused)
        );
        let later = now + std::time::Duration::from_millis(1100);
        assert_eq!(g.admit(later, &packet(&[reset(16, 100, &[1])])), Ok(()));
    }

    #[test]
    fn framing_that_does_not_parse_is_refused() {
        let mut g = acknowledged(8);
        let now = Instant::now();
        assert_eq!(g.admit(now, &[0; 11]), Err(SctpRefusal::Malformed));
        // A chunk longer than the packet, one shorter than its own header, and a DATA chunk
        // too short to hold its stream id.
        let mut long = packet(&[data(1, b"x")]);
        long[14..16].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(g.admit(now, &long), Err(SctpRefusal::Malformed));
        assert_eq!(
            g.admit(now, &packet(&[vec![3, 0, 0, 2]])),
            Err(SctpRefusal::Malformed)
        );
        assert_eq!(
            g.admit(now, &packet(&[vec![DATA, 0, 0, 8, 0, 0, 0, 1]])),
            Err(SctpRefusal::Malformed)
        );
        assert_eq!(
            g.admit(now, &packet(&[vec![FORWARD_TSN, 0, 0, 4]])),
            Err(SctpRefusal::Malformed)
        );
        // Every cut of a good packet is refused or passes; none panics.
        let good = packet(&[
            data(2, b"hello"),
            forward_tsn(9, &[1]),
            sack(8, &[(1, 2)]),
            reset(1, 8, &[2]),
        ]);
        for n in 0..good.len() {
            let _ = g.admit(now, &good[..n]);
            g.sent(&good[..n]);
        }
    }
}
