//! The benchmark harness: a load generator of simulated WebRTC participants (real ICE, DTLS
//! and SRTP on batched UDP), scenario presets, a raw UDP relay as the machine's ceiling, and
//! the measurements and reports that size a region's deployment.

pub mod churn_visits;
pub mod deployment;
pub mod generator;
pub mod janus_target;
pub mod join_latency;
pub mod load_run;
pub mod plot;
pub mod proc_stats;
pub mod raw_relay;
pub mod receive_stats;
pub mod report;
pub mod scenario;
pub mod shaped_downlink;
pub mod shared_udp;
pub mod synthetic_media;
pub mod tcp_link;
pub mod timestamped_recv;
pub mod visits_at_scale;
pub mod worker_quota;
