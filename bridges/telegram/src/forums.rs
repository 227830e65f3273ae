//! Forum topics (SPEC section 5, `thread.create` / `thread.message`): in a supergroup with topics
//! enabled, a hub thread becomes a forum topic and its messages go there; elsewhere they reply to
//! the thread's parent message. Whether a chat is a forum is asked once per chat per run
//! (`getChat`). The relay engine keeps the topic of a hub thread, both ways.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use teloxide::prelude::*;
use teloxide::types::{ChatFullInfoKind, ChatFullInfoPublicKind};
use teloxide::RequestError;

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
