//! The HELP text of every metric an SFU node exports (registered once at start, so
//! `/metrics` explains each one).

use crate::ice_tcp::IceTcpCounters;
use crate::udp_batch::IoCalls;
use metrics::{describe_counter, describe_gauge, describe_histogram};
use sfu_core::counters::Counters;

pub fn describe() {
    let io = IoCalls::HELP.iter();
    for (name, help) in Counters::HELP
        .iter()
        .chain(IceTcpCounters::HELP.iter())
        .chain(io)
    {
        describe_counter!(*name, *help);
    }
    #[cfg(feature = "io-uring")]
    for (name, help) in crate::uring_receive::UringCounters::HELP {
        describe_counter!(name, help);
    }
    describe_counter!(
        "sfu_send_dropped_total",
        "Datagrams the kernel would not take (socket buffer full), dropped."
    );
    describe_counter!(
        "sfu_ops_connections_refused_total",
        "Connections to the metrics and health listener closed at once: over the cap in all (256) or per source address (8)."
    );
    describe_counter!(
        "sfu_control_messages_skipped_total",
        "Control messages from the other end of the control link that did not decode (e.g. a command of a newer version), skipped."
    );
    describe_counter!(
        "sfu_commands_refused_busy_total",
        "Commands from signaling refused because the worker's queue was full."
    );
    describe_gauge!(
        "sfu_ice_tcp_connections",
        "ICE-TCP connections open, per worker."
    );
    describe_gauge!("sfu_rooms", "Rooms with participants, per worker.");
    describe_gauge!(
        "sfu_participants",
        "Participants with a media session, per worker."
    );
    describe_histogram!(
        "sfu_downlink_estimate_bytes_per_second",
        "Subscribers' bandwidth estimates (bytes per second), observed once a second each."
    );
    describe_histogram!(
        "sfu_timer_pass_seconds",
        "How long each of a worker's timer passes took (NACKs, reports, layer choice, pacing), sending what it produced included: datagrams that arrive meanwhile wait for it."
    );
    describe_gauge!(
        "sfu_downlinks_constrained",
        "Subscribers whose bandwidth estimate holds a layer they want back, per worker."
    );
}

/// Buckets of `sfu_timer_pass_seconds`: a pass is tens of microseconds in a quiet worker; one
/// over a millisecond shows in every packet's latency behind it.
pub const TIMER_PASS_BUCKETS: &[f64] = &[
    25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3,
];

/// Buckets of `sfu_downlink_estimate_bytes_per_second`: a phone on a weak link (100 kbit/s)
/// to a fast one (10 Mbit/s), in bytes.
pub const ESTIMATE_BUCKETS: &[f64] = &[
    12.5e3, 25e3, 37.5e3, 62.5e3, 93.75e3, 125e3, 187.5e3, 250e3, 375e3, 625e3, 1.25e6,
];
