//! Pacing of sends under Telegram's flood limits (about 1 message per second per chat, 20 per
//! minute per group, 30 per second per bot), so that steady state sees no 429.
//!
//! Telegram counts sends in sliding windows, so the pacer does too: it keeps the completion times
//! of recent sends and lets a send start only when fewer than the limit completed within the
//! window. Completion time (not start time) is recorded because that is no earlier than when
//! Telegram counted the send; a token bucket with a burst would allow more than the limit within
//! one window. Sends in flight count against the limits until they complete.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The three limits, as counts per window.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_chat_per_sec: u32,
    pub per_group_per_min: u32,
    pub global_per_sec: u32,
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// Shared by every chat's outbox worker.
#[derive(Clone)]
pub struct Pacer {
    limits: Limits,
    // A std mutex: held to compute a wait or record a send, never across an await.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    global: Window,
    chats: HashMap<i64, Window>,
}

/// Completion times of recent sends (oldest first) and the sends still in flight.
#[derive(Default)]
struct Window {
    done: VecDeque<Instant>,
    in_flight: u32,
}

impl Window {
    /// How long until one more send fits `limit` sends per `span`; zero when it fits now.
    fn wait(&self, now: Instant, span: Duration, limit: u32) -> Duration {
        let limit = limit.max(1) as usize;
        let in_flight = self.in_flight as usize;
        if in_flight >= limit {
            // Cannot know yet when they complete; look again shortly.
            return Duration::from_millis(20);
        }
        let recent: Vec<Instant> = self
            .done
            .iter()
            .copied()
            .filter(|t| now.duration_since(*t) < span)
            .collect();
        let allowed_done = limit - in_flight;
        if recent.len() < allowed_done {
            return Duration::ZERO;
        }
        // The send that must leave the window before another one fits.
        let blocking = recent[recent.len() - allowed_done];
        span.saturating_sub(now.duration_since(blocking))
    }

    fn complete(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.done.push_back(now);
        self.forget_before(now);
    }

    /// Forgets sends older than the longest window.
    fn forget_before(&mut self, now: Instant) {
        while self
            .done
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            self.done.pop_front();
        }
    }
}

/// A send that is allowed to start; it counts as in flight until [`Permit::done`] (or drop).
pub struct Permit {
    pacer: Pacer,
    chat: i64,
    finished: bool,
}

impl Permit {
    /// Records the send as completed now.
    pub fn done(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = Instant::now();
        let mut state = self.pacer.lock();
        // A failed request may still have been counted by Telegram, so it is recorded too.
        state.global.complete(now);
        state.chats.entry(self.chat).or_default().complete(now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Pacer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a send to `chat` fits every limit, then reserves it.
    pub async fn acquire(&self, chat: i64) -> Permit {
        loop {
            let wait = {
                let now = Instant::now();
                let mut state = self.lock();
                let mut wait = state.global.wait(now, SECOND, self.limits.global_per_sec);
                {
                    let window = state.chats.entry(chat).or_default();
                    window.forget_before(now);
                    wait = wait.max(window.wait(now, SECOND, self.limits.per_chat_per_sec));
                    // Groups and supergroups have negative ids; private chats have no minute limit.
                    if chat < 0 {
                        wait = wait.max(window.wait(now, MINUTE, self.limits.per_group_per_min));
                    }
                }
                if wait.is_zero() {
                    state.global.in_flight += 1;
                    if let Some(window) = state.chats.get_mut(&chat) {
                        window.in_flight += 1;
                    }
                    None
                } else {
                    Some(wait)
                }
            };
            match wait {
                None => {
                    return Permit {
                        pacer: self.clone(),
                        chat,
                        finished: false,
                    }
                }
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Drops the history of chats that sent nothing for a minute, so memory stays bounded.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        state.chats.retain(|_, window| {
            window.forget_before(now);
            window.in_flight > 0 || !window.done.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            per_chat_per_sec: 1,
            per_group_per_min: 20,
            global_per_sec: 30,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_send_per_second_per_chat() {
        let pacer = Pacer::new(limits());
        let start = Instant::now();
        for _ in 0..3 {
            pacer.acquire(5).await.done();
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_gets_twenty_per_sliding_minute() {
        let pacer = Pacer::new(Limits {
            per_chat_per_sec: 100,
            ..limits()
        });
        let start = Instant::now();
        for _ in 0..20 {
            pacer.acquire(-7).await.done();
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        pacer.acquire(-7).await.done();
        assert_eq!(start.elapsed(), MINUTE);
    }

    #[tokio::test(start_paused = true)]
    async fn chats_do_not_wait_for_each_other_but_share_the_global_limit() {
        let pacer = Pacer::new(Limits {
            global_per_sec: 2,
            ..limits()
        });
        let start = Instant::now();
        pacer.acquire(1).await.done();
        pacer.acquire(2).await.done();
        assert!(start.elapsed() < Duration::from_millis(1));
        pacer.acquire(3).await.done();
        assert_eq!(start.elapsed(), SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_permit_still_counts() {
        let pacer = Pacer::new(limits());
        let start = Instant::now();
        drop(pacer.acquire(9).await);
        pacer.acquire(9).await.done();
        assert_eq!(start.elapsed(), SECOND);
        pacer.prune();
    }
}
