//! The agent-directed events on `pubsub:agent:{agentId}` (direct messages, notifications,
//! commands, invites), in the seed's shape: a `type`, a `data` payload and a timestamp.

use serde::{Deserialize, Serialize};

use super::{now_millis, Millis};

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

pub(super) fn agent_kind_name(kind: AgentEventKind) -> &'static str {
    match kind {
        AgentEventKind::DirectMessage => "agent.direct_message",
        AgentEventKind::Notification => "agent.notification",
        AgentEventKind::Command => "agent.command",
        AgentEventKind::Invite => "agent.invite",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse, HubEvent, Source};

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
}
