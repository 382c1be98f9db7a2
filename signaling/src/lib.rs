//! The session service: verifies session tokens, keeps meetings and their waiting rooms,
//! carries SDP between clients and the SFU over WebSocket, records every access in the PDL
//! audit log, serves the web client and the meetings API, and (single-node default) runs the
//! SFU workers in-process.

pub mod api_client;
pub mod app_state;
pub mod audit;
pub mod audit_chain;
pub mod audit_checkpoint;
pub mod audit_extract;
pub mod audit_log;
pub mod audit_sink;
pub mod bearer;
pub mod carried_session;
pub mod client_address;
pub mod companion_node;
pub mod config;
pub mod connection;
pub mod connection_limits;
pub mod dev_issuer;
pub mod generated_id;
pub mod identity_number;
pub mod image_sharing;
pub mod image_store;
pub mod join_pace;
pub mod join_refusal;
pub mod jwks_source;
pub mod meeting;
pub mod meeting_actions;
pub mod meeting_effects;
pub mod meeting_lease;
pub mod meeting_room;
pub mod meeting_store;
pub mod meetings;
pub mod meetings_api;
pub mod message_budget;
pub mod node_load;
pub mod offered_video;
pub mod outbox;
pub mod pending_carry;
pub mod pending_join;
pub mod pending_resume;
pub mod private_file;
pub mod redis_connection;
pub mod replica_relay;
pub mod request_site;
pub mod server;
pub mod service_gauges;
pub mod session_resume;
pub mod session_takeover;
pub mod session_token;
pub mod sfu_control;
pub mod sfu_gateway;
pub mod shared_image;
pub mod socket_credentials;
pub mod token_refusals;
pub mod turn_credentials;
