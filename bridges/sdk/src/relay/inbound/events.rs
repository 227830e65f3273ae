//! What a connector's inbound side hands the engine: a platform event in platform-neutral terms
//! ([`PlatformEvent`]). The connector reads its platform's updates (who, where, which message,
//! what text) and filters what is not a person's (the bot's own messages, system messages); the
//! engine decides where each goes and publishes it once.

use std::time::Instant;

use crate::event::{ContentBlock, Millis};
use crate::ids::ExternalId;
use crate::media::FileRef;
use crate::relay::connector::{Chat, Parent, PartId, Place};
use crate::relay::inbound::LimitNotice;

/// Someone on the platform, as the hub sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Their hub id (`external:telegram:42`); a chat that speaks as itself has one too.
    pub id: ExternalId,
    /// Their name as the hub shows it.
    pub name: String,
    /// How a notice to them addresses them (their name, or the platform's mention of them).
    pub addressed_as: String,
    /// The platform user a notice to them pings, where it can.
    pub mention: Option<String>,
}

impl Person {
    /// How a notice in `chat` tells them they are over their limit.
    pub fn notice_in(&self, chat: &Chat) -> LimitNotice {
        LimitNotice {
            chat: chat.clone(),
            who: self.addressed_as.clone(),
            mention: self.mention.clone(),
        }
    }
}

/// A file or picture a person sent: how the hub describes it, and where the platform keeps it.
/// The engine adds the `url` (a media link) when the service serves media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    pub block: ContentBlock,
    pub file: Option<FileRef>,
}

/// A person's new message in a linked chat.
#[derive(Debug, Clone)]
pub struct Said {
    /// The linked chat, and the platform thread inside it the message was written in.
    pub place: Place,
    /// The platform message.
    pub id: PartId,
    pub author: Person,
    /// The text (or a media message's caption), mentions already rendered as names.
    pub content: String,
    /// Its files and pictures.
    pub files: Vec<SharedFile>,
    pub timestamp: Millis,
    /// The platform message it answers, and the thread that one is in.
    pub reply_to: Option<Parent>,
    /// The message in the linked chat that `place.thread` was started on (a Discord thread has
    /// the id of its starter message), which a message in the thread answers by default.
    pub thread_root: Option<PartId>,
    /// When it arrived, for a message that arrived live: counted against the person's limit and
    /// its relay latency observed. `None` for a message fetched to fill a gap, which was
    /// counted (or missed) when it was written.
    pub received: Option<Instant>,
    /// Names this platform event for the decisions taken once however often it is handled
    /// (`update:7`, `message:123`): the inbound limit.
    pub claim: String,
}

/// A platform event, in the hub's terms.
#[derive(Debug, Clone)]
pub enum PlatformEvent {
    Message(Said),
    /// A person edited a message.
    Edit {
        place: Place,
        id: PartId,
        content: String,
        edited_at: Millis,
        /// Publishes the edit once per claim (a redelivered update publishes nothing); `None`
        /// publishes it every time it is handled.
        claim: Option<String>,
    },
    /// A person's message was deleted.
    Delete {
        place: Place,
        id: PartId,
    },
    /// A person changed their reactions on a message.
    Reaction {
        place: Place,
        id: PartId,
        person: Person,
        added: Vec<String>,
        removed: Vec<String>,
        /// Names the change for the inbound limit (counted once) and for publishing once.
        claim: String,
        /// Whether the claim names one platform update, so that handling it again publishes
        /// nothing; false where the same claim can come again for a new change (a platform
        /// without update ids). The limit counts a claim once either way.
        once: bool,
    },
    /// A person is typing.
    Typing {
        place: Place,
        person: ExternalId,
    },
    /// A person joined or left a linked chat.
    Member {
        chat: Chat,
        person: ExternalId,
        joined: bool,
        at: Millis,
        /// Names the change (`{chat}:{user}:{verb}:{date}`): a platform that reports one change
        /// twice publishes it once.
        claim: String,
    },
    /// A person's private message to the bot: a command, or a message for an agent.
    Private(Whisper),
}

/// A private message to the bot.
#[derive(Debug, Clone)]
pub struct Whisper {
    /// The private chat, where answers to commands go.
    pub chat: Chat,
    pub author: Person,
    /// The person's platform user id (their `/dm` choice is kept under it).
    pub user_id: String,
    pub text: String,
    pub timestamp: Millis,
    /// Whether it arrived live (counted against the person's message limit).
    pub live: bool,
    pub claim: String,
}

/// What handling a platform event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Published (or counted and dropped, or published before).
    Done,
    /// Concerns a message the map does not know (yet: a platform that can deliver an edit
    /// before its message may try again shortly).
    Unmapped,
}
