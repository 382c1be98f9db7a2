//! `sfu`: a standalone SFU node. It dials the signaling service over QUIC (mutual TLS with the
//! cluster CA), runs one worker per core, and forwards media for the rooms signaling places on it.

use clap::Parser;
use sfu_server::node_cli::NodeArgs;

sfu_server::huge_page_heap!();

fn main() -> anyhow::Result<()> {
    let ran = sfu_server::node_cli::run(NodeArgs::parse());
    // A worker panicked and the node stopped as on SIGTERM: the supervisor is told.
    if sfu_server::worker::panicked() {
        std::process::exit(sfu_server::worker::WORKER_PANICKED);
    }
    ran
}
