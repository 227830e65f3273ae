//! Typing indicators on Telegram. A bot's "typing…" lasts about 5 seconds, so while an agent types
//! the bridge repeats `sendChatAction typing` every [`REFRESH`], until the agent stops, sends its
//! message, or [`MAX_TYPING`] passes without a new `started` event.
//!
//! Indicators bypass the chat's outbox on purpose: one queued behind slow sends would show up
//! after the message it announces. One small task per chat runs while someone types there.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use teloxide::prelude::*;
use teloxide::types::ChatAction;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::errors::Redactor;

/// How often the indicator is renewed.
pub const REFRESH: Duration = Duration::from_secs(4);
/// How long one `started` event keeps the indicator up without a `stopped`.
pub const MAX_TYPING: Duration = Duration::from_secs(10);

/// Who is typing where.
#[derive(Clone)]
pub struct Typing {
    bot: Bot,
    redactor: Redactor,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    // A std mutex: held for map updates only.
    chats: Arc<Mutex<HashMap<i64, ChatTyping>>>,
}

/// The agents typing in one chat, and whether its refresh task runs.
#[derive(Default)]
struct ChatTyping {
    typists: HashMap<String, Instant>,
    refreshing: bool,
}

impl Typing {
    pub fn new(
        bot: Bot,
        redactor: Redactor,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            bot,
            redactor,
            tasks,
            shutdown,
            chats: Arc::default(),
        }
    }

    /// `agent` started (or is still) typing in `chat`.
    pub fn start(&self, chat: i64, agent: &str) {
        let spawn = {
            let mut chats = self.chats.lock().unwrap_or_else(PoisonError::into_inner);
            let typing = chats.entry(chat).or_default();
            typing.typists.insert(agent.to_owned(), Instant::now());
            !std::mem::replace(&mut typing.refreshing, true)
        };
        if spawn {
            self.tasks.spawn(self.clone().refresh(chat));
        }
    }

    /// `agent` stopped typing in `chat` (or sent a message there).
    pub fn stop(&self, chat: i64, agent: &str) {
        let mut chats = self.chats.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(typing) = chats.get_mut(&chat) {
            typing.typists.remove(agent);
        }
    }

    /// Whether anyone is still typing in `chat`; when nobody is, the chat is forgotten and the
    /// caller (its refresh task) must exit, so that the next `start` spawns a new one.
    fn anyone_typing(&self, chat: i64) -> bool {
        let mut chats = self.chats.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(typing) = chats.get_mut(&chat) else {
            return false;
        };
        typing
            .typists
            .retain(|_, started| started.elapsed() < MAX_TYPING);
        if typing.typists.is_empty() {
            chats.remove(&chat);
            return false;
        }
        true
    }

    async fn refresh(self, chat: i64) {
        while self.anyone_typing(chat) {
            let action = self.bot.send_chat_action(ChatId(chat), ChatAction::Typing);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                result = action.into_future() => if let Err(error) = result {
                    // An indicator is best effort: the message itself goes through the outbox.
                    tracing::debug!(chat, error = %self.redactor.describe(&error), "typing indicator failed");
                },
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }
}
