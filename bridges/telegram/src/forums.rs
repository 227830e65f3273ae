//! Forum topics (SPEC section 5, `thread.create` / `thread.message`): in a supergroup with topics
//! enabled, a hub thread becomes a forum topic and its messages go there; elsewhere they reply to
//! the thread's parent message. Whether a chat is a forum is asked once per chat per run
//! (`getChat`); the topic of a hub thread is kept in the store both ways, so that a person's
//! message in the topic comes back to the hub in that thread.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use teloxide::prelude::*;
use teloxide::types::{ChatFullInfoKind, ChatFullInfoPublicKind};
use teloxide::RequestError;

use crate::bridge::Shared;

/// The name of a topic when the parent message's text is unknown.
const DEFAULT_NAME: &str = "Thread";
/// The longest topic name the bridge makes, in chars: Telegram allows 128 (UTF-16 units), so even
/// an excerpt of emoji fits.
const NAME_CHARS: usize = 60;

/// What the bridge learnt about forum chats during this run.
#[derive(Default)]
pub struct Forums {
    // std mutexes: read and written without awaiting.
    is_forum: Mutex<HashMap<i64, bool>>,
    /// Chats already warned about a topic that could not be created.
    warned: Mutex<HashSet<i64>>,
}

impl Forums {
    /// Whether `chat` is a forum, from `getChat` the first time.
    pub async fn is_forum(&self, bot: &Bot, chat: i64) -> Result<bool, RequestError> {
        let known = self.lock_is_forum().get(&chat).copied();
        if let Some(known) = known {
            return Ok(known);
        }
        let info = bot.get_chat(ChatId(chat)).await?;
        let forum = match &info.kind {
            ChatFullInfoKind::Public(public) => {
                matches!(&public.kind, ChatFullInfoPublicKind::Supergroup(group) if group.is_forum)
            }
            ChatFullInfoKind::Private(_) => false,
        };
        self.lock_is_forum().insert(chat, forum);
        Ok(forum)
    }

    /// True the first time it is asked about `chat`: a failure to create topics is logged once.
    pub fn first_warning(&self, chat: i64) -> bool {
        self.warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chat)
    }

    fn lock_is_forum(&self) -> std::sync::MutexGuard<'_, HashMap<i64, bool>> {
        self.is_forum.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A topic name from the start of a message's Markdown: one line of plain words, no markup
/// markers or control characters, at most [`NAME_CHARS`] chars; "Thread" when nothing is left.
pub fn topic_name(text: Option<&str>) -> String {
    let words: Vec<String> = text
        .unwrap_or_default()
        .split_whitespace()
        .map(|word| {
            word.chars()
                .filter(|c| !c.is_control() && !matches!(c, '*' | '`' | '#' | '~' | '|' | '>'))
                .collect::<String>()
        })
        .filter(|word| !word.is_empty())
        .collect();
    let line = words.join(" ");
    if line.is_empty() {
        return DEFAULT_NAME.to_owned();
    }
    if line.chars().count() <= NAME_CHARS {
        return line;
    }
    let cut: String = line.chars().take(NAME_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
}

/// `{prefix}bridge:telegram:topic:{chat}:{threadId}`: the forum topic showing a hub thread.
pub fn topic_key(shared: &Shared, chat: i64, thread_id: &str) -> String {
    shared.hub.keys().telegram().topic(chat, thread_id)
}

/// `{prefix}bridge:telegram:topicthread:{chat}:{topicId}`: the hub thread a forum topic shows.
pub fn topic_thread_key(shared: &Shared, chat: i64, topic: i32) -> String {
    shared.hub.keys().telegram().topic_thread(chat, topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_short_plain_excerpts() {
        assert_eq!(topic_name(None), "Thread");
        assert_eq!(topic_name(Some("  **`#`**\n\t ")), "Thread");
        assert_eq!(
            topic_name(Some("## Shall we **ship**\nthe `v2`?\u{7}")),
            "Shall we ship the v2?"
        );
        let long = topic_name(Some(&"word ".repeat(40)));
        assert_eq!(long.chars().count(), NAME_CHARS);
        assert!(long.ends_with("word…"), "{long}");
        assert_eq!(
            topic_name(Some(&"🚀".repeat(200))).chars().count(),
            NAME_CHARS
        );
    }
}
