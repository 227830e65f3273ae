//! The embedded in-process bus: the same semantics as Redis for what the hub uses (pattern
//! subscriptions, publish, the key operations with TTLs), in one process, nothing persisted.
//!
//! This module owns the bus (subscriptions, the store handle, the expiry sweeper) and the
//! keyspace (values, expiry on read, type checks). The ops that are plain Redis commands are in
//! `commands`, with the dispatch of every op; those the Redis bus runs as Lua scripts are in
//! `scripts`.

mod commands;
mod scripts;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::{Op, Reply, Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Bus, BusMessage, CHANNEL_PATTERNS, GLOBAL_CHANNEL};

/// A stored value; the kinds the hub's state keys use.
#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Hash(BTreeMap<String, String>),
    /// Member -> score.
    ZSet(HashMap<String, i64>),
    Set(BTreeSet<String>),
    List(VecDeque<String>),
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Option<Instant>,
}

struct Subscriber {
    patterns: Vec<glob::Pattern>,
    sender: mpsc::Sender<BusMessage>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Entry>,
    subscribers: Vec<Subscriber>,
}

/// The in-process bus. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct EmbeddedBus {
    // A std mutex: every operation is a short in-memory update, never held across an await.
    state: Arc<Mutex<State>>,
    metrics: Arc<Metrics>,
}

impl EmbeddedBus {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Bus for EmbeddedBus {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.clone())
    }

    fn subscribe(
        &self,
        capacity: usize,
        _tasks: &TaskTracker,
        _shutdown: CancellationToken,
    ) -> mpsc::Receiver<BusMessage> {
        let (sender, receiver) = mpsc::channel(capacity);
        let patterns = CHANNEL_PATTERNS
            .iter()
            .chain(std::iter::once(&GLOBAL_CHANNEL))
            .filter_map(|pattern| glob::Pattern::new(pattern).ok())
            .collect();
        self.lock()
            .subscribers
            .push(Subscriber { patterns, sender });
        receiver
    }
}

impl Store for EmbeddedBus {
    fn exec(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Reply>, StoreError>> {
        let replies = {
            let mut state = self.lock();
            let now = Instant::now();
            ops.into_iter()
                .map(|op| state.apply(op, now, &self.metrics))
                .collect::<Result<Vec<_>, _>>()
        };
        Box::pin(async move { replies })
    }

    fn exec_each(
        &self,
        ops: Vec<Op>,
    ) -> BoxFuture<'_, Result<Vec<Result<Reply, StoreError>>, StoreError>> {
        // Like a Redis pipeline: every op runs, each with its own outcome.
        let outcomes = {
            let mut state = self.lock();
            let now = Instant::now();
            ops.into_iter()
                .map(|op| state.apply(op, now, &self.metrics))
                .collect()
        };
        Box::pin(async move { Ok(outcomes) })
    }
}
fn wrong_type(key: &str) -> StoreError {
    StoreError::Command(format!(
        "WRONGTYPE Operation against a key holding the wrong kind of value: {key}"
    ))
}

impl State {
    /// The live entry under `key`, dropping it first if it has expired.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self
            .keys
            .get(key)
            .is_some_and(|entry| entry.expires_at.is_some_and(|at| at <= now))
        {
            self.keys.remove(key);
        }
        self.keys.get_mut(key)
    }

    /// The value under `key`, created with `empty` when absent; an error when of another kind.
    fn value_or_insert(
        &mut self,
        key: &str,
        now: Instant,
        empty: fn() -> Value,
        fits: fn(&Value) -> bool,
    ) -> Result<&mut Value, StoreError> {
        if self.live(key, now).is_none() {
            self.keys.insert(
                key.to_owned(),
                Entry {
                    value: empty(),
                    expires_at: None,
                },
            );
        }
        let entry = self.keys.get_mut(key).ok_or_else(|| wrong_type(key))?;
        if fits(&entry.value) {
            Ok(&mut entry.value)
        } else {
            Err(wrong_type(key))
        }
    }

    fn remove_if_empty(&mut self, key: &str) {
        let empty = self.keys.get(key).is_some_and(|entry| match &entry.value {
            Value::Hash(map) => map.is_empty(),
            Value::ZSet(set) => set.is_empty(),
            Value::Set(set) => set.is_empty(),
            Value::List(list) => list.is_empty(),
            Value::Text(_) => false,
        });
        if empty {
            self.keys.remove(key);
        }
    }
}

/// Drops the expired keys now and then, so keys nobody reads again do not pile up.
pub fn spawn_expiry_sweeper(bus: &EmbeddedBus, tasks: &TaskTracker, shutdown: CancellationToken) {
    let bus = bus.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let now = Instant::now();
                    bus.lock()
                        .keys
                        .retain(|_, entry| entry.expires_at.is_none_or(|at| at > now));
                }
            }
        }
    });
}
#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> EmbeddedBus {
        EmbeddedBus::new(Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn incr_window_sets_the_ttl_only_on_the_first_increment() {
        let bus = bus();
        let store = bus.store();
        let window = Duration::from_secs(60);
        let key = "ratelimit:message:a".to_owned();
        for expected in 1..=3 {
            let reply = store
                .one(Op::IncrWindow {
                    key: key.clone(),
                    window,
                })
                .await
                .unwrap();
            assert_eq!(reply, Reply::Int(expected));
        }
        let ttl = store.one(Op::TtlMillis { key }).await.unwrap();
        assert!(matches!(ttl, Reply::Int(ms) if ms > 59_000 && ms <= 60_000));
    }

    #[tokio::test]
    async fn expired_keys_are_gone() {
        let store = bus().store();
        store
            .one(Op::Set {
                key: "k".into(),
                value: "v".into(),
                ttl: Some(Duration::from_millis(20)),
                only_if_absent: true,
            })
            .await
            .unwrap();
        assert_eq!(
            store.one(Op::Exists { key: "k".into() }).await.unwrap(),
            Reply::Int(1)
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            store.one(Op::Exists { key: "k".into() }).await.unwrap(),
            Reply::Int(0)
        );
    }

    #[tokio::test]
    async fn publish_reaches_pattern_subscribers_only() {
        let bus = bus();
        let mut messages = bus.subscribe(8, &TaskTracker::new(), CancellationToken::new());
        let store = bus.store();
        for channel in ["pubsub:channel:C", "elsewhere", "pubsub:global"] {
            store.publish(channel.into(), "x".into()).await.unwrap();
        }
        assert_eq!(messages.recv().await.unwrap().channel, "pubsub:channel:C");
        assert_eq!(messages.recv().await.unwrap().channel, "pubsub:global");
        assert!(messages.try_recv().is_err());
    }
}
