//! Telegram -> hub: the bridge's own getUpdates loop and the mapping of each update onto hub
//! events (SPEC sections 5 and 6).
//!
//! Delivery is at least once on Telegram's side and exactly once on the hub's: the update offset
//! is stored under `{prefix}bridge:telegram:{botId}:offset` and advanced only after an update's events are
//! published, and every publish claims a key in the same atomic step (the platform message id for
//! messages, the update id otherwise), so an update delivered again after a crash publishes
//! nothing new. While the store is unreachable the update is retried, never skipped.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use hub_bridge_sdk::dm::{self, Private, PrivateChats};
use hub_bridge_sdk::event::{
    now_millis, ChannelEvent, ChannelMessage, ContentBlock, Envelope, Member,
};
use hub_bridge_sdk::health::Component;
use hub_bridge_sdk::limits::Action;
use hub_bridge_sdk::relay::{LimitNotice, Place, Readiness, ThreadRef};
use hub_bridge_sdk::{BridgeError, ExternalId, Op, Source, StoreError};
use teloxide::prelude::*;
use teloxide::types::{
    AllowedUpdate, ChatMemberUpdated, MessageReactionUpdated, ReactionType, UpdateKind, User,
};
use teloxide::{ApiError, RequestError};

use crate::bridge::chat_of;
use crate::bridge::Shared;
use crate::connector::origin;
use crate::render::human_size;

/// How long an update's publish claims are kept: Telegram forgets updates after 24 hours.
const CLAIM_TTL: Duration = Duration::from_secs(2 * 24 * 3600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The update kinds the bridge asks for; reactions and member changes are only sent on request.
const ALLOWED: [AllowedUpdate; 5] = [
    AllowedUpdate::Message,
    AllowedUpdate::EditedMessage,
    AllowedUpdate::MessageReaction,
    AllowedUpdate::ChatMember,
    AllowedUpdate::MyChatMember,
];

/// Polls Telegram and publishes what arrives, until the bridge stops. Returns an error only for
/// what a restart cannot cure (a rejected token).
pub async fn run(shared: Arc<Shared>, status: Component) -> Result<(), BridgeError> {
    let inbound = Inbound { shared: &shared };
    let offset_key = shared.hub.keys().telegram().offset(shared.me_id);
    let legacy_key = shared.hub.keys().telegram().legacy_offset();
    let Some(mut offset) = inbound.load_offset(&offset_key, &legacy_key, &status).await else {
        return Ok(());
    };
    let ready = format!("polling Telegram as @{}", shared.me_username);
    status.ready(&ready);
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut request = shared
            .bot
            .get_updates()
            .timeout(shared.config.poll_timeout_secs)
            .allowed_updates(ALLOWED);
        if let Some(offset) = offset {
            request = request.offset(offset);
        }
        let polled = tokio::select! {
            _ = shared.shutdown.cancelled() => return Ok(()),
            polled = request.into_future() => polled,
        };
        let updates = match polled {
            Ok(updates) => updates,
            Err(error) => {
                let wait = match &error {
                    RequestError::Api(ApiError::InvalidToken) => {
                        return Err(BridgeError::Unauthorized {
                            platform: "telegram",
                            detail: "getUpdates: the bot token was rejected".to_owned(),
                        });
                    }
                    RequestError::RetryAfter(wait) => wait.duration(),
                    RequestError::Api(ApiError::CantGetUpdates) => {
                        // A webhook and getUpdates exclude each other; this bridge polls.
                        tracing::warn!("a webhook is set for this bot; deleting it to poll");
                        if let Err(error) = shared.bot.delete_webhook().await {
                            tracing::warn!(error = %shared.redactor.describe(&error), "could not delete the webhook");
                        }
                        backoff
                    }
                    _ => backoff,
                };
                let detail = shared.redactor.describe(&error);
                tracing::warn!(error = %detail, retry_in = ?wait, "getUpdates failed");
                status.not_ready(&format!("Telegram getUpdates failing: {detail}"));
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if !inbound.sleep(wait).await {
                    return Ok(());
                }
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        status.ready(&ready);
        let Some(last) = updates.last().map(|update| update.id.0) else {
            continue;
        };
        for update in &updates {
            if !inbound.handle_until_done(update, &status, &ready).await {
                return Ok(());
            }
        }
        // Telegram forgets everything below the offset, so it moves only now that every update
        // of the batch is published.
        let next = i32::try_from(last.saturating_add(1)).unwrap_or(i32::MAX);
        offset = Some(next);
        let stored = shared
            .hub
            .store()
            .one(Op::Set {
                key: offset_key.clone(),
                value: next.to_string(),
                ttl: None,
                only_if_absent: false,
            })
            .await;
        if let Err(error) = stored {
            // The claims keep a redelivery from publishing twice; the next batch stores it.
            tracing::warn!(%error, "could not store the Telegram offset");
        }
        shared.relay.connector().pacer.prune();
    }
}

struct Inbound<'a> {
    shared: &'a Shared,
}

impl Inbound<'_> {
    /// Sleeps unless the bridge stops first; false when it stopped.
    async fn sleep(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.shared.shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// The stored offset (`None` before the first update ever); waits for the store. `None` from
    /// the outer option means the bridge stopped meanwhile.
    ///
    /// Versions before the offset was keyed by bot kept it under `legacy_key`. When the bot's key
    /// is absent and that one exists, it is taken over once (moved to the bot's key and deleted):
    /// the old key cannot say which bot it belonged to, so an upgrade that also changes the token
    /// starts the new bot from that offset once, which at worst skips updates the new bot never
    /// had below it (Telegram's update ids are per bot).
    async fn load_offset(
        &self,
        key: &str,
        legacy_key: &str,
        status: &Component,
    ) -> Option<Option<i32>> {
        let readiness = Readiness {
            status,
            ready: "read the Telegram offset",
        };
        self.shared
            .relay
            .until_stored("offset", Some(&readiness), || {
                self.read_offset(key, legacy_key)
            })
            .await
    }

    async fn read_offset(&self, key: &str, legacy_key: &str) -> Result<Option<i32>, StoreError> {
        let store = self.shared.hub.store();
        let get = |key: &str| Op::Get {
            key: key.to_owned(),
        };
        let mut replies = store
            .exec(vec![get(key), get(legacy_key)])
            .await?
            .into_iter();
        let parse = |reply: Option<hub_bridge_sdk::Reply>| {
            reply
                .and_then(|reply| reply.into_text())
                .and_then(|text| text.parse::<i32>().ok())
        };
        let current = parse(replies.next());
        let legacy = parse(replies.next());
        let (None, Some(legacy)) = (current, legacy) else {
            return Ok(current);
        };
        tracing::info!(
            offset = legacy,
            "taking over the Telegram offset stored before it was keyed by bot"
        );
        store
            .exec(vec![
                Op::Set {
                    key: key.to_owned(),
                    value: legacy.to_string(),
                    ttl: None,
                    only_if_absent: false,
                },
                Op::Del {
                    key: legacy_key.to_owned(),
                },
            ])
            .await?;
        Ok(Some(legacy))
    }

    /// Handles one update, retrying while the store is unreachable; false when the bridge stopped.
    async fn handle_until_done(&self, update: &Update, status: &Component, ready: &str) -> bool {
        let readiness = Readiness { status, ready };
        self.shared
            .relay
            .handle_until_stored("update", Some(&readiness), || self.handle(update))
            .await
    }

    async fn handle(&self, update: &Update) -> Result<(), StoreError> {
        let update_id = update.id.0;
        match &update.kind {
            UpdateKind::Message(message) => self.message(update_id, message).await,
            UpdateKind::EditedMessage(message) => self.edit(update_id, message).await,
            UpdateKind::MessageReaction(reaction) => self.reaction(update_id, reaction).await,
            UpdateKind::ChatMember(change) => self.member_change(change).await,
            UpdateKind::MyChatMember(change) => {
                let chat = change.chat.id.0;
                if self.shared.is_linked(chat) && !change.new_chat_member.kind.is_present() {
                    // Relays to this chat will be dead-lettered from now on; say why once here.
                    tracing::warn!(chat, "the bot was removed from a linked chat");
                }
                self.ignored("bot_membership");
                Ok(())
            }
            UpdateKind::Error(_) => {
                tracing::debug!(update_id, "unreadable update skipped");
                self.ignored("unreadable_update");
                Ok(())
            }
            _ => {
                self.ignored("unsupported_update");
                Ok(())
            }
        }
    }

    fn ignored(&self, reason: &'static str) {
        self.shared.hub.metrics().count_ignored("telegram", reason);
    }

    fn count_published(&self, type_name: &str) {
        self.shared
            .hub
            .metrics()
            .count_published("telegram", type_name);
    }

    /// The hub channels a group message goes to, or `None` (counted) when it goes nowhere.
    fn channels_for<'m>(&self, message: &'m Message) -> Option<(&'m User, Vec<String>)> {
        let Some(from) = message.from.as_ref() else {
            // Channel posts and anonymous admins speak as a chat, not as a person.
            self.ignored("no_sender");
            return None;
        };
        if from.id.0 == self.shared.me_id {
            self.ignored("own_message");
            return None;
        }
        let chat = message.chat.id.0;
        if !self.shared.is_linked(chat) {
            self.ignored("unlinked_chat");
            return None;
        }
        let channels = self.shared.channels_of(chat);
        if channels.is_empty() {
            self.ignored("stopped_link");
            return None;
        }
        Some((from, channels))
    }

    async fn message(&self, update_id: u32, message: &Message) -> Result<(), StoreError> {
        if message.chat.is_private() {
            if let Some(from) = message
                .from
                .as_ref()
                .filter(|from| from.id.0 != self.shared.me_id)
            {
                return self.private_message(update_id, message, from).await;
            }
            self.ignored("own_message");
            return Ok(());
        }
        let Some((from, channels)) = self.channels_for(message) else {
            return Ok(());
        };
        let chat = message.chat.id.0;
        if let Some(members) = message.new_chat_members() {
            let date = message.date.timestamp();
            for member in members.iter().filter(|m| m.id.0 != self.shared.me_id) {
                self.membership(chat, &channels, member, true, date).await?;
            }
            return Ok(());
        }
        if let Some(member) = message.left_chat_member() {
            if member.id.0 != self.shared.me_id {
                let date = message.date.timestamp();
                self.membership(chat, &channels, member, false, date)
                    .await?;
            }
            return Ok(());
        }
        self.person_message(update_id, message, from, &channels)
            .await
    }

    /// A person's message in a linked chat: counted against their limit, then published once
    /// into each hub channel the chat is linked to (with its parent and thread).
    async fn person_message(
        &self,
        update_id: u32,
        message: &Message,
        from: &User,
        channels: &[String],
    ) -> Result<(), StoreError> {
        let chat = message.chat.id.0;
        let Some((content, blocks)) = describe(message) else {
            self.ignored("unsupported_message");
            return Ok(());
        };
        let chat_key = chat.to_string();
        let message_key = message.id.0.to_string();
        let map = &self.shared.map;
        // Delivered again (a retry after a store error, or after a crash): its first channel has
        // it already, and was counted against the limit then; the other channels' publishes
        // below have claims of their own, so those still missing are published now.
        let known = map.hub_id(crate::PLATFORM, &chat_key, &message_key).await?;
        let speaker = Speaker::of(message, from);
        let sender = speaker.id.to_string();
        if known.is_none()
            && !self
                .within_limit(
                    update_id,
                    Action::Message,
                    &sender,
                    chat,
                    &speaker.short_name,
                )
                .await?
        {
            return Ok(());
        }

        let (parent, thread) = self.parent_and_thread(chat, channels, message).await?;
        let date_ms = message.date.timestamp_millis();
        // Telegram dates have second precision; within that second, arrival order breaks ties.
        let timestamp = now_millis().clamp(date_ms, date_ms + 999);
        let hub_message = ChannelMessage {
            id: uuid::Uuid::new_v4().to_string(),
            content,
            sender_id: sender,
            timestamp,
            thread_id: thread.clone(),
            parent_message_id: parent,
            edited: None,
            reactions: None,
            author_type: Some("external".to_owned()),
            author_name: Some(speaker.name),
            external_platform: Some(crate::PLATFORM.as_str().to_owned()),
            external_source_id: Some(format!("{chat}:{}", message.id.0)),
            content_blocks: (!blocks.is_empty()).then_some(blocks),
        };
        let origin = origin(chat);
        let event_for = |channel: &str, message: ChannelMessage| ChannelEvent::Message {
            channel_id: channel.to_owned(),
            message,
        };
        let published = map
            .publish_once(
                crate::PLATFORM,
                &chat_key,
                &message_key,
                &hub_message.id,
                &event_for(&channels[0], hub_message.clone()),
                &origin,
            )
            .await?;
        let mut hub_message = hub_message;
        if published {
            self.count_published("channel.message");
        } else if let Some(existing) = match known {
            Some(known) => Some(known),
            None => map.hub_id(crate::PLATFORM, &chat_key, &message_key).await?,
        } {
            hub_message.id = existing;
        }
        let mut ops = Vec::new();
        for (index, channel) in channels.iter().enumerate().skip(1) {
            let event = event_for(channel, hub_message.clone());
            ops.push(self.publish_once_op(update_id, index, &hub_message.id, &event, &origin));
        }
        if let Some(thread) = thread {
            ops.push(
                self.shared
                    .relay
                    .records()
                    .thread_of_op(&hub_message.id, &thread),
            );
        }
        self.exec_publishes(ops, "channel.message").await
    }

    /// The hub message a person's message answers and the hub thread it is in: the thread of its
    /// parent, or the hub thread of the forum topic it was written in.
    async fn parent_and_thread(
        &self,
        chat: i64,
        channels: &[String],
        message: &Message,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        let map = &self.shared.map;
        let chat_key = chat.to_string();
        let parent = match message.reply_to_message() {
            Some(parent) => {
                map.hub_id(crate::PLATFORM, &chat_key, &parent.id.0.to_string())
                    .await?
            }
            None => None,
        };
        let records = self.shared.relay.records();
        let thread = match &parent {
            Some(parent) => records.thread_of(parent).await?,
            None => None,
        };
        // A message in a forum topic the bridge opened for a hub thread is in that thread.
        let thread = match (thread, message.thread_id) {
            (Some(thread), _) => Some(thread),
            (None, Some(topic)) if message.is_topic_message => {
                let home = Place {
                    chat: chat_of(chat),
                    hub_channel: Some(channels[0].clone()),
                    thread: None,
                };
                let topic = ThreadRef(topic.0 .0.to_string());
                records
                    .hub_thread(&self.shared.relay.map_chat(&home), &topic)
                    .await?
            }
            (None, _) => None,
        };
        Ok((parent, thread))
    }

    /// Runs publish-once ops (and others), counting those that published.
    async fn exec_publishes(&self, ops: Vec<Op>, type_name: &str) -> Result<(), StoreError> {
        self.shared.relay.publish_all(ops, type_name).await
    }

    /// Publishes `event` unless this update's `index`-th event was published before.
    fn publish_once_op(
        &self,
        update_id: u32,
        index: usize,
        claim_value: &str,
        event: &ChannelEvent,
        origin: &str,
    ) -> Op {
        self.claimed_publish(
            self.shared
                .hub
                .keys()
                .relay(crate::PLATFORM.as_str())
                .claim(&format!("update:{update_id}"), index),
            claim_value,
            Source::Channel(event.channel_id().to_owned()).channel_name(),
            Envelope::new(event, now_millis())
                .with_origin(origin)
                .to_json(),
        )
    }

    fn claimed_publish(
        &self,
        claim_key: String,
        value: &str,
        channel: String,
        payload: String,
    ) -> Op {
        Op::PublishOnce {
            claim_key,
            claim_value: value.to_owned(),
            ttl: CLAIM_TTL,
            channel,
            payload,
        }
    }

    /// Counts the action against the person's limit, once per update; over it, tells them once
    /// per window.
    async fn within_limit(
        &self,
        update_id: u32,
        action: Action,
        sender: &str,
        chat: i64,
        name: &str,
    ) -> Result<bool, StoreError> {
        let notice = LimitNotice {
            chat: chat_of(chat),
            who: name.to_owned(),
            mention: None,
        };
        self.shared
            .relay
            .within_limit(action, sender, &format!("update:{update_id}"), Some(notice))
            .await
    }

    async fn membership(
        &self,
        chat: i64,
        channels: &[String],
        member: &User,
        joined: bool,
        date: i64,
    ) -> Result<(), StoreError> {
        let agent_id = ExternalId::new(crate::PLATFORM, member.id.0.to_string()).to_string();
        let verb = if joined { "join" } else { "leave" };
        let origin = origin(chat);
        let ops = channels
            .iter()
            .map(|channel| {
                let event = if joined {
                    ChannelEvent::MemberJoin {
                        channel_id: channel.clone(),
                        member: Member {
                            agent_id: agent_id.clone(),
                            joined_at: date * 1000,
                            role: "member".to_owned(),
                        },
                    }
                } else {
                    ChannelEvent::MemberLeave {
                        channel_id: channel.clone(),
                        agent_id: agent_id.clone(),
                        left_at: Some(date * 1000),
                    }
                };
                // Telegram reports one change both as a service message and as a chat_member
                // update with the same date: one claim covers both.
                self.claimed_publish(
                    self.shared
                        .hub
                        .keys()
                        .relay(crate::PLATFORM.as_str())
                        .member_claim(channel, &format!("{chat}:{}:{verb}:{date}", member.id.0)),
                    &agent_id,
                    Source::Channel(channel.clone()).channel_name(),
                    Envelope::new(&event, now_millis())
                        .with_origin(&origin)
                        .to_json(),
                )
            })
            .collect();
        let type_name = if joined {
            "channel.member.join"
        } else {
            "channel.member.leave"
        };
        self.exec_publishes(ops, type_name).await
    }

    async fn member_change(&self, change: &ChatMemberUpdated) -> Result<(), StoreError> {
        let chat = change.chat.id.0;
        let member = &change.new_chat_member.user;
        if member.id.0 == self.shared.me_id {
            self.ignored("bot_membership");
            return Ok(());
        }
        if !self.shared.is_linked(chat) {
            self.ignored("unlinked_chat");
            return Ok(());
        }
        let was = change.old_chat_member.kind.is_present();
        let is = change.new_chat_member.kind.is_present();
        if was == is {
            self.ignored("member_status_change");
            return Ok(());
        }
        let channels = self.shared.channels_of(chat);
        self.membership(chat, &channels, member, is, change.date.timestamp())
            .await
    }

    async fn edit(&self, update_id: u32, message: &Message) -> Result<(), StoreError> {
        if message.chat.is_private() {
            self.ignored("private_edit");
            return Ok(());
        }
        let Some((_, channels)) = self.channels_for(message) else {
            return Ok(());
        };
        let chat = message.chat.id.0;
        let Some((content, _)) = describe(message) else {
            self.ignored("unsupported_message");
            return Ok(());
        };
        let Some(hub_id) = self
            .shared
            .map
            .hub_id(
                crate::PLATFORM,
                &chat.to_string(),
                &message.id.0.to_string(),
            )
            .await?
        else {
            self.ignored("edit_of_unknown_message");
            return Ok(());
        };
        let edited_at = message
            .edit_date()
            .map_or_else(now_millis, |date| date.timestamp_millis());
        let origin = origin(chat);
        let ops = channels
            .iter()
            .enumerate()
            .map(|(index, channel)| {
                let event = ChannelEvent::MessageEdit {
                    channel_id: channel.clone(),
                    message_id: hub_id.clone(),
                    content: content.clone(),
                    edited_at,
                };
                self.publish_once_op(update_id, index, &hub_id, &event, &origin)
            })
            .collect();
        self.exec_publishes(ops, "channel.message.edit").await
    }

    async fn reaction(
        &self,
        update_id: u32,
        reaction: &MessageReactionUpdated,
    ) -> Result<(), StoreError> {
        let Some(user) = reaction.user() else {
            self.ignored("anonymous_reaction");
            return Ok(());
        };
        if user.id.0 == self.shared.me_id {
            self.ignored("own_message");
            return Ok(());
        }
        let chat = reaction.chat.id.0;
        if !self.shared.is_linked(chat) {
            self.ignored("unlinked_chat");
            return Ok(());
        }
        let channels = self.shared.channels_of(chat);
        if channels.is_empty() {
            self.ignored("stopped_link");
            return Ok(());
        }
        let Some(hub_id) = self
            .shared
            .map
            .hub_id(
                crate::PLATFORM,
                &chat.to_string(),
                &reaction.message_id.0.to_string(),
            )
            .await?
        else {
            self.ignored("reaction_to_unknown_message");
            return Ok(());
        };
        let old = emojis(&reaction.old_reaction);
        let new = emojis(&reaction.new_reaction);
        let added: Vec<&String> = new.iter().filter(|e| !old.contains(e)).collect();
        let removed: Vec<&String> = old.iter().filter(|e| !new.contains(e)).collect();
        if added.is_empty() && removed.is_empty() {
            self.ignored("reaction_unchanged");
            return Ok(());
        }
        let sender = ExternalId::new(crate::PLATFORM, user.id.0.to_string()).to_string();
        if !self
            .within_limit(update_id, Action::Reaction, &sender, chat, &user.first_name)
            .await?
        {
            return Ok(());
        }
        let origin = origin(chat);
        let mut add_ops = Vec::new();
        let mut remove_ops = Vec::new();
        let mut index = 0;
        for channel in &channels {
            for (emoji, add) in added
                .iter()
                .map(|e| (*e, true))
                .chain(removed.iter().map(|e| (*e, false)))
            {
                let (channel_id, message_id, emoji, agent_id) = (
                    channel.clone(),
                    hub_id.clone(),
                    emoji.clone(),
                    sender.clone(),
                );
                let event = if add {
                    ChannelEvent::ReactionAdd {
                        channel_id,
                        message_id,
                        emoji,
                        agent_id,
                    }
                } else {
                    ChannelEvent::ReactionRemove {
                        channel_id,
                        message_id,
                        emoji,
                        agent_id,
                    }
                };
                let op = self.publish_once_op(update_id, index, &hub_id, &event, &origin);
                index += 1;
                if add {
                    add_ops.push(op);
                } else {
                    remove_ops.push(op);
                }
            }
        }
        self.exec_publishes(remove_ops, "channel.reaction.remove")
            .await?;
        self.exec_publishes(add_ops, "channel.reaction.add").await
    }

    /// A private message to the bot: a command, or a direct message to an agent.
    async fn private_message(
        &self,
        update_id: u32,
        message: &Message,
        from: &User,
    ) -> Result<(), StoreError> {
        let chat = message.chat.id.0;
        let Some((text, _)) = describe(message) else {
            self.ignored("unsupported_message");
            return Ok(());
        };
        // Commands (`/help`, `/agents`, `/dm`) count against the person's message limit like
        // direct messages do, so nobody can make the bot answer without bound. A direct message
        // is counted here, once: `direct_message` finds this decision.
        let person = ExternalId::new(crate::PLATFORM, from.id.0.to_string()).to_string();
        if !self
            .within_limit(update_id, Action::Message, &person, chat, &from.first_name)
            .await?
        {
            return Ok(());
        }
        let private = PrivateChats::new(
            self.shared.hub.clone(),
            crate::PLATFORM,
            self.shared.config.dm_agent.clone(),
        );
        match private.read(&from.id.0.to_string(), &text).await? {
            Private::Reply(answer) => {
                self.shared
                    .relay
                    .notice(&chat_of(chat), answer, "telegram.command", None)
                    .await;
                Ok(())
            }
            Private::Send { agent, text } => {
                self.direct_message(update_id, chat, from, &agent, text)
                    .await
            }
        }
    }

    async fn direct_message(
        &self,
        update_id: u32,
        chat: i64,
        from: &User,
        agent: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        let person = ExternalId::new(crate::PLATFORM, from.id.0.to_string());
        if !self
            .within_limit(
                update_id,
                Action::Message,
                &person.to_string(),
                chat,
                &from.first_name,
            )
            .await?
        {
            return Ok(());
        }
        let event = dm::direct_message(&person, text, now_millis());
        let op = self.claimed_publish(
            self.shared
                .hub
                .keys()
                .relay(crate::PLATFORM.as_str())
                .claim(&format!("update:{update_id}"), 0),
            agent,
            Source::Agent(agent.to_owned()).channel_name(),
            event.to_json(),
        );
        self.exec_publishes(vec![op], "agent.direct_message").await
    }
}

/// Telegram's stand-in sender of messages that anonymous group admins write (as the group).
const GROUP_ANONYMOUS_BOT: u64 = 1_087_968_824;

/// Who a group message is from, as the hub sees them.
#[derive(Debug, PartialEq, Eq)]
struct Speaker {
    id: ExternalId,
    /// The name the hub shows.
    name: String,
    /// The name the bridge addresses them with.
    short_name: String,
}

impl Speaker {
    /// A person, or a chat speaking for itself: an anonymous admin (whom Telegram shows as the
    /// group, `from` being the GroupAnonymousBot) or a channel posting in the group. A chat is
    /// never a person: its id is the chat's (negative) id, so it cannot be merged with a user,
    /// and each admin's signature (`author_signature`, when the group shows them) makes an
    /// identity of its own, stable across messages.
    fn of(message: &Message, from: &User) -> Self {
        let sender_chat = message
            .sender_chat
            .as_ref()
            .or((from.id.0 == GROUP_ANONYMOUS_BOT).then_some(&message.chat));
        let Some(chat) = sender_chat else {
            return Self {
                id: ExternalId::new(crate::PLATFORM, from.id.0.to_string()),
                name: display_name(from),
                short_name: from.first_name.clone(),
            };
        };
        let title = chat.title().unwrap_or("anonymous admin").to_owned();
        match message.author_signature().filter(|s| !s.trim().is_empty()) {
            Some(signature) => Self {
                id: ExternalId::new(
                    crate::PLATFORM,
                    format!("{}_{:016x}", chat.id.0, fnv1a(signature)),
                ),
                name: format!("{signature} ({title})"),
                short_name: signature.to_owned(),
            },
            None => Self {
                id: ExternalId::new(crate::PLATFORM, chat.id.0.to_string()),
                name: title.clone(),
                short_name: title,
            },
        }
    }
}

/// FNV-1a, 64 bits: a hash that never changes between builds or versions, so that an admin's
/// signature maps to the same id forever.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `{prefix}bridge:telegram:{botId}:offset`: the update offset of one bot (update ids are per
/// bot, so a new token must not inherit another bot's offset). `base` is
/// `{prefix}bridge:telegram`.
/// `First Last (@username)`: how a person is named in the hub.
pub fn display_name(user: &User) -> String {
    let mut name = user.first_name.clone();
    if let Some(last) = user.last_name.as_deref().filter(|l| !l.is_empty()) {
        name.push(' ');
        name.push_str(last);
    }
    if let Some(username) = user.username.as_deref() {
        name.push_str(&format!(" (@{username})"));
    }
    name
}

fn emojis(reactions: &[ReactionType]) -> Vec<String> {
    reactions
        .iter()
        .filter_map(|reaction| match reaction {
            ReactionType::Emoji { emoji } => Some(emoji.clone()),
            ReactionType::CustomEmoji { custom_emoji_id } => {
                Some(format!("custom:{}", custom_emoji_id.0))
            }
            ReactionType::Paid => None,
        })
        .collect()
}

/// The hub content of a message and its attachments: the text, or what the media is (with the
/// caption). Attachments carry name, size and type, never a file URL (it would embed the token).
pub fn describe(message: &Message) -> Option<(String, Vec<ContentBlock>)> {
    if let Some(text) = message.text() {
        return Some((text.to_owned(), Vec::new()));
    }
    let block = |kind: &str, name: String, size: u32, mime: Option<String>| ContentBlock {
        kind: kind.to_owned(),
        name: Some(name),
        // teloxide fills in u32::MAX when Telegram leaves the size out.
        size: (size != u32::MAX).then_some(u64::from(size)),
        mime_type: mime,
        url: None,
    };
    let (label, block) = if let Some(sizes) = message.photo() {
        let largest = sizes.iter().max_by_key(|size| size.width * size.height)?;
        (
            "[photo]".to_owned(),
            block(
                "image",
                "photo.jpg".to_owned(),
                largest.file.size,
                Some("image/jpeg".to_owned()),
            ),
        )
    } else if let Some(sticker) = message.sticker() {
        let mime = if sticker.flags.is_animated {
            "application/x-tgsticker"
        } else if sticker.flags.is_video {
            "video/webm"
        } else {
            "image/webp"
        };
        let emoji = sticker.emoji.clone().unwrap_or_default();
        let label = if emoji.is_empty() {
            "[sticker]".to_owned()
        } else {
            format!("[sticker {emoji}]")
        };
        let name = sticker
            .set_name
            .clone()
            .unwrap_or_else(|| "sticker".to_owned());
        (
            label,
            block("sticker", name, sticker.file.size, Some(mime.to_owned())),
        )
    } else if let Some(voice) = message.voice() {
        (
            format!("[voice message, {} s]", voice.duration.seconds()),
            block(
                "audio",
                "voice.ogg".to_owned(),
                voice.file.size,
                voice.mime_type.as_ref().map(ToString::to_string),
            ),
        )
    } else if let Some(audio) = message.audio() {
        let name = audio
            .file_name
            .clone()
            .or_else(|| audio.title.clone())
            .unwrap_or_else(|| "audio".to_owned());
        (
            format!("[audio: {name}]"),
            block(
                "audio",
                name,
                audio.file.size,
                audio.mime_type.as_ref().map(ToString::to_string),
            ),
        )
    } else if let Some(video) = message.video() {
        let name = video
            .file_name
            .clone()
            .unwrap_or_else(|| "video.mp4".to_owned());
        (
            "[video]".to_owned(),
            block(
                "video",
                name,
                video.file.size,
                video.mime_type.as_ref().map(ToString::to_string),
            ),
        )
    } else if let Some(animation) = message.animation() {
        let name = animation
            .file_name
            .clone()
            .unwrap_or_else(|| "animation.mp4".to_owned());
        (
            "[GIF]".to_owned(),
            block(
                "video",
                name,
                animation.file.size,
                animation.mime_type.as_ref().map(ToString::to_string),
            ),
        )
    } else if let Some(note) = message.video_note() {
        (
            format!("[video message, {} s]", note.duration.seconds()),
            block("video", "video_note.mp4".to_owned(), note.file.size, None),
        )
    } else if let Some(document) = message.document() {
        let name = document
            .file_name
            .clone()
            .unwrap_or_else(|| "file".to_owned());
        let size = human_size(u64::from(document.file.size));
        (
            format!("[file: {name}, {size}]"),
            block(
                "file",
                name,
                document.file.size,
                document.mime_type.as_ref().map(ToString::to_string),
            ),
        )
    } else {
        return None;
    };
    let content = match message.caption() {
        Some(caption) if !caption.is_empty() => format!("{label} {caption}"),
        _ => label,
    };
    Some((content, vec![block]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_are_named_with_their_username() {
        let user: User = serde_json::from_str(
            r#"{"id":1,"is_bot":false,"first_name":"Alice","last_name":"Liddell","username":"alice"}"#,
        )
        .unwrap();
        assert_eq!(display_name(&user), "Alice Liddell (@alice)");
        let user: User =
            serde_json::from_str(r#"{"id":1,"is_bot":false,"first_name":"Bob"}"#).unwrap();
        assert_eq!(display_name(&user), "Bob");
    }

    fn group_message(extra: &str) -> (Message, User) {
        let json = format!(
            r#"{{"message_id":7,"date":1700000000,"text":"hi",
                "chat":{{"id":-100123,"type":"supergroup","title":"Ops Room"}},
                "from":{{"id":1087968824,"is_bot":true,"first_name":"Group","username":"GroupAnonymousBot"}}
                {extra}}}"#
        );
        let message: Message = serde_json::from_str(&json).expect("a message");
        let from = message.from.clone().expect("from");
        (message, from)
    }

    #[test]
    fn anonymous_admins_are_the_chat_or_their_signature_never_one_person() {
        let group = r#","sender_chat":{"id":-100123,"type":"supergroup","title":"Ops Room"}"#;
        let (message, from) = group_message(group);
        let plain = Speaker::of(&message, &from);
        assert_eq!(plain.id.to_string(), "external:telegram:-100123");
        assert_eq!(plain.name, "Ops Room");

        let (message, from) = group_message(&format!(r#"{group},"author_signature":"Ann""#));
        let ann = Speaker::of(&message, &from);
        let (message, from) = group_message(&format!(r#"{group},"author_signature":"Bob""#));
        let bob = Speaker::of(&message, &from);
        assert_eq!(ann.name, "Ann (Ops Room)");
        assert_ne!(ann.id, bob.id);
        assert_ne!(ann.id, plain.id);
        // Stable: the same signature is the same identity every time.
        let (message, from) = group_message(&format!(r#"{group},"author_signature":"Ann""#));
        assert_eq!(Speaker::of(&message, &from), ann);
        assert!(ann.id.to_string().starts_with("external:telegram:-100123_"));

        // Without `sender_chat`, the GroupAnonymousBot still speaks for the group, not as a user.
        let (message, from) = group_message("");
        assert_eq!(
            Speaker::of(&message, &from).id.to_string(),
            "external:telegram:-100123"
        );

        // A person is a person.
        let json = r#"{"message_id":8,"date":1700000000,"text":"hi",
            "chat":{"id":-100123,"type":"supergroup","title":"Ops Room"},
            "from":{"id":42,"is_bot":false,"first_name":"Alice"}}"#;
        let message: Message = serde_json::from_str(json).expect("a message");
        let from = message.from.clone().expect("from");
        let alice = Speaker::of(&message, &from);
        assert_eq!(alice.id.to_string(), "external:telegram:42");
        assert_eq!(alice.name, "Alice");
    }
}
