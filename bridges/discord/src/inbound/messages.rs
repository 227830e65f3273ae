//! New messages in linked channels and their threads, read into the engine's [`Said`]: the
//! person, the text with mentions rendered as names, attachments and stickers as blocks, the
//! message it answers and the thread it is in. The engine publishes it (a `channel.message`, or a
//! `thread.message` with `thread.create` the first time a thread is seen) after the inbound limit.

use std::collections::HashMap;
use std::time::Instant;

use hub_bridge_sdk::event::ContentBlock;
use hub_bridge_sdk::media::FileRef;
use hub_bridge_sdk::relay::{Parent, PartId, PlatformEvent, Said, SharedFile, ThreadRef};
use serenity::model::channel::{Message, MessageType};
use serenity::model::sticker::StickerFormatType;
use serenity::model::user::User;

use super::{person, place, Inbound, Location, MAX_LOOKUPS_PER_MESSAGE};
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
            Location::Linked { chat, thread } => {
                self.linked_message(&message, chat, thread, received).await;
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

    /// A person's message in linked channel `chat` (in its thread `thread`), to the engine.
    async fn linked_message(
        &self,
        message: &Message,
        chat: u64,
        thread: Option<u64>,
        received: Option<Instant>,
    ) {
        let content = self
            .render(&message.content, &message.mentions, message)
            .await;
        let files = files(message, thread.unwrap_or(chat));
        if content.trim().is_empty() && files.is_empty() {
            return self.ignored("empty_message");
        }
        let name = format::display_name(
            message.member.as_ref().and_then(|m| m.nick.as_deref()),
            message.author.global_name.as_deref(),
            &message.author.name,
        );
        let reply_to = message.message_reference.as_ref().and_then(|reference| {
            let channel = reference.channel_id.get();
            Some(Parent {
                id: PartId(reference.message_id?.to_string()),
                thread: (channel != chat).then(|| ThreadRef(channel.to_string())),
            })
        });
        let said = Said {
            place: place(chat, thread),
            id: PartId(message.id.to_string()),
            author: person(message.author.id.get(), name),
            content,
            files,
            timestamp: message.timestamp.timestamp_millis(),
            reply_to,
            // A thread started on a message has that message's id (Discord's convention).
            thread_root: thread.map(|thread| PartId(thread.to_string())),
            received,
            // The key the limit counted messages under before the engine did: a message handled
            // again across the upgrade is not counted twice.
            claim: format!("message:{}", message.id),
        };
        self.publish("publish message", &PlatformEvent::Message(said))
            .await;
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

/// A linked message's attachments and stickers, each named by where Discord keeps it (the engine
/// links to it). `channel` is the channel the message is in (the thread, inside one).
fn files(message: &Message, channel: u64) -> Vec<SharedFile> {
    let attachments = format::content_blocks(&message.attachments).unwrap_or_default();
    let mut files: Vec<SharedFile> = attachments
        .into_iter()
        .zip(&message.attachments)
        .map(|(block, attachment)| SharedFile {
            // The CDN URL expires; the link finds a fresh one when it is read.
            block: ContentBlock { url: None, ..block },
            file: Some(FileRef::Discord {
                channel,
                message: message.id.get(),
                attachment: attachment.id.get(),
            }),
        })
        .collect();
    for sticker in &message.sticker_items {
        // Lottie stickers are animation data (JSON), the rest pictures.
        let (kind, extension, mime) = match sticker.format_type {
            StickerFormatType::Gif => (ContentBlock::IMAGE, "gif", "image/gif"),
            StickerFormatType::Lottie => (ContentBlock::FILE, "json", "application/json"),
            _ => (ContentBlock::IMAGE, "png", "image/png"),
        };
        files.push(SharedFile {
            block: ContentBlock {
                kind: kind.to_owned(),
                name: Some(sticker.name.clone()),
                mime_type: Some(mime.to_owned()),
                ..ContentBlock::default()
            },
            file: Some(FileRef::DiscordSticker {
                sticker: sticker.id.get(),
                extension: extension.to_owned(),
            }),
        });
    }
    files
}

/// Attachments and stickers as content blocks.
pub(super) fn blocks(message: &Message) -> Option<Vec<ContentBlock>> {
    let mut blocks = format::content_blocks(&message.attachments).unwrap_or_default();
    blocks.extend(stickers(message));
    (!blocks.is_empty()).then_some(blocks)
}

/// Stickers as images at Discord's public sticker URL (no token in it).
fn stickers(message: &Message) -> Vec<ContentBlock> {
    let mut blocks = Vec::new();
    for sticker in &message.sticker_items {
        blocks.push(ContentBlock {
            kind: ContentBlock::IMAGE.to_owned(),
            name: Some(sticker.name.clone()),
            size: None,
            mime_type: None,
            url: Some(format!(
                "https://media.discordapp.net/stickers/{}.png",
                sticker.id
            )),
            ..ContentBlock::default()
        });
    }
    blocks
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
