//! The state a batch of received datagrams will touch, asked for before any is handled.
//!
//! At hundreds of participants a forwarded packet finds most of its state out of cache —
//! its publisher, route, track, layer, stream, and each subscriber's keys, subscription and
//! send history — and, handled one packet at a time, waits for each of those lines in turn.
//! Asked for stage by stage over the whole batch, each stage's loads find the lines the stage
//! before asked for, so the batch's misses overlap instead of following one another. Nothing
//! here changes state; the prefetch itself is the I/O layer's (the core has no `unsafe`).

use super::*;
use crate::rtp_header::{PacketClass, classify};
use crate::ssrc_routes::SsrcRoute;
use std::net::SocketAddr;

/// Datagrams of one batch looked ahead at, at most (a receive's batch is smaller).
const MAX_AHEAD: usize = 64;

/// Subscribers of one packet looked ahead for, at most: a visit's packet has one or two;
/// past a few, as at a broadcast's hundred, the lines would crowd each other out of the first-
/// level cache before they are used (and the egress loop's iterations overlap on their own).
const SUBSCRIBERS_AHEAD: usize = 4;

/// The cache line holding `value`, named to `prefetch_line`.
fn ask<T>(prefetch_line: &impl Fn(*const u8), value: &T) {
    prefetch_line(std::ptr::from_ref(value).cast());
}

impl Sfu {
    /// Names to `prefetch_line` the cache lines [`Sfu::handle_datagram`] will read for each RTP
    /// datagram in `datagrams` from a known publisher on a known route; other datagrams are
    /// passed over (RTCP is about a tenth of what a busy worker receives, STUN and DTLS far
    /// less, and the rest is dropped anyway). Call it with a received batch before handing
    /// its datagrams in; it changes nothing.
    pub fn prefetch_batch<'a>(
        &self,
        datagrams: impl IntoIterator<Item = (SocketAddr, &'a [u8])>,
        prefetch_line: impl Fn(*const u8),
    ) {
        let line = &prefetch_line;
        let mut publishers: [Option<(ParticipantIdx, u32)>; MAX_AHEAD] = [None; MAX_AHEAD];
        let mut n = 0;
        // 1. The publisher, by address (the table is small and stays warm).
        for (from, buf) in datagrams.into_iter().take(MAX_AHEAD) {
            if buf.len() < 12 || classify(buf) != PacketClass::Rtp {
                continue;
            }
            let Some(&idx) = self.by_addr.get(&from) else {
                continue;
            };
            let Some(p) = self.participants[idx].as_ref() else {
                continue;
            };
            ask(line, &p.ssrc_routes);
            ask(line, &p.inbound);
            ask(line, &p.twcc);
            ask(line, &p.ext);
            ask(line, &p.permissions);
            publishers[n] = Some((idx, u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]])));
            n += 1;
        }
        let publishers = &publishers[..n];
        // 2. Its route table, its keys and where its next arrival is recorded.
        for &(idx, _) in publishers.iter().flatten() {
            if let Some(p) = self.participants[idx].as_ref() {
                p.ssrc_routes.prefetch(line);
                if let Some(ctx) = p.inbound.as_deref() {
                    ask(line, ctx);
                }
                p.twcc.prefetch_next(line);
            }
        }
        // 3. The route: the track.
        let mut routes: [Option<SsrcRoute>; MAX_AHEAD] = [None; MAX_AHEAD];
        for (route, publisher) in routes.iter_mut().zip(publishers) {
            *route = publisher.and_then(|(idx, ssrc)| {
                self.participants[idx]
                    .as_ref()
                    .and_then(|p| p.ssrc_routes.get(ssrc))
            });
            if let Some(r) = route {
                ask(line, &self.tracks[r.track]);
            }
        }
        let routes = &routes[..n];
        // 4. The track's layer, and its list of subscribers.
        for r in routes.iter().flatten() {
            let Some(track) = self.tracks[r.track].as_ref() else {
                continue;
            };
            if let Some(layer) = track.layers.get(r.layer) {
                ask(line, layer);
                ask(line, &layer.inbound);
                ask(line, &layer.cache);
                ask(line, &layer.bitrate);
            }
            if let Some(first) = track.subscribers.first() {
                ask(line, first);
            }
        }
        // 5. The layer's stream record; each subscriber.
        for r in routes.iter().flatten() {
            let Some(track) = self.tracks[r.track].as_ref() else {
                continue;
            };
            if let Some(stream) = track.layers.get(r.layer).and_then(|l| l.inbound.as_ref()) {
                stream.prefetch(line);
            }
            for &(s, _) in track.subscribers.iter().take(SUBSCRIBERS_AHEAD) {
                if let Some(sub) = self.participants[s].as_ref() {
                    ask(line, &sub.permissions);
                    ask(line, &sub.downlink.pacer);
                    ask(line, &sub.outbound);
                    ask(line, &sub.subscriptions);
                    ask(line, &sub.twcc_out_seq);
                    ask(line, &sub.downlink.history);
                }
            }
        }
        // 6. Each subscriber's keys, subscription and where its next send is recorded.
        for r in routes.iter().flatten() {
            let Some(track) = self.tracks[r.track].as_ref() else {
                continue;
            };
            for &(s, sub_idx) in track.subscribers.iter().take(SUBSCRIBERS_AHEAD) {
                if let Some(sub) = self.participants[s].as_ref() {
                    if let Some(ctx) = sub.outbound.as_deref() {
                        ask(line, ctx);
                    }
                    if let Some(subscription) = sub.subscriptions.get(sub_idx) {
                        ask(line, subscription);
                    }
                    sub.downlink.history.prefetch_next(line);
                }
            }
        }
    }
}
