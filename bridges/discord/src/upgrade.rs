//! Jobs the previous release left in the outboxes, in its own shape (`{"kind": .., "event_type":
//! .., "hub_channel": .., "agent_id": ..}`), read into the relay engine's jobs, so that an upgrade
//! in the middle of a backlog loses nothing. The outboxes' names (a channel id, `dm:{userId}`),
//! the message map, `in_thread` and `own` keys are the same in both releases; the previous
//! release's thread map and stopped links are read through
//! [`Connector::legacy_thread_key`](hub_bridge_sdk::relay::Connector::legacy_thread_key) and
//! [`Connector::legacy_stopped_key`](hub_bridge_sdk::relay::Connector::legacy_stopped_key).

use hub_bridge_sdk::relay::job::{self, About, Action, SendProgress};
use hub_bridge_sdk::relay::{thread_name, Author, Job, Look, PartId, ThreadRef};
use hub_bridge_sdk::text::discord::sanitize_webhook_username;
use serde::Deserialize;
use serde_json::Value;

use crate::connector::DiscordPart;
use crate::format;

#[derive(Deserialize)]
struct OldJob {
    kind: Value,
    event_type: String,
    #[serde(default)]
    hub_channel: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
}

#[derive(Deserialize)]
enum OldKind {
    Post(Box<OldPost>),
    Edit {
        link: OldLink,
        hub_id: String,
        text: String,
    },
    Delete {
        link: OldLink,
        hub_id: String,
    },
    React {
        link: OldLink,
        hub_id: String,
        emoji: String,
        add: bool,
    },
    Typing {},
    CreateThread {
        link: OldLink,
        hub_thread: String,
        parent_hub: String,
    },
    Text {
        parts: Vec<String>,
        mention: Option<u64>,
        sent: usize,
    },
}

#[derive(Deserialize)]
struct OldLink {
    hub_channel: String,
}

#[derive(Deserialize)]
struct OldPost {
    link: OldLink,
    hub_id: String,
    #[serde(default)]
    person: bool,
    name: String,
    avatar_url: Option<String>,
    text: String,
    reply_to: Option<String>,
    hub_thread: Option<String>,
    plan: Option<OldPlan>,
    #[serde(default)]
    sent: Vec<String>,
}

/// What a post had turned into: its parts (header included), where, and what they answer.
#[derive(Deserialize)]
struct OldPlan {
    parts: Vec<String>,
    thread: Option<u64>,
    reference: Option<u64>,
    #[serde(default)]
    ping: Option<u64>,
}

/// Reads a job of the previous release. A post that had started goes on from its next part (the
/// previous release mapped every part as it was posted); edits and deletes start over (both are
/// idempotent); a typing indicator that waited in the backlog is stale and does nothing.
pub fn job(stored: Value) -> Option<Job<DiscordPart>> {
    let old: OldJob = serde_json::from_value(stored).ok()?;
    let kind: OldKind = serde_json::from_value(old.kind.clone()).ok()?;
    let about = About {
        event_type: old.event_type,
        agent_id: old.agent_id,
        channel_id: old.hub_channel,
        payload: old.kind,
        received_at: None,
    };
    let action = match kind {
        OldKind::Post(post) => Action::Send(Box::new(send(*post))),
        OldKind::Edit { link, hub_id, text } => Action::Edit(job::Edit {
            hub_channel: link.hub_channel,
            hub_message_id: hub_id,
            text,
            progress: None,
            streaming: false,
        }),
        OldKind::Delete { link, hub_id } => Action::Delete(job::Delete {
            hub_channel: link.hub_channel,
            hub_message_id: hub_id,
            progress: None,
        }),
        OldKind::React {
            link,
            hub_id,
            emoji,
            add,
        } => Action::React(job::React {
            hub_channel: link.hub_channel,
            hub_message_id: hub_id,
            // The previous release kept no agent per reaction; the job's agent is the one whose
            // event it was (none for a person's).
            agent_id: about.agent_id.clone().unwrap_or_default(),
            emoji,
            add,
        }),
        OldKind::Typing {} => nothing(),
        OldKind::CreateThread {
            link,
            hub_thread,
            parent_hub,
        } => Action::OpenThread(job::OpenThread {
            hub_channel: link.hub_channel,
            thread_id: hub_thread,
            parent: parent_hub,
        }),
        OldKind::Text {
            parts,
            mention,
            sent,
        } => Action::Notice(job::Notice {
            text: parts.concat(),
            mention: mention.map(|user| user.to_string()),
            parts: Some(
                parts
                    .into_iter()
                    .map(|content| DiscordPart {
                        ping: mention,
                        ..DiscordPart::text(content)
                    })
                    .collect(),
            ),
            sent,
        }),
    };
    Some(Job { about, action })
}

/// A job that does nothing (a stale typing indicator): a notice without parts.
fn nothing() -> Action<DiscordPart> {
    Action::Notice(job::Notice {
        text: String::new(),
        mention: None,
        parts: Some(Vec::new()),
        sent: 0,
    })
}

fn send(post: OldPost) -> job::Send<DiscordPart> {
    let author = Author {
        name: post.name,
        avatar: None,
        avatar_url: post.avatar_url,
        person: post.person,
    };
    let username = if post.person {
        format::person_username(&author.name)
    } else {
        sanitize_webhook_username(&author.name)
    };
    let progress = post.plan.map(|plan| SendProgress {
        thread: plan.thread.map(|thread| ThreadRef(thread.to_string())),
        reply_to: plan.reference.map(|parent| PartId(parent.to_string())),
        done: post.sent.len().min(plan.parts.len()),
        // The previous release mapped each part as it posted it.
        recorded: post.sent.len(),
        parts: plan
            .parts
            .into_iter()
            .map(|content| DiscordPart {
                username: Some(username.clone()),
                avatar_url: author.avatar_url.clone(),
                ping: plan.ping.filter(|_| !post.person),
                person: post.person,
                ..DiscordPart::text(content)
            })
            .collect(),
        shown: post.sent.into_iter().map(PartId).collect(),
        // The previous release listed files in the text.
        uploads: Vec::new(),
        uploaded: 0,
        caption: false,
    });
    job::Send {
        hub_channel: Some(post.link.hub_channel),
        hub_message_id: Some(post.hub_id),
        look: Look {
            author: Some(author),
            blocks: Vec::new(),
            topic_name: Some(thread_name(Some(&post.text))),
            thread_id: post.hub_thread.clone(),
            // Unknown for a post already planned: its edits read it back from Discord.
            header: None,
            file_parts: Vec::new(),
        },
        text: post.text,
        reply_to: post.reply_to,
        thread_id: post.hub_thread,
        progress,
        streaming: false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn old(kind: Value) -> Value {
        json!({"kind": kind, "event_type": "channel.message", "hub_channel": "H",
               "agent_id": "ada"})
    }

    #[test]
    fn every_kind_of_job_the_previous_release_stored_is_read() {
        let link = json!({"hub_channel": "H", "discord_channel": 42});
        let stored = [
            json!({"Post": {"link": link, "hub_id": "m1", "person": false, "name": "Ada",
                "avatar_url": null, "text": "hi", "reply_to": null, "hub_thread": null,
                "plan": null, "sent": []}}),
            json!({"Edit": {"link": link, "hub_id": "m1", "text": "hey", "progress": null}}),
            json!({"Delete": {"link": link, "hub_id": "m1", "progress": null}}),
            json!({"React": {"link": link, "hub_id": "m1", "emoji": "👍", "add": true}}),
            json!({"Typing": {"link": link, "hub_thread": null}}),
            json!({"CreateThread": {"link": link, "hub_thread": "t1", "parent_hub": "m1"}}),
            json!({"Text": {"parts": ["a", "b"], "mention": 7, "sent": 1}}),
        ];
        let mut actions = Vec::new();
        for kind in stored {
            let read = job(old(kind.clone())).unwrap_or_else(|| panic!("not read: {kind}"));
            assert_eq!(read.about.channel_id.as_deref(), Some("H"));
            assert_eq!(read.about.agent_id.as_deref(), Some("ada"));
            assert_eq!(read.about.event_type, "channel.message");
            actions.push(read.action);
        }
        let [Action::Send(send), Action::Edit(edit), Action::Delete(delete), Action::React(react), Action::Notice(typing), Action::OpenThread(open), Action::Notice(text)] =
            &actions[..]
        else {
            panic!("each kind is read as its action");
        };
        assert_eq!(send.hub_channel.as_deref(), Some("H"));
        assert_eq!(send.hub_message_id.as_deref(), Some("m1"));
        assert_eq!(send.text, "hi");
        assert!(send.progress.is_none(), "an unplanned post starts over");
        assert_eq!(
            send.look.author.as_ref().map(|a| a.name.as_str()),
            Some("Ada")
        );
        assert_eq!(
            (edit.hub_message_id.as_str(), edit.text.as_str()),
            ("m1", "hey")
        );
        assert_eq!(delete.hub_channel, "H");
        assert_eq!(
            (react.emoji.as_str(), react.add, react.agent_id.as_str()),
            ("👍", true, "ada")
        );
        assert_eq!(
            typing.parts.as_ref().map(Vec::len),
            Some(0),
            "typing does nothing"
        );
        assert_eq!(
            (open.thread_id.as_str(), open.parent.as_str()),
            ("t1", "m1")
        );
        assert_eq!(text.sent, 1);
        assert_eq!(text.mention.as_deref(), Some("7"));
        let parts = text.parts.as_ref().expect("the parts are kept");
        assert_eq!(parts[1].content, "b");
        assert_eq!(parts[1].ping, Some(7));
        assert!(job(json!({"about": {}, "action": {}})).is_none());
    }

    #[test]
    fn a_post_half_sent_goes_on_from_its_next_part() {
        let post = json!({"Post": {"link": {"hub_channel": "H", "discord_channel": 42},
            "hub_id": "m1", "person": true, "name": "Bob (Telegram)", "avatar_url": null,
            "text": "long", "reply_to": "m0", "hub_thread": "t1",
            "plan": {"parts": ["**Bob (Telegram)**: lo", "ng"], "channel": 43, "thread": 43,
                     "reference": 5, "ping": 9},
            "sent": ["100"]}});
        let Some(Job {
            action: Action::Send(send),
            ..
        }) = job(old(post))
        else {
            panic!("a post is read as a send");
        };
        let progress = send.progress.expect("the plan is kept");
        assert_eq!(progress.done, 1);
        assert_eq!(progress.shown, vec![PartId("100".into())]);
        assert_eq!(progress.thread, Some(ThreadRef("43".into())));
        assert_eq!(progress.reply_to, Some(PartId("5".into())));
        assert_eq!(progress.parts[1].content, "ng");
        assert_eq!(progress.parts[1].ping, None, "a person pings nobody");
        assert!(progress.parts[1].person);
        assert_eq!(send.thread_id.as_deref(), Some("t1"));
        assert_eq!(send.reply_to.as_deref(), Some("m0"));
    }
}
