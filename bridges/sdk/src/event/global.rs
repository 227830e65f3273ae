//! The system-wide events on `pubsub:global` (announcements, maintenance, shutdown, alerts,
//! revoked tokens, agents joining and leaving), in the seed's shape: a `type` and a `data` payload.

use serde::{Deserialize, Serialize};

use super::Millis;

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

pub(super) fn global_kind_name(kind: GlobalEventKind) -> &'static str {
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

#[cfg(test)]
mod tests {
    use crate::event::{parse, HubEvent, Source};

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
}
