//! Discord -> hub (SPEC section 5): messages, replies, thread messages, edits, deletes,
//! reactions and typing in linked channels become hub channel events; a DM to the bot becomes an
//! `agent.direct_message`; after a gap the linked channels are caught up from the last seen id.
//!
//! One task processes the gateway's events in order and publishes each before taking the next;
//! while the store is unreachable it waits and retries, so nothing is lost (SPEC section 6). A
//! message is published through [`MessageMap::publish_once`], so the gateway and a catch-up fetch
//! that both see it publish it once.
//!
//! Ordering: serenity hands each event to its handler in a task of its own, so two events that
//! arrive together can reach the queue swapped. The processor undoes what matters: messages that
//! are queued together are handled in id (creation) order, and an edit, delete or reaction whose
//! message is not mapped yet is retried shortly, in case its message is just behind it.
//!
//! [`MessageMap::publish_once`]: hub_bridge_sdk::msgmap::MessageMap::publish_once

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hub_bridge_sdk::dm::{self, Private, PrivateChats};
use hub_bridge_sdk::event::{now_millis, ChannelEvent, ChannelMessage, ContentBlock, Thread};
use hub_bridge_sdk::guard::handle_event;
use hub_bridge_sdk::limits::{Action, Decision};
use hub_bridge_sdk::metrics::{label, labels2};
use hub_bridge_sdk::relay::{Chat, Connector, Link, Place, Relay, ThreadRef};
use hub_bridge_sdk::{ExternalId, Op, Reply, StoreError};
use serde_json::Value;
use serenity::http::{LightMethod, Route};
use serenity::model::channel::{Message, MessageType};
use serenity::model::user::User;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::connector::Discord;
use crate::format::{self, MentionNames};
use crate::gateway::GatewayEvent;
use crate::ids;
use crate::rest::RestError;
use crate::shared::{Cached, Shared};

/// How often an event whose message is not mapped yet is retried, and how far apart.
/// Times the event processor yields to serenity's other handler tasks before it sorts a batch.
const STRAGGLER_YIELDS: usize = 4;
const DEFER_ATTEMPTS: u32 = 10;
const DEFER_STEP: Duration = Duration::from_millis(100);
/// Messages fetched per catch-up request (Discord's maximum).
const PAGE: usize = 100;
/// At most this many pages per channel per catch-up; a longer gap is logged and cut short.
const MAX_PAGES: usize = 50;
const MAX_STORE_BACKOFF: Duration = Duration::from_secs(5);
/// At most this many channel lookups for one message's `<#id>` mentions (SPEC section 5,
/// bounded work); the rest render as `#channel`.
const MAX_LOOKUPS_PER_MESSAGE: usize = 5;

/// The newest message id handled per linked Discord channel.
pub type Cursors = Arc<Mutex<HashMap<u64, u64>>>;

/// The processor of gateway events.
pub struct Inbound {
    shared: Arc<Shared>,
    relay: Relay<Discord>,
    shutdown: CancellationToken,
    /// The newest message id handled per linked channel, as stored under `last_seen:{channel}`.
    /// Kept by the bridge across runs, so a store that lost its keys (a Redis restart without
    /// persistence) does not make the next run take a gap for a first start.
    last_seen: Cursors,
    retry_tx: mpsc::UnboundedSender<(u32, GatewayEvent)>,
    retry_rx: mpsc::UnboundedReceiver<(u32, GatewayEvent)>,
}

/// Where a Discord event happened, as far as the bridge is concerned.
enum Location {
    /// A linked channel (`thread` is the thread's id when it happened in one of its threads).
    Linked {
        links: Vec<Link>,
        thread: Option<u64>,
    },
    /// A DM with the bot.
    Direct,
    /// Anywhere else: not relayed.
    Elsewhere,
}

impl Inbound {
    pub fn new(
        shared: Arc<Shared>,
        relay: Relay<Discord>,
        shutdown: CancellationToken,
        last_seen: Cursors,
    ) -> Self {
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        Self {
            shared,
            relay,
            shutdown,
            last_seen,
            retry_tx,
            retry_rx,
        }
    }

    /// Processes events until `shutdown` or until the gateway side is gone.
    pub async fn run(mut self, mut events: mpsc::Receiver<GatewayEvent>) {
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                received = events.recv_many(&mut batch, 64) => {
                    if received == 0 {
                        return;
                    }
                    // Serenity runs each handler call in a task of its own, so events that
                    // arrived together can reach this queue out of order. Let the other handler
                    // tasks hand theirs over first (a few yields: microseconds, not a delay),
                    // then put the messages back in id order.
                    for _ in 0..STRAGGLER_YIELDS {
                        tokio::task::yield_now().await;
                        while let Ok(event) = events.try_recv() {
                            batch.push(event);
                        }
                    }
                    order(&mut batch);
                    for event in batch.drain(..) {
                        self.handle_safely(event, 0).await;
                    }
                }
                Some((attempt, event)) = self.retry_rx.recv() => self.handle_safely(event, attempt).await,
            }
        }
    }

    /// Handles one event; a panic in it is counted and logged, and the next event is handled
    /// (SPEC section 9: one event's failure never stops the bridge).
    async fn handle_safely(&mut self, event: GatewayEvent, attempt: u32) {
        let kind = event.kind();
        let hub = self.shared.hub.clone();
        handle_event(hub.metrics(), "discord", kind, self.handle(event, attempt)).await;
    }

    async fn handle(&mut self, event: GatewayEvent, attempt: u32) {
        match event {
            GatewayEvent::Ready { user_id, name } => {
                tracing::info!(bot = %name, "Discord session ready; catching up the linked channels");
                self.shared.set_bot_id(user_id);
                self.catch_up().await;
            }
            GatewayEvent::Resumed => tracing::debug!("Discord session resumed"),
            GatewayEvent::Message(message, received) => {
                self.message(*message, Some(received)).await;
            }
            GatewayEvent::Update(update) => self.update(update, attempt).await,
            GatewayEvent::Delete {
                channel_id,
                message_id,
                guild_id,
            } => self.delete(channel_id, message_id, guild_id, attempt).await,
            GatewayEvent::Reaction { reaction, added } => {
                self.reaction(reaction, added, attempt).await;
            }
            GatewayEvent::Typing(typing) => self.typing(&typing).await,
        }
    }

    /// Tries an event again shortly: its message may be right behind it in the queue.
    fn defer(&self, event: GatewayEvent, attempt: u32) -> bool {
        if attempt >= DEFER_ATTEMPTS {
            return false;
        }
        let retry = self.retry_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DEFER_STEP).await;
            let _ = retry.send((attempt + 1, event));
        });
        true
    }

    fn ignored(&self, reason: &'static str) {
        self.shared.hub.metrics().count_ignored("discord", reason);
    }

    fn published(&self, type_name: &str) {
        self.shared
            .hub
            .metrics()
            .count_published("discord", type_name);
    }

    /// Runs a store operation until it succeeds: while the store is unreachable or refuses
    /// writes (an error reply such as LOADING, READONLY, MISCONF or OOM is as passing as a lost
    /// connection), inbound events wait here, unacknowledged, and the cursor does not move
    /// (SPEC sections 6 and 9). `None` only when the run stops.
    async fn store<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Duration::from_millis(100);
        let mut logged = false;
        loop {
            match op().await {
                Ok(value) => return Some(value),
                Err(error) => {
                    self.shared
                        .hub
                        .metrics()
                        .retries
                        .get_or_create(&label("bridge", "discord"))
                        .inc();
                    if !logged {
                        let refused = matches!(error, StoreError::Command(_));
                        tracing::warn!(%error, what, refused, "store failed; Discord events wait and retry until it works");
                        logged = true;
                    }
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_STORE_BACKOFF);
        }
    }

    /// Where an event in `channel_id` happened; looks the channel up once when it is not linked
    /// (a thread of a linked channel?).
    async fn locate(&self, channel_id: u64, guild_id: Option<u64>) -> Location {
        let links = self.links_of(channel_id);
        if !links.is_empty() {
            return Location::Linked {
                links,
                thread: None,
            };
        }
        if guild_id.is_none() {
            return Location::Direct;
        }
        match self.shared.channel_info(channel_id).await {
            Ok(info) if info.is_thread => {
                let links = info
                    .parent_id
                    .map(|parent| self.links_of(parent))
                    .unwrap_or_default();
                if links.is_empty() {
                    Location::Elsewhere
                } else {
                    Location::Linked {
                        links,
                        thread: Some(channel_id),
                    }
                }
            }
            Ok(_) => Location::Elsewhere,
            Err(error) => {
                tracing::debug!(%error, channel_id, "unlinked channel could not be looked up; event ignored");
                Location::Elsewhere
            }
        }
    }

    /// The links of a Discord channel that still relay.
    fn links_of(&self, channel: u64) -> Vec<Link> {
        self.relay.links().of_chat(&Chat(channel.to_string()))
    }

    /// The chat under which the message map keeps, for `link`, a message in `discord_chat` (the
    /// linked channel, or one of its threads).
    fn map_chat(&self, link: &Link, discord_chat: u64) -> String {
        let discord_chat = discord_chat.to_string();
        let thread = (discord_chat != link.chat.0).then_some(ThreadRef(discord_chat));
        self.relay.map_chat(&Place {
            chat: link.chat.clone(),
            hub_channel: Some(link.hub_channel.clone()),
            thread,
        })
    }

    /// The map chat of the linked channel itself.
    fn home_chat(&self, link: &Link) -> String {
        self.relay.map_chat(&Place {
            chat: link.chat.clone(),
            hub_channel: Some(link.hub_channel.clone()),
            thread: None,
        })
    }

    /// The origin of everything published from a linked channel (SPEC section 5, no echo).
    fn origin(&self, link: &Link) -> String {
        self.relay.connector().origin(&link.chat)
    }

    // ----- messages -----

    /// A new message: live from the gateway (with when it arrived), or fetched by a catch-up.
    async fn message(&mut self, message: Message, received: Option<Instant>) {
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
            Location::Linked { links, thread } => {
                self.linked_message(&message, &links, thread, received)
                    .await;
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

    async fn linked_message(
        &mut self,
        message: &Message,
        links: &[Link],
        thread: Option<u64>,
        received: Option<Instant>,
    ) {
        let sender = ExternalId::new(crate::PLATFORM, message.author.id.to_string()).to_string();
        if received.is_some() && !self.allowed(Action::Message, &sender, message).await {
            return;
        }
        let content = self
            .render(&message.content, &message.mentions, message)
            .await;
        let blocks = blocks(message);
        if content.trim().is_empty() && blocks.is_none() {
            return self.ignored("empty_message");
        }
        let author_name = format::display_name(
            message.member.as_ref().and_then(|m| m.nick.as_deref()),
            message.author.global_name.as_deref(),
            &message.author.name,
        );
        let chat_id = message.channel_id.get();
        for link in links {
            let chat = self.map_chat(link, chat_id);
            let parent = match &message.message_reference {
                Some(reference) => match reference.message_id {
                    Some(parent) => {
                        let parent_chat = self.map_chat(link, reference.channel_id.get());
                        let parent = parent.to_string();
                        let map = &self.shared.map;
                        self.store("reply lookup", || {
                            map.hub_id(crate::PLATFORM, &parent_chat, &parent)
                        })
                        .await
                        .flatten()
                    }
                    None => None,
                },
                None => None,
            };
            let thread_ids = match thread {
                Some(thread) => match self.hub_thread(link, thread, &sender).await {
                    Some(ids) => Some(ids),
                    None => continue,
                },
                None => None,
            };
            let hub_id = uuid::Uuid::new_v4().to_string();
            let hub_message = ChannelMessage {
                id: hub_id.clone(),
                content: content.clone(),
                sender_id: sender.clone(),
                timestamp: message.timestamp.timestamp_millis(),
                thread_id: thread_ids.as_ref().map(|(id, _)| id.clone()),
                // In a thread, a message that replies to nothing in particular answers the
                // message the thread started on.
                parent_message_id: parent
                    .or_else(|| thread_ids.as_ref().and_then(|(_, starter)| starter.clone())),
                edited: None,
                reactions: None,
                author_type: Some("external".to_owned()),
                author_name: Some(author_name.clone()),
                external_platform: Some("discord".to_owned()),
                external_source_id: Some(format!("{chat_id}:{}", message.id)),
                content_blocks: blocks.clone(),
            };
            let event = match &thread_ids {
                Some((thread_id, _)) => ChannelEvent::ThreadMessage {
                    channel_id: link.hub_channel.clone(),
                    thread_id: thread_id.clone(),
                    message: hub_message,
                },
                None => ChannelEvent::Message {
                    channel_id: link.hub_channel.clone(),
                    message: hub_message,
                },
            };
            let origin = self.origin(link);
            let message_id = message.id.to_string();
            let map = &self.shared.map;
            let published = self
                .store("publish message", || {
                    map.publish_once(
                        crate::PLATFORM,
                        &chat,
                        &message_id,
                        &hub_id,
                        &event,
                        &origin,
                    )
                })
                .await;
            match published {
                Some(true) => {
                    self.published(event.type_name());
                    if let Some(received) = received {
                        self.shared
                            .hub
                            .metrics()
                            .relay_latency
                            .get_or_create(&labels2(
                                ("bridge", "discord"),
                                ("direction", "inbound"),
                            ))
                            .observe(received.elapsed().as_secs_f64());
                    }
                    if let Some(thread) = thread {
                        self.note_in_thread(link, &hub_id, thread).await;
                    }
                }
                Some(false) => self.ignored("duplicate"),
                None => {}
            }
        }
    }

    /// The hub thread a Discord thread of `link` maps to, and the hub message it started on;
    /// publishes `thread.create` the first time the thread is seen.
    async fn hub_thread(
        &self,
        link: &Link,
        thread: u64,
        created_by: &str,
    ) -> Option<(String, Option<String>)> {
        let known = self.known_hub_thread(link, thread).await?;
        // A thread started on a message has that message's id (Discord's convention).
        let home = self.home_chat(link);
        let map = &self.shared.map;
        let starter_id = thread.to_string();
        let starter = self
            .store("thread starter lookup", || {
                map.hub_id(crate::PLATFORM, &home, &starter_id)
            })
            .await
            .flatten();
        if let Some(hub_thread) = known {
            return Some((hub_thread, starter));
        }
        let hub_thread = uuid::Uuid::new_v4().to_string();
        let event = ChannelEvent::ThreadCreate {
            channel_id: link.hub_channel.clone(),
            thread: Thread {
                id: hub_thread.clone(),
                parent_message_id: starter.clone().unwrap_or_default(),
                created_by: created_by.to_owned(),
                created_at: now_millis(),
                reply_count: 0,
            },
        };
        let mut ops = self.relay.records().platform_thread_ops(
            &home,
            &hub_thread,
            &ThreadRef(thread.to_string()),
        );
        ops.push(self.shared.hub.publish_op(&event, &self.origin(link)));
        let store = self.shared.hub.store();
        self.store("thread create", || store.exec(ops.clone()))
            .await?;
        self.published(event.type_name());
        Some((hub_thread, starter))
    }

    /// Remembers that a hub message lives in a thread, so the hub's edits, deletes and reactions
    /// find it there.
    async fn note_in_thread(&self, link: &Link, hub_id: &str, thread: u64) {
        let op = self.relay.records().shown_in_op(
            hub_id,
            &self.home_chat(link),
            &ThreadRef(thread.to_string()),
        );
        let store = self.shared.hub.store();
        self.store("thread location", || store.one(op.clone()))
            .await;
    }

    /// The hub thread a Discord thread of `link` shows: the relay engine's record, else the key
    /// the previous release kept it under (`thread:dc:{mapChat}`).
    async fn known_hub_thread(&self, link: &Link, thread: u64) -> Option<Option<String>> {
        let home = self.home_chat(link);
        let thread_ref = ThreadRef(thread.to_string());
        let records = self.relay.records();
        let known = self
            .store("thread lookup", || records.hub_thread(&home, &thread_ref))
            .await?;
        if known.is_some() {
            return Some(known);
        }
        let legacy = self
            .shared
            .key(&format!("thread:dc:{}", self.map_chat(link, thread)));
        let store = self.shared.hub.store();
        self.store("thread lookup", || {
            store.one(Op::Get {
                key: legacy.clone(),
            })
        })
        .await
        .map(Reply::into_text)
    }

    /// Applies the inbound rate limit (SPEC section 4): over the limit the event is not
    /// published, and the person is told once per window, where they wrote.
    async fn allowed(&self, action: Action, sender: &str, message: &Message) -> bool {
        let limiter = self.shared.hub.limiter();
        // Counted once per message and action, also when a catch-up replays it after a crash.
        let event = format!("discord:message:{}:{}", message.id, action.as_str());
        let Some(decision) = self
            .store("rate limit", || limiter.check_once(action, sender, &event))
            .await
        else {
            return false;
        };
        let Decision::Rejected {
            limit,
            first_in_window,
        } = decision
        else {
            return true;
        };
        self.shared
            .hub
            .metrics()
            .rate_limit_rejections
            .get_or_create(&labels2(
                ("action", action.as_str()),
                ("direction", "inbound"),
            ))
            .inc();
        if first_in_window {
            let destination = if message.guild_id.is_none() {
                format!("dm:{}", message.author.id)
            } else {
                message.channel_id.to_string()
            };
            let text = format!(
                "<@{}> you are sending too fast: more than {limit} {}s a minute are not relayed \
                 to the hub. Please wait a moment.",
                message.author.id,
                action.as_str()
            );
            let mention = Some(message.author.id.to_string());
            self.relay
                .notice(&Chat(destination), text, "rate_limit.notice", mention)
                .await;
        }
        false
    }

    /// The content with mentions rendered as names.
    async fn render(&self, content: &str, mentions: &[User], message: &Message) -> String {
        let mut names = MentionNames {
            users: mentions
                .iter()
                .map(|user| {
                    let name = format::display_name(None, user.global_name.as_deref(), &user.name);
                    (user.id.get(), name)
                })
                .collect(),
            ..MentionNames::default()
        };
        names.channels = self.channel_names(content).await;
        let roles = match message.guild_id {
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
    async fn channel_names(&self, content: &str) -> HashMap<u64, String> {
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

    /// Stores the newest message id seen in a linked channel, where the next catch-up starts.
    async fn note_seen(&mut self, channel_id: u64, message_id: u64) {
        if self.links_of(channel_id).is_empty() {
            return;
        }
        {
            let mut last_seen = self
                .last_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last_seen
                .get(&channel_id)
                .is_some_and(|seen| *seen >= message_id)
            {
                return;
            }
            last_seen.insert(channel_id, message_id);
        }
        let op = Op::Set {
            key: self.shared.key(&format!("last_seen:{channel_id}")),
            value: message_id.to_string(),
            ttl: None,
            only_if_absent: false,
        };
        let store = self.shared.hub.store();
        self.store("last seen", || store.one(op.clone())).await;
    }

    // ----- direct messages -----

    /// A DM to the bot goes to an agent, as in the Telegram bridge: `/dm <agentId> text` picks
    /// the agent (remembered for later messages), else the one picked before, else
    /// `discord.dm_agent`. `/help` (or `/start`) and `/agents` answer in the DM.
    async fn direct_message(&self, message: &Message, live: bool) {
        let user = message.author.id.get();
        // Commands (`/dm`, `/agents`, ...) count against the person's message limit like any
        // message: decided once per Discord message, before anything is retried.
        let sender = ExternalId::new(crate::PLATFORM, user.to_string()).to_string();
        if live && !self.allowed(Action::Message, &sender, message).await {
            return;
        }
        self.shared.note_dm_channel(user, message.channel_id.get());
        let destination = format!("dm:{user}");
        let text = format::hub_text(message.content.trim(), blocks(message).as_deref());
        let private = PrivateChats::new(
            self.shared.hub.clone(),
            crate::PLATFORM,
            self.shared.dm_agent.clone(),
        );
        let user_id = user.to_string();
        let Some(request) = self
            .store("dm choice", || private.read(&user_id, &text))
            .await
        else {
            return;
        };
        match request {
            Private::Reply(answer) => {
                self.relay
                    .notice(&Chat(destination), answer, "discord.command", None)
                    .await;
            }
            Private::Send { agent, text } => self.to_agent(message, &agent, text).await,
        }
    }

    /// Publishes a person's DM as `agent.direct_message` on `pubsub:agent:{agent}`.
    async fn to_agent(&self, message: &Message, agent: &str, text: &str) {
        if text.trim().is_empty() {
            return self.ignored("empty_message");
        }
        let from = ExternalId::new(crate::PLATFORM, message.author.id.to_string());
        let event = dm::direct_message(&from, text, message.timestamp.timestamp_millis());
        let hub = &self.shared.hub;
        if self
            .store("direct message", || hub.publish_to_agent(agent, &event))
            .await
            .is_some()
        {
            self.published("agent.direct_message");
        }
    }

    // ----- edits, deletes, reactions, typing -----

    async fn update(
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

    async fn render_update(
        &self,
        content: &str,
        mentions: &[User],
        guild: Option<serenity::model::id::GuildId>,
    ) -> String {
        let mut names = MentionNames {
            users: mentions
                .iter()
                .map(|user| {
                    let name = format::display_name(None, user.global_name.as_deref(), &user.name);
                    (user.id.get(), name)
                })
                .collect(),
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

    async fn delete(&mut self, channel_id: u64, message_id: u64, guild: Option<u64>, attempt: u32) {
        if self.shared.deleted_by_us(message_id) {
            return self.ignored("own_message");
        }
        let Location::Linked { links, .. } = self.locate(channel_id, guild).await else {
            return self.ignored("unlinked_channel");
        };
        // A moderator deleting an agent's post removes only Discord's copy: the agent's hub
        // message stays (the bridge marks its own posts).
        let own_key = self.shared.key(&format!("own:{message_id}"));
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

    async fn reaction(
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
                    .get_or_create(&labels2(("action", "reaction"), ("direction", "inbound")))
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

    async fn typing(&mut self, typing: &serenity::model::event::TypingStartEvent) {
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

    async fn hub_id(&self, link: &Link, chat: u64, message_id: u64) -> Option<String> {
        let chat = self.map_chat(link, chat);
        let message_id = message_id.to_string();
        let map = &self.shared.map;
        self.store("message lookup", || {
            map.hub_id(crate::PLATFORM, &chat, &message_id)
        })
        .await
        .flatten()
    }

    async fn publish(&self, event: &ChannelEvent, link: &Link) {
        let hub = &self.shared.hub;
        let origin = self.origin(link);
        if self
            .store("publish", || hub.publish(event, &origin))
            .await
            .is_some()
        {
            self.published(event.type_name());
        }
    }

    // ----- catch-up -----

    /// Publishes what was posted in the linked channels since the last seen message (a gap: the
    /// service was down, or the gateway reconnected without resuming).
    async fn catch_up(&mut self) {
        let channels: Vec<u64> = self
            .relay
            .links()
            .active_chats()
            .iter()
            .filter_map(|chat| ids::parse(&chat.0))
            .collect();
        for channel in channels {
            if self.shutdown.is_cancelled() {
                return;
            }
            if let Err(error) = self.catch_up_channel(channel).await {
                tracing::warn!(%error, channel, "catch-up of a Discord channel failed; the next session start tries again");
            }
        }
    }

    async fn catch_up_channel(&mut self, channel: u64) -> Result<(), RestError> {
        let key = self.shared.key(&format!("last_seen:{channel}"));
        let store = self.shared.hub.store();
        let Some(reply) = self
            .store("last seen", || store.one(Op::Get { key: key.clone() }))
            .await
        else {
            return Ok(());
        };
        let guild = self
            .shared
            .channel_info(channel)
            .await
            .ok()
            .and_then(|i| i.guild_id);
        // Our own value, not an id from a message: `0` is the start of a channel that was empty
        // at the first start, and must stay a cursor (read as "no cursor", it skipped the
        // catch-up after a restart).
        let stored = reply.into_text().and_then(|text| text.parse::<u64>().ok());
        let remembered = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&channel)
            .copied();
        let Some(mut cursor) = stored.max(remembered) else {
            // The first start on this channel: what came before the bridge is history, not a
            // gap. Start from the newest message (or the beginning of an empty channel).
            let newest = self.fetch(channel, None, 1).await?;
            let start = newest.first().map_or(0, |m| m.id.get());
            let op = Op::Set {
                key,
                value: start.to_string(),
                ttl: None,
                only_if_absent: true,
            };
            self.store("last seen", || store.one(op.clone())).await;
            return Ok(());
        };
        let mut caught_up = 0;
        for _ in 0..MAX_PAGES {
            let mut page = self.fetch(channel, Some(cursor), PAGE).await?;
            page.sort_by_key(|message| message.id);
            let full = page.len() >= PAGE;
            for mut message in page {
                cursor = cursor.max(message.id.get());
                // REST messages leave the guild out; it decides DM vs guild.
                message.guild_id = message.guild_id.or(guild.map(Into::into));
                self.message(message, None).await;
                caught_up += 1;
            }
            if !full {
                if caught_up > 0 {
                    tracing::info!(channel, messages = caught_up, "caught up a Discord channel");
                }
                return Ok(());
            }
        }
        tracing::warn!(
            channel,
            messages = caught_up,
            "catch-up stopped after {MAX_PAGES} pages; older missed messages are skipped"
        );
        Ok(())
    }

    /// Messages of a channel after `after` (oldest `limit`), or the newest `limit`; retries
    /// rate limits and transient errors a few times.
    async fn fetch(
        &self,
        channel: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, RestError> {
        let mut params = vec![("limit", limit.to_string())];
        if let Some(after) = after {
            params.push(("after", after.to_string()));
        }
        let mut attempt = 0;
        let values: Vec<Value> = loop {
            let result = self
                .shared
                .rest
                .json(
                    LightMethod::Get,
                    Route::ChannelMessages {
                        channel_id: ids::channel(channel)?,
                    },
                    &params,
                    None,
                    &format!("get:messages:{channel}"),
                )
                .await;
            attempt += 1;
            let wait = match &result {
                Err(RestError::RateLimited { retry_after, .. }) => *retry_after,
                Err(RestError::Network(_)) => Duration::from_secs(attempt),
                Err(RestError::Status { status, .. }) if *status >= 500 => {
                    Duration::from_secs(attempt)
                }
                _ => break result?,
            };
            if attempt >= 5 {
                break result?;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(Vec::new()),
                () = tokio::time::sleep(wait) => {}
            }
        };
        Ok(values
            .into_iter()
            .filter_map(|value| {
                // Through a string: serde_json's `from_value` misreads some of serenity's types.
                match serde_json::from_str::<Message>(&value.to_string()) {
                    Ok(message) => Some(message),
                    Err(error) => {
                        tracing::debug!(%error, channel, "unreadable message in a catch-up page");
                        None
                    }
                }
            })
            .collect())
    }
}

/// Handles messages that arrived together in creation order (see the module doc); everything
/// else keeps its place relative to them.
fn order(batch: &mut Vec<GatewayEvent>) {
    let positions: Vec<usize> = batch
        .iter()
        .enumerate()
        .filter(|(_, event)| matches!(event, GatewayEvent::Message(..)))
        .map(|(index, _)| index)
        .collect();
    if positions.len() < 2 {
        return;
    }
    // Take the messages out (from the back, so the positions stay valid), sort them, and put
    // them back into the same slots (from the front, for the same reason).
    let mut messages: Vec<GatewayEvent> = positions
        .iter()
        .rev()
        .map(|index| batch.remove(*index))
        .collect();
    messages.reverse();
    messages.sort_by_key(|event| match event {
        GatewayEvent::Message(message, _) => message.id.get(),
        _ => 0,
    });
    for (index, event) in positions.into_iter().zip(messages) {
        batch.insert(index, event);
    }
}

/// Attachments and stickers as content blocks.
fn blocks(message: &Message) -> Option<Vec<ContentBlock>> {
    let mut blocks = format::content_blocks(&message.attachments).unwrap_or_default();
    for sticker in &message.sticker_items {
        blocks.push(ContentBlock {
            kind: "sticker".to_owned(),
            name: Some(sticker.name.clone()),
            size: None,
            mime_type: None,
            url: Some(format!(
                "https://media.discordapp.net/stickers/{}.png",
                sticker.id
            )),
        });
    }
    (!blocks.is_empty()).then_some(blocks)
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

    fn message(id: u64) -> GatewayEvent {
        let mut message = Message::default();
        message.id = id.into();
        GatewayEvent::Message(Box::new(message), Instant::now())
    }

    fn ids(batch: &[GatewayEvent]) -> Vec<u64> {
        batch
            .iter()
            .map(|event| match event {
                GatewayEvent::Message(message, _) => message.id.get(),
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn messages_queued_together_are_handled_in_creation_order() {
        let mut batch = vec![message(30), GatewayEvent::Resumed, message(10), message(20)];
        order(&mut batch);
        assert_eq!(ids(&batch), vec![10, 0, 20, 30]);
        let mut single = vec![GatewayEvent::Resumed, message(5)];
        order(&mut single);
        assert_eq!(ids(&single), vec![0, 5]);
    }

    #[test]
    fn channel_mentions_are_found() {
        assert_eq!(mentioned_channels("see <#12> and <#x> <#34>"), vec![12, 34]);
    }
}
