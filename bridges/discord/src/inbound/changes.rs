//! Edits, deletes, reactions and typing in linked channels, as hub events on the messages they
//! concern. An event whose message is not mapped yet is retried shortly (its message may be just
//! behind it in the queue).

use std::collections::HashMap;

use hub_bridge_sdk::event::{now_millis, ChannelEvent};
use hub_bridge_sdk::limits::{Action, Decision};
use hub_bridge_sdk::metrics::{ActionDirection, Direction};
use hub_bridge_sdk::{ExternalId, Op};
use serenity::model::user::User;

use super::{Inbound, Location};
use crate::format;
use crate::gateway::GatewayEvent;

impl Inbound {
    pub(super) async fn update(
        &mut self,
        update: Box<serenity::model::event::MessageUpdateEvent>,
        attempt: u32,
    ) {
        // Discord also sends updates when link previews resolve; only a real edit has a new
        // edited timestamp.
        let (Some(content), Some(edited_at)) = (&update.content, update.edited_timestamp) else {
            return self.ignored("not_an_edit");
        };
        if let Some(author) = &update.author {
            let webhook = update.webhook_id.flatten().map(|id| id.get());
            if self.shared.is_own(author.id.get(), webhook) {
                return self.ignored("own_message");
            }
        }
        let channel_id = update.channel_id.get();
        let Location::Linked { links, .. } = self
            .locate(channel_id, update.guild_id.map(|id| id.get()))
            .await
        else {
            return self.ignored("unlinked_channel");
        };
        let mentions = update.mentions.clone().unwrap_or_default();
        let content = self
            .render_update(content, &mentions, update.guild_id)
            .await;
        let mut any = false;
        for link in &links {
            let Some(hub_id) = self.hub_id(link, channel_id, update.id.get()).await else {
                continue;
            };
            any = true;
            let event = ChannelEvent::MessageEdit {
                channel_id: link.hub_channel.clone(),
                message_id: hub_id,
                content: content.clone(),
                edited_at: edited_at.timestamp_millis(),
            };
            self.publish(&event, link).await;
        }
        if !any && !self.defer(GatewayEvent::Update(update), attempt) {
            self.ignored("unmapped_message");
        }
    }

    pub(super) async fn render_update(
        &self,
        content: &str,
        mentions: &[User],
        guild: Option<serenity::model::id::GuildId>,
    ) -> String {
        self.render_with(content, mentions, guild, HashMap::new())
            .await
    }

    pub(super) async fn delete(
        &mut self,
        channel_id: u64,
        message_id: u64,
        guild: Option<u64>,
        attempt: u32,
    ) {
        if self.shared.deleted_by_us(message_id) {
            return self.ignored("own_message");
        }
        let Location::Linked { links, .. } = self.locate(channel_id, guild).await else {
            return self.ignored("unlinked_channel");
        };
        // A moderator deleting an agent's post removes only Discord's copy: the agent's hub
        // message stays (the bridge marks its own posts).
        let own_key = self.shared.keys().own(message_id);
        let store = self.shared.hub.store();
        let own = self
            .store("own message lookup", || {
                store.one(Op::Exists {
                    key: own_key.clone(),
                })
            })
            .await
            .and_then(|reply| reply.as_int())
            .unwrap_or(0)
            > 0;
        if own {
            return self.ignored("own_message");
        }
        let mut any = false;
        for link in &links {
            let Some(hub_id) = self.hub_id(link, channel_id, message_id).await else {
                continue;
            };
            any = true;
            let event = ChannelEvent::MessageDelete {
                channel_id: link.hub_channel.clone(),
                message_id: hub_id,
                deleted_at: now_millis(),
            };
            self.publish(&event, link).await;
        }
        if !any {
            let event = GatewayEvent::Delete {
                channel_id,
                message_id,
                guild_id: guild,
            };
            if !self.defer(event, attempt) {
                self.ignored("unmapped_message");
            }
        }
    }

    pub(super) async fn reaction(
        &mut self,
        reaction: Box<serenity::model::channel::Reaction>,
        added: bool,
        attempt: u32,
    ) {
        let Some(user) = reaction.user_id.map(|id| id.get()) else {
            return self.ignored("anonymous_reaction");
        };
        if user == self.shared.bot_id() {
            return self.ignored("own_reaction");
        }
        let channel_id = reaction.channel_id.get();
        let guild = reaction.guild_id.map(|id| id.get());
        let Location::Linked { links, .. } = self.locate(channel_id, guild).await else {
            return self.ignored("unlinked_channel");
        };
        let sender = ExternalId::new(crate::PLATFORM, user.to_string()).to_string();
        if attempt == 0 {
            let limiter = self.shared.hub.limiter();
            let decision = self
                .store("rate limit", || limiter.check(Action::Reaction, &sender))
                .await;
            if let Some(Decision::Rejected { .. }) = decision {
                // People are told about messages; a reaction over the limit is only counted.
                self.shared
                    .hub
                    .metrics()
                    .rate_limit_rejections
                    .get_or_create(&ActionDirection {
                        action: Action::Reaction,
                        direction: Direction::Inbound,
                    })
                    .inc();
                return;
            }
        }
        let emoji = format::hub_emoji(&reaction.emoji);
        let mut any = false;
        for link in &links {
            let Some(hub_id) = self
                .hub_id(link, channel_id, reaction.message_id.get())
                .await
            else {
                continue;
            };
            any = true;
            let channel_id = link.hub_channel.clone();
            let event = if added {
                ChannelEvent::ReactionAdd {
                    channel_id,
                    message_id: hub_id,
                    emoji: emoji.clone(),
                    agent_id: sender.clone(),
                }
            } else {
                ChannelEvent::ReactionRemove {
                    channel_id,
                    message_id: hub_id,
                    emoji: emoji.clone(),
                    agent_id: sender.clone(),
                }
            };
            self.publish(&event, link).await;
        }
        if !any && !self.defer(GatewayEvent::Reaction { reaction, added }, attempt) {
            self.ignored("unmapped_message");
        }
    }

    pub(super) async fn typing(&mut self, typing: &serenity::model::event::TypingStartEvent) {
        let user = typing.user_id.get();
        if user == self.shared.bot_id() {
            return self.ignored("own_typing");
        }
        let channel_id = typing.channel_id.get();
        let guild = typing.guild_id.map(|id| id.get());
        let Location::Linked { links, thread } = self.locate(channel_id, guild).await else {
            return self.ignored("unlinked_channel");
        };
        let agent_id = ExternalId::new(crate::PLATFORM, user.to_string()).to_string();
        for link in &links {
            let thread_id = match thread {
                Some(thread) => self.known_hub_thread(link, thread).await.flatten(),
                None => None,
            };
            let event = ChannelEvent::Typing {
                channel_id: link.hub_channel.clone(),
                agent_id: agent_id.clone(),
                started: true,
                thread_id,
            };
            self.publish(&event, link).await;
        }
    }
}
