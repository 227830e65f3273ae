//! Property tests: the parser is the first thing untrusted payloads meet.

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
