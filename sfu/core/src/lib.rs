//! Sans-IO SFU core.
//!
//! Holds rooms, participants (one WebRTC session each), published tracks and subscriptions, and
//! the per-packet forwarding path: SRTP open once, route, rewrite, SRTP seal per subscriber.
//! No clock, no sockets, no threads: time enters as `now` on every input and output is polled
//! (see [`Sfu`]).

pub mod arena;
pub mod bandwidth_estimator;
pub mod bitrate_meter;
pub mod codec;
pub mod counters;
pub mod data_channel_link;
pub mod deadline_queue;
pub mod delay_trend;
pub mod downlink;
pub mod ice_lite;
pub mod inbound_stream;
pub mod local_description;
pub mod pacer;
pub mod packet_cache;
pub mod participant;
pub mod payload_format;
pub mod peer_transport;
pub mod probe_cluster;
pub mod rate_history;
pub mod remote_description;
pub mod replay_window;
pub mod resend_record;
pub mod rtcp_writer;
pub mod rtp_header;
pub mod sctp_gate;
pub mod send_history;
pub mod sender_stamp;
pub mod sfu;
pub mod skipped_numbers;
pub mod srtp_context;
pub mod ssrc_routes;
pub mod step_trial;
pub mod stream_address;
pub mod subscription;
pub mod tcp_framing;
pub mod temporal_filter;
pub mod token_bucket;
pub mod track;
pub mod track_layer;
pub mod transmit_batch;
pub mod transport_feedback;
pub mod twcc_feedback;
pub mod vp8_continuity;
pub mod vp8_descriptor;

pub use counters::Counters;
pub use peer_transport::TransportConfig;
pub use sfu::{DYNACAST_HOLD, DownlinkStats, Sfu, SfuConfig};
pub use transmit_batch::TransmitBatch;
