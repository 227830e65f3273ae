//! The liberal reading of the wire (SPEC section 2): a message in either field convention
//! ([`WireMessage`], which is also how a message is written, with both conventions side by side),
//! the TypeScript client's `presence.update` / `typing.update` shapes, and the small helpers the
//! parser uses to look into a JSON object before it knows the event's type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    now_millis, ChannelEvent, ChannelMessage, ContentBlock, Millis, Presence, PresenceStatus,
};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
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
            metadata: wire.metadata,
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
            metadata: message.metadata,
        }
    }
}

pub(super) fn string_field(object: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_owned)
}

pub(super) fn is_kind<K: serde::de::DeserializeOwned>(type_name: &str) -> bool {
    K::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(type_name))
        .is_ok()
}

/// Maps the TypeScript client's `presence.update` / `typing.update` shapes onto channel events.
pub(super) fn from_typescript_shape(
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

#[cfg(test)]
mod tests {
    use crate::event::tests::channel;
    use crate::event::{parse, ChannelEvent, HubEvent, PresenceStatus};

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
}
