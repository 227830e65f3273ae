//! A destination's queue: the jobs waiting in order, whether the worker holds one, and which
//! waiting job may start next.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Entry;

pub(super) struct Queue<J> {
    pub(super) waiting: VecDeque<Entry<J>>,
    /// Whether the worker holds a job (taken from `waiting`, not finished yet).
    pub(super) in_flight: bool,
    /// Wakes the worker: a job was queued. A permit is kept when the worker is busy, so no
    /// wake-up is lost.
    pub(super) wake: Arc<Notify>,
}

/// What the worker does next.
pub(super) enum Next<J> {
    Deliver(Entry<J>),
    /// Every waiting job must wait (for its message's cadence) until then.
    WaitUntil(Instant),
    Idle,
}

impl<J> Queue<J> {
    pub(super) fn new() -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: false,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Jobs not delivered yet, the one in flight included.
    pub(super) fn depth(&self) -> usize {
        self.waiting.len() + usize::from(self.in_flight)
    }

    /// Takes the first waiting job that may start at `now`, deferrable ones only when no other is
    /// ready. A job that must wait does not hold up the jobs behind it: they are other messages'
    /// (a message's later jobs were taken into it), so a streamed answer's next edit never delays
    /// a new message.
    pub(super) fn next(
        &mut self,
        now: Instant,
        not_before: impl Fn(&J) -> Option<Instant>,
        deferrable: impl Fn(&J) -> bool,
    ) -> Next<J> {
        let mut earliest: Option<Instant> = None;
        let mut first_deferrable = None;
        let mut ready = None;
        for (index, entry) in self.waiting.iter().enumerate() {
            match not_before(&entry.job) {
                Some(at) if at > now => {
                    earliest = Some(earliest.map_or(at, |earliest| earliest.min(at)));
                }
                _ if deferrable(&entry.job) => {
                    first_deferrable.get_or_insert(index);
                }
                _ => {
                    ready = Some(index);
                    break;
                }
            }
        }
        match ready
            .or(first_deferrable)
            .and_then(|index| self.waiting.remove(index))
        {
            Some(entry) => {
                self.in_flight = true;
                Next::Deliver(entry)
            }
            None => earliest.map_or(Next::Idle, Next::WaitUntil),
        }
    }

    /// The newest waiting job with coalescing key `key`.
    pub(super) fn newest_with_key(&mut self, key: &str) -> Option<usize> {
        self.waiting
            .iter()
            .rposition(|entry| entry.key.as_deref() == Some(key))
    }
}
