//! The relay's jobs: one hub event's work in one chat, as the chat's durable outbox keeps it.
//!
//! A job is mutable and remembers its progress (the parts rendered, the parts already shown, the
//! step an edit reached), so a retry after a 429, a network error or a restart resumes where it
//! stopped and never shows a part twice. Jobs name their link by the hub channel and never carry
//! a credential.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::ContentBlock;
use crate::relay::connector::{Look, PartId, ThreadRef};

/// One relay to one chat.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: Serialize",
    deserialize = "P: serde::de::DeserializeOwned"
))]
pub struct Job<P> {
    pub about: About,
    pub action: Action<P>,
}

/// What a job relays: for metrics, the agent's share of the outbox and the dead-letter list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct About {
    /// The hub event type (`message`, `message.edit`, `system.announcement`, ...).
    pub event_type: String,
    /// The agent told when the relay is given up on (none for people and the bridge's notices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// The hub event, kept with a dead letter.
    #[serde(default)]
    pub payload: Value,
    /// When the hub loop read the event, until the first request for it starts (this run only).
    #[serde(skip)]
    pub received_at: Option<Instant>,
}

/// What a job does.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: Serialize",
    deserialize = "P: serde::de::DeserializeOwned"
))]
pub enum Action<P> {
    /// Shows a message (every part) and maps the parts to its hub message.
    Send(Box<Send<P>>),
    /// Re-renders a message and edits, sends or deletes parts as its length changed.
    Edit(Edit<P>),
    /// Deletes every part of a message.
    Delete(Delete<P>),
    /// Adds or removes an agent's reaction.
    React(React),
    /// Opens a platform thread for a hub thread, ahead of the thread's messages.
    OpenThread(OpenThread),
    /// A notice from the bridge itself (plain text).
    Notice(Notice<P>),
}

/// A message to show.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: Serialize",
    deserialize = "P: serde::de::DeserializeOwned"
))]
pub struct Send<P> {
    /// The link it goes through; none for a direct message.
    pub hub_channel: Option<String>,
    /// The hub message it shows; none for a direct message (nothing to map).
    pub hub_message_id: Option<String>,
    pub look: Look,
    pub text: String,
    /// The hub message it answers.
    pub reply_to: Option<String>,
    /// The hub thread it belongs to.
    pub thread_id: Option<String>,
    /// Set by the first attempt.
    pub progress: Option<SendProgress<P>>,
    /// A streamed answer's start: more text follows as edits (SPEC section 5).
    #[serde(default)]
    pub streaming: bool,
}

/// Where a send stands.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: Serialize",
    deserialize = "P: serde::de::DeserializeOwned"
))]
pub struct SendProgress<P> {
    pub thread: Option<ThreadRef>,
    /// The part the first part answers natively.
    pub reply_to: Option<PartId>,
    pub parts: Vec<P>,
    /// How many parts are done.
    pub done: usize,
    /// The platform messages shown so far.
    pub shown: Vec<PartId>,
    /// How many of `shown` are in the message map.
    #[serde(default)]
    pub recorded: usize,
    /// Files to upload ahead of the text, one platform message's worth each (SPEC section 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploads: Vec<Vec<ContentBlock>>,
    /// How many of `uploads` are done.
    #[serde(default)]
    pub uploaded: usize,
    /// Whether the text (a single part) may be the first upload's caption.
    #[serde(default)]
    pub caption: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: Serialize",
    deserialize = "P: serde::de::DeserializeOwned"
))]
pub struct Edit<P> {
    pub hub_channel: String,
    pub hub_message_id: String,
    pub text: String,
    pub progress: Option<Rewrite<P>>,
    /// An intermediate text of a streamed answer; the last edit is not marked.
    #[serde(default)]
    pub streaming: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: Serialize",
    deserialize = "P: serde::de::DeserializeOwned"
))]
pub struct Delete<P> {
    pub hub_channel: String,
    pub hub_message_id: String,
    pub progress: Option<Rewrite<P>>,
}

/// An edit or delete under way: the parts as they were, the parts as they become, how far.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: Serialize",
    deserialize = "P: serde::de::DeserializeOwned"
))]
pub struct Rewrite<P> {
    pub thread: Option<ThreadRef>,
    pub old: Vec<PartId>,
    pub new: Vec<P>,
    /// The platform messages that show the message after the rewrite, so far.
    pub ids: Vec<PartId>,
    pub next: usize,
    /// Parts showing only the message's files, which an edit keeps (mapped ahead of `ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<PartId>,
}

impl<P> Rewrite<P> {
    /// The message's parts as the map keeps them: the files first, as they were sent.
    pub fn mapped(&self) -> Vec<String> {
        self.kept
            .iter()
            .chain(&self.ids)
            .map(|id| id.0.clone())
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct React {
    pub hub_channel: String,
    pub hub_message_id: String,
    pub agent_id: String,
    pub emoji: String,
    pub add: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OpenThread {
    pub hub_channel: String,
    pub thread_id: String,
    /// The hub message the thread hangs on.
    pub parent: String,
}

#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: Serialize",
    deserialize = "P: serde::de::DeserializeOwned"
))]
pub struct Notice<P> {
    pub text: String,
    /// The platform user the notice pings (a person who hit a rate limit).
    pub mention: Option<String>,
    pub parts: Option<Vec<P>>,
    pub sent: usize,
}

impl<P> Job<P> {
    /// A notice from the bridge to a chat.
    pub fn notice(text: impl Into<String>, event_type: &str, mention: Option<String>) -> Self {
        let text = text.into();
        Self {
            about: About {
                event_type: event_type.to_owned(),
                agent_id: None,
                channel_id: None,
                payload: Value::String(text.clone()),
                received_at: None,
            },
            action: Action::Notice(Notice {
                text,
                mention,
                parts: None,
                sent: 0,
            }),
        }
    }
}
