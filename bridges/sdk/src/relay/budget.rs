//! One flood budget per chat (SPEC section 5): every request a bridge makes to a chat (sends,
//! edits, deletes, reactions, topics, typing) draws from the same sliding windows, with the
//! platform's global windows on top, so steady state sees no 429. After a 429 nothing more goes to
//! that chat until the platform's `retry_after` has passed.
//!
//! Platforms count requests in sliding windows, so the budget does too: it keeps the completion
//! times of recent requests and lets one start only when fewer than the limit completed within
//! each window. Completion time (not start time) is recorded because that is no earlier than when
//! the platform counted the request; a token bucket with a burst would allow more than the limit
//! within one window. Requests in flight count until they complete.
//!
//! Priorities: a chat's requests come from its outbox worker one at a time, and the worker takes
//! new messages and final edits before a streamed answer's intermediate edits
//! ([`crate::outbox::Deliver::deferrable`]). Typing comes last: it takes a slot only when one is
//! free at once and nobody waits for the chat, and is dropped otherwise, never delayed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outbox::SendError;

/// At most `calls` requests per `span`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub calls: u32,
    pub span: Duration,
}

impl Window {
    pub const fn per_second(calls: u32) -> Self {
        Self {
            calls,
            span: Duration::from_secs(1),
        }
    }

    pub const fn per_minute(calls: u32) -> Self {
        Self {
            calls,
            span: Duration::from_secs(60),
        }
    }
}

/// A platform's limits: for all chats together, for each chat, and on top for each group chat.
#[derive(Debug, Clone, Default)]
pub struct FloodLimits {
    pub global: Vec<Window>,
    pub chat: Vec<Window>,
    pub group: Vec<Window>,
}

impl FloodLimits {
    fn longest(&self) -> Duration {
        self.global
            .iter()
            .chain(&self.chat)
            .chain(&self.group)
            .map(|window| window.span)
            .max()
            .unwrap_or_default()
    }
}

/// The budget of one platform's bot, shared by every chat's worker and typing task.
#[derive(Clone)]
pub struct FloodBudget {
    limits: Arc<FloodLimits>,
    /// Whether a chat is a group (gets [`FloodLimits::group`] too).
    is_group: fn(&str) -> bool,
    // A std mutex: held to compute a wait or record a request, never across an await.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    global: Calls,
    chats: HashMap<String, Calls>,
    /// No request to any chat before this (a platform-wide 429).
    paused_until: Option<Instant>,
}

/// Completion times of recent requests (oldest first), the ones in flight, who waits, and the
/// end of a 429's pause.
#[derive(Default)]
struct Calls {
    done: VecDeque<Instant>,
    in_flight: u32,
    waiting: u32,
    paused_until: Option<Instant>,
}

impl Calls {
    /// How long until one more request fits `window`; zero when it fits now.
    fn wait(&self, now: Instant, window: Window) -> Duration {
        let limit = window.calls.max(1) as usize;
        let in_flight = self.in_flight as usize;
        if in_flight >= limit {
            // Cannot know yet when they complete; look again shortly.
            return Duration::from_millis(20);
        }
        let recent: Vec<Instant> = self
            .done
            .iter()
            .copied()
            .filter(|t| now.duration_since(*t) < window.span)
            .collect();
        let allowed_done = limit - in_flight;
        if recent.len() < allowed_done {
            return Duration::ZERO;
        }
        // The request that must leave the window before another one fits.
        let blocking = recent[recent.len() - allowed_done];
        window.span.saturating_sub(now.duration_since(blocking))
    }

    fn paused_for(&self, now: Instant) -> Duration {
        self.paused_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    fn complete(&mut self, now: Instant, keep: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.done.push_back(now);
        self.forget_before(now, keep);
    }

    /// Forgets requests older than the longest window.
    fn forget_before(&mut self, now: Instant, keep: Duration) {
        while self
            .done
            .front()
            .is_some_and(|t| now.duration_since(*t) >= keep)
        {
            self.done.pop_front();
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.waiting == 0
            && self.done.is_empty()
            && self.paused_for(now).is_zero()
    }
}

/// A request that may start; it counts as in flight until [`Permit::done`] (or drop).
pub struct Permit {
    budget: FloodBudget,
    chat: String,
    finished: bool,
}

impl Permit {
    /// Records the request as completed now.
    pub fn done(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = Instant::now();
        let keep = self.budget.limits.longest();
        let mut state = self.budget.lock();
        // A failed request may still have been counted by the platform, so it is recorded too.
        state.global.complete(now, keep);
        state
            .chats
            .entry(self.chat.clone())
            .or_default()
            .complete(now, keep);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish();
    }
}

impl FloodBudget {
    pub fn new(limits: FloodLimits, is_group: fn(&str) -> bool) -> Self {
        Self {
            limits: Arc::new(limits),
            is_group,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long until a request to `chat` fits every window and no pause holds it back; zero
    /// when it may start now.
    fn wait(&self, state: &mut State, chat: &str, now: Instant) -> Duration {
        let keep = self.limits.longest();
        let global_pause = state
            .paused_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let mut wait = self
            .limits
            .global
            .iter()
            .map(|window| state.global.wait(now, *window))
            .fold(global_pause, Duration::max);
        let calls = state.chats.entry(chat.to_owned()).or_default();
        calls.forget_before(now, keep);
        let group = if (self.is_group)(chat) {
            self.limits.group.as_slice()
        } else {
            &[]
        };
        for window in self.limits.chat.iter().chain(group) {
            wait = wait.max(calls.wait(now, *window));
        }
        wait.max(calls.paused_for(now))
    }

    fn take(&self, state: &mut State, chat: &str) -> Permit {
        state.global.in_flight += 1;
        state.chats.entry(chat.to_owned()).or_default().in_flight += 1;
        Permit {
            budget: self.clone(),
            chat: chat.to_owned(),
            finished: false,
        }
    }

    /// Waits until a request to `chat` fits, then reserves it.
    pub async fn acquire(&self, chat: &str) -> Permit {
        let mut counted = false;
        loop {
            let wait = {
                let now = Instant::now();
                let mut state = self.lock();
                let wait = self.wait(&mut state, chat, now);
                let calls = state.chats.entry(chat.to_owned()).or_default();
                if wait.is_zero() {
                    if counted {
                        calls.waiting = calls.waiting.saturating_sub(1);
                    }
                    return self.take(&mut state, chat);
                }
                if !counted {
                    calls.waiting += 1;
                    counted = true;
                }
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs one request to `chat` within the budget: waits for a slot, runs it, and counts it as
    /// completed when it returns. A bridge stopping while the request waits for its slot ends the
    /// wait with a transient error, so the job stays queued for the next run.
    pub async fn paced<T>(
        &self,
        chat: &str,
        stop: &CancellationToken,
        request: impl Future<Output = T>,
    ) -> Result<T, SendError> {
        let permit = tokio::select! {
            permit = self.acquire(chat) => permit,
            () = stop.cancelled() => {
                return Err(SendError::Transient("the bridge is stopping".to_owned()));
            }
        };
        let result = request.await;
        permit.done();
        Ok(result)
    }

    /// A request to `chat` that may start now and takes a slot nobody waits for (typing); `None`
    /// when it would have to wait: such a request is dropped, never delayed.
    pub fn try_acquire(&self, chat: &str) -> Option<Permit> {
        let now = Instant::now();
        let mut state = self.lock();
        let waiting = state.chats.get(chat).is_some_and(|calls| calls.waiting > 0);
        if waiting || !self.wait(&mut state, chat, now).is_zero() {
            return None;
        }
        Some(self.take(&mut state, chat))
    }

    /// The platform answered a request to `chat` with 429: nothing more goes there for `wait`.
    pub fn pause(&self, chat: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut state = self.lock();
        let calls = state.chats.entry(chat.to_owned()).or_default();
        calls.paused_until = Some(calls.paused_until.map_or(until, |old| old.max(until)));
    }

    /// The platform answered 429 for the whole bot: nothing more goes anywhere for `wait`.
    pub fn pause_all(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut state = self.lock();
        state.paused_until = Some(state.paused_until.map_or(until, |old| old.max(until)));
    }

    /// Drops the history of chats that made no request within the longest window, so memory
    /// stays bounded.
    pub fn prune(&self) {
        let now = Instant::now();
        let keep = self.limits.longest();
        let mut state = self.lock();
        state.chats.retain(|_, calls| {
            calls.forget_before(now, keep);
            !calls.idle(now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const MINUTE: Duration = Duration::from_secs(60);

    /// Telegram's limits; groups have negative ids.
    fn telegram() -> FloodBudget {
        telegram_with(1, 20, 30)
    }

    fn telegram_with(chat: u32, group: u32, global: u32) -> FloodBudget {
        FloodBudget::new(
            FloodLimits {
                global: vec![Window::per_second(global)],
                chat: vec![Window::per_second(chat)],
                group: vec![Window::per_minute(group)],
            },
            |chat| chat.starts_with('-'),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn one_request_per_second_per_chat() {
        let budget = telegram();
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire("5").await.done();
        }
        assert_eq!(start.elapsed(), 2 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_gets_twenty_per_sliding_minute() {
        let budget = telegram_with(100, 20, 30);
        let start = Instant::now();
        for _ in 0..20 {
            budget.acquire("-7").await.done();
        }
        assert!(start.elapsed() < SECOND);
        budget.acquire("-7").await.done();
        assert_eq!(start.elapsed(), MINUTE);
    }

    #[tokio::test(start_paused = true)]
    async fn chats_do_not_wait_for_each_other_but_share_the_global_limit() {
        let budget = telegram_with(1, 20, 2);
        let start = Instant::now();
        budget.acquire("1").await.done();
        budget.acquire("2").await.done();
        assert!(start.elapsed() < Duration::from_millis(1));
        budget.acquire("3").await.done();
        assert_eq!(start.elapsed(), SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_permit_still_counts() {
        let budget = telegram();
        let start = Instant::now();
        drop(budget.acquire("9").await);
        budget.acquire("9").await.done();
        assert_eq!(start.elapsed(), SECOND);
        tokio::time::sleep(MINUTE).await;
        budget.prune();
        assert!(budget.lock().chats.is_empty(), "forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_nothing_goes_to_that_chat_until_it_passes() {
        let budget = telegram_with(100, 100, 100);
        let start = Instant::now();
        budget.pause("-1", 7 * SECOND);
        assert!(budget.try_acquire("-1").is_none(), "typing is dropped");
        budget.acquire("2").await.done();
        assert!(start.elapsed() < SECOND, "other chats go on");
        budget.acquire("-1").await.done();
        assert_eq!(start.elapsed(), 7 * SECOND);

        budget.pause_all(3 * SECOND);
        budget.acquire("2").await.done();
        assert_eq!(
            start.elapsed(),
            10 * SECOND,
            "a global 429 holds every chat"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn typing_takes_only_a_free_slot_nobody_waits_for() {
        let budget = telegram();
        let typing = budget.try_acquire("5").expect("a free slot");
        typing.done();
        assert!(
            budget.try_acquire("5").is_none(),
            "the second's slot is used"
        );

        // A message waits for the chat: typing does not take the slot it waits for.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire("5").await.done() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(budget.try_acquire("5").is_none());
        waiter.await.unwrap();
        tokio::time::sleep(SECOND).await;
        assert!(budget.try_acquire("5").is_some(), "free again");
    }
}
