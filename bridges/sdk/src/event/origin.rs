//! Where a bridge-published event came from.

use std::fmt;

use serde::Serialize;

/// The platform chat a bridge published an event from (`telegram:-100123`), stamped on the
/// envelope so that no bridge relays the event back to that chat. Anyone may PUBLISH a payload
/// with any `origin`; the worst a forged one does is keep an event out of the one chat it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Origin(String);

impl Origin {
    /// The origin of `chat` on `platform` (a connector's name).
    pub fn chat(platform: &str, chat: &str) -> Self {
        Self(format!("{platform}:{chat}"))
    }

    /// An origin as an envelope carried it, unchecked: it is only ever compared.
    pub fn from_wire(origin: String) -> Self {
        Self(origin)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
