//! Hub -> Telegram: which hub events become which Bot API calls in which chats (SPEC section 5),
//! and the [`Deliver`] implementation the per-chat outboxes run.
//!
//! [`dispatch`] runs on the bridge's delivery loop and never waits on Telegram: it turns a hub
//! event into one [`Job`] per linked chat (skipping the chat the event came from, so nothing is
//! echoed) and queues it in that chat's durable outbox. [`Courier::deliver`] then performs a job in its chat's order, paced under
//! Telegram's limits. A job remembers its progress (parts already sent, edited or deleted), so a
//! retry after a 429 or a network error resumes where it stopped and never duplicates a part.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use hub_bridge_sdk::event::{
    now_millis, AgentEventKind, ChannelEvent, ChannelMessage, ContentBlock, GlobalEventKind,
};
use hub_bridge_sdk::metrics::{retry, BridgeDirection, Direction};
use hub_bridge_sdk::outbox::{Deliver, Outboxes, SendError};
use hub_bridge_sdk::{DeadLetter, Delivery, ExternalId, HubEvent, Op, Platform, Source};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use teloxide::types::{MessageId, ParseMode, ReactionType, ReplyParameters, ThreadId};
use teloxide::RequestError;

use hub_bridge_sdk::text::names::person_name;

use crate::bridge::Shared;
use crate::errors::{classify, is_already_deleted, is_form_error, is_not_modified};
use crate::forums::{topic_key, topic_name, topic_thread_key};
use crate::render::{self, Author, Part};

/// How long the bridge remembers a message's author and a thread's root (as long as the map).
const KEEP: std::time::Duration = hub_bridge_sdk::msgmap::MessageMap::KEEP;

/// One relay to one chat. Serializable, because the outbox keeps it in the store until it is
/// delivered: a restart in the middle of a rate-limited backlog resumes it.
#[derive(Serialize, Deserialize)]
pub struct Job {
    relay: Relay,
    action: Action,
}

/// What a job relays, for metrics and for the dead-letter list.
#[derive(Serialize, Deserialize)]
struct Relay {
    event_type: String,
    /// The agent told when the relay is given up on (none for people and the bridge's notices).
    agent_id: Option<String>,
    channel_id: Option<String>,
    payload: serde_json::Value,
    /// When the hub loop read the event, until the first request for it starts.
    #[serde(skip)]
    received_at: Option<std::time::Instant>,
}

#[derive(Serialize, Deserialize)]
enum Action {
    /// Sends a message (every part), maps the parts to the hub message when it has an id.
    Send(Outgoing),
    /// Re-renders a message and edits, sends or deletes parts as its length changed.
    Edit {
        hub_message_id: String,
        content: String,
        progress: Option<EditProgress>,
    },
    /// Deletes every part of a message.
    Delete {
        hub_message_id: String,
        parts: Option<Vec<String>>,
        done: usize,
    },
    /// Sets the bot's one reaction on a message.
    React {
        hub_message_id: String,
        agent_id: String,
        emoji: String,
        add: bool,
    },
    /// A notice from the bridge itself (plain text).
    Notice { parts: Vec<Part>, sent: usize },
    /// Opens a forum topic for a hub thread if the chat is a forum; queued before the thread's
    /// messages, which then go to the topic instead of replying to the parent.
    Topic {
        thread_id: String,
        parent: String,
        /// The topic once created, so that a retry does not create a second one.
        topic: Option<i32>,
    },
}

/// How a relayed message looks apart from its text: the header and the attachments. Kept in the
/// store so that an edit, which carries only the new text, renders the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Look {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author: Option<Author>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    blocks: Vec<ContentBlock>,
    /// The name of a forum topic opened on this message: an excerpt of its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic_name: Option<String>,
    /// The hub thread the message belongs to, so parts an edit adds go to its forum topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread_id: Option<String>,
}

/// A message to send.
#[derive(Serialize, Deserialize)]
struct Outgoing {
    /// The hub message it shows; none for a direct message.
    hub_message_id: Option<String>,
    look: Look,
    content: String,
    /// The hub message it replies to.
    reply_to: Option<String>,
    thread_id: Option<String>,
    /// The Telegram messages already sent, by id (a part refused for its form and sent as plain
    /// text can take several).
    sent: Vec<i32>,
    /// How many rendered parts are done; absent in jobs stored before a part could take several
    /// messages, where it is the number of messages sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    done: Option<usize>,
    /// The plain-text fallback of the current part: how many of its pieces are sent, once
    /// Telegram refused its HTML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback: Option<usize>,
}

/// Where an edit stands: part `step` of `max(old, new)` is next.
#[derive(Serialize, Deserialize)]
struct EditProgress {
    /// The Telegram messages that showed the message before the edit.
    old: Vec<String>,
    /// The new rendering.
    new: Vec<Part>,
    /// The Telegram messages that show it after the edit, so far.
    ids: Vec<String>,
    step: usize,
    /// The forum topic of the message's thread, where parts the edit adds go.
    #[serde(default)]
    topic: Option<i32>,
}

impl Job {
    /// A notice from the bridge to a chat.
    pub fn notice(text: &str, event_type: &str) -> Self {
        Self {
            relay: Relay {
                event_type: event_type.to_owned(),
                agent_id: None,
                channel_id: None,
                payload: serde_json::Value::String(text.to_owned()),
                received_at: None,
            },
            action: Action::Notice {
                parts: render::notice(text),
                sent: 0,
            },
        }
    }
}

/// The origin a Telegram chat stamps on what it publishes; events carrying it are not relayed
/// back to that chat.
pub fn origin(chat: i64) -> String {
    format!("telegram:{chat}")
}

/// Turns one hub event into jobs for the chats it concerns.
pub async fn dispatch(shared: &Shared, outboxes: &Outboxes<Job>, delivery: &Delivery) {
    match &delivery.inbound.event {
        HubEvent::Channel(event) => channel_event(shared, outboxes, delivery, event).await,
        HubEvent::Agent(event) if event.kind == AgentEventKind::DirectMessage => {
            let Source::Agent(recipient) = &delivery.source else {
                return;
            };
            let Some(person) = ExternalId::parse(recipient) else {
                return;
            };
            if person.platform != Platform::Telegram {
                return;
            }
            let from = event.data.from_agent.clone().unwrap_or_default();
            let relay = Relay {
                event_type: "agent.direct_message".to_owned(),
                agent_id: (!from.is_empty() && !ExternalId::is_external(&from))
                    .then(|| from.clone()),
                channel_id: None,
                payload: serde_json::to_value(event).unwrap_or_default(),
                received_at: Some(delivery.received_at),
            };
            let Some(chat) = person
                .private_chat_user_id()
                .and_then(|id| i64::try_from(id).ok())
            else {
                refuse_direct_message(shared, recipient, relay).await;
                return;
            };
            let job = Job {
                relay,
                action: Action::Send(Outgoing {
                    hub_message_id: None,
                    look: Look {
                        author: Some(author(shared, &from, None)),
                        blocks: Vec::new(),
                        topic_name: None,
                        thread_id: None,
                    },
                    content: event.data.content.clone().unwrap_or_default(),
                    reply_to: None,
                    thread_id: None,
                    sent: Vec::new(),
                    done: None,
                    fallback: None,
                }),
            };
            outboxes.push(&chat.to_string(), job).await;
        }
        HubEvent::Global(event) if event.kind == GlobalEventKind::Announcement => {
            let Some(text) = event.data.message.as_deref() else {
                return;
            };
            let text = format!("📢 {text}");
            for chat in shared.links.active_chats() {
                outboxes
                    .push(&chat.to_string(), Job::notice(&text, "system.announcement"))
                    .await;
            }
        }
        _ => {}
    }
}

/// The private chat of a Telegram user id: a positive number. Groups and channels have negative
/// ids, and a direct message must never reach one (SPEC section 9).
/// A direct message to an id that is not a Telegram user: counted, kept as a dead letter, and
/// the agent told.
async fn refuse_direct_message(shared: &Shared, recipient: &str, relay: Relay) {
    shared
        .hub
        .metrics()
        .count_ignored("telegram", "direct_message_to_non_user");
    let letter = DeadLetter {
        destination: recipient.to_owned(),
        event_type: relay.event_type,
        reason: "direct messages go only to a person's private chat, and this id is not a \
                 Telegram user (groups and channels have negative ids)"
            .to_owned(),
        agent_id: relay.agent_id,
        channel_id: None,
        payload: relay.payload,
        at: now_millis(),
    };
    if let Err(error) = shared.hub.dead_letter("telegram", letter).await {
        tracing::warn!(%error, "could not keep a refused direct message as a dead letter");
    }
}

async fn channel_event(
    shared: &Shared,
    outboxes: &Outboxes<Job>,
    delivery: &Delivery,
    event: &ChannelEvent,
) {
    let channel = event.channel_id();
    let from_chat = delivery.inbound.origin.as_deref();
    let chats: Vec<i64> = shared
        .links
        .chats_of(channel)
        .into_iter()
        .filter(|chat| from_chat != Some(origin(*chat).as_str()))
        .collect();
    if chats.is_empty() {
        return;
    }
    let relay = |agent: Option<&str>| Relay {
        event_type: event.type_name().to_owned(),
        agent_id: agent
            .filter(|id| !id.is_empty() && !ExternalId::is_external(id))
            .map(str::to_owned),
        channel_id: Some(channel.to_owned()),
        payload: serde_json::to_value(event).unwrap_or_default(),
        received_at: Some(delivery.received_at),
    };
    let mut jobs: Vec<(i64, Job)> = Vec::new();
    match event {
        ChannelEvent::Message { message, .. } => {
            for &chat in &chats {
                shared.typing.stop(chat, &message.sender_id);
                jobs.push((
                    chat,
                    send_job(shared, relay(Some(&message.sender_id)), message, None),
                ));
            }
        }
        ChannelEvent::ThreadMessage {
            thread_id, message, ..
        } => {
            for &chat in &chats {
                shared.typing.stop(chat, &message.sender_id);
                let job = send_job(
                    shared,
                    relay(Some(&message.sender_id)),
                    message,
                    Some(thread_id.clone()),
                );
                jobs.push((chat, job));
            }
        }
        ChannelEvent::ThreadCreate { thread, .. } => {
            // Nothing to show yet: remember where the thread hangs, so its messages reply there,
            // and open a topic in forum chats, ahead of the thread's messages.
            let ops = vec![
                Op::Set {
                    key: thread_root_key(shared, &thread.id),
                    value: thread.parent_message_id.clone(),
                    ttl: Some(KEEP),
                    only_if_absent: false,
                },
                Op::Set {
                    key: thread_of_key(shared, &thread.parent_message_id),
                    value: thread.id.clone(),
                    ttl: Some(KEEP),
                    only_if_absent: false,
                },
            ];
            if let Err(error) = shared.hub.store().exec(ops).await {
                tracing::warn!(%error, thread = %thread.id, "could not record a thread; its messages will not be replies");
            }
            for &chat in &chats {
                let action = Action::Topic {
                    thread_id: thread.id.clone(),
                    parent: thread.parent_message_id.clone(),
                    topic: None,
                };
                jobs.push((
                    chat,
                    Job {
                        relay: relay(Some(&thread.created_by)),
                        action,
                    },
                ));
            }
        }
        ChannelEvent::MessageEdit {
            message_id,
            content,
            ..
        } => {
            for &chat in &chats {
                let action = Action::Edit {
                    hub_message_id: message_id.clone(),
                    content: content.clone(),
                    progress: None,
                };
                jobs.push((
                    chat,
                    Job {
                        relay: relay(None),
                        action,
                    },
                ));
            }
        }
        ChannelEvent::MessageDelete { message_id, .. } => {
            for &chat in &chats {
                let action = Action::Delete {
                    hub_message_id: message_id.clone(),
                    parts: None,
                    done: 0,
                };
                jobs.push((
                    chat,
                    Job {
                        relay: relay(None),
                        action,
                    },
                ));
            }
        }
        ChannelEvent::ReactionAdd {
            message_id,
            emoji,
            agent_id,
            ..
        }
        | ChannelEvent::ReactionRemove {
            message_id,
            emoji,
            agent_id,
            ..
        } => {
            let add = matches!(event, ChannelEvent::ReactionAdd { .. });
            for &chat in &chats {
                let action = Action::React {
                    hub_message_id: message_id.clone(),
                    agent_id: agent_id.clone(),
                    emoji: emoji.clone(),
                    add,
                };
                jobs.push((
                    chat,
                    Job {
                        relay: relay(Some(agent_id)),
                        action,
                    },
                ));
            }
        }
        ChannelEvent::Typing {
            agent_id, started, ..
        } => {
            for &chat in &chats {
                if *started {
                    shared.typing.start(chat, agent_id);
                } else {
                    shared.typing.stop(chat, agent_id);
                }
            }
        }
        ChannelEvent::Archive {
            archived_by: by, ..
        }
        | ChannelEvent::Delete { deleted_by: by, .. } => {
            let what = match event {
                ChannelEvent::Archive { .. } => "archived",
                _ => "deleted",
            };
            let by = if by.is_empty() {
                String::new()
            } else {
                format!(" by {}", shared.hub.display_name(by, None))
            };
            let text = format!(
                "🗄 The hub channel linked to this chat was {what}{by}. Messages are no longer \
                 relayed between this chat and the hub."
            );
            for &chat in &chats {
                jobs.push((chat, Job::notice(&text, event.type_name())));
                if let Err(error) = shared.links.stop(&shared.hub, channel, chat).await {
                    tracing::warn!(%error, channel, chat, "could not store the stopped link; a restart will relay it again");
                }
            }
        }
        _ => {}
    }
    for (chat, job) in jobs {
        outboxes.push(&chat.to_string(), job).await;
    }
}

fn send_job(
    shared: &Shared,
    relay: Relay,
    message: &ChannelMessage,
    thread_id: Option<String>,
) -> Job {
    let thread_id = thread_id.or_else(|| message.thread_id.clone());
    Job {
        relay,
        action: Action::Send(Outgoing {
            hub_message_id: Some(message.id.clone()),
            look: Look {
                author: Some(author(
                    shared,
                    &message.sender_id,
                    message.author_name.as_deref(),
                )),
                blocks: message.content_blocks.clone().unwrap_or_default(),
                topic_name: Some(topic_name(Some(&message.content))),
                thread_id: thread_id.clone(),
            },
            content: message.content.clone(),
            reply_to: message.parent_message_id.clone(),
            thread_id,
            sent: Vec::new(),
            done: None,
            fallback: None,
        }),
    }
}

fn author(shared: &Shared, sender_id: &str, author_name: Option<&str>) -> Author {
    // A person relayed from a platform never looks like an agent: no avatar, their platform after
    // their name, and a mark when the name is an agent's.
    if let Some(person) = ExternalId::parse(sender_id) {
        let platform = match person.platform {
            Platform::Telegram => "Telegram",
            Platform::Discord => "Discord",
        };
        return Author {
            name: person_name(
                author_name.unwrap_or(&person.user_id),
                platform,
                shared.hub.agent_names(),
            ),
            avatar: None,
        };
    }
    Author {
        name: shared.hub.display_name(sender_id, author_name),
        avatar: shared
            .hub
            .profile(sender_id)
            .and_then(|profile| profile.avatar.clone()),
    }
}

/// `{prefix}bridge:telegram:look:{hubMessageId}`: the [`Look`] of a relayed message.
fn look_key(shared: &Shared, hub_message_id: &str) -> String {
    shared.hub.keys().telegram().look(hub_message_id)
}

/// `{prefix}bridge:thread:{threadId}`: the hub message a thread hangs on.
fn thread_root_key(shared: &Shared, thread_id: &str) -> String {
    shared.hub.keys().thread_root(thread_id)
}

/// `{prefix}bridge:threadof:{hubMessageId}`: the thread a hub message is in (or starts).
pub fn thread_of_key(shared: &Shared, hub_message_id: &str) -> String {
    shared.hub.keys().thread_of(hub_message_id)
}

fn reactions_key(shared: &Shared, chat: i64, message_id: &str) -> String {
    shared.hub.keys().telegram().reactions(chat, message_id)
}

fn unavailable(error: hub_bridge_sdk::StoreError) -> SendError {
    SendError::Transient(error.to_string())
}

/// Performs jobs against the Bot API.
pub struct Courier {
    pub shared: Arc<Shared>,
}

impl Deliver<Job> for Courier {
    fn deliver<'a>(
        &'a self,
        destination: &'a str,
        job: &'a mut Job,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let chat: i64 = destination.parse().map_err(|_| {
                SendError::Permanent(format!("`{destination}` is not a Telegram chat id"))
            })?;
            if let Some(received_at) = job.relay.received_at.take() {
                self.shared
                    .hub
                    .metrics()
                    .relay_latency
                    .get_or_create(&BridgeDirection {
                        bridge: "telegram",
                        direction: Direction::Outbound,
                    })
                    .observe(received_at.elapsed().as_secs_f64());
            }
            let result = match &mut job.action {
                Action::Send(send) => self.send(chat, send).await,
                Action::Edit {
                    hub_message_id,
                    content,
                    progress,
                } => self.edit(chat, hub_message_id, content, progress).await,
                Action::Delete {
                    hub_message_id,
                    parts,
                    done,
                } => self.delete(chat, hub_message_id, parts, done).await,
                Action::React {
                    hub_message_id,
                    agent_id,
                    emoji,
                    add,
                } => {
                    self.react(chat, hub_message_id, agent_id, emoji, *add)
                        .await
                }
                Action::Notice { parts, sent } => {
                    while *sent < parts.len() {
                        let part = &parts[*sent];
                        self.send_part(chat, part, None, None, &mut Vec::new(), &mut None)
                            .await?;
                        *sent += 1;
                    }
                    Ok(())
                }
                Action::Topic {
                    thread_id,
                    parent,
                    topic,
                } => self.open_topic(chat, thread_id, parent, topic).await,
            };
            if result.is_ok() {
                self.shared
                    .hub
                    .metrics()
                    .count_relayed("telegram", &job.relay.event_type);
            }
            result
        })
    }

    fn agent(&self, job: &Job) -> Option<String> {
        job.relay.agent_id.clone()
    }

    fn dead_letter<'a>(
        &'a self,
        destination: &'a str,
        job: Job,
        reason: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let letter = DeadLetter {
                destination: format!("telegram:{destination}"),
                event_type: job.relay.event_type,
                reason,
                agent_id: job.relay.agent_id,
                channel_id: job.relay.channel_id,
                payload: job.relay.payload,
                at: now_millis(),
            };
            if let Err(error) = self.shared.hub.dead_letter("telegram", letter).await {
                tracing::error!(%error, destination, "could not keep a dead letter");
            }
        })
    }
}

impl Courier {
    async fn send(&self, chat: i64, job: &mut Outgoing) -> Result<(), SendError> {
        let parts = render::message(
            job.look.author.as_ref(),
            &job.content,
            &job.look.blocks,
            self.shared.config.max_parts,
        );
        let result = self.send_parts(chat, job, &parts).await;
        match result {
            Err(SendError::Permanent(reason)) => {
                // The job is given up on, but the parts already shown stay: map them, so that
                // edits and deletes of the message still reach them.
                if !job.sent.is_empty() {
                    if let Err(error) = self.record_sent(chat, job).await {
                        tracing::warn!(
                            chat,
                            ?error,
                            "could not map the parts shown before a send failed"
                        );
                    }
                }
                Err(SendError::Permanent(reason))
            }
            Err(other) => Err(other),
            Ok(()) => self.record_sent(chat, job).await,
        }
    }

    /// Sends the parts `job` has not sent yet.
    async fn send_parts(
        &self,
        chat: i64,
        job: &mut Outgoing,
        parts: &[Part],
    ) -> Result<(), SendError> {
        let mut done = job.done.unwrap_or(job.sent.len());
        if done >= parts.len() {
            return Ok(());
        }
        let thread_id = job.thread_id.as_deref();
        // In a forum topic every part goes to the topic, and none replies to the parent.
        let topic = match thread_id {
            Some(thread_id) => self.topic(chat, thread_id).await?,
            None => None,
        };
        let reply_to = if job.sent.is_empty() && topic.is_none() {
            self.reply_target(chat, job.reply_to.as_deref(), thread_id)
                .await?
        } else {
            None
        };
        while done < parts.len() {
            let reply = if job.sent.is_empty() { reply_to } else { None };
            self.send_part(
                chat,
                &parts[done],
                reply,
                topic,
                &mut job.sent,
                &mut job.fallback,
            )
            .await?;
            job.fallback = None;
            done += 1;
            job.done = Some(done);
        }
        Ok(())
    }

    /// Maps the messages `job` sent to its hub message and keeps how it looks.
    async fn record_sent(&self, chat: i64, job: &Outgoing) -> Result<(), SendError> {
        let Some(hub_message_id) = job.hub_message_id.as_deref() else {
            return Ok(());
        };
        let ids: Vec<String> = job.sent.iter().map(i32::to_string).collect();
        self.shared
            .map
            .record_parts(Platform::Telegram, hub_message_id, &chat.to_string(), &ids)
            .await
            .map_err(unavailable)?;
        let mut ops = vec![Op::Set {
            key: look_key(&self.shared, hub_message_id),
            value: serde_json::to_string(&job.look).unwrap_or_default(),
            ttl: Some(KEEP),
            only_if_absent: false,
        }];
        if let Some(thread_id) = job.thread_id.as_deref() {
            ops.push(Op::Set {
                key: thread_of_key(&self.shared, hub_message_id),
                value: thread_id.to_owned(),
                ttl: Some(KEEP),
                only_if_absent: false,
            });
        }
        self.shared
            .hub
            .store()
            .exec(ops)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// The Telegram message a relayed message replies to in `chat`: the first part of its parent,
    /// else of its thread's root.
    async fn reply_target(
        &self,
        chat: i64,
        parent: Option<&str>,
        thread_id: Option<&str>,
    ) -> Result<Option<i32>, SendError> {
        let parent = match (parent, thread_id) {
            (Some(parent), _) => Some(parent.to_owned()),
            (None, Some(thread_id)) => self
                .shared
                .hub
                .store()
                .one(Op::Get {
                    key: thread_root_key(&self.shared, thread_id),
                })
                .await
                .map_err(unavailable)?
                .into_text(),
            (None, None) => None,
        };
        let Some(parent) = parent else {
            return Ok(None);
        };
        let parts = self
            .shared
            .map
            .parts(Platform::Telegram, &parent, &chat.to_string())
            .await
            .map_err(unavailable)?;
        Ok(parts.first().and_then(|id| id.parse().ok()))
    }

    /// The forum topic that shows a hub thread in `chat`, if one was opened.
    async fn topic(&self, chat: i64, thread_id: &str) -> Result<Option<i32>, SendError> {
        Ok(self
            .shared
            .hub
            .store()
            .one(Op::Get {
                key: topic_key(&self.shared, chat, thread_id),
            })
            .await
            .map_err(unavailable)?
            .into_text()
            .and_then(|id| id.parse().ok()))
    }

    /// Opens a forum topic for a hub thread when `chat` is a forum, named after the parent
    /// message. Elsewhere, or when Telegram refuses for good (the bot may not manage topics), it
    /// does nothing and the thread's messages reply to the parent instead.
    async fn open_topic(
        &self,
        chat: i64,
        thread_id: &str,
        parent: &str,
        topic: &mut Option<i32>,
    ) -> Result<(), SendError> {
        if topic.is_none() {
            let shared = &self.shared;
            match shared.forums.is_forum(&shared.bot, chat).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(error) => return self.topic_refused(chat, &error),
            }
            let name = topic_name(self.look(parent).await?.topic_name.as_deref());
            match shared.bot.create_forum_topic(ChatId(chat), name).await {
                Ok(created) => *topic = Some(created.thread_id.0 .0),
                Err(error) => return self.topic_refused(chat, &error),
            }
        }
        let Some(topic) = *topic else {
            return Ok(());
        };
        let set = |key: String, value: String| Op::Set {
            key,
            value,
            ttl: Some(KEEP),
            only_if_absent: false,
        };
        let ops = vec![
            set(topic_key(&self.shared, chat, thread_id), topic.to_string()),
            set(
                topic_thread_key(&self.shared, chat, topic),
                thread_id.to_owned(),
            ),
        ];
        self.shared
            .hub
            .store()
            .exec(ops)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// A failed getChat or createForumTopic: retried when it may pass later; otherwise the thread
    /// falls back to replies, which is logged once per chat.
    fn topic_refused(&self, chat: i64, error: &RequestError) -> Result<(), SendError> {
        match classify(error, &self.shared.redactor) {
            SendError::Permanent(reason) => {
                if self.shared.forums.first_warning(chat) {
                    tracing::warn!(chat, %reason, "could not open a forum topic; threads in this chat reply to their parent message instead");
                }
                Ok(())
            }
            other => Err(other),
        }
    }

    /// Sends one part, paced, replying to `reply_to` and in forum topic `topic`, and adds the
    /// ids of the messages it took to `shown`. HTML that Telegram refuses for its form (entities it
    /// cannot parse, too long, empty, too many entities) is sent again as plain text, split under
    /// the limit; `fallback` counts the plain pieces sent, so a retry resumes there.
    async fn send_part(
        &self,
        chat: i64,
        part: &Part,
        reply_to: Option<i32>,
        topic: Option<i32>,
        shown: &mut Vec<i32>,
        fallback: &mut Option<usize>,
    ) -> Result<(), SendError> {
        let place = |mut request: <Bot as Requester>::SendMessage, reply_to: Option<i32>| {
            if let Some(id) = reply_to {
                request = request.reply_parameters(
                    ReplyParameters::new(MessageId(id)).allow_sending_without_reply(),
                );
            }
            if let Some(id) = topic {
                request = request.message_thread_id(ThreadId(MessageId(id)));
            }
            request
        };
        if fallback.is_none() {
            let html = self
                .request(chat, |bot| {
                    place(
                        bot.send_message(ChatId(chat), part.html.clone())
                            .parse_mode(ParseMode::Html),
                        reply_to,
                    )
                })
                .await?;
            match html {
                Ok(message) => {
                    shown.push(message.id.0);
                    return Ok(());
                }
                Err(error) if is_form_error(&error) => {
                    self.count_plain_fallback(&error);
                    *fallback = Some(0);
                }
                Err(error) => return Err(classify(&error, &self.shared.redactor)),
            }
        }
        let pieces = render::plain_fallback(part);
        if pieces.is_empty() {
            self.ignored("empty_part");
        }
        while let Some(done) = fallback.filter(|done| *done < pieces.len()) {
            let reply = if done == 0 { reply_to } else { None };
            let plain = self
                .request(chat, |bot| {
                    place(bot.send_message(ChatId(chat), pieces[done].clone()), reply)
                })
                .await?;
            let message = plain.map_err(|error| classify(&error, &self.shared.redactor))?;
            shown.push(message.id.0);
            *fallback = Some(done + 1);
        }
        Ok(())
    }

    /// Runs one paced send; the outer error is the bridge stopping while it waited.
    async fn request<R>(
        &self,
        chat: i64,
        build: impl FnOnce(&Bot) -> R,
    ) -> Result<Result<Message, RequestError>, SendError>
    where
        R: std::future::IntoFuture<Output = Result<Message, RequestError>>,
    {
        let permit = tokio::select! {
            permit = self.shared.pacer.acquire(chat) => permit,
            _ = self.shared.shutdown.cancelled() => {
                return Err(SendError::Transient("the bridge is stopping".to_owned()));
            }
        };
        let result = build(&self.shared.bot).into_future().await;
        permit.done();
        Ok(result)
    }

    fn count_plain_fallback(&self, error: &RequestError) {
        tracing::warn!(error = %self.shared.redactor.describe(error), "Telegram refused the HTML for its form; sending plain text");
        self.shared
            .hub
            .metrics()
            .count_retry("telegram", retry::PLAIN_TEXT_FALLBACK);
    }

    async fn edit(
        &self,
        chat: i64,
        hub_message_id: &str,
        content: &str,
        progress: &mut Option<EditProgress>,
    ) -> Result<(), SendError> {
        let chat_key = chat.to_string();
        if progress.is_none() {
            let old = self
                .shared
                .map
                .parts(Platform::Telegram, hub_message_id, &chat_key)
                .await
                .map_err(unavailable)?;
            if old.is_empty() {
                // Never shown in this chat (sent before the link existed, or given up on).
                self.ignored("edit_of_unknown_message");
                return Ok(());
            }
            let look = self.look(hub_message_id).await?;
            let topic = match &look.thread_id {
                Some(thread_id) => self.topic(chat, thread_id).await?,
                None => None,
            };
            *progress = Some(EditProgress {
                new: render::message(
                    look.author.as_ref(),
                    content,
                    &look.blocks,
                    self.shared.config.max_parts,
                ),
                old,
                ids: Vec::new(),
                step: 0,
                topic,
            });
        }
        let Some(state) = progress.as_mut() else {
            return Ok(());
        };
        while state.step < state.old.len().max(state.new.len()) {
            let step = state.step;
            match (state.old.get(step), state.new.get(step)) {
                (Some(old_id), Some(part)) => {
                    let id = parse_id(old_id)?;
                    self.edit_part(chat, id, part).await?;
                    state.ids.push(old_id.clone());
                }
                (None, Some(part)) => {
                    let mut shown = Vec::new();
                    self.send_part(chat, part, None, state.topic, &mut shown, &mut None)
                        .await?;
                    state.ids.extend(shown.iter().map(i32::to_string));
                }
                (Some(old_id), None) => {
                    let id = parse_id(old_id)?;
                    self.delete_part(chat, id).await?;
                }
                (None, None) => {}
            }
            state.step += 1;
        }
        self.shared
            .map
            .record_parts(Platform::Telegram, hub_message_id, &chat_key, &state.ids)
            .await
            .map_err(unavailable)
    }

    /// How a relayed message looks (the default for a message never relayed).
    async fn look(&self, hub_message_id: &str) -> Result<Look, SendError> {
        Ok(self
            .shared
            .hub
            .store()
            .one(Op::Get {
                key: look_key(&self.shared, hub_message_id),
            })
            .await
            .map_err(unavailable)?
            .into_text()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default())
    }

    async fn edit_part(&self, chat: i64, id: i32, part: &Part) -> Result<(), SendError> {
        let bot = &self.shared.bot;
        let html = bot
            .edit_message_text(ChatId(chat), MessageId(id), part.html.clone())
            .parse_mode(ParseMode::Html)
            .await;
        let result = match html {
            Err(error) if is_form_error(&error) => {
                self.count_plain_fallback(&error);
                // A part's plain text is its source, which was split under the limit; should it
                // still not fit, the message shows as much of it as one message can.
                let Some(plain) = render::plain_fallback(part).into_iter().next() else {
                    self.ignored("empty_part");
                    return Ok(());
                };
                bot.edit_message_text(ChatId(chat), MessageId(id), plain)
                    .await
            }
            other => other,
        };
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_not_modified(&error) => Ok(()),
            Err(error) => Err(classify(&error, &self.shared.redactor)),
        }
    }

    async fn delete_part(&self, chat: i64, id: i32) -> Result<(), SendError> {
        match self
            .shared
            .bot
            .delete_message(ChatId(chat), MessageId(id))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_already_deleted(&error) => Ok(()),
            Err(error) => Err(classify(&error, &self.shared.redactor)),
        }
    }

    async fn delete(
        &self,
        chat: i64,
        hub_message_id: &str,
        parts: &mut Option<Vec<String>>,
        done: &mut usize,
    ) -> Result<(), SendError> {
        let chat_key = chat.to_string();
        if parts.is_none() {
            *parts = Some(
                self.shared
                    .map
                    .parts(Platform::Telegram, hub_message_id, &chat_key)
                    .await
                    .map_err(unavailable)?,
            );
        }
        let ids = parts.as_deref().unwrap_or_default();
        if ids.is_empty() {
            self.ignored("delete_of_unknown_message");
            return Ok(());
        }
        while *done < ids.len() {
            self.delete_part(chat, parse_id(&ids[*done])?).await?;
            *done += 1;
        }
        self.shared
            .map
            .forget(Platform::Telegram, hub_message_id, &chat_key)
            .await
            .map_err(unavailable)
    }

    /// Bots show at most one reaction per message, so the bridge keeps who reacted with what and
    /// shows the most recent reaction still standing.
    async fn react(
        &self,
        chat: i64,
        hub_message_id: &str,
        agent_id: &str,
        emoji: &str,
        add: bool,
    ) -> Result<(), SendError> {
        let parts = self
            .shared
            .map
            .parts(Platform::Telegram, hub_message_id, &chat.to_string())
            .await
            .map_err(unavailable)?;
        let Some(target) = parts.first() else {
            self.ignored("reaction_to_unknown_message");
            return Ok(());
        };
        let key = reactions_key(&self.shared, chat, target);
        let store = self.shared.hub.store();
        let mut standing: Vec<(String, String)> = store
            .one(Op::Get { key: key.clone() })
            .await
            .map_err(unavailable)?
            .into_text()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        standing.retain(|(agent, existing)| !(agent == agent_id && existing == emoji));
        if add {
            standing.push((agent_id.to_owned(), emoji.to_owned()));
        }
        let shown: Vec<ReactionType> = standing
            .last()
            .map(|(_, emoji)| ReactionType::Emoji {
                emoji: emoji.clone(),
            })
            .into_iter()
            .collect();
        let result = self
            .shared
            .bot
            .set_message_reaction(ChatId(chat), MessageId(parse_id(target)?))
            .reaction(shown)
            .await;
        if let Err(error) = result {
            let refused = classify(&error, &self.shared.redactor);
            return Err(match refused {
                SendError::Permanent(reason) if reason.contains("REACTION_INVALID") => {
                    SendError::Permanent(format!(
                        "Telegram bots can only react with Telegram's standard reaction emoji, and {emoji} is not one of them"
                    ))
                }
                other => other,
            });
        }
        store
            .one(Op::Set {
                key,
                value: serde_json::to_string(&standing).unwrap_or_default(),
                ttl: Some(KEEP),
                only_if_absent: false,
            })
            .await
            .map(drop)
            .map_err(unavailable)
    }

    fn ignored(&self, reason: &'static str) {
        self.shared.hub.metrics().count_ignored("telegram", reason);
    }
}

fn parse_id(id: &str) -> Result<i32, SendError> {
    id.parse()
        .map_err(|_| SendError::Permanent(format!("`{id}` is not a Telegram message id")))
}
