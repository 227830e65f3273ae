//! Discord as the relay engine drives it (the [`Connector`]): posts through a link's webhook as
//! the agent, or as the bot, rendering, edits, deletes, reactions, typing and threads, as single
//! REST calls ([`crate::posts`]). Which channels an event goes to, the message map, edits of split
//! messages, stopped links and dead letters are the engine's (`hub_bridge_sdk::relay`).
//!
//! Agents post through the link's webhook as themselves (sanitised username, `avatar_url` from
//! `[agents]`); without a webhook the bot posts `**name**: text`. Webhooks cannot reply, so a
//! webhook reply starts with a quote of the parent and a link to it (no quote in a thread that
//! hangs on the parent: the thread shows it); the bot replies natively. Every post carries
//! `allowed_mentions` (SPEC section 9): a relayed person's message pings nobody; an agent's pings
//! at most the author of the message it replies to; never @everyone, @here or roles; edits ping
//! nobody. Long messages are split under 2000 characters; an edit keeps the header the message
//! was posted with (the bot's name, a reply's quote). Every post is marked as the bridge's own
//! (`own:{id}`), so that a moderator deleting it does not delete the agent's hub message.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use hub_bridge_sdk::msgmap::MessageMap;
use hub_bridge_sdk::outbox::SendError;
use hub_bridge_sdk::relay::budget::{FloodBudget, FloodLimits, Window};
use hub_bridge_sdk::relay::connector::Parent;
use hub_bridge_sdk::relay::{
    Author, Capabilities, Chat, Connector, Edited, Job, Link, Look, MediaLimits, PartId, Place,
    ReactionChange, Rendered, Rendering, ThreadRef, Upload,
};
use hub_bridge_sdk::text::discord::sanitize_webhook_username;
use hub_bridge_sdk::Op;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serenity::builder::{
    CreateAllowedMentions, CreateMessage, CreateThread, EditMessage, ExecuteWebhook,
};
use serenity::http::{LightMethod, Route};
use serenity::model::channel::{
    AutoArchiveDuration, MessageReference, MessageReferenceKind, Nonce,
};
use serenity::model::id::UserId;
use tokio_util::sync::CancellationToken;

use crate::config::{DiscordConfig, WebhookRef};
use crate::format::{self, Header};
use crate::ids;
use crate::posts::{id_of, json_body, part_id};
use crate::shared::Shared;
use crate::uploads;

/// How often the typing indicator is sent again (Discord shows it for ~10 s).
const TYPING_REFRESH: Duration = Duration::from_secs(8);
/// Requests per second Discord allows a bot over all routes.
const GLOBAL_PER_SECOND: u32 = 50;
/// Discord shows at most 20 distinct reactions per message.
const REACTIONS_PER_MESSAGE: usize = 20;

/// One message to post, with everything the post needs, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscordPart {
    pub content: String,
    /// Who a webhook post appears as (already shaped by Discord's username rules); a bot post
    /// shows the name in its content instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// The one user the post may ping: the author of the message an agent's webhook reply
    /// quotes, or the person a notice is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<u64>,
    /// A relayed person's message: it pings nobody, not even the author it answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub person: bool,
    /// The message the part became: a retry after the post (the store failed to map it) does
    /// not post it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted: Option<String>,
    /// A bot post's nonce, kept across retries: with `enforce_nonce` Discord answers a repeated
    /// post with the message the first one created, so a post whose answer was lost is not shown
    /// twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Whether a webhook post was tried already: its answer may have been lost after Discord
    /// created the message, so the retry looks for it first (webhooks take no nonce).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tried: bool,
}

impl DiscordPart {
    /// A part with only its text (a bot notice, or an old release's queued part).
    pub fn text(content: String) -> Self {
        Self {
            content,
            username: None,
            avatar_url: None,
            ping: None,
            person: false,
            posted: None,
            nonce: None,
            tried: false,
        }
    }
}

/// A nonce no other post of this process has: the time in nanoseconds and a counter, in hex
/// (Discord takes up to 25 characters).
pub(crate) fn new_nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut nonce = format!("{nanos:x}{count:x}");
    nonce.truncate(25);
    nonce
}

/// Discord's REST API, for the relay engine.
pub struct Discord {
    pub(crate) shared: Arc<Shared>,
    /// The webhook of each link that has one.
    webhooks: Vec<(Link, WebhookRef)>,
    /// `[discord] max_parts`: the most messages one hub message becomes.
    max_parts: usize,
    /// `[discord] edit_cadence_ms`: how far apart edits of one message go.
    edit_cadence: Duration,
    /// Discord's global limit for the bot; the per-route limits come from its rate-limit
    /// headers ([`crate::rest`]).
    budget: FloodBudget,
    /// The run's stop: a request waiting for the budget gives up when the bridge stops.
    stop: CancellationToken,
    capabilities: Capabilities,
}

impl Discord {
    pub fn new(
        shared: Arc<Shared>,
        webhooks: Vec<(Link, WebhookRef)>,
        config: &DiscordConfig,
        stop: CancellationToken,
    ) -> Self {
        Self {
            shared,
            webhooks,
            max_parts: config.max_parts,
            edit_cadence: Duration::from_millis(config.edit_cadence_ms),
            budget: FloodBudget::new(
                FloodLimits {
                    global: vec![Window::per_second(GLOBAL_PER_SECOND)],
                    ..FloodLimits::default()
                },
                |_| false,
            ),
            stop,
            capabilities: Capabilities {
                reactions_per_message: REACTIONS_PER_MESSAGE,
                typing_refresh: TYPING_REFRESH,
                // A hub thread whose `thread.create` a channel missed becomes a Discord thread on
                // its parent when its first message arrives.
                open_threads_on_demand: true,
                threads_are_chats: true,
            },
        }
    }

    /// Runs one of the engine's requests within the bot's flood budget.
    async fn paced<T>(
        &self,
        place: &Place,
        request: impl Future<Output = Result<T, SendError>>,
    ) -> Result<T, SendError> {
        self.budget
            .paced(&place.chat.0, &self.stop, request)
            .await?
    }

    /// The webhook of the link a call goes through, if it has one (never for DMs and notices).
    pub(crate) fn webhook(&self, place: &Place) -> Option<&WebhookRef> {
        let hub_channel = place.hub_channel.as_deref()?;
        self.webhooks
            .iter()
            .find(|(link, _)| link.hub_channel == hub_channel && link.chat == place.chat)
            .map(|(_, hook)| hook)
    }

    /// What a new message starts with, and the user it may ping.
    async fn header(
        &self,
        place: &Place,
        author: Option<&Author>,
        reply_to: Option<&Parent>,
    ) -> Result<(Header, Option<u64>), SendError> {
        if self.webhook(place).is_none() {
            // The bot answers natively; its post names the sender.
            let header = author.map_or(Header::None, |author| Header::Name(author.name.clone()));
            return Ok((header, None));
        }
        let Some(parent) = reply_to else {
            return Ok((Header::None, None));
        };
        // A thread's first messages answer the thread's starter: the thread already shows it.
        if place
            .thread
            .as_ref()
            .is_some_and(|thread| thread.0 == parent.id.0)
        {
            return Ok((Header::None, None));
        }
        Ok(match self.quote(place, parent).await? {
            Some((quote, author)) => (Header::Prefix(quote), author),
            None => (Header::None, None),
        })
    }

    /// The header an edited message keeps: the one it was posted with, or for a message an
    /// earlier release posted (which kept no look), the one Discord shows.
    async fn kept_header(
        &self,
        place: &Place,
        look: &Look,
        first: &PartId,
    ) -> Result<Header, SendError> {
        let header = match &look.header {
            Some(header) => header.clone(),
            None => {
                let channel = self.channel(place).await?;
                let webhook = self.webhook(place).is_some();
                self.content_of(channel, part_id(first)?)
                    .await?
                    .map(|content| format::posted_header(&content, webhook).to_owned())
                    .unwrap_or_default()
            }
        };
        Ok(if header.is_empty() {
            Header::None
        } else {
            Header::Prefix(header)
        })
    }

    /// Marks a post as the bridge's own: the inbound side then ignores its deletion.
    pub(crate) async fn mark_own(&self, id: u64) {
        let op = Op::Set {
            key: self.shared.keys().own(id),
            value: "1".to_owned(),
            ttl: Some(MessageMap::KEEP),
            only_if_absent: false,
        };
        // The post is out; a failed mark must not make it post again. A moderator deleting it
        // would then delete the hub message too, which is the lesser harm.
        if let Err(error) = self.shared.hub.store().one(op).await {
            tracing::warn!(%error, message = id, "could not mark a Discord post as the bridge's own");
        }
    }
}

/// The `allowed_mentions` of a post: nobody, or the one user it may ping. Nothing is parsed
/// from the text, so `@everyone`, roles and other users stay unpinged whatever an agent writes.
pub(crate) fn allowed_mentions(ping: Option<u64>) -> CreateAllowedMentions {
    let nobody = CreateAllowedMentions::new();
    match ping {
        Some(user) => nobody.users([UserId::new(user)]),
        None => nobody,
    }
}

/// How an author appears as a webhook's username.
pub(crate) fn username(author: &Author) -> String {
    if author.person {
        format::person_username(&author.name)
    } else {
        sanitize_webhook_username(&author.name)
    }
}

impl Connector for Discord {
    type Part = DiscordPart;

    fn name(&self) -> &'static str {
        "discord"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn budget(&self) -> Option<&FloodBudget> {
        Some(&self.budget)
    }

    fn edit_cadence(&self, _chat: &Chat) -> Duration {
        self.edit_cadence
    }

    fn private_chat(&self, user_id: &str) -> Option<Chat> {
        ids::parse(user_id).map(|user| Chat(format!("dm:{user}")))
    }

    /// A Discord thread is a channel of its own: what it shows is mapped under its id.
    fn map_chat(&self, place: &Place) -> String {
        place
            .thread
            .as_ref()
            .map_or_else(|| place.chat.0.clone(), |thread| thread.0.clone())
    }

    fn upgrade_job(stored: Value) -> Option<Job<DiscordPart>> {
        crate::upgrade::job(stored)
    }

    fn legacy_thread_key(&self, chat: &str, thread_id: &str) -> Option<String> {
        Some(self.shared.keys().thread_by_hub(thread_id, chat))
    }

    /// The previous release kept the hub thread of a Discord thread under the thread's map chat.
    fn legacy_hub_thread_key(&self, thread_chat: &str) -> Option<String> {
        Some(self.shared.keys().thread_by_discord(thread_chat))
    }

    fn dm_agent(&self) -> Option<String> {
        self.shared.dm_agent.clone()
    }

    fn legacy_stopped_key(&self, link: &Link) -> Option<String> {
        Some(self.shared.keys().stopped(&link.hub_channel, &link.chat.0))
    }

    fn render<'a>(
        &'a self,
        place: &'a Place,
        message: Rendering<'a>,
    ) -> BoxFuture<'a, Result<Rendered<DiscordPart>, SendError>> {
        Box::pin(async move {
            let look = message.look;
            let text = format::hub_text(message.text, Some(&look.blocks));
            let author = look.author.as_ref();
            let person = author.is_some_and(|author| author.person);
            let (header, ping) = match message.edit_of {
                // Edits ping nobody.
                Some(first) => (self.kept_header(place, look, first).await?, None),
                // Discord refuses empty posts; an empty message is not shown.
                None if text.trim().is_empty() => {
                    return Ok(Rendered {
                        parts: Vec::new(),
                        header: None,
                        native_reply: false,
                    });
                }
                None => self.header(place, author, message.reply_to).await?,
            };
            let username = author.map(username);
            let avatar_url = author.and_then(|author| author.avatar_url.clone());
            let parts = format::compose(&header, &text, self.max_parts)
                .into_iter()
                .map(|content| DiscordPart {
                    username: username.clone(),
                    avatar_url: avatar_url.clone(),
                    ping: ping.filter(|_| !person),
                    person,
                    ..DiscordPart::text(content)
                })
                .collect();
            Ok(Rendered {
                parts,
                header: Some(format::head(&header, &text)),
                native_reply: self.webhook(place).is_none(),
            })
        })
    }

    fn render_notice(&self, text: &str, mention: Option<&str>) -> Vec<DiscordPart> {
        let ping = mention.and_then(ids::parse);
        format::compose(&Header::None, text, self.max_parts)
            .into_iter()
            .map(|content| DiscordPart {
                ping,
                ..DiscordPart::text(content)
            })
            .collect()
    }

    fn send<'a>(
        &'a self,
        place: &'a Place,
        part: &'a mut DiscordPart,
        reply_to: Option<&'a PartId>,
        shown: &'a mut Vec<PartId>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.paced(place, async move {
            if part.posted.is_some() {
                return Ok(());
            }
            let ping = part.ping.filter(|_| !part.person);
            let id = match self.webhook(place) {
                Some(hook) => {
                    let mut post = ExecuteWebhook::new()
                        .content(&part.content)
                        .allowed_mentions(allowed_mentions(ping));
                    if let Some(username) = &part.username {
                        post = post.username(username);
                    }
                    if let Some(avatar) = &part.avatar_url {
                        post = post.avatar_url(avatar);
                    }
                    let thread = match &place.thread {
                        Some(_) => Some(self.channel(place).await?),
                        None => None,
                    };
                    let landed = if part.tried {
                        self.find_webhook_post(place, hook, &part.content).await?
                    } else {
                        None
                    };
                    part.tried = true;
                    match landed {
                        Some(id) => id,
                        None => self.webhook_post(hook, thread, &json_body(&post)).await?,
                    }
                }
                None => {
                    let channel = self.channel(place).await?;
                    // An agent's native reply pings the author it answers, and nobody else.
                    let allowed =
                        allowed_mentions(ping).replied_user(!part.person && reply_to.is_some());
                    let nonce = part.nonce.get_or_insert_with(new_nonce).clone();
                    let mut post = CreateMessage::new()
                        .content(&part.content)
                        .allowed_mentions(allowed)
                        .nonce(Nonce::String(nonce))
                        .enforce_nonce(true);
                    if let Some(parent) = reply_to {
                        let parent = MessageReference::new(
                            MessageReferenceKind::Default,
                            ids::channel(channel)?,
                        )
                        .message_id(ids::message(part_id(parent)?)?)
                        // A parent deleted meanwhile: the answer is still posted, unthreaded.
                        .fail_if_not_exists(false);
                        post = post.reference_message(parent);
                    }
                    self.bot_post(channel, &json_body(&post)).await?
                }
            };
            part.posted = Some(id.to_string());
            self.mark_own(id).await;
            shown.push(PartId(id.to_string()));
            Ok(())
        }))
    }

    fn media_limits(&self) -> Option<MediaLimits> {
        Some(uploads::LIMITS)
    }

    fn upload<'a>(
        &'a self,
        place: &'a Place,
        look: &'a Look,
        files: &'a [Upload],
        caption: Option<&'a DiscordPart>,
        reply_to: Option<&'a PartId>,
        shown: &'a mut Vec<PartId>,
    ) -> BoxFuture<'a, Result<bool, SendError>> {
        Box::pin(self.paced(
            place,
            self.upload_files(place, look, files, caption, reply_to, shown),
        ))
    }

    fn edit<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
        part: &'a DiscordPart,
    ) -> BoxFuture<'a, Result<Edited, SendError>> {
        Box::pin(self.paced(place, async move {
            // One body for both ways of editing: a webhook's and the bot's edit take the same
            // fields.
            let body = json_body(
                &EditMessage::new()
                    .content(&part.content)
                    .allowed_mentions(allowed_mentions(None)),
            );
            let found = self
                .change_message(place, LightMethod::Patch, part_id(id)?, Some(&body))
                .await?;
            Ok(if found { Edited::Done } else { Edited::Gone })
        }))
    }

    fn delete<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.paced(place, async move {
            let message = part_id(id)?;
            // The gateway echoes the delete; it is not a person deleting the message.
            self.shared.note_own_delete(message);
            self.change_message(place, LightMethod::Delete, message, None)
                .await
                .map(drop)
        }))
    }

    /// Removes the reactions that disappear, then adds those that appear. A reaction removed
    /// that the engine did not know as shown (set by an earlier release) is removed too.
    fn react<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
        change: &'a ReactionChange,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.paced(place, async move {
            let channel = self.channel(place).await?;
            let message = part_id(id)?;
            let mut gone: Vec<&String> = change
                .before
                .iter()
                .filter(|emoji| !change.after.contains(emoji))
                .collect();
            if !change.add
                && !change.after.contains(&change.emoji)
                && !gone.contains(&&change.emoji)
            {
                gone.push(&change.emoji);
            }
            for emoji in gone {
                self.set_reaction(channel, message, emoji, false).await?;
            }
            for emoji in change.after.iter().filter(|e| !change.before.contains(e)) {
                self.set_reaction(channel, message, emoji, true).await?;
            }
            Ok(())
        }))
    }

    fn typing<'a>(&'a self, place: &'a Place) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let channel = self.channel(place).await?;
            self.shared
                .rest
                .call(
                    LightMethod::Post,
                    Route::ChannelTyping {
                        channel_id: ids::channel(channel)?,
                    },
                    &[],
                    None,
                    &format!("typing:{channel}"),
                )
                .await?;
            Ok(())
        })
    }

    /// Starts a Discord thread on the parent message, named after the parent's first line as
    /// Discord shows it (`name`, the engine's excerpt, when Discord shows nothing). A message's
    /// thread has the message's id, so a parent that has one already (160004) gives it.
    fn open_thread<'a>(
        &'a self,
        place: &'a Place,
        parent: Option<&'a PartId>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ThreadRef>, SendError>> {
        Box::pin(self.paced(place, async move {
            // Discord threads hang on a message; DMs have none.
            let Some(parent) = parent.filter(|_| !place.chat.0.starts_with("dm:")) else {
                return Ok(None);
            };
            let channel = self.chat_channel(&place.chat).await?;
            let parent = part_id(parent)?;
            let name = match self.content_of(channel, parent).await? {
                Some(content) if !content.trim().is_empty() => format::thread_name(&content),
                _ => name.to_owned(),
            };
            let body = json_body(
                &CreateThread::new(name).auto_archive_duration(AutoArchiveDuration::OneDay),
            );
            let created = self
                .shared
                .rest
                .call(
                    LightMethod::Post,
                    Route::ChannelMessageThreads {
                        channel_id: ids::channel(channel)?,
                        message_id: ids::message(parent)?,
                    },
                    &[],
                    Some(&body),
                    &format!("thread:{channel}"),
                )
                .await;
            let thread = match created {
                Ok(answer) => id_of(answer.as_ref())?,
                Err(error) if error.code() == Some(160_004) => parent,
                // The parent is not in the channel itself (it is in a thread): no thread here.
                Err(error) if error.is_unknown_message() => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            Ok(Some(ThreadRef(thread.to_string())))
        }))
    }
}
