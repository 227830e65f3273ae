//! The id checks of parsing: every id an event carries that the service puts into a key or hands
//! to a platform must follow the rules of [`crate::ids`], or the event is refused before anything
//! uses it (a channel id `X:members` would make its keys collide with another channel's).

use super::{ChannelEvent, ChannelMessage, HubEvent, Source};
use crate::ids::{check_agent_id, check_key_id, IdError};

/// Which id broke the rules, and how.
pub(super) type BadId = (&'static str, IdError);

/// Checks every id of an event that the service puts into keys or hands to a platform.
pub(super) fn check_ids(source: &Source, event: &HubEvent) -> Result<(), BadId> {
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

#[cfg(test)]
mod tests {
    use crate::event::tests::channel;
    use crate::event::{parse, ParseError, Source};

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
