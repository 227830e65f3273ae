//! Telegram as the relay engine drives it (the [`Connector`]): Bot API calls through teloxide,
//! paced under Telegram's limits, rendering to Telegram's HTML with a plain-text twin, and the
//! classification of Telegram's errors. Which chats an event goes to, the message map, edits of
//! split messages and dead letters are the engine's (`hub_bridge_sdk::relay`).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hub_bridge_sdk::metrics::retry;
use hub_bridge_sdk::outbox::SendError;
use hub_bridge_sdk::relay::budget::FloodBudget;
use hub_bridge_sdk::relay::{
    Capabilities, Chat, Connector, Edited, Look, MediaLimits, PartId, Place, ReactionChange,
    Rendered, Rendering, ThreadRef, Upload,
};
use hub_bridge_sdk::HubHandle;
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use teloxide::types::{ChatAction, MessageId, ParseMode, ReactionType, ReplyParameters, ThreadId};
use teloxide::RequestError;
use tokio_util::sync::CancellationToken;

use crate::config::TelegramConfig;
use crate::errors::{
    classify, is_already_deleted, is_caption_message, is_form_error, is_not_modified, Redactor,
};
use crate::forums::Forums;
use crate::render::{self, Author};
use crate::uploads;

/// How often the typing indicator is sent again (Telegram shows it for ~5 s).
const TYPING_REFRESH: Duration = Duration::from_secs(4);

/// One rendered part, with how far its plain-text fallback got once Telegram refused its HTML.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelegramPart {
    #[serde(flatten)]
    pub part: render::Part,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<usize>,
}

/// The Bot API, for the relay engine.
pub struct Telegram {
    pub bot: Bot,
    pub redactor: Redactor,
    /// Telegram's flood limits, drawn from by every request this connector makes.
    pub budget: FloodBudget,
    pub forums: Arc<Forums>,
    pub hub: HubHandle,
    pub max_parts: usize,
    pub shutdown: CancellationToken,
    /// `telegram.dm_agent`: where private messages go until a person picks an agent.
    dm_agent: Option<String>,
    /// How far apart edits of one message go: in private chats, in groups.
    edit_cadence: (Duration, Duration),
    capabilities: Capabilities,
}

impl Telegram {
    pub fn new(
        bot: Bot,
        redactor: Redactor,
        budget: FloodBudget,
        hub: HubHandle,
        config: &TelegramConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            bot,
            redactor,
            budget,
            forums: Arc::default(),
            hub,
            max_parts: config.max_parts,
            shutdown,
            dm_agent: config.dm_agent.clone(),
            edit_cadence: (
                Duration::from_millis(config.edit_cadence_private_ms),
                Duration::from_millis(config.edit_cadence_group_ms),
            ),
            capabilities: Capabilities {
                // Bots show one reaction per message.
                reactions_per_message: 1,
                typing_refresh: TYPING_REFRESH,
                // A hub thread becomes a forum topic when `thread.create` arrives; elsewhere its
                // messages reply to the parent.
                open_threads_on_demand: false,
                threads_are_chats: false,
            },
        }
    }

    fn ignored(&self, reason: &'static str) {
        self.hub.metrics().count_ignored("telegram", reason);
    }

    pub(crate) fn classify(&self, error: &RequestError) -> SendError {
        classify(error, &self.redactor)
    }

    /// Runs one paced request; the outer error is the bridge stopping while it waited.
    pub(crate) async fn paced<R, T>(
        &self,
        chat: i64,
        build: impl FnOnce(&Bot) -> R,
    ) -> Result<Result<T, RequestError>, SendError>
    where
        R: IntoFuture<Output = Result<T, RequestError>>,
    {
        // The budget knows the chat by the engine's name for it: its outbox destination.
        let request = build(&self.bot).into_future();
        self.budget
            .paced(&chat.to_string(), &self.shutdown, request)
            .await
    }

    pub(crate) fn count_plain_fallback(&self, error: &RequestError) {
        tracing::warn!(error = %self.redactor.describe(error), "Telegram refused the HTML for its form; sending plain text");
        self.hub
            .metrics()
            .count_retry("telegram", retry::PLAIN_TEXT_FALLBACK);
    }

    /// A failed getChat or createForumTopic: retried when it may pass later; otherwise the thread
    /// falls back to replies, which is logged once per chat.
    fn topic_refused(
        &self,
        chat: i64,
        error: &RequestError,
    ) -> Result<Option<ThreadRef>, SendError> {
        match self.classify(error) {
            SendError::Permanent(reason) => {
                if self.forums.first_warning(chat) {
                    tracing::warn!(chat, %reason, "could not open a forum topic; threads in this chat reply to their parent message instead");
                }
                Ok(None)
            }
            other => Err(other),
        }
    }
}

/// A chat id the engine hands back: always one the bridge gave it.
/// Whether a chat (the engine's name for it) is a group: groups, supergroups and channels have
/// negative ids, private chats positive ones. Groups get Telegram's per-minute limit and the
/// slower edit cadence.
pub fn is_group(chat: &str) -> bool {
    chat.starts_with('-')
}

pub(crate) fn chat_id(chat: &Chat) -> Result<i64, SendError> {
    chat.0
        .parse()
        .map_err(|_| SendError::Permanent(format!("`{chat}` is not a Telegram chat id")))
}

pub(crate) fn message_id(id: &PartId) -> Result<MessageId, SendError> {
    id.0.parse()
        .map(MessageId)
        .map_err(|_| SendError::Permanent(format!("`{}` is not a Telegram message id", id.0)))
}

pub(crate) fn topic(place: &Place) -> Option<ThreadId> {
    place
        .thread
        .as_ref()
        .and_then(|thread| thread.0.parse().ok())
        .map(|id| ThreadId(MessageId(id)))
}

impl Connector for Telegram {
    type Part = TelegramPart;

    fn name(&self) -> &'static str {
        "telegram"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn budget(&self) -> Option<&FloodBudget> {
        Some(&self.budget)
    }

    fn dm_agent(&self) -> Option<String> {
        self.dm_agent.clone()
    }

    fn edit_cadence(&self, chat: &Chat) -> Duration {
        let (private, group) = self.edit_cadence;
        if is_group(&chat.0) {
            group
        } else {
            private
        }
    }

    fn private_chat(&self, user_id: &str) -> Option<Chat> {
        // A positive user id is the user's private chat with the bot.
        let id: i64 = user_id.parse().ok().filter(|id| *id > 0)?;
        Some(Chat(id.to_string()))
    }

    fn upgrade_job(stored: serde_json::Value) -> Option<hub_bridge_sdk::relay::Job<TelegramPart>> {
        crate::upgrade::job(stored)
    }

    fn render<'a>(
        &'a self,
        _place: &'a Place,
        message: Rendering<'a>,
    ) -> BoxFuture<'a, Result<Rendered<TelegramPart>, SendError>> {
        let author = message.look.author.as_ref().map(|author| Author {
            name: author.name.clone(),
            avatar: author.avatar.clone(),
        });
        let parts = render::message(
            author.as_ref(),
            message.text,
            &message.look.blocks,
            self.max_parts,
        );
        let parts = parts
            .into_iter()
            .map(|part| TelegramPart {
                part,
                fallback: None,
            })
            .collect();
        Box::pin(std::future::ready(Ok(Rendered {
            parts,
            header: None,
            native_reply: true,
        })))
    }

    fn render_notice(&self, text: &str, _mention: Option<&str>) -> Vec<TelegramPart> {
        render::notice(text)
            .into_iter()
            .map(|part| TelegramPart {
                part,
                fallback: None,
            })
            .collect()
    }

    /// Sends one part. HTML that Telegram refuses for its form (entities it cannot parse, too
    /// long, empty, too many entities) is sent again as plain text, split under the limit; the
    /// part counts the plain pieces sent, so a retry resumes there.
    fn send<'a>(
        &'a self,
        place: &'a Place,
        part: &'a mut TelegramPart,
        reply_to: Option<&'a PartId>,
        shown: &'a mut Vec<PartId>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let chat = chat_id(&place.chat)?;
            let topic = topic(place);
            let reply_to = reply_to.map(message_id).transpose()?;
            let place_request = |mut request: <Bot as Requester>::SendMessage,
                                 reply_to: Option<MessageId>| {
                if let Some(id) = reply_to {
                    request = request
                        .reply_parameters(ReplyParameters::new(id).allow_sending_without_reply());
                }
                if let Some(topic) = topic {
                    request = request.message_thread_id(topic);
                }
                request
            };
            if part.fallback.is_none() {
                let html = self
                    .paced(chat, |bot| {
                        place_request(
                            bot.send_message(ChatId(chat), part.part.html.clone())
                                .parse_mode(ParseMode::Html),
                            reply_to,
                        )
                    })
                    .await?;
                match html {
                    Ok(message) => {
                        shown.push(PartId(message.id.0.to_string()));
                        return Ok(());
                    }
                    Err(error) if is_form_error(&error) => {
                        self.count_plain_fallback(&error);
                        part.fallback = Some(0);
                    }
                    Err(error) => return Err(self.classify(&error)),
                }
            }
            let pieces = render::plain_fallback(&part.part);
            if pieces.is_empty() {
                self.ignored("empty_part");
            }
            while let Some(done) = part.fallback.filter(|done| *done < pieces.len()) {
                let reply = if done == 0 { reply_to } else { None };
                let plain = self
                    .paced(chat, |bot| {
                        place_request(bot.send_message(ChatId(chat), pieces[done].clone()), reply)
                    })
                    .await?;
                let message = plain.map_err(|error| self.classify(&error))?;
                shown.push(PartId(message.id.0.to_string()));
                part.fallback = Some(done + 1);
            }
            Ok(())
        })
    }

    fn media_limits(&self) -> Option<MediaLimits> {
        Some(uploads::LIMITS)
    }

    fn upload<'a>(
        &'a self,
        place: &'a Place,
        _look: &'a Look,
        files: &'a [Upload],
        caption: Option<&'a TelegramPart>,
        reply_to: Option<&'a PartId>,
        shown: &'a mut Vec<PartId>,
    ) -> BoxFuture<'a, Result<bool, SendError>> {
        Box::pin(self.upload_files(place, files, caption, reply_to, shown))
    }

    /// Edits a part's text, or its caption when the part is a file with the text as caption.
    fn edit<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
        part: &'a TelegramPart,
    ) -> BoxFuture<'a, Result<Edited, SendError>> {
        Box::pin(async move {
            let chat = chat_id(&place.chat)?;
            let id = message_id(id)?;
            let html = self
                .paced(chat, |bot| {
                    bot.edit_message_text(ChatId(chat), id, part.part.html.clone())
                        .parse_mode(ParseMode::Html)
                })
                .await?;
            // Which of the two a part is, Telegram knows: it says so when the text is asked for.
            let caption = matches!(&html, Err(error) if is_caption_message(error));
            let html = if caption {
                self.paced(chat, |bot| {
                    bot.edit_message_caption(ChatId(chat), id)
                        .caption(part.part.html.clone())
                        .parse_mode(ParseMode::Html)
                })
                .await?
            } else {
                html
            };
            let result = match html {
                Err(error) if is_form_error(&error) => {
                    self.count_plain_fallback(&error);
                    // A part's plain text is its source, which was split under the limit; should
                    // it still not fit, the message shows as much of it as one message can.
                    let Some(plain) = render::plain_fallback(&part.part).into_iter().next() else {
                        self.ignored("empty_part");
                        return Ok(Edited::Done);
                    };
                    // The same of the two as above: a caption stays a caption.
                    if caption {
                        self.paced(chat, |bot| {
                            bot.edit_message_caption(ChatId(chat), id).caption(plain)
                        })
                        .await?
                    } else {
                        self.paced(chat, |bot| bot.edit_message_text(ChatId(chat), id, plain))
                            .await?
                    }
                }
                other => other,
            };
            match result {
                Ok(_) => Ok(Edited::Done),
                Err(error) if is_not_modified(&error) => Ok(Edited::Done),
                Err(error) => Err(self.classify(&error)),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let chat = chat_id(&place.chat)?;
            let id = message_id(id)?;
            match self
                .paced(chat, |bot| bot.delete_message(ChatId(chat), id))
                .await?
            {
                Ok(_) => Ok(()),
                Err(error) if is_already_deleted(&error) => Ok(()),
                Err(error) => Err(self.classify(&error)),
            }
        })
    }

    fn react<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
        change: &'a ReactionChange,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let chat = chat_id(&place.chat)?;
            let id = message_id(id)?;
            let shown: Vec<ReactionType> = change
                .after
                .iter()
                .map(|emoji| ReactionType::Emoji {
                    emoji: emoji.clone(),
                })
                .collect();
            let result = self
                .paced(chat, |bot| {
                    bot.set_message_reaction(ChatId(chat), id).reaction(shown)
                })
                .await?;
            match result {
                Ok(_) => Ok(()),
                Err(error) => Err(match self.classify(&error) {
                    SendError::Permanent(reason) if reason.contains("REACTION_INVALID") => {
                        SendError::Permanent(format!(
                            "Telegram bots can only react with Telegram's standard reaction emoji, and {} is not one of them",
                            change.emoji
                        ))
                    }
                    other => other,
                }),
            }
        })
    }

    fn typing<'a>(&'a self, place: &'a Place) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let chat = ChatId(chat_id(&place.chat)?);
            self.bot
                .send_chat_action(chat, ChatAction::Typing)
                .await
                .map(drop)
                .map_err(|error| self.classify(&error))
        })
    }

    /// Opens a forum topic when the chat is a forum. Elsewhere, or when Telegram refuses for good
    /// (the bot may not manage topics), it opens nothing and the thread's messages reply to the
    /// parent instead.
    fn open_thread<'a>(
        &'a self,
        place: &'a Place,
        _parent: Option<&'a PartId>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ThreadRef>, SendError>> {
        Box::pin(async move {
            let chat = chat_id(&place.chat)?;
            match self.forums.is_forum(&self.bot, chat).await {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(error) => return self.topic_refused(chat, &error),
            }
            let created = self
                .paced(chat, |bot| bot.create_forum_topic(ChatId(chat), name))
                .await?;
            match created {
                Ok(created) => Ok(Some(ThreadRef(created.thread_id.0 .0.to_string()))),
                Err(error) => self.topic_refused(chat, &error),
            }
        })
    }
}
