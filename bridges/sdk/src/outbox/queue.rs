//! A destination's queue: the jobs waiting in order, whether the worker holds one, and which
//! waiting job may start next.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Entry;

pub(super) struct Queue<J> {
    waiting: VecDeque<Entry<J>>,
    /// How many waiting jobs have each coalescing key: a new job whose key no waiting job has
    /// (every new message) is queued without looking through the backlog.
    keys: HashMap<String, usize>,
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
            keys: HashMap::new(),
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
            .and_then(|index| self.remove(index))
        {
            Some(entry) => {
                self.in_flight = true;
                Next::Deliver(entry)
            }
            None => earliest.map_or(Next::Idle, Next::WaitUntil),
        }
    }

    pub(super) fn push(&mut self, entry: Entry<J>) {
        if let Some(key) = &entry.key {
            *self.keys.entry(key.clone()).or_default() += 1;
        }
        self.waiting.push_back(entry);
    }

    pub(super) fn remove(&mut self, index: usize) -> Option<Entry<J>> {
        let entry = self.waiting.remove(index)?;
        if let Some(key) = &entry.key {
            if let Some(count) = self.keys.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    self.keys.remove(key);
                }
            }
        }
        Some(entry)
    }

    pub(super) fn get_mut(&mut self, index: usize) -> Option<&mut Entry<J>> {
        self.waiting.get_mut(index)
    }

    /// The newest waiting job with coalescing key `key`.
    pub(super) fn newest_with_key(&self, key: &str) -> Option<usize> {
        if !self.keys.contains_key(key) {
            return None;
        }
        self.waiting
            .iter()
            .rposition(|entry| entry.key.as_deref() == Some(key))
    }
}
