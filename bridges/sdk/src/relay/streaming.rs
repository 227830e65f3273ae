//! Streamed answers (SPEC section 5). An agent streams by publishing a message with its first words
//! and then edits carrying the whole text so far, often many per second. Relayed one by one they
//! would be one platform call each, minutes behind the agent and into the platform's flood limits.
//! Instead:
//!
//! - a newer text is taken into the job still waiting for that message in the chat's outbox (its
//!   send or its edit), and a delete of a message not shown yet cancels its send
//!   ([`Job::absorb`]);
//! - a part whose text has not changed since it was shown is not edited again: past the
//!   platform's length limit the parts already shown stay and only the last one grows
//!   ([`ShownParts`]);
//! - edits of one message go out at most once per [`Connector::edit_cadence`] in a chat
//!   ([`Cadence`]): the next edit waits in the queue meanwhile, taking in newer texts, so the
//!   newest text lands within one cadence and the last one always lands. The first edit after the
//!   send goes at once: the answer starts to grow as soon as it is shown.
//!
//! [`Connector::edit_cadence`]: crate::relay::Connector::edit_cadence

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::outbox::Absorb;
use crate::relay::job::{Action, Job};

impl<P> Job<P> {
    /// The hub message (in its link) a job shows, edits or deletes: only jobs with the same key
    /// meet in [`Self::absorb`].
    pub fn coalescing_key(&self) -> Option<String> {
        let (channel, message) = match &self.action {
            Action::Send(send) => (
                send.hub_channel.as_deref()?,
                send.hub_message_id.as_deref()?,
            ),
            Action::Edit(edit) => (edit.hub_channel.as_str(), edit.hub_message_id.as_str()),
            Action::Delete(delete) => (delete.hub_channel.as_str(), delete.hub_message_id.as_str()),
            _ => return None,
        };
        // Ids hold no whitespace (crate::ids), so the space keeps the two apart.
        Some(format!("{channel} {message}"))
    }

    /// What `newer` (same key) does to this job, which waits in the queue and has not started:
    /// a newer text replaces the text of a waiting send or edit; a delete replaces a waiting edit,
    /// and cancels a waiting send together with itself. A job that has started (progress from an
    /// earlier run) is left alone: some of its parts may be shown.
    pub fn absorb(&mut self, newer: &Self) -> Absorb {
        match (&mut self.action, &newer.action) {
            (Action::Send(send), Action::Edit(edit)) if send.progress.is_none() => {
                send.text.clone_from(&edit.text);
                send.streaming = edit.streaming;
                Absorb::IntoWaiting
            }
            (Action::Edit(waiting), Action::Edit(edit)) if waiting.progress.is_none() => {
                waiting.text.clone_from(&edit.text);
                waiting.streaming = edit.streaming;
                self.about.payload.clone_from(&newer.about.payload);
                Absorb::IntoWaiting
            }
            (Action::Edit(waiting), Action::Delete(_)) if waiting.progress.is_none() => {
                Absorb::ReplacesWaiting
            }
            (Action::Send(send), Action::Delete(_)) if send.progress.is_none() => Absorb::Cancels,
            _ => Absorb::Neither,
        }
    }
}

/// When each message was last edited in each chat, so its next edit waits for the chat's
/// cadence.
#[derive(Default)]
pub(crate) struct Cadence {
    // A std mutex: read under the outbox's queue lock, never held across an await.
    shown: Mutex<HashMap<(String, String), Instant>>,
}

/// How many (chat, message) times are kept before the old ones are forgotten.
const REMEMBERED: usize = 4096;
/// Longer than any cadence: a time older than this no longer holds an edit back.
const FORGET_AFTER: Duration = Duration::from_secs(60);

impl Cadence {
    /// `message` was just edited in `chat`.
    pub(crate) fn note(&self, chat: &str, message: &str) {
        let now = Instant::now();
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        if shown.len() >= REMEMBERED {
            shown.retain(|_, at| now.duration_since(*at) < FORGET_AFTER);
        }
        shown.insert((chat.to_owned(), message.to_owned()), now);
    }

    /// When an edit of `message` may go out in `chat`, `every` after the last one there.
    pub(crate) fn next_edit(&self, chat: &str, message: &str, every: Duration) -> Option<Instant> {
        let shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (chat.to_owned(), message.to_owned());
        shown.get(&key).map(|at| *at + every)
    }
}

/// What each platform message shows, as a fingerprint of the rendered part it was made from, so an
/// edit leaves a part alone when its rendering has not changed. In memory: after a restart a part
/// is edited once more (a platform answers "not modified"), nothing worse.
#[derive(Default)]
pub(crate) struct ShownParts {
    // A std mutex: never held across an await.
    parts: Mutex<HashMap<(String, String), u64>>,
}

impl ShownParts {
    /// The fingerprint of a part as rendered, before a platform call adds its progress to it.
    pub(crate) fn fingerprint(part: &impl Serialize) -> u64 {
        let mut hasher = DefaultHasher::new();
        serde_json::to_string(part)
            .unwrap_or_default()
            .hash(&mut hasher);
        hasher.finish()
    }

    /// `id` in `chat` now shows the part with `fingerprint`.
    pub(crate) fn note(&self, chat: &str, id: &str, fingerprint: u64) {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        if parts.len() >= REMEMBERED {
            // Old messages are rarely edited again; an edit of one simply goes out.
            parts.clear();
        }
        parts.insert((chat.to_owned(), id.to_owned()), fingerprint);
    }

    /// Whether `id` in `chat` already shows the part with `fingerprint`.
    pub(crate) fn shows(&self, chat: &str, id: &str, fingerprint: u64) -> bool {
        let parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        parts.get(&(chat.to_owned(), id.to_owned())) == Some(&fingerprint)
    }
}
