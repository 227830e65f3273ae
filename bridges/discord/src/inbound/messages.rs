//! New messages in linked channels and their threads: a person's message becomes a hub
//! `channel.message` (or `thread.message`, with `thread.create` the first time a thread is seen),
//! published once per link, after the inbound rate limit; mentions are rendered as names.

use std::collections::HashMap;
use std::time::Instant;

use hub_bridge_sdk::event::{now_millis, ChannelEvent, ChannelMessage, ContentBlock, Thread};
use hub_bridge_sdk::limits::Action;
use hub_bridge_sdk::metrics::{BridgeDirection, Direction};
use hub_bridge_sdk::relay::{Chat, LimitNotice, Link, ThreadRef};
use hub_bridge_sdk::{ExternalId, Op, Reply};
use serenity::model::channel::{Message, MessageType};
use serenity::model::user::User;

use super::{Inbound, Location, MAX_LOOKUPS_PER_MESSAGE};
use crate::format::{self, MentionNames};
use crate::ids;
use crate::shared::Cached;

impl Inbound {
    /// A new message: live from the gateway (with when it arrived), or fetched by a catch-up.
    pub(super) async fn message(&mut self, message: Message, received: Option<Instant>) {
        let channel_id = message.channel_id.get();
        let message_id = message.id.get();
        if !matches!(
            message.kind,
            MessageType::Regular | MessageType::InlineReply
        ) {
            self.note_seen(channel_id, message_id).await;
            return self.ignored("system_message");
        }
        if self.shared.is_own(
            message.author.id.get(),
            message.webhook_id.map(|id| id.get()),
        ) {
            self.note_seen(channel_id, message_id).await;
            return self.ignored("own_message");
        }
        let guild_id = message.guild_id.map(|id| id.get());
        self.shared.note_guild(channel_id, guild_id);
        match self.locate(channel_id, guild_id).await {
            Location::Linked { links, thread } => {
                self.linked_message(&message, &links, thread, received)
                    .await;
                // A publish cut short by the run stopping is not done: the next catch-up
                // must find the message again.
                if thread.is_none() && !self.shutdown.is_cancelled() {
                    self.note_seen(channel_id, message_id).await;
                }
            }
            Location::Direct => self.direct_message(&message, received.is_some()).await,
            Location::Elsewhere => self.ignored("unlinked_channel"),
        }
    }

    pub(super) async fn linked_message(
        &mut self,
        message: &Message,
        links: &[Link],
        thread: Option<u64>,
        received: Option<Instant>,
    ) {
        let sender = ExternalId::new(crate::PLATFORM, message.author.id.to_string()).to_string();
        if received.is_some() && !self.allowed(Action::Message, &sender, message).await {
            return;
        }
        let content = self
            .render(&message.content, &message.mentions, message)
            .await;
        let blocks = blocks(message);
        if content.trim().is_empty() && blocks.is_none() {
            return self.ignored("empty_message");
        }
        let author_name = format::display_name(
            message.member.as_ref().and_then(|m| m.nick.as_deref()),
            message.author.global_name.as_deref(),
            &message.author.name,
        );
        let chat_id = message.channel_id.get();
        for link in links {
            let chat = self.map_chat(link, chat_id);
            let parent = match &message.message_reference {
                Some(reference) => match reference.message_id {
                    Some(parent) => {
                        let parent_chat = self.map_chat(link, reference.channel_id.get());
                        let parent = parent.to_string();
                        let map = &self.shared.map;
                        self.store("reply lookup", || {
                            map.hub_id(crate::PLATFORM, &parent_chat, &parent)
                        })
                        .await
                        .flatten()
                    }
                    None => None,
                },
                None => None,
            };
            let thread_ids = match thread {
                Some(thread) => match self.hub_thread(link, thread, &sender).await {
                    Some(ids) => Some(ids),
                    None => continue,
                },
                None => None,
            };
            let hub_id = uuid::Uuid::new_v4().to_string();
            let hub_message = ChannelMessage {
                id: hub_id.clone(),
                content: content.clone(),
                sender_id: sender.clone(),
                timestamp: message.timestamp.timestamp_millis(),
                thread_id: thread_ids.as_ref().map(|(id, _)| id.clone()),
                // In a thread, a message that replies to nothing in particular answers the
                // message the thread started on.
                parent_message_id: parent
                    .or_else(|| thread_ids.as_ref().and_then(|(_, starter)| starter.clone())),
                edited: None,
                reactions: None,
                author_type: Some("external".to_owned()),
                author_name: Some(author_name.clone()),
                external_platform: Some("discord".to_owned()),
                external_source_id: Some(format!("{chat_id}:{}", message.id)),
                content_blocks: blocks.clone(),
            };
            let event = match &thread_ids {
                Some((thread_id, _)) => ChannelEvent::ThreadMessage {
                    channel_id: link.hub_channel.clone(),
                    thread_id: thread_id.clone(),
                    message: hub_message,
                },
                None => ChannelEvent::Message {
                    channel_id: link.hub_channel.clone(),
                    message: hub_message,
                },
            };
            let origin = self.origin(link);
            let message_id = message.id.to_string();
            let map = &self.shared.map;
            let published = self
                .store("publish message", || {
                    map.publish_once(
                        crate::PLATFORM,
                        &chat,
                        &message_id,
                        &hub_id,
                        &event,
                        &origin,
                    )
                })
                .await;
            match published {
                Some(true) => {
                    self.published(event.type_name());
                    if let Some(received) = received {
                        self.shared
                            .hub
                            .metrics()
                            .relay_latency
                            .get_or_create(&BridgeDirection {
                                bridge: "discord",
                                direction: Direction::Inbound,
                            })
                            .observe(received.elapsed().as_secs_f64());
                    }
                    if let Some(thread) = thread {
                        self.note_in_thread(link, &hub_id, thread).await;
                    }
                }
                Some(false) => self.ignored("duplicate"),
                None => {}
            }
        }
    }

    /// The hub thread a Discord thread of `link` maps to, and the hub message it started on;
    /// publishes `thread.create` the first time the thread is seen.
    pub(super) async fn hub_thread(
        &self,
        link: &Link,
        thread: u64,
        created_by: &str,
    ) -> Option<(String, Option<String>)> {
        let known = self.known_hub_thread(link, thread).await?;
        // A thread started on a message has that message's id (Discord's convention).
        let home = self.home_chat(link);
        let map = &self.shared.map;
        let starter_id = thread.to_string();
        let starter = self
            .store("thread starter lookup", || {
                map.hub_id(crate::PLATFORM, &home, &starter_id)
            })
            .await
            .flatten();
        if let Some(hub_thread) = known {
            return Some((hub_thread, starter));
        }
        let hub_thread = uuid::Uuid::new_v4().to_string();
        let event = ChannelEvent::ThreadCreate {
            channel_id: link.hub_channel.clone(),
            thread: Thread {
                id: hub_thread.clone(),
                parent_message_id: starter.clone().unwrap_or_default(),
                created_by: created_by.to_owned(),
                created_at: now_millis(),
                reply_count: 0,
            },
        };
        let mut ops = self.relay.records().platform_thread_ops(
            &home,
            &hub_thread,
            &ThreadRef(thread.to_string()),
        );
        ops.push(self.shared.hub.publish_op(&event, &self.origin(link)));
        let store = self.shared.hub.store();
        self.store("thread create", || store.exec(ops.clone()))
            .await?;
        self.published(event.type_name());
        Some((hub_thread, starter))
    }

    /// Remembers that a hub message lives in a thread, so the hub's edits, deletes and reactions
    /// find it there.
    pub(super) async fn note_in_thread(&self, link: &Link, hub_id: &str, thread: u64) {
        let op = self.relay.records().shown_in_op(
            hub_id,
            &self.home_chat(link),
            &ThreadRef(thread.to_string()),
        );
        let store = self.shared.hub.store();
        self.store("thread location", || store.one(op.clone()))
            .await;
    }

    /// The hub thread a Discord thread of `link` shows: the relay engine's record, else the key
    /// the previous release kept it under (`thread:dc:{mapChat}`).
    pub(super) async fn known_hub_thread(
        &self,
        link: &Link,
        thread: u64,
    ) -> Option<Option<String>> {
        let home = self.home_chat(link);
        let thread_ref = ThreadRef(thread.to_string());
        let records = self.relay.records();
        let known = self
            .store("thread lookup", || records.hub_thread(&home, &thread_ref))
            .await?;
        if known.is_some() {
            return Some(known);
        }
        let legacy = self
            .shared
            .keys()
            .thread_by_discord(&self.map_chat(link, thread));
        let store = self.shared.hub.store();
        self.store("thread lookup", || {
            store.one(Op::Get {
                key: legacy.clone(),
            })
        })
        .await
        .map(Reply::into_text)
    }

    /// Applies the inbound rate limit (SPEC section 4): over the limit the event is not
    /// published, and the person is told once per window, where they wrote.
    pub(super) async fn allowed(&self, action: Action, sender: &str, message: &Message) -> bool {
        // Counted once per message and action, also when a catch-up replays it after a crash.
        let claim = format!("message:{}", message.id);
        let destination = if message.guild_id.is_none() {
            format!("dm:{}", message.author.id)
        } else {
            message.channel_id.to_string()
        };
        let notice = || LimitNotice {
            chat: Chat(destination.clone()),
            who: format!("<@{}>", message.author.id),
            mention: Some(message.author.id.to_string()),
        };
        self.store("rate limit", || {
            self.relay
                .within_limit(action, sender, &claim, Some(notice()))
        })
        .await
        .unwrap_or(false)
    }

    /// The content with mentions rendered as names.
    pub(super) async fn render(
        &self,
        content: &str,
        mentions: &[User],
        message: &Message,
    ) -> String {
        let channels = self.channel_names(content).await;
        self.render_with(content, mentions, message.guild_id, channels)
            .await
    }

    /// The content with user, role and the given channel mentions rendered as names.
    pub(super) async fn render_with(
        &self,
        content: &str,
        mentions: &[User],
        guild: Option<serenity::model::id::GuildId>,
        channels: HashMap<u64, String>,
    ) -> String {
        let mut names = MentionNames {
            users: mentions
                .iter()
                .map(|user| {
                    let name = format::display_name(None, user.global_name.as_deref(), &user.name);
                    (user.id.get(), name)
                })
                .collect(),
            channels,
            ..MentionNames::default()
        };
        let roles = match guild {
            Some(guild) if content.contains("<@&") => {
                Some(self.shared.role_names(guild, content).await)
            }
            _ => None,
        };
        names.roles = roles.as_deref();
        format::render_mentions(content, &names)
    }

    /// The names of the channels `content` mentions (`<#id>`): from the cache, else looked up
    /// concurrently, at most [`MAX_LOOKUPS_PER_MESSAGE`] per message; the others (and channels
    /// Discord will not show) are rendered as `#channel`. A message with 50 channel mentions
    /// thus costs at most 5 requests, and the same mentions again cost none.
    pub(super) async fn channel_names(&self, content: &str) -> HashMap<u64, String> {
        let mut mentioned = mentioned_channels(content);
        mentioned.sort_unstable();
        mentioned.dedup();
        let mut names = HashMap::new();
        let mut lookups = Vec::new();
        for channel in mentioned {
            match self.shared.cached_channel(channel) {
                Cached::Known(info) => {
                    if let Some(name) = info.name {
                        names.insert(channel, name);
                    }
                }
                Cached::Failed => {}
                Cached::Unknown if lookups.len() < MAX_LOOKUPS_PER_MESSAGE => lookups.push(channel),
                Cached::Unknown => self.ignored("channel_lookup_over_budget"),
            }
        }
        let found = futures_util::future::join_all(
            lookups
                .iter()
                .map(|channel| self.shared.channel_info(*channel)),
        )
        .await;
        for (channel, info) in lookups.into_iter().zip(found) {
            if let Some(name) = info.ok().and_then(|info| info.name) {
                names.insert(channel, name);
            }
        }
        names
    }
}

/// Attachments and stickers as content blocks.
pub(super) fn blocks(message: &Message) -> Option<Vec<ContentBlock>> {
    let mut blocks = format::content_blocks(&message.attachments).unwrap_or_default();
    for sticker in &message.sticker_items {
        blocks.push(ContentBlock {
            kind: "sticker".to_owned(),
            name: Some(sticker.name.clone()),
            size: None,
            mime_type: None,
            url: Some(format!(
                "https://media.discordapp.net/stickers/{}.png",
                sticker.id
            )),
        });
    }
    (!blocks.is_empty()).then_some(blocks)
}

/// The channel ids of `<#id>` mentions in a text.
fn mentioned_channels(content: &str) -> Vec<u64> {
    content
        .split("<#")
        .skip(1)
        .filter_map(|rest| ids::parse(rest.split_once('>')?.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_mentions_are_found() {
        assert_eq!(mentioned_channels("see <#12> and <#x> <#34>"), vec![12, 34]);
    }
}
