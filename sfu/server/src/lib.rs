//! The SFU's I/O layer: worker threads (one per core), each with its own UDP socket and a
//! shard of rooms, batched receive and send, and the node that routes control commands.

pub mod cache_prefetch;
pub mod cluster_tls;
pub mod control_client;
pub mod control_socket;
pub mod control_stream;
pub mod counted_source;
pub mod datagram_sink;
pub mod health_listener;
pub mod huge_page_heap;
pub mod ice_tcp;
pub mod load_sampler;
pub mod logging;
pub mod metric_descriptions;
pub mod node;
pub mod node_cli;
pub mod node_file_config;
pub mod process_cpu;
pub mod room_placement;
pub mod udp_batch;
pub mod udp_receive;
#[cfg(feature = "io-uring")]
pub mod uring_receive;
pub mod worker;

pub use node::{MAX_PENDING_REQUESTS, NodeConfig, NodeError, SfuNode};
