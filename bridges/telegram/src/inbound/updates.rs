//! Each kind of Telegram update read into the relay engine's platform events: what is a person's
//! and where it happened. The engine decides which hub channels it goes to and publishes it once.

use hub_bridge_sdk::event::now_millis;
use hub_bridge_sdk::relay::{
    Handled, Parent, PartId, Person, Place, PlatformEvent, Said, ThreadRef, Whisper,
};
use hub_bridge_sdk::{ExternalId, StoreError};
use teloxide::prelude::*;
use teloxide::types::{ChatMemberUpdated, MessageReactionUpdated, UpdateKind, User};

use super::describe::{describe, display_name, emojis, Described, Speaker};
use super::Inbound;
use crate::bridge::chat_of;

impl Inbound<'_> {
    pub(super) async fn handle(&self, update: &Update) -> Result<(), StoreError> {
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
        self.shared.relay.ignored(reason);
    }

    async fn publish(&self, event: PlatformEvent) -> Result<Handled, StoreError> {
        self.shared.relay.publish(&event).await
    }

    /// The person a group message is from, or `None` (counted) when it is no person's.
    fn sender<'m>(&self, message: &'m Message) -> Option<&'m User> {
        let Some(from) = message.from.as_ref() else {
            // Channel posts without a sender chat speak as nobody the hub could name.
            self.ignored("no_sender");
            return None;
        };
        if from.id.0 == self.shared.me_id {
            self.ignored("own_message");
            return None;
        }
        Some(from)
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
        let Some(from) = self.sender(message) else {
            return Ok(());
        };
        let chat = message.chat.id.0;
        let date = message.date.timestamp();
        if let Some(members) = message.new_chat_members() {
            for member in members.iter().filter(|m| m.id.0 != self.shared.me_id) {
                self.membership(chat, member, true, date).await?;
            }
            return Ok(());
        }
        if let Some(member) = message.left_chat_member() {
            if member.id.0 != self.shared.me_id {
                self.membership(chat, member, false, date).await?;
            }
            return Ok(());
        }
        self.person_message(update_id, message, from).await
    }

    /// An album's updates as one message: the first part's, with every part's file and the
    /// first caption (Telegram puts the album's caption on one of its parts).
    pub(super) async fn album(&self, parts: &[Update]) -> Result<(), StoreError> {
        let messages: Vec<(u32, &Message)> = parts
            .iter()
            .filter_map(|update| match &update.kind {
                UpdateKind::Message(message) => Some((update.id.0, message)),
                _ => None,
            })
            .collect();
        let Some(&(update_id, first)) = messages.first() else {
            return Ok(());
        };
        let Some(from) = self.sender(first) else {
            return Ok(());
        };
        let Some(mut said) = self.said(update_id, first, from) else {
            return Ok(());
        };
        for (_, message) in &messages[1..] {
            let Some(described) = describe(message) else {
                continue;
            };
            if said.content.is_empty() {
                said.content = described.content;
            }
            said.files.extend(described.files);
        }
        self.publish(PlatformEvent::Message(said)).await.map(drop)
    }

    /// A person's message in a group: with its parent and, in a forum topic, its thread.
    async fn person_message(
        &self,
        update_id: u32,
        message: &Message,
        from: &User,
    ) -> Result<(), StoreError> {
        let Some(said) = self.said(update_id, message, from) else {
            return Ok(());
        };
        self.publish(PlatformEvent::Message(said)).await.map(drop)
    }

    /// A person's group message as the engine takes it; `None` (counted) for one the hub does not
    /// take.
    fn said(&self, update_id: u32, message: &Message, from: &User) -> Option<Said> {
        let Some(described) = describe(message) else {
            self.ignored("unsupported_message");
            return None;
        };
        let speaker = Speaker::of(message, from);
        let date_ms = message.date.timestamp_millis();
        // Telegram dates have second precision; within that second, arrival order breaks ties.
        let timestamp = now_millis().clamp(date_ms, date_ms + 999);
        // A message in a forum topic is in the topic's hub thread, when the bridge opened it.
        let topic = message
            .thread_id
            .filter(|_| message.is_topic_message)
            .map(|topic| ThreadRef(topic.0 .0.to_string()));
        let said = Said {
            place: Place::on_platform(chat_of(message.chat.id.0), topic),
            id: PartId(message.id.0.to_string()),
            author: Person {
                id: speaker.id,
                name: speaker.name,
                addressed_as: speaker.short_name,
                mention: None,
            },
            content: described.content,
            files: described.files,
            timestamp,
            reply_to: message.reply_to_message().map(|parent| Parent {
                id: PartId(parent.id.0.to_string()),
                thread: None,
            }),
            thread_root: None,
            received: Some(std::time::Instant::now()),
            claim: update_claim(update_id),
        };
        Some(said)
    }

    async fn membership(
        &self,
        chat: i64,
        member: &User,
        joined: bool,
        date: i64,
    ) -> Result<(), StoreError> {
        let verb = if joined { "join" } else { "leave" };
        // Telegram reports one change both as a service message and as a chat_member update
        // with the same date: one claim covers both.
        let event = PlatformEvent::Member {
            chat: chat_of(chat),
            person: ExternalId::new(crate::PLATFORM, member.id.0.to_string()),
            joined,
            at: date * 1000,
            claim: format!("{chat}:{}:{verb}:{date}", member.id.0),
        };
        self.publish(event).await.map(drop)
    }

    async fn member_change(&self, change: &ChatMemberUpdated) -> Result<(), StoreError> {
        let member = &change.new_chat_member.user;
        if member.id.0 == self.shared.me_id {
            self.ignored("bot_membership");
            return Ok(());
        }
        let was = change.old_chat_member.kind.is_present();
        let is = change.new_chat_member.kind.is_present();
        if was == is {
            self.ignored("member_status_change");
            return Ok(());
        }
        let (chat, date) = (change.chat.id.0, change.date.timestamp());
        self.membership(chat, member, is, date).await
    }

    async fn edit(&self, update_id: u32, message: &Message) -> Result<(), StoreError> {
        if message.chat.is_private() {
            self.ignored("private_edit");
            return Ok(());
        }
        if self.sender(message).is_none() {
            return Ok(());
        }
        let Some(Described { content, .. }) = describe(message) else {
            self.ignored("unsupported_message");
            return Ok(());
        };
        let edited_at = message
            .edit_date()
            .map_or_else(now_millis, |date| date.timestamp_millis());
        let event = PlatformEvent::Edit {
            place: Place::on_platform(chat_of(message.chat.id.0), None),
            id: PartId(message.id.0.to_string()),
            content,
            edited_at,
            claim: Some(update_claim(update_id)),
        };
        if self.publish(event).await? == Handled::Unmapped {
            self.ignored("edit_of_unknown_message");
        }
        Ok(())
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
        let old = emojis(&reaction.old_reaction);
        let new = emojis(&reaction.new_reaction);
        let added: Vec<String> = new.iter().filter(|e| !old.contains(e)).cloned().collect();
        let removed: Vec<String> = old.iter().filter(|e| !new.contains(e)).cloned().collect();
        if added.is_empty() && removed.is_empty() {
            self.ignored("reaction_unchanged");
            return Ok(());
        }
        let event = PlatformEvent::Reaction {
            place: Place::on_platform(chat_of(reaction.chat.id.0), None),
            id: PartId(reaction.message_id.0.to_string()),
            person: person(user),
            added,
            removed,
            claim: update_claim(update_id),
            once: true,
        };
        if self.publish(event).await? == Handled::Unmapped {
            self.ignored("reaction_to_unknown_message");
        }
        Ok(())
    }

    /// A private message to the bot: a command, or a direct message to an agent.
    async fn private_message(
        &self,
        update_id: u32,
        message: &Message,
        from: &User,
    ) -> Result<(), StoreError> {
        let Some(described) = describe(message) else {
            self.ignored("unsupported_message");
            return Ok(());
        };
        // A direct message carries text only: the file is named in it.
        let text = described.as_text();
        let whisper = Whisper {
            chat: chat_of(message.chat.id.0),
            author: person(from),
            user_id: from.id.0.to_string(),
            text,
            timestamp: now_millis(),
            live: true,
            claim: update_claim(update_id),
        };
        self.publish(PlatformEvent::Private(whisper))
            .await
            .map(drop)
    }
}

/// A Telegram user as the hub sees them; notices address them by their first name.
fn person(user: &User) -> Person {
    Person {
        id: ExternalId::new(crate::PLATFORM, user.id.0.to_string()),
        name: display_name(user),
        addressed_as: user.first_name.clone(),
        mention: None,
    }
}

/// Names an update for the decisions taken once per update (its limit count, its publishes):
/// update ids are unique per bot, and a redelivered update has the same one.
fn update_claim(update_id: u32) -> String {
    format!("update:{update_id}")
}
