//! A fake Discord for end-to-end tests: the REST API under `/api/v10` and the gateway websocket at
//! `/ws`, on one loopback port, speaking the wire format that serenity 0.12.5 parses, so the
//! bridge runs unmodified against it (`HttpBuilder::proxy(api_url).ratelimiter_disabled(true)`).
//! It owns the fake's state (channels, live messages, webhooks, gateway sessions), records every
//! REST request, injects failures (429s, statuses, enforced buckets) and builds gateway dispatches
//! from one template per kind, each checked by `tests/fake_discord_selftest.rs` against serenity's
//! own `EventHandler`. Like Discord, it echoes the bot's own REST actions on the gateway and
//! filters dispatches by the intents of each session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

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
    /// The bot token that REST requests (`Authorization: Bot {token}`) and IDENTIFY must carry.
    pub token: String,
    /// The bot user's id; the application id is the same, as it is on Discord.
    pub bot_id: u64,
    /// The bot user's username.
    pub bot_name: String,
    /// The interval announced in HELLO. Serenity treats a heartbeat that is not acknowledged within
    /// one interval as a zombie connection and restarts the shard (a 5 s path), so the default of
    /// 2.5 s keeps heartbeats flowing in short tests without making a loaded 2-core machine flaky.
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
#[derive(Clone, Debug, PartialEq)]
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
        Self {
            id,
            username: username.to_owned(),
            global_name: None,
            nick: None,
            bot: false,
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

/// A message "typed by a person" for the MESSAGE_CREATE builder.
#[derive(Clone, Debug)]
pub struct UserMessage {
    channel_id: u64,
    guild_id: Option<u64>,
    author: UserRef,
    content: String,
    reply_to: Option<u64>,
    attachments: Vec<(String, String, u32)>,
    mentions: Vec<UserRef>,
    webhook_id: Option<u64>,
}

impl UserMessage {
    /// A plain message. `guild_id` only matters when the channel is not known yet: then the
    /// channel is registered as a text channel of that guild, or as a DM channel with the author.
    pub fn new(channel_id: u64, guild_id: Option<u64>, author: UserRef, content: &str) -> Self {
        Self {
            channel_id,
            guild_id,
            author,
            content: content.to_owned(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
            webhook_id: None,
        }
    }

    /// Makes it a reply (type 19) to a message of the same channel.
    pub fn reply_to(mut self, message_id: u64) -> Self {
        self.reply_to = Some(message_id);
        self
    }

    /// Adds an attachment with a CDN URL.
    pub fn attachment(mut self, filename: &str, content_type: &str, size: u32) -> Self {
        self.attachments
            .push((filename.to_owned(), content_type.to_owned(), size));
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
    /// The JSON body, or `Value::Null` when there was none.
    pub body: Value,
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
    /// Reactions the bot added, as the percent-decoded route segment (`👍` or `name:id`).
    pub reactions: Vec<String>,
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
            .expect("bind fake discord");
        let port = listener.local_addr().expect("local addr").port();
        let (shutdown, mut stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            port,
            state: Mutex::new(St::default()),
            changed: watch::channel(0).0,
            shutdown,
        });
        let app = Router::new()
            .route("/ws", get(gateway_upgrade))
            .fallback(rest)
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
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
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    /// The gateway URL that `GET /gateway` returns.
    pub fn gateway_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.shared.port)
    }

    /// The bot user.
    pub fn bot(&self) -> UserRef {
        self.shared.bot()
    }

    /// Stops the server and closes every gateway socket with 1001.
    pub fn stop(&self) {
        self.shared.shutdown.send_replace(true);
    }

    // ----- setup -----

    /// Registers a guild text channel (type 0).
    pub fn add_text_channel(&self, channel_id: u64, guild_id: u64) {
        self.shared
            .mutate(|st| st.add_channel(channel_id, Kind::Text { guild: guild_id }));
    }

    /// Registers webhook `id` with `token`, posting into `channel_id`.
    pub fn add_webhook(&self, id: u64, token: &str, channel_id: u64) {
        self.shared.mutate(|st| {
            st.webhooks.insert(
                id,
                Webhook {
                    token: token.to_owned(),
                    channel_id,
                },
            );
        });
    }

    /// Makes a user known (DM recipients and mentions are looked up here; unknown ids get a
    /// synthesised `user{id}`).
    pub fn add_user(&self, user: UserRef) {
        self.shared.mutate(|st| st.users.insert(user.id, user));
    }

    /// The DM channel with `user`, created on first use (as `POST /users/@me/channels` does).
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
        let rule = (method.to_owned(), normalise(path_prefix), failure);
        self.shared.mutate(|st| st.failures.push(rule));
    }

    /// Enforces a bucket of `limit` requests per `per` on matching routes (per channel or
    /// webhook, like Discord's major parameters): requests over it get a real 429.
    pub fn enforce_bucket(&self, method: &str, path_prefix: &str, limit: u32, per: Duration) {
        let rule = Enforced {
            method: method.to_owned(),
            prefix: normalise(path_prefix),
            limit,
            per,
        };
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

    /// The requests with `method` (`"*"` for any) whose path starts with `path_prefix`.
    pub fn requests_matching(&self, method: &str, path_prefix: &str) -> Vec<Request> {
        matching(
            &self.shared.lock().requests,
            method,
            &normalise(path_prefix),
        )
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
        let prefix = normalise(path_prefix);
        let found = self
            .shared
            .wait_until(timeout, |st| {
                let hits = matching(&st.requests, method, &prefix);
                (hits.len() >= count).then_some(hits)
            })
            .await;
        found.unwrap_or_else(|| {
            let listing: Vec<String> = self
                .requests()
                .iter()
                .map(|r| format!("  {} {} -> {} {}", r.method, r.path, r.status, r.body))
                .collect();
            panic!(
                "fake discord: timed out after {timeout:?} waiting for {count} x {method} \
                 {prefix}; requests so far:\n{}",
                listing.join("\n")
            )
        })
    }

    /// The live messages of a channel, oldest first, as the channel shows them now.
    pub fn messages_in(&self, channel_id: u64) -> Vec<ChannelMessage> {
        let st = self.shared.lock();
        st.messages
            .get(&channel_id)
            .map(|log| log.iter().map(Stored::view).collect())
            .unwrap_or_default()
    }

    // ----- gateway controls -----

    /// Sends a dispatch to every live session whose intents allow it (sessions whose socket is
    /// down keep it for RESUME). Returns how many sessions took it.
    pub fn dispatch(&self, event: &str, data: Value) -> usize {
        let bot_id = self.shared.cfg.bot_id;
        self.shared.mutate(|st| st.dispatch(bot_id, event, data))
    }

    /// Closes every gateway socket with `code` (4000: serenity resumes; 4004: auth failed). The
    /// sessions stay resumable.
    pub fn close_sessions(&self, code: u16) {
        self.shared.mutate(|st| {
            for conn in st.conns.values_mut() {
                if let Some(session) = conn.session.take() {
                    if let Some(s) = st.sessions.get_mut(&session) {
                        s.conn = None;
                    }
                }
                let _ = conn.tx.send(Out::Close(code));
            }
        });
    }

    /// Sends op 7 RECONNECT to every attached socket.
    pub fn send_reconnect(&self) {
        self.shared.mutate(|st| {
            for conn in st.conns.values().filter(|c| c.session.is_some()) {
                let _ = conn
                    .tx
                    .send(Out::Frame(json!({"op": 7, "d": null}).to_string()));
            }
        });
    }

    /// When false, RESUME is answered with op 9 (`d: false`) and the session is dropped, so the
    /// client has to IDENTIFY again.
    pub fn set_resume_ok(&self, ok: bool) {
        self.shared.mutate(|st| st.resume_refused = !ok);
    }

    /// When false, heartbeats go unacknowledged (a zombie connection).
    pub fn set_ack_heartbeats(&self, ack: bool) {
        self.shared.mutate(|st| st.heartbeat_acks_off = !ack);
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

    /// How many heartbeats (op 1) arrived.
    pub fn heartbeat_count(&self) -> usize {
        self.shared.lock().heartbeats
    }

    /// Sessions that currently have a socket attached.
    pub fn connected_sessions(&self) -> usize {
        self.shared
            .lock()
            .sessions
            .values()
            .filter(|s| s.conn.is_some())
            .count()
    }

    /// Waits for `n` IDENTIFYs in total; panics after `timeout`.
    pub async fn wait_for_identify(&self, n: usize, timeout: Duration) {
        let ok = self
            .shared
            .wait_until(timeout, |st| (st.identifies.len() >= n).then_some(()))
            .await;
        assert!(
            ok.is_some(),
            "fake discord: {n} IDENTIFY not seen within {timeout:?}, got {}",
            self.identifies().len()
        );
    }

    /// Waits for `n` RESUMEs in total; panics after `timeout`.
    pub async fn wait_for_resume(&self, n: usize, timeout: Duration) {
        let ok = self
            .shared
            .wait_until(timeout, |st| (st.resumes >= n).then_some(()))
            .await;
        assert!(
            ok.is_some(),
            "fake discord: {n} RESUME not seen within {timeout:?}, got {}",
            self.resume_count()
        );
    }

    /// Waits until `n` sessions have a socket attached; panics after `timeout`.
    pub async fn wait_for_connected(&self, n: usize, timeout: Duration) {
        let ok = self
            .shared
            .wait_until(timeout, |st| {
                (st.sessions.values().filter(|s| s.conn.is_some()).count() >= n).then_some(())
            })
            .await;
        assert!(
            ok.is_some(),
            "fake discord: {n} connected sessions not seen within {timeout:?}"
        );
    }

    // ----- dispatch builders (one template per kind; none of them dispatches by itself unless
    // its name says so) -----

    /// Builds a MESSAGE_CREATE payload and appends the message to its channel's log (so catch-up
    /// through `GET /channels/{c}/messages` finds it). Does not dispatch.
    pub fn user_message(&self, msg: UserMessage) -> Value {
        self.shared.mutate(|st| st.user_message(msg))
    }

    /// [`Self::user_message`], then dispatches it as MESSAGE_CREATE.
    pub fn post_user_message(&self, msg: UserMessage) -> Value {
        let payload = self.user_message(msg);
        self.dispatch("MESSAGE_CREATE", payload.clone());
        payload
    }

    /// A message sent while the gateway was down: logged for catch-up, never dispatched (the
    /// same as [`Self::user_message`]; the name says why in a test).
    pub fn post_user_message_silently(&self, msg: UserMessage) -> Value {
        self.user_message(msg)
    }

    /// Edits a logged message and returns its MESSAGE_UPDATE payload (the full message, as
    /// Discord sends it). Panics if the message is unknown.
    pub fn message_update(&self, channel_id: u64, message_id: u64, content: &str) -> Value {
        self.shared.mutate(|st| {
            let now = rfc3339(SystemTime::now());
            let stored = st
                .find_mut(channel_id, message_id)
                .expect("message_update: unknown message");
            stored.raw["content"] = json!(content);
            stored.raw["edited_timestamp"] = json!(now);
            let raw = stored.raw.clone();
            st.gateway_message(raw)
        })
    }

    /// Removes a logged message and returns its MESSAGE_DELETE payload.
    pub fn message_delete(&self, channel_id: u64, message_id: u64) -> Value {
        self.shared.mutate(|st| {
            if let Some(log) = st.messages.get_mut(&channel_id) {
                log.retain(|m| m.id != message_id);
            }
            st.delete_payload(channel_id, message_id)
        })
    }

    /// A MESSAGE_REACTION_ADD payload (`emoji` is a unicode emoji or `name:id`).
    pub fn reaction_add(
        &self,
        channel_id: u64,
        message_id: u64,
        user: &UserRef,
        emoji: &str,
    ) -> Value {
        self.shared
            .mutate(|st| st.reaction_payload(channel_id, message_id, user, emoji, true))
    }

    /// A MESSAGE_REACTION_REMOVE payload (no member, as on Discord).
    pub fn reaction_remove(
        &self,
        channel_id: u64,
        message_id: u64,
        user: &UserRef,
        emoji: &str,
    ) -> Value {
        self.shared
            .mutate(|st| st.reaction_payload(channel_id, message_id, user, emoji, false))
    }

    /// A TYPING_START payload.
    pub fn typing_start(&self, channel_id: u64, user: &UserRef) -> Value {
        self.shared.mutate(|st| st.typing_payload(channel_id, user))
    }

    /// Registers a public thread (type 11) under `parent_id` and returns its THREAD_CREATE
    /// payload. Started from a message, the thread's id is that message's id, as on Discord.
    /// THREAD_CREATE needs the GUILDS intent.
    pub fn thread_create(
        &self,
        parent_id: u64,
        name: &str,
        owner: &UserRef,
        from_message: Option<u64>,
    ) -> Value {
        self.shared.mutate(|st| {
            let id = from_message.unwrap_or_else(|| st.next_id());
            let guild = st
                .guild_of(parent_id)
                .expect("thread_create: parent is not a guild channel");
            st.add_channel(
                id,
                Kind::Thread {
                    guild,
                    parent: parent_id,
                    name: name.to_owned(),
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
    cfg: FakeDiscordConfig,
    port: u16,
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
    /// A std mutex (never held across an await); a panicking test builder must not wedge the
    /// server for the rest of the test, hence the poison recovery.
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
        mut check: impl FnMut(&St) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check(&self.lock()) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    fn bot(&self) -> UserRef {
        UserRef::new(self.cfg.bot_id, &self.cfg.bot_name).bot()
    }
}

#[derive(Default)]
struct St {
    last_id: u64,
    channels: HashMap<u64, Kind>,
    messages: HashMap<u64, Vec<Stored>>,
    users: HashMap<u64, UserRef>,
    webhooks: HashMap<u64, Webhook>,
    requests: Vec<Request>,
    failures: Vec<(String, String, Failure)>,
    enforced: Vec<Enforced>,
    windows: HashMap<(String, String), Window>,
    rate_limited: usize,
    sessions: HashMap<String, Session>,
    conns: HashMap<u64, Conn>,
    last_conn: u64,
    identifies: Vec<Identify>,
    resumes: usize,
    heartbeats: usize,
    // Negative flags so that `Default` gives Discord's behaviour.
    resume_refused: bool,
    heartbeat_acks_off: bool,
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
    raw: Value,
    reactions: Vec<String>,
}

impl Stored {
    fn view(&self) -> ChannelMessage {
        let id_of = |v: &Value| v.as_str().and_then(|s| s.parse().ok());
        ChannelMessage {
            id: self.id,
            author_id: id_of(&self.raw["author"]["id"]).unwrap_or(0),
            author_name: self.raw["author"]["username"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            content: self.raw["content"].as_str().unwrap_or("").to_owned(),
            webhook_id: id_of(&self.raw["webhook_id"]),
            reply_to: id_of(&self.raw["message_reference"]["message_id"]),
            edited: !self.raw["edited_timestamp"].is_null(),
            reactions: self.reactions.clone(),
            raw: self.raw.clone(),
        }
    }
}

struct Webhook {
    token: String,
    channel_id: u64,
}

struct Enforced {
    method: String,
    prefix: String,
    limit: u32,
    per: Duration,
}

struct Window {
    start: Instant,
    count: u32,
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
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let stamp = ms.saturating_sub(1_420_070_400_000) << 22;
        self.last_id = stamp.max(self.last_id + 1);
        self.last_id
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
        self.users
            .get(&id)
            .cloned()
            .unwrap_or_else(|| UserRef::new(id, &format!("user{id}")))
    }

    fn dm_channel_for(&mut self, recipient: u64) -> u64 {
        let existing = self
            .channels
            .iter()
            .find(|(_, k)| matches!(k, Kind::Dm { recipient: r } if *r == recipient));
        if let Some((id, _)) = existing {
            return *id;
        }
        let id = self.next_id();
        self.add_channel(id, Kind::Dm { recipient });
        id
    }

    fn find_mut(&mut self, channel_id: u64, message_id: u64) -> Option<&mut Stored> {
        self.messages
            .get_mut(&channel_id)?
            .iter_mut()
            .find(|m| m.id == message_id)
    }

    fn find(&self, channel_id: u64, message_id: u64) -> Option<&Stored> {
        self.messages
            .get(&channel_id)?
            .iter()
            .find(|m| m.id == message_id)
    }

    fn channel_json(&self, id: u64) -> Option<Value> {
        let last = self
            .messages
            .get(&id)
            .and_then(|l| l.last())
            .map(|m| m.id.to_string());
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
            } => {
                let count = self.messages.get(&id).map_or(0, Vec::len);
                let created = rfc3339(SystemTime::now());
                json!({
                    "id": id.to_string(), "type": 11, "guild_id": guild.to_string(),
                    "parent_id": parent.to_string(), "owner_id": owner.to_string(), "name": name,
                    "last_message_id": last, "message_count": count, "member_count": 1,
                    "total_message_sent": count, "rate_limit_per_user": 0, "flags": 0,
                    "thread_metadata": {
                        "archived": false, "auto_archive_duration": 1440,
                        "archive_timestamp": created, "locked": false,
                        "create_timestamp": created,
                    },
                })
            }
            Kind::Dm { recipient } => json!({
                "id": id.to_string(), "type": 1, "last_message_id": last, "flags": 0,
                "recipients": [user_json(&self.user(*recipient))],
            }),
        })
    }

    /// The one message template (REST form: no `guild_id` or `member`, as Discord's REST omits
    /// them). `referenced` is the parent for a reply.
    fn message_json(
        &mut self,
        channel_id: u64,
        author: Value,
        content: &str,
        referenced: Option<u64>,
    ) -> Value {
        let id = self.next_id();
        let guild = self.guild_of(channel_id);
        let parent = referenced.map(|mid| self.find(channel_id, mid).map(|m| m.raw.clone()));
        let mut msg = json!({
            "id": id.to_string(), "channel_id": channel_id.to_string(), "author": author,
            "content": content, "timestamp": rfc3339(SystemTime::now()), "edited_timestamp": null,
            "tts": false, "mention_everyone": false, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "components": [], "pinned": false, "flags": 0,
            "type": if referenced.is_some() { 19 } else { 0 },
        });
        if let (Some(mid), Some(parent)) = (referenced, parent) {
            msg["message_reference"] = json!({
                "type": 0, "message_id": mid.to_string(), "channel_id": channel_id.to_string(),
                "guild_id": guild.map(|g| g.to_string()),
            });
            // Discord sends null when the parent was deleted.
            msg["referenced_message"] = parent.unwrap_or(Value::Null);
        }
        msg
    }

    fn store(&mut self, raw: &Value) {
        let channel: u64 = id_field(&raw["channel_id"]);
        let id = id_field(&raw["id"]);
        let stored = Stored {
            id,
            raw: raw.clone(),
            reactions: Vec::new(),
        };
        self.messages.entry(channel).or_default().push(stored);
    }

    /// The gateway form of a stored message: adds `guild_id`, and `member` for non-webhook
    /// authors in guilds.
    fn gateway_message(&self, mut raw: Value) -> Value {
        let channel = id_field(&raw["channel_id"]);
        if let Some(guild) = self.guild_of(channel) {
            raw["guild_id"] = json!(guild.to_string());
            if raw["webhook_id"].is_null() {
                let author = self.user(id_field(&raw["author"]["id"]));
                raw["member"] = member_json(&author, false);
            }
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
            Some(w) => webhook_author(w, &m.author.username),
            None => user_json(&m.author),
        };
        let mut raw = self.message_json(m.channel_id, author, &m.content, m.reply_to);
        if let Some(w) = m.webhook_id {
            raw["webhook_id"] = json!(w.to_string());
        }
        let mut attachments = Vec::new();
        for (filename, content_type, size) in m.attachments {
            let id = self.next_id();
            let path = format!("attachments/{}/{id}/{filename}", m.channel_id);
            attachments.push(json!({
                "id": id.to_string(), "filename": filename, "size": size,
                "url": format!("https://cdn.discordapp.com/{path}"),
                "proxy_url": format!("https://media.discordapp.net/{path}"),
                "content_type": content_type,
            }));
        }
        raw["attachments"] = json!(attachments);
        raw["mentions"] = json!(m.mentions.iter().map(user_json).collect::<Vec<_>>());
        self.store(&raw);
        self.gateway_message(raw)
    }

    fn delete_payload(&self, channel_id: u64, message_id: u64) -> Value {
        let mut d = json!({"id": message_id.to_string(), "channel_id": channel_id.to_string()});
        if let Some(guild) = self.guild_of(channel_id) {
            d["guild_id"] = json!(guild.to_string());
        }
        d
    }

    fn reaction_payload(
        &self,
        channel_id: u64,
        message_id: u64,
        user: &UserRef,
        emoji: &str,
        add: bool,
    ) -> Value {
        let emoji = match emoji.rsplit_once(':') {
            Some((name, id)) if id.parse::<u64>().is_ok() => json!({"id": id, "name": name}),
            _ => json!({"id": null, "name": emoji}),
        };
        let mut d = json!({
            "user_id": user.id.to_string(), "channel_id": channel_id.to_string(),
            "message_id": message_id.to_string(), "emoji": emoji, "burst": false, "type": 0,
        });
        let guild = self.guild_of(channel_id);
        if let Some(guild) = guild {
            d["guild_id"] = json!(guild.to_string());
        }
        if add {
            d["burst_colors"] = json!([]);
            if let Some(m) = self.find(channel_id, message_id) {
                d["message_author_id"] = m.raw["author"]["id"].clone();
            }
            if guild.is_some() {
                d["member"] = member_json(user, true);
            }
        }
        d
    }

    fn typing_payload(&self, channel_id: u64, user: &UserRef) -> Value {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut d = json!({"channel_id": channel_id.to_string(), "user_id": user.id.to_string(), "timestamp": secs});
        if let Some(guild) = self.guild_of(channel_id) {
            d["guild_id"] = json!(guild.to_string());
            d["member"] = member_json(user, true);
        }
        d
    }

    /// Queues a dispatch on every live session that its intents allow.
    fn dispatch(&mut self, bot_id: u64, event: &str, data: Value) -> usize {
        let needed = required_intent(event, &data);
        let mut reached = 0;
        for session in self.sessions.values_mut() {
            if needed.is_some_and(|bit| session.intents & bit == 0) {
                continue;
            }
            let d = strip_content(event, &data, session.intents, bot_id);
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

    fn echo(&mut self, bot_id: u64, event: &str, data: Value) {
        if !self.echo_off {
            self.dispatch(bot_id, event, data);
        }
    }

    fn send(&self, conn: u64, out: Out) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(out);
        }
    }
}

// ===================== REST =====================

/// A response before it becomes HTTP: status, JSON body (none for 204), extra headers.
struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            headers: Vec::new(),
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

    fn form_error(field: &str, code: &str, message: &str) -> Self {
        let errors = json!({ field: {"_errors": [{"code": code, "message": message}]} });
        Self::json(
            400,
            json!({"message": "Invalid Form Body", "code": 50035, "errors": errors}),
        )
    }

    fn rate_limited(retry_after: f64, global: bool) -> Self {
        let body = json!({"message": "You are being rate limited.", "retry_after": retry_after, "global": global});
        let mut reply = Self::json(429, body);
        reply
            .headers
            .push(("retry-after", format!("{}", retry_after.ceil() as u64)));
        reply.headers.push((
            "x-ratelimit-scope",
            if global { "global" } else { "user" }.to_owned(),
        ));
        if global {
            reply
                .headers
                .push(("x-ratelimit-global", "true".to_owned()));
        }
        reply
    }
}

async fn rest(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(route) = uri.path().strip_prefix("/api/v10") else {
        return (StatusCode::NOT_FOUND, "not a Discord API path").into_response();
    };
    let segs: Vec<String> = route.split('/').skip(1).map(percent_decode).collect();
    let path = format!("/{}", segs.join("/"));
    let query: Vec<(String, String)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let json_body: Result<Value, _> = if body.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice(&body)
    };
    let auth_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bot {}", sh.cfg.token));
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();

    let reply = {
        let mut st = sh.lock();
        let reply = match json_body {
            Err(_) => Reply::error(400, 50109, "The request body contains invalid JSON."),
            Ok(ref body) => st.handle(&sh, method.as_str(), &segs, &path, &query, body, auth_ok),
        };
        if reply.status == 429 {
            st.rate_limited += 1;
        }
        st.requests.push(Request {
            method: method.to_string(),
            path,
            query,
            body: json_body.unwrap_or(Value::Null),
            at: Instant::now(),
            status: reply.status,
        });
        reply
    };
    sh.changed.send_modify(|v| *v += 1);

    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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

impl St {
    #[allow(clippy::too_many_arguments)]
    fn handle(
        &mut self,
        sh: &Shared,
        method: &str,
        segs: &[&str],
        path: &str,
        query: &[(String, String)],
        body: &Value,
        auth_ok: bool,
    ) -> Reply {
        // Webhook routes authenticate with the token in the path, as on Discord.
        let is_webhook = segs.first() == Some(&"webhooks") && segs.len() >= 3;
        if !auth_ok && !is_webhook {
            return Reply::error(401, 0, "401: Unauthorized");
        }
        let (template, major, (limit, per)) = bucket(method, segs);
        let failure = self.failures.iter().position(|(m, prefix, _)| {
            (m == "*" || m == method) && path.starts_with(prefix.as_str())
        });
        if let Some(i) = failure {
            let (_, _, failure) = self.failures.remove(i);
            return match failure {
                Failure::RateLimited {
                    retry_after_secs,
                    global,
                } => Reply::rate_limited(retry_after_secs, global),
                Failure::Status(code, body) => Reply::json(code, body),
            };
        }
        let enforced = self.enforced.iter().find(|e| {
            (e.method == "*" || e.method == method) && path.starts_with(e.prefix.as_str())
        });
        let (limit, per, enforce) =
            enforced.map_or((limit, per, false), |e| (e.limit, e.per, true));

        let now = Instant::now();
        let window = self
            .windows
            .entry((template.clone(), major))
            .or_insert(Window {
                start: now,
                count: 0,
            });
        if now >= window.start + per {
            *window = Window {
                start: now,
                count: 0,
            };
        }
        let reset_after = (window.start + per)
            .saturating_duration_since(now)
            .as_secs_f64();
        // Like Discord, a request answered with 429 does not use up the bucket.
        let limited = enforce && window.count >= limit;
        if !limited {
            window.count += 1;
        }
        let count = window.count;
        let mut reply = if limited {
            Reply::rate_limited((reset_after * 1000.0).ceil() / 1000.0, false)
        } else {
            self.route(sh, method, segs, query, body)
        };
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        reply.headers.extend([
            ("x-ratelimit-limit", limit.to_string()),
            (
                "x-ratelimit-remaining",
                limit.saturating_sub(count).to_string(),
            ),
            ("x-ratelimit-reset", format!("{:.3}", unix + reset_after)),
            ("x-ratelimit-reset-after", format!("{reset_after:.3}")),
            ("x-ratelimit-bucket", format!("{:016x}", fnv1a(&template))),
        ]);
        reply
    }

    fn route(
        &mut self,
        sh: &Shared,
        method: &str,
        segs: &[&str],
        query: &[(String, String)],
        body: &Value,
    ) -> Reply {
        let id = |s: &str| s.parse::<u64>().ok();
        let bot = sh.bot();
        let gateway = json!({"url": format!("ws://127.0.0.1:{}/ws", sh.port)});
        match (method, segs) {
            ("GET", ["gateway"]) => Reply::json(200, gateway),
            ("GET", ["gateway", "bot"]) => {
                let mut g = gateway;
                g["shards"] = json!(1);
                g["session_start_limit"] = json!({"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1});
                Reply::json(200, g)
            }
            ("GET", ["users", "@me"]) => {
                let mut me = user_json(&bot);
                me["verified"] = json!(true);
                me["mfa_enabled"] = json!(false);
                me["flags"] = json!(0);
                Reply::json(200, me)
            }
            ("POST", ["users", "@me", "channels"]) => {
                let recipient = body["recipient_id"]
                    .as_str()
                    .and_then(id)
                    .or_else(|| body["recipient_id"].as_u64());
                let Some(recipient) = recipient else {
                    return Reply::form_error(
                        "recipient_id",
                        "BASE_TYPE_REQUIRED",
                        "This field is required",
                    );
                };
                let channel = self.dm_channel_for(recipient);
                Reply::json(200, self.channel_json(channel).unwrap_or_default())
            }
            ("GET", ["channels", c]) => match id(c).and_then(|c| self.channel_json(c)) {
                Some(channel) => Reply::json(200, channel),
                None => Reply::unknown_channel(),
            },
            (_, ["channels", c, rest @ ..]) => {
                let Some(c) = id(c).filter(|c| self.channels.contains_key(c)) else {
                    return Reply::unknown_channel();
                };
                self.channel_route(sh, method, c, rest, query, body)
            }
            ("POST", ["webhooks", w, token]) => {
                let Some(w) = id(w) else {
                    return Reply::not_found();
                };
                let thread = query
                    .iter()
                    .find(|(k, _)| k == "thread_id")
                    .and_then(|(_, v)| id(v));
                let wait = query.iter().any(|(k, v)| k == "wait" && v == "true");
                self.execute_webhook(sh.cfg.bot_id, w, token, thread, wait, body)
            }
            (_, ["webhooks", w, token, "messages", m]) => {
                let (Some(w), Some(m)) = (id(w), id(m)) else {
                    return Reply::not_found();
                };
                let channel = match self.webhooks.get(&w) {
                    None => return Reply::error(404, 10015, "Unknown Webhook"),
                    Some(hook) if hook.token != *token => {
                        return Reply::error(401, 50027, "Invalid Webhook Token")
                    }
                    Some(hook) => hook.channel_id,
                };
                let thread = query
                    .iter()
                    .find(|(k, _)| k == "thread_id")
                    .and_then(|(_, v)| id(v));
                let channel = thread.unwrap_or(channel);
                let owned = self
                    .find(channel, m)
                    .is_some_and(|s| s.raw["webhook_id"] == json!(w.to_string()));
                if !owned {
                    return Reply::unknown_message();
                }
                self.message_route(sh.cfg.bot_id, method, channel, m, body)
            }
            _ => Reply::not_found(),
        }
    }

    fn channel_route(
        &mut self,
        sh: &Shared,
        method: &str,
        c: u64,
        rest: &[&str],
        query: &[(String, String)],
        body: &Value,
    ) -> Reply {
        let bot_id = sh.cfg.bot_id;
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        match (method, rest) {
            ("POST", ["typing"]) => {
                let typing = self.typing_payload(c, &sh.bot());
                self.echo(bot_id, "TYPING_START", typing);
                Reply::no_content()
            }
            ("GET", ["messages"]) => {
                let limit = param("limit").unwrap_or(50);
                if !(1..=100).contains(&limit) {
                    return Reply::form_error(
                        "limit",
                        "NUMBER_TYPE_MAX",
                        "int value should be <= 100 and >= 1.",
                    );
                }
                let log: Vec<&Stored> = self
                    .messages
                    .get(&c)
                    .map(|l| l.iter().collect())
                    .unwrap_or_default();
                // Discord answers newest first whatever the direction; `after` picks the oldest
                // `limit` messages after the id, the others the newest `limit`.
                let mut picked: Vec<&Stored> = match (param("after"), param("before")) {
                    (Some(after), _) => log
                        .into_iter()
                        .filter(|m| m.id > after)
                        .take(limit as usize)
                        .collect(),
                    (None, before) => {
                        let older: Vec<&Stored> = log
                            .into_iter()
                            .filter(|m| before.is_none_or(|b| m.id < b))
                            .collect();
                        older[older.len().saturating_sub(limit as usize)..].to_vec()
                    }
                };
                picked.reverse();
                Reply::json(
                    200,
                    json!(picked.iter().map(|m| m.raw.clone()).collect::<Vec<_>>()),
                )
            }
            ("POST", ["messages"]) => {
                let content = body["content"].as_str().unwrap_or("");
                if let Some(reply) = check_content(content) {
                    return reply;
                }
                let has_embeds = body["embeds"].as_array().is_some_and(|e| !e.is_empty());
                if content.is_empty() && !has_embeds {
                    return Reply::error(400, 50006, "Cannot send an empty message");
                }
                let reference = &body["message_reference"];
                let mut parent = reference["message_id"]
                    .as_str()
                    .and_then(|s| s.parse::<u64>().ok());
                if parent.is_some_and(|p| self.find(c, p).is_none()) {
                    if reference["fail_if_not_exists"] != json!(false) {
                        return Reply::form_error(
                            "message_reference",
                            "REPLIES_UNKNOWN_MESSAGE",
                            "Unknown message",
                        );
                    }
                    parent = None;
                }
                let mut raw = self.message_json(c, user_json(&sh.bot()), content, parent);
                if has_embeds {
                    raw["embeds"] = body["embeds"].clone();
                }
                self.store(&raw);
                let event = self.gateway_message(raw.clone());
                self.echo(bot_id, "MESSAGE_CREATE", event);
                Reply::json(200, raw)
            }
            (_, ["messages", m]) => {
                match m.parse::<u64>().ok().filter(|m| self.find(c, *m).is_some()) {
                    None => Reply::unknown_message(),
                    Some(m) => {
                        let by_bot = self
                            .find(c, m)
                            .is_some_and(|s| s.raw["author"]["id"] == json!(bot_id.to_string()));
                        if method == "PATCH" && !by_bot {
                            return Reply::error(
                                403,
                                50005,
                                "Cannot edit a message authored by another user",
                            );
                        }
                        self.message_route(bot_id, method, c, m, body)
                    }
                }
            }
            (_, ["messages", m, "reactions", emoji, "@me"])
                if method == "PUT" || method == "DELETE" =>
            {
                let Some(stored) = m.parse().ok().and_then(|m| self.find_mut(c, m)) else {
                    return Reply::unknown_message();
                };
                let had = stored.reactions.iter().any(|r| r == emoji);
                if method == "PUT" && !had {
                    stored.reactions.push((*emoji).to_owned());
                }
                if method == "DELETE" {
                    stored.reactions.retain(|r| r != emoji);
                }
                let message_id = stored.id;
                if had != (method == "PUT") {
                    let event =
                        self.reaction_payload(c, message_id, &sh.bot(), emoji, method == "PUT");
                    let name = if method == "PUT" {
                        "MESSAGE_REACTION_ADD"
                    } else {
                        "MESSAGE_REACTION_REMOVE"
                    };
                    self.echo(bot_id, name, event);
                }
                Reply::no_content()
            }
            ("POST", ["messages", m, "threads"]) => {
                let Some(m) = m.parse::<u64>().ok().filter(|m| self.find(c, *m).is_some()) else {
                    return Reply::unknown_message();
                };
                let Some(Kind::Text { guild }) = self.channels.get(&c).cloned() else {
                    return Reply::error(400, 50024, "Cannot execute action on this channel type");
                };
                if self.channels.contains_key(&m) {
                    return Reply::error(
                        400,
                        160004,
                        "A thread has already been created for this message",
                    );
                }
                let name = body["name"].as_str().unwrap_or("thread").to_owned();
                self.add_channel(
                    m,
                    Kind::Thread {
                        guild,
                        parent: c,
                        name,
                        owner: bot_id,
                    },
                );
                Reply::json(201, self.channel_json(m).unwrap_or_default())
            }
            _ => Reply::not_found(),
        }
    }

    /// GET, PATCH or DELETE of one message that is known to exist.
    fn message_route(&mut self, bot_id: u64, method: &str, c: u64, m: u64, body: &Value) -> Reply {
        match method {
            "GET" => Reply::json(
                200,
                self.find(c, m).map(|s| s.raw.clone()).unwrap_or_default(),
            ),
            "DELETE" => {
                if let Some(log) = self.messages.get_mut(&c) {
                    log.retain(|s| s.id != m);
                }
                let event = self.delete_payload(c, m);
                self.echo(bot_id, "MESSAGE_DELETE", event);
                Reply::no_content()
            }
            "PATCH" => {
                let content = body["content"].as_str();
                if let Some(reply) = content.and_then(check_content) {
                    return reply;
                }
                let Some(stored) = self.find_mut(c, m) else {
                    return Reply::unknown_message();
                };
                if let Some(content) = content {
                    stored.raw["content"] = json!(content);
                }
                if body.get("embeds").is_some() {
                    stored.raw["embeds"] = body["embeds"].clone();
                }
                stored.raw["edited_timestamp"] = json!(rfc3339(SystemTime::now()));
                let raw = stored.raw.clone();
                let event = self.gateway_message(raw.clone());
                self.echo(bot_id, "MESSAGE_UPDATE", event);
                Reply::json(200, raw)
            }
            _ => Reply::not_found(),
        }
    }

    fn execute_webhook(
        &mut self,
        bot_id: u64,
        w: u64,
        token: &str,
        thread: Option<u64>,
        wait: bool,
        body: &Value,
    ) -> Reply {
        let channel = match self.webhooks.get(&w) {
            None => return Reply::error(404, 10015, "Unknown Webhook"),
            Some(hook) if hook.token != token => {
                return Reply::error(401, 50027, "Invalid Webhook Token")
            }
            Some(hook) => hook.channel_id,
        };
        let channel = match thread {
            None => channel,
            Some(t) if matches!(self.channels.get(&t), Some(Kind::Thread { parent, .. }) if *parent == channel) => {
                t
            }
            Some(_) => return Reply::unknown_channel(),
        };
        let content = body["content"].as_str().unwrap_or("");
        if let Some(reply) = check_content(content) {
            return reply;
        }
        if content.is_empty() && body["embeds"].as_array().is_none_or(Vec::is_empty) {
            return Reply::error(400, 50006, "Cannot send an empty message");
        }
        let name = body["username"].as_str().unwrap_or("Webhook").to_owned();
        let mut author = webhook_author(w, &name);
        // Discord stores the avatar and answers with its hash (serenity insists on a hash).
        if let Some(url) = body["avatar_url"].as_str() {
            author["avatar"] = json!(format!(
                "{:016x}{:016x}",
                fnv1a(url),
                fnv1a(&url.len().to_string())
            ));
        }
        let mut raw = self.message_json(channel, author, content, None);
        raw["webhook_id"] = json!(w.to_string());
        if body.get("embeds").is_some() {
            raw["embeds"] = body["embeds"].clone();
        }
        self.store(&raw);
        let event = self.gateway_message(raw.clone());
        self.echo(bot_id, "MESSAGE_CREATE", event);
        if wait {
            Reply::json(200, raw)
        } else {
            Reply::no_content()
        }
    }
}

/// Discord's bucket for a route: a template with ids replaced, the major parameter (channel or
/// webhook) and a default (limit, window) like Discord's usual ones.
fn bucket(method: &str, segs: &[&str]) -> (String, String, (u32, Duration)) {
    let major = match segs {
        ["channels", c, ..] => (*c).to_owned(),
        ["webhooks", w, t, ..] => format!("{w}/{t}"),
        _ => String::new(),
    };
    let template: Vec<&str> = segs
        .iter()
        .enumerate()
        .map(|(i, s)| match (i, segs.first()) {
            (_, _) if s.parse::<u64>().is_ok() => "{id}",
            (2, Some(&"webhooks")) => "{token}",
            (5, Some(&"channels")) if segs.get(4) == Some(&"reactions") => "{emoji}",
            _ => s,
        })
        .collect();
    let template = format!("{method} /{}", template.join("/"));
    let default = if template.contains("/reactions/") {
        (1, Duration::from_millis(250))
    } else if segs.first() == Some(&"webhooks") && method == "POST" {
        (5, Duration::from_secs(2))
    } else if method == "POST" || method == "PATCH" || method == "DELETE" {
        (5, Duration::from_secs(5))
    } else {
        (50, Duration::from_secs(1))
    };
    (template, major, default)
}

fn check_content(content: &str) -> Option<Reply> {
    (content.chars().count() > MAX_CONTENT_CHARS).then(|| {
        Reply::form_error(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 2000 or fewer in length.",
        )
    })
}

// ===================== gateway =====================

async fn gateway_upgrade(State(sh): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| gateway_connection(sh, socket))
}

/// One gateway socket: HELLO, then every outgoing frame goes through the connection's queue so
/// that READY, replays and dispatches keep the order in which the state decided them.
async fn gateway_connection(sh: Arc<Shared>, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = sh.mutate(|st| {
        st.last_conn += 1;
        st.conns.insert(st.last_conn, Conn { tx, session: None });
        st.last_conn
    });
    let stop = stopped(sh.shutdown.subscribe());
    tokio::pin!(stop);
    let hello = json!({"op": 10, "d": {"heartbeat_interval": sh.cfg.heartbeat_interval.as_millis() as u64}});
    let mut alive = socket
        .send(WsMessage::Text(hello.to_string().into()))
        .await
        .is_ok();
    while alive {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => sh.mutate(|st| st.on_frame(&sh, conn, text.as_str())),
                // Tungstenite answers a Close itself; the stream then ends.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => alive = false,
            },
            out = rx.recv() => match out {
                Some(Out::Frame(frame)) => alive = socket.send(WsMessage::Text(frame.into())).await.is_ok(),
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
        if let Some(session) = st.conns.remove(&conn).and_then(|c| c.session) {
            if let Some(s) = st.sessions.get_mut(&session) {
                s.conn = None;
            }
        }
    });
}

/// Resolves once the fake is stopped.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopped| *stopped).await;
}

/// Sends a close frame and waits (briefly) for the client's answer, so the frame is read before
/// the TCP connection goes away.
async fn close(socket: &mut WebSocket, code: u16) {
    let frame = CloseFrame {
        code,
        reason: "".into(),
    };
    if socket.send(WsMessage::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

impl St {
    fn on_frame(&mut self, sh: &Shared, conn: u64, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return self.send(conn, Out::Close(4002));
        };
        let d = &frame["d"];
        let token_ok = d["token"]
            .as_str()
            .is_some_and(|t| t.strip_prefix("Bot ").unwrap_or(t) == sh.cfg.token);
        match frame["op"].as_u64() {
            Some(1) => {
                self.heartbeats += 1;
                if !self.heartbeat_acks_off {
                    self.send(conn, Out::Frame(json!({"op": 11}).to_string()));
                }
            }
            Some(2) => {
                let intents = d["intents"].as_u64().unwrap_or(0);
                self.identifies.push(Identify {
                    token_ok,
                    intents,
                    at: Instant::now(),
                });
                if !token_ok {
                    return self.send(conn, Out::Close(4004));
                }
                if self.conns.get(&conn).is_some_and(|c| c.session.is_some()) {
                    return self.send(conn, Out::Close(4005));
                }
                let session_id = format!("fake-session-{}", self.identifies.len());
                let ready = json!({
                    "op": 0, "s": 1, "t": "READY",
                    "d": {
                        "v": 10, "user": user_json(&sh.bot()), "guilds": self.guilds(),
                        "session_id": session_id, "session_type": "normal",
                        "resume_gateway_url": format!("ws://127.0.0.1:{}/ws", sh.port),
                        "shard": d.get("shard").cloned().unwrap_or(json!([0, 1])),
                        "application": {"id": sh.cfg.bot_id.to_string(), "flags": 0},
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
            Some(6) => self.resume(conn, d, token_ok),
            // Presence updates, member requests and the rest need no answer here.
            _ => {}
        }
    }

    fn resume(&mut self, conn: u64, d: &Value, token_ok: bool) {
        self.resumes += 1;
        let session_id = d["session_id"].as_str().unwrap_or("").to_owned();
        let from = d["seq"].as_u64().unwrap_or(0);
        if self.resume_refused || !token_ok || !self.sessions.contains_key(&session_id) {
            self.sessions.remove(&session_id);
            return self.send(conn, Out::Frame(json!({"op": 9, "d": false}).to_string()));
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let previous = session.conn.replace(conn);
        let missed: Vec<String> = session
            .log
            .iter()
            .filter(|(s, _)| *s > from)
            .map(|(_, f)| f.clone())
            .collect();
        session.seq += 1;
        let resumed = json!({"op": 0, "s": session.seq, "t": "RESUMED", "d": {}}).to_string();
        if let Some(old) = previous.and_then(|p| self.conns.get_mut(&p)) {
            old.session = None;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(session_id);
        }
        for frame in missed {
            self.send(conn, Out::Frame(frame));
        }
        self.send(conn, Out::Frame(resumed));
    }

    fn guilds(&self) -> Value {
        let mut ids: Vec<u64> = self
            .channels
            .keys()
            .filter_map(|c| self.guild_of(*c))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        json!(ids
            .iter()
            .map(|g| json!({"id": g.to_string(), "unavailable": true}))
            .collect::<Vec<_>>())
    }
}

/// The intent a dispatch needs, as Discord filters them.
fn required_intent(event: &str, data: &Value) -> Option<u64> {
    let guild = !data["guild_id"].is_null();
    let pick = |in_guild, in_dm| Some(if guild { in_guild } else { in_dm });
    match event {
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" | "MESSAGE_DELETE_BULK" => {
            pick(intents::GUILD_MESSAGES, intents::DIRECT_MESSAGES)
        }
        e if e.starts_with("MESSAGE_REACTION_") => pick(
            intents::GUILD_MESSAGE_REACTIONS,
            intents::DIRECT_MESSAGE_REACTIONS,
        ),
        "TYPING_START" => pick(
            intents::GUILD_MESSAGE_TYPING,
            intents::DIRECT_MESSAGE_TYPING,
        ),
        e if e.starts_with("THREAD_") || e.starts_with("CHANNEL_") => Some(intents::GUILDS),
        _ => None,
    }
}

/// Without MESSAGE_CONTENT, guild messages arrive with empty content, embeds, attachments and
/// components unless they are the bot's own or mention it, as on Discord.
fn strip_content(event: &str, data: &Value, session_intents: u64, bot_id: u64) -> Value {
    let mut d = data.clone();
    let message_event = event == "MESSAGE_CREATE" || event == "MESSAGE_UPDATE";
    let bot = json!(bot_id.to_string());
    let exempt = d["guild_id"].is_null()
        || d["author"]["id"] == bot
        || d["mentions"]
            .as_array()
            .is_some_and(|m| m.iter().any(|u| u["id"] == bot));
    if message_event && session_intents & intents::MESSAGE_CONTENT == 0 && !exempt {
        d["content"] = json!("");
        for field in ["embeds", "attachments", "components"] {
            d[field] = json!([]);
        }
    }
    d
}

// ===================== small helpers =====================

/// The one user template (Discord omits `bot` for humans).
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

fn webhook_author(webhook_id: u64, name: &str) -> Value {
    json!({"id": webhook_id.to_string(), "username": name, "discriminator": "0000", "avatar": null, "bot": true})
}

/// The one guild-member template: the full Member (typing, reactions) with `user`, the partial
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
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn matching(requests: &[Request], method: &str, prefix: &str) -> Vec<Request> {
    requests
        .iter()
        .filter(|r| (method == "*" || r.method == method) && r.path.starts_with(prefix))
        .cloned()
        .collect()
}

/// Accepts path prefixes with or without `/api/v10`.
fn normalise(prefix: &str) -> String {
    prefix.strip_prefix("/api/v10").unwrap_or(prefix).to_owned()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        d.subsec_micros()
    )
}
