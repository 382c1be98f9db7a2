//! Test kit for the SFU core: [`SimPeer`], a sans-IO WebRTC client built from the same
//! webrtc-rs crates (a full controlling ICE agent, a DTLS client, SRTP), and [`SimNetwork`],
//! which runs an [`sfu_core::Sfu`] and peers on virtual time with per-link loss and delay.

pub mod sim_network;
pub mod sim_peer;
pub mod simulcast_publisher;

pub use sim_network::{Delivery, Link, SimNetwork};
pub use sim_peer::{ReceivedPacket, SendTrack, SimPeer};
