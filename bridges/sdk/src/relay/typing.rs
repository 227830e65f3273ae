//! Typing indicators (SPEC section 5, `typing`): while an agent types in a hub channel, the linked
//! chats show the bot typing. Platforms show it for a few seconds per request, so a task per
//! place sends it again every [`Capabilities::typing_refresh`] until nobody types there (a
//! message from the agent, `typing` with `started: false`, or [`MAX_TYPING`] without a new
//! `typing`).
//!
//! Typing never goes through the outboxes: an indicator behind a backlog would show after the
//! message it announced, and a lost one costs nothing.
//!
//! [`Capabilities::typing_refresh`]: crate::relay::connector::Capabilities::typing_refresh

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::connector::{Chat, Connector, Place};

/// How long an agent counts as typing after its last `typing` event.
pub const MAX_TYPING: Duration = Duration::from_secs(10);

/// Who types where.
pub struct Typing<C> {
    connector: Arc<C>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    // A std mutex: read and written without awaiting.
    places: Arc<Mutex<HashMap<Chat, PlaceTyping>>>,
}

impl<C> Clone for Typing<C> {
    fn clone(&self) -> Self {
        Self {
            connector: self.connector.clone(),
            tasks: self.tasks.clone(),
            shutdown: self.shutdown.clone(),
            places: self.places.clone(),
        }
    }
}

struct PlaceTyping {
    place: Place,
    typists: HashMap<String, Instant>,
    refreshing: bool,
}

impl<C: Connector> Typing<C> {
    pub fn new(connector: Arc<C>, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            connector,
            tasks,
            shutdown,
            places: Arc::default(),
        }
    }

    /// `agent` types in `place` (one place per chat: the most recent one shown).
    pub fn start(&self, place: Place, agent: &str) {
        let spawn = {
            let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
            let typing = places
                .entry(place.chat.clone())
                .or_insert_with(|| PlaceTyping {
                    place: place.clone(),
                    typists: HashMap::new(),
                    refreshing: false,
                });
            typing.place = place.clone();
            typing.typists.insert(agent.to_owned(), Instant::now());
            !std::mem::replace(&mut typing.refreshing, true)
        };
        if spawn {
            self.tasks.spawn(self.clone().refresh(place.chat));
        }
    }

    /// `agent` stopped typing in `chat` (it sent a message, or said so).
    pub fn stop(&self, chat: &Chat, agent: &str) {
        let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(typing) = places.get_mut(chat) {
            typing.typists.remove(agent);
        }
    }

    /// Where to show typing now, or `None` when nobody types in `chat` any more.
    fn still_typing(&self, chat: &Chat) -> Option<Place> {
        let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        let typing = places.get_mut(chat)?;
        typing
            .typists
            .retain(|_, started| started.elapsed() < MAX_TYPING);
        if typing.typists.is_empty() {
            places.remove(chat);
            return None;
        }
        Some(typing.place.clone())
    }

    async fn refresh(self, chat: Chat) {
        let every = self.connector.capabilities().typing_refresh;
        while let Some(place) = self.still_typing(&chat) {
            // Typing comes last in the chat's flood budget: without a free slot this refresh is
            // skipped, never waited for.
            let budget = self.connector.budget();
            let permit = budget.map(|budget| budget.try_acquire(&chat.0));
            if let Some(None) = permit {
                tracing::debug!(%chat, bridge = self.connector.name(), "typing skipped: the chat's flood budget has no free slot");
            } else {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    result = self.connector.typing(&place) => if let Err(error) = result {
                        tracing::debug!(%chat, ?error, bridge = self.connector.name(), "typing indicator failed");
                    },
                }
            }
            drop(permit);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
