//! Discord's upload primitive for the relay engine (SPEC section 5, "Media"): a message's files
//! (up to ten) as one multipart post, through the link's webhook (the agent's name and avatar
//! kept) or as the bot, with the text as the post's content; Discord's limits; and where a
//! person's attachment is read when its media link is opened ([`DiscordFiles`]): the message is
//! read again for a fresh attachment URL (Discord's expire), then the file streamed from the CDN.

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use hub_bridge_sdk::media::{Download, FileRef, MediaSource, SourceError};
use hub_bridge_sdk::outbox::SendError;
use hub_bridge_sdk::relay::{Author, Look, MediaLimits, PartId, Place, Upload};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde_json::Value;
use serenity::all::{MessageReference, Nonce};
use serenity::builder::{CreateMessage, ExecuteWebhook};
use serenity::http::{LightMethod, Route};
use serenity::model::channel::MessageReferenceKind;
use serenity::model::id::WebhookId;

use crate::connector::{allowed_mentions, new_nonce, username, Discord, DiscordPart};
use crate::format::{self, Header};
use crate::ids;
use crate::posts::{id_of, json_body, part_id, thread_param};
use crate::rest::{path_segment, Rest, RestError};

/// Discord's limits on bots' and webhooks' uploads in servers without boosts: 10 MiB a file, ten
/// files a message. Pictures have no lower limit of their own.
pub const LIMITS: MediaLimits = MediaLimits {
    max_file_bytes: 10 * 1024 * 1024,
    max_image_bytes: 10 * 1024 * 1024,
    files_per_message: 10,
};

impl Discord {
    /// Posts `files` with the caption's text (a part always fits: Discord's captions are its
    /// messages), as the agent through the webhook, else as the bot naming the author.
    pub(crate) async fn upload_files(
        &self,
        place: &Place,
        look: &Look,
        files: &[Upload],
        caption: Option<&DiscordPart>,
        reply_to: Option<&PartId>,
        shown: &mut Vec<PartId>,
    ) -> Result<bool, SendError> {
        let author = look.author.as_ref();
        let person = author.is_some_and(|author| author.person);
        let ping = caption.and_then(|part| part.ping).filter(|_| !person);
        let id = match self.webhook(place) {
            Some(hook) => {
                let mut post = ExecuteWebhook::new()
                    .content(caption.map_or("", |part| &part.content))
                    .allowed_mentions(allowed_mentions(ping));
                let name = caption
                    .and_then(|part| part.username.clone())
                    .or_else(|| author.map(username));
                if let Some(name) = name {
                    post = post.username(name);
                }
                let avatar = caption
                    .and_then(|part| part.avatar_url.clone())
                    .or_else(|| author.and_then(|author| author.avatar_url.clone()));
                if let Some(avatar) = avatar {
                    post = post.avatar_url(avatar);
                }
                let thread = match &place.thread {
                    Some(_) => Some(self.channel(place).await?),
                    None => None,
                };
                let mut params = vec![("wait", "true".to_owned())];
                params.extend(thread_param(thread));
                let token = path_segment(hook.token.expose());
                let route = Route::WebhookWithToken {
                    webhook_id: WebhookId::from(hook.id),
                    token: &token,
                };
                let bucket = format!("webhook:{}", hook.id);
                let answer = self
                    .shared
                    .rest
                    .call_with_files(route, &params, &json_body(&post), files, &bucket)
                    .await?;
                id_of(answer.as_ref())?
            }
            None => {
                let channel = self.channel(place).await?;
                // Without a caption the post still says whose files these are.
                let content = match (caption, author) {
                    (Some(part), _) => part.content.clone(),
                    (None, Some(author)) => files_header(author),
                    (None, None) => String::new(),
                };
                let allowed = allowed_mentions(ping).replied_user(!person && reply_to.is_some());
                let mut post = CreateMessage::new()
                    .content(content)
                    .allowed_mentions(allowed)
                    .nonce(Nonce::String(new_nonce()))
                    .enforce_nonce(true);
                if let Some(parent) = reply_to {
                    let parent = MessageReference::new(
                        MessageReferenceKind::Default,
                        ids::channel(channel)?,
                    )
                    .message_id(ids::message(part_id(parent)?)?)
                    .fail_if_not_exists(false);
                    post = post.reference_message(parent);
                }
                let route = Route::ChannelMessages {
                    channel_id: ids::channel(channel)?,
                };
                let bucket = format!("post:{channel}");
                let answer = self
                    .shared
                    .rest
                    .call_with_files(route, &[], &json_body(&post), files, &bucket)
                    .await?;
                id_of(answer.as_ref())?
            }
        };
        self.mark_own(id).await;
        shown.push(PartId(id.to_string()));
        Ok(caption.is_some())
    }
}

/// The text of a bot post of files without a caption: whose they are, headed as a bot post's
/// text is (the name's Markdown escaped: a name is the sender's to choose).
fn files_header(author: &Author) -> String {
    format::head(&Header::Name(author.name.clone()), "")
        .trim_end()
        .to_owned()
}

/// Where Discord attachments and stickers are read when a media link to one is opened.
pub struct DiscordFiles {
    pub rest: Rest,
    /// For the CDNs, which must not see the bot's token.
    pub cdn: reqwest::Client,
    /// Discord's media CDN (stickers): `https://media.discordapp.net`, or `discord.api_url` when
    /// that is a proxy or a fake.
    pub media_cdn: String,
}

impl DiscordFiles {
    /// A sticker's image, from the media CDN (public: no token).
    async fn sticker(&self, sticker: u64, extension: &str) -> Result<Download, SourceError> {
        let url = format!("{}/stickers/{sticker}.{extension}", self.media_cdn);
        self.stream(&url).await
    }

    /// Streams a CDN file.
    async fn stream(&self, url: &str) -> Result<Download, SourceError> {
        let response = self
            .cdn
            .get(url)
            .send()
            .await
            .map_err(|error| SourceError::Unavailable(error.without_url().to_string()))?;
        match response.status().as_u16() {
            200 => {}
            404 => return Err(SourceError::Gone),
            status => {
                return Err(SourceError::Unavailable(format!(
                    "Discord's CDN answered {status}"
                )))
            }
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(CONTENT_TYPE);
        let length = header(CONTENT_LENGTH).and_then(|length| length.parse().ok());
        let body = response
            .bytes_stream()
            .map_err(|error| std::io::Error::other(error.without_url().to_string()));
        Ok(Download {
            content_type,
            length,
            body: body.boxed(),
        })
    }
}

impl MediaSource for DiscordFiles {
    fn open<'a>(&'a self, file: &'a FileRef) -> BoxFuture<'a, Result<Download, SourceError>> {
        Box::pin(async move {
            let (channel, message, attachment) = match file {
                FileRef::Discord {
                    channel,
                    message,
                    attachment,
                } => (channel, message, attachment),
                FileRef::DiscordSticker { sticker, extension } => {
                    return self.sticker(*sticker, extension).await;
                }
                FileRef::Telegram { .. } => return Err(SourceError::Gone),
            };
            let route = Route::ChannelMessage {
                channel_id: ids::channel(*channel).map_err(|_| SourceError::Gone)?,
                message_id: ids::message(*message).map_err(|_| SourceError::Gone)?,
            };
            let found: Value = match self
                .rest
                .json(
                    LightMethod::Get,
                    route,
                    &[],
                    None,
                    &format!("get:message:{channel}"),
                )
                .await
            {
                Ok(found) => found,
                Err(RestError::Status { status: 404, .. }) => return Err(SourceError::Gone),
                Err(error) => return Err(SourceError::Unavailable(error.to_string())),
            };
            let wanted = attachment.to_string();
            let url = found["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|candidate| candidate["id"] == wanted.as_str())
                .and_then(|candidate| candidate["url"].as_str())
                .ok_or(SourceError::Gone)?;
            self.stream(url).await
        })
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn a_name_heading_files_cannot_bring_markdown() {
        let author = Author {
            name: "*Eve* [click](https://evil.example)".to_owned(),
            avatar: None,
            avatar_url: None,
            person: true,
        };
        assert_eq!(
            files_header(&author),
            r"**\*Eve\* \[click\](https://evil.example)**:"
        );
    }
}
