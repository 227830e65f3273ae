//! Hub -> Discord (the Discord column of SPEC section 5): which hub events become which jobs for
//! which linked channel ([`route`]), and how a job is carried out ([`DiscordDeliver`], run by
//! the SDK's per-destination outboxes, which keep order per channel and retry).
//!
//! Agents post through the link's webhook as themselves (sanitised username, `avatar_url` from
//! `[agents]`); without a webhook the bot posts `**name**: text`. Webhooks cannot reply, so a
//! webhook reply starts with a quote of the parent and a link to it. Every post carries
//! `allowed_mentions` (SPEC section 9): a relayed person's message pings nobody; an agent's
//! pings at most the author of the message it replies to; never @everyone, @here or roles;
//! edits ping nobody. A relayed person's name carries their platform ("Ada (Telegram)"), and is
//! marked when it equals an agent's ([`format::person_name`]). Values from payloads that go
//! into a URL (reaction emoji, ids) are validated, and encoded as path segments. Long
//! messages are split under 2000 characters; every part is mapped to the hub message, so edits
//! and deletes reach every part (through the webhook for webhook posts).
//!
//! A job is mutable: a split message remembers the parts already posted, so a retry after a 429
//! or a 5xx continues with the next part and never posts one twice. Jobs are kept in the store
//! by the durable outboxes until done (with that progress), so they name their link by ids and
//! never carry the webhook token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hub_bridge_sdk::emoji::Emoji;
use hub_bridge_sdk::event::{now_millis, ChannelEvent, GlobalEventKind, HubEvent};
use hub_bridge_sdk::metrics::{BridgeDirection, Direction};
use hub_bridge_sdk::msgmap::MessageMap;
use hub_bridge_sdk::outbox::{Deliver, SendError};
use hub_bridge_sdk::text::discord::sanitize_webhook_username;
use hub_bridge_sdk::text::names::is_like_an_agent;
use hub_bridge_sdk::{DeadLetter, Delivery, ExternalId, Op, Source};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use serenity::http::{LightMethod, Route};
use serenity::model::id::WebhookId;

use crate::config::WebhookRef;
use crate::format::{self, Header};
use crate::ids;
use crate::rest::{path_segment, RestError};
use crate::shared::{Link, Shared};

/// How often the typing indicator is triggered again at most (Discord shows it for ~10 s).
const TYPING_REFRESH: Duration = Duration::from_secs(8);

/// One relay to one Discord destination (a channel id, or `dm:{userId}`).
#[derive(Serialize, Deserialize)]
pub struct Job {
    kind: JobKind,
    event_type: String,
    hub_channel: Option<String>,
    /// The agent told when the job is dead-lettered (agents only: people get no notifications).
    agent_id: Option<String>,
    /// When the hub loop read the event, for the relay-latency metric (this run only).
    #[serde(skip)]
    received_at: Option<Instant>,
    #[serde(skip)]
    started: bool,
}

/// A link, by the ids that name it in the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkRef {
    hub_channel: String,
    discord_channel: u64,
}

impl LinkRef {
    fn of(link: &Link) -> Self {
        Self {
            hub_channel: link.hub_channel.clone(),
            discord_channel: link.discord_channel,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum JobKind {
    Post(Post),
    Edit(Edit),
    Delete(Delete),
    React {
        link: LinkRef,
        hub_id: String,
        emoji: String,
        add: bool,
    },
    Typing {
        link: LinkRef,
        hub_thread: Option<String>,
    },
    CreateThread {
        link: LinkRef,
        hub_thread: String,
        parent_hub: String,
    },
    /// A bot message with no mapping: notices, announcements and DMs to people.
    Text {
        parts: Vec<String>,
        mention: Option<u64>,
        sent: usize,
    },
}

#[derive(Serialize, Deserialize)]
struct Post {
    link: LinkRef,
    hub_id: String,
    /// A relay of a person's message (the sender is `external:*`): it pings nobody.
    #[serde(default)]
    person: bool,
    name: String,
    avatar_url: Option<String>,
    text: String,
    reply_to: Option<String>,
    hub_thread: Option<String>,
    plan: Option<Plan>,
    sent: Vec<String>,
}

/// What a post turned into once the parent and thread were looked up.
#[derive(Serialize, Deserialize)]
struct Plan {
    parts: Vec<String>,
    /// Where the parts go: the linked channel, or a thread of it.
    channel: u64,
    thread: Option<u64>,
    /// The message a bot-mode post replies to natively.
    reference: Option<u64>,
    /// The user an agent's webhook reply may ping: the author of the message it answers.
    #[serde(default)]
    ping: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Edit {
    link: LinkRef,
    hub_id: String,
    text: String,
    progress: Option<Rewrite>,
}

#[derive(Serialize, Deserialize)]
struct Delete {
    link: LinkRef,
    hub_id: String,
    progress: Option<Rewrite>,
}

/// An edit or delete under way: the parts as they were, the parts as they become, how far.
#[derive(Serialize, Deserialize)]
struct Rewrite {
    location: Location,
    old: Vec<String>,
    new: Vec<String>,
    ids: Vec<String>,
    next: usize,
}

/// Where a hub message's parts are on Discord.
#[derive(Clone, Serialize, Deserialize)]
struct Location {
    chat: String,
    channel: u64,
    thread: Option<u64>,
}

impl Job {
    fn new(kind: JobKind, event_type: &str) -> Self {
        Self {
            kind,
            event_type: event_type.to_owned(),
            hub_channel: None,
            agent_id: None,
            received_at: None,
            started: false,
        }
    }

    /// A bot notice (rate-limit warnings, archive notices), pinging `mention` if given.
    pub fn notice(text: String, mention: Option<u64>, max_parts: usize) -> Self {
        let parts = format::compose(&Header::None, &text, max_parts);
        Self::new(
            JobKind::Text {
                parts,
                mention,
                sent: 0,
            },
            "notice",
        )
    }

    fn with_hub(mut self, hub_channel: &str, agent: Option<&str>, received_at: Instant) -> Self {
        self.hub_channel = Some(hub_channel.to_owned());
        // People on platforms get no agent notifications.
        self.agent_id = agent
            .filter(|agent| !ExternalId::is_external(agent))
            .map(str::to_owned);
        self.received_at = Some(received_at);
        self
    }

    /// What a dead letter keeps of the job.
    fn summary(&self) -> Value {
        match &self.kind {
            JobKind::Post(post) => json!({
                "hubMessageId": post.hub_id,
                "content": post.text,
                "partsSent": post.sent.len(),
            }),
            JobKind::Edit(edit) => json!({"hubMessageId": edit.hub_id, "content": edit.text}),
            JobKind::Delete(delete) => json!({"hubMessageId": delete.hub_id}),
            JobKind::React {
                hub_id, emoji, add, ..
            } => json!({"hubMessageId": hub_id, "emoji": emoji, "add": add}),
            JobKind::Typing { .. } => json!({}),
            JobKind::CreateThread {
                hub_thread,
                parent_hub,
                ..
            } => json!({"threadId": hub_thread, "parentMessageId": parent_hub}),
            JobKind::Text { parts, sent, .. } => {
                json!({"content": parts.join(""), "partsSent": sent})
            }
        }
    }
}

/// The jobs a hub event makes, per destination.
pub async fn route(shared: &Shared, delivery: &Delivery) -> Vec<(String, Job)> {
    let inbound = &delivery.inbound;
    match (&delivery.source, &inbound.event) {
        (Source::Channel(_), HubEvent::Channel(event)) => {
            channel_jobs(
                shared,
                event,
                inbound.origin.as_deref(),
                inbound.sender_id.as_deref(),
                delivery.received_at,
            )
            .await
        }
        (Source::Global, HubEvent::Global(event))
            if event.kind == GlobalEventKind::Announcement =>
        {
            let Some(message) = event.data.message.as_deref() else {
                return Vec::new();
            };
            shared
                .active_channels()
                .into_iter()
                .map(|channel| {
                    let mut job = Job::notice(format!("📢 {message}"), None, shared.max_parts);
                    "system.announcement".clone_into(&mut job.event_type);
                    (channel.to_string(), job)
                })
                .collect()
        }
        (Source::Agent(recipient), HubEvent::Agent(event))
            if event.kind == hub_bridge_sdk::event::AgentEventKind::DirectMessage =>
        {
            let Some(person) =
                ExternalId::parse(recipient).filter(|person| person.platform == crate::PLATFORM)
            else {
                return Vec::new();
            };
            let Some(content) = event.data.content.as_deref() else {
                return Vec::new();
            };
            let from = event.data.from_agent.as_deref().unwrap_or("hub");
            // Only a user id opens a DM: anything else is refused before it reaches a request.
            let Some(user) = person.private_chat_user_id() else {
                refuse(
                    shared,
                    Some(from),
                    None,
                    "invalid_user_id",
                    format!(
                        "Your agent.direct_message to {recipient} was not relayed: `{}` is not a \
                         Discord user id.",
                        person.user_id
                    ),
                )
                .await;
                return Vec::new();
            };
            let name = shared.hub.display_name(from, None);
            let parts = format::compose(&Header::Name(name), content, shared.max_parts);
            let mut job = Job::new(
                JobKind::Text {
                    parts,
                    mention: None,
                    sent: 0,
                },
                "agent.direct_message",
            );
            job.agent_id = (!ExternalId::is_external(from)).then(|| from.to_owned());
            job.received_at = Some(delivery.received_at);
            vec![(format!("dm:{user}"), job)]
        }
        _ => Vec::new(),
    }
}

async fn channel_jobs(
    shared: &Shared,
    event: &ChannelEvent,
    origin: Option<&str>,
    envelope_sender: Option<&str>,
    received_at: Instant,
) -> Vec<(String, Job)> {
    let mut jobs = Vec::new();
    // No echo: what came from a Discord channel is not posted back to it (SPEC 5).
    let links: Vec<_> = shared
        .links_for_hub(event.channel_id())
        .into_iter()
        .filter(|link| origin != Some(link.origin().as_str()))
        .collect();
    if links.is_empty() {
        return jobs;
    }
    if let ChannelEvent::ReactionAdd { emoji, .. } | ChannelEvent::ReactionRemove { emoji, .. } =
        event
    {
        // The emoji goes into a URL path: what is not an emoji is refused here, once per event.
        if let Err(error) = Emoji::parse(emoji) {
            refuse(
                shared,
                event.actor().or(envelope_sender),
                Some(event.channel_id()),
                "invalid_emoji",
                format!(
                    "Your {} was not relayed to Discord: {error}.",
                    event.type_name()
                ),
            )
            .await;
            return jobs;
        }
    }
    for link in links {
        let kind = match event {
            ChannelEvent::Message { message, .. } => post(shared, &link, message, None),
            ChannelEvent::ThreadMessage {
                thread_id, message, ..
            } => post(shared, &link, message, Some(thread_id)),
            ChannelEvent::MessageEdit {
                message_id,
                content,
                ..
            } => Some(JobKind::Edit(Edit {
                link: LinkRef::of(&link),
                hub_id: message_id.clone(),
                text: content.clone(),
                progress: None,
            })),
            ChannelEvent::MessageDelete { message_id, .. } => Some(JobKind::Delete(Delete {
                link: LinkRef::of(&link),
                hub_id: message_id.clone(),
                progress: None,
            })),
            ChannelEvent::ReactionAdd {
                message_id, emoji, ..
            }
            | ChannelEvent::ReactionRemove {
                message_id, emoji, ..
            } => Some(JobKind::React {
                link: LinkRef::of(&link),
                hub_id: message_id.clone(),
                emoji: emoji.clone(),
                add: matches!(event, ChannelEvent::ReactionAdd { .. }),
            }),
            ChannelEvent::Typing {
                started: true,
                thread_id,
                ..
            } => Some(JobKind::Typing {
                link: LinkRef::of(&link),
                hub_thread: thread_id.clone(),
            }),
            ChannelEvent::ThreadCreate { thread, .. } if !thread.parent_message_id.is_empty() => {
                Some(JobKind::CreateThread {
                    link: LinkRef::of(&link),
                    hub_thread: thread.id.clone(),
                    parent_hub: thread.parent_message_id.clone(),
                })
            }
            ChannelEvent::Archive { .. } | ChannelEvent::Delete { .. } => {
                let what = if matches!(event, ChannelEvent::Archive { .. }) {
                    "archived"
                } else {
                    "deleted"
                };
                shared.stop_link(&link).await;
                let text = format!(
                    "This channel's hub channel was {what}; messages are no longer relayed."
                );
                Some(Job::notice(text, None, shared.max_parts).kind)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            let actor = event.actor().or(envelope_sender);
            let job =
                Job::new(kind, event.type_name()).with_hub(&link.hub_channel, actor, received_at);
            jobs.push((link.discord_channel.to_string(), job));
        }
    }
    jobs
}

/// Counts an event the bridge refuses to relay, and tells the agent that sent it (people get no
/// notifications).
async fn refuse(
    shared: &Shared,
    sender: Option<&str>,
    hub_channel: Option<&str>,
    reason: &'static str,
    message: String,
) {
    shared.hub.metrics().count_ignored("discord", reason);
    tracing::debug!(reason, sender, "hub event refused by the Discord bridge");
    let Some(agent) = sender.filter(|sender| !ExternalId::is_external(sender)) else {
        return;
    };
    if let Err(error) = shared.hub.notify_agent(agent, hub_channel, message).await {
        tracing::warn!(%error, agent, "could not tell an agent why its event was refused");
    }
}

/// Whether `name` reads like an agent's display name or id (SPEC section 9).
fn is_agent_name(shared: &Shared, name: &str) -> bool {
    is_like_an_agent(name, shared.hub.agent_names())
}

fn post(
    shared: &Shared,
    link: &Link,
    message: &hub_bridge_sdk::ChannelMessage,
    thread: Option<&String>,
) -> Option<JobKind> {
    let text = format::hub_text(&message.content, message.content_blocks.as_deref());
    if text.trim().is_empty() {
        return None;
    }
    let sender = &message.sender_id;
    let person = ExternalId::is_external(sender);
    let shown = shared
        .hub
        .display_name(sender, message.author_name.as_deref());
    let name = if person {
        let platform = ExternalId::parse(sender).map(|id| id.platform);
        format::person_name(&shown, platform, is_agent_name(shared, &shown))
    } else {
        shown
    };
    Some(JobKind::Post(Post {
        link: LinkRef::of(link),
        hub_id: message.id.clone(),
        person,
        name,
        avatar_url: shared
            .hub
            .profile(sender)
            .and_then(|profile| profile.avatar_url.clone()),
        text,
        reply_to: message.parent_message_id.clone(),
        hub_thread: thread.or(message.thread_id.as_ref()).cloned(),
        plan: None,
        sent: Vec::new(),
    }))
}

/// Carries out jobs for the outboxes.
pub struct DiscordDeliver {
    shared: Arc<Shared>,
    typing_at: Mutex<HashMap<u64, Instant>>,
}

impl DiscordDeliver {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            typing_at: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> &MessageMap {
        &self.shared.map
    }

    async fn run(&self, destination: &str, job: &mut Job) -> Result<(), SendError> {
        if !job.started {
            job.started = true;
            if let Some(received_at) = job.received_at {
                self.shared
                    .hub
                    .metrics()
                    .relay_latency
                    .get_or_create(&BridgeDirection {
                        bridge: "discord",
                        direction: Direction::Outbound,
                    })
                    .observe(received_at.elapsed().as_secs_f64());
            }
        }
        match &mut job.kind {
            JobKind::Post(post) => {
                let link = self.link(&post.link)?;
                self.post(&link, post).await
            }
            JobKind::Edit(edit) => {
                let link = self.link(&edit.link)?;
                self.edit(&link, edit).await
            }
            JobKind::Delete(delete) => {
                let link = self.link(&delete.link)?;
                self.delete(&link, delete).await
            }
            JobKind::React {
                link,
                hub_id,
                emoji,
                add,
            } => {
                let link = self.link(link)?;
                self.react(&link, hub_id, emoji, *add).await
            }
            JobKind::Typing { link, hub_thread } => {
                let link = self.link(link)?;
                self.typing(&link, hub_thread.as_deref()).await
            }
            JobKind::CreateThread {
                link,
                hub_thread,
                parent_hub,
            } => {
                let link = self.link(link)?;
                let link = link.as_ref();
                let home = link.home_chat();
                let parent = self.parts(parent_hub, &home).await?;
                let Some(parent) = parent.first().and_then(|id| ids::parse(id)) else {
                    tracing::debug!(thread = %hub_thread, "thread on a message Discord does not show; not created");
                    return Ok(());
                };
                if self.known_thread(link, hub_thread).await?.is_none() {
                    self.create_thread(link, hub_thread, parent).await?;
                }
                Ok(())
            }
            JobKind::Text {
                parts,
                mention,
                sent,
            } => {
                let channel = self.destination_channel(destination).await?;
                while *sent < parts.len() {
                    let allowed = match mention {
                        Some(user) => json!({"parse": [], "users": [user.to_string()]}),
                        None => json!({"parse": []}),
                    };
                    let body = json!({"content": parts[*sent], "allowed_mentions": allowed});
                    self.bot_post(channel, &body).await?;
                    *sent += 1;
                }
                Ok(())
            }
        }
    }

    /// The configured link a job names (stopped or not: an archive notice still goes out).
    fn link(&self, link: &LinkRef) -> Result<Arc<Link>, SendError> {
        self.shared
            .link(&link.hub_channel, link.discord_channel)
            .ok_or_else(|| {
                SendError::Permanent(format!(
                    "hub channel {} is no longer linked to Discord channel {}",
                    link.hub_channel, link.discord_channel
                ))
            })
    }

    /// The channel a destination names: a channel id, or `dm:{userId}` (the DM is opened once).
    async fn destination_channel(&self, destination: &str) -> Result<u64, SendError> {
        if let Some(user) = destination.strip_prefix("dm:") {
            let user = ids::parse(user)
                .ok_or_else(|| SendError::Permanent(format!("bad user id {user}")))?;
            return Ok(self.shared.dm_channel(user).await?);
        }
        ids::parse(destination)
            .ok_or_else(|| SendError::Permanent(format!("bad destination {destination}")))
    }

    // ----- posts -----

    async fn post(&self, link: &Link, post: &mut Post) -> Result<(), SendError> {
        if post.plan.is_none() {
            post.plan = Some(self.plan(link, post).await?);
        }
        let Some(plan) = post.plan.as_ref() else {
            return Ok(());
        };
        while post.sent.len() < plan.parts.len() {
            let index = post.sent.len();
            let content = &plan.parts[index];
            let id = match &link.webhook {
                Some(hook) => {
                    let allowed = match plan.ping {
                        Some(user) if !post.person => {
                            json!({"parse": [], "users": [user.to_string()]})
                        }
                        _ => json!({"parse": []}),
                    };
                    let mut body = json!({
                        "content": content,
                        "username": sanitize_webhook_username(&post.name),
                        "allowed_mentions": allowed,
                    });
                    if let Some(avatar) = &post.avatar_url {
                        body["avatar_url"] = json!(avatar);
                    }
                    self.webhook_post(hook, plan.thread, &body).await?
                }
                None => {
                    // An agent's native reply pings the author it answers, and nobody else.
                    let replied_user = !post.person && plan.reference.is_some();
                    let mut body = json!({
                        "content": content,
                        "allowed_mentions": {"parse": [], "replied_user": replied_user},
                    });
                    if let (0, Some(parent)) = (index, plan.reference) {
                        body["message_reference"] =
                            json!({"message_id": parent.to_string(), "fail_if_not_exists": false});
                    }
                    self.bot_post(plan.channel, &body).await?
                }
            };
            post.sent.push(id.to_string());
            self.record(link, &post.hub_id, plan, &post.sent, id).await;
        }
        Ok(())
    }

    /// Looks up the thread and the parent a post needs, and splits its text.
    async fn plan(&self, link: &Link, post: &Post) -> Result<Plan, SendError> {
        let thread = match &post.hub_thread {
            Some(hub_thread) => {
                let hints: Vec<&str> = std::iter::once(hub_thread.as_str())
                    .chain(post.reply_to.as_deref())
                    .collect();
                self.thread_for(link, hub_thread, &hints).await?
            }
            None => None,
        };
        let channel = thread.unwrap_or(link.discord_channel);
        let mut header = match &link.webhook {
            Some(_) => Header::None,
            None => Header::Name(post.name.clone()),
        };
        let mut reference = None;
        let mut ping = None;
        if let Some(parent_hub) = &post.reply_to {
            if let Some((parent, location)) = self.first_part(link, parent_hub).await? {
                let same_channel = location.channel == channel;
                match &link.webhook {
                    None if same_channel => reference = Some(parent),
                    None => {}
                    // A thread's first message answers the thread's starter: the thread
                    // already shows it, so no quote.
                    Some(_) if thread == Some(parent) => {}
                    Some(_) => {
                        if let Some((quote, author)) = self.quote(link, parent, &location).await? {
                            header = Header::Prefix(quote);
                            ping = author;
                        }
                    }
                }
            }
        }
        Ok(Plan {
            parts: format::compose(&header, &post.text, self.shared.max_parts),
            channel,
            thread,
            reference,
            ping,
        })
    }

    /// The quote of a parent message for a webhook reply, and its author when that is a user
    /// (not a webhook); `None` when it is gone.
    async fn quote(
        &self,
        link: &Link,
        parent: u64,
        location: &Location,
    ) -> Result<Option<(String, Option<u64>)>, SendError> {
        let Some(message) = self.get_message(location.channel, parent).await? else {
            return Ok(None);
        };
        let author = &message["author"];
        let author_name = if message["webhook_id"].is_string() {
            author["username"].as_str().unwrap_or("someone").to_owned()
        } else {
            format::display_name(
                None,
                author["global_name"].as_str(),
                author["username"].as_str().unwrap_or("someone"),
            )
        };
        let content = message["content"].as_str().unwrap_or_default();
        let guild = self
            .shared
            .channel_info(link.discord_channel)
            .await
            .ok()
            .and_then(|info| info.guild_id);
        let url = format::message_link(guild, location.channel, parent);
        let user = if message["webhook_id"].is_string() {
            None
        } else {
            author["id"].as_str().and_then(ids::parse)
        };
        Ok(Some((format::quote(&author_name, content, &url), user)))
    }

    /// Maps a posted part, marks it as the bridge's own, and remembers its thread.
    async fn record(&self, link: &Link, hub_id: &str, plan: &Plan, sent: &[String], id: u64) {
        let mut ops = vec![Op::Set {
            key: self.shared.keys().own(id),
            value: "1".to_owned(),
            ttl: Some(MessageMap::KEEP),
            only_if_absent: false,
        }];
        if let Some(thread) = plan.thread {
            ops.push(Op::Set {
                key: self.shared.keys().in_thread(hub_id, &link.home_chat()),
                value: thread.to_string(),
                ttl: Some(MessageMap::KEEP),
                only_if_absent: false,
            });
        }
        let chat = link.chat(plan.channel);
        let (mapped, marked) = tokio::join!(
            self.map()
                .record_parts(crate::PLATFORM, hub_id, &chat, sent),
            self.shared.hub.store().exec(ops),
        );
        // The post is out; a failed record must not make it post again. Later edits of this
        // message will not find it, which is the lesser harm.
        if let Err(error) = mapped.and(marked.map(drop)) {
            tracing::warn!(%error, hub_message = hub_id, "could not map a Discord post");
        }
    }

    /// Executes the link's webhook (in `thread` when given) and returns the new message's id.
    async fn webhook_post(
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
        message_id(answer.as_ref())
    }

    async fn bot_post(&self, channel: u64, body: &Value) -> Result<u64, SendError> {
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
        message_id(answer.as_ref())
    }

    // ----- threads -----

    async fn known_thread(&self, link: &Link, hub_thread: &str) -> Result<Option<u64>, SendError> {
        let key = self
            .shared
            .keys()
            .thread_by_hub(hub_thread, &link.home_chat());
        let reply = self
            .shared
            .hub
            .store()
            .one(Op::Get { key })
            .await
            .map_err(store_error)?;
        Ok(reply.into_text().and_then(|id| ids::parse(&id)))
    }

    /// The Discord thread of a hub thread; creates it on the first of `hints` (hub message ids:
    /// the thread id itself, which agents often make the parent's id, then the parent) that
    /// Discord shows. `None`: post in the channel.
    async fn thread_for(
        &self,
        link: &Link,
        hub_thread: &str,
        hints: &[&str],
    ) -> Result<Option<u64>, SendError> {
        if let Some(thread) = self.known_thread(link, hub_thread).await? {
            return Ok(Some(thread));
        }
        let home = link.home_chat();
        for hint in hints {
            if let Some(parent) = self
                .parts(hint, &home)
                .await?
                .first()
                .and_then(|id| ids::parse(id))
            {
                return self.create_thread(link, hub_thread, parent).await.map(Some);
            }
        }
        Ok(None)
    }

    /// Starts a Discord thread on `parent` and maps it both ways.
    async fn create_thread(
        &self,
        link: &Link,
        hub_thread: &str,
        parent: u64,
    ) -> Result<u64, SendError> {
        let content = self
            .get_message(link.discord_channel, parent)
            .await?
            .and_then(|message| message["content"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let body = json!({"name": format::thread_name(&content), "auto_archive_duration": 1440});
        let created = self
            .shared
            .rest
            .call(
                LightMethod::Post,
                Route::ChannelMessageThreads {
                    channel_id: ids::channel(link.discord_channel)?,
                    message_id: ids::message(parent)?,
                },
                &[],
                Some(&body),
                &format!("thread:{}", link.discord_channel),
            )
            .await;
        let thread = match created {
            Ok(answer) => message_id(answer.as_ref())?,
            // The message has a thread already; a message's thread has the message's id.
            Err(error) if error.code() == Some(160_004) => parent,
            Err(error) => return Err(error.into()),
        };
        let keep = Some(Duration::from_secs(90 * 24 * 3600));
        let ops = vec![
            Op::Set {
                key: self
                    .shared
                    .keys()
                    .thread_by_hub(hub_thread, &link.home_chat()),
                value: thread.to_string(),
                ttl: keep,
                only_if_absent: false,
            },
            Op::Set {
                key: self.shared.keys().thread_by_discord(&link.chat(thread)),
                value: hub_thread.to_owned(),
                ttl: keep,
                only_if_absent: false,
            },
        ];
        self.shared
            .hub
            .store()
            .exec(ops)
            .await
            .map_err(store_error)?;
        Ok(thread)
    }

    // ----- edits and deletes -----

    async fn edit(&self, link: &Link, edit: &mut Edit) -> Result<(), SendError> {
        if edit.progress.is_none() {
            let location = self.locate(link, &edit.hub_id).await?;
            let old = self.parts(&edit.hub_id, &location.chat).await?;
            let Some(first) = old.first().and_then(|id| ids::parse(id)) else {
                tracing::debug!(hub_message = %edit.hub_id, "edit of a message Discord does not show");
                return Ok(());
            };
            // Keep the header the message was posted with (a reply's quote, the bot's name).
            let header = self
                .get_message(location.channel, first)
                .await?
                .and_then(|message| message["content"].as_str().map(str::to_owned))
                .map(|content| format::posted_header(&content, link.webhook.is_some()).to_owned())
                .filter(|header| !header.is_empty())
                .map_or(Header::None, Header::Prefix);
            edit.progress = Some(Rewrite {
                new: format::compose(&header, &edit.text, self.shared.max_parts),
                location,
                old,
                ids: Vec::new(),
                next: 0,
            });
        }
        let Some(rewrite) = edit.progress.as_mut() else {
            return Ok(());
        };
        self.rewrite(link, &edit.hub_id, rewrite).await
    }

    async fn delete(&self, link: &Link, delete: &mut Delete) -> Result<(), SendError> {
        if delete.progress.is_none() {
            let location = self.locate(link, &delete.hub_id).await?;
            let old = self.parts(&delete.hub_id, &location.chat).await?;
            delete.progress = Some(Rewrite {
                location,
                old,
                new: Vec::new(),
                ids: Vec::new(),
                next: 0,
            });
        }
        let Some(rewrite) = delete.progress.as_mut() else {
            return Ok(());
        };
        self.rewrite(link, &delete.hub_id, rewrite).await
    }

    /// Turns the old parts into the new ones: edits the parts both have, posts the extra new
    /// ones, deletes the extra old ones; then maps the result (or forgets a deleted message).
    async fn rewrite(
        &self,
        link: &Link,
        hub_id: &str,
        rewrite: &mut Rewrite,
    ) -> Result<(), SendError> {
        let total = rewrite.old.len().max(rewrite.new.len());
        let location = rewrite.location.clone();
        while rewrite.next < total {
            let index = rewrite.next;
            let old = rewrite.old.get(index).and_then(|id| ids::parse(id));
            match (old, rewrite.new.get(index)) {
                (Some(old), Some(content)) => {
                    if self.edit_part(link, &location, old, content).await? {
                        rewrite.ids.push(old.to_string());
                    }
                }
                (None, Some(content)) => {
                    let plan = Plan {
                        parts: Vec::new(),
                        channel: location.channel,
                        thread: location.thread,
                        reference: None,
                        ping: None,
                    };
                    let id = self.post_extra(link, &location, content).await?;
                    rewrite.ids.push(id.to_string());
                    self.record(link, hub_id, &plan, &rewrite.ids, id).await;
                }
                (Some(old), None) => self.delete_part(link, &location, old).await?,
                (None, None) => {}
            }
            rewrite.next += 1;
        }
        let result = if rewrite.new.is_empty() {
            self.map()
                .forget(crate::PLATFORM, hub_id, &location.chat)
                .await
        } else if rewrite.ids != rewrite.old {
            self.map()
                .record_parts(crate::PLATFORM, hub_id, &location.chat, &rewrite.ids)
                .await
        } else {
            Ok(())
        };
        if let Err(error) = result {
            tracing::warn!(%error, hub_message = hub_id, "could not update the map of a Discord message");
        }
        Ok(())
    }

    /// Edits one part; false when Discord no longer has it.
    async fn edit_part(
        &self,
        link: &Link,
        location: &Location,
        message: u64,
        content: &str,
    ) -> Result<bool, SendError> {
        let body = json!({"content": content, "allowed_mentions": {"parse": []}});
        if let Some(hook) = &link.webhook {
            let token = path_segment(hook.token.expose());
            let route = Route::WebhookMessage {
                webhook_id: WebhookId::from(hook.id),
                token: &token,
                message_id: ids::message(message)?,
            };
            let params = thread_param(location.thread);
            let result = self
                .shared
                .rest
                .call(
                    LightMethod::Patch,
                    route,
                    &params,
                    Some(&body),
                    &format!("webhook:{}", hook.id),
                )
                .await;
            match result {
                Ok(_) => return Ok(true),
                // Not this webhook's message (posted before the webhook was configured): the
                // bot may have posted it.
                Err(error) if error.is_unknown_message() => {}
                Err(error) => return Err(error.into()),
            }
        }
        let result = self
            .shared
            .rest
            .call(
                LightMethod::Patch,
                Route::ChannelMessage {
                    channel_id: ids::channel(location.channel)?,
                    message_id: ids::message(message)?,
                },
                &[],
                Some(&body),
                &format!("patch:{}", location.channel),
            )
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if error.is_unknown_message() => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes one part; a part that is already gone counts as deleted.
    async fn delete_part(
        &self,
        link: &Link,
        location: &Location,
        message: u64,
    ) -> Result<(), SendError> {
        self.shared.note_own_delete(message);
        if let Some(hook) = &link.webhook {
            let token = path_segment(hook.token.expose());
            let route = Route::WebhookMessage {
                webhook_id: WebhookId::from(hook.id),
                token: &token,
                message_id: ids::message(message)?,
            };
            let params = thread_param(location.thread);
            match self
                .shared
                .rest
                .call(
                    LightMethod::Delete,
                    route,
                    &params,
                    None,
                    &format!("webhook:{}", hook.id),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) if error.is_unknown_message() => {}
                Err(error) => return Err(error.into()),
            }
        }
        match self
            .shared
            .rest
            .call(
                LightMethod::Delete,
                Route::ChannelMessage {
                    channel_id: ids::channel(location.channel)?,
                    message_id: ids::message(message)?,
                },
                &[],
                None,
                &format!("delete:{}", location.channel),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_unknown_message() => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Posts a part an edit made longer: as the webhook's (its username is the one already
    /// shown, so the bot's name is not needed) or the bot's.
    async fn post_extra(
        &self,
        link: &Link,
        location: &Location,
        content: &str,
    ) -> Result<u64, SendError> {
        match &link.webhook {
            Some(hook) => {
                let body = json!({"content": content, "allowed_mentions": {"parse": []}});
                self.webhook_post(hook, location.thread, &body).await
            }
            None => {
                let body = json!({"content": content, "allowed_mentions": {"parse": []}});
                self.bot_post(location.channel, &body).await
            }
        }
    }

    // ----- reactions and typing -----

    async fn react(
        &self,
        link: &Link,
        hub_id: &str,
        emoji: &str,
        add: bool,
    ) -> Result<(), SendError> {
        // Checked when the job was made; again here for jobs a previous version queued.
        let emoji = Emoji::parse(emoji)
            .map_err(|error| SendError::Permanent(format!("reaction not relayed: {error}")))?;
        let Some((message, location)) = self.first_part(link, hub_id).await? else {
            tracing::debug!(
                hub_message = hub_id,
                "reaction on a message Discord does not show"
            );
            return Ok(());
        };
        let route = Route::ChannelMessageReactionMe {
            channel_id: ids::channel(location.channel)?,
            message_id: ids::message(message)?,
            reaction: &path_segment(&emoji.to_string()),
        };
        let method = if add {
            LightMethod::Put
        } else {
            LightMethod::Delete
        };
        match self
            .shared
            .rest
            .call(
                method,
                route,
                &[],
                None,
                &format!("reaction:{}", location.channel),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_unknown_message() => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn typing(&self, link: &Link, hub_thread: Option<&str>) -> Result<(), SendError> {
        let channel = match hub_thread {
            Some(thread) => self
                .known_thread(link, thread)
                .await?
                .unwrap_or(link.discord_channel),
            None => link.discord_channel,
        };
        {
            let mut typing_at = self
                .typing_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if typing_at
                .get(&channel)
                .is_some_and(|at| now.duration_since(*at) < TYPING_REFRESH)
            {
                return Ok(());
            }
            typing_at.insert(channel, now);
        }
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
    }

    // ----- lookups -----

    /// Where a hub message's parts are: in the linked channel, or in one of its threads.
    async fn locate(&self, link: &Link, hub_id: &str) -> Result<Location, SendError> {
        let key = self.shared.keys().in_thread(hub_id, &link.home_chat());
        let thread = self
            .shared
            .hub
            .store()
            .one(Op::Get { key })
            .await
            .map_err(store_error)?
            .into_text()
            .and_then(|id| ids::parse(&id));
        let channel = thread.unwrap_or(link.discord_channel);
        Ok(Location {
            chat: link.chat(channel),
            channel,
            thread,
        })
    }

    async fn parts(&self, hub_id: &str, chat: &str) -> Result<Vec<String>, SendError> {
        self.map()
            .parts(crate::PLATFORM, hub_id, chat)
            .await
            .map_err(store_error)
    }

    /// The first Discord message showing a hub message, and where it is.
    async fn first_part(
        &self,
        link: &Link,
        hub_id: &str,
    ) -> Result<Option<(u64, Location)>, SendError> {
        let location = self.locate(link, hub_id).await?;
        let first = self
            .parts(hub_id, &location.chat)
            .await?
            .first()
            .and_then(|id| ids::parse(id));
        Ok(first.map(|id| (id, location)))
    }

    /// A message as Discord shows it; `None` when it is gone.
    async fn get_message(&self, channel: u64, message: u64) -> Result<Option<Value>, SendError> {
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
}

impl Deliver<Job> for DiscordDeliver {
    fn deliver<'a>(
        &'a self,
        destination: &'a str,
        job: &'a mut Job,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let result = self.run(destination, job).await;
            if result.is_ok() {
                self.shared
                    .hub
                    .metrics()
                    .count_relayed("discord", &job.event_type);
            }
            result
        })
    }

    fn agent(&self, job: &Job) -> Option<String> {
        job.agent_id.clone()
    }

    fn dead_letter<'a>(
        &'a self,
        destination: &'a str,
        job: Job,
        reason: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let letter = DeadLetter {
                destination: format!("discord:{destination}"),
                event_type: job.event_type.clone(),
                reason,
                agent_id: job.agent_id.clone(),
                channel_id: job.hub_channel.clone(),
                payload: job.summary(),
                at: now_millis(),
            };
            if let Err(error) = self.shared.hub.dead_letter("discord", letter).await {
                tracing::error!(%error, destination, "could not keep a dead letter");
            }
        })
    }
}

fn thread_param(thread: Option<u64>) -> Vec<(&'static str, String)> {
    thread
        .map(|thread| ("thread_id", thread.to_string()))
        .into_iter()
        .collect()
}

/// The id of the message (or channel) an answer describes.
fn message_id(answer: Option<&Value>) -> Result<u64, SendError> {
    answer
        .and_then(|value| value.get("id"))
        .and_then(Value::as_str)
        .and_then(ids::parse)
        .ok_or_else(|| SendError::Permanent("Discord's answer has no message id".to_owned()))
}

fn store_error(error: hub_bridge_sdk::StoreError) -> SendError {
    SendError::Transient(error.to_string())
}
