//! What a platform implements to plug into the relay engine: the [`Connector`] trait, what it
//! declares about itself ([`Capabilities`]), and the platform-neutral names the engine and the
//! connectors talk in ([`Chat`], [`PartId`], [`ThreadRef`], [`Place`], [`Look`]).
//!
//! The connector owns only its platform: its API calls as primitives (one part sent, edited or
//! deleted, one reaction set, one typing indicator, one thread opened), its rendering of a hub
//! message into its format and the classification of its errors into [`SendError`]. Which chats
//! an event goes to, in what order, what was already shown, how a message's parts change on an
//! edit, and what happens when a call fails for good are the engine's.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::event::{ContentBlock, Origin};
use crate::outbox::SendError;
use crate::relay::budget::FloodBudget;

/// A platform chat as the connector spells it (`-1001234`, `123456789012345678`, `dm:42`). It
/// names the chat's ordered outbox, so it is stable across releases.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Chat(pub String);

impl std::fmt::Display for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One platform message showing (a part of) a hub message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartId(pub String);

/// A platform thread inside a chat: a Telegram forum topic, a Discord thread channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ThreadRef(pub String);

/// Where a call goes: the chat, the link it goes through, and the thread inside the chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub chat: Chat,
    /// The hub channel of the link the relay goes through; none for direct messages and the
    /// bridge's announcements. A connector with per-link settings (Discord's webhooks) reads it.
    pub hub_channel: Option<String>,
    pub thread: Option<ThreadRef>,
}

impl Place {
    /// Where something happened on the platform: a chat and the thread in it. The engine adds
    /// the link when it relays through one.
    pub fn on_platform(chat: Chat, thread: Option<ThreadRef>) -> Self {
        Self {
            chat,
            hub_channel: None,
            thread,
        }
    }
}

/// Who a relayed message is from, as the platforms show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// The display name; for a person, already marked with their platform (SPEC section 9).
    pub name: String,
    /// An emoji shown before the name (Telegram).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// An image URL (Discord webhook avatar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// A person relayed from a platform: their message pings nobody.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub person: bool,
}

/// How a relayed message looks apart from its text: kept per platform and hub message for as long
/// as the message map, so that an edit, which carries only the new text, renders the same way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Look {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<ContentBlock>,
    /// A short plain excerpt of the text, to name a thread opened on this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// The hub thread the message belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// What the connector put before the text when it first rendered the message in one chat
    /// (Discord: the bot's `**name**: `, or the quote of the message a webhook post answers),
    /// kept so an edit shows it again. It differs from chat to chat, so the engine keeps it per
    /// chat ([`Records::look_in`](crate::relay::Records::look_in)), never in the shared look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The parts in this chat that show only files (uploads without the text as caption): an
    /// edit leaves them alone, a delete removes them too. Kept per chat, like the header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_parts: Vec<PartId>,
}

/// The platform message a message answers, and the thread it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub id: PartId,
    pub thread: Option<ThreadRef>,
}

/// A message to render.
#[derive(Debug, Clone, Copy)]
pub struct Rendering<'a> {
    pub look: &'a Look,
    pub text: &'a str,
    /// The platform message it answers, when this chat shows it (in this place or another).
    pub reply_to: Option<&'a Parent>,
    /// For an edit, the first part already shown (the header is in `look`, except for messages
    /// an earlier release showed, which a connector may read back from the platform).
    pub edit_of: Option<&'a PartId>,
}

/// A rendered message: its parts, and the header to keep in its [`Look`].
#[derive(Debug, Clone)]
pub struct Rendered<P> {
    pub parts: Vec<P>,
    pub header: Option<String>,
    /// Whether the first part should answer `reply_to` natively, which the engine does only
    /// within one place (false when the connector quoted it instead, as a Discord webhook must).
    pub native_reply: bool,
}

/// What an edit of one part found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edited {
    Done,
    /// The platform no longer has the part; it leaves the message's map.
    Gone,
}

/// A change to the reactions the bot shows on a part, with what it showed before and shows after
/// (at most [`Capabilities::reactions_per_message`], the most recent first kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionChange {
    pub emoji: String,
    pub add: bool,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// What files a platform takes as uploads (SPEC section 5, "Media").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// The largest file uploaded; larger ones are shown as their name and size.
    pub max_file_bytes: u64,
    /// The largest picture shown as a picture; larger ones go as files.
    pub max_image_bytes: u64,
    /// The most files one message carries.
    pub files_per_message: usize,
}

/// A file to upload, read whole (one message's files at a time are in memory; cloning shares
/// the bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Upload {
    pub name: String,
    pub content_type: Option<String>,
    pub bytes: bytes::Bytes,
    /// Shown as a picture (an image under the platform's picture limit), else as a file.
    pub as_image: bool,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("name", &self.name)
            .field("content_type", &self.content_type)
            .field("bytes", &self.bytes.len())
            .field("as_image", &self.as_image)
            .finish()
    }
}

/// What a platform can do, declared once by its connector.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The most reactions the bot can show on one message (Telegram bots: 1).
    pub reactions_per_message: usize,
    /// How often a typing indicator must be sent again to stay visible.
    pub typing_refresh: Duration,
    /// Whether a hub thread whose `thread.create` this chat missed is opened when its first
    /// message arrives (Discord: a thread on the parent). Otherwise the message replies to the
    /// thread's parent.
    pub open_threads_on_demand: bool,
    /// Whether the platform's threads are chats of their own that people open (Discord): a
    /// person's message in one is a `thread.message` that answers, by default, the message the
    /// thread started on, and a thread the hub does not know yet becomes a hub thread
    /// (`thread.create`) with its first message. Otherwise (Telegram's forum topics) a message
    /// in a topic the bridge opened is a `channel.message` in that topic's hub thread.
    pub threads_are_chats: bool,
}

/// A platform, as the relay engine drives it.
pub trait Connector: Send + Sync + 'static {
    /// One rendered part, as the outbox keeps it (with any progress the connector needs to resume
    /// a part that takes several calls).
    type Part: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// A short lowercase name (`telegram`): metrics, logs, store keys, `/readyz`.
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> &Capabilities;

    /// The origin a chat stamps on what it publishes (`telegram:-100123`), so nothing is relayed
    /// back to where it came from.
    fn origin(&self, chat: &Chat) -> Origin {
        Origin::chat(self.name(), &chat.0)
    }

    /// The bot's flood budget, which the connector draws from for every request it makes; the
    /// engine draws typing from it (only free slots) and pauses a chat in it after a 429. `None`
    /// (the default): the platform paces itself.
    fn budget(&self) -> Option<&FloodBudget> {
        None
    }

    /// How far apart edits of one message go out in `chat` (SPEC section 5: a streamed answer is
    /// edited in place about once per cadence, whatever the agent's pace).
    fn edit_cadence(&self, chat: &Chat) -> Duration {
        let _ = chat;
        Duration::from_secs(1)
    }

    /// The chat a person's direct messages go to; `None` when `user_id` cannot be a person's
    /// private chat (SPEC section 9: a direct message never reaches a group).
    fn private_chat(&self, user_id: &str) -> Option<Chat>;

    /// The chat under which the message map keeps what was shown in `thread` of `place`. The
    /// default is the chat itself; a platform whose threads are chats of their own (Discord)
    /// names the thread.
    fn map_chat(&self, place: &Place) -> String {
        place.chat.0.clone()
    }

    /// Reads a job an earlier release of this platform's bridge left in its outbox, in that
    /// release's own shape, so that an upgrade loses no backlog. `None`: not such a job (it is
    /// then dead-lettered as it was stored).
    fn upgrade_job(stored: serde_json::Value) -> Option<crate::relay::Job<Self::Part>>
    where
        Self: Sized,
    {
        let _ = stored;
        None
    }

    /// Where an earlier release of this bridge kept the platform thread of a hub thread in `chat`
    /// (read when the engine's own record is absent), if it kept it elsewhere.
    fn legacy_thread_key(&self, chat: &str, thread_id: &str) -> Option<String> {
        let _ = (chat, thread_id);
        None
    }

    /// Where an earlier release of this bridge kept the hub thread of the platform thread whose
    /// map chat is `thread_chat`, if it kept it elsewhere.
    fn legacy_hub_thread_key(&self, thread_chat: &str) -> Option<String> {
        let _ = thread_chat;
        None
    }

    /// The agent a person's private messages go to until they pick one with `/dm`.
    fn dm_agent(&self) -> Option<String> {
        None
    }

    /// The key an earlier release of this bridge set for a stopped link, if it kept stopped links
    /// elsewhere than the engine's set. Read once at start.
    fn legacy_stopped_key(&self, link: &crate::relay::Link) -> Option<String> {
        let _ = link;
        None
    }

    /// Renders a message into parts under the platform's limits.
    fn render<'a>(
        &'a self,
        place: &'a Place,
        message: Rendering<'a>,
    ) -> BoxFuture<'a, Result<Rendered<Self::Part>, SendError>>;

    /// Renders a notice from the bridge itself (plain text), pinging `mention` if given.
    fn render_notice(&self, text: &str, mention: Option<&str>) -> Vec<Self::Part>;

    /// Sends one part, answering `reply_to` when given, and appends the ids of the messages it
    /// took to `shown`. A part the platform refuses in its form may take several messages; the
    /// part keeps its own progress so that a retry does not send a piece twice.
    fn send<'a>(
        &'a self,
        place: &'a Place,
        part: &'a mut Self::Part,
        reply_to: Option<&'a PartId>,
        shown: &'a mut Vec<PartId>,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// Replaces the content of one part.
    fn edit<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
        part: &'a Self::Part,
    ) -> BoxFuture<'a, Result<Edited, SendError>>;

    /// Deletes one part; a part already gone counts as deleted.
    fn delete<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// Changes the bot's reactions on one part.
    fn react<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
        change: &'a ReactionChange,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// Shows the bot typing in `place` for a few seconds.
    fn typing<'a>(&'a self, place: &'a Place) -> BoxFuture<'a, Result<(), SendError>>;

    /// What files the platform takes as uploads. `None` (the default): none, and files are shown
    /// as text by [`Connector::render`].
    fn media_limits(&self) -> Option<MediaLimits> {
        None
    }

    /// Uploads `files` (at most [`MediaLimits::files_per_message`]) as one message, or an album,
    /// from the author of `look`, with `caption` as its text when the platform takes it as a
    /// caption; appends the ids of the messages it took to `shown` and says whether the caption
    /// went with them (otherwise the engine sends it as a message of its own).
    fn upload<'a>(
        &'a self,
        place: &'a Place,
        look: &'a Look,
        files: &'a [Upload],
        caption: Option<&'a Self::Part>,
        reply_to: Option<&'a PartId>,
        shown: &'a mut Vec<PartId>,
    ) -> BoxFuture<'a, Result<bool, SendError>> {
        let _ = (place, look, files, caption, reply_to, shown);
        Box::pin(async {
            Err(SendError::Permanent(
                "this platform takes no uploads".to_owned(),
            ))
        })
    }

    /// Opens a platform thread for a hub thread, on `parent` (the first part of the message the
    /// thread hangs on, when shown here) and named `name`. `None`: this chat has no threads of
    /// that kind, and the thread's messages reply to the parent instead.
    fn open_thread<'a>(
        &'a self,
        place: &'a Place,
        parent: Option<&'a PartId>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ThreadRef>, SendError>>;
}
