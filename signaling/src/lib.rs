//! The session service: verifies session tokens, carries SDP between clients and the SFU over
//! WebSocket, serves the web client, and (single-node default) runs the SFU workers in-process.

pub mod audit_log;
pub mod config;
pub mod dev_issuer;
pub mod hub;
pub mod server;
pub mod session_token;
pub mod sfu_gateway;
