//! Where commands for the SFU go: embedded workers in this process, or a remote node.

use sfu_proto::{Command, ParticipantId};

pub trait SfuControl: Send + Sync + 'static {
    /// Queues a command; never blocks (callers may hold a meeting's lock).
    fn send(&self, command: Command);

    /// Standalone nodes linked now: (serving, draining); none for embedded workers.
    fn node_counts(&self) -> Option<(usize, usize)> {
        None
    }

    /// The service is stopping and its media sessions are to outlive it (on nodes that keep
    /// them through a lost control link): nothing more is sent, not even the removals of the
    /// connections closing now.
    fn hold(&self) {}

    /// This replica has taken meeting `room` over from another (ADR 5): the media sessions
    /// the store carried for it are expected, and every node is asked what it runs of the
    /// room — carried sessions go on, the rest (the last owner's, unclaimed) are ended.
    fn take_over_meeting(
        &self,
        _room: &sfu_proto::RoomId,
        _carried: &[crate::session_takeover::CarriedMedia],
    ) {
    }

    /// The standalone node `participant`'s media session runs on.
    fn node_of(&self, _participant: &ParticipantId) -> Option<String> {
        None
    }

    /// Media sessions the meeting store carried over from the previous run of the service:
    /// nodes may still run them.
    fn expect_sessions(&self, _sessions: &[crate::session_takeover::CarriedMedia]) {}

    /// A carried-over participant is back: whether its media session `session` goes on (a
    /// node runs it, or may still report it). Embedded workers end with the process: never.
    fn claim_session(&self, _participant: &ParticipantId, _session: u32) -> bool {
        false
    }
}

impl SfuControl for sfu_server::SfuNode {
    fn send(&self, command: Command) {
        sfu_server::SfuNode::send(self, command)
    }
}
