//! Where commands for the SFU go: embedded workers in this process, or a remote node.

use sfu_proto::Command;

pub trait SfuControl: Send + Sync + 'static {
    /// Queues a command; never blocks (callers may hold a meeting's lock).
    fn send(&self, command: Command);

    /// Standalone nodes linked now: (serving, draining); none for embedded workers.
    fn node_counts(&self) -> Option<(usize, usize)> {
        None
    }
}

impl SfuControl for sfu_server::SfuNode {
    fn send(&self, command: Command) {
        sfu_server::SfuNode::send(self, command)
    }
}
