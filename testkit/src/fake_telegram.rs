//! A fake Telegram Bot API server for end-to-end tests. It owns the wire protocol (`POST
//! {api_url}/bot{token}/{Method}` answered with `{"ok":..}` envelopes), long-polled getUpdates with
//! offset acknowledgement, the messages the bot sent as the chat shows them now, the API's HTML and
//! length checks, its flood limits, fault injection, a record of every call, and builders for the
//! updates a test injects. The files it holds, uploads and downloads are in `fake_telegram/media.rs`.
//! teloxide runs against it unmodified; `tests/fake_telegram_selftest.rs` proves that the fake and
//! teloxide agree.

mod media;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::{header::CONTENT_TYPE, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::task::AbortHandle;

pub use media::{
    sha256_hex, Download, FileHandle, MediaKind, SentMedia, Upload, DOWNLOAD_LIMIT, PHOTO_LIMIT,
    UPLOAD_LIMIT,
};

/// The longest a getUpdates call is held whatever its `timeout` asks: below teloxide's 17 s client
/// timeout, so a poll never fails on the client side first.
const MAX_POLL: Duration = Duration::from_secs(10);

/// The longest text a message may carry, in UTF-16 units after entity parsing.
const TEXT_LIMIT: usize = 4096;

/// Tags the Bot API accepts with `parse_mode` HTML.
const HTML_TAGS: &str =
    "b strong i em u ins s strike del a code pre blockquote span tg-spoiler tg-emoji";

/// The emoji a bot may react with (Bot API `ReactionTypeEmoji`); anything else is REACTION_INVALID.
const REACTION_EMOJI: &str = "👍 👎 ❤ 🔥 🥰 👏 😁 🤔 🤯 😱 🤬 😢 🎉 🤩 🤮 💩 🙏 👌 🕊 🤡 🥱 🥴 😍 🐳 ❤‍🔥 🌚 🌭 💯 🤣 ⚡ \
    🍌 🏆 💔 🤨 😐 🍓 🍾 💋 🖕 😈 😴 😭 🤓 👻 👨‍💻 👀 🎃 🙈 😇 😨 🤝 ✍ 🤗 🫡 🎅 🎄 ☃ 💅 🤪 🗿 🆒 💘 🙉 🦄 😘 💊 🙊 \
    😎 👾 🤷‍♂ 🤷 🤷‍♀ 😡";

/// Update kinds Telegram only delivers when `allowed_updates` names them.
const OPT_IN_UPDATES: &[&str] = &["chat_member", "message_reaction", "message_reaction_count"];

/// teloxide maps exactly this text to `ApiError::MessageNotModified`.
const NOT_MODIFIED: &str = "Bad Request: message is not modified: specified new message content \
    and reply markup are exactly the same as a current content and reply markup of the message";

const CONFLICT: &str = "Conflict: terminated by other getUpdates request; make sure that only one \
    bot instance is running";

/// One request the fake answered, with the parameters it received (query, form and JSON merged).
#[derive(Clone, Debug)]
pub struct Call {
    /// The method in lowercase, such as `"sendmessage"`.
    pub method: String,
    pub body: Value,
    pub at: Instant,
    pub status: u16,
    /// The `result` on success, the whole error envelope otherwise.
    pub response: Value,
    /// The request's file parts (multipart uploads); its other parts are in `body`.
    pub uploads: Vec<Upload>,
}

/// A fault answered instead of performing the next call of a method (see [`FakeTelegram::fail_next`]).
#[derive(Clone, Debug)]
pub enum Failure {
    /// 429 "Too Many Requests: retry after N" with `parameters.retry_after`.
    RetryAfter(u32),
    /// 400 with this description, prefixed with "Bad Request: " unless it already is.
    BadRequest(String),
    /// 403 with this description, prefixed with "Forbidden: " unless it already is.
    Forbidden(String),
    /// This 5xx status; teloxide sleeps 10 s before it reports one.
    Server(u16),
}

/// Telegram's flood limits, enforced on `send*` methods and text edits once
/// [`FakeTelegram::enforce_limits`] is called. Zero disables a limit. Groups are chats with negative ids.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub per_chat_per_sec: usize,
    pub per_group_per_min: usize,
    pub global_per_sec: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_chat_per_sec: 1,
            per_group_per_min: 20,
            global_per_sec: 30,
        }
    }
}

/// A message the bot sent, as the chat shows it now.
#[derive(Clone, Debug, PartialEq)]
pub struct BotMessage {
    pub message_id: i32,
    /// The text as sent, markup included.
    pub text: String,
    /// The text people see: markup stripped, entities decoded.
    pub plain: String,
    pub parse_mode: Option<String>,
    pub thread_id: Option<i32>,
    pub reply_to: Option<i32>,
    pub date: i64,
    pub edit_date: Option<i64>,
    /// The file of a photo, document, ... message; its caption is `text` and `plain`.
    pub media: Option<SentMedia>,
}

/// A Telegram user for building updates.
#[derive(Clone, Debug)]
pub struct UserRef {
    pub id: i64,
    pub first_name: String,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub is_bot: bool,
}

impl UserRef {
    pub fn new(id: i64, first_name: &str) -> Self {
        UserRef {
            id,
            first_name: first_name.into(),
            last_name: None,
            username: None,
            is_bot: false,
        }
    }

    pub fn last_name(mut self, last_name: &str) -> Self {
        self.last_name = Some(last_name.into());
        self
    }

    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Marks the user as a bot, as Telegram does for other bots in a group.
    pub fn bot(mut self) -> Self {
        self.is_bot = true;
        self
    }

    /// The `User` object as the Bot API sends it.
    pub fn json(&self) -> Value {
        let mut user = json!({"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name});
        put_opt(&mut user, "last_name", &self.last_name);
        put_opt(&mut user, "username", &self.username);
        user
    }
}

/// A chat for building updates: its id and its `Chat` object.
#[derive(Clone, Debug)]
pub struct ChatRef {
    pub id: i64,
    json: Value,
}

impl ChatRef {
    /// A basic group; its id should be negative.
    pub fn group(id: i64, title: &str) -> Self {
        ChatRef {
            id,
            json: json!({"id": id, "type": "group", "title": title}),
        }
    }

    /// A supergroup; its id should look like -100xxxxxxxxxx.
    pub fn supergroup(id: i64, title: &str) -> Self {
        ChatRef {
            id,
            json: json!({"id": id, "type": "supergroup", "title": title}),
        }
    }

    /// The private chat between the bot and `user`, whose id is the user's.
    pub fn private(user: &UserRef) -> Self {
        let mut chat = json!({"id": user.id, "type": "private", "first_name": user.first_name});
        put_opt(&mut chat, "last_name", &user.last_name);
        put_opt(&mut chat, "username", &user.username);
        ChatRef {
            id: user.id,
            json: chat,
        }
    }

    /// Marks a supergroup as a forum (topics enabled).
    pub fn forum(mut self) -> Self {
        self.json["is_forum"] = true.into();
        self
    }

    pub fn json(&self) -> &Value {
        &self.json
    }
}

/// A chat member's status in `chat_member` and `my_chat_member` updates.
#[derive(Clone, Copy, Debug)]
pub enum MemberStatus {
    Member,
    Administrator,
    Left,
    Kicked,
}

impl MemberStatus {
    fn json(self, user: &UserRef) -> Value {
        let mut member = match self {
            MemberStatus::Member => json!({"status": "member"}),
            MemberStatus::Left => json!({"status": "left"}),
            MemberStatus::Kicked => json!({"status": "kicked", "until_date": 0}),
            MemberStatus::Administrator => json!({
                "status": "administrator", "can_be_edited": false, "is_anonymous": false,
                "can_manage_chat": true, "can_change_info": true, "can_delete_messages": true,
                "can_manage_video_chats": true, "can_invite_users": true,
                "can_restrict_members": true, "can_promote_members": false,
                "can_pin_messages": true,
            }),
        };
        member["user"] = user.json();
        member
    }
}

/// The media fields of a message (see [`FakeTelegram::media_message`]).
#[derive(Clone, Debug)]
pub struct Media(Value);

impl Media {
    /// A photo; Telegram sends every size, so this carries a thumbnail and the full size.
    pub fn photo(file_id: &str, file_size: u32) -> Self {
        let size = |id: String, side: u32, bytes: u32| {
            json!({"file_id": id, "file_unique_id": format!("{id}-u"), "file_size": bytes,
                   "width": side, "height": side * 3 / 4})
        };
        Media(json!({"photo": [size(format!("{file_id}-thumb"), 90, 1500),
                               size(file_id.into(), 1280, file_size)]}))
    }

    pub fn document(file_id: &str, file_name: &str, mime_type: &str, file_size: u32) -> Self {
        Media(
            json!({"document": {"file_id": file_id, "file_unique_id": format!("{file_id}-u"),
            "file_name": file_name, "mime_type": mime_type, "file_size": file_size}}),
        )
    }

    pub fn sticker(file_id: &str, emoji: &str) -> Self {
        Media(
            json!({"sticker": {"file_id": file_id, "file_unique_id": format!("{file_id}-u"),
            "type": "regular", "width": 512, "height": 512, "is_animated": false,
            "is_video": false, "emoji": emoji, "file_size": 24_000}}),
        )
    }

    pub fn voice(file_id: &str, duration_secs: u32, file_size: u32) -> Self {
        Media(
            json!({"voice": {"file_id": file_id, "file_unique_id": format!("{file_id}-u"),
            "duration": duration_secs, "mime_type": "audio/ogg", "file_size": file_size}}),
        )
    }
}

/// A `message` (or `edited_message`) update under construction; inject it with
/// [`FakeTelegram::inject`].
#[derive(Clone, Debug)]
pub struct MessageUpdate {
    key: &'static str,
    message: Value,
}

impl MessageUpdate {
    pub fn message_id(&self) -> i32 {
        self.message["message_id"].as_i64().unwrap_or_default() as i32
    }

    /// The `Message` object itself.
    pub fn message(&self) -> &Value {
        &self.message
    }

    /// Makes this a reply to an earlier message. The builder cannot know that message's content,
    /// so the echoed parent carries a placeholder text, as a reply to an unseen message would.
    pub fn reply_to(mut self, parent_id: i32, author: &UserRef) -> Self {
        self.message["reply_to_message"] = json!({
            "message_id": parent_id, "from": author.json(), "chat": self.message["chat"],
            "date": self.message["date"], "text": "…",
        });
        self
    }

    /// Puts the message in a thread (a forum topic when the chat is a forum).
    pub fn thread(mut self, thread_id: i32) -> Self {
        self.message["message_thread_id"] = thread_id.into();
        if self.message["chat"]["is_forum"] == true {
            self.message["is_topic_message"] = true.into();
        }
        self
    }

    pub fn caption(mut self, caption: &str) -> Self {
        self.message["caption"] = caption.into();
        self
    }

    /// The `edited_message` update of this message with a new text (or caption, for media).
    pub fn edited(&self, new_text: &str) -> Self {
        let mut message = self.message.clone();
        let field = if message.get("text").is_some() {
            "text"
        } else {
            "caption"
        };
        message[field] = new_text.into();
        message["edit_date"] = now_unix().into();
        MessageUpdate {
            key: "edited_message",
            message,
        }
    }
}

impl From<MessageUpdate> for Value {
    fn from(update: MessageUpdate) -> Value {
        json!({ update.key: update.message })
    }
}

/// A handle on a running fake; clones share the server, which stops when the last one drops.
#[derive(Clone)]
pub struct FakeTelegram {
    shared: Arc<Shared>,
    server: Arc<Server>,
}

struct Server {
    task: AbortHandle,
    shared: Arc<Shared>,
    url: String,
}

impl Server {
    fn stop(&self) {
        // Aborting the accept loop makes axum close idle connections and finish the open ones;
        // `stopped` makes a held getUpdates answer at once instead of after its timeout.
        self.task.abort();
        self.shared.lock().stopped = true;
        self.shared.changed();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the server task and the handles share.
struct Shared {
    token: String,
    bot: UserRef,
    state: Mutex<State>,
    /// Bumped on every change, so long polls and waiting tests wake up.
    version: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not take every other assertion with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    pending: VecDeque<Value>,
    last_update_id: i64,
    offsets: Vec<i64>,
    allowed_updates: Option<Value>,
    /// Each getUpdates takes a new generation; an older poll that sees a newer one has been
    /// "terminated by other getUpdates request", as on the real server.
    poll_generation: u64,
    chats: HashMap<i64, ChatLog>,
    failures: HashMap<String, VecDeque<Failure>>,
    /// A failure answered once after that many more calls of the method have passed.
    failures_after: HashMap<String, (usize, Failure)>,
    /// Calls performed at once but answered only after this long, per method, in turn.
    delays: HashMap<String, VecDeque<Duration>>,
    forbidden: HashSet<i64>,
    limits: Option<Limits>,
    /// Accepted sends of the last minute, for the sliding flood windows.
    recent_sends: VecDeque<(Instant, i64)>,
    count_429: usize,
    stopped: bool,
    files: media::Files,
}

#[derive(Default)]
struct ChatLog {
    chat: Option<Value>,
    /// Message ids are per chat and shared by people and the bot, as in Telegram.
    last_message_id: i32,
    sent: BTreeMap<i32, BotMessage>,
    /// Messages of other users that were injected, for reply echoes, deletes and reactions.
    injected: HashMap<i32, Value>,
    reactions: HashMap<i32, Vec<String>>,
    /// Forum topics created with createForumTopic, by `message_thread_id`.
    topics: HashSet<i32>,
}

impl ChatLog {
    fn knows(&self, message_id: i32) -> bool {
        self.sent.contains_key(&message_id) || self.injected.contains_key(&message_id)
    }
}

/// An error answer: `{"ok":false,"error_code":..,"description":..,"parameters":..}`.
struct ApiErr {
    code: u16,
    description: String,
    retry_after: Option<u32>,
}

type Answer = Result<Value, ApiErr>;

fn err(code: u16, description: &str) -> ApiErr {
    ApiErr {
        code,
        description: description.into(),
        retry_after: None,
    }
}

fn bad(description: &str) -> ApiErr {
    err(400, description)
}

fn too_many(secs: u32) -> ApiErr {
    ApiErr {
        code: 429,
        description: format!("Too Many Requests: retry after {secs}"),
        retry_after: Some(secs),
    }
}

impl Failure {
    fn into_error(self) -> ApiErr {
        let prefixed = |prefix: &str, desc: String| {
            if desc.starts_with(prefix) {
                desc
            } else {
                format!("{prefix} {desc}")
            }
        };
        match self {
            Failure::RetryAfter(secs) => too_many(secs),
            Failure::BadRequest(desc) => err(400, &prefixed("Bad Request:", desc)),
            Failure::Forbidden(desc) => err(403, &prefixed("Forbidden:", desc)),
            Failure::Server(code) => err(code, "Internal Server Error"),
        }
    }
}

impl FakeTelegram {
    /// Binds 127.0.0.1 on a free port and serves the Bot API for `token` in a spawned task.
    pub async fn start(token: &str) -> FakeTelegram {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Telegram");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        // Like real tokens, the part before the colon is the bot's user id.
        let bot_id = token
            .split(':')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(1);
        let shared = Arc::new(Shared {
            token: token.into(),
            bot: UserRef::new(bot_id, "Hub Bridge")
                .username("hub_bridge_test_bot")
                .bot(),
            state: Mutex::new(State {
                last_update_id: 10_000,
                ..State::default()
            }),
            version: watch::channel(0).0,
        });
        let app = Router::new()
            .fallback(serve)
            .layer(DefaultBodyLimit::max(media::BODY_LIMIT))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let server = Arc::new(Server {
            task: task.abort_handle(),
            shared: shared.clone(),
            url,
        });
        FakeTelegram { shared, server }
    }

    /// The base URL to give `Bot::set_api_url`, such as `http://127.0.0.1:40123`.
    pub fn api_url(&self) -> String {
        self.server.url.clone()
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The bot's own user, as getMe describes it.
    pub fn bot(&self) -> UserRef {
        self.shared.bot.clone()
    }

    /// Stops serving: new connections are refused and a held getUpdates returns empty at once.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Queues `update` (an object without `update_id`) for getUpdates and returns its update_id.
    pub fn inject(&self, update: impl Into<Value>) -> i64 {
        let mut update = update.into();
        assert!(
            update.is_object(),
            "an update must be a JSON object, got {update}"
        );
        let mut st = self.shared.lock();
        st.last_update_id += 1;
        let id = st.last_update_id;
        update["update_id"] = id.into();
        st.remember(&update);
        st.pending.push_back(update);
        drop(st);
        self.shared.changed();
        id
    }

    /// A text message from `from` in `chat`, with the chat's next message id.
    pub fn text_message(&self, chat: &ChatRef, from: &UserRef, text: &str) -> MessageUpdate {
        let mut update = self.message_base(chat, from);
        update.message["text"] = text.into();
        update
    }

    /// A photo, document, sticker or voice message; add a caption with [`MessageUpdate::caption`].
    pub fn media_message(&self, chat: &ChatRef, from: &UserRef, media: Media) -> MessageUpdate {
        let mut update = self.message_base(chat, from);
        merge(&mut update.message, media.0);
        update
    }

    /// The service message Telegram sends when `from` adds `members` (or they join themselves).
    pub fn new_chat_members(
        &self,
        chat: &ChatRef,
        from: &UserRef,
        members: &[UserRef],
    ) -> MessageUpdate {
        let mut update = self.message_base(chat, from);
        update.message["new_chat_members"] = members.iter().map(UserRef::json).collect();
        update
    }

    /// The service message Telegram sends when `member` leaves or is removed by `from`.
    pub fn left_chat_member(
        &self,
        chat: &ChatRef,
        from: &UserRef,
        member: &UserRef,
    ) -> MessageUpdate {
        let mut update = self.message_base(chat, from);
        update.message["left_chat_member"] = member.json();
        update
    }

    /// A `message_reaction` update: `user` changed their reaction to a message from `old` to `new`.
    /// Telegram only delivers it when getUpdates' `allowed_updates` asks for it.
    pub fn reaction(
        &self,
        chat: &ChatRef,
        user: &UserRef,
        message_id: i32,
        old: &[&str],
        new: &[&str],
    ) -> Value {
        let emoji = |list: &[&str]| -> Value {
            list.iter()
                .map(|e| json!({"type": "emoji", "emoji": e}))
                .collect()
        };
        json!({"message_reaction": {"chat": chat.json, "message_id": message_id,
            "user": user.json(), "date": now_unix(), "old_reaction": emoji(old),
            "new_reaction": emoji(new)}})
    }

    /// A `chat_member` update (opt-in through `allowed_updates`): `from` changed `member`'s status.
    pub fn chat_member(
        &self,
        chat: &ChatRef,
        from: &UserRef,
        member: &UserRef,
        old: MemberStatus,
        new: MemberStatus,
    ) -> Value {
        json!({"chat_member": member_change(chat, from, member, old, new)})
    }

    /// A `my_chat_member` update: `from` changed the bot's own status in `chat`.
    pub fn my_chat_member(
        &self,
        chat: &ChatRef,
        from: &UserRef,
        old: MemberStatus,
        new: MemberStatus,
    ) -> Value {
        json!({"my_chat_member": member_change(chat, from, &self.shared.bot, old, new)})
    }

    /// Answers the next call of `method` (case-insensitive) with `failure`; calls queue up.
    pub fn fail_next(&self, method: &str, failure: Failure) {
        let mut st = self.shared.lock();
        st.failures
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back(failure);
    }

    /// Performs the next call of `method` (case-insensitive) at once, but answers it only after
    /// `delay`: a request on the wire while its sender pauses or dies, whose effect (a message
    /// shown) is there before the sender learns of it.
    pub fn delay_next(&self, method: &str, delay: Duration) {
        self.shared
            .lock()
            .delays
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back(delay);
    }

    /// Lets `calls` more calls of `method` pass, then answers the one after with `failure`.
    pub fn fail_after(&self, method: &str, calls: usize, failure: Failure) {
        self.shared
            .lock()
            .failures_after
            .insert(method.to_ascii_lowercase(), (calls, failure));
    }

    /// Makes every call about `chat_id` fail with 403 as if the bot had been removed (or, for a
    /// private chat, blocked), with the description Telegram uses for that kind of chat.
    pub fn forbid_chat(&self, chat_id: i64) {
        self.shared.lock().forbidden.insert(chat_id);
    }

    /// Answers sends over Telegram's flood limits with 429 and the wait until they would fit.
    pub fn enforce_limits(&self, limits: Limits) {
        self.shared.lock().limits = Some(limits);
    }

    /// How many 429 answers were given, from flood limits and [`Failure::RetryAfter`] alike.
    pub fn count_429(&self) -> usize {
        self.shared.lock().count_429
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// Every call of `method` (case-insensitive), whatever its answer.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        let method = method.to_ascii_lowercase();
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// The bot's messages that `chat_id` still shows, in order, with their current text.
    pub fn messages_in(&self, chat_id: i64) -> Vec<BotMessage> {
        let st = self.shared.lock();
        st.chats
            .get(&chat_id)
            .map(|log| log.sent.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The bot's current reaction on a message (`custom:<id>` for custom emoji).
    pub fn reactions_on(&self, chat_id: i64, message_id: i32) -> Vec<String> {
        let st = self.shared.lock();
        st.chats
            .get(&chat_id)
            .and_then(|log| log.reactions.get(&message_id).cloned())
            .unwrap_or_default()
    }

    /// Every `offset` getUpdates received, in order.
    pub fn offsets(&self) -> Vec<i64> {
        self.shared.lock().offsets.clone()
    }

    /// The last `allowed_updates` getUpdates received.
    pub fn allowed_updates(&self) -> Option<Value> {
        self.shared.lock().allowed_updates.clone()
    }

    /// The ids of updates not yet acknowledged (nor dropped by `allowed_updates`).
    pub fn pending_updates(&self) -> Vec<i64> {
        let st = self.shared.lock();
        st.pending
            .iter()
            .filter_map(|u| u["update_id"].as_i64())
            .collect()
    }

    /// Waits until at least `count` calls of `method` succeeded, and returns the successful ones.
    /// Panics after `timeout`, listing the calls seen.
    pub async fn wait_for(&self, method: &str, count: usize, timeout: Duration) -> Vec<Call> {
        let ok = |tg: &FakeTelegram| -> Vec<Call> {
            tg.calls_of(method)
                .into_iter()
                .filter(|c| c.status == 200)
                .collect()
        };
        let what = format!("{count} successful {method} calls");
        self.wait_until(&what, timeout, |tg| ok(tg).len() >= count)
            .await;
        ok(self)
    }

    /// Waits until `done` holds (it is re-checked on every change to the fake). Panics after
    /// `timeout` with `what` and the calls seen.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&FakeTelegram) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.version.subscribe();
        while !done(self) {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                let seen: Vec<String> = self.calls().iter().map(describe_call).collect();
                panic!(
                    "fake Telegram: timed out after {timeout:?} waiting for {what}; calls seen:\n{}",
                    seen.join("\n")
                );
            }
        }
    }

    fn message_base(&self, chat: &ChatRef, from: &UserRef) -> MessageUpdate {
        let message_id = {
            let mut st = self.shared.lock();
            let log = st.chats.entry(chat.id).or_default();
            log.last_message_id += 1;
            log.last_message_id
        };
        let message = json!({"message_id": message_id, "from": from.json(), "chat": chat.json,
            "date": now_unix()});
        MessageUpdate {
            key: "message",
            message,
        }
    }
}

fn member_change(
    chat: &ChatRef,
    from: &UserRef,
    member: &UserRef,
    old: MemberStatus,
    new: MemberStatus,
) -> Value {
    json!({"chat": chat.json, "from": from.json(), "date": now_unix(),
        "old_chat_member": old.json(member), "new_chat_member": new.json(member)})
}

fn describe_call(call: &Call) -> String {
    let body = call.body.to_string();
    let body: String = body.chars().take(200).collect();
    format!("  {} -> {} {body}", call.method, call.status)
}

/// The single handler: every path is `/bot{token}/{method}` or a download,
/// `/file/bot{token}/{file_path}`.
async fn serve(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    if let Some(rest) = uri.path().strip_prefix("/file/") {
        return media::serve_file(&shared, rest);
    }
    let Some((token, method)) = uri
        .path()
        .strip_prefix("/bot")
        .and_then(|p| p.split_once('/'))
    else {
        // The real server answers unknown paths like this, and teloxide reads it as InvalidToken.
        return answer(Err(err(404, "Not Found"))).1;
    };
    let method = method.to_ascii_lowercase();
    let mut params = Map::new();
    let parts = parse_params(&uri, &headers, body, &mut params).await;
    let uploads = parts.as_ref().map(media::uploads).unwrap_or_default();
    let result = match parts {
        _ if token != shared.token => Err(err(401, "Unauthorized")),
        Err(e) => Err(e),
        // The front of api.telegram.org refuses an oversized upload before the Bot API sees it.
        Ok(parts) => match media::check_upload_size(&parts) {
            Ok(()) => dispatch(&shared, &method, &params, &parts).await,
            Err(e) => Err(e),
        },
    };
    let (call_response, response) = answer(result);
    let status = response.status().as_u16();
    let mut st = shared.lock();
    if status == 429 {
        st.count_429 += 1;
    }
    st.calls.push(Call {
        method,
        body: Value::Object(params),
        at,
        status,
        response: call_response,
        uploads,
    });
    drop(st);
    shared.changed();
    response
}

/// The envelope for a result, and what the call record keeps of it.
fn answer(result: Answer) -> (Value, Response) {
    match result {
        Ok(result) => (
            result.clone(),
            Json(json!({"ok": true, "result": result})).into_response(),
        ),
        Err(e) => {
            let mut body = json!({"ok": false, "error_code": e.code, "description": e.description});
            if let Some(secs) = e.retry_after {
                body["parameters"] = json!({"retry_after": secs});
            }
            let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_REQUEST);
            (body.clone(), (status, Json(body)).into_response())
        }
    }
}

/// Merges query, form, multipart and JSON parameters into `params`; returns the file parts of a
/// multipart body.
async fn parse_params(
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    params: &mut Map<String, Value>,
) -> Result<media::Parts, ApiErr> {
    let add_form = |bytes: &[u8], params: &mut Map<String, Value>| {
        for (key, value) in url::form_urlencoded::parse(bytes) {
            params.insert(key.into_owned(), form_value(&value));
        }
    };
    if let Some(query) = uri.query() {
        add_form(query.as_bytes(), params);
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        return media::parse_multipart(content_type, body, params).await;
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        add_form(&body, params);
    } else if let Ok(Value::Object(json)) = serde_json::from_slice(&body) {
        params.extend(json);
    }
    Ok(media::Parts::default())
}

/// A form or multipart value; one that looks like JSON is parsed, as the real server does for
/// `reply_parameters` and friends.
fn form_value(value: &str) -> Value {
    Some(value)
        .filter(|v| v.starts_with(['{', '[']))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_else(|| value.into())
}

async fn dispatch(
    shared: &Shared,
    method: &str,
    p: &Map<String, Value>,
    parts: &media::Parts,
) -> Answer {
    let delay = shared
        .lock()
        .delays
        .get_mut(method)
        .and_then(VecDeque::pop_front);
    let answer = perform(shared, method, p, parts).await;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer
}

async fn perform(
    shared: &Shared,
    method: &str,
    p: &Map<String, Value>,
    parts: &media::Parts,
) -> Answer {
    let failure = {
        let mut st = shared.lock();
        let queued = st.failures.get_mut(method).and_then(VecDeque::pop_front);
        let due = match st.failures_after.get_mut(method) {
            Some((0, _)) => st.failures_after.remove(method).map(|(_, failure)| failure),
            Some((calls, _)) => {
                *calls -= 1;
                None
            }
            None => None,
        };
        queued.or(due)
    };
    if let Some(failure) = failure {
        return Err(failure.into_error());
    }
    if method == "getupdates" {
        return get_updates(shared, p).await;
    }
    shared.lock().handle(&shared.bot, method, p, parts)
}

/// Long polling: answers as soon as an update is pending, or empty after `timeout` seconds.
async fn get_updates(shared: &Shared, p: &Map<String, Value>) -> Answer {
    let limit = int_param(p, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let timeout = Duration::from_secs(int_param(p, "timeout").unwrap_or(0).max(0) as u64);
    let deadline = tokio::time::Instant::now() + timeout.min(MAX_POLL);
    let mut changes = shared.version.subscribe();
    let generation = {
        let mut st = shared.lock();
        if let Some(offset) = int_param(p, "offset") {
            st.offsets.push(offset);
            st.acknowledge(offset);
        }
        if let Some(allowed) = p.get("allowed_updates") {
            st.allowed_updates = Some(allowed.clone());
        }
        st.poll_generation += 1;
        st.poll_generation
    };
    // Wakes an older poll so that it is terminated now rather than at its timeout.
    shared.changed();
    loop {
        {
            let mut st = shared.lock();
            if st.poll_generation != generation {
                return Err(err(409, CONFLICT));
            }
            if st.stopped {
                return Ok(json!([]));
            }
            st.drop_unwanted();
            let batch: Vec<Value> = st.pending.iter().take(limit).cloned().collect();
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(Value::Array(batch));
            }
        }
        // On timeout the loop runs once more and answers with whatever is there.
        let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
    }
}

impl State {
    /// Forgets updates below `offset` for good; a negative offset keeps only the last -offset.
    fn acknowledge(&mut self, offset: i64) {
        if offset > 0 {
            self.pending
                .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
        } else if offset < 0 {
            let keep = offset.unsigned_abs() as usize;
            while self.pending.len() > keep {
                self.pending.pop_front();
            }
        }
    }

    /// Drops updates of kinds the current `allowed_updates` excludes: Telegram never queues them.
    fn drop_unwanted(&mut self) {
        let named: Vec<String> = match &self.allowed_updates {
            Some(Value::Array(kinds)) => kinds
                .iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        self.pending.retain(|update| {
            let kind = update
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "update_id"));
            match kind {
                Some(kind) if named.is_empty() => !OPT_IN_UPDATES.contains(&kind.as_str()),
                Some(kind) => named.contains(kind),
                None => true,
            }
        });
    }

    /// Notes the chat and message an injected update carries, as Telegram knows them.
    fn remember(&mut self, update: &Value) {
        let Some((kind, body)) = update
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| *k != "update_id"))
        else {
            return;
        };
        let Some(chat_id) = body["chat"]["id"].as_i64() else {
            return;
        };
        let log = self.chats.entry(chat_id).or_default();
        log.chat.get_or_insert_with(|| body["chat"].clone());
        let is_message = matches!(
            kind.as_str(),
            "message" | "edited_message" | "channel_post" | "edited_channel_post"
        );
        if is_message {
            if let Some(id) = body["message_id"].as_i64() {
                log.last_message_id = log.last_message_id.max(id as i32);
                log.injected.insert(id as i32, body.clone());
            }
        }
    }

    /// Every method but getUpdates, under the lock.
    fn handle(
        &mut self,
        bot: &UserRef,
        method: &str,
        p: &Map<String, Value>,
        parts: &media::Parts,
    ) -> Answer {
        if method == "getfile" {
            return self.get_file(p);
        }
        if method == "getme" {
            let mut me = bot.json();
            merge(
                &mut me,
                json!({"can_join_groups": true, "can_read_all_group_messages": true,
                "supports_inline_queries": false, "can_connect_to_business": false,
                "has_main_web_app": false}),
            );
            return Ok(me);
        }
        let Some(chat_value) = p.get("chat_id") else {
            let needs_chat = matches!(
                method,
                "sendmessage"
                    | "editmessagetext"
                    | "editmessagecaption"
                    | "sendphoto"
                    | "senddocument"
                    | "sendaudio"
                    | "sendvoice"
                    | "sendvideo"
                    | "sendanimation"
                    | "sendvideonote"
                    | "sendsticker"
                    | "sendmediagroup"
                    | "deletemessage"
                    | "setmessagereaction"
                    | "sendchataction"
                    | "getchat"
                    | "createforumtopic"
            );
            return if needs_chat {
                Err(bad("Bad Request: chat_id is empty"))
            } else {
                Ok(true.into())
            };
        };
        // Usernames (`@channel`) are not modelled: the fake knows chats by id only.
        let chat = match chat_value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| bad("Bad Request: chat not found"))?;
        if self.forbidden.contains(&chat) {
            return Err(err(403, kicked_description(&self.chat_json(chat))));
        }
        // Edits count too: Telegram floods a group that gets more than ~20 messages and edits a
        // minute, which is what a streamed answer edited too often runs into.
        let flood_limited = (method.starts_with("send") && method != "sendchataction")
            || method == "copymessage"
            || method == "forwardmessage"
            || method == "editmessagetext"
            || method == "editmessagecaption";
        let now = Instant::now();
        if flood_limited {
            self.check_limits(chat, now)?;
        }
        if let Some(result) = self.handle_media(bot, method, chat, p, parts) {
            if flood_limited {
                // Every message of an album counts, as Telegram sends each one.
                let sent = result
                    .as_ref()
                    .map_or(0, |r| r.as_array().map_or(1, Vec::len));
                for _ in 0..sent {
                    self.recent_sends.push_back((now, chat));
                }
            }
            return result;
        }
        let result = match method {
            "sendmessage" => self.send_message(bot, chat, p),
            "editmessagetext" => self.edit_message_text(bot, chat, p),
            "deletemessage" => self.delete_message(chat, p),
            "deletemessages" => {
                let ids = p
                    .get("message_ids")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let log = self.chats.entry(chat).or_default();
                for id in ids.iter().filter_map(Value::as_i64) {
                    log.sent.remove(&(id as i32));
                    log.injected.remove(&(id as i32));
                }
                Ok(true.into())
            }
            "setmessagereaction" => self.set_reaction(chat, p),
            "createforumtopic" => self.create_forum_topic(chat, p),
            "getchat" => {
                let mut info = self.chat_json(chat);
                merge(
                    &mut info,
                    json!({"max_reaction_count": 11, "accepted_gift_types": {
                    "unlimited_gifts": false, "limited_gifts": false, "unique_gifts": false,
                    "premium_subscription": false}}),
                );
                Ok(info)
            }
            _ => Ok(true.into()),
        };
        if flood_limited && result.is_ok() {
            self.recent_sends.push_back((now, chat));
        }
        result
    }

    /// Sliding windows over accepted sends; over a limit, 429 with the wait until one more fits.
    fn check_limits(&mut self, chat: i64, now: Instant) -> Result<(), ApiErr> {
        let Some(limits) = self.limits else {
            return Ok(());
        };
        let minute = Duration::from_secs(60);
        while self
            .recent_sends
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= minute)
        {
            self.recent_sends.pop_front();
        }
        let wait = |span: Duration, limit: usize, in_scope: &dyn Fn(i64) -> bool| -> Option<u32> {
            let times: Vec<Instant> = self
                .recent_sends
                .iter()
                .filter(|(t, c)| now.duration_since(*t) < span && in_scope(*c))
                .map(|(t, _)| *t)
                .collect();
            if limit == 0 || times.len() < limit {
                return None;
            }
            // The send that has to leave the window before another one fits.
            let blocking = times[times.len() - limit];
            let left = span - now.duration_since(blocking);
            Some((left.as_secs_f64().ceil() as u32).max(1))
        };
        let second = Duration::from_secs(1);
        let retry_after = [
            wait(second, limits.global_per_sec, &|_| true),
            wait(second, limits.per_chat_per_sec, &|c| c == chat),
            if chat < 0 {
                wait(minute, limits.per_group_per_min, &|c| c == chat)
            } else {
                None
            },
        ]
        .into_iter()
        .flatten()
        .max();
        match retry_after {
            Some(secs) => Err(too_many(secs)),
            None => Ok(()),
        }
    }

    fn send_message(&mut self, bot: &UserRef, chat: i64, p: &Map<String, Value>) -> Answer {
        self.check_topic(chat, p)?;
        let text = str_param(p, "text").unwrap_or_default();
        let parse_mode = str_param(p, "parse_mode");
        let plain = check_text(&text, parse_mode.as_deref(), false)?;
        let reply_to = self.reply_target(chat, p)?;
        let log = self.chats.entry(chat).or_default();
        log.last_message_id += 1;
        let message = BotMessage {
            message_id: log.last_message_id,
            text,
            plain,
            parse_mode,
            thread_id: int_param(p, "message_thread_id").map(|id| id as i32),
            reply_to,
            date: now_unix(),
            edit_date: None,
            media: None,
        };
        log.sent.insert(message.message_id, message.clone());
        Ok(self.message_json(bot, chat, &message, true))
    }

    /// The message a send replies to (`reply_parameters` or the older `reply_to_message_id`); an
    /// unknown one fails the send unless `allow_sending_without_reply` says to send it anyway.
    fn reply_target(&mut self, chat: i64, p: &Map<String, Value>) -> Result<Option<i32>, ApiErr> {
        let reply = p.get("reply_parameters");
        let reply_to = reply
            .and_then(|r| int_value(&r["message_id"]))
            .or_else(|| int_param(p, "reply_to_message_id"))
            .map(|id| id as i32);
        let allow_without_reply = reply
            .and_then(|r| r.get("allow_sending_without_reply"))
            .or_else(|| p.get("allow_sending_without_reply"))
            .is_some_and(|v| v == true || v == "true");
        let log = self.chats.entry(chat).or_default();
        match reply_to {
            Some(id) if !log.knows(id) && !allow_without_reply => {
                Err(bad("Bad Request: message to be replied not found"))
            }
            Some(id) if !log.knows(id) => Ok(None),
            known => Ok(known),
        }
    }

    fn edit_message_text(&mut self, bot: &UserRef, chat: i64, p: &Map<String, Value>) -> Answer {
        let Some(id) = int_param(p, "message_id").map(|id| id as i32) else {
            return if p.contains_key("inline_message_id") {
                Ok(true.into())
            } else {
                Err(bad("Bad Request: message identifier is not specified"))
            };
        };
        let text = str_param(p, "text").unwrap_or_default();
        let parse_mode = str_param(p, "parse_mode");
        let log = self.chats.entry(chat).or_default();
        let Some(message) = log.sent.get_mut(&id) else {
            return Err(bad(if log.injected.contains_key(&id) {
                "Bad Request: message can't be edited"
            } else {
                "Bad Request: message to edit not found"
            }));
        };
        if message.media.is_some() {
            return Err(bad("Bad Request: there is no text in the message to edit"));
        }
        let plain = check_text(&text, parse_mode.as_deref(), true)?;
        // Telegram compares the rendered text and entities; comparing the markup is close enough
        // for a bridge that re-renders the same source.
        if message.text == text && message.parse_mode == parse_mode {
            return Err(bad(NOT_MODIFIED));
        }
        message.text = text;
        message.plain = plain;
        message.parse_mode = parse_mode;
        message.edit_date = Some(now_unix());
        let message = message.clone();
        Ok(self.message_json(bot, chat, &message, true))
    }

    fn delete_message(&mut self, chat: i64, p: &Map<String, Value>) -> Answer {
        let id = int_param(p, "message_id").unwrap_or_default() as i32;
        let log = self.chats.entry(chat).or_default();
        if log.sent.remove(&id).is_some() || log.injected.remove(&id).is_some() {
            Ok(true.into())
        } else {
            Err(bad("Bad Request: message to delete not found"))
        }
    }

    /// Bots may set one reaction per message, from Telegram's fixed emoji list.
    fn set_reaction(&mut self, chat: i64, p: &Map<String, Value>) -> Answer {
        let id = int_param(p, "message_id").unwrap_or_default() as i32;
        let reactions = p
            .get("reaction")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if reactions.len() > 1 {
            return Err(bad("Bad Request: REACTIONS_TOO_MANY"));
        }
        let mut names = Vec::new();
        for reaction in &reactions {
            let name = match reaction["type"].as_str() {
                Some("emoji") => reaction["emoji"]
                    .as_str()
                    .filter(|e| REACTION_EMOJI.split(' ').any(|allowed| allowed == *e))
                    .map(String::from),
                Some("custom_emoji") => reaction["custom_emoji_id"]
                    .as_str()
                    .map(|id| format!("custom:{id}")),
                Some("paid") => Some("paid".into()),
                _ => None,
            };
            names.push(name.ok_or_else(|| bad("Bad Request: REACTION_INVALID"))?);
        }
        let log = self.chats.entry(chat).or_default();
        if !log.knows(id) {
            return Err(bad("Bad Request: MESSAGE_ID_INVALID"));
        }
        log.reactions.insert(id, names);
        Ok(true.into())
    }

    /// The chat as an update showed it, or a plausible one derived from the id's shape.
    fn chat_json(&self, chat: i64) -> Value {
        if let Some(known) = self.chats.get(&chat).and_then(|log| log.chat.clone()) {
            return known;
        }
        match chat {
            id if id <= -1_000_000_000_000 => {
                json!({"id": id, "type": "supergroup", "title": format!("Chat {id}")})
            }
            id if id < 0 => json!({"id": id, "type": "group", "title": format!("Chat {id}")}),
            id => json!({"id": id, "type": "private", "first_name": format!("User {id}")}),
        }
    }

    /// A bot message as the API returns it; `with_reply` echoes the parent (one level, as Telegram).
    fn message_json(&self, bot: &UserRef, chat: i64, m: &BotMessage, with_reply: bool) -> Value {
        let mut v = json!({"message_id": m.message_id, "from": bot.json(), "chat": self.chat_json(chat),
            "date": m.date});
        match &m.media {
            Some(media) => media::media_json(&mut v, m, media),
            None => v["text"] = m.plain.as_str().into(),
        }
        if let Some(thread) = m.thread_id {
            v["message_thread_id"] = thread.into();
        }
        if let Some(edited) = m.edit_date {
            v["edit_date"] = edited.into();
        }
        let log = self.chats.get(&chat);
        let parent = m.reply_to.filter(|_| with_reply).and_then(|id| {
            let log = log?;
            match log.sent.get(&id) {
                Some(sent) => Some(self.message_json(bot, chat, sent, false)),
                None => log.injected.get(&id).cloned().map(|mut parent| {
                    if let Some(fields) = parent.as_object_mut() {
                        fields.remove("reply_to_message");
                    }
                    parent
                }),
            }
        });
        if let Some(parent) = parent {
            v["reply_to_message"] = parent;
        }
        v
    }
}

/// The 403 description Telegram gives for a chat the bot was removed from (or blocked in).
fn kicked_description(chat: &Value) -> &'static str {
    match chat["type"].as_str() {
        Some("supergroup") => "Forbidden: bot was kicked from the supergroup chat",
        Some("channel") => "Forbidden: bot was kicked from the channel chat",
        Some("group") => "Forbidden: bot was kicked from the group chat",
        _ => "Forbidden: bot was blocked by the user",
    }
}

/// Checks a message text like the Bot API and returns what people would see.
fn check_text(text: &str, parse_mode: Option<&str>, edit: bool) -> Result<String, ApiErr> {
    let plain = match parse_mode.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => text.to_owned(),
        Some("html") => {
            parse_html(text).map_err(|e| bad(&format!("Bad Request: can't parse entities: {e}")))?
        }
        // Markdown is not checked: the bridge is expected to send HTML.
        Some("markdown") | Some("markdownv2") => text.to_owned(),
        Some(_) => return Err(bad("Bad Request: unsupported parse_mode")),
    };
    // Telegram trims the text before it checks and keeps it.
    let shown = plain.trim().to_owned();
    if shown.is_empty() {
        return Err(bad("Bad Request: message text is empty"));
    }
    if shown.encode_utf16().count() > TEXT_LIMIT {
        // Edits report the limit differently; teloxide knows both texts.
        return Err(bad(if edit {
            "Bad Request: MESSAGE_TOO_LONG"
        } else {
            "Bad Request: message is too long"
        }));
    }
    Ok(shown)
}

/// Parses Telegram's HTML subset like tdlib does (error texts included) and returns the plain
/// text. Unlike tdlib, a `&` that starts no known entity is an error here rather than a literal
/// `&`, so that a bridge which forgets to escape `&` is caught.
fn parse_html(html: &str) -> Result<String, String> {
    let b = html.as_bytes();
    let mut text = String::new();
    let mut open: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'&' => {
                let (ch, len) = decode_entity(&html[i..])
                    .ok_or_else(|| format!("Unsupported HTML entity at byte offset {i}"))?;
                text.push(ch);
                i += len;
            }
            b'<' if b.get(i + 1) == Some(&b'/') => {
                let end = html[i..]
                    .find('>')
                    .ok_or_else(|| format!("Unclosed end tag at byte offset {i}"))?
                    + i;
                let name = html[i + 2..end].trim().to_ascii_lowercase();
                let expected = open
                    .pop()
                    .ok_or_else(|| format!("Unexpected end tag at byte offset {i}"))?;
                if !name.is_empty() && name != expected {
                    return Err(format!(
                        "Unmatched end tag at byte offset {i}, expected \"</{expected}>\", found \"</{name}>\""
                    ));
                }
                i = end + 1;
            }
            b'<' => {
                let (name, next) = parse_start_tag(html, i)?;
                open.push(name);
                i = next;
            }
            _ => {
                let ch = html[i..].chars().next().expect("in bounds");
                text.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    match open.last() {
        Some(tag) => Err(format!(
            "Can't find end tag corresponding to start tag \"{tag}\""
        )),
        None => Ok(text),
    }
}

/// Parses `<name attr="value" ...>` starting at `begin`; returns the tag name and the next offset.
fn parse_start_tag(html: &str, begin: usize) -> Result<(String, usize), String> {
    let b = html.as_bytes();
    let unclosed = || format!("Unclosed start tag at byte offset {begin}");
    let scan = |mut i: usize, stop: &dyn Fn(u8) -> bool| {
        while i < b.len() && !stop(b[i]) {
            i += 1;
        }
        i
    };
    let mut i = scan(begin + 1, &|c| c.is_ascii_whitespace() || c == b'>');
    if i >= b.len() {
        return Err(unclosed());
    }
    let name = html[begin + 1..i].to_ascii_lowercase();
    if !HTML_TAGS.split(' ').any(|tag| tag == name) {
        return Err(format!(
            "Unsupported start tag \"{name}\" at byte offset {begin}"
        ));
    }
    let mut class = None;
    loop {
        i = scan(i, &|c| !c.is_ascii_whitespace());
        match b.get(i) {
            None => return Err(unclosed()),
            Some(b'>') => break,
            Some(_) => {}
        }
        let attr_start = i;
        i = scan(i, &|c| c.is_ascii_whitespace() || c == b'=' || c == b'>');
        let attr = html[attr_start..i].to_ascii_lowercase();
        i = scan(i, &|c| !c.is_ascii_whitespace());
        if b.get(i) != Some(&b'=') {
            // `<blockquote expandable>` is the one attribute that needs no value.
            if name == "blockquote" && attr == "expandable" {
                continue;
            }
            return Err(format!(
                "Expected equal sign in declaration of an attribute of the tag \"{name}\" at byte offset {begin}"
            ));
        }
        i = scan(i + 1, &|c| !c.is_ascii_whitespace());
        let value = match b.get(i) {
            Some(&quote @ (b'"' | b'\'')) => {
                let end = scan(i + 1, &|c| c == quote);
                if end >= b.len() {
                    return Err(unclosed());
                }
                let value = &html[i + 1..end];
                i = end + 1;
                value
            }
            _ => {
                let end = scan(i, &|c| {
                    !(c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
                });
                let value = &html[i..end];
                i = end;
                value
            }
        };
        if attr == "class" {
            class = Some(value.to_owned());
        }
    }
    if name == "span" && class.as_deref() != Some("tg-spoiler") {
        return Err(format!(
            "Tag \"span\" must have class \"tg-spoiler\" at byte offset {begin}"
        ));
    }
    Ok((name, i + 1))
}

/// Decodes `&lt;`, `&gt;`, `&amp;`, `&quot;` and numeric entities at the start of `s`.
fn decode_entity(s: &str) -> Option<(char, usize)> {
    // Entities are short; looking further would make a text full of `&` quadratic.
    let semi = s.bytes().take(12).position(|c| c == b';')?;
    let name = &s[1..semi];
    let ch = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        _ => {
            let code = match name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => name.strip_prefix('#')?.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((ch, semi + 1))
}

fn int_value(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn int_param(p: &Map<String, Value>, key: &str) -> Option<i64> {
    p.get(key).and_then(int_value)
}

fn str_param(p: &Map<String, Value>, key: &str) -> Option<String> {
    match p.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn put_opt(object: &mut Value, key: &str, value: &Option<String>) {
    if let Some(value) = value {
        object[key] = value.as_str().into();
    }
}

fn merge(object: &mut Value, fields: Value) {
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Forum topics
// ---------------------------------------------------------------------------------------------

/// `ForumTopic.icon_color` Telegram picks when none is asked for (0x6FB9F0, blue).
const TOPIC_ICON_COLOR: u32 = 7_322_096;

impl FakeTelegram {
    /// Tells the fake about a chat before any update shows it, so that getChat and the chat in
    /// sent messages describe it (a forum, for instance) as Telegram would.
    pub fn know_chat(&self, chat: &ChatRef) {
        self.shared.lock().chats.entry(chat.id).or_default().chat = Some(chat.json.clone());
    }
}

impl State {
    /// createForumTopic: only in forums, with a 1-128 char name; the topic's id is the id of the
    /// service message that opens it, as in Telegram.
    fn create_forum_topic(&mut self, chat: i64, p: &Map<String, Value>) -> Answer {
        if self.chat_json(chat)["is_forum"] != true {
            return Err(bad("Bad Request: the chat is not a forum"));
        }
        let name = str_param(p, "name").unwrap_or_default();
        if name.is_empty() || name.encode_utf16().count() > 128 {
            return Err(bad("Bad Request: TOPIC_NAME_INVALID"));
        }
        let log = self.chats.entry(chat).or_default();
        log.last_message_id += 1;
        let thread_id = log.last_message_id;
        log.topics.insert(thread_id);
        Ok(json!({"message_thread_id": thread_id, "name": name, "icon_color": TOPIC_ICON_COLOR}))
    }

    /// In a forum, `message_thread_id` must name a topic.
    fn check_topic(&self, chat: i64, p: &Map<String, Value>) -> Result<(), ApiErr> {
        let Some(thread) = int_param(p, "message_thread_id") else {
            return Ok(());
        };
        let known = self
            .chats
            .get(&chat)
            .is_some_and(|log| log.topics.contains(&(thread as i32)));
        if self.chat_json(chat)["is_forum"] == true && !known {
            return Err(bad("Bad Request: message thread not found"));
        }
        Ok(())
    }
}
