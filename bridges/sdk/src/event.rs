//! The hub's event model: what travels on `pubsub:channel:*`, `pubsub:agent:*` and `pubsub:global`.
//!
//! Parsing is liberal (SPEC section 2): the `{event, timestamp, channelId, senderId?}` envelope or a
//! bare event, both field conventions of `channel.message` (`senderId`/`authorId`,
//! `timestamp`/`createdAt`), the TypeScript presence and typing shapes, and both presence-status
//! vocabularies. Unknown event types become [`HubEvent::Unknown`]; anything that is not a JSON
//! object with a `type` is a [`ParseError`], never a panic. An event whose ids break the rules of
//! [`crate::ids`] (a channel id `X:members` would make its keys collide with another channel's) is
//! refused as [`ParseError::BadId`] before anything uses them.
//!
//! Emission is strict: compact JSON, camelCase, integer milliseconds, optional fields omitted, `type`
//! first, and the superset `channel.message` that readers of either convention understand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{check_agent_id, check_key_id, IdError};

/// Milliseconds since the Unix epoch, as every hub timestamp is.
pub type Millis = i64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Which pub/sub channel a payload arrived on; it decides which event family the payload is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// `pubsub:channel:{id}`.
    Channel(String),
    /// `pubsub:agent:{id}`; the id may be an external person such as `external:telegram:123`.
    Agent(String),
    /// `pubsub:global`.
    Global,
}

impl Source {
    pub const CHANNEL_PREFIX: &'static str = "pubsub:channel:";
    pub const AGENT_PREFIX: &'static str = "pubsub:agent:";
    pub const GLOBAL: &'static str = "pubsub:global";

    /// Classifies a pub/sub channel name; `None` for channels the hub does not use.
    pub fn from_channel(name: &str) -> Option<Self> {
        if let Some(id) = name.strip_prefix(Self::CHANNEL_PREFIX) {
            return (!id.is_empty()).then(|| Self::Channel(id.to_owned()));
        }
        if let Some(id) = name.strip_prefix(Self::AGENT_PREFIX) {
            return (!id.is_empty()).then(|| Self::Agent(id.to_owned()));
        }
        (name == Self::GLOBAL).then_some(Self::Global)
    }

    /// The pub/sub channel name this source is published on.
    pub fn channel_name(&self) -> String {
        match self {
            Self::Channel(id) => format!("{}{id}", Self::CHANNEL_PREFIX),
            Self::Agent(id) => format!("{}{id}", Self::AGENT_PREFIX),
            Self::Global => Self::GLOBAL.to_owned(),
        }
    }
}

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

/// A file, image or other non-text part of a message, as a bridge describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlock {
    /// `image`, `file`, `audio`, `video`, `sticker`, ...
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
}

/// The wire form of a message: every field optional, both conventions side by side.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_source_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edited: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reactions: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_blocks: Option<Vec<ContentBlock>>,
}

impl TryFrom<WireMessage> for ChannelMessage {
    type Error = String;

    fn try_from(wire: WireMessage) -> Result<Self, Self::Error> {
        let sender_id = wire
            .sender_id
            .or(wire.author_id)
            .ok_or("message has neither senderId nor authorId")?;
        Ok(Self {
            id: wire.id.ok_or("message has no id")?,
            content: wire.content.unwrap_or_default(),
            sender_id,
            timestamp: wire
                .timestamp
                .or(wire.created_at)
                .unwrap_or_else(now_millis),
            thread_id: wire.thread_id,
            parent_message_id: wire.parent_message_id,
            edited: wire.edited,
            reactions: wire.reactions,
            author_type: wire.author_type,
            author_name: wire.author_name,
            external_platform: wire.external_platform,
            external_source_id: wire.external_source_id,
            content_blocks: wire.content_blocks,
        })
    }
}

impl From<ChannelMessage> for WireMessage {
    fn from(message: ChannelMessage) -> Self {
        // Both conventions are written, so readers of either one work (SPEC section 2).
        Self {
            author_id: Some(message.sender_id.clone()),
            created_at: Some(message.timestamp),
            id: Some(message.id),
            content: Some(message.content),
            sender_id: Some(message.sender_id),
            timestamp: Some(message.timestamp),
            author_type: message.author_type,
            author_name: message.author_name,
            external_platform: message.external_platform,
            external_source_id: message.external_source_id,
            thread_id: message.thread_id,
            parent_message_id: message.parent_message_id,
            edited: message.edited,
            reactions: message.reactions,
            content_blocks: message.content_blocks,
        }
    }
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

/// The kinds of agent-directed event (seed `AgentEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEventKind {
    #[serde(rename = "agent.direct_message")]
    DirectMessage,
    #[serde(rename = "agent.notification")]
    Notification,
    #[serde(rename = "agent.command")]
    Command,
    #[serde(rename = "agent.invite")]
    Invite,
}

/// The payload of an agent-directed event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentEventData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_required: Option<bool>,
}

/// An event on `pubsub:agent:{agentId}`:
/// `{"type":"agent.direct_message","data":{"fromAgent":"..","content":".."},"timestamp":..}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    #[serde(rename = "type")]
    pub kind: AgentEventKind,
    #[serde(default)]
    pub data: AgentEventData,
    #[serde(default = "now_millis")]
    pub timestamp: Millis,
}

/// The kinds of system-wide event (seed `GlobalEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalEventKind {
    #[serde(rename = "system.announcement")]
    Announcement,
    #[serde(rename = "system.maintenance")]
    Maintenance,
    #[serde(rename = "system.shutdown")]
    Shutdown,
    #[serde(rename = "system.performance.alert")]
    PerformanceAlert,
    #[serde(rename = "auth.token.revoked")]
    TokenRevoked,
    #[serde(rename = "agent.joined")]
    AgentJoined,
    #[serde(rename = "agent.left")]
    AgentLeft,
}

/// The payload of a system-wide event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalEventData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected_agents: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_duration: Option<i64>,
}

/// An event on `pubsub:global`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalEvent {
    #[serde(rename = "type")]
    pub kind: GlobalEventKind,
    #[serde(default)]
    pub data: GlobalEventData,
}

/// Any event the hub carries, in the family its pub/sub channel implies.
// Channel events are the common case: boxing them to shrink the rare variants would cost an
// allocation on nearly every event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    Channel(ChannelEvent),
    Agent(AgentEvent),
    Global(GlobalEvent),
    /// A well-formed event of a type this service does not know; kept so it can be counted.
    Unknown {
        type_name: String,
    },
}

impl HubEvent {
    /// The wire type name, for metrics and logs.
    pub fn type_name(&self) -> &str {
        match self {
            Self::Channel(event) => event.type_name(),
            Self::Agent(event) => agent_kind_name(event.kind),
            Self::Global(event) => global_kind_name(event.kind),
            Self::Unknown { type_name } => type_name,
        }
    }
}

fn agent_kind_name(kind: AgentEventKind) -> &'static str {
    match kind {
        AgentEventKind::DirectMessage => "agent.direct_message",
        AgentEventKind::Notification => "agent.notification",
        AgentEventKind::Command => "agent.command",
        AgentEventKind::Invite => "agent.invite",
    }
}

fn global_kind_name(kind: GlobalEventKind) -> &'static str {
    match kind {
        GlobalEventKind::Announcement => "system.announcement",
        GlobalEventKind::Maintenance => "system.maintenance",
        GlobalEventKind::Shutdown => "system.shutdown",
        GlobalEventKind::PerformanceAlert => "system.performance.alert",
        GlobalEventKind::TokenRevoked => "auth.token.revoked",
        GlobalEventKind::AgentJoined => "agent.joined",
        GlobalEventKind::AgentLeft => "agent.left",
    }
}

/// A parsed payload with what its envelope said, if it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub event: HubEvent,
    pub timestamp: Option<Millis>,
    pub sender_id: Option<String>,
    /// Set by bridges on what they publish (`telegram:{chatId}`), so no bridge relays an event
    /// back to the chat it came from.
    pub origin: Option<String>,
}

/// Why a payload could not be read as a hub event.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("payload is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("payload is not a JSON object with a string `type`")]
    NoType,
    #[error("`{type_name}` event is invalid: {source}")]
    Invalid {
        type_name: String,
        source: serde_json::Error,
    },
    /// An id the service would put into a key does not follow the id rules.
    #[error("`{type_name}` event has a bad {field}: it {error}")]
    BadId {
        type_name: String,
        field: &'static str,
        error: IdError,
    },
}

/// Reads one pub/sub payload that arrived from `source`.
pub fn parse(source: &Source, payload: &[u8]) -> Result<Inbound, ParseError> {
    let value: Value = serde_json::from_slice(payload).map_err(ParseError::NotJson)?;
    let Value::Object(mut outer) = value else {
        return Err(ParseError::NoType);
    };
    let timestamp = outer.get("timestamp").and_then(Value::as_i64);
    let sender_id = string_field(&outer, "senderId");
    let origin = string_field(&outer, "origin");
    // An envelope wraps the event in `event`; a bare event carries `type` itself (and
    // `collaboration.event` has an `event` field of its own, hence the `type` check).
    let (mut object, envelope_channel) = match outer.remove("event") {
        Some(Value::Object(event)) if !outer.contains_key("type") => {
            (event, string_field(&outer, "channelId"))
        }
        Some(other) => {
            outer.insert("event".to_owned(), other);
            (outer, None)
        }
        None => (outer, None),
    };
    let type_name = match object.get("type") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err(ParseError::NoType),
    };
    let invalid = |source| ParseError::Invalid {
        type_name: type_name.clone(),
        source,
    };

    let event = match source {
        Source::Channel(channel_id) => {
            // The pub/sub channel names the hub channel; fill it in when the event leaves it out.
            let channel_id = envelope_channel.unwrap_or_else(|| channel_id.clone());
            match type_name.as_str() {
                "presence.update" | "typing.update" => HubEvent::Channel(
                    from_typescript_shape(&type_name, object, channel_id).map_err(invalid)?,
                ),
                name if CHANNEL_EVENT_TYPES.contains(&name) => {
                    object
                        .entry("channelId")
                        .or_insert_with(|| Value::String(channel_id));
                    HubEvent::Channel(
                        serde_json::from_value(Value::Object(object)).map_err(invalid)?,
                    )
                }
                _ => HubEvent::Unknown { type_name },
            }
        }
        Source::Agent(_) if is_kind::<AgentEventKind>(&type_name) => {
            HubEvent::Agent(serde_json::from_value(Value::Object(object)).map_err(invalid)?)
        }
        Source::Global if is_kind::<GlobalEventKind>(&type_name) => {
            HubEvent::Global(serde_json::from_value(Value::Object(object)).map_err(invalid)?)
        }
        Source::Agent(_) | Source::Global => HubEvent::Unknown { type_name },
    };
    check_ids(source, &event).map_err(|(field, error)| ParseError::BadId {
        type_name: event.type_name().to_owned(),
        field,
        error,
    })?;
    Ok(Inbound {
        event,
        timestamp,
        sender_id,
        origin,
    })
}

/// Which id broke the rules, and how.
type BadId = (&'static str, IdError);

/// Checks every id of an event that the service puts into keys or hands to a platform.
fn check_ids(source: &Source, event: &HubEvent) -> Result<(), BadId> {
    let key = |field: &'static str, id: &str| check_key_id(id).map_err(|error| (field, error));
    let agent = |field: &'static str, id: &str| check_agent_id(id).map_err(|error| (field, error));
    // Fields the wire lets default to "" are checked only when given.
    let given_key = |field: &'static str, id: &str| match id.is_empty() {
        true => Ok(()),
        false => key(field, id),
    };
    let given_agent = |field: &'static str, id: &str| match id.is_empty() {
        true => Ok(()),
        false => agent(field, id),
    };
    match event {
        HubEvent::Channel(event) => {
            key("channelId", event.channel_id())?;
            match event {
                ChannelEvent::Message { message, .. } => check_message(message)?,
                ChannelEvent::ThreadMessage {
                    thread_id, message, ..
                } => {
                    key("threadId", thread_id)?;
                    check_message(message)?;
                }
                ChannelEvent::MessageEdit { message_id, .. }
                | ChannelEvent::MessageDelete { message_id, .. } => key("messageId", message_id)?,
                ChannelEvent::ReactionAdd {
                    message_id,
                    agent_id,
                    ..
                }
                | ChannelEvent::ReactionRemove {
                    message_id,
                    agent_id,
                    ..
                } => {
                    key("messageId", message_id)?;
                    agent("agentId", agent_id)?;
                }
                ChannelEvent::Typing {
                    agent_id,
                    thread_id,
                    ..
                } => {
                    agent("agentId", agent_id)?;
                    if let Some(thread_id) = thread_id {
                        key("threadId", thread_id)?;
                    }
                }
                ChannelEvent::Presence { presence, .. } => agent("agentId", &presence.agent_id)?,
                ChannelEvent::MemberJoin { member, .. } => agent("agentId", &member.agent_id)?,
                ChannelEvent::MemberLeave { agent_id, .. }
                | ChannelEvent::MemberUpdate { agent_id, .. } => agent("agentId", agent_id)?,
                ChannelEvent::ThreadCreate { thread, .. } => {
                    key("thread.id", &thread.id)?;
                    given_key("thread.parentMessageId", &thread.parent_message_id)?;
                    given_agent("thread.createdBy", &thread.created_by)?;
                }
                ChannelEvent::ThreadUpdate { thread_id, .. } => key("threadId", thread_id)?,
                ChannelEvent::Archive { archived_by, .. } => {
                    given_agent("archivedBy", archived_by)?
                }
                ChannelEvent::Delete { deleted_by, .. } => given_agent("deletedBy", deleted_by)?,
                ChannelEvent::Update { .. } | ChannelEvent::Collaboration { .. } => {}
            }
        }
        HubEvent::Agent(event) => {
            if let Source::Agent(recipient) = source {
                agent("recipient", recipient)?;
            }
            if let Some(from) = &event.data.from_agent {
                agent("fromAgent", from)?;
            }
            if let Some(channel_id) = &event.data.channel_id {
                key("channelId", channel_id)?;
            }
        }
        HubEvent::Global(_) | HubEvent::Unknown { .. } => {}
    }
    Ok(())
}

fn check_message(message: &ChannelMessage) -> Result<(), BadId> {
    let key = |field: &'static str, id: &str| check_key_id(id).map_err(|error| (field, error));
    key("message.id", &message.id)?;
    check_agent_id(&message.sender_id).map_err(|error| ("message.senderId", error))?;
    if let Some(thread_id) = &message.thread_id {
        key("message.threadId", thread_id)?;
    }
    if let Some(parent) = &message.parent_message_id {
        key("message.parentMessageId", parent)?;
    }
    Ok(())
}

fn string_field(object: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn is_kind<K: serde::de::DeserializeOwned>(type_name: &str) -> bool {
    K::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(type_name))
        .is_ok()
}

const CHANNEL_EVENT_TYPES: [&str; 17] = [
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

/// Maps the TypeScript client's `presence.update` / `typing.update` shapes onto channel events.
fn from_typescript_shape(
    type_name: &str,
    mut object: serde_json::Map<String, Value>,
    channel_id: String,
) -> Result<ChannelEvent, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TsPresence {
        agent_id: String,
        channel_id: Option<String>,
        status: PresenceStatus,
        custom_status: Option<String>,
        avatar: Option<String>,
        #[serde(alias = "lastSeen")]
        last_seen_at: Option<Millis>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TsTyping {
        agent_id: String,
        channel_id: Option<String>,
        thread_id: Option<String>,
    }

    let data = object.remove("data").unwrap_or(Value::Null);
    if type_name == "presence.update" {
        let p: TsPresence = serde_json::from_value(data)?;
        return Ok(ChannelEvent::Presence {
            channel_id: p.channel_id.unwrap_or(channel_id),
            presence: Presence {
                agent_id: p.agent_id,
                status: p.status,
                custom_status: p.custom_status,
                avatar: p.avatar,
                last_seen: p.last_seen_at.unwrap_or_else(now_millis),
            },
        });
    }
    let typing: TsTyping = serde_json::from_value(data)?;
    Ok(ChannelEvent::Typing {
        channel_id: typing.channel_id.unwrap_or(channel_id),
        agent_id: typing.agent_id,
        started: object
            .get("isTyping")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        thread_id: typing.thread_id,
    })
}

/// The envelope every bridge publishes on `pubsub:channel:{id}`:
/// `{"event":{"type":..},"timestamp":..,"channelId":..,"senderId":..,"origin":..}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<'a> {
    pub event: &'a ChannelEvent,
    pub timestamp: Millis,
    pub channel_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<&'a str>,
}

impl<'a> Envelope<'a> {
    pub fn new(event: &'a ChannelEvent, timestamp: Millis) -> Self {
        Self {
            channel_id: event.channel_id(),
            sender_id: event.actor(),
            event,
            timestamp,
            origin: None,
        }
    }

    pub fn with_origin(mut self, origin: &'a str) -> Self {
        self.origin = Some(origin);
        self
    }

    /// Compact JSON, as `JSON.stringify` writes it.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl AgentEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> Source {
        Source::Channel("C".into())
    }

    #[test]
    fn spec_envelope_example_round_trips_byte_exact() {
        let wire = r#"{"event":{"type":"channel.message","channelId":"C","message":{"id":"m1","content":"hi","senderId":"external:telegram:123","timestamp":1708554000003,"authorId":"external:telegram:123","authorType":"external","authorName":"Ann","createdAt":1708554000003,"externalPlatform":"telegram","externalSourceId":"-100:7"}},"timestamp":1708554000003,"channelId":"C","senderId":"external:telegram:123"}"#;
        let inbound = parse(&channel(), wire.as_bytes()).expect("parses");
        let HubEvent::Channel(event) = &inbound.event else {
            panic!("not a channel event: {inbound:?}");
        };
        assert_eq!(Envelope::new(event, 1708554000003).to_json(), wire);
    }

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
    fn agent_event_example_round_trips_byte_exact() {
        let wire = r#"{"type":"agent.direct_message","data":{"fromAgent":"external:telegram:123","content":"hi"},"timestamp":1708554000000}"#;
        let inbound = parse(&Source::Agent("a".into()), wire.as_bytes()).unwrap();
        let HubEvent::Agent(event) = inbound.event else {
            panic!("not an agent event");
        };
        assert_eq!(event.kind, AgentEventKind::DirectMessage);
        assert_eq!(event.to_json(), wire);
    }

    #[test]
    fn global_event_parses() {
        let wire =
            r#"{"type":"system.announcement","data":{"message":"deploy at 5","severity":"info"}}"#;
        let inbound = parse(&Source::Global, wire.as_bytes()).unwrap();
        let HubEvent::Global(event) = inbound.event else {
            panic!("not global");
        };
        assert_eq!(event.data.message.as_deref(), Some("deploy at 5"));
        assert_eq!(serde_json::to_string(&event).unwrap(), wire);
    }

    #[test]
    fn bare_message_with_author_convention_parses() {
        let wire = r#"{"type":"channel.message","message":{"id":"m","content":"hi","authorId":"a","createdAt":7}}"#;
        let inbound = parse(&channel(), wire.as_bytes()).unwrap();
        let HubEvent::Channel(ChannelEvent::Message {
            channel_id,
            message,
        }) = inbound.event
        else {
            panic!("not a message");
        };
        assert_eq!(channel_id, "C");
        assert_eq!(message.sender_id, "a");
        assert_eq!(message.timestamp, 7);
    }

    #[test]
    fn typescript_presence_and_typing_shapes_parse() {
        let presence = r#"{"type":"presence.update","data":{"agentId":"a","channelId":"C","status":"busy","lastSeenAt":9},"timestamp":9}"#;
        let inbound = parse(&channel(), presence.as_bytes()).unwrap();
        let HubEvent::Channel(ChannelEvent::Presence { presence, .. }) = inbound.event else {
            panic!("not presence");
        };
        assert_eq!(presence.status, PresenceStatus::Dnd);
        assert_eq!(presence.last_seen, 9);

        let typing = r#"{"type":"typing.update","data":{"agentId":"a","channelId":"C","startedAt":9},"isTyping":false,"timestamp":9}"#;
        let inbound = parse(&channel(), typing.as_bytes()).unwrap();
        assert_eq!(
            inbound.event,
            HubEvent::Channel(ChannelEvent::Typing {
                channel_id: "C".into(),
                agent_id: "a".into(),
                started: false,
                thread_id: None
            })
        );
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

    #[test]
    fn unknown_types_and_fields_are_kept_as_unknown_or_ignored() {
        let unknown = parse(&channel(), br#"{"type":"channel.pin","x":1}"#).unwrap();
        assert_eq!(
            unknown.event,
            HubEvent::Unknown {
                type_name: "channel.pin".into()
            }
        );
        let extra = parse(
            &channel(),
            br#"{"type":"channel.typing","agentId":"a","started":true,"mood":"ok"}"#,
        )
        .unwrap();
        assert_eq!(extra.event.type_name(), "channel.typing");
        let unknown_agent = parse(&Source::Agent("a".into()), br#"{"type":"agent.poke"}"#).unwrap();
        assert!(matches!(unknown_agent.event, HubEvent::Unknown { .. }));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let long = format!(
            r#"{{"type":"channel.message","message":{{"id":"{}"}}}}"#,
            "x".repeat(1 << 20)
        );
        let inputs: Vec<&[u8]> = vec![
            b"test",
            b"",
            b"{",
            br#"{"type":"channel.message","message":"#,
            b"[1,2,3]",
            b"null",
            br#"{"type":7}"#,
            br#"{"no":"type"}"#,
            br#"{"type":"channel.message","message":{"content":"no id or sender"}}"#,
            br#"{"type":"channel.typing","agentId":5,"started":"yes"}"#,
            br#"{"type":"channel.presence","presence":{"agentId":"a","status":"sleepy"}}"#,
            b"\xff\xfe\x00",
            long.as_bytes(),
        ];
        for input in inputs {
            assert!(
                parse(&channel(), input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn emission_omits_absent_optionals_and_puts_type_first() {
        let event = ChannelEvent::Typing {
            channel_id: "C".into(),
            agent_id: "a".into(),
            started: true,
            thread_id: None,
        };
        let json = Envelope::new(&event, 1).to_json();
        assert_eq!(
            json,
            r#"{"event":{"type":"channel.typing","channelId":"C","agentId":"a","started":true},"timestamp":1,"channelId":"C","senderId":"a"}"#
        );
        assert!(!json.contains("null"));
    }

    #[test]
    fn sources_classify_channel_names() {
        assert_eq!(
            Source::from_channel("pubsub:channel:X"),
            Some(Source::Channel("X".into()))
        );
        assert_eq!(
            Source::from_channel("pubsub:agent:external:telegram:1"),
            Some(Source::Agent("external:telegram:1".into()))
        );
        assert_eq!(Source::from_channel("pubsub:global"), Some(Source::Global));
        assert_eq!(Source::from_channel("pubsub:channel:"), None);
        assert_eq!(Source::from_channel("other"), None);
    }

    #[test]
    fn ids_that_break_the_key_layout_are_refused() {
        let refused: [(&[u8], &str); 6] = [
            (
                br#"{"type":"channel.member.join","channelId":"X:members","member":{"agentId":"a"}}"#,
                "channelId",
            ),
            (
                br#"{"type":"channel.message","channelId":"C","message":{"id":"m:1","senderId":"a"}}"#,
                "message.id",
            ),
            (
                br#"{"type":"channel.message","channelId":"C","message":{"id":"m","senderId":"a b"}}"#,
                "message.senderId",
            ),
            (
                br#"{"type":"channel.reaction.add","channelId":"C","messageId":"m","emoji":"x","agentId":""}"#,
                "agentId",
            ),
            (
                br#"{"type":"presence.update","data":{"agentId":"a\u0000","status":"online"}}"#,
                "agentId",
            ),
            (
                br#"{"type":"thread.update","channelId":"C","threadId":"t\nx"}"#,
                "threadId",
            ),
        ];
        for (payload, bad_field) in refused {
            match parse(&channel(), payload) {
                Err(ParseError::BadId { field, .. }) => assert_eq!(field, bad_field),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(payload)),
            }
        }
        let to_agent = parse(
            &Source::Agent("a".into()),
            br#"{"type":"agent.direct_message","data":{"fromAgent":"x y","content":"hi"}}"#,
        );
        assert!(matches!(
            to_agent,
            Err(ParseError::BadId {
                field: "fromAgent",
                ..
            })
        ));
        // The shapes in use still parse: UUIDs, people, a thread without a known parent.
        let accepted: [&[u8]; 3] = [
            br#"{"type":"channel.message","channelId":"9f3c2a1d-5e8f-4b6a-9c1e-2a3b4c5d6e7f","message":{"id":"0b8e6a4e-4c1f-4a57-9d1e-2f3a4b5c6d7e","senderId":"external:telegram:123"}}"#,
            br#"{"type":"thread.create","channelId":"C","thread":{"id":"t","parentMessageId":""}}"#,
            br#"{"type":"channel.archive","channelId":"C"}"#,
        ];
        for payload in accepted {
            assert!(
                parse(&channel(), payload).is_ok(),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}

/// Property tests: the parser is the first thing untrusted payloads meet.
#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::ids::{check_agent_id, check_key_id};

    const AGENT_TYPES: [&str; 4] = [
        "agent.direct_message",
        "agent.notification",
        "agent.command",
        "agent.invite",
    ];
    const GLOBAL_TYPES: [&str; 7] = [
        "system.announcement",
        "system.maintenance",
        "system.shutdown",
        "system.performance.alert",
        "auth.token.revoked",
        "agent.joined",
        "agent.left",
    ];
    /// Field names the event types use, so generated objects often come close to real events.
    const FIELDS: [&str; 34] = [
        "channelId",
        "message",
        "id",
        "content",
        "senderId",
        "authorId",
        "timestamp",
        "createdAt",
        "messageId",
        "emoji",
        "agentId",
        "started",
        "threadId",
        "presence",
        "status",
        "member",
        "joinedAt",
        "role",
        "channel",
        "thread",
        "parentMessageId",
        "event",
        "data",
        "fromAgent",
        "isTyping",
        "lastSeen",
        "editedAt",
        "deletedAt",
        "archivedBy",
        "deletedBy",
        "createdBy",
        "contentBlocks",
        "reactions",
        "leftAt",
    ];

    fn type_name() -> impl Strategy<Value = String> {
        let known: Vec<&'static str> = CHANNEL_EVENT_TYPES
            .iter()
            .chain(&AGENT_TYPES)
            .chain(&GLOBAL_TYPES)
            .chain(&["presence.update", "typing.update"])
            .copied()
            .collect();
        prop_oneof![
            4 => proptest::sample::select(known).prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    /// Strings that are often ids, good or bad.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9-]{1,12}",
            Just("C".to_owned()),
            Just("X:members".to_owned()),
            Just(String::new()),
            Just("a b".to_owned()),
            Just("external:telegram:-100123".to_owned()),
            Just("online".to_owned()),
            "\\PC{0,20}",
            any::<String>(),
            Just("x".repeat(200)),
        ]
    }

    fn json(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(depth, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((field(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    /// Well-formed events of the common types whose ids are drawn from [`text`], so the parser
    /// accepts many of them and the id rules are what decides.
    fn templated() -> impl Strategy<Value = Value> {
        (0..6usize, text(), text(), text(), text()).prop_map(|(kind, channel, a, b, c)| {
            use serde_json::json;
            match kind {
                0 => json!({"type": "channel.message", "channelId": channel,
                            "message": {"id": a, "senderId": b, "content": c, "threadId": c}}),
                1 => json!({"type": "channel.reaction.add", "channelId": channel,
                            "messageId": a, "emoji": c, "agentId": b}),
                2 => json!({"type": "channel.typing", "channelId": channel, "agentId": a,
                            "started": true, "threadId": b}),
                3 => json!({"type": "presence.update",
                            "data": {"agentId": a, "channelId": channel, "status": "online"}}),
                4 => json!({"type": "agent.direct_message",
                            "data": {"fromAgent": a, "content": c, "channelId": b}}),
                _ => json!({"type": "thread.create", "channelId": channel,
                            "thread": {"id": a, "parentMessageId": b, "createdBy": c}}),
            }
        })
    }

    /// An event-like object with a real (or random) type, maybe in an envelope.
    fn payload() -> impl Strategy<Value = Value> {
        prop_oneof![random_payload(), templated()]
    }

    fn random_payload() -> impl Strategy<Value = Value> {
        (
            type_name(),
            proptest::collection::vec((field(), json(4)), 0..8),
            any::<bool>(),
            text(),
        )
            .prop_map(|(kind, fields, enveloped, channel)| {
                let mut object: Map<String, Value> = fields.into_iter().collect();
                object.insert("type".to_owned(), Value::String(kind));
                if !enveloped {
                    return Value::Object(object);
                }
                serde_json::json!({"event": object, "timestamp": 1, "channelId": channel})
            })
    }

    fn source() -> impl Strategy<Value = Source> {
        prop_oneof![
            text().prop_map(Source::Channel),
            text().prop_map(Source::Agent),
            Just(Source::Global),
        ]
    }

    /// The id rules, checked independently of the parser's own check.
    fn ids_follow_the_rules(source: &Source, event: &HubEvent) {
        match event {
            HubEvent::Channel(event) => {
                assert_eq!(check_key_id(event.channel_id()), Ok(()), "{event:?}");
                match event {
                    ChannelEvent::Message { message, .. }
                    | ChannelEvent::ThreadMessage { message, .. } => {
                        assert_eq!(check_key_id(&message.id), Ok(()));
                        assert_eq!(check_agent_id(&message.sender_id), Ok(()));
                    }
                    ChannelEvent::ReactionAdd {
                        message_id,
                        agent_id,
                        ..
                    }
                    | ChannelEvent::ReactionRemove {
                        message_id,
                        agent_id,
                        ..
                    } => {
                        assert_eq!(check_key_id(message_id), Ok(()));
                        assert_eq!(check_agent_id(agent_id), Ok(()));
                    }
                    ChannelEvent::MessageEdit { message_id, .. }
                    | ChannelEvent::MessageDelete { message_id, .. } => {
                        assert_eq!(check_key_id(message_id), Ok(()));
                    }
                    ChannelEvent::Typing { agent_id, .. } => {
                        assert_eq!(check_agent_id(agent_id), Ok(()));
                    }
                    ChannelEvent::Presence { presence, .. } => {
                        assert_eq!(check_agent_id(&presence.agent_id), Ok(()));
                    }
                    _ => {}
                }
            }
            HubEvent::Agent(event) => {
                if let Source::Agent(recipient) = source {
                    assert_eq!(check_agent_id(recipient), Ok(()));
                }
                if let Some(from) = &event.data.from_agent {
                    assert_eq!(check_agent_id(from), Ok(()));
                }
            }
            HubEvent::Global(_) | HubEvent::Unknown { .. } => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(source in source(), bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&source, &bytes);
        }

        #[test]
        fn event_like_json_never_panics_and_accepted_ids_follow_the_rules(
            source in source(),
            payload in payload(),
        ) {
            let bytes = serde_json::to_vec(&payload).unwrap();
            if let Ok(inbound) = parse(&source, &bytes) {
                ids_follow_the_rules(&source, &inbound.event);
            }
        }

        #[test]
        fn truncated_json_never_panics(source in source(), payload in payload(), cut in any::<prop::sample::Index>()) {
            let bytes = serde_json::to_vec(&payload).unwrap();
            let end = cut.index(bytes.len() + 1);
            let _ = parse(&source, &bytes[..end]);
        }
    }
}
