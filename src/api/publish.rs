//! `POST /v1/events` (and WebSocket frames, which publish the same way): turns an agent's body
//! into the hub payload it publishes, with the sender forced to the token's agent.
//!
//! The body is a hub event as SPEC section 2 describes it (envelope or bare event). The service
//! fills what a `channel.message` may omit (`id`, `senderId`, `timestamp`), refuses a body that
//! names another sender (403), reads it with the hub's own parser (so whatever the API accepts the
//! hub loop accepts) and publishes the canonical compact envelope. `agent.*` events go to
//! `pubsub:agent:{to}`. `system.*` events are not the agents' to send.
//!
//! Rate limits: the hub loop counts an agent's relayable actions when it sees the published event
//! and hands it to a bridge (SPEC section 4), whoever published it. The API then only *reads* that
//! counter and answers 429 when the window is already full, so an event is counted once, by the
//! hub loop, whichever way it arrived. A service that runs no bridge has nothing that counts: there
//! the API counts the agent's actions itself.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hub_bridge_sdk::event::{
    parse, AgentEvent, AgentEventKind, ChannelEvent, Envelope, GlobalEventKind, HubEvent, Millis,
    Source,
};
use hub_bridge_sdk::limits::Action;
use hub_bridge_sdk::{ExternalId, Op, Reply};
use serde_json::{json, Map, Value};

use super::{Api, ApiError};

/// The route label of `POST /v1/events` in the metrics.
const ROUTE: &str = "POST /v1/events";

/// The longest channel id accepted in a body or a query.
pub const MAX_CHANNEL_ID: usize = 128;
/// The longest agent id accepted as `to`.
pub const MAX_AGENT_ID: usize = 256;

/// An event ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The pub/sub channel it goes to.
    pub channel: String,
    /// The payload, compact JSON.
    pub payload: String,
    /// What the answer names: the message's (or thread's) id, else a fresh one for this publish.
    pub id: String,
    /// The rate-limited action the hub loop will count for it, if any.
    pub action: Option<Action>,
}

/// `POST /v1/events`.
pub async fn handle(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = match api.authenticate(&headers) {
        Ok(agent) => publish_as(&api, &agent, &body).await,
        Err(error) => Err(error),
    };
    let response = match result {
        Ok(id) => (StatusCode::ACCEPTED, Json(json!({ "id": id }))).into_response(),
        Err(error) => error.into_response(),
    };
    api.metrics.count(ROUTE, response.status());
    response
}

/// Publishes `body` as `agent`'s event and returns its id.
pub async fn publish_as(api: &Api, agent: &str, body: &[u8]) -> Result<String, ApiError> {
    let prepared = prepare(
        agent,
        body,
        hub_bridge_sdk::event::now_millis(),
        api.max_payload_bytes,
    )?;
    if let Some(action) = prepared.action {
        refuse_when_window_full(api, action, agent).await?;
    }
    api.store
        .exec(vec![Op::Publish {
            channel: prepared.channel,
            payload: prepared.payload,
        }])
        .await
        .map_err(|error| {
            tracing::warn!(%error, agent, "agent API could not publish");
            ApiError::Unavailable
        })?;
    Ok(prepared.id)
}

/// 429 when the agent's window for `action` is already full. Reads the counter the hub loop keeps
/// and leaves counting to the hub loop.
async fn refuse_when_window_full(api: &Api, action: Action, agent: &str) -> Result<(), ApiError> {
    let limit = api.limiter.limit(action, agent);
    if limit == 0 {
        return Ok(());
    }
    let key = api.keys.rate_limit(action, agent);
    // Counting (INCR) makes the count include this event; reading leaves it to the hub loop.
    let (first, count_this) = if api.counts_limits {
        (api.limiter.op(action, agent), 1)
    } else {
        (Op::Get { key: key.clone() }, 0)
    };
    let replies = api
        .store
        .exec(vec![first, Op::TtlMillis { key }])
        .await
        .map_err(|error| {
            tracing::warn!(%error, agent, "agent API could not read the rate limit");
            ApiError::Unavailable
        })?;
    let count = replies.first().and_then(Reply::as_int).unwrap_or(0);
    if count - count_this < i64::from(limit) {
        return Ok(());
    }
    let ttl_ms = replies.get(1).and_then(Reply::as_int).unwrap_or(0);
    Err(ApiError::RateLimited {
        action: action.as_str(),
        limit,
        retry_after_secs: retry_after_secs(ttl_ms),
    })
}

/// Whole seconds until the window ends, at least 1 (a key without a TTL ends "now").
pub fn retry_after_secs(ttl_ms: i64) -> u64 {
    let ttl_ms = u64::try_from(ttl_ms).unwrap_or(0);
    ttl_ms.div_ceil(1000).max(1)
}

/// Turns `agent`'s body into the payload to publish (pure: no store, no clock but `now`).
pub fn prepare(
    agent: &str,
    body: &[u8],
    now: Millis,
    max_payload_bytes: usize,
) -> Result<Prepared, ApiError> {
    if body.len() > max_payload_bytes {
        return Err(ApiError::TooLarge {
            max: max_payload_bytes,
        });
    }
    let Body {
        to,
        mut event,
        envelope,
    } = Body::read(body)?;
    if let Some(envelope) = &envelope {
        if let Some(sender) = optional_string(envelope, "senderId")? {
            same_sender(agent, "senderId", &sender)?;
        }
    }
    let timestamp = match &envelope {
        Some(envelope) => optional_int(envelope, "timestamp")?,
        None => None,
    }
    .unwrap_or(now);
    let type_name = match event.get("type") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err(bad("the event has no string `type`")),
    };

    if is_kind::<AgentEventKind>(&type_name) {
        let to = to.ok_or_else(|| {
            bad("an agent.* event needs `to`: the id of the agent (or person) it is for")
        })?;
        check_agent_id(&to)?;
        if event.get("timestamp").is_none() {
            event.insert("timestamp".to_owned(), json!(timestamp));
        }
        return prepare_agent_event(agent, event, &to, max_payload_bytes);
    }
    if is_kind::<GlobalEventKind>(&type_name) {
        return Err(ApiError::Forbidden(format!(
            "`{type_name}` is a system event; agents cannot publish on pubsub:global"
        )));
    }
    if to.is_some() {
        return Err(bad("`to` is only for agent.* events"));
    }
    let channel_id = channel_of(envelope.as_ref(), &event)?;
    check_channel_id(&channel_id)?;
    check_and_fill_sender(agent, &type_name, &mut event)?;
    event.insert("channelId".to_owned(), Value::String(channel_id.clone()));
    let stamped = Stamped {
        agent,
        channel_id: &channel_id,
        timestamp,
        max_payload_bytes,
    };
    prepare_channel_event(event, &type_name, &stamped)
}

/// A body as sent: the recipient of an agent event, the event, and the envelope around it.
struct Body {
    to: Option<String>,
    event: Map<String, Value>,
    envelope: Option<Map<String, Value>>,
}

impl Body {
    fn read(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|error| ApiError::BadRequest(format!("the body is not JSON: {error}")))?;
        let Value::Object(mut outer) = value else {
            return Err(bad(
                "the body must be a JSON object (an envelope or an event)",
            ));
        };
        if outer.contains_key("origin") {
            return Err(bad("`origin` is set by bridges only"));
        }
        let to = match outer.remove("to") {
            None => None,
            Some(Value::String(to)) => Some(to),
            Some(_) => return Err(bad("`to` must be a string")),
        };
        // An envelope wraps the event in `event`; a bare event has `type` itself (and
        // `collaboration.event` has an `event` field of its own, hence the `type` check).
        let is_envelope =
            !outer.contains_key("type") && outer.get("event").is_some_and(Value::is_object);
        if !is_envelope {
            return Ok(Self {
                to,
                event: outer,
                envelope: None,
            });
        }
        let Some(Value::Object(event)) = outer.remove("event") else {
            return Err(bad("`event` must be an object"));
        };
        Ok(Self {
            to,
            event,
            envelope: Some(outer),
        })
    }
}

/// What the service stamps on a channel event it publishes for an agent.
struct Stamped<'a> {
    agent: &'a str,
    channel_id: &'a str,
    timestamp: Millis,
    max_payload_bytes: usize,
}

/// A channel event, its sender checked and filled: parsed as the hub parses it (so that nothing
/// the hub would refuse is published) and put in an envelope from the agent.
fn prepare_channel_event(
    event: Map<String, Value>,
    type_name: &str,
    stamped: &Stamped<'_>,
) -> Result<Prepared, ApiError> {
    let bytes = serde_json::to_vec(&Value::Object(event))
        .map_err(|error| bad(format!("the event cannot be read: {error}")))?;
    let source = Source::Channel(stamped.channel_id.to_owned());
    let inbound =
        parse(&source, &bytes).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let event = match inbound.event {
        HubEvent::Channel(event) => event,
        _ => return Err(bad(format!("unknown event type `{type_name}`"))),
    };
    // Belt and braces: whoever the parsed event says acted must be the agent.
    if let Some(actor) = event.actor() {
        same_sender(stamped.agent, "the event's actor", actor)?;
    }
    let (id, action) = match &event {
        ChannelEvent::Message { message, .. } | ChannelEvent::ThreadMessage { message, .. } => {
            (message.id.clone(), Some(Action::Message))
        }
        ChannelEvent::ReactionAdd { .. } | ChannelEvent::ReactionRemove { .. } => {
            (new_id(), Some(Action::Reaction))
        }
        ChannelEvent::ThreadCreate { thread, .. } => (thread.id.clone(), None),
        _ => (new_id(), None),
    };
    let payload = Envelope {
        event: &event,
        timestamp: stamped.timestamp,
        channel_id: stamped.channel_id,
        sender_id: Some(stamped.agent),
        origin: None,
    }
    .to_json();
    if payload.len() > stamped.max_payload_bytes {
        return Err(ApiError::TooLarge {
            max: stamped.max_payload_bytes,
        });
    }
    Ok(Prepared {
        channel: source.channel_name(),
        payload,
        id,
        action,
    })
}

fn prepare_agent_event(
    agent: &str,
    mut event: Map<String, Value>,
    to: &str,
    max_payload_bytes: usize,
) -> Result<Prepared, ApiError> {
    let data = event
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(data) = data else {
        return Err(bad("`data` must be an object"));
    };
    match data.get("fromAgent") {
        None => {
            data.insert("fromAgent".to_owned(), Value::String(agent.to_owned()));
        }
        Some(Value::String(from)) => same_sender(agent, "data.fromAgent", from)?,
        Some(_) => return Err(bad("`data.fromAgent` must be a string")),
    }
    let event: AgentEvent = serde_json::from_value(Value::Object(event))
        .map_err(|error| bad(format!("the agent event is invalid: {error}")))?;
    let payload = event.to_json();
    if payload.len() > max_payload_bytes {
        return Err(ApiError::TooLarge {
            max: max_payload_bytes,
        });
    }
    // What the hub loop counts: direct messages and invites that go to a person on a platform.
    let action = match event.kind {
        AgentEventKind::DirectMessage if ExternalId::is_external(to) => Some(Action::Message),
        AgentEventKind::Invite if ExternalId::is_external(to) => Some(Action::Invite),
        _ => None,
    };
    Ok(Prepared {
        channel: Source::Agent(to.to_owned()).channel_name(),
        payload,
        id: new_id(),
        action,
    })
}

/// The channel the event is for: `channelId` of the envelope, the event, or (the TypeScript
/// presence and typing shapes) the event's `data`; every one given must agree.
fn channel_of(
    envelope: Option<&Map<String, Value>>,
    event: &Map<String, Value>,
) -> Result<String, ApiError> {
    let data = event.get("data").and_then(Value::as_object);
    let mut found: Option<String> = None;
    for (place, object) in [
        ("envelope", envelope),
        ("event", Some(event)),
        ("data", data),
    ] {
        let Some(object) = object else {
            continue;
        };
        let Some(id) = optional_string(object, "channelId")? else {
            continue;
        };
        match &found {
            Some(known) if *known != id => {
                return Err(bad(format!(
                    "channelId `{id}` in the {place} differs from `{known}`"
                )))
            }
            _ => found = Some(id),
        }
    }
    found.ok_or_else(|| bad("the event has no channelId"))
}

/// Where each channel event names who acted (SPEC section 2), as (object path, field).
fn sender_fields(type_name: &str) -> &'static [(&'static str, &'static str)] {
    match type_name {
        "channel.message" | "thread.message" => &[("message", "senderId"), ("message", "authorId")],
        "channel.reaction.add"
        | "channel.reaction.remove"
        | "channel.typing"
        | "channel.member.leave"
        | "channel.member.update" => &[("", "agentId")],
        "channel.presence" => &[("presence", "agentId")],
        "channel.member.join" => &[("member", "agentId")],
        "presence.update" | "typing.update" => &[("data", "agentId")],
        "channel.archive" => &[("", "archivedBy")],
        "channel.delete" => &[("", "deletedBy")],
        "thread.create" => &[("thread", "createdBy")],
        _ => &[],
    }
}

/// Refuses a body that names another sender, and fills the sender (and a message's id) where
/// the body leaves them out.
fn check_and_fill_sender(
    agent: &str,
    type_name: &str,
    event: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    // An event-level `senderId` or `agentId` is a sender claim whatever the type says.
    for field in ["senderId", "agentId"] {
        if let Some(sender) = optional_string(event, field)? {
            same_sender(agent, field, &sender)?;
        }
    }
    let fields = sender_fields(type_name);
    let mut named = false;
    for (path, field) in fields {
        let object = if path.is_empty() {
            Some(&*event)
        } else {
            event.get(*path).and_then(Value::as_object)
        };
        let Some(object) = object else {
            continue;
        };
        if let Some(sender) = optional_string(object, field)? {
            same_sender(agent, field, &sender)?;
            named = true;
        }
    }
    let Some((path, field)) = fields.first() else {
        return Ok(());
    };
    let object = if path.is_empty() {
        event
    } else {
        match event
            .entry(*path)
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(object) => object,
            _ => return Err(bad(format!("`{path}` must be an object"))),
        }
    };
    if !named {
        object.insert((*field).to_owned(), Value::String(agent.to_owned()));
    }
    if !matches!(type_name, "channel.message" | "thread.message") {
        return Ok(());
    }
    // These say a person on a platform wrote it; only bridges may say so.
    for field in ["externalPlatform", "externalSourceId"] {
        if object.contains_key(field) {
            return Err(ApiError::Forbidden(format!(
                "`message.{field}` is set by bridges only"
            )));
        }
    }
    if object
        .get("authorType")
        .is_some_and(|kind| kind.as_str() != Some("agent"))
    {
        return Err(ApiError::Forbidden(
            "`message.authorType` may only be `agent`".to_owned(),
        ));
    }
    if !object.contains_key("id") {
        object.insert("id".to_owned(), Value::String(new_id()));
    }
    Ok(())
}

fn same_sender(agent: &str, field: &str, named: &str) -> Result<(), ApiError> {
    if named == agent {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "{field} is `{named}`, but the token belongs to `{agent}`; agents publish as themselves"
    )))
}

/// A hub channel id as the API accepts it: 1 to [`MAX_CHANNEL_ID`] characters, no `:` (it would
/// change which pub/sub channel the id names), no whitespace or control characters.
pub fn check_channel_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > MAX_CHANNEL_ID {
        return Err(bad(format!(
            "channel id must be 1 to {MAX_CHANNEL_ID} characters"
        )));
    }
    if id
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            "channel id must not contain `:`, whitespace or control characters",
        ));
    }
    Ok(())
}

/// An agent id as `to` (it may be a person, `external:telegram:123`, so `:` is allowed).
pub fn check_agent_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > MAX_AGENT_ID {
        return Err(bad(format!("`to` must be 1 to {MAX_AGENT_ID} characters")));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "`to` must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

fn optional_string(object: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(bad(format!("`{key}` must be a string"))),
    }
}

fn optional_int(object: &Map<String, Value>, key: &str) -> Result<Option<Millis>, ApiError> {
    match object.get(key) {
        None => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{key}` must be integer milliseconds"))),
    }
}

fn is_kind<K: serde::de::DeserializeOwned>(type_name: &str) -> bool {
    K::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(type_name))
        .is_ok()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest(reason.into())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const AGENT: &str = "backend-architect";
    const NOW: Millis = 1_708_554_000_003;
    const MAX: usize = 1_048_576;

    fn prepare_json(body: Value) -> Result<Prepared, ApiError> {
        prepare(AGENT, body.to_string().as_bytes(), NOW, MAX)
    }

    fn payload(prepared: &Prepared) -> Value {
        serde_json::from_str(&prepared.payload).unwrap()
    }

    #[test]
    fn a_bare_message_gets_id_sender_and_timestamp() {
        let prepared = prepare_json(json!({
            "type": "channel.message", "channelId": "C", "message": {"content": "hi"}
        }))
        .unwrap();
        assert_eq!(prepared.channel, "pubsub:channel:C");
        assert_eq!(prepared.action, Some(Action::Message));
        let sent = payload(&prepared);
        assert_eq!(sent["senderId"], AGENT);
        assert_eq!(sent["channelId"], "C");
        assert_eq!(sent["timestamp"], NOW);
        let message = &sent["event"]["message"];
        assert_eq!(message["id"], prepared.id.as_str());
        assert_eq!(prepared.id.len(), 36);
        assert_eq!(message["senderId"], AGENT);
        assert_eq!(message["authorId"], AGENT);
        assert_eq!(message["content"], "hi");
        assert!(prepared
            .payload
            .starts_with(r#"{"event":{"type":"channel.message""#));
    }

    #[test]
    fn an_envelope_keeps_its_id_and_timestamp() {
        let prepared = prepare_json(json!({
            "event": {"type": "channel.message", "message": {"id": "m1", "content": "hi", "senderId": AGENT}},
            "timestamp": 5, "channelId": "C", "senderId": AGENT
        }))
        .unwrap();
        assert_eq!(prepared.id, "m1");
        assert_eq!(payload(&prepared)["timestamp"], 5);
    }

    #[test]
    fn another_sender_is_forbidden_wherever_it_is_named() {
        let bodies = [
            json!({"type": "channel.message", "channelId": "C", "message": {"content": "x", "senderId": "ceo"}}),
            json!({"type": "channel.message", "channelId": "C", "message": {"content": "x", "authorId": "ceo"}}),
            json!({"type": "channel.message", "channelId": "C", "message": {"content": "x", "senderId": AGENT, "authorId": "ceo"}}),
            json!({"event": {"type": "channel.message", "message": {"content": "x"}}, "channelId": "C", "senderId": "ceo"}),
            json!({"type": "channel.reaction.add", "channelId": "C", "messageId": "m", "emoji": "👍", "agentId": "external:telegram:1"}),
            json!({"type": "typing.update", "data": {"agentId": "ceo", "channelId": "C"}, "isTyping": true}),
            json!({"type": "agent.direct_message", "to": "x", "data": {"fromAgent": "ceo", "content": "hi"}}),
            json!({"type": "channel.message", "channelId": "C", "message": {"content": "x", "authorType": "external"}}),
            json!({"type": "thread.message", "channelId": "C", "threadId": "t", "message": {"content": "x", "externalPlatform": "telegram"}}),
        ];
        for body in bodies {
            let error = prepare_json(body.clone()).unwrap_err();
            assert_eq!(error.status(), StatusCode::FORBIDDEN, "{body}: {error}");
        }
    }

    #[test]
    fn agent_events_go_to_the_recipient_with_the_agent_as_sender() {
        let prepared = prepare_json(json!({
            "type": "agent.direct_message", "to": "external:telegram:42", "data": {"content": "hi"}
        }))
        .unwrap();
        assert_eq!(prepared.channel, "pubsub:agent:external:telegram:42");
        assert_eq!(prepared.action, Some(Action::Message));
        let sent = payload(&prepared);
        assert_eq!(sent["type"], "agent.direct_message");
        assert_eq!(sent["data"]["fromAgent"], AGENT);
        assert_eq!(sent["timestamp"], NOW);
        let to_agent =
            prepare_json(json!({"type": "agent.notification", "to": "other", "data": {}}));
        assert_eq!(to_agent.unwrap().action, None);
    }

    #[test]
    fn malformed_bodies_are_400_with_a_reason() {
        let cases = [
            (json!([1, 2]), "JSON object"),
            (json!({"channelId": "C"}), "type"),
            (
                json!({"type": "channel.message", "message": {"content": "x"}}),
                "channelId",
            ),
            (
                json!({"type": "channel.message", "channelId": "a:b", "message": {}}),
                "`:`",
            ),
            (
                json!({"type": "channel.message", "channelId": "a b", "message": {}}),
                "whitespace",
            ),
            (
                json!({"type": "channel.message", "channelId": "x".repeat(129), "message": {}}),
                "128",
            ),
            (
                json!({"event": {"type": "channel.typing", "channelId": "A"}, "channelId": "B"}),
                "differs",
            ),
            (
                json!({"type": "channel.made.up", "channelId": "C"}),
                "unknown event type",
            ),
            (json!({"type": "agent.direct_message", "data": {}}), "`to`"),
            (
                json!({"type": "channel.typing", "channelId": "C", "to": "x"}),
                "`to`",
            ),
            (
                json!({"type": "channel.message.edit", "channelId": "C"}),
                "invalid",
            ),
            (
                json!({"type": "channel.message", "channelId": "C", "message": {}, "origin": "telegram:1"}),
                "origin",
            ),
        ];
        for (body, reason) in cases {
            let error = prepare_json(body.clone()).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{body}");
            assert!(error.to_string().contains(reason), "{body}: {error}");
        }
        let not_json = prepare(AGENT, b"test", NOW, MAX).unwrap_err();
        assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn system_events_are_forbidden() {
        let error = prepare_json(json!({"type": "system.announcement", "data": {"message": "hi"}}));
        assert_eq!(error.unwrap_err().status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_body_over_the_limit_is_413_even_after_filling() {
        let body = json!({"type": "channel.message", "channelId": "C", "message": {"content": "x".repeat(100)}});
        let raw = body.to_string();
        let error = prepare(AGENT, raw.as_bytes(), NOW, raw.len() - 1).unwrap_err();
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // The body fits, the filled-in envelope does not.
        let error = prepare(AGENT, raw.as_bytes(), NOW, raw.len()).unwrap_err();
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(59_001), 60);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(-1), 1);
        assert_eq!(retry_after_secs(-2), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the body, the answer is a refusal or an event published as the agent that the
        /// hub's parser reads back.
        #[test]
        fn any_body_is_refused_or_published_as_the_agent(
            channel in "[a-zA-Z0-9:_ -]{0,12}",
            sender in prop_oneof![Just(AGENT.to_owned()), "[a-z:]{1,10}"],
            kind in prop_oneof![
                Just("channel.message"), Just("channel.typing"), Just("channel.reaction.add"),
                Just("channel.message.edit"), Just("thread.message"), Just("x.y")
            ],
            envelope in any::<bool>(),
        ) {
            let event = json!({
                "type": kind, "channelId": channel, "agentId": sender, "messageId": "m",
                "emoji": "👍", "started": true, "content": "c", "threadId": "t",
                "message": {"content": "hi", "senderId": sender}
            });
            let body = if envelope {
                json!({"event": event, "channelId": channel, "senderId": sender})
            } else {
                event
            };
            match prepare_json(body) {
                Ok(prepared) => {
                    prop_assert_eq!(&sender, AGENT);
                    let source = Source::from_channel(&prepared.channel).unwrap();
                    let inbound = parse(&source, prepared.payload.as_bytes()).unwrap();
                    prop_assert_eq!(inbound.sender_id.as_deref(), Some(AGENT));
                    prop_assert!(matches!(inbound.event, HubEvent::Channel(_)));
                }
                Err(error) => prop_assert!(matches!(
                    error.status(),
                    StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN
                )),
            }
        }
    }
}
