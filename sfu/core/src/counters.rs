//! Per-worker counters: plain integers on the hot path, exported periodically by the I/O layer.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    /// Datagrams from a 5-tuple or ICE ufrag we do not know: dropped before any crypto.
    pub dropped_unknown_source: u64,
    pub dropped_malformed: u64,
    pub dropped_not_ready: u64,
    pub dropped_unknown_ssrc: u64,
    pub dropped_replay: u64,
    pub dropped_auth: u64,
    /// Media from a participant without publish permission (the waiting room), and media
    /// still held in the pacer of one whose subscribe permission was taken away.
    pub dropped_blocked: u64,
    /// Audio past its track's rate (token_bucket.rs): not forwarded.
    pub dropped_over_rate: u64,
    pub seal_failures: u64,
    pub nacks_in: u64,
    pub nacks_out: u64,
    pub nacks_unrepairable: u64,
    /// Sequence numbers NACKs named past their subscriber's budget: not looked up.
    pub nacks_refused: u64,
    /// Sender reports of a publisher not passed on (another of the layer's went moments
    /// before; the next carries the latest).
    pub sender_reports_held: u64,
    pub retransmissions_out: u64,
    pub repairs_received: u64,
    pub duplicate_repairs: u64,
    /// Repairs (RTX) of a packet past the newest its stream received: no gap to fill.
    pub repairs_refused: u64,
    pub keyframe_requests_in: u64,
    pub keyframe_requests_out: u64,
    pub keyframe_requests_throttled: u64,
    /// Subscribers' pictures broken by a loss no repair could mend (its retransmissions used
    /// up): a keyframe asked for at once, not after the browser's own wait.
    pub keyframes_for_failed_repairs: u64,
    pub twcc_feedback_out: u64,
    pub data_messages_in: u64,
    pub data_messages_out: u64,
    pub data_messages_dropped: u64,
    /// SCTP packets the data channels never read: a stream past the few channels need,
    /// chunks that do not parse, or past the session's budget.
    pub sctp_packets_refused: u64,
    /// RTCP not read: datagrams over an IP packet's size or past the sender's budget, packets
    /// of a compound past its 16th, transport-wide feedback past the statuses' budget.
    pub rtcp_refused: u64,
    /// Subscriptions not made because the subscriber's session holds the most m-lines.
    pub subscriptions_refused: u64,
    /// Simulcast subscriptions that started or changed layer (always at a keyframe).
    pub layer_switches: u64,
    /// Simulcast subscriptions lowered because their subscriber's link lost packets.
    pub layer_loss_downgrades: u64,
    /// Stopped m-lines taken again for new subscriptions.
    pub lines_recycled: u64,
    /// Connectivity checks with a known ufrag that failed authentication (or were not checks).
    pub stun_refused: u64,
    /// ICE restarts in place (a client offer with new ICE credentials).
    pub ice_restarts: u64,
    /// Times a participant's browser nominated a different path (network change, restart).
    pub path_changes: u64,
    /// DTLS datagrams that arrived before the answer to the session's own check proved their
    /// address, kept (a few per session) and read once it did.
    pub dtls_held_until_proven: u64,
    /// SFU offers given up after going unanswered three times.
    pub offers_abandoned: u64,
    /// SFU offers their client declined (`reject_offer`).
    pub offers_declined: u64,
    pub transport_feedback_in: u64,
    pub probe_packets_out: u64,
    pub probe_clusters: u64,
    /// Simulcast subscriptions lowered because their subscriber's estimate could not carry
    /// the layer.
    pub layer_bandwidth_downgrades: u64,
    /// Steps up (and resumes) a subscriber's link met with loss within their trial, taken back
    /// at once (`step_trial.rs`).
    pub failed_steps: u64,
    /// Video subscriptions paused because their subscriber's estimate carried no layer.
    pub video_pauses: u64,
    /// Simulcast layers publishers were told to stop encoding (nobody needed them).
    pub layers_suspended: u64,
    /// Of those, layers publishers were told to encode again.
    pub layers_resumed: u64,
    /// Video subscriptions moved to fewer VP8 temporal layers (a lower frame rate) because
    /// their subscriber's estimate could not carry the whole layer.
    pub temporal_downgrades: u64,
    /// Packets not forwarded to a subscriber because their temporal layer was dropped for it.
    pub temporal_skips: u64,
    /// Video packets that waited in a subscriber's pacer (its estimate bound) before leaving.
    pub paced_packets: u64,
    /// Receiver estimates (REMB) taken from subscribers without transport-wide feedback.
    pub receiver_estimates_in: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        let Counters {
            packets_in,
            bytes_in,
            packets_out,
            bytes_out,
            rtcp_in,
            rtcp_out,
            dropped_unknown_source,
            dropped_malformed,
            dropped_not_ready,
            dropped_unknown_ssrc,
            dropped_replay,
            dropped_auth,
            dropped_blocked,
            dropped_over_rate,
            seal_failures,
            nacks_in,
            nacks_out,
            nacks_unrepairable,
            nacks_refused,
            sender_reports_held,
            retransmissions_out,
            repairs_received,
            duplicate_repairs,
            repairs_refused,
            keyframe_requests_in,
            keyframe_requests_out,
            keyframe_requests_throttled,
            keyframes_for_failed_repairs,
            twcc_feedback_out,
            data_messages_in,
            data_messages_out,
            data_messages_dropped,
            sctp_packets_refused,
            rtcp_refused,
            subscriptions_refused,
            layer_switches,
            layer_loss_downgrades,
            lines_recycled,
            stun_refused,
            ice_restarts,
            path_changes,
            dtls_held_until_proven,
            offers_abandoned,
            offers_declined,
            transport_feedback_in,
            probe_packets_out,
            probe_clusters,
            layer_bandwidth_downgrades,
            failed_steps,
            video_pauses,
            layers_suspended,
            layers_resumed,
            temporal_downgrades,
            temporal_skips,
            paced_packets,
            receiver_estimates_in,
        } = o;
        self.packets_in += packets_in;
        self.bytes_in += bytes_in;
        self.packets_out += packets_out;
        self.bytes_out += bytes_out;
        self.rtcp_in += rtcp_in;
        self.rtcp_out += rtcp_out;
        self.dropped_unknown_source += dropped_unknown_source;
        self.dropped_malformed += dropped_malformed;
        self.dropped_not_ready += dropped_not_ready;
        self.dropped_unknown_ssrc += dropped_unknown_ssrc;
        self.dropped_replay += dropped_replay;
        self.dropped_auth += dropped_auth;
        self.dropped_blocked += dropped_blocked;
        self.dropped_over_rate += dropped_over_rate;
        self.seal_failures += seal_failures;
        self.nacks_in += nacks_in;
        self.nacks_out += nacks_out;
        self.nacks_unrepairable += nacks_unrepairable;
        self.nacks_refused += nacks_refused;
        self.sender_reports_held += sender_reports_held;
        self.retransmissions_out += retransmissions_out;
        self.repairs_received += repairs_received;
        self.duplicate_repairs += duplicate_repairs;
        self.repairs_refused += repairs_refused;
        self.keyframe_requests_in += keyframe_requests_in;
        self.keyframe_requests_out += keyframe_requests_out;
        self.keyframe_requests_throttled += keyframe_requests_throttled;
        self.keyframes_for_failed_repairs += keyframes_for_failed_repairs;
        self.twcc_feedback_out += twcc_feedback_out;
        self.data_messages_in += data_messages_in;
        self.data_messages_out += data_messages_out;
        self.data_messages_dropped += data_messages_dropped;
        self.sctp_packets_refused += sctp_packets_refused;
        self.rtcp_refused += rtcp_refused;
        self.subscriptions_refused += subscriptions_refused;
        self.layer_switches += layer_switches;
        self.layer_loss_downgrades += layer_loss_downgrades;
        self.lines_recycled += lines_recycled;
        self.stun_refused += stun_refused;
        self.ice_restarts += ice_restarts;
        self.path_changes += path_changes;
        self.dtls_held_until_proven += dtls_held_until_proven;
        self.offers_abandoned += offers_abandoned;
        self.offers_declined += offers_declined;
        self.transport_feedback_in += transport_feedback_in;
        self.probe_packets_out += probe_packets_out;
        self.probe_clusters += probe_clusters;
        self.layer_bandwidth_downgrades += layer_bandwidth_downgrades;
        self.failed_steps += failed_steps;
        self.video_pauses += video_pauses;
        self.layers_suspended += layers_suspended;
        self.layers_resumed += layers_resumed;
        self.temporal_downgrades += temporal_downgrades;
        self.temporal_skips += temporal_skips;
        self.paced_packets += paced_packets;
        self.receiver_estimates_in += receiver_estimates_in;
    }
}

impl Counters {
    /// Every counter with its Prometheus name, for export.
    pub fn named(&self) -> [(&'static str, u64); 56] {
        [
            ("sfu_packets_in_total", self.packets_in),
            ("sfu_bytes_in_total", self.bytes_in),
            ("sfu_packets_out_total", self.packets_out),
            ("sfu_bytes_out_total", self.bytes_out),
            ("sfu_rtcp_in_total", self.rtcp_in),
            ("sfu_rtcp_out_total", self.rtcp_out),
            (
                "sfu_dropped_unknown_source_total",
                self.dropped_unknown_source,
            ),
            ("sfu_dropped_malformed_total", self.dropped_malformed),
            ("sfu_dropped_not_ready_total", self.dropped_not_ready),
            ("sfu_dropped_unknown_ssrc_total", self.dropped_unknown_ssrc),
            ("sfu_dropped_replay_total", self.dropped_replay),
            ("sfu_dropped_auth_total", self.dropped_auth),
            ("sfu_dropped_blocked_total", self.dropped_blocked),
            ("sfu_dropped_over_rate_total", self.dropped_over_rate),
            ("sfu_seal_failures_total", self.seal_failures),
            ("sfu_nacks_in_total", self.nacks_in),
            ("sfu_nacks_out_total", self.nacks_out),
            ("sfu_nacks_unrepairable_total", self.nacks_unrepairable),
            ("sfu_nacks_refused_total", self.nacks_refused),
            ("sfu_sender_reports_held_total", self.sender_reports_held),
            ("sfu_retransmissions_out_total", self.retransmissions_out),
            ("sfu_repairs_received_total", self.repairs_received),
            ("sfu_duplicate_repairs_total", self.duplicate_repairs),
            ("sfu_repairs_refused_total", self.repairs_refused),
            ("sfu_keyframe_requests_in_total", self.keyframe_requests_in),
            (
                "sfu_keyframe_requests_out_total",
                self.keyframe_requests_out,
            ),
            (
                "sfu_keyframe_requests_throttled_total",
                self.keyframe_requests_throttled,
            ),
            (
                "sfu_keyframes_for_failed_repairs_total",
                self.keyframes_for_failed_repairs,
            ),
            ("sfu_twcc_feedback_out_total", self.twcc_feedback_out),
            ("sfu_data_messages_in_total", self.data_messages_in),
            ("sfu_data_messages_out_total", self.data_messages_out),
            (
                "sfu_data_messages_dropped_total",
                self.data_messages_dropped,
            ),
            ("sfu_sctp_packets_refused_total", self.sctp_packets_refused),
            ("sfu_rtcp_refused_total", self.rtcp_refused),
            (
                "sfu_subscriptions_refused_total",
                self.subscriptions_refused,
            ),
            ("sfu_layer_switches_total", self.layer_switches),
            (
                "sfu_layer_loss_downgrades_total",
                self.layer_loss_downgrades,
            ),
            ("sfu_lines_recycled_total", self.lines_recycled),
            ("sfu_stun_refused_total", self.stun_refused),
            ("sfu_ice_restarts_total", self.ice_restarts),
            ("sfu_path_changes_total", self.path_changes),
            (
                "sfu_dtls_held_until_proven_total",
                self.dtls_held_until_proven,
            ),
            ("sfu_offers_abandoned_total", self.offers_abandoned),
            ("sfu_offers_declined_total", self.offers_declined),
            (
                "sfu_transport_feedback_in_total",
                self.transport_feedback_in,
            ),
            ("sfu_probe_packets_out_total", self.probe_packets_out),
            ("sfu_probe_clusters_total", self.probe_clusters),
            (
                "sfu_layer_bandwidth_downgrades_total",
                self.layer_bandwidth_downgrades,
            ),
            ("sfu_failed_steps_total", self.failed_steps),
            ("sfu_video_pauses_total", self.video_pauses),
            ("sfu_layers_suspended_total", self.layers_suspended),
            ("sfu_layers_resumed_total", self.layers_resumed),
            ("sfu_temporal_downgrades_total", self.temporal_downgrades),
            ("sfu_temporal_skipped_packets_total", self.temporal_skips),
            ("sfu_paced_packets_total", self.paced_packets),
            (
                "sfu_receiver_estimates_in_total",
                self.receiver_estimates_in,
            ),
        ]
    }

    /// The HELP text of every counter of [`Counters::named`], by name.
    pub const HELP: [(&'static str, &'static str); 56] = [
        (
            "sfu_packets_in_total",
            "Datagrams received (media, RTCP, STUN, DTLS), per worker.",
        ),
        (
            "sfu_bytes_in_total",
            "Bytes of the datagrams received, per worker.",
        ),
        (
            "sfu_packets_out_total",
            "Datagrams sent (forwarded media, RTCP, STUN, DTLS), per worker.",
        ),
        (
            "sfu_bytes_out_total",
            "Bytes of the datagrams sent, per worker.",
        ),
        (
            "sfu_rtcp_in_total",
            "RTCP packets received from participants.",
        ),
        (
            "sfu_rtcp_out_total",
            "RTCP packets sent (reports, NACKs, keyframe requests, feedback).",
        ),
        (
            "sfu_dropped_unknown_source_total",
            "Datagrams from an address or ICE user fragment no session knows, dropped before any crypto.",
        ),
        (
            "sfu_dropped_malformed_total",
            "Datagrams that did not parse (RTP, RTCP, STUN or DTLS), dropped.",
        ),
        (
            "sfu_dropped_not_ready_total",
            "Media that arrived before its session's keys were agreed, dropped.",
        ),
        (
            "sfu_dropped_unknown_ssrc_total",
            "Media for a stream (SSRC) the session never announced, dropped.",
        ),
        (
            "sfu_dropped_replay_total",
            "Media packets seen before (SRTP replay protection), dropped.",
        ),
        (
            "sfu_dropped_auth_total",
            "Media packets whose SRTP authentication failed, dropped.",
        ),
        (
            "sfu_dropped_blocked_total",
            "Media from participants not allowed to publish (the waiting room), and media held for one moved there, dropped.",
        ),
        (
            "sfu_dropped_over_rate_total",
            "Audio packets past their track's rate (576 kbit/s and 150 packets a second; bursts of 16 kB), dropped.",
        ),
        (
            "sfu_seal_failures_total",
            "Packets that could not be encrypted for a subscriber.",
        ),
        (
            "sfu_nacks_in_total",
            "Retransmission requests (NACK) received from subscribers.",
        ),
        (
            "sfu_nacks_out_total",
            "Retransmission requests sent to publishers.",
        ),
        (
            "sfu_nacks_unrepairable_total",
            "Requested packets no longer in the retransmission cache.",
        ),
        (
            "sfu_nacks_refused_total",
            "Sequence numbers NACKs named past their subscriber's budget (2,000 a second), not looked up.",
        ),
        (
            "sfu_sender_reports_held_total",
            "Publishers' sender reports not passed on: another of the layer's went less than 250 ms before.",
        ),
        (
            "sfu_retransmissions_out_total",
            "Packets retransmitted to subscribers.",
        ),
        (
            "sfu_repairs_received_total",
            "Retransmitted packets received from publishers.",
        ),
        (
            "sfu_duplicate_repairs_total",
            "Retransmitted packets that arrived after the original.",
        ),
        (
            "sfu_repairs_refused_total",
            "Repairs (RTX) naming a packet past the newest their stream received, dropped: no gap to fill.",
        ),
        (
            "sfu_keyframe_requests_in_total",
            "Keyframe requests (PLI/FIR) received from subscribers.",
        ),
        (
            "sfu_keyframe_requests_out_total",
            "Keyframe requests sent to publishers.",
        ),
        (
            "sfu_keyframe_requests_throttled_total",
            "Keyframe requests not passed on because one was sent moments before.",
        ),
        (
            "sfu_keyframes_for_failed_repairs_total",
            "Subscribers' losses whose retransmissions were used up: a keyframe asked for at once.",
        ),
        (
            "sfu_twcc_feedback_out_total",
            "Transport-wide congestion control feedback packets sent to publishers.",
        ),
        (
            "sfu_data_messages_in_total",
            "Data channel messages received.",
        ),
        ("sfu_data_messages_out_total", "Data channel messages sent."),
        (
            "sfu_data_messages_dropped_total",
            "Data channel messages dropped (malformed, too large, or a full queue).",
        ),
        (
            "sfu_sctp_packets_refused_total",
            "SCTP packets of data channels refused unread: a stream id past the cap, chunks that do not parse, or past a session's budget.",
        ),
        (
            "sfu_rtcp_refused_total",
            "RTCP not read: datagrams over 1,500 bytes, keyframe requests and receiver estimates past the sender's 200 datagrams a second, packets of a compound past its 16th, transport-wide feedback past 5,000 statuses a second.",
        ),
        (
            "sfu_subscriptions_refused_total",
            "Subscriptions not made because the subscriber's session holds the most m-lines.",
        ),
        (
            "sfu_layer_switches_total",
            "Simulcast subscriptions that started or changed layer (at a keyframe).",
        ),
        (
            "sfu_layer_loss_downgrades_total",
            "Simulcast subscriptions lowered because their subscriber's link lost packets.",
        ),
        (
            "sfu_lines_recycled_total",
            "Stopped m-lines taken again for new subscriptions.",
        ),
        (
            "sfu_stun_refused_total",
            "Connectivity checks refused (failed authentication, or not a check).",
        ),
        (
            "sfu_ice_restarts_total",
            "ICE restarts in place (an offer with new ICE credentials).",
        ),
        (
            "sfu_path_changes_total",
            "Times a participant's browser moved its media to another path.",
        ),
        (
            "sfu_dtls_held_until_proven_total",
            "DTLS datagrams that came before their address answered the session's check, read once it did.",
        ),
        (
            "sfu_offers_abandoned_total",
            "SFU offers given up after going unanswered three times.",
        ),
        (
            "sfu_offers_declined_total",
            "SFU offers their client declined (reject_offer), given up at once.",
        ),
        (
            "sfu_transport_feedback_in_total",
            "Transport-wide congestion control feedback received from subscribers (the input of their bandwidth estimates).",
        ),
        (
            "sfu_probe_packets_out_total",
            "Padding packets sent to subscribers to probe their links for headroom.",
        ),
        (
            "sfu_probe_clusters_total",
            "Probes of a subscriber's link started (a burst above its estimate before a layer goes up).",
        ),
        (
            "sfu_layer_bandwidth_downgrades_total",
            "Simulcast subscriptions moved to a lower layer because their subscriber's bandwidth estimate could not carry the higher one.",
        ),
        (
            "sfu_failed_steps_total",
            "Steps up a layer (and resumes) that met loss on their subscriber's link within their trial and were taken back at once.",
        ),
        (
            "sfu_video_pauses_total",
            "Video subscriptions paused because their subscriber's bandwidth estimate carried none of their layers (audio only).",
        ),
        (
            "sfu_layers_suspended_total",
            "Simulcast layers whose publisher was told to stop encoding them, because no subscriber needed them (dynacast).",
        ),
        (
            "sfu_layers_resumed_total",
            "Simulcast layers whose publisher was told to encode them again, because a subscriber needed them.",
        ),
        (
            "sfu_temporal_downgrades_total",
            "Video subscriptions moved to fewer VP8 temporal layers (a lower frame rate) because their subscriber's bandwidth estimate could not carry the whole layer.",
        ),
        (
            "sfu_temporal_skipped_packets_total",
            "Packets not forwarded to a subscriber because their VP8 temporal layer was dropped for it.",
        ),
        (
            "sfu_paced_packets_total",
            "Video packets sent through a subscriber's pacer (while its bandwidth estimate bound), at the estimate's pace.",
        ),
        (
            "sfu_receiver_estimates_in_total",
            "Receiver estimates (REMB) taken as the bandwidth estimate of subscribers that send no transport-wide feedback.",
        ),
    ];

    pub fn dropped(&self) -> u64 {
        self.dropped_unknown_source
            + self.dropped_malformed
            + self.dropped_not_ready
            + self.dropped_unknown_ssrc
            + self.dropped_replay
            + self.dropped_auth
    }
}

#[cfg(test)]
mod help_tests {
    use super::*;

    #[test]
    fn every_counter_has_help_text() {
        let named: Vec<&str> = Counters::default()
            .named()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let helped: Vec<&str> = Counters::HELP.iter().map(|(n, _)| *n).collect();
        assert_eq!(named, helped);
        assert!(Counters::HELP.iter().all(|(_, h)| h.ends_with('.')));
    }
}
