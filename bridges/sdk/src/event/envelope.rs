//! Emission: the envelope every bridge publishes on `pubsub:channel:{id}` and the JSON of an
//! agent event, compact and in the strict shape (camelCase, `type` first, absent optionals
//! omitted).

use serde::Serialize;

use super::{AgentEvent, ChannelEvent, Millis, Origin};

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
    pub origin: Option<&'a Origin>,
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

    pub fn with_origin(mut self, origin: &'a Origin) -> Self {
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
    use crate::event::tests::channel;
    use crate::event::{parse, HubEvent};

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
}
