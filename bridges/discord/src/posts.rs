//! The Discord REST calls the connector is made of, one request each: executing a link's webhook,
//! a bot post, finding a post whose answer was lost, reading a message back, the bot's reactions,
//! and the quote a webhook reply starts with. Every call goes through [`crate::rest`] (which paces
//! by Discord's rate-limit headers); webhook tokens go only into request paths, as escaped
//! segments, never into an error or a log line.

use hub_bridge_sdk::emoji::Emoji;
use hub_bridge_sdk::outbox::SendError;
use hub_bridge_sdk::relay::connector::Parent;
use hub_bridge_sdk::relay::{Chat, PartId, Place, ThreadRef};
use serde::Serialize;
use serde_json::Value;
use serenity::http::{LightMethod, Route};
use serenity::model::id::WebhookId;

use crate::config::WebhookRef;
use crate::connector::Discord;
use crate::format;
use crate::ids;
use crate::rest::{path_segment, RestError};

/// How many of a channel's latest messages are searched for a post whose answer was lost: more
/// than the bridge posts there between two attempts of one part.
const RECENT: u32 = 50;

impl Discord {
    /// Executes a webhook (in `thread` when given) and returns the new message's id.
    pub(crate) async fn webhook_post(
        &self,
        hook: &WebhookRef,
        thread: Option<u64>,
        body: &Value,
    ) -> Result<u64, SendError> {
        let mut params = vec![("wait", "true".to_owned())];
        params.extend(thread_param(thread));
        let token = path_segment(hook.token.expose());
        let route = Route::WebhookWithToken {
            webhook_id: WebhookId::from(hook.id),
            token: &token,
        };
        let answer = self
            .shared
            .rest
            .call(
                LightMethod::Post,
                route,
                &params,
                Some(body),
                &format!("webhook:{}", hook.id),
            )
            .await?;
        id_of(answer.as_ref())
    }

    /// A message `hook` posted with `content` among the latest in the place's channel: the post
    /// of an earlier attempt whose answer was lost.
    pub(crate) async fn find_webhook_post(
        &self,
        place: &Place,
        hook: &WebhookRef,
        content: &str,
    ) -> Result<Option<u64>, SendError> {
        let channel = self.channel(place).await?;
        let recent = self
            .shared
            .channel_messages(channel, &[("limit", RECENT.to_string())])
            .await?;
        let hook_id = hook.id.to_string();
        Ok(recent
            .iter()
            .find(|message| {
                message["webhook_id"] == hook_id.as_str() && message["content"] == content
            })
            .and_then(|message| message["id"].as_str())
            .and_then(ids::parse))
    }

    /// Posts as the bot and returns the new message's id.
    pub(crate) async fn bot_post(&self, channel: u64, body: &Value) -> Result<u64, SendError> {
        let answer = self
            .shared
            .rest
            .call(
                LightMethod::Post,
                Route::ChannelMessages {
                    channel_id: ids::channel(channel)?,
                },
                &[],
                Some(body),
                &format!("post:{channel}"),
            )
            .await?;
        id_of(answer.as_ref())
    }

    /// Sends a `PATCH` or `DELETE` for one message: through the link's webhook first (only the
    /// webhook may change its own posts), then as the bot (a post from before the webhook was
    /// configured, or a bot-mode link). `Ok(false)`: Discord no longer has the message.
    pub(crate) async fn change_message(
        &self,
        place: &Place,
        method: LightMethod,
        message: u64,
        body: Option<&Value>,
    ) -> Result<bool, SendError> {
        if let Some(hook) = self.webhook(place) {
            let token = path_segment(hook.token.expose());
            let route = Route::WebhookMessage {
                webhook_id: WebhookId::from(hook.id),
                token: &token,
                message_id: ids::message(message)?,
            };
            let params = thread_param(place.thread.as_ref().and_then(thread_id));
            let result = self
                .shared
                .rest
                .call(
                    method,
                    route,
                    &params,
                    body,
                    &format!("webhook:{}", hook.id),
                )
                .await;
            match result {
                Ok(_) => return Ok(true),
                // Not this webhook's message: the bot may have posted it.
                Err(error) if error.is_unknown_message() => {}
                Err(error) => return Err(error.into()),
            }
        }
        let channel = self.channel(place).await?;
        let bucket = match method {
            LightMethod::Delete => format!("delete:{channel}"),
            _ => format!("patch:{channel}"),
        };
        let result = self
            .shared
            .rest
            .call(
                method,
                Route::ChannelMessage {
                    channel_id: ids::channel(channel)?,
                    message_id: ids::message(message)?,
                },
                &[],
                body,
                &bucket,
            )
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if error.is_unknown_message() => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// A message as Discord shows it; `None` when it is gone.
    pub(crate) async fn get_message(
        &self,
        channel: u64,
        message: u64,
    ) -> Result<Option<Value>, SendError> {
        let result = self
            .shared
            .rest
            .call(
                LightMethod::Get,
                Route::ChannelMessage {
                    channel_id: ids::channel(channel)?,
                    message_id: ids::message(message)?,
                },
                &[],
                None,
                &format!("get:message:{channel}"),
            )
            .await;
        match result {
            Ok(message) => Ok(message),
            Err(RestError::Status { status: 404, .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The text of a message as Discord shows it; `None` when it is gone.
    pub(crate) async fn content_of(
        &self,
        channel: u64,
        message: u64,
    ) -> Result<Option<String>, SendError> {
        let message = self.get_message(channel, message).await?;
        Ok(message.and_then(|message| message["content"].as_str().map(str::to_owned)))
    }

    /// The quote a webhook reply starts with (webhooks cannot reply natively), and the parent's
    /// author when that is a user (not a webhook), whom an agent's reply may ping; `None` when
    /// the parent is gone.
    pub(crate) async fn quote(
        &self,
        place: &Place,
        parent: &Parent,
    ) -> Result<Option<(String, Option<u64>)>, SendError> {
        let channel = match &parent.thread {
            Some(thread) => thread_channel(thread)?,
            None => self.chat_channel(&place.chat).await?,
        };
        let id = part_id(&parent.id)?;
        let Some(message) = self.get_message(channel, id).await? else {
            return Ok(None);
        };
        let author = &message["author"];
        let by_webhook = message["webhook_id"].is_string();
        let author_name = if by_webhook {
            author["username"].as_str().unwrap_or("someone").to_owned()
        } else {
            format::display_name(
                None,
                author["global_name"].as_str(),
                author["username"].as_str().unwrap_or("someone"),
            )
        };
        let content = message["content"].as_str().unwrap_or_default();
        let guild = match ids::parse(&place.chat.0) {
            Some(chat) => self
                .shared
                .channel_info(chat)
                .await
                .ok()
                .and_then(|info| info.guild_id),
            None => None,
        };
        let url = format::message_link(guild, channel, id);
        let user = if by_webhook {
            None
        } else {
            author["id"].as_str().and_then(ids::parse)
        };
        Ok(Some((format::quote(&author_name, content, &url), user)))
    }

    /// The Discord channel of a chat: the channel itself, or the DM with a user (`dm:{userId}`,
    /// opened once).
    pub(crate) async fn chat_channel(&self, chat: &Chat) -> Result<u64, SendError> {
        if let Some(user) = chat.0.strip_prefix("dm:") {
            let user = ids::parse(user).ok_or_else(|| {
                SendError::Permanent(format!("`{user}` is not a Discord user id"))
            })?;
            return Ok(self.shared.dm_channel(user).await?);
        }
        ids::parse(&chat.0)
            .ok_or_else(|| SendError::Permanent(format!("`{chat}` is not a Discord channel id")))
    }

    /// The Discord channel a call in `place` goes to: its thread (a channel of its own), else the
    /// chat's channel.
    pub(crate) async fn channel(&self, place: &Place) -> Result<u64, SendError> {
        match &place.thread {
            Some(thread) => thread_channel(thread),
            None => self.chat_channel(&place.chat).await,
        }
    }

    /// Adds or removes the bot's reaction `emoji` on a message.
    pub(crate) async fn set_reaction(
        &self,
        channel: u64,
        message: u64,
        emoji: &str,
        add: bool,
    ) -> Result<(), SendError> {
        // Checked when the hub event was routed; again here for jobs an earlier release queued.
        let emoji = Emoji::parse(emoji)
            .map_err(|error| SendError::Permanent(format!("reaction not relayed: {error}")))?;
        let route = Route::ChannelMessageReactionMe {
            channel_id: ids::channel(channel)?,
            message_id: ids::message(message)?,
            reaction: &path_segment(&emoji.to_string()),
        };
        let method = if add {
            LightMethod::Put
        } else {
            LightMethod::Delete
        };
        let result = self
            .shared
            .rest
            .call(method, route, &[], None, &format!("reaction:{channel}"))
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if error.is_unknown_message() => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// A message id the engine hands back: always one the connector gave it.
pub(crate) fn part_id(id: &PartId) -> Result<u64, SendError> {
    ids::parse(&id.0)
        .ok_or_else(|| SendError::Permanent(format!("`{}` is not a Discord message id", id.0)))
}

fn thread_channel(thread: &ThreadRef) -> Result<u64, SendError> {
    thread_id(thread)
        .ok_or_else(|| SendError::Permanent(format!("`{}` is not a Discord thread id", thread.0)))
}

fn thread_id(thread: &ThreadRef) -> Option<u64> {
    ids::parse(&thread.0)
}

pub(crate) fn thread_param(thread: Option<u64>) -> Vec<(&'static str, String)> {
    thread
        .map(|thread| ("thread_id", thread.to_string()))
        .into_iter()
        .collect()
}

/// The id of the message (or channel) an answer describes.
pub(crate) fn id_of(answer: Option<&Value>) -> Result<u64, SendError> {
    answer
        .and_then(|value| value.get("id"))
        .and_then(Value::as_str)
        .and_then(ids::parse)
        .ok_or_else(|| SendError::Permanent("Discord's answer has no message id".to_owned()))
}

/// A serenity builder as the JSON body it sends. Serialising a builder cannot fail (every map
/// key is a string), so the `Null` fallback is never sent.
pub(crate) fn json_body(builder: &impl Serialize) -> Value {
    serde_json::to_value(builder).unwrap_or(Value::Null)
}
