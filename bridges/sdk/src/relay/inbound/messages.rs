//! A person's new message, published once into every hub channel its chat is linked to: counted
//! against their limit, answering the hub message its platform parent shows, in the hub thread of
//! the platform thread it was written in (or of its parent), mapped so that replies, edits,
//! deletes and reactions find it.

use crate::event::{now_millis, ChannelEvent, ChannelMessage, ContentBlock, Thread};
use crate::limits::Action;
use crate::metrics::{BridgeDirection, Direction};
use crate::relay::connector::{Connector, Place, ThreadRef};
use crate::relay::inbound::events::{Handled, Said};
use crate::relay::{home, Link, Relay};
use crate::store::{Op, Reply, StoreError};

/// Where a message sits in the hub, for one link.
struct Position {
    parent: Option<String>,
    thread: Option<String>,
    /// Whether it was written inside a platform thread that shows `thread`.
    in_platform_thread: bool,
}

impl<C: Connector> Relay<C> {
    pub(super) async fn message(&self, said: &Said) -> Result<Handled, StoreError> {
        let links = self.links_for(&said.place.chat);
        let Some(first) = links.first() else {
            return Ok(Handled::Done);
        };
        let platform = self.connector().name();
        let map_chat = |link: &Link| self.core.map_chat(&in_place(link, &said.place));
        // Handled again (a retry after a store error, a redelivery, a replay after a crash): the
        // first link has it already and it was counted then; links still missing it get it now.
        let known = self
            .map()
            .hub_id(platform, &map_chat(first), &said.id.0)
            .await?;
        let sender = said.author.id.to_string();
        if known.is_none() && said.received.is_some() {
            let notice = said.author.notice_in(&said.place.chat);
            if !self
                .within_limit(Action::Message, &sender, &said.claim, Some(notice))
                .await?
            {
                return Ok(Handled::Done);
            }
        }
        let mut hub_id = known
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let origin = self.connector().origin(&said.place.chat);
        let blocks = self.content_blocks(said).await?;
        for (index, link) in links.iter().enumerate() {
            let position = self.position(said, link).await?;
            let event = self.message_event(said, &blocks, link, &position, &hub_id);
            let chat = map_chat(link);
            let mut ops = self
                .map()
                .claim_ops(platform, &chat, &said.id.0, &hub_id, &event, &origin);
            if let Some(thread) = &position.thread {
                ops.push(self.records().thread_of_op(&hub_id, thread));
            }
            if let (true, Some(platform_thread)) = (position.in_platform_thread, &said.place.thread)
            {
                let home_chat = self
                    .core
                    .map_chat(&home(&link.chat, Some(&link.hub_channel)));
                ops.push(
                    self.records()
                        .shown_in_op(&hub_id, &home_chat, platform_thread),
                );
            }
            let replies = self.hub().store().exec(ops).await?;
            if replies.first() == Some(&Reply::Int(1)) {
                self.count_published(event.type_name());
                if let Some(received) = said.received {
                    self.hub()
                        .metrics()
                        .relay_latency
                        .get_or_create(&BridgeDirection {
                            bridge: platform,
                            direction: Direction::Inbound,
                        })
                        .observe(received.elapsed().as_secs_f64());
                }
            } else if index == 0 && known.is_none() {
                // Published since the lookup, under the id it was published with: the other
                // links get that one.
                if let Some(existing) = self.map().hub_id(platform, &chat, &said.id.0).await? {
                    hub_id = existing;
                }
            }
        }
        Ok(Handled::Done)
    }

    /// The hub message a message answers and the hub thread it is in, through `link`.
    async fn position(&self, said: &Said, link: &Link) -> Result<Position, StoreError> {
        let platform = self.connector().name();
        let parent = match &said.reply_to {
            Some(reply) => {
                let place = Place {
                    chat: link.chat.clone(),
                    hub_channel: Some(link.hub_channel.clone()),
                    thread: reply.thread.clone(),
                };
                let chat = self.core.map_chat(&place);
                self.map().hub_id(platform, &chat, &reply.id.0).await?
            }
            None => None,
        };
        let shown = match &said.place.thread {
            Some(thread) => self.hub_thread_of(link, thread, said).await?,
            None => None,
        };
        let position = match shown {
            Some((thread, root)) => Position {
                // In a thread, a message that answers nothing in particular answers the
                // message the thread started on.
                parent: parent.or(root),
                thread: Some(thread),
                in_platform_thread: true,
            },
            None => {
                let thread = match &parent {
                    Some(parent) => self.records().thread_of(parent).await?,
                    None => None,
                };
                Position {
                    parent,
                    thread,
                    in_platform_thread: false,
                }
            }
        };
        Ok(position)
    }

    /// The hub thread a platform thread of `link` shows, and the hub message it started on:
    /// the engine's record, else an earlier release's; where the platform's threads are chats
    /// people open, a thread seen for the first time becomes a hub thread (`thread.create`).
    async fn hub_thread_of(
        &self,
        link: &Link,
        thread: &ThreadRef,
        said: &Said,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        let home_chat = self
            .core
            .map_chat(&home(&link.chat, Some(&link.hub_channel)));
        let root = match &said.thread_root {
            Some(root) => {
                self.map()
                    .hub_id(self.connector().name(), &home_chat, &root.0)
                    .await?
            }
            None => None,
        };
        if let Some(known) = self.known_hub_thread(link, thread).await? {
            return Ok(Some((known, root)));
        }
        if !self.connector().capabilities().threads_are_chats {
            return Ok(None);
        }
        let hub_thread = uuid::Uuid::new_v4().to_string();
        let event = ChannelEvent::ThreadCreate {
            channel_id: link.hub_channel.clone(),
            thread: Thread {
                id: hub_thread.clone(),
                parent_message_id: root.clone().unwrap_or_default(),
                created_by: said.author.id.to_string(),
                created_at: now_millis(),
                reply_count: 0,
            },
        };
        let mut ops = self
            .records()
            .platform_thread_ops(&home_chat, &hub_thread, thread);
        let origin = self.connector().origin(&link.chat);
        ops.push(self.hub().publish_op(&event, &origin));
        self.hub().store().exec(ops).await?;
        self.count_published(event.type_name());
        Ok(Some((hub_thread, root)))
    }

    /// The hub thread a platform thread of `link` shows, if any is known.
    pub(super) async fn known_hub_thread(
        &self,
        link: &Link,
        thread: &ThreadRef,
    ) -> Result<Option<String>, StoreError> {
        let home_place = home(&link.chat, Some(&link.hub_channel));
        let known = self
            .records()
            .hub_thread(&self.core.map_chat(&home_place), thread)
            .await?;
        if known.is_some() {
            return Ok(known);
        }
        let in_thread = Place {
            thread: Some(thread.clone()),
            ..home_place
        };
        let Some(legacy) = self
            .connector()
            .legacy_hub_thread_key(&self.core.map_chat(&in_thread))
        else {
            return Ok(None);
        };
        Ok(self
            .hub()
            .store()
            .one(Op::Get { key: legacy })
            .await?
            .into_text())
    }

    /// The message's files as the hub's content blocks, each with a media link when the service
    /// serves media (made once: every link's copy names the same files).
    async fn content_blocks(&self, said: &Said) -> Result<Vec<ContentBlock>, StoreError> {
        let mut blocks = Vec::with_capacity(said.files.len());
        for shared in &said.files {
            let mut block = shared.block.clone();
            if let (Some(media), Some(file)) = (self.hub().media(), &shared.file) {
                block.url = Some(media.link(file).await?);
            }
            blocks.push(block);
        }
        Ok(blocks)
    }

    fn message_event(
        &self,
        said: &Said,
        blocks: &[ContentBlock],
        link: &Link,
        position: &Position,
        hub_id: &str,
    ) -> ChannelEvent {
        let shown_in = self.connector().map_chat(&said.place);
        let message = ChannelMessage {
            id: hub_id.to_owned(),
            content: said.content.clone(),
            sender_id: said.author.id.to_string(),
            timestamp: said.timestamp,
            thread_id: position.thread.clone(),
            parent_message_id: position.parent.clone(),
            edited: None,
            reactions: None,
            author_type: Some("external".to_owned()),
            author_name: Some(said.author.name.clone()),
            external_platform: Some(self.connector().name().to_owned()),
            external_source_id: Some(format!("{shown_in}:{}", said.id.0)),
            content_blocks: (!blocks.is_empty()).then(|| blocks.to_vec()),
            metadata: None,
        };
        let channel_id = link.hub_channel.clone();
        match &position.thread {
            Some(thread_id)
                if position.in_platform_thread
                    && self.connector().capabilities().threads_are_chats =>
            {
                ChannelEvent::ThreadMessage {
                    channel_id,
                    thread_id: thread_id.clone(),
                    message,
                }
            }
            _ => ChannelEvent::Message {
                channel_id,
                message,
            },
        }
    }
}

/// `place` (a chat and a thread in it) as seen through `link`.
fn in_place(link: &Link, place: &Place) -> Place {
    Place {
        chat: link.chat.clone(),
        hub_channel: Some(link.hub_channel.clone()),
        thread: place.thread.clone(),
    }
}
