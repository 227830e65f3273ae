//! A fake Discord for end-to-end tests: the REST API under `/api/v10` and the gateway websocket at
//! `/ws`, on one loopback port, in the wire format serenity 0.12.5 parses, so the bridge runs
//! unmodified against it (`HttpBuilder::proxy(api_url).ratelimiter_disabled(true)`). It owns the
//! fake's state (channels, live messages, webhooks, gateway sessions), records every REST request,
//! injects failures (429s, any status, enforced buckets) and builds gateway dispatches from one
//! template per kind, each checked by `tests/fake_discord_selftest.rs` against serenity's own
//! `EventHandler`. Like Discord, it echoes the bot's own REST actions on the gateway, filters
//! dispatches by each session's intents, and replays what a session missed on RESUME. Attachments
//! (the CDN, multipart uploads, Discord's upload limits) are in [`media`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequest, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

mod media;

pub use media::{
    sha256_hex, Attachment, AttachmentFile, MediaCounts, StickerItem, UploadedFile,
    DEFAULT_URL_LIFETIME, MAX_FILES, MAX_FILE_BYTES,
};

/// Gateway intent bits (Discord's numbering) the fake filters dispatches with.
pub mod intents {
    pub const GUILDS: u64 = 1 << 0;
    pub const GUILD_MESSAGES: u64 = 1 << 9;
    pub const GUILD_MESSAGE_REACTIONS: u64 = 1 << 10;
    pub const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
    pub const DIRECT_MESSAGES: u64 = 1 << 12;
    pub const DIRECT_MESSAGE_REACTIONS: u64 = 1 << 13;
    pub const DIRECT_MESSAGE_TYPING: u64 = 1 << 14;
    pub const MESSAGE_CONTENT: u64 = 1 << 15;
}

/// Discord's content limit for a message, in characters.
pub const MAX_CONTENT_CHARS: usize = 2000;

/// How the fake is set up; `FakeDiscordConfig::new(token)` gives the defaults.
#[derive(Clone, Debug)]
pub struct FakeDiscordConfig {
    /// The token that REST requests (`Authorization: Bot {token}`) and IDENTIFY must carry.
    pub token: String,
    /// The bot user's id; the application id is the same, as it is on Discord.
    pub bot_id: u64,
    pub bot_name: String,
    /// The interval announced in HELLO. Serenity treats a heartbeat not acknowledged within one
    /// interval as a zombie connection and restarts the shard (a 5 s path), so the default of
    /// 2.5 s keeps heartbeats flowing in short tests without making a loaded machine flaky.
    pub heartbeat_interval: Duration,
}

impl FakeDiscordConfig {
    /// The defaults: bot id 900000000000000001 named `hub-bridge`, heartbeat every 2.5 s.
    pub fn new(token: &str) -> Self {
        Self {
            token: token.to_owned(),
            bot_id: 900_000_000_000_000_001,
            bot_name: "hub-bridge".to_owned(),
            heartbeat_interval: Duration::from_millis(2500),
        }
    }
}

/// A Discord user as the builders need it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserRef {
    pub id: u64,
    pub username: String,
    pub global_name: Option<String>,
    /// The guild nickname, sent in `member.nick` of guild events.
    pub nick: Option<String>,
    pub bot: bool,
}

impl UserRef {
    /// A human user with no display name or nickname.
    pub fn new(id: u64, username: &str) -> Self {
        let username = username.to_owned();
        Self {
            id,
            username,
            ..Self::default()
        }
    }

    /// Sets the global display name.
    pub fn global_name(mut self, name: &str) -> Self {
        self.global_name = Some(name.to_owned());
        self
    }

    /// Sets the guild nickname.
    pub fn nick(mut self, nick: &str) -> Self {
        self.nick = Some(nick.to_owned());
        self
    }

    /// Marks the user as a bot.
    pub fn bot(mut self) -> Self {
        self.bot = true;
        self
    }
}

/// A message "typed by a person", for the MESSAGE_CREATE builders.
#[derive(Clone, Debug)]
pub struct UserMessage {
    channel_id: u64,
    guild_id: Option<u64>,
    author: UserRef,
    content: String,
    reply_to: Option<u64>,
    attachments: Vec<AttachmentFile>,
    stickers: Vec<StickerItem>,
    mentions: Vec<UserRef>,
    webhook_id: Option<u64>,
}

impl UserMessage {
    /// A plain message. `guild_id` only matters when the channel is not known yet: the channel is
    /// then registered as a text channel of that guild, or as a DM channel with the author.
    pub fn new(channel_id: u64, guild_id: Option<u64>, author: UserRef, content: &str) -> Self {
        Self {
            channel_id,
            guild_id,
            author,
            content: content.to_owned(),
            reply_to: None,
            attachments: Vec::new(),
            stickers: Vec::new(),
            mentions: Vec::new(),
            webhook_id: None,
        }
    }

    /// Makes it a reply (type 19) to a message of the same channel.
    pub fn reply_to(mut self, message_id: u64) -> Self {
        self.reply_to = Some(message_id);
        self
    }

    /// Adds an attachment of `size` filler bytes, served by the fake's CDN like any other.
    pub fn attachment(mut self, filename: &str, content_type: &str, size: u32) -> Self {
        let filler = vec![b'x'; size as usize];
        let file = AttachmentFile::new(filename, content_type, filler);
        self.attachments.push(file);
        self
    }

    /// Adds an attachment with these bytes; the CDN serves them and `GET` of the message lists
    /// the attachment with fresh URLs.
    pub fn file(mut self, file: AttachmentFile) -> Self {
        self.attachments.push(file);
        self
    }

    /// Adds a sticker (`sticker_items`).
    pub fn sticker(mut self, sticker: StickerItem) -> Self {
        self.stickers.push(sticker);
        self
    }

    /// Adds a user mention (the `<@id>` text is up to the caller).
    pub fn mention(mut self, user: UserRef) -> Self {
        self.mentions.push(user);
        self
    }

    /// Makes it a message posted by webhook `webhook_id` under the author's username.
    pub fn webhook(mut self, webhook_id: u64) -> Self {
        self.webhook_id = Some(webhook_id);
        self
    }
}

/// One recorded REST request. `path` is percent-decoded and without the `/api/v10` prefix.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The JSON body (a multipart request's `payload_json`), or `Value::Null` when there was none.
    pub body: Value,
    /// A multipart request's files, in form order.
    pub files: Vec<UploadedFile>,
    /// When the request arrived.
    pub at: Instant,
    /// The status the fake answered with.
    pub status: u16,
}

impl Request {
    /// The value of a query parameter, if present.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A failure to inject with [`FakeDiscord::fail_next`].
#[derive(Clone, Debug)]
pub enum Failure {
    /// 429 with `Retry-After` and Discord's body `{"message","retry_after","global"}`.
    RateLimited { retry_after_secs: f64, global: bool },
    /// Any status with the given JSON body.
    Status(u16, Value),
    /// The request is carried out (a message is created), but the connection breaks before the
    /// answer arrives: the client cannot know whether it landed.
    AnswerLost,
}

/// What a channel shows for one live message (see [`FakeDiscord::messages_in`]).
#[derive(Clone, Debug)]
pub struct ChannelMessage {
    pub id: u64,
    pub author_id: u64,
    pub author_name: String,
    pub content: String,
    pub webhook_id: Option<u64>,
    pub reply_to: Option<u64>,
    pub edited: bool,
    /// Reactions the bot added, as the decoded route segment (`👍`, or `name:id` for custom).
    pub reactions: Vec<String>,
    /// The files the message carries now, with their digests.
    pub attachments: Vec<Attachment>,
    /// The full REST message object.
    pub raw: Value,
}

/// One IDENTIFY the gateway received.
#[derive(Clone, Debug)]
pub struct Identify {
    pub token_ok: bool,
    pub intents: u64,
    pub at: Instant,
}

/// A cheap-to-clone handle on a running fake; the server stops when the last handle is dropped
/// or on [`FakeDiscord::stop`].
#[derive(Clone)]
pub struct FakeDiscord {
    shared: Arc<Shared>,
    _guard: Arc<StopGuard>,
}

impl FakeDiscord {
    /// Starts a fake with the default configuration for `token`.
    pub async fn start(token: &str) -> Self {
        Self::start_with(FakeDiscordConfig::new(token)).await
    }

    /// Binds 127.0.0.1:0 and serves REST and the gateway on that port.
    pub async fn start_with(cfg: FakeDiscordConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let st = St {
            bot: UserRef::new(cfg.bot_id, &cfg.bot_name).bot(),
            token: cfg.token,
            port,
            heartbeat_ms: cfg.heartbeat_interval.as_millis() as u64,
            ..St::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(st),
            changed: watch::channel(0).0,
            shutdown: watch::channel(false).0,
        });
        let app = Router::new()
            .route("/ws", get(gateway_upgrade))
            .route("/attachments/{c}/{a}/{f}", get(media::cdn))
            .route("/stickers/{file}", get(media::sticker))
            .route("/proxy/attachments/{c}/{a}/{f}", get(media::cdn))
            .fallback(rest)
            .layer(DefaultBodyLimit::max(media::BODY_LIMIT))
            .with_state(Arc::clone(&shared));
        let stop = stopped(shared.shutdown.subscribe());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await;
        });
        let guard = Arc::new(StopGuard(Arc::clone(&shared)));
        Self {
            shared,
            _guard: guard,
        }
    }

    /// `http://127.0.0.1:PORT`, for `HttpBuilder::proxy`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.lock().port)
    }

    /// The gateway URL that `GET /gateway` returns (no query string: serenity appends `?v=10`).
    pub fn gateway_url(&self) -> String {
        self.shared.lock().gateway_url()
    }

    /// The bot user.
    pub fn bot(&self) -> UserRef {
        self.shared.lock().bot.clone()
    }

    /// Stops the server and closes every gateway socket with 1001.
    pub fn stop(&self) {
        self.shared.shutdown.send_replace(true);
    }

    // ----- setup -----

    /// Registers a guild text channel (type 0).
    pub fn add_text_channel(&self, channel_id: u64, guild_id: u64) {
        let kind = Kind::Text { guild: guild_id };
        self.shared.mutate(|st| st.add_channel(channel_id, kind));
    }

    /// Registers webhook `id` with `token`, posting into `channel_id`.
    pub fn add_webhook(&self, id: u64, token: &str, channel_id: u64) {
        let hook = Webhook {
            token: token.to_owned(),
            channel_id,
        };
        self.shared.mutate(|st| st.webhooks.insert(id, hook));
    }

    /// Makes a user known to DM channels and member objects (unknown ids are shown as
    /// `user{id}`).
    pub fn add_user(&self, user: UserRef) {
        self.shared.mutate(|st| st.users.insert(user.id, user));
    }

    /// Adds a role to a guild, as `GET /guilds/{id}/roles` lists it.
    pub fn add_role(&self, guild_id: u64, role_id: u64, name: &str) {
        self.shared.mutate(|st| {
            st.roles
                .entry(guild_id)
                .or_default()
                .push((role_id, name.to_owned()))
        });
    }

    /// The DM channel with `user`, created on first use as `POST /users/@me/channels` does.
    pub fn dm_channel(&self, user: &UserRef) -> u64 {
        self.shared.mutate(|st| {
            st.users.insert(user.id, user.clone());
            st.dm_channel_for(user.id)
        })
    }

    // ----- REST controls and recording -----

    /// Answers the next request matching `method` (`"*"` for any) and `path_prefix` with
    /// `failure` instead of handling it. Calls queue up; each is used once.
    pub fn fail_next(&self, method: &str, path_prefix: &str, failure: Failure) {
        let rule = (Matcher::new(method, path_prefix), failure);
        self.shared.mutate(|st| st.failures.push(rule));
    }

    /// Enforces `limit` requests per `per` on matching routes, counted per bucket and channel or
    /// webhook like Discord's major parameters; requests over it get a 429 with the real wait.
    pub fn enforce_bucket(&self, method: &str, path_prefix: &str, limit: u32, per: Duration) {
        let rule = (Matcher::new(method, path_prefix), limit, per);
        self.shared.mutate(|st| st.enforced.push(rule));
    }

    /// How many 429s the fake has answered (injected or enforced).
    pub fn rate_limited_count(&self) -> usize {
        self.shared.lock().rate_limited
    }

    /// Every REST request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The requests with `method` (`"*"` for any) whose path starts with `path_prefix` (with or
    /// without `/api/v10`).
    pub fn requests_matching(&self, method: &str, path_prefix: &str) -> Vec<Request> {
        Matcher::new(method, path_prefix).filter(&self.shared.lock().requests)
    }

    /// Waits until `count` requests match, then returns them; panics with every recorded request
    /// listed when `timeout` passes first.
    pub async fn wait_for(
        &self,
        method: &str,
        path_prefix: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Request> {
        let matcher = Matcher::new(method, path_prefix);
        let found = self.shared.wait_until(timeout, |st| {
            let hits = matcher.filter(&st.requests);
            (hits.len() >= count).then_some(hits)
        });
        if let Some(hits) = found.await {
            return hits;
        }
        let listing: Vec<String> = (self.requests().iter())
            .map(|r| format!("  {} {} -> {} {}", r.method, r.path, r.status, r.body))
            .collect();
        panic!(
            "fake discord: no {count} x {method} {} within {timeout:?}; requests:\n{}",
            matcher.prefix,
            listing.join("\n")
        )
    }

    /// The live messages of a channel, oldest first, as the channel shows them now.
    pub fn messages_in(&self, channel_id: u64) -> Vec<ChannelMessage> {
        let st = self.shared.lock();
        let log = st.messages.get(&channel_id);
        log.map(|log| log.iter().map(|m| m.view(&st.cdn)).collect())
            .unwrap_or_default()
    }

    // ----- gateway controls -----

    /// Sends a dispatch to every live session whose intents allow it; a session whose socket is
    /// down keeps it for RESUME. Returns how many sessions took it.
    pub fn dispatch(&self, event: &str, data: Value) -> usize {
        self.shared.mutate(|st| st.dispatch(event, &data))
    }

    /// Closes every gateway socket with `code` (4000: serenity resumes; 4004: authentication
    /// failed, serenity gives up). The sessions stay resumable.
    pub fn close_sessions(&self, code: u16) {
        self.shared.mutate(|st| {
            for conn in st.conns.values_mut() {
                let session = conn.session.take();
                if let Some(s) = session.and_then(|id| st.sessions.get_mut(&id)) {
                    s.conn = None;
                }
                let _ = conn.tx.send(Out::Close(code));
            }
        });
    }

    /// Sends op 7 RECONNECT on every socket that carries a session (serenity then resumes).
    pub fn send_reconnect(&self) {
        let frame = json!({"op": 7, "d": null}).to_string();
        self.shared.mutate(|st| {
            for conn in st.conns.values().filter(|c| c.session.is_some()) {
                let _ = conn.tx.send(Out::Frame(frame.clone()));
            }
        });
    }

    /// When false, RESUME is answered with op 9 (`d: false`) and the session is dropped, so the
    /// client has to IDENTIFY again.
    pub fn set_resume_ok(&self, ok: bool) {
        self.shared.mutate(|st| st.resume_refused = !ok);
    }

    /// When false, the bot's own REST actions are not echoed as dispatches.
    pub fn set_echo_own_actions(&self, echo: bool) {
        self.shared.mutate(|st| st.echo_off = !echo);
    }

    /// Every IDENTIFY so far.
    pub fn identifies(&self) -> Vec<Identify> {
        self.shared.lock().identifies.clone()
    }

    /// How many RESUMEs (op 6) arrived, accepted or not.
    pub fn resume_count(&self) -> usize {
        self.shared.lock().resumes
    }

    /// Sessions that currently have a socket attached.
    pub fn connected_sessions(&self) -> usize {
        self.shared.lock().connected_sessions()
    }

    /// Waits for `n` IDENTIFYs in total; panics after `timeout`.
    pub async fn wait_for_identify(&self, n: usize, timeout: Duration) {
        self.wait_count("IDENTIFY", n, timeout, |st| st.identifies.len())
            .await;
    }

    /// Waits for `n` RESUMEs in total; panics after `timeout`.
    pub async fn wait_for_resume(&self, n: usize, timeout: Duration) {
        self.wait_count("RESUME", n, timeout, |st| st.resumes).await;
    }

    /// Waits until `n` sessions have a socket attached; panics after `timeout`.
    pub async fn wait_for_connected(&self, n: usize, timeout: Duration) {
        self.wait_count("connected session", n, timeout, St::connected_sessions)
            .await;
    }

    async fn wait_count(&self, what: &str, n: usize, timeout: Duration, f: fn(&St) -> usize) {
        let reached = self
            .shared
            .wait_until(timeout, |st| (f(st) >= n).then_some(()));
        if reached.await.is_none() {
            let got = f(&self.shared.lock());
            panic!("fake discord: {n} x {what} not reached within {timeout:?} (got {got})");
        }
    }

    // ----- dispatch builders: one template per kind; only `post_user_message` dispatches -----

    /// Builds a MESSAGE_CREATE payload and appends the message to its channel's log, so catch-up
    /// through `GET /channels/{c}/messages` finds it. Does not dispatch.
    pub fn user_message(&self, msg: UserMessage) -> Value {
        self.shared.mutate(|st| st.user_message(msg))
    }

    /// [`Self::user_message`], then dispatches it as MESSAGE_CREATE.
    pub fn post_user_message(&self, msg: UserMessage) -> Value {
        let payload = self.user_message(msg);
        self.dispatch("MESSAGE_CREATE", payload.clone());
        payload
    }

    /// A message sent while the gateway was down: logged for catch-up, never dispatched. The
    /// same as [`Self::user_message`]; the name says why in a test.
    pub fn post_user_message_silently(&self, msg: UserMessage) -> Value {
        self.user_message(msg)
    }

    /// Edits a logged message and returns its MESSAGE_UPDATE payload (the full message, as
    /// Discord sends it). Panics if the message is unknown.
    pub fn message_update(&self, channel_id: u64, message_id: u64, content: &str) -> Value {
        let edit = json!({"content": content});
        self.shared.mutate(|st| {
            let raw = st
                .edit(channel_id, message_id, &edit)
                .expect("message_update: unknown message");
            st.gateway_message(raw)
        })
    }

    /// Removes a logged message and returns its MESSAGE_DELETE payload.
    pub fn message_delete(&self, channel_id: u64, message_id: u64) -> Value {
        self.shared.mutate(|st| st.delete(channel_id, message_id))
    }

    /// A MESSAGE_REACTION_ADD payload; `emoji` is a unicode emoji or `name:id`.
    pub fn reaction_add(&self, channel: u64, message: u64, user: &UserRef, emoji: &str) -> Value {
        self.shared
            .mutate(|st| st.reaction(channel, message, user, emoji, true))
    }

    /// A MESSAGE_REACTION_REMOVE payload (without member, as on Discord).
    pub fn reaction_remove(
        &self,
        channel: u64,
        message: u64,
        user: &UserRef,
        emoji: &str,
    ) -> Value {
        self.shared
            .mutate(|st| st.reaction(channel, message, user, emoji, false))
    }

    /// A TYPING_START payload.
    pub fn typing_start(&self, channel_id: u64, user: &UserRef) -> Value {
        self.shared.mutate(|st| st.typing(channel_id, user))
    }

    /// Registers a public thread (type 11) under `parent_id` and returns its THREAD_CREATE
    /// payload; started from a message, the thread's id is that message's id, as on Discord.
    /// THREAD_CREATE needs the GUILDS intent.
    pub fn thread_create(
        &self,
        parent_id: u64,
        name: &str,
        owner: &UserRef,
        from: Option<u64>,
    ) -> Value {
        self.shared.mutate(|st| {
            let id = from.unwrap_or_else(|| st.next_id());
            let guild = st
                .guild_of(parent_id)
                .expect("thread_create: parent is not in a guild");
            let name = name.to_owned();
            st.add_channel(
                id,
                Kind::Thread {
                    guild,
                    parent: parent_id,
                    name,
                    owner: owner.id,
                },
            );
            let mut thread = st.channel_json(id).expect("registered above");
            thread["newly_created"] = json!(true);
            thread
        })
    }
}

// ===================== state =====================

struct Shared {
    state: Mutex<St>,
    /// Bumped after every change, so waiters re-check their condition.
    changed: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
}

/// Dropped with the last [`FakeDiscord`] handle; the server's own tasks only hold `Shared`.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

impl Shared {
    /// A std mutex, never held across an await. A test builder that panics under it must not
    /// wedge the server for the rest of the test, hence the poison recovery.
    fn lock(&self) -> MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mutate<T>(&self, f: impl FnOnce(&mut St) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|v| *v += 1);
        out
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&St) -> Option<T>,
    ) -> Option<T> {
        // Subscribing before the first check means no change can slip in between.
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check(&self.lock()) {
                return Some(v);
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
    }
}

/// A method (`"*"` for any) and a path prefix, without `/api/v10`.
struct Matcher {
    method: String,
    prefix: String,
}

impl Matcher {
    fn new(method: &str, prefix: &str) -> Self {
        let prefix = prefix.strip_prefix("/api/v10").unwrap_or(prefix).to_owned();
        Self {
            method: method.to_owned(),
            prefix,
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method == method) && path.starts_with(&self.prefix)
    }

    fn filter(&self, requests: &[Request]) -> Vec<Request> {
        let hits = requests.iter().filter(|r| self.matches(&r.method, &r.path));
        hits.cloned().collect()
    }
}

#[derive(Default)]
struct St {
    bot: UserRef,
    token: String,
    port: u16,
    heartbeat_ms: u64,
    last_id: u64,
    channels: HashMap<u64, Kind>,
    /// Each channel's live messages, oldest first.
    messages: HashMap<u64, Vec<Stored>>,
    users: HashMap<u64, UserRef>,
    /// Each guild's roles: id and name.
    roles: HashMap<u64, Vec<(u64, String)>>,
    webhooks: HashMap<u64, Webhook>,
    requests: Vec<Request>,
    failures: Vec<(Matcher, Failure)>,
    enforced: Vec<(Matcher, u32, Duration)>,
    /// Rate-limit windows by (bucket template, major parameter): start and count.
    windows: HashMap<(String, String), (Instant, u32)>,
    rate_limited: usize,
    sessions: HashMap<String, Session>,
    conns: HashMap<u64, Conn>,
    last_conn: u64,
    identifies: Vec<Identify>,
    resumes: usize,
    cdn: media::Cdn,
    // Negative flags, so that `Default` gives Discord's behaviour.
    resume_refused: bool,
    echo_off: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    Text {
        guild: u64,
    },
    Thread {
        guild: u64,
        parent: u64,
        name: String,
        owner: u64,
    },
    Dm {
        recipient: u64,
    },
}

struct Stored {
    id: u64,
    /// The REST message object.
    raw: Value,
    reactions: Vec<String>,
}

impl Stored {
    fn view(&self, cdn: &media::Cdn) -> ChannelMessage {
        let id = |v: &Value| v.as_str().and_then(|s| s.parse().ok());
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        ChannelMessage {
            id: self.id,
            author_id: id(&self.raw["author"]["id"]).unwrap_or_default(),
            author_name: text(&self.raw["author"]["username"]),
            content: text(&self.raw["content"]),
            webhook_id: id(&self.raw["webhook_id"]),
            reply_to: id(&self.raw["message_reference"]["message_id"]),
            edited: !self.raw["edited_timestamp"].is_null(),
            reactions: self.reactions.clone(),
            attachments: cdn.view(&self.raw),
            raw: self.raw.clone(),
        }
    }
}

struct Webhook {
    token: String,
    channel_id: u64,
}

struct Session {
    intents: u64,
    seq: u64,
    /// Dispatches since READY as `(seq, frame)`, replayed on RESUME.
    log: Vec<(u64, String)>,
    conn: Option<u64>,
}

struct Conn {
    tx: mpsc::UnboundedSender<Out>,
    session: Option<String>,
}

enum Out {
    Frame(String),
    Close(u16),
}

impl St {
    /// Snowflakes: milliseconds since Discord's epoch in the top bits, strictly increasing.
    fn next_id(&mut self) -> u64 {
        let stamp = (unix_secs() * 1000.0) as u64 - 1_420_070_400_000;
        self.last_id = (stamp << 22).max(self.last_id + 1);
        self.last_id
    }

    fn gateway_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn connected_sessions(&self) -> usize {
        self.sessions.values().filter(|s| s.conn.is_some()).count()
    }

    fn add_channel(&mut self, id: u64, kind: Kind) {
        self.channels.insert(id, kind);
        self.messages.entry(id).or_default();
    }

    fn guild_of(&self, channel_id: u64) -> Option<u64> {
        match self.channels.get(&channel_id)? {
            Kind::Text { guild } | Kind::Thread { guild, .. } => Some(*guild),
            Kind::Dm { .. } => None,
        }
    }

    fn user(&self, id: u64) -> UserRef {
        let known = self.users.get(&id).cloned();
        known.unwrap_or_else(|| UserRef::new(id, &format!("user{id}")))
    }

    fn dm_channel_for(&mut self, user: u64) -> u64 {
        let existing = self.channels.iter().find_map(|(id, kind)| match kind {
            Kind::Dm { recipient } if *recipient == user => Some(*id),
            _ => None,
        });
        existing.unwrap_or_else(|| {
            let id = self.next_id();
            self.add_channel(id, Kind::Dm { recipient: user });
            id
        })
    }

    fn find(&self, channel_id: u64, message_id: u64) -> Option<&Stored> {
        let log = self.messages.get(&channel_id)?;
        log.iter().find(|m| m.id == message_id)
    }

    fn channel_json(&self, id: u64) -> Option<Value> {
        let log = self.messages.get(&id);
        let last = log.and_then(|l| l.last()).map(|m| m.id.to_string());
        let count = log.map_or(0, Vec::len);
        let created = rfc3339(SystemTime::now());
        Some(match self.channels.get(&id)? {
            Kind::Text { guild } => json!({
                "id": id.to_string(), "type": 0, "guild_id": guild.to_string(),
                "name": format!("channel-{id}"), "position": 0, "permission_overwrites": [],
                "parent_id": null, "topic": null, "nsfw": false, "last_message_id": last,
                "rate_limit_per_user": 0, "flags": 0,
            }),
            Kind::Thread {
                guild,
                parent,
                name,
                owner,
            } => json!({
                "id": id.to_string(), "type": 11, "guild_id": guild.to_string(),
                "parent_id": parent.to_string(), "owner_id": owner.to_string(), "name": name,
                "last_message_id": last, "message_count": count, "member_count": 1,
                "total_message_sent": count, "rate_limit_per_user": 0, "flags": 0,
                "thread_metadata": {
                    "archived": false, "auto_archive_duration": 1440, "locked": false,
                    "archive_timestamp": created, "create_timestamp": created,
                },
            }),
            Kind::Dm { recipient } => json!({
                "id": id.to_string(), "type": 1, "last_message_id": last, "flags": 0,
                "recipients": [user_json(&self.user(*recipient))],
            }),
        })
    }

    /// The one message template, in REST form (no `guild_id` or `member`: Discord's REST omits
    /// them), appended to the channel's log. `reply_to` makes it a reply (type 19).
    fn new_message(
        &mut self,
        channel: u64,
        author: Value,
        content: &str,
        reply_to: Option<u64>,
    ) -> Value {
        let id = self.next_id();
        let mut msg = json!({
            "id": id.to_string(), "channel_id": channel.to_string(), "author": author,
            "content": content, "timestamp": rfc3339(SystemTime::now()), "edited_timestamp": null,
            "tts": false, "mention_everyone": false, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "components": [], "pinned": false, "flags": 0,
            "type": if reply_to.is_some() { 19 } else { 0 },
        });
        if let Some(parent) = reply_to {
            msg["message_reference"] = json!({
                "type": 0, "message_id": parent.to_string(), "channel_id": channel.to_string(),
                "guild_id": self.guild_of(channel).map(|g| g.to_string()),
            });
            // Discord sends null when the parent is gone.
            let parent = self.find(channel, parent).map(|m| m.raw.clone());
            msg["referenced_message"] = parent.unwrap_or(Value::Null);
        }
        let stored = Stored {
            id,
            raw: msg.clone(),
            reactions: Vec::new(),
        };
        self.messages.entry(channel).or_default().push(stored);
        msg
    }

    /// Overwrites a logged message with `raw` (once a builder has filled in more fields).
    fn replace(&mut self, raw: &Value) {
        let (channel, id) = (id_field(&raw["channel_id"]), id_field(&raw["id"]));
        let log = self.messages.get_mut(&channel);
        if let Some(stored) = log.and_then(|log| log.iter_mut().find(|m| m.id == id)) {
            stored.raw = raw.clone();
        }
    }

    /// Applies an edit (`content`, `embeds`) and returns the REST object, or None if unknown.
    fn edit(&mut self, channel: u64, message: u64, edit: &Value) -> Option<Value> {
        let log = self.messages.get_mut(&channel)?;
        let stored = log.iter_mut().find(|m| m.id == message)?;
        for field in ["content", "embeds"] {
            if let Some(v) = edit.get(field).filter(|v| !v.is_null()) {
                stored.raw[field] = v.clone();
            }
        }
        stored.raw["edited_timestamp"] = json!(rfc3339(SystemTime::now()));
        Some(stored.raw.clone())
    }

    /// Removes a message from its channel and returns the MESSAGE_DELETE payload.
    fn delete(&mut self, channel: u64, message: u64) -> Value {
        if let Some(log) = self.messages.get_mut(&channel) {
            let gone = log.iter().filter(|m| m.id == message);
            gone.for_each(|m| self.cdn.drop_files_of(&m.raw));
            log.retain(|m| m.id != message);
        }
        let mut d = json!({"id": message.to_string(), "channel_id": channel.to_string()});
        if let Some(guild) = self.guild_of(channel) {
            d["guild_id"] = json!(guild.to_string());
        }
        d
    }

    /// The gateway form of a message: adds `guild_id`, and `member` for a person's message;
    /// attachment URLs are signed at dispatch time.
    fn gateway_message(&self, raw: Value) -> Value {
        let mut raw = self.fresh(raw);
        let Some(guild) = self.guild_of(id_field(&raw["channel_id"])) else {
            return raw;
        };
        raw["guild_id"] = json!(guild.to_string());
        if raw["webhook_id"].is_null() {
            raw["member"] = member_json(&self.user(id_field(&raw["author"]["id"])), false);
        }
        raw
    }

    fn user_message(&mut self, m: UserMessage) -> Value {
        if !self.channels.contains_key(&m.channel_id) {
            let kind = match m.guild_id {
                Some(guild) => Kind::Text { guild },
                None => Kind::Dm {
                    recipient: m.author.id,
                },
            };
            self.add_channel(m.channel_id, kind);
        }
        self.users.insert(m.author.id, m.author.clone());
        let author = match m.webhook_id {
            Some(w) => webhook_author(w, &m.author.username, None),
            None => user_json(&m.author),
        };
        let mut raw = self.new_message(m.channel_id, author, &m.content, m.reply_to);
        if let Some(w) = m.webhook_id {
            raw["webhook_id"] = json!(w.to_string());
        }
        let files: Vec<Value> = (m.attachments.into_iter())
            .map(|file| self.store_person_file(m.channel_id, file))
            .collect();
        raw["attachments"] = json!(files);
        if !m.stickers.is_empty() {
            let stickers = m.stickers.iter().map(
                |s| json!({"id": s.id.to_string(), "name": s.name, "format_type": s.format_type}),
            );
            raw["sticker_items"] = stickers.collect();
        }
        raw["mentions"] = m.mentions.iter().map(user_json).collect();
        self.replace(&raw);
        self.gateway_message(raw)
    }

    fn reaction(
        &self,
        channel: u64,
        message: u64,
        user: &UserRef,
        emoji: &str,
        add: bool,
    ) -> Value {
        let emoji = match emoji.rsplit_once(':') {
            Some((name, id)) if id.parse::<u64>().is_ok() => json!({"id": id, "name": name}),
            _ => json!({"id": null, "name": emoji}),
        };
        let mut d = json!({
            "user_id": user.id.to_string(), "channel_id": channel.to_string(),
            "message_id": message.to_string(), "emoji": emoji, "burst": false, "type": 0,
        });
        let guild = self.guild_of(channel);
        if let Some(guild) = guild {
            d["guild_id"] = json!(guild.to_string());
        }
        // Only the add event carries the member, the message's author and burst colours.
        if add {
            d["burst_colors"] = json!([]);
            if let Some(m) = self.find(channel, message) {
                d["message_author_id"] = m.raw["author"]["id"].clone();
            }
            if guild.is_some() {
                d["member"] = member_json(user, true);
            }
        }
        d
    }

    fn typing(&self, channel: u64, user: &UserRef) -> Value {
        let mut d = json!({
            "channel_id": channel.to_string(), "user_id": user.id.to_string(),
            "timestamp": unix_secs() as u64,
        });
        if let Some(guild) = self.guild_of(channel) {
            d["guild_id"] = json!(guild.to_string());
            d["member"] = member_json(user, true);
        }
        d
    }

    /// Queues a dispatch on every live session whose intents allow it.
    fn dispatch(&mut self, event: &str, data: &Value) -> usize {
        let needed = required_intent(event, data);
        let mut reached = 0;
        for session in self.sessions.values_mut() {
            if needed.is_some_and(|bit| session.intents & bit == 0) {
                continue;
            }
            let d = strip_content(event, data, session.intents, self.bot.id);
            session.seq += 1;
            let frame = json!({"op": 0, "s": session.seq, "t": event, "d": d}).to_string();
            session.log.push((session.seq, frame.clone()));
            if let Some(conn) = session.conn.and_then(|c| self.conns.get(&c)) {
                let _ = conn.tx.send(Out::Frame(frame));
            }
            reached += 1;
        }
        reached
    }

    /// Discord dispatches the bot's own actions to its sessions too.
    fn echo(&mut self, event: &str, data: &Value) {
        if !self.echo_off {
            self.dispatch(event, data);
        }
    }
}

// ===================== REST =====================

/// A REST request as the routes see it.
struct Incoming {
    method: String,
    segs: Vec<String>,
    path: String,
    query: Vec<(String, String)>,
    body: Value,
    /// A multipart request's files.
    files: Vec<media::FilePart>,
}

impl Incoming {
    fn param(&self, name: &str) -> Option<u64> {
        let value = self.query.iter().find(|(k, _)| k == name)?;
        value.1.parse().ok()
    }
}

/// A response before it becomes HTTP: status, JSON body (none for 204), extra headers.
struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    /// The connection breaks instead of carrying this answer.
    lost: bool,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
            lost: false,
        }
    }

    fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            headers: Vec::new(),
            lost: false,
        }
    }

    fn error(status: u16, code: u32, message: &str) -> Self {
        Self::json(status, json!({"message": message, "code": code}))
    }

    fn not_found() -> Self {
        Self::error(404, 0, "404: Not Found")
    }

    fn unknown_channel() -> Self {
        Self::error(404, 10003, "Unknown Channel")
    }

    fn unknown_message() -> Self {
        Self::error(404, 10008, "Unknown Message")
    }

    /// Discord's answer to a file over the upload limit.
    fn entity_too_large() -> Self {
        Self::error(413, 40005, "Request entity too large")
    }

    fn empty_message() -> Self {
        Self::error(400, 50006, "Cannot send an empty message")
    }

    /// Discord's 400 for a field that failed validation.
    fn form_error(field: &str, code: &str, message: &str) -> Self {
        let errors = json!({ field: {"_errors": [{"code": code, "message": message}]} });
        let body = json!({"message": "Invalid Form Body", "code": 50035, "errors": errors});
        Self::json(400, body)
    }

    fn too_long(content: &str) -> Option<Self> {
        let message = "Must be 2000 or fewer in length.";
        let too_long = content.chars().count() > MAX_CONTENT_CHARS;
        too_long.then(|| Self::form_error("content", "BASE_TYPE_MAX_LENGTH", message))
    }

    /// Discord's 429: `Retry-After` in whole seconds, the exact wait in the body.
    fn rate_limited(retry_after: f64, global: bool) -> Self {
        let message = "You are being rate limited.";
        let body = json!({"message": message, "retry_after": retry_after, "global": global});
        let mut reply = Self::json(429, body);
        let scope = if global { "global" } else { "user" };
        reply
            .headers
            .push(("retry-after", (retry_after.ceil() as u64).to_string()));
        reply.headers.push(("x-ratelimit-scope", scope.to_owned()));
        if global {
            reply
                .headers
                .push(("x-ratelimit-global", "true".to_owned()));
        }
        reply
    }
}

async fn rest(State(sh): State<Arc<Shared>>, request: HttpRequest) -> Response {
    let at = Instant::now();
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let headers = request.headers().clone();
    let Some(route) = uri.path().strip_prefix("/api/v10") else {
        return (StatusCode::NOT_FOUND, "not a Discord API path").into_response();
    };
    let segs: Vec<String> = route.split('/').skip(1).map(percent_decode).collect();
    // Serenity writes queries as `?&wait=true`, hence the empty pairs to skip.
    let pairs = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty());
    let query = pairs
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)));
    let read = read_body(request, &headers).await;
    let (body, files, unreadable) = match read {
        Ok((body, files)) => (body, files, None),
        Err(reply) => (Value::Null, Vec::new(), Some(reply)),
    };
    let req = Incoming {
        method: method.to_string(),
        path: format!("/{}", segs.join("/")),
        segs,
        query: query.collect(),
        body,
        files,
    };
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());

    let reply = sh.mutate(|st| {
        let auth_ok = authorization == Some(format!("Bot {}", st.token).as_str());
        let reply = match unreadable {
            Some(reply) => reply,
            None => st.handle(&req, auth_ok),
        };
        st.rate_limited += usize::from(reply.status == 429);
        let Incoming {
            method,
            path,
            query,
            body,
            files,
            ..
        } = req;
        let status = reply.status;
        st.requests.push(Request {
            method,
            path,
            query,
            body,
            files: files.iter().map(media::FilePart::record).collect(),
            at,
            status,
        });
        reply
    });

    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if reply.lost {
        // A body that fails mid-way: the server aborts the connection after the status line.
        let broken = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection reset"))
        });
        return (status, axum::body::Body::from_stream(broken)).into_response();
    }
    let mut response = match reply.body {
        Some(body) => (status, axum::Json(body)).into_response(),
        None => status.into_response(),
    };
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// The request's JSON body (`Value::Null` when empty), or a multipart form's `payload_json` and
/// files; Discord's 400 for a body it cannot read, 413 for one over the size limit.
async fn read_body(
    request: HttpRequest,
    headers: &HeaderMap,
) -> Result<(Value, Vec<media::FilePart>), Reply> {
    if media::is_multipart(headers) {
        return media::read_multipart(request).await;
    }
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Reply::entity_too_large()
            } else {
                Reply::error(400, 0, "400: Bad Request")
            }
        })?;
    if body.is_empty() {
        return Ok((Value::Null, Vec::new()));
    }
    match serde_json::from_slice(&body) {
        Ok(json) => Ok((json, Vec::new())),
        Err(_) => Err(Reply::error(
            400,
            50109,
            "The request body contains invalid JSON.",
        )),
    }
}

impl St {
    /// Authentication, injected failures and buckets, then the route; every answer gets
    /// rate-limit headers.
    fn handle(&mut self, req: &Incoming, auth_ok: bool) -> Reply {
        // Webhook routes authenticate with the token in their path, as on Discord.
        let webhook = req.segs.first().is_some_and(|s| s == "webhooks");
        if !auth_ok && !webhook {
            return Reply::error(401, 0, "401: Unauthorized");
        }
        let injected = self
            .failures
            .iter()
            .position(|(m, _)| m.matches(&req.method, &req.path));
        if let Some(i) = injected {
            return match self.failures.remove(i).1 {
                Failure::RateLimited {
                    retry_after_secs,
                    global,
                } => Reply::rate_limited(retry_after_secs, global),
                Failure::Status(status, body) => Reply::json(status, body),
                Failure::AnswerLost => Reply {
                    lost: true,
                    ..self.route(req)
                },
            };
        }
        let (template, major, (mut limit, mut per)) = bucket(&req.method, &req.segs);
        let enforced = self
            .enforced
            .iter()
            .find(|(m, ..)| m.matches(&req.method, &req.path));
        if let Some((_, l, p)) = enforced {
            (limit, per) = (*l, *p);
        }
        let now = Instant::now();
        let (start, count) = self
            .windows
            .entry((template.clone(), major))
            .or_insert((now, 0));
        if now >= *start + per {
            (*start, *count) = (now, 0);
        }
        let reset_after = (*start + per).saturating_duration_since(now).as_secs_f64();
        // As on Discord, a request answered with 429 does not use up the bucket.
        let limited = enforced.is_some() && *count >= limit;
        *count += u32::from(!limited);
        let remaining = limit.saturating_sub(*count);
        let mut reply = if limited {
            Reply::rate_limited((reset_after * 1000.0).ceil() / 1000.0, false)
        } else {
            self.route(req)
        };
        reply.headers.extend([
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            (
                "x-ratelimit-reset",
                format!("{:.3}", unix_secs() + reset_after),
            ),
            ("x-ratelimit-reset-after", format!("{reset_after:.3}")),
            ("x-ratelimit-bucket", format!("{:016x}", fnv1a(&template))),
        ]);
        reply
    }

    fn route(&mut self, req: &Incoming) -> Reply {
        let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
        let id = |s: &str| s.parse::<u64>().ok();
        match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["gateway"]) => Reply::json(200, json!({"url": self.gateway_url()})),
            ("GET", ["gateway", "bot"]) => Reply::json(
                200,
                json!({
                    "url": self.gateway_url(), "shards": 1,
                    "session_start_limit": {
                        "total": 1000, "remaining": 999, "reset_after": 14_400_000,
                        "max_concurrency": 1,
                    },
                }),
            ),
            ("GET", ["guilds", guild, "roles"]) => {
                let roles = id(guild)
                    .and_then(|guild| self.roles.get(&guild))
                    .map(|roles| {
                        roles
                            .iter()
                            .enumerate()
                            .map(|(position, (role, name))| {
                                json!({
                                    "id": role.to_string(), "name": name, "color": 0,
                                    "hoist": false, "position": position, "permissions": "0",
                                    "managed": false, "mentionable": true, "flags": 0,
                                })
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                Reply::json(200, Value::Array(roles))
            }
            ("GET", ["users", "@me"]) => {
                let mut me = user_json(&self.bot);
                me["verified"] = json!(true);
                me["mfa_enabled"] = json!(false);
                me["flags"] = json!(0);
                Reply::json(200, me)
            }
            ("POST", ["users", "@me", "channels"]) => {
                let recipient = &req.body["recipient_id"];
                let Some(user) = recipient.as_str().and_then(id).or(recipient.as_u64()) else {
                    let message = "This field is required";
                    return Reply::form_error("recipient_id", "BASE_TYPE_REQUIRED", message);
                };
                let channel = self.dm_channel_for(user);
                Reply::json(200, self.channel_json(channel).unwrap_or_default())
            }
            ("POST", ["attachments", "refresh-urls"]) => self.refresh_urls(req),
            (method, ["channels", c, rest @ ..]) => {
                match id(c).filter(|c| self.channels.contains_key(c)) {
                    None => Reply::unknown_channel(),
                    Some(c) if rest.is_empty() && method == "GET" => {
                        Reply::json(200, self.channel_json(c).unwrap_or_default())
                    }
                    Some(c) => self.channel_route(req, c, rest),
                }
            }
            (method, ["webhooks", w, token, rest @ ..]) => {
                let Some(w) = id(w) else {
                    return Reply::not_found();
                };
                let channel = match self.webhooks.get(&w) {
                    None => return Reply::error(404, 10015, "Unknown Webhook"),
                    Some(hook) if hook.token != *token => {
                        return Reply::error(401, 50027, "Invalid Webhook Token");
                    }
                    Some(hook) => hook.channel_id,
                };
                // `thread_id` sends into (or addresses messages of) a thread of that channel.
                let channel = match req.param("thread_id") {
                    None => channel,
                    Some(t) => match self.channels.get(&t) {
                        Some(Kind::Thread { parent, .. }) if *parent == channel => t,
                        _ => return Reply::unknown_channel(),
                    },
                };
                match (method, rest) {
                    ("POST", []) => self.execute_webhook(req, w, channel),
                    (_, ["messages", m]) => {
                        let hook = json!(w.to_string());
                        let ours = id(m).filter(|m| {
                            self.find(channel, *m)
                                .is_some_and(|s| s.raw["webhook_id"] == hook)
                        });
                        match ours {
                            Some(m) => self.message_route(req, channel, m),
                            None => Reply::unknown_message(),
                        }
                    }
                    _ => Reply::not_found(),
                }
            }
            _ => Reply::not_found(),
        }
    }

    fn channel_route(&mut self, req: &Incoming, c: u64, rest: &[&str]) -> Reply {
        let method = req.method.as_str();
        let known = |st: &Self, m: &str| m.parse().ok().filter(|m| st.find(c, *m).is_some());
        match (method, rest) {
            ("POST", ["typing"]) => {
                // Discord sends TYPING_START for the bot's own typing too.
                let typing = self.typing(c, &self.bot);
                self.echo("TYPING_START", &typing);
                Reply::no_content()
            }
            ("GET", ["messages"]) => {
                let limit = req.param("limit").unwrap_or(50) as usize;
                if !(1..=100).contains(&limit) {
                    let message = "int value should be <= 100 and >= 1.";
                    return Reply::form_error("limit", "NUMBER_TYPE_MAX", message);
                }
                let log = self.messages.get(&c).map(Vec::as_slice).unwrap_or_default();
                // Discord answers newest first in every direction: `after` takes the oldest
                // `limit` messages after the id, `before` (or nothing) the newest `limit`.
                let mut picked: Vec<&Stored> = match (req.param("after"), req.param("before")) {
                    (Some(after), _) => log.iter().filter(|m| m.id > after).take(limit).collect(),
                    (None, before) => {
                        let older = log.iter().filter(|m| before.is_none_or(|b| m.id < b));
                        let mut newest: Vec<&Stored> = older.rev().take(limit).collect();
                        newest.reverse();
                        newest
                    }
                };
                picked.reverse();
                let fresh = picked.iter().map(|m| self.fresh(m.raw.clone()));
                Reply::json(200, fresh.collect())
            }
            ("POST", ["messages"]) => self.create_message(req, c),
            (_, ["messages", m]) => match known(self, m) {
                None => Reply::unknown_message(),
                Some(m) => {
                    let author = &self.find(c, m).expect("known").raw["author"]["id"];
                    if method == "PATCH" && *author != json!(self.bot.id.to_string()) {
                        let message = "Cannot edit a message authored by another user";
                        return Reply::error(403, 50005, message);
                    }
                    self.message_route(req, c, m)
                }
            },
            ("PUT" | "DELETE", ["messages", m, "reactions", emoji, "@me"]) => {
                let Some(m) = known(self, m) else {
                    return Reply::unknown_message();
                };
                let add = method == "PUT";
                let stored = self
                    .messages
                    .get_mut(&c)
                    .into_iter()
                    .flatten()
                    .find(|s| s.id == m);
                let reactions = &mut stored.expect("known").reactions;
                let had = reactions.iter().any(|r| r == emoji);
                reactions.retain(|r| r != emoji);
                if add {
                    reactions.push((*emoji).to_owned());
                }
                if had != add {
                    let event = self.reaction(c, m, &self.bot, emoji, add);
                    let name = if add {
                        "MESSAGE_REACTION_ADD"
                    } else {
                        "MESSAGE_REACTION_REMOVE"
                    };
                    self.echo(name, &event);
                }
                Reply::no_content()
            }
            ("POST", ["messages", m, "threads"]) => {
                let Some(m) = known(self, m) else {
                    return Reply::unknown_message();
                };
                let Some(Kind::Text { guild }) = self.channels.get(&c).cloned() else {
                    return Reply::error(400, 50024, "Cannot execute action on this channel type");
                };
                if self.channels.contains_key(&m) {
                    let message = "A thread has already been created for this message";
                    return Reply::error(400, 160004, message);
                }
                // A thread started from a message takes the message's id.
                let name = req.body["name"].as_str().unwrap_or("thread").to_owned();
                let owner = self.bot.id;
                self.add_channel(
                    m,
                    Kind::Thread {
                        guild,
                        parent: c,
                        name,
                        owner,
                    },
                );
                Reply::json(201, self.channel_json(m).unwrap_or_default())
            }
            _ => Reply::not_found(),
        }
    }

    fn create_message(&mut self, req: &Incoming, c: u64) -> Reply {
        let content = req.body["content"].as_str().unwrap_or_default();
        let embeds = req.body["embeds"].as_array().filter(|e| !e.is_empty());
        if let Some(reply) = Reply::too_long(content).or_else(|| self.check_uploads(req, 0)) {
            return reply;
        }
        if content.is_empty() && embeds.is_none() && req.files.is_empty() {
            return Reply::empty_message();
        }
        let reference = &req.body["message_reference"];
        let mut parent = reference["message_id"]
            .as_str()
            .and_then(|s| s.parse().ok());
        if parent.is_some_and(|p| self.find(c, p).is_none()) {
            if reference["fail_if_not_exists"] != json!(false) {
                let message = "Unknown message";
                return Reply::form_error("message_reference", "REPLIES_UNKNOWN_MESSAGE", message);
            }
            parent = None;
        }
        // `enforce_nonce`: a message the bot already created with this nonce is answered again
        // instead of being created twice (Discord keeps nonces for a few minutes).
        let nonce = req.body["nonce"].as_str().map(str::to_owned);
        if let Some(nonce) = nonce
            .as_deref()
            .filter(|_| req.body["enforce_nonce"] == true)
        {
            let bot = self.bot.id.to_string();
            let earlier = self.messages.get(&c).and_then(|log| {
                log.iter()
                    .find(|m| m.raw["nonce"] == nonce && m.raw["author"]["id"] == bot)
            });
            if let Some(earlier) = earlier {
                return Reply::json(200, self.fresh(earlier.raw.clone()));
            }
        }
        let mut raw = self.new_message(c, user_json(&self.bot), content, parent);
        if let Some(embeds) = embeds {
            raw["embeds"] = json!(embeds);
        }
        raw["attachments"] = json!(self.store_uploads(c, req));
        if let Some(nonce) = nonce {
            raw["nonce"] = json!(nonce);
        }
        self.replace(&raw);
        self.echo("MESSAGE_CREATE", &self.gateway_message(raw.clone()));
        Reply::json(200, raw)
    }

    fn execute_webhook(&mut self, req: &Incoming, w: u64, channel: u64) -> Reply {
        let content = req.body["content"].as_str().unwrap_or_default();
        let embeds = req.body["embeds"].as_array().filter(|e| !e.is_empty());
        if let Some(reply) = Reply::too_long(content).or_else(|| self.check_uploads(req, 0)) {
            return reply;
        }
        if content.is_empty() && embeds.is_none() && req.files.is_empty() {
            return Reply::empty_message();
        }
        let name = req.body["username"].as_str().unwrap_or("Webhook");
        let author = webhook_author(w, name, req.body["avatar_url"].as_str());
        let mut raw = self.new_message(channel, author, content, None);
        raw["webhook_id"] = json!(w.to_string());
        if let Some(embeds) = embeds {
            raw["embeds"] = json!(embeds);
        }
        raw["attachments"] = json!(self.store_uploads(channel, req));
        self.replace(&raw);
        self.echo("MESSAGE_CREATE", &self.gateway_message(raw.clone()));
        // Without `wait=true` Discord answers 204 and no message.
        if req.query.iter().any(|(k, v)| k == "wait" && v == "true") {
            Reply::json(200, raw)
        } else {
            Reply::no_content()
        }
    }

    /// GET, PATCH or DELETE of one message known to exist.
    fn message_route(&mut self, req: &Incoming, c: u64, m: u64) -> Reply {
        match req.method.as_str() {
            "GET" => {
                self.cdn.counts.message_fetches += 1;
                let raw = self.find(c, m).map(|s| s.raw.clone()).unwrap_or_default();
                Reply::json(200, self.fresh(raw))
            }
            "DELETE" => {
                let event = self.delete(c, m);
                self.echo("MESSAGE_DELETE", &event);
                Reply::no_content()
            }
            "PATCH" => {
                let content = req.body["content"].as_str().unwrap_or_default();
                let kept = self.kept_by_edit(c, m, req);
                if let Some(reply) =
                    Reply::too_long(content).or_else(|| self.check_uploads(req, kept))
                {
                    return reply;
                }
                self.edit_attachments(c, m, req);
                let Some(raw) = self.edit(c, m, &req.body) else {
                    return Reply::unknown_message();
                };
                self.echo("MESSAGE_UPDATE", &self.gateway_message(raw.clone()));
                Reply::json(200, self.fresh(raw))
            }
            _ => Reply::not_found(),
        }
    }
}

/// A route's bucket: its template (ids replaced), its major parameter (channel or webhook) and
/// a default (limit, window) like Discord's usual ones.
fn bucket(method: &str, segs: &[String]) -> (String, String, (u32, Duration)) {
    let major = match segs {
        [kind, id, ..] if kind == "channels" => id.clone(),
        [kind, id, token, ..] if kind == "webhooks" => format!("{id}/{token}"),
        _ => String::new(),
    };
    let template: Vec<&str> = (segs.iter().enumerate())
        .map(|(i, s)| match s.as_str() {
            _ if s.parse::<u64>().is_ok() => "{id}",
            _ if i == 2 && segs[0] == "webhooks" => "{token}",
            _ if i == 5 && segs[4] == "reactions" => "{emoji}",
            s => s,
        })
        .collect();
    let template = format!("{method} /{}", template.join("/"));
    let default = match (method, segs.first().map(String::as_str)) {
        _ if template.contains("/reactions/") => (1, Duration::from_millis(250)),
        ("POST", Some("webhooks")) => (5, Duration::from_secs(2)),
        ("POST" | "PATCH" | "DELETE", _) => (5, Duration::from_secs(5)),
        _ => (50, Duration::from_secs(1)),
    };
    (template, major, default)
}

// ===================== gateway =====================

async fn gateway_upgrade(State(sh): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| gateway_connection(sh, socket))
}

/// One gateway socket: HELLO, then every outgoing frame goes through the connection's queue, so
/// READY, replays and dispatches leave in the order the state decided them.
async fn gateway_connection(sh: Arc<Shared>, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (conn, heartbeat_ms) = sh.mutate(|st| {
        st.last_conn += 1;
        st.conns.insert(st.last_conn, Conn { tx, session: None });
        (st.last_conn, st.heartbeat_ms)
    });
    let stop = stopped(sh.shutdown.subscribe());
    tokio::pin!(stop);
    let hello = json!({"op": 10, "d": {"heartbeat_interval": heartbeat_ms}}).to_string();
    let mut alive = socket.send(WsMessage::Text(hello.into())).await.is_ok();
    while alive {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => sh.mutate(|st| st.on_frame(conn, text.as_str())),
                // Tungstenite answers a Close by itself; the stream ends after it.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => alive = false,
            },
            out = rx.recv() => match out {
                Some(Out::Frame(frame)) => {
                    alive = socket.send(WsMessage::Text(frame.into())).await.is_ok();
                }
                Some(Out::Close(code)) => {
                    close(&mut socket, code).await;
                    alive = false;
                }
                None => alive = false,
            },
            () = &mut stop => {
                close(&mut socket, 1001).await;
                alive = false;
            }
        }
    }
    sh.mutate(|st| {
        let session = st.conns.remove(&conn).and_then(|c| c.session);
        if let Some(s) = session.and_then(|id| st.sessions.get_mut(&id)) {
            s.conn = None;
        }
    });
}

/// Resolves once the fake is stopped.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopped| *stopped).await;
}

/// Sends a close frame and waits briefly for the client's answer: dropping the socket at once
/// could reset the connection before the client has read the frame.
async fn close(socket: &mut WebSocket, code: u16) {
    let frame = CloseFrame {
        code,
        reason: "".into(),
    };
    if socket.send(WsMessage::Close(Some(frame))).await.is_err() {
        return;
    }
    let answer = async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, WsMessage::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
}

impl St {
    fn send(&self, conn: u64, out: Out) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(out);
        }
    }

    fn on_frame(&mut self, conn: u64, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return self.send(conn, Out::Close(4002)); // Decode error, as Discord closes.
        };
        let d = &frame["d"];
        // Serenity sends the token with its `Bot ` prefix; Discord accepts either form.
        let token = d["token"]
            .as_str()
            .map(|t| t.strip_prefix("Bot ").unwrap_or(t));
        let token_ok = token == Some(self.token.as_str());
        match frame["op"].as_u64() {
            Some(1) => self.send(conn, Out::Frame(json!({"op": 11}).to_string())),
            Some(2) => self.identify(conn, d, token_ok),
            Some(6) => self.resume(conn, d, token_ok),
            // Presence updates, member requests and the rest need no answer here.
            _ => {}
        }
    }

    fn identify(&mut self, conn: u64, d: &Value, token_ok: bool) {
        let intents = d["intents"].as_u64().unwrap_or_default();
        let at = Instant::now();
        self.identifies.push(Identify {
            token_ok,
            intents,
            at,
        });
        if !token_ok {
            return self.send(conn, Out::Close(4004)); // Authentication failed.
        }
        if self.conns.get(&conn).is_some_and(|c| c.session.is_some()) {
            return self.send(conn, Out::Close(4005)); // Already authenticated.
        }
        let session_id = format!("fake-session-{}", self.identifies.len());
        let mut guilds: Vec<u64> = self
            .channels
            .keys()
            .filter_map(|c| self.guild_of(*c))
            .collect();
        guilds.sort_unstable();
        guilds.dedup();
        let guilds: Vec<Value> = (guilds.iter())
            .map(|g| json!({"id": g.to_string(), "unavailable": true}))
            .collect();
        let ready = json!({
            "op": 0, "s": 1, "t": "READY",
            "d": {
                "v": 10, "user": user_json(&self.bot), "guilds": guilds,
                "session_id": session_id, "session_type": "normal",
                "resume_gateway_url": self.gateway_url(),
                "shard": d.get("shard").cloned().unwrap_or(json!([0, 1])),
                "application": {"id": self.bot.id.to_string(), "flags": 0},
                "private_channels": [], "relationships": [], "presences": [],
                "geo_ordered_rtc_regions": [], "guild_join_requests": [], "user_settings": {},
            },
        });
        let session = Session {
            intents,
            seq: 1,
            log: Vec::new(),
            conn: Some(conn),
        };
        self.sessions.insert(session_id.clone(), session);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(session_id);
        }
        self.send(conn, Out::Frame(ready.to_string()));
    }

    /// Replays what the session missed after the client's `seq`, then RESUMED; or op 9 when
    /// resuming is refused or the session is unknown.
    fn resume(&mut self, conn: u64, d: &Value, token_ok: bool) {
        self.resumes += 1;
        let session_id = d["session_id"].as_str().unwrap_or_default().to_owned();
        let seen = d["seq"].as_u64().unwrap_or_default();
        let live = self.sessions.contains_key(&session_id);
        if self.resume_refused || !token_ok || !live {
            self.sessions.remove(&session_id);
            return self.send(conn, Out::Frame(json!({"op": 9, "d": false}).to_string()));
        }
        let session = self.sessions.get_mut(&session_id).expect("checked above");
        let previous = session.conn.replace(conn);
        let missed = session
            .log
            .iter()
            .filter(|(s, _)| *s > seen)
            .map(|(_, f)| f.clone());
        let mut frames: Vec<String> = missed.collect();
        session.seq += 1;
        frames.push(json!({"op": 0, "s": session.seq, "t": "RESUMED", "d": {}}).to_string());
        if let Some(old) = previous.and_then(|p| self.conns.get_mut(&p)) {
            old.session = None;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(session_id);
        }
        for frame in frames {
            self.send(conn, Out::Frame(frame));
        }
    }
}

/// The intent a dispatch needs, as Discord filters them.
fn required_intent(event: &str, data: &Value) -> Option<u64> {
    use intents::*;
    let pick = |guild, dm| {
        Some(if data["guild_id"].is_null() {
            dm
        } else {
            guild
        })
    };
    match event {
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" | "MESSAGE_DELETE_BULK" => {
            pick(GUILD_MESSAGES, DIRECT_MESSAGES)
        }
        e if e.starts_with("MESSAGE_REACTION_") => {
            pick(GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS)
        }
        "TYPING_START" => pick(GUILD_MESSAGE_TYPING, DIRECT_MESSAGE_TYPING),
        e if e.starts_with("THREAD_") || e.starts_with("CHANNEL_") => Some(GUILDS),
        _ => None,
    }
}

/// Without MESSAGE_CONTENT, guild messages arrive with empty content, embeds, attachments and
/// components, unless they are the bot's own or mention it, as on Discord.
fn strip_content(event: &str, data: &Value, session_intents: u64, bot_id: u64) -> Value {
    let mut d = data.clone();
    let bot = json!(bot_id.to_string());
    let mentioned = d["mentions"]
        .as_array()
        .is_some_and(|m| m.iter().any(|u| u["id"] == bot));
    let exempt = d["guild_id"].is_null() || d["author"]["id"] == bot || mentioned;
    let message = event == "MESSAGE_CREATE" || event == "MESSAGE_UPDATE";
    if message && session_intents & intents::MESSAGE_CONTENT == 0 && !exempt {
        d["content"] = json!("");
        for field in ["embeds", "attachments", "components"] {
            d[field] = json!([]);
        }
    }
    d
}

// ===================== templates and small helpers =====================

/// The one user template (Discord omits `bot` for people).
fn user_json(u: &UserRef) -> Value {
    let mut user = json!({
        "id": u.id.to_string(), "username": u.username, "discriminator": "0",
        "global_name": u.global_name, "avatar": null, "public_flags": 0,
    });
    if u.bot {
        user["bot"] = json!(true);
    }
    user
}

/// A webhook message's author. Discord stores the avatar and answers with a hash, not the URL
/// (serenity rejects a URL there).
fn webhook_author(webhook_id: u64, name: &str, avatar_url: Option<&str>) -> Value {
    let avatar = avatar_url.map(|url| format!("{:016x}{:016x}", fnv1a(url), fnv1a(name)));
    json!({
        "id": webhook_id.to_string(), "username": name, "discriminator": "0000",
        "avatar": avatar, "bot": true,
    })
}

/// The one guild-member template: the full member (typing, reactions) with `user`, the partial
/// one (messages) without.
fn member_json(u: &UserRef, with_user: bool) -> Value {
    let mut member = json!({
        "nick": u.nick, "roles": [], "joined_at": "2024-01-01T00:00:00.000000+00:00",
        "premium_since": null, "deaf": false, "mute": false, "flags": 0, "pending": false,
        "avatar": null, "communication_disabled_until": null,
    });
    if with_user {
        member["user"] = user_json(u);
    }
    member
}

fn id_field(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) if bytes[i] == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fnv1a(s: &str) -> u64 {
    let step = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    s.bytes().fold(0xcbf2_9ce4_8422_2325, step)
}

/// RFC 3339 in Discord's shape (`2024-01-01T00:00:00.000000+00:00`).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((d.as_secs() / 86_400) as i64, d.as_secs() % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, us) = (secs / 3600, secs % 3600 / 60, secs % 60, d.subsec_micros());
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{us:06}+00:00")
}
