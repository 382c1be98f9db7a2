//! Identifiers shared by signaling and the SFU. They are opaque, pseudonymous strings: never a
//! personal identity number.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A room on the SFU; signaling uses the meeting id.
    RoomId
);
string_id!(
    /// One connection of a participant (a WebRTC session). A reconnect gets a new one.
    ParticipantId
);
string_id!(
    /// A published track, unique within its room (`<participant>/<mid>`).
    TrackId
);
