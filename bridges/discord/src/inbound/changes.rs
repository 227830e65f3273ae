//! Edits, deletes, reactions and typing in linked channels, read into the engine's platform
//! events on the messages they concern. An event whose message is not mapped yet is retried
//! shortly (its message may be just behind it in the queue).

use std::collections::HashMap;

use hub_bridge_sdk::relay::{PartId, PlatformEvent};
use hub_bridge_sdk::{ExternalId, Op};
use serenity::model::channel::Reaction;
use serenity::model::event::{MessageUpdateEvent, TypingStartEvent};
use serenity::model::user::User;

use super::{person, place, Inbound, Location};
use crate::format;
use crate::gateway::GatewayEvent;

impl Inbound {
    pub(super) async fn update(&mut self, update: Box<MessageUpdateEvent>, attempt: u32) {
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
        let guild = update.guild_id.map(|id| id.get());
        let Location::Linked { chat, thread } = self.locate(update.channel_id.get(), guild).await
        else {
            return self.ignored("unlinked_channel");
        };
        let mentions = update.mentions.clone().unwrap_or_default();
        let content = self
            .render_update(content, &mentions, update.guild_id)
            .await;
        let event = PlatformEvent::Edit {
            place: place(chat, thread),
            id: PartId(update.id.to_string()),
            content,
            edited_at: edited_at.timestamp_millis(),
            // Discord's updates carry no id of their own: each edit is published.
            claim: None,
        };
        self.publish_change(
            "publish edit",
            &event,
            GatewayEvent::Update(update),
            attempt,
        )
        .await;
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
        let Location::Linked { chat, thread } = self.locate(channel_id, guild).await else {
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
        let event = PlatformEvent::Delete {
            place: place(chat, thread),
            id: PartId(message_id.to_string()),
        };
        let retry = GatewayEvent::Delete {
            channel_id,
            message_id,
            guild_id: guild,
        };
        self.publish_change("publish delete", &event, retry, attempt)
            .await;
    }

    pub(super) async fn reaction(&mut self, reaction: Box<Reaction>, added: bool, attempt: u32) {
        let Some(user) = reaction.user_id.map(|id| id.get()) else {
            return self.ignored("anonymous_reaction");
        };
        if user == self.shared.bot_id() {
            return self.ignored("own_reaction");
        }
        let guild = reaction.guild_id.map(|id| id.get());
        let Location::Linked { chat, thread } = self.locate(reaction.channel_id.get(), guild).await
        else {
            return self.ignored("unlinked_channel");
        };
        let name = reaction.member.as_ref().map_or_else(
            || user.to_string(),
            |member| {
                format::display_name(
                    member.nick.as_deref(),
                    member.user.global_name.as_deref(),
                    &member.user.name,
                )
            },
        );
        let emoji = format::hub_emoji(&reaction.emoji);
        let message = reaction.message_id.get();
        let verb = if added { "add" } else { "remove" };
        let claim = format!("reaction:{message}:{user}:{emoji}:{verb}");
        let change = vec![emoji];
        let (added_emoji, removed) = if added {
            (change, Vec::new())
        } else {
            (Vec::new(), change)
        };
        let event = PlatformEvent::Reaction {
            place: place(chat, thread),
            id: PartId(message.to_string()),
            person: person(user, name),
            added: added_emoji,
            removed,
            claim,
            // The same person can add the same reaction again later: not one update.
            once: false,
        };
        let retry = GatewayEvent::Reaction { reaction, added };
        self.publish_change("publish reaction", &event, retry, attempt)
            .await;
    }

    pub(super) async fn typing(&mut self, typing: &TypingStartEvent) {
        let user = typing.user_id.get();
        if user == self.shared.bot_id() {
            return self.ignored("own_typing");
        }
        let guild = typing.guild_id.map(|id| id.get());
        let Location::Linked { chat, thread } = self.locate(typing.channel_id.get(), guild).await
        else {
            return self.ignored("unlinked_channel");
        };
        let event = PlatformEvent::Typing {
            place: place(chat, thread),
            person: ExternalId::new(crate::PLATFORM, user.to_string()),
        };
        self.publish("publish typing", &event).await;
    }
}
