//! A hub payload over `hub.max_payload_bytes`: refused unparsed, and its sender, found near either
//! end without parsing, is told.

use hub_bridge_sdk::event::{now_millis, AgentEvent, AgentEventData, AgentEventKind, Source};
use hub_bridge_sdk::{ExternalId, Op};

use super::HubLoop;
use crate::bus::BusMessage;

/// How far into each end of an oversized payload the sender is looked for.
const SENDER_SCAN: usize = 4096;

impl HubLoop {
    /// Refuses a payload over `hub.max_payload_bytes` without parsing it: counts and logs it, and
    /// returns the notice for its sender when the sender can be found near either end of it.
    pub(super) fn refuse_oversized(&self, message: &BusMessage) -> Option<Op> {
        self.count_invalid("too_large");
        let size = message.payload.len();
        let max = self.bounds.max_payload_bytes;
        let sender = sender_hint(&message.payload);
        tracing::warn!(
            channel = %message.channel,
            size,
            max,
            sender = sender.as_deref().unwrap_or("unknown"),
            "hub payload over hub.max_payload_bytes refused"
        );
        // People are limited by their bridge on the way in; only agents are told here.
        let agent = sender.filter(|sender| !ExternalId::is_external(sender))?;
        let channel: String = message.channel.chars().take(200).collect();
        let notice = AgentEvent {
            kind: AgentEventKind::Notification,
            data: AgentEventData {
                from_agent: Some("hub-bridge".to_owned()),
                content: Some(format!(
                    "Not relayed to Telegram/Discord: your event on {channel} is {size} bytes, \
                     over the hub's limit of {max} bytes."
                )),
                channel_id: None,
                action_required: None,
            },
            timestamp: now_millis(),
        };
        Some(Op::Publish {
            channel: Source::Agent(agent).channel_name(),
            payload: notice.to_json(),
        })
    }
}

/// The sender of a payload too large to parse, looked for in its first and last
/// [`SENDER_SCAN`] bytes: the envelope's `senderId` usually ends it, a message's `senderId` or
/// `authorId` is often near one end, an agent event's `fromAgent` too. Quotes inside JSON strings
/// are escaped, so a `"senderId"` found here is a key, not text of the message.
fn sender_hint(payload: &[u8]) -> Option<String> {
    let head = &payload[..payload.len().min(SENDER_SCAN)];
    let tail = &payload[payload.len().saturating_sub(SENDER_SCAN)..];
    ["senderId", "authorId", "fromAgent", "agentId"]
        .into_iter()
        .find_map(|key| string_after_key(tail, key).or_else(|| string_after_key(head, key)))
}

/// The first string value of `"key": "..."` in `window` that is a valid agent id.
fn string_after_key(window: &[u8], key: &str) -> Option<String> {
    let needle = format!("\"{key}\"");
    let needle = needle.as_bytes();
    let skip_space = |bytes: &[u8]| -> usize {
        bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len())
    };
    let mut from = 0;
    while let Some(at) = window[from..]
        .windows(needle.len())
        .position(|candidate| candidate == needle)
    {
        from += at + needle.len();
        let mut rest = &window[from..];
        rest = &rest[skip_space(rest)..];
        let Some(after_colon) = rest.strip_prefix(b":") else {
            continue;
        };
        let value = &after_colon[skip_space(after_colon)..];
        let Some(value) = value.strip_prefix(b"\"") else {
            continue;
        };
        // An escape in an id is not worth decoding: such an id is refused anyway.
        let Some(end) = value.iter().position(|b| *b == b'"' || *b == b'\\') else {
            continue;
        };
        if value[end] != b'"' {
            continue;
        }
        let Ok(id) = std::str::from_utf8(&value[..end]) else {
            continue;
        };
        if hub_bridge_sdk::ids::check_agent_id(id).is_ok() {
            return Some(id.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_of_an_oversized_payload_is_found_near_either_end() {
        let content = "x".repeat(100_000);
        let envelope = format!(
            r#"{{"event":{{"type":"channel.message","channelId":"C","message":{{"id":"m","content":"{content}","senderId":"big-agent"}}}},"timestamp":1,"channelId":"C"}}"#
        );
        assert_eq!(
            sender_hint(envelope.as_bytes()).as_deref(),
            Some("big-agent")
        );
        let leading = format!(r#"{{"senderId" : "first", "content":"{content}"}}"#);
        assert_eq!(sender_hint(leading.as_bytes()).as_deref(), Some("first"));
        let agent_event = format!(
            r#"{{"type":"agent.direct_message","data":{{"fromAgent":"dm-agent","content":"{content}"}}}}"#
        );
        assert_eq!(
            sender_hint(agent_event.as_bytes()).as_deref(),
            Some("dm-agent")
        );
    }

    #[test]
    fn text_inside_strings_and_bad_ids_are_not_senders() {
        let content = "y".repeat(100_000);
        let quoted = format!(r#"{{"content":"say \"senderId\":\"victim\" {content}"}}"#);
        assert_eq!(sender_hint(quoted.as_bytes()), None);
        let middle = format!(r#"{{"a":"{content}","senderId":"hidden","b":"{content}"}}"#);
        assert_eq!(
            sender_hint(middle.as_bytes()),
            None,
            "only the ends are scanned"
        );
        let spaced = format!(r#"{{"senderId":"a b","c":"{content}"}}"#);
        assert_eq!(sender_hint(spaced.as_bytes()), None);
        assert_eq!(sender_hint(b""), None);
        assert_eq!(sender_hint(b"\"senderId\""), None);
    }
}
