//! A media session an SFU node still runs, as it reports them when its control link comes up.

use crate::{ParticipantId, RoomId};
use serde::{Deserialize, Serialize};

/// A participant's media session on a node: what the node kept while its control link was
/// down (a signaling restart or failover), for the signaling it reaches next to take over
/// rather than rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSession {
    pub room: RoomId,
    pub participant: ParticipantId,
    /// The media session number of [`crate::Command::AddParticipant`].
    pub session: u32,
}
