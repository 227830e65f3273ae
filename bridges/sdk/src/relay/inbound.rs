//! The relay's inbound half that is the same on every platform: waiting for the store while it is
//! unreachable (an event waits unacknowledged rather than being lost), the inbound rate limit with
//! its one notice per window, and counting what was published.

use std::future::Future;
use std::time::Duration;

use crate::guard::handle_event;
use crate::health::Component;
use crate::limits::{Action, Decision};
use crate::metrics::{retry, ActionDirection, Direction};
use crate::relay::connector::{Chat, Connector};
use crate::relay::Relay;
use crate::store::{Op, StoreError};

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

    /// Runs ops that include publish-once ops in one round trip, and counts as `type_name` those
    /// that published (a duplicate publishes nothing).
    pub async fn publish_all(&self, ops: Vec<Op>, type_name: &str) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let publishes: Vec<bool> = ops
            .iter()
            .map(|op| matches!(op, Op::PublishOnce { .. }))
            .collect();
        let replies = self.hub().store().exec(ops).await?;
        for (reply, is_publish) in replies.iter().zip(publishes) {
            if is_publish && reply.as_int() == Some(1) {
                self.hub()
                    .metrics()
                    .count_published(self.connector().name(), type_name);
            }
        }
        Ok(())
    }
}
