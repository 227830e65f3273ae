//! The channel events: the 17 types on `pubsub:channel:{id}` ([`ChannelEvent`]) and their
//! payloads (the message with its content blocks, presence and its status vocabularies, member,
//! thread, collaboration), with what each event says about its channel and its actor. The
//! message's wire form with both field conventions is in the `wire` chapter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::WireMessage;
use super::{now_millis, Millis};

/// Presence status. Accepts the TypeScript vocabulary too (`active` = online, `busy` = dnd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    #[serde(alias = "active")]
    Online,
    Away,
    #[serde(alias = "busy")]
    Dnd,
    Offline,
}

impl PresenceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Away => "away",
            Self::Dnd => "dnd",
            Self::Offline => "offline",
        }
    }
}

/// A file or image of a message, in the TypeScript hub's shape: `{"type":"image","url",
/// "width","height"}` or `{"type":"file","url","name","size","mimeType"}` (audio and video are
/// files with their MIME type).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlock {
    /// `image` or `file` (other kinds an agent may send are read as files).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// A URL people can open; never one that embeds a bot token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

impl ContentBlock {
    pub const IMAGE: &'static str = "image";
    pub const FILE: &'static str = "file";

    /// Whether it is shown as a picture.
    pub fn is_image(&self) -> bool {
        self.kind == Self::IMAGE
    }
}

/// A chat message. On the wire it is the superset of both conventions in use (see [`WireMessage`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireMessage", into = "WireMessage")]
pub struct ChannelMessage {
    pub id: String,
    pub content: String,
    pub sender_id: String,
    pub timestamp: Millis,
    pub thread_id: Option<String>,
    pub parent_message_id: Option<String>,
    pub edited: Option<bool>,
    pub reactions: Option<BTreeMap<String, u64>>,
    /// `external` for people on a platform; agents' clients may say `agent`.
    pub author_type: Option<String>,
    pub author_name: Option<String>,
    /// `telegram` or `discord` for messages a bridge published.
    pub external_platform: Option<String>,
    /// `{chatId}:{messageId}` on that platform.
    pub external_source_id: Option<String>,
    pub content_blocks: Option<Vec<ContentBlock>>,
    /// Whatever the sender attached, relayed as is; `{"streaming": true}` marks a partial answer
    /// (SPEC section 5).
    pub metadata: Option<Value>,
}

impl ChannelMessage {
    /// Whether this is the start of an answer still being written (more edits follow).
    pub fn is_streaming(&self) -> bool {
        is_streaming(self.metadata.as_ref())
    }
}

/// Whether a message's or an edit's `metadata` marks a partial answer. Only `true` does:
/// anything else (absent, `false`, a string) is a complete text, so a malformed flag can never
/// keep an answer looking unfinished.
pub fn is_streaming(metadata: Option<&Value>) -> bool {
    metadata.and_then(|metadata| metadata.get("streaming")) == Some(&Value::Bool(true))
}

/// `channel.presence`'s payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub agent_id: String,
    pub status: PresenceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(default = "now_millis", alias = "lastSeenAt")]
    pub last_seen: Millis,
}

/// `channel.member.join`'s payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub agent_id: String,
    #[serde(default = "now_millis")]
    pub joined_at: Millis,
    #[serde(default = "default_role")]
    pub role: String,
}

fn default_role() -> String {
    "member".to_owned()
}

/// `thread.create`'s payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Thread {
    pub id: String,
    pub parent_message_id: String,
    #[serde(default)]
    pub created_by: String,
    #[serde(default = "now_millis")]
    pub created_at: Millis,
    #[serde(default)]
    pub reply_count: u64,
}

/// The custom payload of `collaboration.event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collaboration {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Map<String, Value>,
}

/// The 17 channel event types (the seed's 15 plus `channel.member.update` and `thread.update`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ChannelEvent {
    #[serde(rename = "channel.message")]
    Message {
        channel_id: String,
        message: ChannelMessage,
    },
    #[serde(rename = "channel.message.edit")]
    MessageEdit {
        channel_id: String,
        message_id: String,
        content: String,
        #[serde(default = "now_millis")]
        edited_at: Millis,
        /// `{"streaming": true}` on every edit of a streamed answer but the last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Value>,
    },
    #[serde(rename = "channel.message.delete")]
    MessageDelete {
        channel_id: String,
        message_id: String,
        #[serde(default = "now_millis")]
        deleted_at: Millis,
    },
    #[serde(rename = "channel.reaction.add")]
    ReactionAdd {
        channel_id: String,
        message_id: String,
        emoji: String,
        agent_id: String,
    },
    #[serde(rename = "channel.reaction.remove")]
    ReactionRemove {
        channel_id: String,
        message_id: String,
        emoji: String,
        agent_id: String,
    },
    #[serde(rename = "channel.typing")]
    Typing {
        channel_id: String,
        agent_id: String,
        started: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_id: Option<String>,
    },
    #[serde(rename = "channel.presence")]
    Presence {
        channel_id: String,
        presence: Presence,
    },
    #[serde(rename = "channel.member.join")]
    MemberJoin { channel_id: String, member: Member },
    #[serde(rename = "channel.member.leave")]
    MemberLeave {
        channel_id: String,
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        left_at: Option<Millis>,
    },
    #[serde(rename = "channel.member.update")]
    MemberUpdate {
        channel_id: String,
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<serde_json::Map<String, Value>>,
    },
    #[serde(rename = "channel.update")]
    Update {
        channel_id: String,
        channel: serde_json::Map<String, Value>,
    },
    #[serde(rename = "channel.archive")]
    Archive {
        channel_id: String,
        #[serde(default)]
        archived_by: String,
        #[serde(default = "now_millis")]
        archived_at: Millis,
    },
    #[serde(rename = "channel.delete")]
    Delete {
        channel_id: String,
        #[serde(default)]
        deleted_by: String,
        #[serde(default = "now_millis")]
        deleted_at: Millis,
    },
    #[serde(rename = "thread.create")]
    ThreadCreate { channel_id: String, thread: Thread },
    #[serde(rename = "thread.update")]
    ThreadUpdate {
        channel_id: String,
        thread_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<serde_json::Map<String, Value>>,
    },
    #[serde(rename = "thread.message")]
    ThreadMessage {
        channel_id: String,
        thread_id: String,
        message: ChannelMessage,
    },
    #[serde(rename = "collaboration.event")]
    Collaboration {
        channel_id: String,
        event: Collaboration,
    },
}

impl ChannelEvent {
    /// Every channel event names its channel.
    pub fn channel_id(&self) -> &str {
        match self {
            Self::Message { channel_id, .. }
            | Self::MessageEdit { channel_id, .. }
            | Self::MessageDelete { channel_id, .. }
            | Self::ReactionAdd { channel_id, .. }
            | Self::ReactionRemove { channel_id, .. }
            | Self::Typing { channel_id, .. }
            | Self::Presence { channel_id, .. }
            | Self::MemberJoin { channel_id, .. }
            | Self::MemberLeave { channel_id, .. }
            | Self::MemberUpdate { channel_id, .. }
            | Self::Update { channel_id, .. }
            | Self::Archive { channel_id, .. }
            | Self::Delete { channel_id, .. }
            | Self::ThreadCreate { channel_id, .. }
            | Self::ThreadUpdate { channel_id, .. }
            | Self::ThreadMessage { channel_id, .. }
            | Self::Collaboration { channel_id, .. } => channel_id,
        }
    }

    /// The wire name of the event type, e.g. `channel.message`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Message { .. } => "channel.message",
            Self::MessageEdit { .. } => "channel.message.edit",
            Self::MessageDelete { .. } => "channel.message.delete",
            Self::ReactionAdd { .. } => "channel.reaction.add",
            Self::ReactionRemove { .. } => "channel.reaction.remove",
            Self::Typing { .. } => "channel.typing",
            Self::Presence { .. } => "channel.presence",
            Self::MemberJoin { .. } => "channel.member.join",
            Self::MemberLeave { .. } => "channel.member.leave",
            Self::MemberUpdate { .. } => "channel.member.update",
            Self::Update { .. } => "channel.update",
            Self::Archive { .. } => "channel.archive",
            Self::Delete { .. } => "channel.delete",
            Self::ThreadCreate { .. } => "thread.create",
            Self::ThreadUpdate { .. } => "thread.update",
            Self::ThreadMessage { .. } => "thread.message",
            Self::Collaboration { .. } => "collaboration.event",
        }
    }

    /// Who caused the event, when the event itself says so.
    pub fn actor(&self) -> Option<&str> {
        match self {
            Self::Message { message, .. } | Self::ThreadMessage { message, .. } => {
                Some(&message.sender_id)
            }
            Self::ReactionAdd { agent_id, .. }
            | Self::ReactionRemove { agent_id, .. }
            | Self::Typing { agent_id, .. }
            | Self::MemberLeave { agent_id, .. }
            | Self::MemberUpdate { agent_id, .. } => Some(agent_id),
            Self::Presence { presence, .. } => Some(&presence.agent_id),
            Self::MemberJoin { member, .. } => Some(&member.agent_id),
            Self::Archive { archived_by, .. } => Some(archived_by),
            Self::Delete { deleted_by, .. } => Some(deleted_by),
            Self::ThreadCreate { thread, .. } => Some(&thread.created_by),
            _ => None,
        }
    }
}

pub(super) const CHANNEL_EVENT_TYPES: [&str; 17] = [
    "channel.message",
    "channel.message.edit",
    "channel.message.delete",
    "channel.reaction.add",
    "channel.reaction.remove",
    "channel.typing",
    "channel.presence",
    "channel.member.join",
    "channel.member.leave",
    "channel.member.update",
    "channel.update",
    "channel.archive",
    "channel.delete",
    "thread.create",
    "thread.update",
    "thread.message",
    "collaboration.event",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::channel;
    use crate::event::{parse, HubEvent};

    #[test]
    fn seed_examples_round_trip_byte_exact() {
        let events = [
            r#"{"type":"channel.message.edit","channelId":"C","messageId":"m1","content":"x","editedAt":5}"#,
            r#"{"type":"channel.message.delete","channelId":"C","messageId":"m1","deletedAt":5}"#,
            r#"{"type":"channel.reaction.add","channelId":"C","messageId":"m1","emoji":"👍","agentId":"a"}"#,
            r#"{"type":"channel.reaction.remove","channelId":"C","messageId":"m1","emoji":"👍","agentId":"a"}"#,
            r#"{"type":"channel.typing","channelId":"C","agentId":"a","started":true,"threadId":"t"}"#,
            r#"{"type":"channel.presence","channelId":"C","presence":{"agentId":"a","status":"online","customStatus":"Reviewing PRs","avatar":"🤖","lastSeen":1708554000000}}"#,
            r#"{"type":"channel.member.join","channelId":"C","member":{"agentId":"a","joinedAt":5,"role":"owner"}}"#,
            r#"{"type":"channel.member.leave","channelId":"C","agentId":"a","leftAt":5}"#,
            r##"{"type":"channel.update","channelId":"C","channel":{"name":"#eng","isPrivate":false}}"##,
            r#"{"type":"channel.archive","channelId":"C","archivedBy":"a","archivedAt":5}"#,
            r#"{"type":"channel.delete","channelId":"C","deletedBy":"a","deletedAt":5}"#,
            r#"{"type":"thread.create","channelId":"C","thread":{"id":"t","parentMessageId":"m1","createdBy":"a","createdAt":5,"replyCount":0}}"#,
            r#"{"type":"thread.message","channelId":"C","threadId":"t","message":{"id":"m2","content":"r","senderId":"a","timestamp":5,"authorId":"a","createdAt":5,"threadId":"t"}}"#,
            r#"{"type":"collaboration.event","channelId":"C","event":{"type":"vote","data":{"x":1}}}"#,
        ];
        for wire in events {
            let inbound = parse(&channel(), wire.as_bytes()).expect(wire);
            let HubEvent::Channel(event) = inbound.event else {
                panic!("not a channel event: {wire}");
            };
            assert_eq!(serde_json::to_string(&event).unwrap(), wire);
        }
    }
    #[test]
    fn both_status_vocabularies_parse() {
        for (word, status) in [
            ("online", PresenceStatus::Online),
            ("active", PresenceStatus::Online),
            ("away", PresenceStatus::Away),
            ("dnd", PresenceStatus::Dnd),
            ("busy", PresenceStatus::Dnd),
            ("offline", PresenceStatus::Offline),
        ] {
            let parsed: PresenceStatus = serde_json::from_str(&format!("\"{word}\"")).unwrap();
            assert_eq!(parsed, status);
        }
    }
}
