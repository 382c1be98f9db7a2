//! RFC 4571 framing for ICE-TCP (RFC 6544): packets on a TCP stream, each behind a 16-bit
//! length. Sans-IO: a reader that turns received bytes into whole packets, and a bounded queue
//! of framed packets waiting for a slow socket — media is dropped first, control never until
//! a hard cap that means the reader is gone.

use std::io::{self, Write};

/// RFC 4571: a 16-bit length before every packet.
pub const FRAME_HEADER: usize = 2;
pub const MAX_FRAME: usize = u16::MAX as usize;
/// Queued output past which media packets (RTP, RTCP) are dropped for this connection.
pub const MEDIA_QUEUE_LIMIT: usize = 256 * 1024;
/// Queued output past which the connection is closed (control cannot be delivered either).
pub const HARD_QUEUE_LIMIT: usize = 1024 * 1024;

/// A queue's buffer kept when it empties; a larger one (grown by a burst) is let go.
const SHRINK_ABOVE: usize = 64 * 1024;

/// A reader's buffer at first: media frames fit; it grows to a whole largest frame only for a
/// peer that sends one, so thousands of idle connections hold kilobytes each, not 64 KiB.
const FIRST_BUFFER: usize = 4096;

/// Decodes RFC 4571 frames from a byte stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("zero-length RFC 4571 frame")]
pub struct BadFrame;

impl FrameReader {
    /// The free part of the buffer to read into (never empty); call [`Self::filled`] with the
    /// count read.
    pub fn spare(&mut self) -> &mut [u8] {
        // Full (and drained: no whole frame in it), so a frame longer than the buffer is
        // coming. At its largest the buffer holds any frame, so it is never full then.
        if self.len == self.buf.len() {
            let grown = (self.buf.len() * 2).clamp(FIRST_BUFFER, FRAME_HEADER + MAX_FRAME);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.len..]
    }

    pub fn filled(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
    }

    /// Hands every complete frame to `on_frame` and keeps the incomplete rest.
    pub fn drain(&mut self, mut on_frame: impl FnMut(&mut [u8])) -> Result<(), BadFrame> {
        let mut pos = 0;
        let result = loop {
            if self.len - pos < FRAME_HEADER {
                break Ok(());
            }
            let n = u16::from_be_bytes([self.buf[pos], self.buf[pos + 1]]) as usize;
            if n == 0 {
                break Err(BadFrame);
            }
            if self.len - pos < FRAME_HEADER + n {
                break Ok(());
            }
            on_frame(&mut self.buf[pos + FRAME_HEADER..pos + FRAME_HEADER + n]);
            pos += FRAME_HEADER + n;
        };
        self.buf.copy_within(pos..self.len, 0);
        self.len -= pos;
        // Grown for one large frame and empty again: back to the first size, so a peer that
        // sent one does not hold 64 KiB for the life of its connection.
        if self.len == 0 && self.buf.len() > FIRST_BUFFER {
            self.buf = Vec::new();
        }
        result
    }

    /// Whether the buffer has grown past its first size (a frame longer than that is being
    /// read).
    pub fn grown(&self) -> bool {
        self.buf.len() > FIRST_BUFFER
    }
}

/// Frames queued for one connection, bounded.
#[derive(Debug, Default)]
pub struct FrameQueue {
    bytes: Vec<u8>,
    sent: usize,
    /// Where the first frame not yet begun on the wire starts (at or after `sent`): frames
    /// from there on may still be taken back whole.
    unsent: usize,
}

/// Whether a packet may be dropped under pressure: RTP and RTCP (first byte 128–191, RFC 7983)
/// may, STUN and DTLS may not.
fn is_media(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| (128..=191).contains(b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// Media dropped: the queue is past [`MEDIA_QUEUE_LIMIT`].
    MediaDropped,
    /// Past [`HARD_QUEUE_LIMIT`]: the connection must close.
    Overflow,
}

impl FrameQueue {
    pub fn len(&self) -> usize {
        self.bytes.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, packet: &[u8]) -> Queued {
        if packet.is_empty() || packet.len() > MAX_FRAME {
            return Queued::MediaDropped;
        }
        let queued = self.len();
        if is_media(packet) && queued + packet.len() > MEDIA_QUEUE_LIMIT {
            return Queued::MediaDropped;
        }
        if queued + packet.len() > HARD_QUEUE_LIMIT {
            return Queued::Overflow;
        }
        if self.sent > 0 && self.sent >= self.bytes.len() / 2 {
            self.bytes.drain(..self.sent);
            self.unsent -= self.sent;
            self.sent = 0;
        }
        self.bytes
            .extend_from_slice(&(packet.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(packet);
        Queued::Yes
    }

    /// Takes back the media (RTP, RTCP) not yet begun on the wire — its receiver may no longer
    /// have it (sent back to the waiting room) —, keeping the rest in order. Returns how many
    /// packets were dropped.
    pub fn drop_media(&mut self) -> usize {
        let mut kept = Vec::new();
        let mut dropped = 0;
        let mut at = self.unsent;
        while at + FRAME_HEADER <= self.bytes.len() {
            let n = usize::from(u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]));
            let frame = &self.bytes[at..(at + FRAME_HEADER + n).min(self.bytes.len())];
            if is_media(&frame[FRAME_HEADER..]) {
                dropped += 1;
            } else {
                kept.extend_from_slice(frame);
            }
            at += FRAME_HEADER + n;
        }
        self.bytes.truncate(self.unsent);
        self.bytes.extend_from_slice(&kept);
        dropped
    }

    /// Writes what it can; returns the bytes written (0 when the socket would block).
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while self.sent < self.bytes.len() {
            match w.write(&self.bytes[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // The frames begun on the wire (a frame is its 2-byte length, then the packet).
        while self.unsent < self.sent {
            let n = u16::from_be_bytes([self.bytes[self.unsent], self.bytes[self.unsent + 1]]);
            self.unsent += FRAME_HEADER + usize::from(n);
        }
        if self.sent == self.bytes.len() {
            // Emptied: what a burst grew goes back (thousands of idle connections must not each
            // keep the most they ever queued).
            if self.bytes.capacity() > SHRINK_ABOVE {
                self.bytes = Vec::new();
            } else {
                self.bytes.clear();
            }
            self.sent = 0;
            self.unsent = 0;
        }
        Ok(total)
    }

    /// Bytes held for this connection (what is queued, and room a burst grew).
    pub fn held(&self) -> usize {
        self.bytes.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Media not yet begun on the wire is taken back; the frame being written, and STUN and
    /// DTLS, stay, in order.
    #[test]
    fn queued_media_is_taken_back_but_a_frame_half_written_and_control_stay() {
        let mut q = FrameQueue::default();
        let (rtp, dtls, stun) = ([0x90u8; 100], [22u8; 50], [0u8; 20]);
        for p in [&rtp[..], &dtls, &rtp, &stun, &rtp] {
            assert_eq!(q.push(p), Queued::Yes);
        }
        // 40 bytes of the first frame are on the wire.
        let mut wire = Vec::new();
        let mut partial = Partial(&mut wire, 40);
        q.write_to(&mut partial).unwrap();
        assert_eq!(q.drop_media(), 2);
        q.write_to(&mut wire).unwrap();
        assert_eq!(wire, framed(&[&rtp, &dtls, &stun]));
        assert!(q.is_empty());
        // Nothing queued: nothing to take back, and the queue still works.
        assert_eq!(q.drop_media(), 0);
        assert_eq!(q.push(&rtp), Queued::Yes);
    }

    /// A writer that takes `n` more bytes, then would block.
    struct Partial<'a>(&'a mut Vec<u8>, usize);

    impl Write for Partial<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.1 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.1);
            self.0.extend_from_slice(&buf[..n]);
            self.1 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn framed(packets: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in packets {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let stream = framed(&[&[1, 2, 3], &[0x80; 300], &[9]]);
        for cut in 0..stream.len() {
            let mut r = FrameReader::default();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                r.spare()[..part.len()].copy_from_slice(part);
                r.filled(part.len());
                r.drain(|f| got.push(f.to_vec())).unwrap();
            }
            assert_eq!(
                got,
                vec![vec![1, 2, 3], vec![0x80; 300], vec![9]],
                "cut at {cut}"
            );
        }
    }

    /// A reader holds a few kilobytes until a frame needs more; the largest frame, read in
    /// pieces of whatever the buffer offers, still comes out whole.
    #[test]
    fn the_buffer_grows_only_for_a_frame_that_needs_it() {
        let mut r = FrameReader::default();
        assert_eq!(r.spare().len(), FIRST_BUFFER);
        let stream = framed(&[&[0x80; 1200], &[7; MAX_FRAME], &[9]]);
        let mut got: Vec<usize> = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let spare = r.spare();
            let n = spare.len().min(1000).min(stream.len() - at);
            spare[..n].copy_from_slice(&stream[at..at + n]);
            r.filled(n);
            at += n;
            r.drain(|f| got.push(f.len())).unwrap();
        }
        assert_eq!(got, vec![1200, MAX_FRAME, 1]);
        assert!(r.buf.len() <= FRAME_HEADER + MAX_FRAME);
        // Drained, it holds no more than a new one would.
        assert!(!r.grown() && r.buf.capacity() <= FIRST_BUFFER);
    }

    /// A burst that grew a queue to a megabyte: once written, the queue lets the room go.
    #[test]
    fn an_emptied_queue_lets_go_of_what_a_burst_grew() {
        let mut q = FrameQueue::default();
        while q.push(&[0x16; 1200]) == Queued::Yes {}
        assert!(q.held() > HARD_QUEUE_LIMIT / 2, "{}", q.held());
        let mut wire = Vec::new();
        q.write_to(&mut Partial(&mut wire, usize::MAX)).unwrap();
        assert!(q.is_empty());
        assert!(q.held() <= SHRINK_ABOVE, "{}", q.held());
    }

    #[test]
    fn a_zero_length_frame_is_refused() {
        let mut r = FrameReader::default();
        let s = [0u8, 0, 0, 1, 7];
        r.spare()[..5].copy_from_slice(&s);
        r.filled(5);
        assert_eq!(r.drain(|_| {}), Err(BadFrame));
    }

    #[test]
    fn a_full_queue_drops_media_first_and_overflows_only_on_control() {
        let mut q = FrameQueue::default();
        let media = [0x90u8; 1200];
        let dtls = [22u8; 1200];
        let mut dropped = 0;
        for _ in 0..1000 {
            match q.push(&media) {
                Queued::Yes => {}
                Queued::MediaDropped => dropped += 1,
                Queued::Overflow => panic!("media never overflows"),
            }
        }
        assert!(q.len() <= MEDIA_QUEUE_LIMIT + 2 * 1202, "{}", q.len());
        assert!(dropped > 700, "{dropped}");
        // Control still goes in above the media limit, until the hard cap.
        assert_eq!(q.push(&dtls), Queued::Yes);
        let mut overflowed = false;
        for _ in 0..1000 {
            if q.push(&dtls) == Queued::Overflow {
                overflowed = true;
                break;
            }
        }
        assert!(overflowed);
        assert!(q.len() <= HARD_QUEUE_LIMIT);
    }
}
