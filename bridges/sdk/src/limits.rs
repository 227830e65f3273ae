//! Per-sender rate limits (SPEC section 4): a fixed 60-second window per sender per action,
//! counted in the hub's store so every instance and the hub's own clients share one count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::store::{Keys, Op, Store, StoreError};

/// What a sender is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Message,
    Reaction,
    Invite,
    Typing,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Reaction => "reaction",
            Self::Invite => "invite",
            Self::Typing => "typing",
        }
    }
}

/// The `[limits]` section: per-minute limits for every sender, and per-sender overrides.
/// `0` means unlimited; typing is always unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Messages per sender per minute (default 10).
    pub message: u32,
    /// Reactions per sender per minute (default 20).
    pub reaction: u32,
    /// Invites per sender per minute (default 5).
    pub invite: u32,
    /// `[limits.overrides."agent-id"]` with any of `message`, `reaction`, `invite`; what an override
    /// leaves out comes from the limits above.
    pub overrides: HashMap<String, LimitsOverride>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            message: 10,
            reaction: 20,
            invite: 5,
            overrides: HashMap::new(),
        }
    }
}

/// One sender's overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub message: Option<u32>,
    pub reaction: Option<u32>,
    pub invite: Option<u32>,
}

impl LimitsConfig {
    /// The limit for this sender and action; `0` is unlimited.
    pub fn limit(&self, action: Action, sender_id: &str) -> u32 {
        let over = self.overrides.get(sender_id);
        let pick = |default: u32, field: fn(&LimitsOverride) -> Option<u32>| {
            over.and_then(field).unwrap_or(default)
        };
        match action {
            Action::Message => pick(self.message, |o| o.message),
            Action::Reaction => pick(self.reaction, |o| o.reaction),
            Action::Invite => pick(self.invite, |o| o.invite),
            Action::Typing => 0,
        }
    }
}

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit; `first_in_window` is true only for the first rejection of the window, so the
    /// sender is told once.
    Rejected {
        limit: u32,
        first_in_window: bool,
    },
}

/// Counts actions per sender in the store.
#[derive(Clone)]
pub struct RateLimiter {
    store: Arc<dyn Store>,
    keys: Keys,
    config: Arc<LimitsConfig>,
    window: Duration,
}

impl RateLimiter {
    pub const WINDOW: Duration = Duration::from_secs(60);
    /// How long [`Self::check_once`] remembers that an event was counted: longer than a store
    /// outage the inbound path usually waits out.
    pub const CLAIM_TTL: Duration = Duration::from_secs(15 * 60);

    pub fn new(store: Arc<dyn Store>, keys: Keys, config: LimitsConfig) -> Self {
        Self {
            store,
            keys,
            config: Arc::new(config),
            window: Self::WINDOW,
        }
    }

    /// The same limits over another window length (tests use a short one).
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The limit that applies to this sender and action; `0` is unlimited.
    pub fn limit(&self, action: Action, sender_id: &str) -> u32 {
        self.config.limit(action, sender_id)
    }

    /// Counts one action and says whether it is within the limit, in one round trip.
    pub async fn check(&self, action: Action, sender_id: &str) -> Result<Decision, StoreError> {
        let limit = self.limit(action, sender_id);
        if limit == 0 {
            return Ok(Decision::Allowed);
        }
        let count = self
            .store
            .one(self.op(action, sender_id))
            .await?
            .as_int()
            .unwrap_or(0);
        Ok(decide(count, limit))
    }

    /// Counts one action of a platform event once, however often the event is handled: `event`
    /// names it (`telegram:update:123`, `discord:message:456`), and handling it again (a publish
    /// retried after a store error, a redelivery after a crash) gets the decision of the first
    /// count back without counting again. The count is kept with the event for [`Self::CLAIM_TTL`]
    /// (at least the window).
    pub async fn check_once(
        &self,
        action: Action,
        sender_id: &str,
        event: &str,
    ) -> Result<Decision, StoreError> {
        let limit = self.limit(action, sender_id);
        if limit == 0 {
            return Ok(Decision::Allowed);
        }
        let count = self
            .store
            .one(self.op_once(action, sender_id, event))
            .await?
            .as_int()
            .unwrap_or(0);
        Ok(decide(count, limit))
    }

    /// The op [`Self::check_once`] runs, for callers that batch it with other ops.
    pub fn op_once(&self, action: Action, sender_id: &str, event: &str) -> Op {
        Op::IncrWindowOnce {
            key: self.keys.rate_limit(action, sender_id),
            window: self.window,
            claim_key: self.keys.counted(action, event),
            claim_ttl: self.window.max(Self::CLAIM_TTL),
        }
    }

    /// The op a check runs, for callers that batch it with other ops.
    pub fn op(&self, action: Action, sender_id: &str) -> Op {
        Op::IncrWindow {
            key: self.keys.rate_limit(action, sender_id),
            window: self.window,
        }
    }
}

/// Turns a window count into a decision.
pub fn decide(count: i64, limit: u32) -> Decision {
    if limit == 0 || count <= i64::from(limit) {
        return Decision::Allowed;
    }
    Decision::Rejected {
        limit,
        first_in_window: count == i64::from(limit) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_message_is_the_first_rejection() {
        assert_eq!(decide(10, 10), Decision::Allowed);
        assert_eq!(
            decide(11, 10),
            Decision::Rejected {
                limit: 10,
                first_in_window: true
            }
        );
        assert_eq!(
            decide(12, 10),
            Decision::Rejected {
                limit: 10,
                first_in_window: false
            }
        );
        assert_eq!(decide(1_000, 0), Decision::Allowed);
    }

    #[tokio::test]
    async fn an_event_handled_again_is_not_counted_again() {
        use crate::store::memory::MemoryStore;

        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let config = LimitsConfig {
            message: 2,
            ..LimitsConfig::default()
        };
        let limiter = RateLimiter::new(store.clone(), Keys::new("t:"), config);
        let person = "external:telegram:5";
        // The first update is retried three times (its publish failed): counted once.
        for _ in 0..4 {
            let decision = limiter
                .check_once(Action::Message, person, "telegram:update:1")
                .await
                .unwrap();
            assert_eq!(decision, Decision::Allowed);
        }
        let second = limiter
            .check_once(Action::Message, person, "telegram:update:2")
            .await
            .unwrap();
        assert_eq!(second, Decision::Allowed, "the retries were not counted");
        let third = Decision::Rejected {
            limit: 2,
            first_in_window: true,
        };
        for _ in 0..2 {
            let decision = limiter
                .check_once(Action::Message, person, "telegram:update:3")
                .await
                .unwrap();
            assert_eq!(decision, third, "the same decision on a retry");
        }
        let count = store
            .one(Op::Get {
                key: Keys::new("t:").rate_limit(Action::Message, person),
            })
            .await
            .unwrap();
        assert_eq!(count, crate::store::Reply::Text("3".into()));
    }

    #[test]
    fn overrides_replace_the_defaults_per_sender() {
        let config: LimitsConfig = serde_json::from_str(
            r#"{"message":3,"overrides":{"chatty":{"message":0},"quiet":{"reaction":1}}}"#,
        )
        .unwrap();
        assert_eq!(config.limit(Action::Message, "anyone"), 3);
        assert_eq!(config.limit(Action::Reaction, "anyone"), 20);
        assert_eq!(config.limit(Action::Message, "chatty"), 0);
        assert_eq!(config.limit(Action::Reaction, "quiet"), 1);
        assert_eq!(config.limit(Action::Message, "quiet"), 3);
        assert_eq!(config.limit(Action::Typing, "anyone"), 0);
    }
}
