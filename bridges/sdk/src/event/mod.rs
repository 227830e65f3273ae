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
//!
//! This module owns what every family shares: the timestamp unit, the [`Source`] a payload came
//! from, the [`HubEvent`] it becomes, and the [`parse`] entry. The channel events, the agent and
//! global events, the liberal reading of the wire shapes, the id checks and the emitted envelope
//! each have a submodule; their types are re-exported here, so `event::X` names them all.

mod agent;
mod channel;
mod checks;
mod envelope;
mod global;
mod origin;
#[cfg(test)]
mod props;
mod wire;

use serde_json::Value;

pub use self::agent::{AgentEvent, AgentEventData, AgentEventKind};
pub use self::channel::{
    is_streaming, ChannelEvent, ChannelMessage, Collaboration, ContentBlock, Member, Presence,
    PresenceStatus, Thread,
};
pub use self::envelope::Envelope;
pub use self::global::{GlobalEvent, GlobalEventData, GlobalEventKind};
pub use self::origin::Origin;
pub use self::wire::WireMessage;

use self::agent::agent_kind_name;
use self::channel::CHANNEL_EVENT_TYPES;
use self::checks::check_ids;
use self::global::global_kind_name;
use self::wire::{from_typescript_shape, is_kind, string_field};
use crate::ids::IdError;

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

/// A parsed payload with what its envelope said, if it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub event: HubEvent,
    pub timestamp: Option<Millis>,
    pub sender_id: Option<String>,
    /// Set by bridges on what they publish (`telegram:{chatId}`), so no bridge relays an event
    /// back to the chat it came from.
    pub origin: Option<Origin>,
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
    let origin = string_field(&outer, "origin").map(Origin::from_wire);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The channel most tests read from.
    pub(super) fn channel() -> Source {
        Source::Channel("C".into())
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
}
