//! The HELP text of every metric an SFU node exports (registered once at start, so
//! `/metrics` explains each one).

use crate::ice_tcp::IceTcpCounters;
use metrics::{describe_counter, describe_gauge};
use sfu_core::counters::Counters;

pub fn describe() {
    for (name, help) in Counters::HELP.iter().chain(IceTcpCounters::HELP.iter()) {
        describe_counter!(*name, *help);
    }
    describe_counter!(
        "sfu_send_dropped_total",
        "Datagrams the kernel would not take (socket buffer full), dropped."
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
}
