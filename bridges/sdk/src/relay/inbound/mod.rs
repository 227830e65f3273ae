//! The relay's inbound half: a connector reads its platform's updates into [`PlatformEvent`]s and
//! the engine publishes them ([`Relay::publish`]): to the hub channels of the chat's relaying
//! links, once (a redelivered or replayed update publishes nothing new), after the person's inbound
//! limit, with the hub ids of the messages they answer, edit or react to. Also here, the same on
//! every platform: waiting for the store while it is unreachable (an event waits unacknowledged
//! rather than being lost), the limit's one notice per window, and counting what was published.
//!
//! Chapters: `events` (what a connector hands over), `messages` (new messages and threads),
//! `changes` (edits, deletes, reactions, typing, members, private messages).

mod changes;
pub mod events;
mod messages;

use std::future::Future;
use std::time::Duration;

use crate::guard::handle_event;
use crate::health::Component;
use crate::limits::{Action, Decision};
use crate::metrics::{retry, ActionDirection, Direction};
use crate::relay::connector::{Chat, Connector};
use crate::relay::{Link, Relay};
use crate::store::{Op, StoreError};

pub use events::{Handled, Person, PlatformEvent, Said, SharedFile, Whisper};

/// How long a platform update's claims are kept: far longer than any redelivery or replay.
pub(crate) const CLAIM_TTL: Duration = Duration::from_secs(2 * 24 * 3600);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a person over their limit is told, and how they are named there.
pub struct LimitNotice {
    pub chat: Chat,
    /// How the notice addresses them (a name, or the platform's mention of them).
    pub who: String,
    /// The platform user the notice pings, where it can.
    pub mention: Option<String>,
}

/// The readiness a platform's inbound side reports while it waits for the store.
pub struct Readiness<'a> {
    pub status: &'a Component,
    /// What `/readyz` says again once the store answers.
    pub ready: &'a str,
}

impl<C: Connector> Relay<C> {
    /// Publishes a platform event into the hub channels its chat is linked to (a private message:
    /// to the person's agent), once. `Unmapped`: it concerns a message no relaying link maps.
    pub async fn publish(&self, event: &PlatformEvent) -> Result<Handled, StoreError> {
        match event {
            PlatformEvent::Message(said) => self.message(said).await,
            PlatformEvent::Edit {
                place,
                id,
                content,
                edited_at,
                claim,
            } => {
                self.edit(place, id, content, *edited_at, claim.as_deref())
                    .await
            }
            PlatformEvent::Delete { place, id } => self.delete(place, id).await,
            PlatformEvent::Reaction {
                place,
                id,
                person,
                added,
                removed,
                claim,
                once,
            } => {
                self.reaction(place, id, person, added, removed, claim, *once)
                    .await
            }
            PlatformEvent::Typing { place, person } => self.typing(place, person).await,
            PlatformEvent::Member {
                chat,
                person,
                joined,
                at,
                claim,
            } => self.member(chat, person, *joined, *at, claim).await,
            PlatformEvent::Private(whisper) => self.private(whisper).await,
        }
    }

    /// Counts a platform event the relay does not publish, by why.
    pub fn ignored(&self, reason: &'static str) {
        self.core.count_ignored(reason);
    }

    /// The relaying links of a chat an event happened in; none (counted) when the chat is not
    /// linked or all its links are stopped.
    fn links_for(&self, chat: &Chat) -> Vec<Link> {
        if !self.links().is_linked(chat) {
            self.ignored("unlinked_chat");
            return Vec::new();
        }
        let links = self.links().of_chat(chat);
        if links.is_empty() {
            self.ignored("stopped_link");
        }
        links
    }

    fn count_published(&self, type_name: &str) {
        self.hub()
            .metrics()
            .count_published(self.connector().name(), type_name);
    }

    /// Runs a store operation until it succeeds. While the store is unreachable or refuses
    /// writes (an error reply such as LOADING, READONLY or OOM is as passing as a lost
    /// connection) the platform event waits here, unacknowledged, so nothing is lost (SPEC
    /// sections 6 and 9); each failure is counted, the first is logged. `None` only when the
    /// relay stops.
    pub async fn until_stored<T, F, Fut>(
        &self,
        what: &str,
        readiness: Option<&Readiness<'_>>,
        mut op: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let name = self.connector().name();
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        loop {
            let error = match op().await {
                Ok(value) => {
                    if let (true, Some(readiness)) = (failing, readiness) {
                        readiness.status.ready(readiness.ready);
                    }
                    return Some(value);
                }
                Err(error) => error,
            };
            self.hub().metrics().count_retry(name, retry::STORE_FAILED);
            if !failing {
                let refused = matches!(error, StoreError::Command(_));
                tracing::warn!(%error, what, refused, bridge = name, "store failed; platform events wait and retry until it works");
                failing = true;
            }
            if let Some(readiness) = readiness {
                readiness
                    .status
                    .not_ready(&format!("{name} events waiting for the store: {error}"));
            }
            tokio::select! {
                _ = self.core.shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// [`Relay::until_stored`] for the handling of one whole platform event: a handling that
    /// panics is counted, logged and given up (retrying it would panic again and keep every later
    /// event waiting, SPEC section 9). False when the relay stopped.
    pub async fn handle_until_stored<F, Fut>(
        &self,
        what: &str,
        readiness: Option<&Readiness<'_>>,
        mut handle: F,
    ) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let name = self.connector().name();
        let metrics = self.hub().metrics();
        self.until_stored(what, readiness, || {
            let handling = handle();
            async move {
                handle_event(metrics, name, what, handling)
                    .await
                    .unwrap_or(Ok(()))
            }
        })
        .await
        .is_some()
    }

    /// Counts a person's action against their inbound limit (SPEC section 4), once per `claim`
    /// however often the event is handled (a retry after a store error, a redelivery or a replay
    /// after a crash keep the first decision). Over the limit the action is counted as rejected
    /// and, the first time in the window, the person is told where they wrote.
    pub async fn within_limit(
        &self,
        action: Action,
        sender: &str,
        claim: &str,
        notice: Option<LimitNotice>,
    ) -> Result<bool, StoreError> {
        let event = format!("{}:{claim}:{}", self.connector().name(), action.as_str());
        let decision = self
            .hub()
            .limiter()
            .check_once(action, sender, &event)
            .await?;
        let Decision::Rejected {
            limit,
            first_in_window,
        } = decision
        else {
            return Ok(true);
        };
        self.hub()
            .metrics()
            .rate_limit_rejections
            .get_or_create(&ActionDirection {
                action,
                direction: Direction::Inbound,
            })
            .inc();
        if let (true, Some(notice)) = (first_in_window, notice) {
            let what = match action {
                Action::Reaction => "reactions",
                _ => "messages",
            };
            let text = format!(
                "⏳ {}, you are sending {what} too fast: the hub takes {limit} per minute. What you \
                 send in the next minute is not relayed.",
                notice.who
            );
            self.notice(&notice.chat, text, "rate_limit.notice", notice.mention)
                .await;
        }
        Ok(false)
    }

    /// Runs publish ops (and others) in one round trip, and counts as `type_name` those that
    /// published (a publish-once op that found its claim taken publishes nothing).
    async fn publish_all(&self, ops: Vec<Op>, type_name: &str) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let publishes: Vec<Option<bool>> = ops
            .iter()
            .map(|op| match op {
                Op::PublishOnce { .. } => Some(true),
                Op::Publish { .. } => Some(false),
                _ => None,
            })
            .collect();
        let replies = self.hub().store().exec(ops).await?;
        for (reply, publish) in replies.iter().zip(publishes) {
            let published = match publish {
                Some(true) => reply.as_int() == Some(1),
                Some(false) => true,
                None => false,
            };
            if published {
                self.count_published(type_name);
            }
        }
        Ok(())
    }
}
