//! Jobs the previous release left in the outboxes, in its own shape (`{"relay": .., "action":
//! ..}`), read into the relay engine's jobs, so that an upgrade in the middle of a backlog loses
//! nothing. Its keys (message map, looks, topics, reactions, stopped links, offset) were kept as
//! they were, so only the jobs need reading.

use hub_bridge_sdk::relay::job::{self, About, Action};
use hub_bridge_sdk::relay::{Job, Look};
use serde::Deserialize;
use serde_json::Value;

use crate::connector::TelegramPart;
use crate::render::Part;

#[derive(Deserialize)]
struct OldJob {
    relay: OldRelay,
    action: OldAction,
}

#[derive(Deserialize)]
struct OldRelay {
    event_type: String,
    agent_id: Option<String>,
    channel_id: Option<String>,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
enum OldAction {
    Send(Box<OldSend>),
    Edit {
        hub_message_id: String,
        content: String,
    },
    Delete {
        hub_message_id: String,
    },
    React {
        hub_message_id: String,
        agent_id: String,
        emoji: String,
        add: bool,
    },
    Notice {
        parts: Vec<Part>,
        sent: usize,
    },
    Topic {
        thread_id: String,
        parent: String,
    },
}

#[derive(Deserialize)]
struct OldSend {
    hub_message_id: Option<String>,
    #[serde(default)]
    look: Look,
    content: String,
    reply_to: Option<String>,
    thread_id: Option<String>,
    #[serde(default)]
    sent: Vec<i32>,
}

/// Reads a job of the previous release. Edits and deletes start over (both are idempotent); a
/// send that had shown some of its parts before the upgrade is sent again whole, which can show
/// those parts twice (the previous release mapped a message only once every part was out).
pub fn job(stored: Value) -> Option<Job<TelegramPart>> {
    let old: OldJob = serde_json::from_value(stored).ok()?;
    let channel = old.relay.channel_id.clone();
    let about = About {
        event_type: old.relay.event_type,
        agent_id: old.relay.agent_id,
        channel_id: old.relay.channel_id,
        payload: old.relay.payload,
        received_at: None,
    };
    let action = match old.action {
        OldAction::Send(send) => {
            if !send.sent.is_empty() {
                tracing::warn!(
                    parts_shown = send.sent.len(),
                    "a message half sent before the upgrade is sent again whole"
                );
            }
            Action::Send(Box::new(job::Send {
                hub_channel: channel,
                hub_message_id: send.hub_message_id,
                look: send.look,
                text: send.content,
                reply_to: send.reply_to,
                thread_id: send.thread_id,
                progress: None,
                streaming: false,
            }))
        }
        OldAction::Edit {
            hub_message_id,
            content,
        } => Action::Edit(job::Edit {
            hub_channel: channel?,
            hub_message_id,
            text: content,
            progress: None,
            streaming: false,
        }),
        OldAction::Delete { hub_message_id } => Action::Delete(job::Delete {
            hub_channel: channel?,
            hub_message_id,
            progress: None,
        }),
        OldAction::React {
            hub_message_id,
            agent_id,
            emoji,
            add,
        } => Action::React(job::React {
            hub_channel: channel?,
            hub_message_id,
            agent_id,
            emoji,
            add,
        }),
        OldAction::Notice { parts, sent } => Action::Notice(job::Notice {
            text: parts.iter().map(|part| part.plain.as_str()).collect(),
            mention: None,
            parts: Some(
                parts
                    .into_iter()
                    .map(|part| TelegramPart {
                        part,
                        fallback: None,
                    })
                    .collect(),
            ),
            sent,
        }),
        OldAction::Topic { thread_id, parent } => Action::OpenThread(job::OpenThread {
            hub_channel: channel?,
            thread_id,
            parent,
        }),
    };
    Some(Job { about, action })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_kind_of_job_the_previous_release_stored_is_read() {
        let relay = json!({"event_type": "channel.message", "agent_id": "ada",
                           "channel_id": "C", "payload": {}});
        let stored = [
            json!({"relay": relay, "action": {"Send": {"hub_message_id": "m1",
                "look": {"author": {"name": "Ada", "avatar": "🤖"}}, "content": "hi",
                "reply_to": null, "thread_id": null, "sent": []}}}),
            json!({"relay": relay, "action": {"Edit": {"hub_message_id": "m1",
                "content": "hey", "progress": null}}}),
            json!({"relay": relay, "action": {"Delete": {"hub_message_id": "m1",
                "parts": ["5"], "done": 0}}}),
            json!({"relay": relay, "action": {"React": {"hub_message_id": "m1",
                "agent_id": "ada", "emoji": "👍", "add": true}}}),
            json!({"relay": relay, "action": {"Notice": {"parts": [{"html": "a", "plain": "a"}],
                "sent": 0}}}),
            json!({"relay": relay, "action": {"Topic": {"thread_id": "t1", "parent": "m1",
                "topic": null}}}),
        ];
        for value in stored {
            let read = job(value.clone()).unwrap_or_else(|| panic!("not read: {value}"));
            assert_eq!(read.about.channel_id.as_deref(), Some("C"));
        }
        let Some(Job {
            action: Action::Send(send),
            ..
        }) = job(
            json!({"relay": relay, "action": {"Send": {"hub_message_id": "m1",
            "look": {"author": {"name": "Ada", "avatar": "🤖"}}, "content": "hi",
            "reply_to": "m0", "thread_id": null, "sent": []}}}),
        )
        else {
            panic!("a send is read as a send");
        };
        assert_eq!(send.hub_channel.as_deref(), Some("C"));
        assert_eq!(send.reply_to.as_deref(), Some("m0"));
        assert_eq!(
            send.look.author.map(|a| a.avatar),
            Some(Some("🤖".to_owned()))
        );
        assert!(job(json!({"about": {}, "action": {}})).is_none());
    }
}
